//! The cache on a Redis Cluster of three real `redis-server` primaries on loopback ports:
//! entries spread over the primaries, pattern invalidation scans every one of them, the
//! write check holds across buckets and processes, the invalidation channel reaches a
//! store listening on another node, and a primary killed mid-traffic costs no request and
//! brings back no invalidated entry. On a cluster with replicas (six nodes), an invalidation
//! waits for the replica of the key's primary (`WAIT`), so a failover right after it brings
//! nothing back.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::redis::RedisCluster;
use crate::support::{client, eventually, get, Answer, HttpClient, Origin};
use tower_response_cache::coordination::Coordination;
use tower_response_cache::coordination::{Invalidation, StoreEvent};
use tower_response_cache::RedisStore;
use tower_response_cache::{
    Backend, CacheConfig, CacheHandle, CacheLayer, Entry, Pattern, Store, StoreKey,
};

const NAMESPACE: &str = "t";

/// A cluster, a handle built the way an application builds it (`CacheConfig` with
/// `REDIS_CLUSTER_NODES`), and an axum server caching through it.
struct Stack {
    cluster: RedisCluster,
    handle: CacheHandle,
    origin: Origin,
    addr: SocketAddr,
    client: HttpClient,
}

impl Stack {
    async fn start(redis_timeout_ms: &str) -> Stack {
        let stack = Self::start_on(
            tokio::task::block_in_place(RedisCluster::start),
            redis_timeout_ms,
        )
        .await;
        stack
            .wait_for_backend(Backend::Redis, Duration::from_secs(10), "at start")
            .await;
        stack
    }

    /// The stack on `cluster`, whatever state it is in.
    async fn start_on(cluster: RedisCluster, redis_timeout_ms: &str) -> Stack {
        let nodes = cluster.seeds().join(",");
        let vars = [
            ("REDIS_ENABLED", "true"),
            ("REDIS_CLUSTER_NODES", nodes.as_str()),
            ("CACHE_NAMESPACE", NAMESPACE),
            ("CACHE_REDIS_TIMEOUT_MS", redis_timeout_ms),
        ];
        let config = CacheConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let handle = config.build().await.unwrap();
        let origin = Origin::default();
        let addr = origin.serve(CacheLayer::new(handle.clone())).await;
        Stack {
            cluster,
            handle,
            origin,
            addr,
            client: client(),
        }
    }

    fn calls(&self) -> usize {
        self.origin.calls()
    }

    async fn read(&self, path: &str) -> Answer {
        let started = Instant::now();
        let answer = get(&self.client, self.addr, path).await;
        assert_eq!(answer.status, 200, "GET {path}");
        assert!(
            answer
                .text()
                .starts_with(&format!("{} #", path.split('?').next().unwrap())),
            "GET {path}: {:?}",
            answer.text()
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "GET {path} took {took:?}");
        answer
    }

    /// Read every path once and wait until Redis holds all of them.
    async fn fill(&self, paths: &[String]) {
        for path in paths {
            self.read(path).await;
        }
        let want = paths.len();
        let stored = eventually(Duration::from_secs(10), || async {
            self.cluster.keys(&format!("*{NAMESPACE}:k:*")).len() >= want
        })
        .await;
        assert!(stored, "not every entry reached the cluster");
    }

    async fn wait_for_backend(&self, backend: Backend, within: Duration, why: &str) {
        let reached = eventually(within, || async { self.handle.backend() == backend }).await;
        assert!(
            reached,
            "{why}: backend still {:?} after {within:?}",
            self.handle.backend()
        );
    }
}

fn dashboard_paths() -> Vec<String> {
    ["A", "B", "C"]
        .iter()
        .flat_map(|company| (0..20).map(move |i| format!("/api/dashboard/{company}/{i}")))
        .collect()
}

fn from_redis(answer: &Answer) -> bool {
    answer.x_cache() == "HIT" && !answer.header("cache-status").contains("fallback")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_spread_over_every_primary_and_repeat_reads_are_redis_hits() {
    let s = Stack::start("500").await;
    let paths = dashboard_paths();
    s.fill(&paths).await;
    let per_node = s.cluster.keys_per_node(&format!("*{NAMESPACE}:k:*"));
    for (i, keys) in per_node.iter().enumerate() {
        assert!(!keys.is_empty(), "primary {i} holds no entry: {per_node:?}");
    }
    for path in &paths {
        let answer = s.read(path).await;
        assert!(
            from_redis(&answer),
            "{path}: {}",
            answer.header("cache-status")
        );
    }
    assert_eq!(s.calls(), paths.len(), "a repeat read reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_glob_invalidation_removes_exactly_the_matching_entries_on_every_primary() {
    let s = Stack::start("500").await;
    let paths = dashboard_paths();
    s.fill(&paths).await;
    let a_keys = s
        .cluster
        .keys(&format!("*{NAMESPACE}:k:/api/dashboard/A/*"));
    let nodes_with_a = s
        .cluster
        .keys_per_node(&format!("*{NAMESPACE}:k:/api/dashboard/A/*"))
        .iter()
        .filter(|k| !k.is_empty())
        .count();
    assert!(
        nodes_with_a >= 2,
        "company A's entries sit on {nodes_with_a} primary: a weak test"
    );
    assert_eq!(a_keys.len(), 20);

    let removed = s.handle.invalidate("/api/dashboard/A/*").await.unwrap();
    assert_eq!(removed, 20);
    assert!(s
        .cluster
        .keys(&format!("*{NAMESPACE}:k:/api/dashboard/A/*"))
        .is_empty());
    assert_eq!(s.cluster.keys(&format!("*{NAMESPACE}:k:*")).len(), 40);

    let before = s.calls();
    for path in &paths {
        let answer = s.read(path).await;
        let invalidated = path.starts_with("/api/dashboard/A/");
        assert_eq!(answer.x_cache() == "MISS", invalidated, "{path}");
    }
    assert_eq!(s.calls() - before, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_tag_soft_and_namespace_invalidations_work_across_the_cluster() {
    let s = Stack::start("500").await;
    let mut paths = dashboard_paths();
    paths.extend((0..20).map(|i| format!("/tagged/{i}?tag=company-A")));
    s.fill(&paths).await;

    assert_eq!(s.handle.invalidate("/api/dashboard/B/3").await.unwrap(), 1);
    assert_eq!(s.read("/api/dashboard/B/3").await.x_cache(), "MISS");
    assert!(from_redis(&s.read("/api/dashboard/B/4").await));

    // The tagged entries fall in many buckets: every bucket's tag set is read.
    assert_eq!(s.handle.invalidate_tag("company-A").await.unwrap(), 20);
    assert!(s
        .cluster
        .keys(&format!("*{NAMESPACE}:k:/tagged/*"))
        .is_empty());
    assert!(s.cluster.keys(&format!("*{NAMESPACE}:m:tag:*")).is_empty());
    assert!(from_redis(&s.read("/api/dashboard/C/1").await));

    // Soft: every matching hash marked on its primary, none removed; without a
    // stale-while-revalidate window a marked entry reads as expired.
    let before = s.cluster.keys(&format!("*{NAMESPACE}:k:*")).len();
    assert_eq!(
        s.handle
            .invalidate_soft("/api/dashboard/C/*")
            .await
            .unwrap(),
        20
    );
    assert_eq!(s.cluster.keys(&format!("*{NAMESPACE}:k:*")).len(), before);
    assert_eq!(s.read("/api/dashboard/C/2").await.x_cache(), "MISS");
    assert!(from_redis(&s.read("/api/dashboard/A/2").await));

    s.handle.invalidate_all().await.unwrap();
    assert!(s.cluster.keys(&format!("*{NAMESPACE}:*")).is_empty());
    assert_eq!(s.read("/api/dashboard/C/1").await.x_cache(), "MISS");
}

fn entry(body: &'static str) -> Arc<Entry> {
    Arc::new(Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        bytes::Bytes::from_static(body.as_bytes()),
        Duration::from_secs(60),
    ))
}

fn key(logical: &str) -> StoreKey<'_> {
    StoreKey {
        namespace: NAMESPACE,
        logical,
        variant: 7,
    }
}

/// Two stores on one cluster, as two processes would have: `writer` fetched something,
/// `invalidator` invalidates it meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_fetched_before_another_process_invalidated_it_is_never_stored() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let writer = RedisStore::cluster(cluster.seeds())
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let invalidator = RedisStore::cluster(cluster.seeds())
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();

    for (what, pattern) in [
        ("exact", "/race/exact"),
        ("glob", "/race/*"),
        ("everything", "*"),
    ] {
        let logical = if what == "exact" {
            "/race/exact"
        } else {
            "/race/glob"
        };
        let token = writer.write_token();
        invalidator
            .invalidate(NAMESPACE, &Pattern::new(pattern))
            .await
            .unwrap();
        writer
            .put_checked(key(logical), entry("old"), token)
            .await
            .unwrap();
        assert!(
            writer.get(key(logical)).await.unwrap().is_none(),
            "{what}: a write fetched before the invalidation was stored after it"
        );
    }

    // An invalidation raises only the buckets it touches; writes elsewhere, with a fresh
    // token, land (the check is "not above", so buckets at different generations never
    // make a process's token flip-flop).
    for i in 0..5 {
        invalidator
            .invalidate(NAMESPACE, &Pattern::new(&format!("/hot/{i}")))
            .await
            .unwrap();
    }
    let landed = eventually(Duration::from_secs(5), || async {
        let token = writer.write_token();
        let mut all = true;
        for i in 0..64 {
            let logical = format!("/cold/{i}");
            writer
                .put_checked(key(&logical), entry("new"), token)
                .await
                .unwrap();
            all &= writer.get(key(&logical)).await.unwrap().is_some();
        }
        all
    })
    .await;
    assert!(landed, "writes with a current token were refused");
    assert!(writer.write_token() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_reaches_a_store_listening_on_another_node() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let seeds = cluster.seeds();
    let publisher = RedisStore::cluster(seeds.clone()).build().unwrap();
    // This one subscribes on the last node.
    let listener = RedisStore::cluster(seeds.iter().rev().cloned())
        .build()
        .unwrap();
    let heard: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = heard.clone();
    listener.set_listener(Arc::new(move |event: &StoreEvent| {
        if let StoreEvent::Remote {
            namespace,
            invalidation: Invalidation::Pattern(pattern),
            ..
        } = event
        {
            sink.lock().unwrap().push(format!("{namespace} {pattern}"));
        }
    }));
    // The listener subscribes in the background; publish until it hears one.
    let reached = eventually(Duration::from_secs(10), || async {
        publisher
            .invalidate(NAMESPACE, &Pattern::new("/api/dashboard/ABC*"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        !heard.lock().unwrap().is_empty()
    })
    .await;
    assert!(
        reached,
        "no invalidation reached the other node's subscriber"
    );
    assert_eq!(heard.lock().unwrap()[0], "t /api/dashboard/ABC*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_mid_traffic_fails_no_request_and_no_invalidated_entry_returns() {
    let mut s = Stack::start("50").await;
    let paths = dashboard_paths();
    s.fill(&paths).await;
    let old = s.read("/api/dashboard/A/1").await;
    assert!(from_redis(&old), "{}", old.header("cache-status"));

    // Kill the primary holding /api/dashboard/A/1, after a snapshot: it will come back
    // holding the entry.
    let key = s
        .cluster
        .keys(&format!("*{NAMESPACE}:k:/api/dashboard/A/1"))[0]
        .clone();
    let owner = s.cluster.owner_of(&key);
    tokio::task::block_in_place(|| {
        s.cluster.nodes[owner].save();
        s.cluster.nodes[owner].kill();
    });

    // Every path still answers, within the bound, whatever its slot.
    for _ in 0..3 {
        for path in &paths {
            s.read(path).await;
        }
    }
    let result = s.handle.invalidate("/api/dashboard/A/*").await;
    assert!(
        result.is_err(),
        "Redis was not reached, and the caller must hear it"
    );
    let during = s.read("/api/dashboard/A/1").await;
    assert_eq!(during.x_cache(), "MISS");
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGKILL",
    )
    .await;

    tokio::task::block_in_place(|| {
        s.cluster.nodes[owner].restart();
        s.cluster.wait_until_ok();
    });
    s.wait_for_backend(Backend::Redis, Duration::from_secs(20), "after restart")
        .await;
    let after = s.read("/api/dashboard/A/1").await;
    assert_ne!(after.body, old.body, "the invalidated entry came back");
    assert_eq!(after.x_cache(), "MISS", "{}", after.header("cache-status"));
    // And the cluster is used again.
    let healed = eventually(Duration::from_secs(10), || async {
        from_redis(&s.read("/api/dashboard/A/1").await)
    })
    .await;
    assert!(healed, "entries never reached the restarted cluster again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_primary_fails_no_request_and_the_circuit_closes_when_it_resumes() {
    let s = Stack::start("50").await;
    let paths = dashboard_paths();
    s.fill(&paths).await;
    let key = s
        .cluster
        .keys(&format!("*{NAMESPACE}:k:/api/dashboard/B/2"))[0]
        .clone();
    let owner = s.cluster.owner_of(&key);
    s.cluster.nodes[owner].pause();

    // Reads of keys on the hanging primary wait for the deadline, not for the primary.
    for _ in 0..2 {
        for path in &paths {
            s.read(path).await;
        }
    }
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGSTOP",
    )
    .await;

    s.cluster.nodes[owner].resume();
    tokio::task::block_in_place(|| s.cluster.wait_until_ok());
    s.wait_for_backend(Backend::Redis, Duration::from_secs(20), "after SIGCONT")
        .await;
    let healed = eventually(Duration::from_secs(10), || async {
        from_redis(&s.read("/api/dashboard/B/2").await)
    })
    .await;
    assert!(healed, "entries never reached the resumed cluster again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starting_with_the_cluster_down_serves_from_memory_at_once_and_moves_to_it_later() {
    let mut cluster = tokio::task::block_in_place(RedisCluster::start);
    tokio::task::block_in_place(|| {
        for node in &mut cluster.nodes {
            node.kill();
        }
    });
    let started = Instant::now();
    let mut s = Stack::start_on(cluster, "50").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "building the cache waited {:?} for a dead cluster",
        started.elapsed()
    );
    assert_eq!(s.handle.backend(), Backend::FallingBack);
    // Served, and cached in memory meanwhile (the entry is written after the body ends, off
    // the response path, so the very next read may still miss).
    s.read("/api/dashboard/A/1").await;
    let cached = eventually(Duration::from_secs(5), || async {
        s.read("/api/dashboard/A/1").await.x_cache() == "HIT"
    })
    .await;
    assert!(cached, "never cached in memory while the cluster was down");

    // The nodes come back (each with its nodes.conf: the same cluster).
    tokio::task::block_in_place(|| {
        for node in &mut s.cluster.nodes {
            node.restart();
        }
        s.cluster.wait_until_ok();
    });
    s.wait_for_backend(
        Backend::Redis,
        Duration::from_secs(20),
        "after the cluster came up",
    )
    .await;
    let used = eventually(Duration::from_secs(10), || async {
        from_redis(&s.read("/api/dashboard/B/1").await)
    })
    .await;
    assert!(used, "entries never reached the cluster");
}

/// A handle on a bare cluster store (no fallback, so nothing replays an invalidation to a
/// promoted replica) whose invalidations wait for one replica, at most `wait`
/// (`Duration::ZERO`: never wait).
fn replicated_handle(cluster: &RedisCluster, wait: Duration) -> CacheHandle {
    // The invalidation lane's deadline is the wait plus the call deadline: a `WAIT` that
    // times out must be read as "not replicated", not as an outage, even when a busy
    // six-node machine answers it late.
    let store = RedisStore::cluster(cluster.seeds()).deadline(Duration::from_millis(500));
    let store = match wait.is_zero() {
        true => store.durable_invalidations(0, wait),
        false => store.durable_invalidations(1, wait),
    };
    CacheHandle::builder(store.build().unwrap())
        .namespace(NAMESPACE)
        .build()
}

/// One logical key per primary of `cluster`, stored through `handle` and on its primary's
/// replica too: (logical key, its Redis key, its primary).
async fn one_key_per_primary(
    cluster: &RedisCluster,
    handle: &CacheHandle,
) -> Vec<(String, String, usize)> {
    let mut found: Vec<(String, String, usize)> = Vec::new();
    for i in 0..64 {
        let logical = format!("/durable/{i}");
        let _: String = handle
            .get_or_insert_with(&logical, async { "v".to_owned() })
            .await;
        let pattern = format!("*{NAMESPACE}:k:{logical}");
        let stored = eventually(Duration::from_secs(5), || async {
            !cluster.keys(&pattern).is_empty()
        })
        .await;
        assert!(stored, "{logical} never reached the cluster");
        let key = cluster.keys(&pattern)[0].clone();
        let owner = cluster.owner_of(&key);
        if found.iter().all(|(_, _, p)| *p != owner) {
            found.push((logical, key, owner));
        }
        if found.len() == 3 {
            break;
        }
    }
    assert_eq!(found.len(), 3, "64 keys all fell on fewer than 3 primaries");
    for (_, key, primary) in &found {
        let replica = cluster.replica_of(*primary);
        let replicated = eventually(Duration::from_secs(5), || async {
            !cluster.nodes[replica].keys(key).is_empty()
        })
        .await;
        assert!(replicated, "{key} never reached its replica");
    }
    found
}

/// `WAIT` on a Redis Cluster with replicas: an invalidation waits until the replica of
/// the key's primary has it, so a failover right after it returns cannot bring the entry
/// back; when no replica acknowledges in time, it says so. The control shows the failover
/// does bring an entry back when the invalidation does not wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_cluster_with_replicas_an_invalidation_waits_for_the_replica_and_survives_a_failover()
{
    let mut cluster = tokio::task::block_in_place(RedisCluster::start_replicated);
    let durable = replicated_handle(&cluster, Duration::from_secs(10));
    let keys = one_key_per_primary(&cluster, &durable).await;
    let exists =
        |cluster: &RedisCluster, node: usize, key: &str| !cluster.nodes[node].keys(key).is_empty();

    // 1. The replica of the key's primary hears nothing: a short wait ends in an error that
    //    says the invalidation did not reach it (and applied on the primary).
    let (logical, key, primary) = &keys[0];
    let impatient = replicated_handle(&cluster, Duration::from_millis(300));
    tokio::task::block_in_place(|| cluster.block_replication(*primary));
    let error = impatient
        .invalidate(logical)
        .await
        .expect_err("no replica acknowledged, yet the invalidation succeeded");
    assert!(error.is_not_replicated(), "{:?}", error.store_error());
    assert!(!exists(&cluster, *primary, key), "applied on the primary");
    tokio::task::block_in_place(|| {
        cluster.allow_replication(*primary);
        cluster.wait_replicated(Duration::from_secs(30));
    });

    // 2. The replica is cut off while the invalidation runs and heard again 500 ms later:
    //    the invalidation returns only after that, and the primary killed at once leaves a
    //    replica without the entry.
    let (logical, key, primary) = &keys[1];
    let replica = cluster.replica_of(*primary);
    tokio::task::block_in_place(|| cluster.block_replication(*primary));
    let invalidation = {
        let (durable, logical) = (durable.clone(), logical.clone());
        tokio::spawn(async move { durable.invalidate(&logical).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !invalidation.is_finished(),
        "the invalidation returned before any replica had it"
    );
    tokio::task::block_in_place(|| cluster.allow_replication(*primary));
    let result = invalidation.await.unwrap();
    result.unwrap_or_else(|e| panic!("{e}: {:?}", e.store_error()));
    tokio::task::block_in_place(|| cluster.nodes[*primary].kill());
    let (owner, took) = tokio::task::block_in_place(|| {
        cluster.wait_for_promotion(key, *primary, Duration::from_secs(30))
    });
    assert_eq!(owner, replica);
    eprintln!("cluster failover after a durable invalidation: {took:?}");
    assert!(
        !exists(&cluster, owner, key),
        "the invalidated entry came back with the promoted replica"
    );

    // 3. The control: the same cut without the wait returns at once, and the promoted
    //    replica brings the entry back.
    let (logical, key, primary) = &keys[2];
    let replica = cluster.replica_of(*primary);
    let eager = replicated_handle(&cluster, Duration::ZERO);
    tokio::task::block_in_place(|| cluster.block_replication(*primary));
    // The first call on a connection to a primary that is gone may fail (the store then
    // finds the new one): a caller retries.
    let mut result = eager.invalidate(logical).await;
    for _ in 0..3 {
        match &result {
            Err(e) if e.store_error().is_unavailable() => result = eager.invalidate(logical).await,
            _ => break,
        }
    }
    result.unwrap_or_else(|e| panic!("{e}: {:?}", e.store_error()));
    tokio::task::block_in_place(|| cluster.nodes[*primary].kill());
    let (owner, _) = tokio::task::block_in_place(|| {
        cluster.wait_for_promotion(key, *primary, Duration::from_secs(30))
    });
    assert_eq!(owner, replica);
    assert!(
        exists(&cluster, owner, key),
        "the control: the promoted replica should still hold the entry"
    );
}
