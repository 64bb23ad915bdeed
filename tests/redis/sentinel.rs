//! Redis Sentinel on real processes: a primary, a replica and three sentinels (down after
//! 500 ms). The primary is killed (SIGKILL) under load: no request fails, no read that
//! began after an `invalidate` returned carries an older version, and afterwards the store
//! writes to the new primary. Durable invalidations: an `invalidate` followed at once by
//! the primary's death never comes back on the promoted replica; without the wait for a
//! replica, with replication held up, it does (the control), and with the wait the
//! invalidation says it did not reach a replica.
//!
//! `TRC_SENTINEL_ROUNDS=20 cargo test --all-features --test redis sentinel_rounds -- --nocapture`
//! runs the failover-after-invalidate rounds 20 times (3 by default) and prints the figures
//! recorded in BENCHMARKS.md.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::{RedisServer, SentinelSet};
use crate::support::stack::{blocking, served_by_fallback, try_get, BOUND};
use crate::support::{client, eventually, serve};
use tower_response_cache::{Backend, CacheHandle, CacheLayer, FallbackStore, MemoryStore};
use tower_response_cache::{RedisStore, RedisStoreBuilder};

const NS: &str = "s";

fn sentinel_store(
    set: &SentinelSet,
    configure: impl FnOnce(RedisStoreBuilder) -> RedisStoreBuilder,
) -> RedisStore {
    // A debug build on a busy machine: no spurious deadline misses.
    configure(
        RedisStore::sentinel(set.urls(), SentinelSet::MASTER).deadline(Duration::from_millis(200)),
    )
    .build()
    .unwrap()
}

/// Whether `server` holds `key`; `false` while it does not answer (just restarted).
fn exists(server: &RedisServer, key: &str) -> bool {
    server
        .connection_checked()
        .is_some_and(|mut c| redis::cmd("EXISTS").arg(key).query::<u64>(&mut c).ok() == Some(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_under_load_fails_no_request_serves_nothing_stale_and_moves_writes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tower_response_cache=debug")
        .try_init();
    let mut set = blocking(SentinelSet::start);
    let redis = sentinel_store(&set, |b| b);
    let store = FallbackStore::builder(redis, MemoryStore::new())
        .probe_interval(Duration::from_millis(100))
        .build()
        .await;
    let handle = CacheHandle::builder(store)
        .namespace(NS)
        .ttl(Duration::from_secs(60))
        .build();
    assert_eq!(handle.backend(), Backend::Redis);

    // The origin answers the version the last invalidation published.
    let version = Arc::new(AtomicU64::new(1));
    let origin_version = version.clone();
    let app = axum::Router::new()
        .fallback(move || {
            let v = origin_version.load(Ordering::SeqCst);
            async move { v.to_string() }
        })
        .layer(
            CacheLayer::new(handle.clone())
                .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
        );
    let addr = serve(app).await;

    let stop = Arc::new(AtomicBool::new(false));
    // The version every read that begins now must carry at least.
    let committed = Arc::new(AtomicU64::new(1));
    let (reads, stale, fallback) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let readers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, committed, reads, stale, fallback, failures) = (
                stop.clone(),
                committed.clone(),
                reads.clone(),
                stale.clone(),
                fallback.clone(),
                failures.clone(),
            );
            let client = client();
            tokio::spawn(async move {
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    let path = format!("/v/{}", i % 4);
                    i += 1;
                    let floor = committed.load(Ordering::SeqCst);
                    let started = Instant::now();
                    let answer = match try_get(&client, addr, &path).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            failures.lock().unwrap().push(format!("{path}: {e}"));
                            continue;
                        }
                    };
                    let took = started.elapsed();
                    if answer.status != 200 || took >= BOUND {
                        let why = format!("{path}: {} in {took:?}", answer.status);
                        failures.lock().unwrap().push(why);
                    }
                    let seen: u64 = answer.text().parse().unwrap_or(0);
                    if seen < floor {
                        stale.fetch_add(1, Ordering::SeqCst);
                        eprintln!("stale: {path} carried {seen} after {floor} was committed");
                    }
                    if served_by_fallback(&answer) {
                        fallback.fetch_add(1, Ordering::SeqCst);
                    }
                    reads.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let sync = {
        let (stop, committed, version, handle) = (
            stop.clone(),
            committed.clone(),
            version.clone(),
            handle.clone(),
        );
        tokio::spawn(async move {
            let mut invalidations = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let next = version.fetch_add(1, Ordering::SeqCst) + 1;
                // Err or not, it applied here: reads from now on must not see older.
                let _ = handle.invalidate("/v/*").await;
                committed.store(next, Ordering::SeqCst);
                invalidations += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            invalidations
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = reads.load(Ordering::SeqCst);
    let old = set.named_primary().unwrap();
    let killed = Instant::now();
    let p = set.primary();
    blocking(|| set.nodes[p].kill());
    let promoted = blocking(|| set.wait_for_failover(old, Duration::from_secs(30)));
    let back = eventually(Duration::from_secs(20), || async {
        handle.backend() == Backend::Redis
    })
    .await;
    let recovered = killed.elapsed();
    assert!(
        back,
        "the store never went back to Redis after the failover"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let invalidations = sync.await.unwrap();
    let (reads, stale, fallback) = (
        reads.load(Ordering::SeqCst),
        stale.load(Ordering::SeqCst),
        fallback.load(Ordering::SeqCst),
    );
    eprintln!(
        "sentinel failover: promoted after {promoted:?}, store back on Redis {recovered:?} after the kill; {reads} reads ({before} before the kill), {fallback} from the fallback, {stale} stale; {invalidations} invalidations"
    );
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(stale, 0, "reads older than a returned invalidation");
    assert!(fallback > 0, "no answer came from the fallback");
    assert!(reads > before + 20, "too few reads after the kill: {reads}");

    // Writes land on the new primary.
    let primary = &set.nodes[set.primary()];
    assert_eq!(primary.port, set.named_primary().unwrap());
    assert_ne!(primary.port, old);
    let answer = try_get(&client(), addr, "/after").await.unwrap();
    assert_eq!(answer.status, 200);
    let landed = eventually(Duration::from_secs(5), || async {
        exists(primary, "s:k:/after")
    })
    .await;
    assert!(landed, "the entry was not written to the new primary");
}

/// One round: an entry in Redis (on the replica too), `invalidate`, the primary killed at
/// once, the replica promoted. Returns the invalidation's result, whether the entry is
/// back on the new primary, and how long the failover took. With `hold`, the replica
/// hears nothing from the invalidation on.
async fn invalidate_then_fail_over(
    set: &mut SentinelSet,
    handle: &CacheHandle,
    round: usize,
    hold: bool,
) -> (
    Result<u64, tower_response_cache::CacheError>,
    bool,
    Duration,
) {
    // The node the last round killed comes back first, as a replica (the last round of a
    // test leaves it down: nothing follows that needs it).
    blocking(|| set.rejoin_killed());
    let key = format!("/d/{round}");
    let stored = format!("{NS}:k:{key}");
    let (p, r) = (set.primary(), set.replica());
    // The first call after a failover fails (the store found the move) and its write
    // with it: insert until it is there.
    let replicated = eventually(Duration::from_secs(10), || async {
        let _: String = handle
            .get_or_insert_with(&key, async { "v".to_owned() })
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        exists(&set.nodes[p], &stored) && exists(&set.nodes[r], &stored)
    })
    .await;
    assert!(replicated, "{stored} never reached both nodes");
    if hold {
        blocking(|| set.block_replication());
    }
    // The first call on a connection to a primary that is gone fails (a caller retries,
    // as a fallback store's replay would); then the store finds the new one.
    let mut result = handle.invalidate(&key).await;
    for _ in 0..3 {
        match &result {
            Err(e) if e.store_error().is_unavailable() => result = handle.invalidate(&key).await,
            _ => break,
        }
    }
    let old = set.nodes[p].port;
    blocking(|| set.nodes[p].kill());
    let failover = blocking(|| set.wait_for_failover(old, Duration::from_secs(30)));
    let back = exists(&set.nodes[r], &stored);
    (result, back, failover)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_rounds_an_invalidation_then_a_failover_never_brings_the_entry_back() {
    let rounds: usize = std::env::var("TRC_SENTINEL_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    let mut set = blocking(SentinelSet::start);
    // A bare store: no fallback replays the invalidation to the new primary. A generous
    // wait: on a loaded 2-core machine running every Redis test at once, a replica that
    // has just rejoined acknowledged after more than 1 s (the rounds then stopped with
    // "0 of 1 replicas"); how fast it acknowledges is not what this tests.
    let handle = CacheHandle::builder(sentinel_store(&set, |b| {
        b.durable_invalidations(1, Duration::from_secs(5))
    }))
    .namespace(NS)
    .build();
    // What the wait costs: exact invalidations with and without it (printed, not asserted:
    // a figure for BENCHMARKS.md).
    let eager = CacheHandle::builder(sentinel_store(&set, |b| {
        b.durable_invalidations(0, Duration::ZERO)
    }))
    .namespace(NS)
    .build();
    for (name, handle) in [("waiting for a replica", &handle), ("not waiting", &eager)] {
        let mut took = Vec::new();
        for i in 0..300 {
            let started = Instant::now();
            handle.invalidate(&format!("/cost/{i}")).await.unwrap();
            took.push(started.elapsed());
        }
        took.sort();
        eprintln!(
            "invalidate, {name}: median {:?}, p99 {:?}",
            took[took.len() / 2],
            took[took.len() * 99 / 100]
        );
    }
    drop(eager);
    let (mut back, mut failovers) = (0, Vec::new());
    for round in 0..rounds {
        let (result, resurrected, failover) =
            invalidate_then_fail_over(&mut set, &handle, round, false).await;
        result.unwrap_or_else(|e| panic!("round {round}: {e}: {:?}", e.store_error()));
        back += usize::from(resurrected);
        failovers.push(failover);
    }
    failovers.sort();
    eprintln!(
        "durable invalidations: {back} of {rounds} entries came back; failover {:?} .. {:?} (median {:?})",
        failovers[0],
        failovers[rounds - 1],
        failovers[rounds / 2]
    );
    assert_eq!(back, 0, "entries came back after a failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_replica_s_acknowledgement_an_invalidation_says_so_and_the_entry_can_come_back() {
    let mut set = blocking(SentinelSet::start);
    // The default behind Sentinel: wait for one replica.
    let durable = CacheHandle::builder(sentinel_store(&set, |b| {
        b.durable_invalidations(1, Duration::from_millis(100))
    }))
    .namespace(NS)
    .build();
    let (result, back, _) = invalidate_then_fail_over(&mut set, &durable, 0, true).await;
    let error = result.expect_err("no replica acknowledged, yet the invalidation succeeded");
    assert!(error.is_not_replicated(), "{:?}", error.store_error());
    eprintln!(
        "held replication, waiting: {}; entry back: {back}",
        error.store_error()
    );

    // The control: the same without the wait returns at once, and the entry comes back.
    let eager = CacheHandle::builder(sentinel_store(&set, |b| {
        b.durable_invalidations(0, Duration::ZERO)
    }))
    .namespace(NS)
    .build();
    let (result, back, _) = invalidate_then_fail_over(&mut set, &eager, 1, true).await;
    result.expect("without the wait the invalidation returns as soon as the primary applied it");
    assert!(
        back,
        "the control: the promoted replica should still hold the entry"
    );
}
