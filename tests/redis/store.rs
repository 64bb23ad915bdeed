//! The Redis store on a real `redis-server`: shared entries, invalidation across instances,
//! ban semantics across processes, tags.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{client, eventually, get, Origin};
use tower_response_cache::{Backend, CacheConfig, CacheHandle, CacheLayer, MemoryStore};
use tower_response_cache::{FallbackStore, RedisStore};

async fn redis_handle(server: &RedisServer, namespace: &str) -> CacheHandle {
    let redis = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    CacheHandle::builder(redis).namespace(namespace).build()
}

async fn fallback_handle(server: &RedisServer, namespace: &str) -> CacheHandle {
    let redis = RedisStore::builder(server.url()).build().unwrap();
    let store = FallbackStore::builder(redis, MemoryStore::new())
        .probe_interval(Duration::from_millis(100))
        .build()
        .await;
    CacheHandle::builder(store).namespace(namespace).build()
}

/// A typed read of `key` that counts in `calls` when it computes `value`.
pub(crate) async fn load(
    handle: &CacheHandle,
    key: &str,
    calls: &AtomicUsize,
    value: &str,
) -> String {
    handle
        .get_or_insert_with(key, async {
            calls.fetch_add(1, Ordering::SeqCst);
            value.to_owned()
        })
        .await
}

#[tokio::test]
async fn instances_share_entries_and_invalidations() {
    let server = RedisServer::start();
    let a = redis_handle(&server, "portal").await;
    let b = redis_handle(&server, "portal").await;
    let calls = AtomicUsize::new(0);
    assert_eq!(load(&a, "dashboard:ABC", &calls, "v1").await, "v1");
    assert_eq!(load(&a, "dashboard:ABD", &calls, "v1").await, "v1");
    assert_eq!(load(&a, "dashboard:XYZ", &calls, "v1").await, "v1");
    // B reads what A stored: no origin call.
    assert_eq!(load(&b, "dashboard:ABC", &calls, "v2").await, "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(server.keys("portal:k:*").len(), 3);

    // B invalidates by pattern; A sees it at once.
    assert_eq!(b.invalidate("dashboard:AB*").await.unwrap(), 2);
    assert_eq!(load(&a, "dashboard:ABC", &calls, "v2").await, "v2");
    assert_eq!(load(&a, "dashboard:XYZ", &calls, "v2").await, "v1");
    // Exact keys take one UNLINK.
    assert_eq!(b.invalidate("dashboard:XYZ").await.unwrap(), 1);
    assert_eq!(load(&a, "dashboard:XYZ", &calls, "v3").await, "v3");
}

#[tokio::test]
async fn namespaces_share_one_redis_without_touching_each_other() {
    let server = RedisServer::start();
    let a = redis_handle(&server, "app-a").await;
    let b = redis_handle(&server, "app-b").await;
    let calls = AtomicUsize::new(0);
    load(&a, "k", &calls, "a").await;
    load(&b, "k", &calls, "b").await;
    assert_eq!(a.invalidate("*").await.unwrap(), 1);
    assert_eq!(a.invalidate_all().await.unwrap(), 0);
    assert_eq!(load(&b, "k", &calls, "new").await, "b");
    // Glob characters in a namespace are taken literally.
    let odd = redis_handle(&server, "app-*").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    load(&odd, "k", &calls, "odd").await;
    assert_eq!(odd.invalidate_all().await.unwrap(), 1);
    assert_eq!(load(&b, "k", &calls, "new").await, "b");
}

#[tokio::test]
async fn a_fetch_started_before_another_instances_invalidation_is_not_stored() {
    let server = RedisServer::start();
    let a = redis_handle(&server, "portal").await;
    let b = redis_handle(&server, "portal").await;
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let a = a.clone();
        tokio::spawn(async move {
            a.get_or_insert_with("companies_all_synced", async move {
                started_tx.send(()).unwrap();
                release_rx.await.unwrap();
                "stale".to_string()
            })
            .await
        })
    };
    started_rx.await.unwrap();
    // Another process invalidates while A's fetch is in flight.
    b.invalidate("companies_*").await.unwrap();
    release_tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap(), "stale");
    assert!(
        server.keys("portal:k:*").is_empty(),
        "the stale value landed in Redis after the invalidation"
    );
    let calls = AtomicUsize::new(0);
    assert_eq!(
        load(&b, "companies_all_synced", &calls, "fresh").await,
        "fresh"
    );
    // A learned the new generation: its next writes are stored again.
    a.invalidate("other").await.unwrap();
    load(&a, "later", &calls, "x").await;
    assert_eq!(server.keys("portal:k:later").len(), 1);
}

#[tokio::test]
async fn tags_invalidate_across_instances() {
    let server = RedisServer::start();
    let a = redis_handle(&server, "t").await;
    let b = redis_handle(&server, "t").await;
    let addr = Origin::default().serve(CacheLayer::new(a.clone())).await;
    let client = client();
    for id in ["A", "B"] {
        get(
            &client,
            addr,
            &format!("/c/{id}?tag=company:{id},%20dashboards"),
        )
        .await;
    }
    let both = eventually(Duration::from_secs(5), || async {
        server.keys("t:k:*").len() == 2
    })
    .await;
    assert!(both, "both entries reach Redis");
    assert_eq!(b.invalidate_tag("company:A").await.unwrap(), 1);
    assert_eq!(server.keys("t:k:*"), vec!["t:k:/c/B".to_string()]);
    assert_eq!(b.invalidate_tag("dashboards").await.unwrap(), 1);
    assert!(server.keys("t:k:*").is_empty());
}

#[tokio::test]
async fn fallback_stores_drop_fetches_in_flight_across_another_process_invalidation() {
    let server = RedisServer::start();
    let portal = fallback_handle(&server, "portal").await;
    let sync = fallback_handle(&server, "portal").await;
    assert_eq!(portal.backend(), Backend::Redis);
    // An in-flight fetch on the portal; the sync process invalidates meanwhile.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let portal = portal.clone();
        tokio::spawn(async move {
            portal
                .get_or_insert_with("dashboard:ABC", async move {
                    started_tx.send(()).unwrap();
                    release_rx.await.unwrap();
                    1u32
                })
                .await
        })
    };
    started_rx.await.unwrap();
    sync.invalidate("dashboard:ABC*").await.unwrap();
    release_tx.send(()).unwrap();
    slow.await.unwrap();
    assert!(server.keys("portal:k:*").is_empty());
    let calls = AtomicUsize::new(0);
    let v = portal
        .get_or_insert_with("dashboard:ABC", async {
            calls.fetch_add(1, Ordering::SeqCst);
            2u32
        })
        .await;
    assert_eq!((v, calls.load(Ordering::SeqCst)), (2, 1));
}

#[tokio::test]
async fn a_handle_configured_from_environment_variables_caches_in_redis() {
    let server = RedisServer::start();
    let port = server.port.to_string();
    let vars = [
        ("REDIS_ENABLED", "true"),
        ("REDIS_HOST", "127.0.0.1"),
        ("REDIS_PORT", port.as_str()),
        ("REDIS_DB", "3"),
        ("CACHE_NAMESPACE", "envtest"),
    ];
    let config = CacheConfig::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let cache = config.build().await.unwrap();
    assert_eq!(cache.backend(), Backend::Redis);
    let calls = AtomicUsize::new(0);
    load(&cache, "k", &calls, "v").await;
    let mut db3 = redis::Client::open(format!("redis://127.0.0.1:{port}/3"))
        .unwrap()
        .get_connection()
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("envtest:k:*")
        .query(&mut db3)
        .unwrap();
    assert_eq!(keys, vec!["envtest:k:k".to_string()]);
}

#[tokio::test]
async fn a_new_instance_stores_its_first_write_after_past_invalidations() {
    let server = RedisServer::start();
    let old = redis_handle(&server, "ns").await;
    old.invalidate("x*").await.unwrap();
    old.invalidate("y").await.unwrap();
    let new = redis_handle(&server, "ns").await;
    // The instance catches up with the generation in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let calls = AtomicUsize::new(0);
    load(&new, "first", &calls, "v").await;
    assert_eq!(server.keys("ns:k:first").len(), 1);
}

/// Another process invalidated a moment ago and its message has not arrived here yet (here:
/// the counter moved in Redis with no message at all). A miss that begins now fetches after
/// that invalidation, so its answer must be stored, not refused for a stale token: a slow
/// dashboard must not be computed twice after every sync.
#[tokio::test]
async fn a_miss_after_an_invalidation_this_process_has_not_heard_of_is_stored() {
    let server = RedisServer::start();
    let handle = redis_handle(&server, "ns").await;
    let calls = AtomicUsize::new(0);
    load(&handle, "warm", &calls, "v").await;
    for _ in 0..3 {
        server.draw_generation();
    }
    assert_eq!(load(&handle, "dashboard", &calls, "v1").await, "v1");
    assert_eq!(
        server.keys("ns:k:dashboard").len(),
        1,
        "the write was refused"
    );
    assert_eq!(load(&handle, "dashboard", &calls, "v2").await, "v1");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "computed twice");
}

/// The other side of the same race: another process invalidated *before* this fetch began,
/// but its message arrives while the fetch is in flight. The fetch read the counter after
/// the invalidation, so its answer is current and must be stored; the late message must
/// not throw it away (Redis's write check already refuses what began before).
#[tokio::test]
async fn a_late_message_about_an_earlier_invalidation_does_not_discard_a_fresh_fetch() {
    let server = RedisServer::start();
    for handle in [
        redis_handle(&server, "portal").await,
        fallback_handle(&server, "portal").await,
    ] {
        let key = format!("dashboard:{}", handle.backend().as_str());
        // The other process's invalidation: the counter moves first...
        let generation = server.draw_generation();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let fetch = {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle
                    .get_or_insert_with("dashboard:x", async move {
                        started_tx.send(()).unwrap();
                        release_rx.await.unwrap();
                        "current".to_owned()
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        // ...and its message arrives while this fetch is in flight.
        server.publish_invalidation(generation, "portal", "dashboard:*");
        tokio::time::sleep(Duration::from_millis(100)).await;
        release_tx.send(()).unwrap();
        assert_eq!(fetch.await.unwrap(), "current");
        let stored = eventually(Duration::from_secs(2), || async {
            server.keys("portal:k:dashboard:x").len() == 1
        })
        .await;
        assert!(stored, "{key}: the fresh answer was thrown away");
        handle.invalidate("dashboard:*").await.unwrap();
    }
}

/// A late message about an invalidation that a fetch in flight began after leaves that
/// fetch in the air: the next request for the key waits for it instead of fetching again.
/// A message about one it began before still parts the next request from it.
#[tokio::test]
async fn a_late_message_parts_requests_only_from_fetches_that_began_before_its_invalidation() {
    let server = RedisServer::start();
    let handles = [
        redis_handle(&server, "portal").await,
        fallback_handle(&server, "portal").await,
    ];
    for (store, handle) in handles.into_iter().enumerate() {
        // `after`: how many generations past the fetch's token the invalidation drew.
        for (after, joins) in [(0, true), (1, false)] {
            let key = format!("flight:{store}:{after}");
            let generation = server.draw_generation();
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
            let first = {
                let (handle, key) = (handle.clone(), key.clone());
                tokio::spawn(async move {
                    handle
                        .get_or_insert_with(&key, async move {
                            started_tx.send(()).unwrap();
                            release_rx.await.unwrap();
                            "first".to_owned()
                        })
                        .await
                })
            };
            started_rx.await.unwrap();
            server.publish_invalidation(generation + after, "portal", "flight:*");
            tokio::time::sleep(Duration::from_millis(100)).await;
            let calls = std::sync::Arc::new(AtomicUsize::new(0));
            let second = {
                let (handle, key, calls) = (handle.clone(), key.clone(), calls.clone());
                tokio::spawn(async move { load(&handle, &key, &calls, "second").await })
            };
            tokio::time::sleep(Duration::from_millis(100)).await;
            release_tx.send(()).unwrap();
            assert_eq!(first.await.unwrap(), "first");
            let second = second.await.unwrap();
            let fetched = calls.load(Ordering::SeqCst);
            if joins {
                assert_eq!(
                    (second.as_str(), fetched),
                    ("first", 0),
                    "store {store}: a fetch that began after the invalidation was fetched again"
                );
            } else {
                assert_eq!(
                    (second.as_str(), fetched),
                    ("second", 1),
                    "store {store}: a request after the invalidation waited for a fetch from before it"
                );
            }
        }
    }
}
