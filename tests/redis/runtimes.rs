//! A store built on one runtime and used from another: the runtime that built it is
//! dropped (a `#[tokio::test]` that built a store other tests share; a short `block_on`
//! at startup, then serving from another runtime), stays but is never polled again, or
//! there was none (a plain thread). The tasks that keep the store alive (the invalidation
//! channel's listener, the near cache's heartbeat) must keep running all the same: a store
//! that stops hearing other processes serves what they invalidated.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::load;
use crate::support::redis::{Partition, RedisServer};
use crate::support::stack::blocking;
use crate::support::{eventually, IdleRuntime};
use crate::two_process::slow_proxy;
use bytes::Bytes;
use tower_response_cache::coordination::{Coordination, StoreEvent};
use tower_response_cache::{Backend, CacheHandle, Entry, FallbackStore, MemoryStore, Pattern};
use tower_response_cache::{RedisStore, RedisStoreBuilder, Store, StoreKey};

/// What becomes of the runtime a store is built on before a test uses the store from its
/// own.
#[derive(Clone, Copy, Debug)]
enum BuiltOn {
    /// It runs a while and is then dropped.
    Dropped,
    /// It runs a while and is then never polled again.
    Idle,
    /// There is none: a plain thread builds the store.
    Absent,
}

/// Build with `builder` as `on` says, then (on a runtime) run `work` with the store before
/// the runtime goes; the store, and the idle runtime to drop at the test's end.
fn build_on<F>(
    on: BuiltOn,
    builder: RedisStoreBuilder,
    work: impl FnOnce(RedisStore) -> F + Send + 'static,
) -> (Option<IdleRuntime>, RedisStore)
where
    F: Future<Output = ()> + Send + 'static,
{
    let on_runtime = |builder: RedisStoreBuilder| async move {
        let store = builder.build().unwrap();
        work(store.clone()).await;
        store
    };
    blocking(|| match on {
        BuiltOn::Dropped => {
            let store = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(on_runtime(builder))
            })
            .join()
            .expect("the store was built on a runtime of its own");
            (None, store)
        }
        BuiltOn::Idle => {
            let (idle, store) = IdleRuntime::after(on_runtime(builder));
            (Some(idle), store)
        }
        BuiltOn::Absent => {
            let store = std::thread::spawn(move || builder.build().unwrap())
                .join()
                .expect("the store was built outside any runtime");
            (None, store)
        }
    })
}

/// Processes listening on the invalidation channel.
fn subscribers(server: &RedisServer) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg("tower-response-cache:invalidations")
        .query(&mut server.connection())
        .unwrap();
    count
}

/// Process B serves from its memory fallback (its link to Redis is too slow for any call's
/// deadline; only its subscription gets through in time, as in `two_process`), and hears
/// of process A's invalidation only through the channel: its Redis store was built `on`
/// another runtime, or none.
async fn another_process_invalidation_reaches_a_store_built(on: BuiltOn) {
    let server = RedisServer::start();
    let a = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let a = CacheHandle::builder(a).namespace("portal").build();
    let proxy = slow_proxy(server.port, Duration::from_millis(200)).await;
    let builder = RedisStore::builder(format!("redis://127.0.0.1:{proxy}/0"))
        .deadline(Duration::from_millis(50));
    // A runtime runs it a moment (it subscribes there) before going.
    let (idle, b) = build_on(on, builder, |_| {
        tokio::time::sleep(Duration::from_millis(300))
    });
    let b = FallbackStore::builder(b, MemoryStore::new())
        .fallback_ttl(Duration::from_secs(60))
        .probe_interval(Duration::from_millis(100))
        .build()
        .await;
    let b = CacheHandle::builder(b).namespace("portal").build();
    assert_eq!(
        b.backend(),
        Backend::FallingBack,
        "premise: B serves from memory"
    );

    let calls = AtomicUsize::new(0);
    let key = "dashboard:ABC";
    // B holds the entry (stored off the request path: until a load reaches no origin).
    let held = eventually(Duration::from_secs(5), || async {
        let before = calls.load(Ordering::SeqCst);
        load(&b, key, &calls, "v1").await == "v1" && calls.load(Ordering::SeqCst) == before
    })
    .await;
    assert!(held, "premise: B serves {key} from its memory");
    // Both listen before A speaks, given the time a running process would have had.
    eventually(Duration::from_secs(5), || async {
        subscribers(&server) >= 2
    })
    .await;

    a.invalidate("dashboard:AB*").await.unwrap();
    let started = Instant::now();
    let fresh = eventually(Duration::from_secs(5), || async {
        load(&b, key, &calls, "v2").await == "v2"
    })
    .await;
    assert!(
        fresh,
        "B (its building runtime: {on:?}) still serves {key} {:?} after another process invalidated it \
         ({} of 2 processes listen)",
        started.elapsed(),
        subscribers(&server)
    );
    blocking(|| drop(idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_on_a_dropped_runtime_hears_other_processes_invalidations() {
    another_process_invalidation_reaches_a_store_built(BuiltOn::Dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_on_an_idle_runtime_hears_other_processes_invalidations() {
    another_process_invalidation_reaches_a_store_built(BuiltOn::Idle).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_built_outside_any_runtime_hears_other_processes_invalidations() {
    another_process_invalidation_reaches_a_store_built(BuiltOn::Absent).await;
}

/// The key the near-cache tests hold.
const KEY: StoreKey<'static> = StoreKey {
    namespace: "near",
    logical: "/page",
    variant: 7,
};

/// Whether `store` answers [`KEY`] at once, from its near cache.
fn near_hit(store: &RedisStore) -> bool {
    let mut held = false;
    store
        .read_now(KEY, &mut |variants| held = !variants.is_empty())
        .is_some()
        && held
}

/// Write [`KEY`] through `store` until its near cache answers it (under a lease), within
/// 5 s; whether it did. Calls may fail meanwhile (a connection nobody drives is renewed).
async fn held_in_near_cache(store: &RedisStore) -> bool {
    let entry = Arc::new(Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"old"),
        Duration::from_secs(60),
    ));
    eventually(Duration::from_secs(5), || async {
        if let Ok(token) = store.current_write_token().await {
            let _ = store.put_checked(KEY, entry.clone(), token).await;
        }
        near_hit(store)
    })
    .await
}

/// A near cache filled on a runtime that then goes: it never serves what another process
/// invalidated (its lease lapses without heartbeats, or its listener applies the
/// invalidation), and it keeps working (heartbeats renew its lease).
async fn a_near_cache_filled_on(on: BuiltOn) {
    let server = RedisServer::start();
    let builder = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(300))
        .near_cache(Duration::from_millis(200), 1 << 20);
    let (idle, b) = build_on(on, builder, |store| async move {
        assert!(
            held_in_near_cache(&store).await,
            "premise: a near-cache hit"
        );
    });
    let a = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    a.invalidate("near", &Pattern::new("/page")).await.unwrap();
    // When `invalidate` returns, no process serves an entry fetched before it.
    assert!(
        !near_hit(&b),
        "B's near cache serves what A invalidated ({on:?})"
    );
    assert!(
        !matches!(b.get(KEY).await, Ok(Some(_))),
        "B serves what A invalidated ({on:?})"
    );
    assert!(
        held_in_near_cache(&b).await,
        "B's near cache (its filling runtime: {on:?}) never answers again: no heartbeat renews its lease \
         ({} lapses)",
        b.stats().lease_lapses
    );
    blocking(|| drop(idle));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_filled_on_a_dropped_runtime_keeps_its_lease() {
    a_near_cache_filled_on(BuiltOn::Dropped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_near_cache_filled_on_an_idle_runtime_keeps_its_lease() {
    a_near_cache_filled_on(BuiltOn::Idle).await;
}

/// A fallback store built on a runtime that is then dropped (a startup `block_on`), cut off
/// from Redis: its probe still replays the invalidation it queued meanwhile once Redis
/// answers, and closes the circuit. Until the replay, another process reads from Redis what
/// this one invalidated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_store_built_on_a_dropped_runtime_replays_what_it_queued() {
    let server = RedisServer::start();
    let partition = Partition::start(&server).await;
    let a = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let a = CacheHandle::builder(a).namespace("portal").build();
    let calls = AtomicUsize::new(0);
    let key = "dashboard:ABC";
    assert_eq!(load(&a, key, &calls, "v1").await, "v1");
    let written = eventually(Duration::from_secs(5), || async {
        server.keys("portal:k:*").len() == 1
    })
    .await;
    assert!(written, "premise: A wrote {key} to Redis");

    partition.cut();
    let url = partition.url();
    let store = blocking(|| {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let redis = RedisStore::builder(url)
                    .deadline(Duration::from_millis(100))
                    .build()
                    .unwrap();
                FallbackStore::builder(redis, MemoryStore::new())
                    .probe_interval(Duration::from_millis(100))
                    .build()
                    .await
            })
        })
        .join()
        .expect("the store was built on a runtime of its own")
    });
    assert!(
        store.is_falling_back(),
        "premise: Redis is out of B's reach"
    );
    let b = CacheHandle::builder(store.clone())
        .namespace("portal")
        .build();
    let _ = b.invalidate("dashboard:AB*").await;
    assert_eq!(
        store.pending_invalidations(),
        1,
        "premise: queued for Redis"
    );

    partition.heal();
    let fresh = eventually(Duration::from_secs(10), || async {
        load(&a, key, &calls, "v2").await == "v2"
    })
    .await;
    assert!(
        fresh,
        "A still reads what B invalidated: B's probe never replayed it ({} pending, falling \
         back: {})",
        store.pending_invalidations(),
        store.is_falling_back()
    );
    let closed = eventually(Duration::from_secs(5), || async {
        !store.is_falling_back()
    })
    .await;
    assert!(closed, "B's circuit never closed");
}

/// The store's own tasks have a connection of their own: a listener slow to take an
/// invalidation in (it runs on the store's thread, as every task of the store does) never
/// holds up a request's Redis call. The request connection is opened by the first request,
/// on the request's runtime, not by the store's tasks, which call Redis from the moment
/// the store is built (the channel's catch-up, the `maxmemory` check).
#[tokio::test]
async fn a_slow_listener_never_holds_up_a_request() {
    let server = RedisServer::start();
    let publisher = RedisStore::builder(server.url()).build().unwrap();
    let store = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(100))
        .build()
        .unwrap();
    let blocked = Arc::new(AtomicUsize::new(0));
    let seen = blocked.clone();
    store.set_listener(Arc::new(move |event: &StoreEvent| {
        if matches!(event, StoreEvent::Remote { .. }) {
            seen.fetch_add(1, Ordering::SeqCst);
            // Blocks the store's thread, as applying a large invalidation would.
            std::thread::sleep(Duration::from_secs(2));
        }
    }));
    // Both listen, and the store's tasks have called Redis (the catch-up follows the
    // subscription).
    let listening = eventually(Duration::from_secs(10), || async {
        subscribers(&server) == 2
    })
    .await;
    assert!(listening, "the stores never subscribed");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let heard = eventually(Duration::from_secs(10), || async {
        publisher
            .invalidate("t", &Pattern::new("/elsewhere*"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        blocked.load(Ordering::SeqCst) > 0
    })
    .await;
    assert!(heard, "the invalidation never reached the listener");
    // The store's thread sleeps in the listener now: a request still reads Redis.
    for _ in 0..5 {
        let key = StoreKey {
            namespace: "t",
            logical: "/page",
            variant: 0,
        };
        let started = Instant::now();
        let read = store.get(key).await;
        assert!(
            matches!(read, Ok(None)),
            "a request's Redis call waited for the store's thread: {read:?} after {:?}",
            started.elapsed()
        );
    }
}

/// The fallback store's probe runs on the fallback store's thread and calls its Redis store
/// on the connection of the store's own tasks (`Primary::for_tasks`), never on the one
/// requests use: were the probe to reconnect that one after an outage, its driver would run
/// on the fallback store's thread and die with it, and a Redis store handed to a fallback
/// store and also used on its own would fail its next call once the fallback store is
/// dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_probe_does_not_open_the_request_connection_on_its_thread() {
    let server = RedisServer::start();
    let partition = Partition::start(&server).await;
    partition.cut();
    let redis = RedisStore::builder(partition.url())
        .deadline(Duration::from_millis(200))
        .build()
        .unwrap();
    let fallback = FallbackStore::builder(redis.clone(), MemoryStore::new())
        .probe_interval(Duration::from_millis(50))
        .build()
        .await;
    assert!(fallback.is_falling_back(), "premise: Redis is out of reach");
    // The probe tries (and fails) a few times before Redis is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    partition.heal();
    let closed = eventually(Duration::from_secs(10), || async {
        !fallback.is_falling_back()
    })
    .await;
    assert!(closed, "premise: the probe closed the circuit");
    let key = StoreKey {
        namespace: "t",
        logical: "/page",
        variant: 0,
    };
    // The request connection works (after one call that finds it broken by the outage and
    // reconnects, if the probe did not already).
    let answered = eventually(Duration::from_secs(5), || async {
        matches!(redis.get(key).await, Ok(None))
    })
    .await;
    assert!(answered, "premise: the request connection answers");
    drop(fallback);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for call in 0..3 {
        let read = redis.get(key).await;
        assert!(
            matches!(read, Ok(None)),
            "call {call} on the request lane failed once the fallback store (whose probe opened \
             that lane on its thread) was dropped: {read:?}"
        );
    }
}
