//! The near cache (L1 in front of Redis) across OS processes: three server instances with a
//! near cache, a separate sync process without one invalidating every 100 ms, and a checker
//! reading every instance continuously. A read that started after an `invalidate` returned
//! must never carry an older version: not in steady state, not while the subscription
//! connections are killed (`CLIENT KILL TYPE pubsub`), not while Redis is paused (SIGSTOP)
//! and resumed, not while one instance's process is stopped and continued.
//!
//! The instances and the sync process are this test binary run again (`near_helper`, with
//! `NEAR_ROLE` set): separate processes with their own clocks, connections and leases. The
//! origin's data is a file the sync process rewrites before each invalidation. Instances use
//! a bare `RedisStore` (no memory fallback): the fallback's outage rules are unchanged and
//! tested elsewhere, and this checks what the near cache adds. Also here: how long an
//! invalidation waits for the near caches of other processes. One store's near-cache rules
//! are in `near_store.rs`.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::near_processes::{p99, phase, Deployment, Recorded, LEASE};
use crate::support::redis::{RedisCluster, RedisServer};
use tower_response_cache::{RedisStore, Store};

/// Not a test of its own: the instance and sync processes run this binary again with
/// `NEAR_ROLE` set. Without it, returns at once.
#[test]
fn near_helper() {
    crate::near_processes::run_helper();
}

/// A phase in which `server` is paused (SIGSTOP) for 700 ms and resumed; its stale reads.
fn paused(deployment: &Deployment, name: &str, server: &RedisServer) -> u64 {
    phase(deployment, name, || {
        std::thread::sleep(Duration::from_millis(500));
        server.pause();
        std::thread::sleep(Duration::from_millis(700));
        server.resume();
        std::thread::sleep(Duration::from_millis(1000));
    })
    .2
}

#[test]
fn near_caches_in_three_processes_never_serve_what_a_sync_process_invalidated() {
    let redis = RedisServer::start();
    let deployment = Deployment::start(&redis.url());
    let mut stale = 0;

    let (reads, l1, s) = phase(&deployment, "steady", || {
        std::thread::sleep(Duration::from_secs(2))
    });
    stale += s;
    assert!(reads > 100, "too few reads: {reads}");
    assert!(
        l1 > reads / 10,
        "the near cache answered {l1} of {reads} reads"
    );

    // Killed, and kept from subscribing again for a while (invalidations published
    // meanwhile are never delivered), then let back in. Instance 0 is not read meanwhile,
    // so its near cache still holds what it held before (reads would refill it).
    let (_, _, s) = phase(&deployment, "subscriptions killed", || {
        let mut admin = redis.connection();
        for _ in 0..2 {
            deployment.quiet.store(0, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(400));
            let mut acl = |rule: &str| {
                let _: () = redis::cmd("ACL")
                    .arg("SETUSER")
                    .arg("default")
                    .arg(rule)
                    .query(&mut admin)
                    .unwrap();
            };
            acl("-subscribe");
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut redis.connection())
                .unwrap();
            std::thread::sleep(Duration::from_millis(600));
            // No invalidation after the missed ones for a while: nothing else would clear
            // what instance 0 holds.
            let sync = deployment.sync.as_ref().unwrap();
            sync.signal("-STOP");
            acl("+subscribe");
            // Subscribed again, a heartbeat back: then read it.
            std::thread::sleep(Duration::from_millis(400));
            deployment.quiet.store(usize::MAX, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            sync.signal("-CONT");
        }
        std::thread::sleep(Duration::from_millis(600));
    });
    stale += s;

    stale += paused(&deployment, "redis paused", &redis);

    let (_, _, s) = phase(&deployment, "instance paused", || {
        std::thread::sleep(Duration::from_millis(500));
        let instance = &deployment.instances[1].0;
        instance.signal("-STOP");
        std::thread::sleep(Duration::from_millis(700));
        instance.signal("-CONT");
        std::thread::sleep(Duration::from_millis(1000));
    });
    stale += s;

    let lapses: u64 = (0..3)
        .map(|i| deployment.stats(i)["lease_lapses"].as_u64().unwrap())
        .sum();
    let waits = deployment.waits.lock().unwrap().clone();
    eprintln!(
        "invalidate: {} returned, p99 {} ms (lease {} ms; includes the sync process's own stop); lease lapses {lapses}",
        waits.len(),
        p99(&waits),
        LEASE.as_millis()
    );
    assert_eq!(stale, 0, "stale reads after an invalidate returned");
    // The killed subscriptions and the paused Redis made leases lapse.
    assert!(lapses >= 3, "lease lapses: {lapses}");
}

#[test]
fn on_a_cluster_near_caches_never_serve_what_a_sync_process_invalidated() {
    let cluster = RedisCluster::start();
    cluster.wait_until_ok();
    let deployment = Deployment::start(&cluster.seeds().join(","));
    let mut stale = 0;
    let (reads, l1, s) = phase(&deployment, "cluster", || {
        std::thread::sleep(Duration::from_secs(2))
    });
    stale += s;
    assert!(reads > 100, "too few reads: {reads}");
    assert!(
        l1 > reads / 10,
        "the near cache answered {l1} of {reads} reads"
    );
    // The sharded subscriptions live on the primary owning `{tower-response-cache}`.
    let owner = &cluster.nodes[cluster.owner_of("{tower-response-cache}")];
    let (_, _, s) = phase(&deployment, "cluster subscriptions killed", || {
        for _ in 0..2 {
            std::thread::sleep(Duration::from_millis(400));
            let _: i64 = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .query(&mut owner.connection())
                .unwrap();
        }
        std::thread::sleep(Duration::from_millis(800));
    });
    stale += s;
    stale += paused(&deployment, "cluster slot owner paused", owner);
    let (_, l1, s) = phase(&deployment, "cluster after the faults", || {
        std::thread::sleep(Duration::from_secs(1))
    });
    stale += s;
    assert!(l1 > 0, "near-cache hits did not come back");
    let lapses: u64 = (0..3)
        .map(|i| deployment.stats(i)["lease_lapses"].as_u64().unwrap())
        .sum();
    assert_eq!(stale, 0, "stale reads after an invalidate returned");
    assert!(lapses >= 3, "lease lapses: {lapses}");
}

/// A process without a near cache (the sync pipeline) returns as soon as every process
/// holding a lease acknowledged its invalidation; an advertised lease nobody acknowledges
/// (a stopped or cut-off process) is waited out. Both waits are exported as a histogram.
#[test]
fn an_invalidation_waits_for_acknowledgements_or_the_advertised_lease() {
    let redis = RedisServer::start();
    let values = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = Recorded(values.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lease = Duration::from_secs(2);
    let (acknowledged, silent) = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let invalidator = RedisStore::builder(redis.url())
                .deadline(Duration::from_millis(300))
                .build()
                .unwrap();
            let pattern = tower_response_cache::Pattern::new("/page");
            // Nobody advertises a lease yet: no wait.
            let started = Instant::now();
            invalidator.invalidate("near", &pattern).await.unwrap();
            assert!(
                started.elapsed() < lease / 4,
                "waited with no lease advertised"
            );
            let _holder = RedisStore::builder(redis.url())
                .deadline(Duration::from_millis(300))
                .near_cache(lease, 1 << 20)
                .build()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(600)).await;
            let started = Instant::now();
            invalidator.invalidate("near", &pattern).await.unwrap();
            let acknowledged = started.elapsed();
            // A process that advertises a 300 ms lease and never answers.
            let _: () = redis::cmd("ZADD")
                .arg("tower-response-cache:near:leases")
                .arg(u64::MAX / 2)
                .arg("300:00000000deadbeef")
                .query(&mut redis.connection())
                .unwrap();
            let started = Instant::now();
            invalidator.invalidate("near", &pattern).await.unwrap();
            (acknowledged, started.elapsed())
        })
    });
    assert!(
        acknowledged < lease / 4,
        "the holder acknowledged, yet invalidate took {acknowledged:?} (lease {lease:?})"
    );
    assert!(
        silent >= Duration::from_millis(300),
        "returned after {silent:?}, before the silent process's lease of 300 ms"
    );
    assert!(
        silent < lease,
        "waited {silent:?}: the holder had acknowledged"
    );
    let values = values.lock().unwrap();
    let waits: Vec<f64> = values
        .iter()
        .filter(|(name, _)| name == "tower_response_cache_invalidate_wait_seconds")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(waits.len(), 2, "{values:?}");
    assert!(waits[1] >= 0.3, "{waits:?}");
}
