//! Soft invalidation on a real `redis-server`: matching entries are served stale (within
//! their stale-while-revalidate window) while one background fetch refreshes them, every
//! instance sharing the Redis sees the same, a response fetched before the soft
//! invalidation is never stored after it, and a hard invalidation beats it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{client, eventually, get, HttpClient, Origin};
use tower_response_cache::coordination::Coordination;
use tower_response_cache::{CacheHandle, CacheLayer, Entry, MemoryStore, Pattern, Store, StoreKey};
use tower_response_cache::{FallbackStore, RedisStore};

/// One application instance: a handle on a fallback store over the shared Redis, with a
/// stale-while-revalidate window, behind an axum server.
async fn instance(server: &RedisServer, origin: &Origin) -> (CacheHandle, SocketAddr) {
    let redis = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let store = FallbackStore::builder(redis, MemoryStore::new())
        .build()
        .await;
    let handle = CacheHandle::builder(store)
        .namespace("t")
        .stale_while_revalidate(Duration::from_secs(60))
        .build();
    let addr = origin.serve(CacheLayer::new(handle.clone())).await;
    (handle, addr)
}

async fn read(client: &HttpClient, addr: SocketAddr, path: &str) -> (String, String) {
    let answer = get(client, addr, path).await;
    assert_eq!(answer.status, 200);
    (answer.x_cache().to_owned(), answer.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_invalidation_in_redis_serves_stale_refreshes_once_and_hard_beats_it() {
    let server = RedisServer::start();
    let origin = Origin::default();
    // Instance A serves; instance B (another process, as far as Redis can tell) only
    // invalidates.
    let (a, at_a) = instance(&server, &origin).await;
    let (b, _) = instance(&server, &origin).await;
    let client = client();
    read(&client, at_a, "/api/dashboard/ABC").await;
    read(&client, at_a, "/api/dashboard/XYZ").await;
    let stored = eventually(Duration::from_secs(5), || async {
        server.keys("t:k:*").len() == 2
    })
    .await;
    assert!(stored, "the entries never reached Redis");

    // Marked in Redis, not removed: A serves the old answer as stale, without waiting.
    assert_eq!(b.invalidate_soft("/api/dashboard/A*").await.unwrap(), 1);
    assert_eq!(server.keys("t:k:*").len(), 2);
    let stores = a.stats().stores;
    assert_eq!(
        read(&client, at_a, "/api/dashboard/ABC").await,
        ("STALE".to_owned(), "/api/dashboard/ABC #1".to_owned())
    );
    assert_eq!(read(&client, at_a, "/api/dashboard/XYZ").await.0, "HIT");
    // One background fetch refreshed it; then it reads as fresh. B's message may reach A
    // after A's refresh began: that refresh took its token after the invalidation, so the
    // late message leaves it in the air and the next stale reads wait for it. (No reads
    // while it lands: a read that looks up just before the store and takes its turn just
    // after the refresh ends starts one of its own, a race this test is not about.)
    let refreshed = eventually(Duration::from_secs(5), || async {
        a.stats().stores > stores
    })
    .await;
    assert!(refreshed, "the stale entry was never refreshed");
    assert_eq!(origin.calls(), 3, "one refresh, not more");
    assert_eq!(
        read(&client, at_a, "/api/dashboard/ABC").await,
        ("HIT".to_owned(), "/api/dashboard/ABC #3".to_owned()),
        "the refresh (the origin's third call) is what is served"
    );

    // Hard beats soft.
    b.invalidate_soft("/api/dashboard/*").await.unwrap();
    b.invalidate("/api/dashboard/*").await.unwrap();
    assert_eq!(read(&client, at_a, "/api/dashboard/XYZ").await.0, "MISS");
    assert!(server.keys("t:k:/api/dashboard/ABC").is_empty());
}

/// The race above, made certain: B's message reaches A again while A's refresh (which
/// began after B's soft invalidation) is at the origin. The stale reads meanwhile wait for
/// that refresh; none starts another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_about_a_soft_invalidation_starts_no_second_refresh() {
    let server = RedisServer::start();
    let origin = Origin::default();
    let (a, at_a) = instance(&server, &origin).await;
    let (b, _) = instance(&server, &origin).await;
    let client = client();
    let slow = "/api/slow?delay_ms=600";
    read(&client, at_a, slow).await;
    let stored = eventually(Duration::from_secs(5), || async {
        server.keys("t:k:*").len() == 1
    })
    .await;
    assert!(stored, "the entry never reached Redis");
    assert_eq!(b.invalidate_soft("/api/slow").await.unwrap(), 1);
    let generation = server.generation();
    let stores = a.stats().stores;
    // A hears B's message before it has anything in flight.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(read(&client, at_a, slow).await.0, "STALE");
    // The refresh is at the origin; the message arrives (again).
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.publish_invalidation(generation, "t", "/api/*");
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..3 {
        assert_eq!(
            read(&client, at_a, slow).await,
            ("STALE".to_owned(), "/api/slow #1".to_owned())
        );
    }
    // Wait for the refresh to be stored without reading meanwhile: a read whose lookup
    // comes just before the store and whose turn comes just after the refresh ends starts
    // a refresh of its own, a race this test is not about.
    let refreshed = eventually(Duration::from_secs(5), || async {
        a.stats().stores > stores
    })
    .await;
    assert!(refreshed, "the refresh never landed");
    assert_eq!(origin.calls(), 2, "one refresh, not more");
    assert_eq!(
        read(&client, at_a, slow).await,
        ("HIT".to_owned(), "/api/slow #2".to_owned())
    );
}

fn entry(body: &'static str) -> Arc<Entry> {
    Arc::new(
        Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(body.as_bytes()),
            Duration::from_secs(600),
        )
        .with_stale(Duration::from_secs(60), Duration::ZERO),
    )
}

fn is_fresh(entry: &Entry) -> bool {
    // An expired entry has spent its TTL: its age reaches it.
    entry.stored_at_millis() + entry.ttl().as_millis() as u64
        > std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_fetched_before_a_soft_invalidation_is_not_stored_after_it() {
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let key = StoreKey {
        namespace: "t",
        logical: "/a",
        variant: 1,
    };
    store
        .put_checked(key, entry("v1"), store.write_token())
        .await
        .unwrap();
    let fetched_before = store.write_token();
    let exact = Pattern::new("/a");
    assert_eq!(store.invalidate_soft("t", &exact).await.unwrap(), 1);
    store
        .put_checked(key, entry("v2"), fetched_before)
        .await
        .unwrap();
    let seen = store.get(key).await.unwrap().expect("still there, marked");
    assert_eq!(
        seen[0].body(),
        "v1",
        "a write fetched before the mark landed"
    );
    assert!(
        !is_fresh(&seen[0]),
        "a soft-invalidated entry read as fresh"
    );

    // A fetch that began after the mark lands, and reads as fresh.
    store
        .put_checked(key, entry("v3"), store.write_token())
        .await
        .unwrap();
    let seen = store.get(key).await.unwrap().unwrap();
    assert_eq!(seen[0].body(), "v3");
    assert!(is_fresh(&seen[0]));
    // A glob marks too, and an entry that is gone is not resurrected by a mark.
    assert_eq!(
        store
            .invalidate_soft("t", &Pattern::new("/*"))
            .await
            .unwrap(),
        1
    );
    assert!(!is_fresh(&store.get(key).await.unwrap().unwrap()[0]));
    store.invalidate("t", &exact).await.unwrap();
    assert_eq!(store.invalidate_soft("t", &exact).await.unwrap(), 0);
    assert!(server.keys("t:k:*").is_empty());
}

/// A key with 20 000 variants (a query flood) soft-invalidated while another client
/// `PING`s in a loop: Redis never stalls more than 10 ms, because the marking runs in
/// bounded batches, not one script over the whole hash. Redis's own slow log (every
/// command over 10 ms) is the exact witness; the `PING` loop is what a client sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_soft_invalidation_of_twenty_thousand_variants_never_stalls_redis() {
    const VARIANTS: usize = 20_000;
    let server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = CacheHandle::builder(store.clone()).namespace("t").build();
    // One real value (1 KiB of body), copied under 20 000 variant fields.
    let entry = Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        bytes::Bytes::from(vec![b'x'; 1024]),
        Duration::from_secs(600),
    );
    let key = StoreKey {
        namespace: "t",
        logical: "/flood",
        variant: 1,
    };
    store.put(key, Arc::new(entry)).await.unwrap();
    let mut connection = server.connection();
    // The variant's index and its one value (`<index>:<32 hex digits>`).
    let stored: Vec<String> = redis::cmd("HKEYS")
        .arg("t:k:/flood")
        .query(&mut connection)
        .unwrap();
    let value_field = stored
        .iter()
        .find(|f| f.contains(':'))
        .expect("a value field");
    let value: Vec<u8> = redis::cmd("HGET")
        .arg("t:k:/flood")
        .arg(value_field)
        .query(&mut connection)
        .unwrap();
    for chunk in (2..=VARIANTS as u64).collect::<Vec<_>>().chunks(1000) {
        let mut hset = redis::cmd("HSET");
        hset.arg("t:k:/flood");
        for variant in chunk {
            hset.arg(format!("{variant:016x}:{variant:032x}"))
                .arg(&value);
        }
        let _: u64 = hset.query(&mut connection).unwrap();
    }
    let fields: usize = redis::cmd("HLEN")
        .arg("t:k:/flood")
        .query(&mut connection)
        .unwrap();
    assert_eq!(fields, VARIANTS + 1, "20 000 values and one index");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(10_000)
        .query(&mut connection)
        .unwrap();
    let () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query(&mut connection)
        .unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pinger = {
        let (stop, mut connection) = (stop.clone(), server.connection());
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut pings = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let started = std::time::Instant::now();
                let _: String = redis::cmd("PING").query(&mut connection).unwrap();
                slowest = slowest.max(started.elapsed());
                pings += 1;
            }
            (slowest, pings)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let marked = handle.invalidate_soft("/flood").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (slowest, pings) = pinger.join().unwrap();
    eprintln!("soft invalidation of {VARIANTS} variants: slowest of {pings} PINGs {slowest:?}");

    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10)
        .query(&mut connection)
        .unwrap();
    assert!(
        slow.is_empty(),
        "Redis ran commands over 10 ms during the soft invalidation: {slow:?}"
    );
    // The slow log above is the 10 ms bound, on Redis's own clock. A PING's round trip
    // also counts the time a busy machine leaves the pinger or Redis unscheduled: its bound
    // only catches a stall the slow log would not see (many commands queued at once).
    assert!(
        slowest < Duration::from_millis(100),
        "a PING waited {slowest:?} (of {pings})"
    );

    // Positive control: every variant carries the mark (bytes 9–16: its generation).
    let values: Vec<Vec<u8>> = redis::cmd("HVALS")
        .arg("t:k:/flood")
        .query(&mut connection)
        .unwrap();
    assert_eq!(values.len(), VARIANTS + 1);
    let unmarked = values.iter().filter(|v| v[8..16] == [0; 8]).count();
    assert_eq!(
        unmarked, 0,
        "{unmarked} variants were not marked ({marked} reported)"
    );
}
