//! One `Vary` variant, one value (issue 19): a hit reads only the variant it serves, a
//! write touches only its own and is fenced, junk variants leave the hot one, a value over
//! the size cap is served but not stored, and an earlier version's value reads as a miss.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::{
    Backend, CacheHandle, CacheLayer, CacheStatusDetail, FallbackStore, MemoryStore, RedisStore,
    Store,
};

use crate::support::eventually;
use crate::support::redis::RedisServer;

type Req = Request<Full<Bytes>>;

/// An origin whose answers vary on `Accept-Encoding` (or, once `language` is set, on
/// `Accept-Language`): `size` bytes, starting with the header's value. A request whose
/// value is `slow` waits for `gate`.
#[derive(Clone)]
struct Varied {
    calls: Arc<AtomicUsize>,
    size: usize,
    language: Arc<AtomicBool>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl Varied {
    fn new(size: usize) -> Varied {
        Varied {
            calls: Arc::default(),
            size,
            language: Arc::default(),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A cache over this origin on `store`: what a request with `Accept-Encoding: value`
    /// gets (its `X-Cache` and body).
    fn cached(
        &self,
        store: impl Store,
    ) -> (
        CacheHandle,
        impl Fn(&str) -> futures_util::future::BoxFuture<'static, (String, Bytes)> + Clone,
    ) {
        let handle = CacheHandle::builder(store).namespace("t").build();
        let origin = self.clone();
        let service = CacheLayer::new(handle.clone())
            .cache_status_detail(CacheStatusDetail::Full)
            .layer(service_fn(move |r: Req| {
                let origin = origin.clone();
                async move {
                    origin.calls.fetch_add(1, Ordering::SeqCst);
                    let by_language = origin.language.load(Ordering::SeqCst);
                    let name = if by_language {
                        "accept-language"
                    } else {
                        "accept-encoding"
                    };
                    let value = r
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    if value == "slow" {
                        origin.gate.acquire().await.unwrap().forget();
                    }
                    let mut body = value.into_bytes();
                    body.resize(origin.size.max(body.len()), b'.');
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert("vary", name.parse().unwrap());
                    response
                        .headers_mut()
                        .insert("cache-control", "max-age=600".parse().unwrap());
                    Ok::<_, Infallible>(response)
                }
            }));
        let get = move |encoding: &str| {
            let service = service.clone();
            let request = Request::get("/page")
                .header("accept-encoding", encoding)
                .header("accept-language", encoding)
                .body(Full::default())
                .unwrap();
            let encoding = encoding.to_owned();
            let read: futures_util::future::BoxFuture<'static, (String, Bytes)> =
                Box::pin(async move {
                    let response = service.oneshot(request).await.unwrap();
                    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
                    let body = response.into_body().collect().await.unwrap().to_bytes();
                    assert!(
                        body.starts_with(encoding.as_bytes()),
                        "another variant's body"
                    );
                    (x_cache, body)
                });
            read
        };
        (handle, get)
    }
}

/// The fields of the entry hash of `/page`: `(values, indexes)`.
fn fields(server: &RedisServer) -> (Vec<String>, Vec<String>) {
    let all: Vec<String> = redis::cmd("HKEYS")
        .arg("t:k:/page")
        .query(&mut server.connection())
        .unwrap();
    all.into_iter().partition(|f| f.contains(':'))
}

async fn stored_values(server: &RedisServer, n: usize) {
    let stored = eventually(Duration::from_secs(10), || async {
        fields(server).0.len() == n
    })
    .await;
    assert!(stored, "expected {n} values, found {:?}", fields(server).0);
}

fn net_output_bytes(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("stats")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_large_variants_keep_the_circuit_closed_and_a_hit_reads_only_its_own() {
    const SIZE: usize = 8_000_000;
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tower_response_cache=warn")
        .with_test_writer()
        .try_init();
    let server = RedisServer::start();
    // Values far above the default cap (1 MiB, read well within the default 50 ms). The
    // deadline leaves a debug build on a busy machine time to read one 8 MB value, not six:
    // what Redis sends per hit (below) is the check that a hit reads only its own.
    let redis = RedisStore::builder(server.url())
        .max_value_bytes(16 << 20)
        .deadline(Duration::from_millis(400))
        .build()
        .unwrap();
    let store = FallbackStore::builder(redis, MemoryStore::new())
        .build()
        .await;
    let origin = Varied::new(SIZE);
    let (handle, get) = origin.cached(store.clone());
    let encodings = ["gzip", "br", "zstd", "deflate", "identity", "gzip, br"];
    for (i, encoding) in encodings.iter().enumerate() {
        assert_eq!(get(encoding).await.0, "MISS");
        stored_values(&server, i + 1).await;
    }
    for round in 0..3 {
        for encoding in encodings {
            let before = net_output_bytes(&server);
            let (x_cache, body) = get(encoding).await;
            assert_eq!(x_cache, "HIT", "{encoding}, round {round}");
            assert_eq!(body.len(), SIZE);
            // What Redis sent for this hit: the one value (and a small index), not six.
            let sent = net_output_bytes(&server) - before;
            assert!(
                (SIZE as u64..SIZE as u64 + 64 * 1024).contains(&sent),
                "a hit of one 8 MB variant read {sent} bytes from Redis"
            );
        }
    }
    assert_eq!(origin.calls(), encodings.len());
    assert_eq!(store.stats().circuit_openings, 0, "the circuit opened");
    assert_eq!(handle.stats().store_errors, 0);
    assert_eq!(store.backend(), Backend::Redis);
}

/// Process B fetches a variant while process A invalidates the URL: B's write is refused
/// by Redis, and no sibling variant comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_straddling_another_process_invalidation_brings_back_no_sibling() {
    let server = RedisServer::start();
    let origin = Varied::new(16);
    let (a, get_a) = origin.cached(RedisStore::builder(server.url()).build().unwrap());
    let (_b, get_b) = origin.cached(RedisStore::builder(server.url()).build().unwrap());
    assert_eq!(get_a("gzip").await.0, "MISS");
    stored_values(&server, 1).await;
    assert_eq!(get_b("gzip").await.0, "HIT");

    let slow = tokio::spawn(get_b("slow"));
    let waiting = eventually(Duration::from_secs(5), || async { origin.calls() == 2 }).await;
    assert!(waiting, "the slow fetch did not start");
    a.invalidate("/page").await.unwrap();
    origin.gate.add_permits(1);
    assert_eq!(slow.await.unwrap().0, "MISS");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        fields(&server).0.is_empty(),
        "a write fetched before the invalidation landed after it: {:?}",
        fields(&server)
    );
    assert_eq!(get_b("gzip").await.0, "MISS", "the sibling came back");
}

/// Sixteen junk `Accept-Encoding` values, written and never read, leave the variant real
/// clients read; past the cap the least recently read one goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_variants_leave_the_hot_one_and_the_cap_holds() {
    let server = RedisServer::start();
    let origin = Varied::new(64);
    let (handle, get) = origin.cached(RedisStore::builder(server.url()).build().unwrap());
    assert_eq!(get("gzip").await.0, "MISS");
    stored_values(&server, 1).await;
    assert_eq!(get("gzip").await.0, "HIT");
    // The read is recorded off the response path.
    let recorded = eventually(Duration::from_secs(5), || async {
        let index: Vec<u8> = redis::cmd("HGET")
            .arg("t:k:/page")
            .arg(&fields(&server).1[0])
            .query(&mut server.connection())
            .unwrap();
        index.ends_with(b"r")
    })
    .await;
    assert!(recorded, "the read was not recorded in the index");
    for junk in 0..20 {
        assert_eq!(get(&format!("junk-{junk}")).await.0, "MISS");
        stored_values(&server, (junk + 2).min(16)).await;
    }
    assert_eq!(fields(&server).0.len(), 16, "the cap is 16 variants");
    assert_eq!(
        get("gzip").await.0,
        "HIT",
        "junk pushed out the hot variant"
    );
    // The newest junk is kept; the oldest never-read junk went first.
    assert_eq!(get("junk-19").await.0, "HIT");
    assert_eq!(get("junk-0").await.0, "MISS");
    assert_eq!(handle.stats().store_errors, 0);
}

/// When the origin changes what it varies on, the index starts anew and the values filed
/// under the old names are removed with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_varying_on_other_headers_replaces_the_old_variants() {
    let server = RedisServer::start();
    let origin = Varied::new(16);
    let (handle, get) = origin.cached(RedisStore::builder(server.url()).build().unwrap());
    for encoding in ["gzip", "br", "zstd"] {
        assert_eq!(get(encoding).await.0, "MISS");
    }
    stored_values(&server, 3).await;
    origin.language.store(true, Ordering::SeqCst);
    // A value not stored yet: the origin's answer now varies on Accept-Language.
    assert_eq!(get("fr").await.0, "MISS");
    stored_values(&server, 1).await;
    assert_eq!(get("fr").await.0, "HIT");
    assert_eq!(
        get("gzip").await.0,
        "MISS",
        "a value filed under the old names"
    );
    assert_eq!(handle.stats().store_errors, 0);
}

/// A response larger than `max_value_bytes` is served and not stored in Redis (no error,
/// no outage); a smaller one is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_the_cap_is_served_and_not_stored() {
    let server = RedisServer::start();
    let origin = Varied::new(2 << 20);
    let redis = RedisStore::builder(server.url()).build().unwrap();
    let (handle, get) = origin.cached(redis.clone());
    for _ in 0..3 {
        let (x_cache, body) = get("gzip").await;
        assert_eq!(x_cache, "MISS");
        assert_eq!(body.len(), 2 << 20);
    }
    assert_eq!(origin.calls(), 3);
    assert!(fields(&server).0.is_empty(), "a 2 MiB value was stored");
    assert!(redis.stats().admissions_refused >= 1);
    assert_eq!(handle.stats().store_errors, 0);

    let small = Varied::new(1000);
    let (_, get) = small.cached(redis);
    assert_eq!(get("gzip").await.0, "MISS");
    stored_values(&server, 1).await;
    assert_eq!(get("gzip").await.0, "HIT");
}

/// What an earlier version kept under a variant's field (every `Vary` variant behind a
/// count) reads as a miss, is removed, and the next write replaces it: old and new
/// processes sharing a Redis serve every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_value_reads_as_a_miss_and_is_replaced() {
    let server = RedisServer::start();
    let origin = Varied::new(16);
    let (handle, get) = origin.cached(RedisStore::builder(server.url()).build().unwrap());
    assert_eq!(get("gzip").await.0, "MISS");
    stored_values(&server, 1).await;
    let (values, indexes) = fields(&server);
    let mut connection = server.connection();
    let value: Vec<u8> = redis::cmd("HGET")
        .arg("t:k:/page")
        .arg(&values[0])
        .query(&mut connection)
        .unwrap();
    // The earlier layout: the same 24-byte header and a count, under the index field.
    let () = redis::cmd("HSET")
        .arg("t:k:/page")
        .arg(&indexes[0])
        .arg(&value)
        .query(&mut connection)
        .unwrap();
    let () = redis::cmd("HDEL")
        .arg("t:k:/page")
        .arg(&values[0])
        .query(&mut connection)
        .unwrap();

    assert_eq!(get("gzip").await.0, "MISS");
    let replaced = eventually(Duration::from_secs(5), || async {
        fields(&server).0.len() == 1
    })
    .await;
    assert!(replaced, "not written anew: {:?}", fields(&server));
    assert_eq!(get("gzip").await.0, "HIT");
    assert_eq!(origin.calls(), 2);
    assert_eq!(handle.stats().store_errors, 0);
}

/// Concurrent reads of one store while Redis is stopped: with a reply budget of one
/// value, the first read holds the room until it runs out of time (an outage), the second
/// waits for the room and then for Redis (an outage too), and the third, finding no room
/// within its deadline, never reaches Redis: it reads as a miss, counted. The control, with
/// room for three, sends all three to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_finds_no_room_in_the_reply_budget_reads_as_a_miss() {
    const VALUE: usize = 64 * 1024;
    let server = RedisServer::start();
    let key = tower_response_cache::StoreKey {
        namespace: "t",
        logical: "/big",
        variant: 1,
    };
    for (budget, room_for_all) in [(VALUE, false), (4 * VALUE, true)] {
        let store = RedisStore::builder(server.url())
            .max_value_bytes(VALUE)
            .reply_budget(budget)
            .deadline(Duration::from_millis(300))
            .build()
            .unwrap();
        let entry = tower_response_cache::Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            Bytes::from(vec![b'x'; VALUE / 2]),
            Duration::from_secs(60),
        );
        store.put(key, Arc::new(entry)).await.unwrap();
        assert!(store.get(key).await.unwrap().is_some(), "stored");

        // Stopped until resumed (SIGSTOP), not for a fixed time: a loaded machine may run
        // this late.
        server.pause();
        let read = || {
            let store = store.clone();
            tokio::spawn(async move { store.get(key).await.map(|found| found.is_some()) })
        };
        let first = read();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let second = read();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let third = read().await.unwrap();
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        server.resume();

        for (name, read) in [("first", first), ("second", second)] {
            let error = read.expect_err("Redis held the read: it ran out of time");
            assert!(error.is_unavailable(), "{name}: {error}");
        }
        if room_for_all {
            let error = third.expect_err("with room, the third read waits on Redis too");
            assert!(error.is_unavailable(), "{error}");
            assert_eq!(store.stats().reply_budget_full, 0);
        } else {
            assert!(!third.expect("no room is no outage"), "no room: a miss");
            assert_eq!(store.stats().reply_budget_full, 1);
        }
        assert!(store.get(key).await.unwrap().is_some(), "budget {budget}");
    }
}
