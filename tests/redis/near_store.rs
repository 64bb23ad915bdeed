//! The near cache of one store, against a real `redis-server`: the lease lapses without
//! heartbeats and comes back with them, a lost or silent subscription forgets what it held,
//! every kind of read hits it, and an invalidation reaches it whatever happens to its caller
//! or its messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::{RedisServer, Silencer};
use bytes::Bytes;
use tower_response_cache::coordination::Coordination;
use tower_response_cache::{CacheLayer, RedisStore, Store, StoreKey};

/// The key these tests hold in a near cache.
const KEY: StoreKey<'static> = StoreKey {
    namespace: "near",
    logical: "/page",
    variant: 7,
};

fn near_store(redis: &RedisServer, lease: Duration) -> RedisStore {
    RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .near_cache(lease, 1 << 20)
        .build()
        .unwrap()
}

fn near_hit(store: &RedisStore) -> bool {
    answers_at_once(store, KEY)
}

/// Whether `store` answers `key` at once, from its near cache, with something held.
fn answers_at_once(store: &RedisStore, key: StoreKey<'_>) -> bool {
    let mut held = false;
    store
        .read_now(key, &mut |variants| held = !variants.is_empty())
        .is_some()
        && held
}

/// Write [`KEY`] through `store` until its near cache answers it (under a lease).
async fn held_in_near_cache(store: &RedisStore) {
    let entry = Arc::new(tower_response_cache::Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"old"),
        Duration::from_secs(60),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !near_hit(store) {
        let token = store.current_write_token().await.unwrap();
        store.put_checked(KEY, entry.clone(), token).await.unwrap();
        assert!(
            Instant::now() < deadline,
            "no near-cache hit with heartbeats flowing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (up to 2 s) until the near cache no longer answers [`KEY`].
async fn gone_from_near_cache(store: &RedisStore, why: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while near_hit(store) {
        assert!(Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Heartbeats stop (Redis refuses writes and publishes for a while): the lease lapses and
/// reads go to Redis; when heartbeats return, hits come from the near cache again.
#[tokio::test]
async fn the_lease_lapses_without_heartbeats_and_returns_with_them() {
    let redis = RedisServer::start();
    let lease = Duration::from_millis(100);
    let store = near_store(&redis, lease);
    held_in_near_cache(&store).await;
    let lapses = store.stats().lease_lapses;

    // Writes (the heartbeat script) and PUBLISH wait while reads go on, until unpaused
    // (not for a fixed time: a loaded machine may run this task late).
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query(&mut redis.connection())
        .unwrap();
    tokio::time::sleep(lease + lease / 2).await;
    // No lease: `try_get_now` declines, so the layer asks Redis (`get`).
    assert!(!near_hit(&store), "a near-cache hit without a lease");
    assert!(store.stats().lease_lapses > lapses, "the lapse is counted");
    // (A read would queue behind the paused heartbeat on the multiplexed connection.)
    unpause(&redis);
    let before = store.stats().redis_hits;
    assert!(store.get(KEY).await.unwrap().is_some(), "Redis answers");
    assert!(store.stats().redis_hits > before);

    let deadline = Instant::now() + Duration::from_secs(5);
    while !near_hit(&store) {
        assert!(Instant::now() < deadline, "near-cache hits did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Invalidations published while the subscription is down are never delivered: when it is
/// back, the near cache has forgotten what it held (the store alone, without the handle's
/// own ban on a lost channel).
#[tokio::test]
async fn a_lost_subscription_forgets_what_it_held() {
    let redis = RedisServer::start();
    let store = near_store(&redis, Duration::from_millis(100));
    let key = KEY;
    held_in_near_cache(&store).await;
    let mut admin = redis.connection();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-subscribe")
        .query(&mut admin)
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut admin)
        .unwrap();
    // Another process invalidates, and this one does not hear of it. Only the Redis entry
    // goes; what the near cache holds stays unless the lost subscription clears it.
    let other = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    other
        .invalidate("near", &tower_response_cache::Pattern::new("/page"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("+subscribe")
        .query(&mut admin)
        .unwrap();
    // Subscribed again and a lease again (a fresh entry elsewhere hits the near cache)...
    let fresh = StoreKey {
        logical: "/fresh",
        ..key
    };
    let entry = Arc::new(tower_response_cache::Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"fresh"),
        Duration::from_secs(60),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let token = store.current_write_token().await.unwrap();
        store
            .put_checked(fresh, entry.clone(), token)
            .await
            .unwrap();
        if answers_at_once(&store, fresh) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no lease after the subscription came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // ...and the invalidated entry is not served from it.
    assert!(
        !near_hit(&store),
        "the near cache served what it missed the invalidation of"
    );
    assert!(store.get(key).await.unwrap().is_none());
}

/// From the environment's settings to a near-cache hit over HTTP: `CACHE_NEAR_LEASE_MS`
/// turns it on behind the memory fallback, `Cache-Status` says `detail=l1`, and the stats
/// count it; an invalidation through the handle is not served afterwards.
#[tokio::test]
async fn configured_from_the_environment_hits_say_l1() {
    use axum::routing::get;
    let redis = RedisServer::start();
    let url = redis.url();
    let config = tower_response_cache::CacheConfig::from_lookup(|name| match name {
        "REDIS_ENABLED" => Some("true".into()),
        "REDIS_URL" => Some(url.clone()),
        "CACHE_REDIS_TIMEOUT_MS" => Some("300".into()),
        "CACHE_NEAR_LEASE_MS" => Some("100".into()),
        _ => None,
    })
    .unwrap();
    let handle = config.build().await.unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counter = calls.clone();
    let app = axum::Router::new()
        .route(
            "/page",
            get(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move { format!("call {n}") }
            }),
        )
        .layer(
            CacheLayer::new(handle.clone())
                .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
        );
    let addr = crate::support::serve(app).await;
    let client = crate::support::client();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = crate::support::get(&client, addr, "/page").await;
        if answer.header("cache-status").contains("detail=l1") {
            assert_eq!(answer.text(), "call 1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never a near-cache hit: {}",
            answer.header("cache-status")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A `Range` request is answered through the lookup, not the layer's hit path: the
    // lookup says the near cache answered, and so does its `Cache-Status`.
    let range = crate::support::get_with(&client, addr, "/page", &[("range", "bytes=0-3")]).await;
    assert_eq!(range.text(), "call", "{}", range.header("cache-status"));
    assert!(
        range.header("cache-status").contains("detail=l1"),
        "a near-cache hit for a range said {:?}",
        range.header("cache-status")
    );
    let stats = handle.stats();
    assert!(stats.l1_hits > 0, "{stats:?}");
    handle.invalidate("/page").await.unwrap();
    let answer = crate::support::get(&client, addr, "/page").await;
    assert_eq!(answer.text(), "call 2", "{}", answer.header("cache-status"));
}

/// Typed reads (`get_or_insert_with`) are answered from the near cache too, and an
/// invalidation through the handle makes the next read compute the value again.
#[tokio::test]
async fn typed_reads_hit_the_near_cache_and_obey_invalidations() {
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .near_cache(Duration::from_millis(200), 1 << 20)
        .build()
        .unwrap();
    let handle = tower_response_cache::CacheHandle::builder(store)
        .namespace("typed")
        .ttl(Duration::from_secs(60))
        .build();
    let calls = AtomicU64::new(0);
    let read = || async {
        handle
            .get_or_insert_with("report:1", async {
                calls.fetch_add(1, Ordering::SeqCst) + 1
            })
            .await
    };
    assert_eq!(read().await, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().l1_hits == 0 {
        assert_eq!(read().await, 1, "served from Redis or the near cache");
        assert!(
            Instant::now() < deadline,
            "never a near-cache hit: {:?}",
            handle.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    handle.invalidate("report:*").await.unwrap();
    assert_eq!(read().await, 2, "the invalidated value was served");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A process that drops its near-cache store withdraws its advertisement: invalidations
/// elsewhere stop waiting for its lease at once, not 30 s later, also in a process that
/// read (and remembers) its lease before.
#[tokio::test]
async fn a_dropped_near_cache_no_longer_holds_invalidations_up() {
    let redis = RedisServer::start();
    let lease = Duration::from_secs(3);
    let invalidator = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let holder = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .near_cache(lease, 1 << 20)
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pattern = tower_response_cache::Pattern::new("/page");
    // Seen by the invalidator (it remembers the longest lease it read) and acknowledged.
    let started = Instant::now();
    invalidator.invalidate("near", &pattern).await.unwrap();
    assert!(
        started.elapsed() < lease / 3,
        "the holder did not acknowledge"
    );
    drop(holder);
    // Its listener is gone too: it would never acknowledge.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    invalidator.invalidate("near", &pattern).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < lease / 3,
        "waited {took:?} for a dropped store's lease"
    );
}

/// A caller that stops waiting for an `invalidate` (a timeout, a client gone) does not
/// stop it halfway: the entry goes from Redis and from the near cache all the same.
#[tokio::test]
async fn an_invalidation_whose_caller_gave_up_still_reaches_the_near_cache() {
    let redis = RedisServer::start();
    let store = near_store(&redis, Duration::from_secs(2));
    held_in_near_cache(&store).await;
    let pattern = tower_response_cache::Pattern::new("/page");
    let gave_up =
        tokio::time::timeout(Duration::from_micros(1), store.invalidate("near", &pattern));
    assert!(gave_up.await.is_err(), "finished before its caller gave up");
    let why = "the near cache still serves what the abandoned invalidation removed";
    gone_from_near_cache(&store, why).await;
    assert!(store.get(KEY).await.unwrap().is_none(), "still in Redis");
}

/// A message on the invalidation channel that cannot be read (another version's, or junk)
/// may have been an invalidation: the near cache forgets what it held.
#[tokio::test]
async fn an_unreadable_message_empties_the_near_cache() {
    let redis = RedisServer::start();
    let store = near_store(&redis, Duration::from_secs(2));
    held_in_near_cache(&store).await;
    let _: i64 = redis::cmd("PUBLISH")
        .arg("tower-response-cache:invalidations")
        .arg(r#"{"origin":1,"generation":9,"namespace":"near","invalidation":{"Future":"x"}}"#)
        .query(&mut redis.connection())
        .unwrap();
    let why = "the near cache kept what an unreadable message may have covered";
    gone_from_near_cache(&store, why).await;
}

/// A subscription that stays open but delivers nothing (a half-open connection) is taken
/// for dead once heartbeats stop coming back, and replaced: the process hears invalidations
/// (and acknowledges them) again, instead of every invalidation waiting for its lease.
#[tokio::test]
async fn a_silent_subscription_is_replaced() {
    let redis = RedisServer::start();
    let proxy = Silencer::start(&redis).await;
    let lease = Duration::from_millis(300);
    let _holder = RedisStore::builder(proxy.url())
        .deadline(Duration::from_millis(300))
        .near_cache(lease, 1 << 20)
        .build()
        .unwrap();
    let invalidator = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .build()
        .unwrap();
    let pattern = tower_response_cache::Pattern::new("/page");
    let timed = || async {
        let started = Instant::now();
        invalidator.invalidate("near", &pattern).await.unwrap();
        started.elapsed()
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        timed().await < lease / 2,
        "premise: the holder acknowledges"
    );
    proxy.silence_subscriptions();
    assert!(timed().await >= lease, "a silent holder was not waited for");
    // Four leases without a heartbeat back (at least 1 s), then a new subscription.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if timed().await < lease / 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the silent subscription was never replaced: invalidations still wait the lease"
        );
    }
}

/// An invalidation that fails (here: Redis holds writes longer than the deadline) still
/// clears this process's near cache: it returned an error, but this process does not serve
/// what it tried to remove.
#[tokio::test]
async fn a_failed_invalidation_still_clears_this_process_near_cache() {
    let redis = RedisServer::start();
    let store = near_store(&redis, Duration::from_millis(100));
    let key = KEY;
    let fresh = StoreKey {
        logical: "/fresh",
        ..key
    };
    held_in_near_cache(&store).await;
    let entry = Arc::new(tower_response_cache::Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"fresh"),
        Duration::from_secs(60),
    ));
    let token = store.current_write_token().await.unwrap();
    store.put_checked(fresh, entry, token).await.unwrap();
    // Held until unpaused, not for a fixed time: a loaded machine may run this task late.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(30_000)
        .arg("WRITE")
        .query(&mut redis.connection())
        .unwrap();
    let failed = store
        .invalidate("near", &tower_response_cache::Pattern::new("/page"))
        .await;
    unpause(&redis);
    assert!(
        failed.is_err(),
        "the invalidation was held past its deadline"
    );
    // The lease comes back once writes flow again (the other key hits again)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while !answers_at_once(&store, fresh) {
        assert!(Instant::now() < deadline, "near-cache hits did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and the key it tried to invalidate is not among them.
    assert!(!answers_at_once(&store, key));
}

/// Foreign values under the lease set and its epoch (someone else's keys, or a corrupted
/// Redis): invalidations still work and return at once, and a near cache that cannot
/// advertise its lease never holds one, so it never answers.
#[tokio::test]
async fn foreign_values_under_the_lease_keys_cost_no_invalidation_and_no_stale_hit() {
    let redis = RedisServer::start();
    let mut admin = redis.connection();
    let _: () = redis::cmd("SET")
        .arg("tower-response-cache:near:leases")
        .arg("not a sorted set")
        .query(&mut admin)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("tower-response-cache:near:epoch")
        .arg("not")
        .arg("a string")
        .query(&mut admin)
        .unwrap();
    let holder = near_store(&redis, Duration::from_millis(100));
    let entry = Arc::new(tower_response_cache::Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"old"),
        Duration::from_secs(60),
    ));
    let token = holder.current_write_token().await.unwrap();
    holder.put_checked(KEY, entry, token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !near_hit(&holder),
        "a near-cache hit without an advertised lease"
    );
    let started = Instant::now();
    holder
        .invalidate("near", &tower_response_cache::Pattern::new("/page"))
        .await
        .expect("the invalidation works");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(holder.get(KEY).await.unwrap().is_none());
}

/// Ends a `CLIENT PAUSE` at once.
fn unpause(redis: &RedisServer) {
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut redis.connection())
        .unwrap();
}
