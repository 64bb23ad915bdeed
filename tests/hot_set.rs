//! A junk flood does not push out the pages clients keep reading.
//!
//! 64 hot pages of 4 KiB, read in turn through the `CacheLayer` on a 2 MiB `MemoryStore`
//! (room for 434 such entries, charged 4 825 bytes each), with ten unique junk URLs (a
//! crawler, a cache-busting query) between successive hot reads: each hot page comes back
//! once every 704 requests, 1.6 times the entries the store holds. A recency policy (LRU,
//! CLOCK, FIFO) sees only a stream of one-offs and loses every hot page before it is read
//! again; a policy that remembers how often keys come back keeps them.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

const HOT: usize = 64;
const JUNK_PER_HOT_READ: usize = 10;
const BODY: usize = 4096;

type Req = Request<Full<Bytes>>;

async fn get<S, B>(service: &S, path: &str) -> bool
where
    S: Service<Req, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let request = Request::get(path).body(Full::default()).unwrap();
    let response = service.clone().oneshot(request).await.unwrap();
    let hit = response
        .headers()
        .get("x-cache")
        .is_some_and(|v| v == "HIT");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), BODY, "{path}");
    hit
}

/// Hot reads answered from the cache, out of `rounds` rounds of every hot page, after
/// `warm_up` rounds that are not counted.
async fn hot_hits(store: MemoryStore, warm_up: usize, rounds: usize) -> (usize, usize) {
    let origin_calls = Arc::new(AtomicU64::new(0));
    let calls = origin_calls.clone();
    let origin = service_fn(move |request: Req| {
        calls.fetch_add(1, Ordering::Relaxed);
        let mut body = vec![b'.'; BODY];
        let path = request.uri().path().as_bytes();
        body[..path.len()].copy_from_slice(path);
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert("cache-control", "max-age=3600".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    });
    let handle = CacheHandle::builder(store).build();
    let service = CacheLayer::new(handle.clone()).layer(origin);
    let mut junk = 0u64;
    let mut hits = 0;
    let mut reads = 0;
    for round in 0..warm_up + rounds {
        for page in 0..HOT {
            let hit = get(&service, &format!("/hot/{page}")).await;
            if round >= warm_up {
                reads += 1;
                hits += usize::from(hit);
            }
            for _ in 0..JUNK_PER_HOT_READ {
                junk += 1;
                assert!(!get(&service, &format!("/junk/{junk}")).await);
            }
        }
    }
    let stats = handle.stats();
    assert_eq!(
        origin_calls.load(Ordering::Relaxed),
        stats.misses,
        "{stats:?}"
    );
    (hits, reads)
}

/// Run the flood over a store of `max_bytes` and check that `percent` % of hot reads were
/// hits, after two rounds to learn the hot pages (each is fetched twice before it can be
/// told from junk fetched once). Returns the store.
async fn keeps_the_hot_pages(max_bytes: usize, percent: usize) -> MemoryStore {
    let store = MemoryStore::builder().max_bytes(max_bytes).build();
    let (hits, reads) = hot_hits(store.clone(), 2, 10).await;
    assert!(
        hits * 100 >= reads * percent,
        "{hits} of {reads} hot reads were hits"
    );
    let stats = tower_response_cache::Store::stats(&store);
    assert!(stats.bytes <= max_bytes as u64, "{stats:?}");
    store
}

/// No time passes (a paused clock): the policy must work from the order of requests alone,
/// as it must at a million requests a second. The store holds about 440 entries; the hot
/// pages come back from the ghost queues while they are learnt, which grows the small
/// queue, and the rules that then lean towards LRU must not take them from a main queue
/// that holds little else (611 of 640 were hits when they did).
#[tokio::test(start_paused = true)]
async fn a_ten_to_one_junk_flood_keeps_the_hot_pages() {
    let store = keeps_the_hot_pages(2 << 20, 99).await;
    // The flood's URLs were refused or evicted. (Whether any was refused rather than
    // evicted depends on where the sketch's hashes fall: sometimes none is.)
    let stats = tower_response_cache::Store::stats(&store);
    assert!(stats.admissions_refused + stats.evictions > 0, "{stats:?}");
}

/// The same flood over a store of about 275 entries, the hot pages' reuse distance 2.6 times
/// what it holds. The small queue then holds every entry and the main queue none: no hot
/// page is read before the small queue drops it, and whether the contest at its head keeps
/// one depends on which key happens to be there. A page stored twice leaves the small
/// queue for the main one while the main queue has room (`store/policy`); without that
/// rule not one hot read of this test was a hit.
#[tokio::test(start_paused = true)]
async fn a_flood_over_a_smaller_store_keeps_the_hot_pages() {
    let store = keeps_the_hot_pages(1_300 << 10, 95).await;
    assert!(tower_response_cache::Store::stats(&store).entries <= 280);
}

/// The handle reports what the store counted.
#[tokio::test(start_paused = true)]
async fn the_handle_reports_refusals_and_evictions() {
    let store = MemoryStore::builder().max_bytes(2 << 20).build();
    let origin = service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'.'; BODY]))))
    });
    let handle = CacheHandle::builder(store.clone()).build();
    let service = CacheLayer::new(handle.clone()).layer(origin);
    // 600 URLs, each read again at once, over a store that holds about 430: evictions, and
    // a main queue full of entries that were read.
    for i in 0..600 {
        for _ in 0..2 {
            get(&service, &format!("/old/{i}")).await;
        }
    }
    // 30 pages (fewer than the small queue holds) stored twice, invalidated in between:
    // the policy has seen them come back.
    for i in 0..30 {
        get(&service, &format!("/page/{i}")).await;
    }
    handle.invalidate("/page/*").await.unwrap();
    for i in 0..30 {
        get(&service, &format!("/page/{i}")).await;
    }
    // One-off URLs past the room left: those that would push a page out are refused.
    for i in 0..500 {
        get(&service, &format!("/once/{i}")).await;
    }
    let invalidated = handle.stats().invalidated;
    let stats = handle.stats();
    let store_stats = tower_response_cache::Store::stats(&store);
    assert!(
        stats.evictions > 0 && stats.admissions_refused > 0,
        "{stats:?}"
    );
    assert_eq!(stats.evictions, store_stats.evictions);
    assert_eq!(stats.admissions_refused, store_stats.admissions_refused);
    assert_eq!(stats.expirations, 0);
    handle.invalidate_all().await.unwrap();
    assert_eq!(
        handle.stats().invalidated - invalidated,
        store_stats.entries,
        "{:?}",
        handle.stats()
    );
}

/// An origin answering 4 KiB pages fresh for an hour, with `Vary: Accept-Language` when
/// `vary`.
fn origin(
    vary: bool,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone {
    service_fn(move |_: Req| async move {
        let mut response = Response::new(Full::new(Bytes::from(vec![b'.'; BODY])));
        let headers = response.headers_mut();
        headers.insert("cache-control", "max-age=3600".parse().unwrap());
        if vary {
            headers.insert("vary", "accept-language".parse().unwrap());
        }
        Ok::<_, Infallible>(response)
    })
}

/// A `GET` of `path` with `headers`.
fn request(path: String, headers: &[(&'static str, String)]) -> Req {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(Full::default()).unwrap()
}

/// Check that `percent` % of hot reads were hits (`(hits, reads)`), in the store `what`.
fn at_least(percent: usize, (hits, reads): (usize, usize), what: std::fmt::Arguments) {
    assert!(
        hits * 100 >= reads * percent,
        "{hits} of {reads} hot reads were hits with {what}"
    );
}

/// Whether the requests after a hot read may be answered from the cache.
#[derive(Clone, Copy, PartialEq)]
enum Junk {
    /// Each asks for something never stored before: a hit would be a wrong answer.
    Misses,
    /// Some ask again for what was asked before.
    MayHit,
}

/// Rounds of every hot page read with `hot(page)`, each read followed by the requests
/// `after(page)` returns; returns the hot reads answered from the cache and those counted
/// (after two rounds to learn the hot pages).
async fn hot_hits_under<S, B>(
    service: &S,
    hot: impl Fn(usize) -> Req,
    mut after: impl FnMut(usize) -> Vec<Req>,
    junk: Junk,
) -> (usize, usize)
where
    S: Service<Req, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let from_cache = |request: Req| {
        let service = service.clone();
        async move {
            let response = service.oneshot(request).await.unwrap();
            let hit = response.headers()["x-cache"] == "HIT";
            response.into_body().collect().await.unwrap();
            hit
        }
    };
    let (mut hits, mut reads) = (0, 0);
    for round in 0..12 {
        for page in 0..HOT {
            let hit = from_cache(hot(page)).await;
            if round >= 2 {
                reads += 1;
                hits += usize::from(hit);
            }
            for request in after(page) {
                let hit = from_cache(request).await;
                assert!(!hit || junk == Junk::MayHit);
            }
        }
    }
    (hits, reads)
}

/// Junk `Vary` values of the hot pages themselves: the origin answers `Vary:
/// Accept-Language`, clients send `en`, and after each hot read ten requests for the same
/// page with a language nobody else sends (a header any client chooses). Each junk variant
/// counts for itself in the policy: it neither inherits the page's popularity nor a use
/// from the reads of `en` (a hot read lends every variant to the reader, and only its pick
/// counts). Without that, 6 % of hot reads were hits at 2 MiB, 3 % at 1 300 KiB.
#[tokio::test(start_paused = true)]
async fn junk_vary_values_of_the_hot_pages_keep_the_variant_clients_read() {
    for max_bytes in [1_300 << 10, 2 << 20] {
        let store = MemoryStore::builder().max_bytes(max_bytes).build();
        let service = CacheLayer::new(CacheHandle::builder(store).build()).layer(origin(true));
        let language = |page: usize, language: String| {
            request(format!("/hot/{page}"), &[("accept-language", language)])
        };
        let mut junk = 0u64;
        let (hits, reads) = hot_hits_under(
            &service,
            |page| language(page, "en".to_owned()),
            |page| {
                (0..JUNK_PER_HOT_READ)
                    .map(|_| {
                        junk += 1;
                        language(page, format!("x-{junk}"))
                    })
                    .collect()
            },
            Junk::Misses,
        )
        .await;
        at_least(95, (hits, reads), format_args!("{max_bytes} bytes"));
    }
}

/// Under the RFC 9111 preset a client's `Cache-Control: no-cache` makes the cache fetch and
/// store the page again. After each hot read, one such request for the page just read, and
/// the ten junk URLs: a new version keeps the old one's uses, so the page does not go back
/// unread to the small queue to leave before its next read (78 % of hot reads were hits at
/// 2 MiB, 59 % at 150 entries, when it did).
#[tokio::test(start_paused = true)]
async fn pages_stored_again_on_a_clients_request_keep_their_place() {
    for max_bytes in [1_300 << 10, 2 << 20] {
        let store = MemoryStore::builder().max_bytes(max_bytes).build();
        let service = CacheLayer::new(CacheHandle::builder(store).build())
            .policy(tower_response_cache::CachePolicy::rfc9111())
            .layer(origin(false));
        let mut junk = 0u64;
        let (hits, reads) = hot_hits_under(
            &service,
            |page| request(format!("/hot/{page}"), &[]),
            |page| {
                let again = [("cache-control", "no-cache".to_owned())];
                let mut after = vec![request(format!("/hot/{page}"), &again)];
                after.extend((0..JUNK_PER_HOT_READ).map(|_| {
                    junk += 1;
                    request(format!("/junk/{junk}"), &[])
                }));
                after
            },
            Junk::Misses,
        )
        .await;
        at_least(95, (hits, reads), format_args!("{max_bytes} bytes"));
    }
}

/// Junk URLs requested twice each, half the store apart, five new and five repeated after
/// each hot read: each comes back soon after the small queue dropped it, as the pages of a
/// popular set that moved do, which grows the small queue. Nobody reads it once back, so
/// newcomers are still weighed against the pages stored before (`store/policy`); when
/// every return lifted that contest, no hot read was a hit at 1 300 KiB and 20-30 % at
/// 2 MiB.
#[tokio::test(start_paused = true)]
async fn junk_requested_in_pairs_keeps_most_hot_pages() {
    // Entries each store holds, and the share of hot reads that must be hits (observed:
    // 54-61 % and 74-82 %).
    for (entries, percent) in [(275, 45), (434, 65)] {
        let store = MemoryStore::builder().max_bytes(entries * 4_825).build();
        let service = CacheLayer::new(CacheHandle::builder(store).build()).layer(origin(false));
        // A pair's second request comes this many hot reads after its first (half the
        // store's entries, eleven requests per hot read).
        let lag = entries / 2 / (JUNK_PER_HOT_READ + 1);
        let mut slot = 0usize;
        let (hits, reads) = hot_hits_under(
            &service,
            |page| request(format!("/hot/{page}"), &[]),
            |_| {
                slot += 1;
                let mut junk = Vec::new();
                for i in 0..JUNK_PER_HOT_READ / 2 {
                    junk.push(request(format!("/junk/{slot}/{i}"), &[]));
                    if let Some(first) = slot.checked_sub(lag) {
                        junk.push(request(format!("/junk/{first}/{i}"), &[]));
                    }
                }
                junk
            },
            Junk::MayHit,
        )
        .await;
        at_least(percent, (hits, reads), format_args!("{entries} entries"));
    }
}
