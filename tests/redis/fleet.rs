//! Fleet-wide single flight on a real Redis: several server instances (each its own handle
//! and Redis connections, as separate processes would have) with readers hammering one
//! key, and a separate sync handle invalidating it. The origin is asked once per
//! invalidation whatever the number of instances; a leader that stalls is taken over within
//! its lease; and no reader that began after an `invalidate` returned is answered with the
//! fetch from before it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::{RedisCluster, RedisServer};
use crate::support::{client, get_with, Answer, HttpClient, Origin};
use tower_response_cache::{CacheHandle, CacheLayer, CacheStats, RedisStore};

const PATH: &str = "/dash?delay_ms=100";
/// Every instance serves one site: a load balancer sends them the same `Host`.
const HOST: [(&str, &str); 1] = [("host", "portal.example")];

async fn get(client: &HttpClient, addr: std::net::SocketAddr, path: &str) -> Answer {
    get_with(client, addr, path, &HOST).await
}

struct Fleet {
    redis: Backing,
    origin: Origin,
    instances: Vec<(std::net::SocketAddr, CacheHandle)>,
    sync: CacheHandle,
    client: HttpClient,
}

/// `n` instances on one Redis in front of one origin, fleet-wide single flight on (with
/// `lease`) or off.
async fn fleet(n: usize, lease: Option<Duration>) -> Fleet {
    fleet_serving_stale(n, lease, Duration::ZERO).await
}

/// [`fleet`], with a stale-while-revalidate window (what a soft invalidation serves in).
async fn fleet_serving_stale(n: usize, lease: Option<Duration>, stale: Duration) -> Fleet {
    fleet_on(Backing::One(RedisServer::start()), n, lease, stale, None).await
}

/// [`fleet_serving_stale`] on `redis`, each instance with a near cache under a lease of
/// `near` when given.
/// What the instances of a [`Fleet`] share: one Redis, or a cluster.
enum Backing {
    One(RedisServer),
    Cluster(RedisCluster),
}

async fn fleet_on(
    redis: Backing,
    n: usize,
    lease: Option<Duration>,
    stale: Duration,
    near: Option<Duration>,
) -> Fleet {
    let origin = Origin::default();
    let handle = |lease: Option<Duration>, near: Option<Duration>| {
        let builder = match &redis {
            Backing::One(server) => RedisStore::builder(server.url()),
            Backing::Cluster(cluster) => RedisStore::cluster(cluster.seeds()),
        };
        let builder = match near {
            Some(near) => builder.near_cache(near, 8 << 20),
            None => builder,
        };
        let store = builder
            .deadline(Duration::from_millis(500))
            .fleet_single_flight(lease)
            .build()
            .unwrap();
        CacheHandle::builder(store)
            .namespace("t")
            .coalesce_timeout(Duration::from_secs(5))
            .stale_while_revalidate(stale)
            .build()
    };
    let mut instances = Vec::new();
    for _ in 0..n {
        let handle = handle(lease, near);
        let addr = origin.serve(CacheLayer::new(handle.clone())).await;
        instances.push((addr, handle));
    }
    Fleet {
        sync: handle(None, None),
        redis,
        origin,
        instances,
        client: client(),
    }
}

impl Fleet {
    /// The Redis server the instances share (not a cluster's).
    fn server(&self) -> &RedisServer {
        match &self.redis {
            Backing::One(server) => server,
            Backing::Cluster(_) => panic!("a fleet on one Redis server"),
        }
    }

    /// `readers` concurrent reads of `path` on every instance; their answers.
    async fn burst(&self, path: &str, readers: usize) -> Vec<(Answer, Duration)> {
        let mut reads = Vec::new();
        for (addr, _) in &self.instances {
            for _ in 0..readers {
                let (client, addr, path) = (self.client.clone(), *addr, path.to_owned());
                reads.push(tokio::spawn(async move {
                    let started = Instant::now();
                    let answer = get(&client, addr, &path).await;
                    (answer, started.elapsed())
                }));
            }
        }
        let mut answers = Vec::new();
        for read in reads {
            let (answer, took) = read.await.unwrap();
            assert_eq!(answer.status, 200, "{path}");
            answers.push((answer, took));
        }
        answers
    }

    fn stats(&self) -> Vec<CacheStats> {
        self.instances.iter().map(|(_, h)| h.stats()).collect()
    }
}

/// Origin calls per invalidation of one hot key, over `rounds` invalidations; and how
/// many answers said they waited for another process's fetch (`detail=fleet`).
async fn fetches_per_invalidation(f: &Fleet, rounds: usize) -> Vec<usize> {
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        f.sync.invalidate("/dash").await.unwrap();
        let before = f.origin.calls();
        let followers = |f: &Fleet| f.stats().iter().map(|s| s.fleet_followers).sum::<u64>();
        let followed_before = followers(f);
        let answers = f.burst(PATH, 4).await;
        let fleet_said = answers
            .iter()
            .filter(|(a, _)| a.header("cache-status").contains("detail=fleet"))
            .count();
        assert_eq!(
            fleet_said > 0,
            followers(f) > followed_before,
            "an answer says detail=fleet exactly when a process followed another's fetch"
        );
        let bodies: std::collections::HashSet<_> = answers.iter().map(|(a, _)| &a.body).collect();
        assert_eq!(
            bodies.len(),
            f.origin.calls() - before,
            "one body per fetch"
        );
        per_round.push(f.origin.calls() - before);
    }
    per_round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_per_invalidation_for_the_whole_fleet() {
    for n in [3, 6] {
        let f = fleet(n, Some(Duration::from_secs(2))).await;
        let per_round = fetches_per_invalidation(&f, 20).await;
        assert!(
            per_round.iter().all(|&calls| calls == 1),
            "{n} instances: origin fetches per invalidation {per_round:?}"
        );
        let followers: u64 = f.stats().iter().map(|s| s.fleet_followers).sum();
        assert!(
            followers >= 20,
            "{n} instances: {followers} fleet followers"
        );
    }
}

/// The same with a near cache in front of Redis in every instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_per_invalidation_with_near_caches() {
    let lease = Some(Duration::from_secs(2));
    let near = Some(Duration::from_millis(200));
    let f = fleet_on(
        Backing::One(RedisServer::start()),
        3,
        lease,
        Duration::ZERO,
        near,
    )
    .await;
    let per_round = fetches_per_invalidation(&f, 10).await;
    assert!(
        per_round.iter().all(|&calls| calls == 1),
        "with near caches: origin fetches per invalidation {per_round:?}"
    );
}

/// The same on a Redis Cluster. A new process meets a bucket's secret at its first write
/// there: that write is sent again with it, not refused (which left a `pass` mark, and every
/// instance then fetched alone: 9, then 12 fetches per round).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_origin_fetch_per_invalidation_on_a_cluster() {
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let lease = Some(Duration::from_secs(2));
    let f = fleet_on(Backing::Cluster(cluster), 3, lease, Duration::ZERO, None).await;
    let per_round = fetches_per_invalidation(&f, 10).await;
    assert!(
        per_round.iter().all(|&calls| calls == 1),
        "on a cluster: origin fetches per invalidation {per_round:?}"
    );
}

/// The control: with the feature off, each instance fetches for itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_fleet_single_flight_each_instance_fetches() {
    let f = fleet(3, None).await;
    let per_round = fetches_per_invalidation(&f, 3).await;
    assert!(
        per_round.iter().all(|&calls| calls == 3),
        "origin fetches per invalidation {per_round:?}"
    );
}

/// A leader whose origin call hangs keeps the fleet waiting only for its lease: another
/// instance takes the flight over and fetches, and every other reader is answered well
/// within the coalesce timeout (5 s here), none failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_leader_is_taken_over_within_its_lease() {
    let lease = Duration::from_millis(300);
    let f = fleet(3, Some(lease)).await;
    // An origin whose first call hangs for a minute (the stalled leader's).
    let calls = Arc::new(AtomicUsize::new(0));
    let app = {
        let calls = calls.clone();
        axum::Router::new().fallback(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if n == 1 {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                format!("call {n}")
            }
        })
    };
    let mut addrs = Vec::new();
    for (_, handle) in &f.instances {
        let app = app.clone().layer(CacheLayer::new(handle.clone()));
        addrs.push(crate::support::serve(app).await);
    }
    let stalled = {
        let (client, addr) = (f.client.clone(), addrs[0]);
        tokio::spawn(async move { get(&client, addr, "/stall").await })
    };
    // The stalled instance holds the lease before the others ask.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut reads = Vec::new();
    for addr in &addrs[1..] {
        for _ in 0..3 {
            let (client, addr) = (f.client.clone(), *addr);
            reads.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = get(&client, addr, "/stall").await;
                (answer, started.elapsed())
            }));
        }
    }
    for read in reads {
        let (answer, took) = read.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(
            answer.text(),
            "call 2",
            "answered by the one takeover's fetch"
        );
        assert!(took < Duration::from_secs(2), "a reader waited {took:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one takeover, one fetch");
    let takeovers: u64 = f.stats().iter().map(|s| s.fleet_takeovers).sum();
    assert_eq!(takeovers, 1);
    stalled.abort();
}

/// A reader that begins after `invalidate` returned is never answered with a fetch that
/// began before it, whichever instance fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_after_an_invalidation_never_gets_the_fetch_from_before_it() {
    let f = fleet(3, Some(Duration::from_secs(2))).await;
    for round in 0..10 {
        // A fetch in flight (200 ms) on one instance...
        let (addr, _) = f.instances[round % 3];
        let early = {
            let client = f.client.clone();
            tokio::spawn(async move { get(&client, addr, "/race?delay_ms=200").await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        // ...when the sync invalidates: everything fetched before is suspect.
        let calls_before = f.origin.calls();
        f.sync.invalidate("/race").await.unwrap();
        let answers = f.burst("/race?delay_ms=200", 2).await;
        for (answer, _) in &answers {
            let call: usize = answer.text().rsplit('#').next().unwrap().parse().unwrap();
            assert!(
                call > calls_before,
                "round {round}: a reader after the invalidation got fetch #{call} (from before it)"
            );
        }
        early.await.unwrap();
    }
}

/// A value no process wrote under a flight's lease key (no expiry, not a token, another
/// type) holds no miss at the coalesce timeout: it is taken over at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_value_under_a_lease_key_holds_no_miss() {
    let f = fleet(1, Some(Duration::from_secs(2))).await;
    let (addr, handle) = &f.instances[0];
    // Find the lease key a miss of each path takes (it is handed back at once, so
    // watch for it with a slow origin).
    let mut connection = f.server().connection();
    for (i, value) in ["forever", "0123456789abcdef", "list"].iter().enumerate() {
        let path = format!("/foreign/{i}?delay_ms=300");
        let probe = {
            let (client, addr, path) = (f.client.clone(), *addr, path.clone());
            tokio::spawn(async move { get(&client, addr, &path).await })
        };
        let key = loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("t:f:/foreign/{i}:*"))
                .query(&mut connection)
                .unwrap();
            if let Some(key) = keys.into_iter().next() {
                break key;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        probe.await.unwrap();
        handle.invalidate(&format!("/foreign/{i}")).await.unwrap();
        // The foreign value, with no expiry.
        let _: () = redis::cmd("DEL").arg(&key).query(&mut connection).unwrap();
        if *value == "list" {
            let _: () = redis::cmd("RPUSH")
                .arg(&key)
                .arg("x")
                .query(&mut connection)
                .unwrap();
        } else {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(value)
                .query(&mut connection)
                .unwrap();
        }
        let started = Instant::now();
        let answer = get(&f.client, *addr, &path).await;
        let took = started.elapsed();
        assert_eq!(answer.status, 200);
        assert!(
            took < Duration::from_secs(2),
            "{value:?} under the lease key held the miss {took:?}"
        );
    }
    assert_eq!(f.stats()[0].fleet_timeouts, 0);
}

/// A typed read (`get_or_insert_with`) goes through the same lookup loop as a request:
/// three instances asking for one key at once, after each invalidation, compute it once
/// between them; with fleet-wide single flight off, each instance computes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn typed_reads_compute_once_for_the_whole_fleet() {
    async fn computes_per_round(f: &Fleet, rounds: usize) -> Vec<usize> {
        let computed = Arc::new(AtomicUsize::new(0));
        let mut per_round = Vec::new();
        for _ in 0..rounds {
            f.sync.invalidate("companies_all").await.unwrap();
            let before = computed.load(Ordering::SeqCst);
            let mut reads = Vec::new();
            for (_, handle) in &f.instances {
                for _ in 0..4 {
                    let (handle, computed) = (handle.clone(), computed.clone());
                    reads.push(tokio::spawn(async move {
                        handle
                            .get_or_insert_with("companies_all", async move {
                                computed.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                vec!["ABC".to_owned(), "XYZ".to_owned()]
                            })
                            .await
                    }));
                }
            }
            for read in reads {
                let companies: Vec<String> = read.await.unwrap();
                assert_eq!(companies, ["ABC", "XYZ"]);
            }
            per_round.push(computed.load(Ordering::SeqCst) - before);
        }
        per_round
    }
    let on = fleet(3, Some(Duration::from_secs(2))).await;
    let computed = computes_per_round(&on, 5).await;
    assert_eq!(
        computed, [1; 5],
        "computes per round, fleet single flight on"
    );
    assert!(on.stats().iter().any(|s| s.fleet_followers > 0));
    let off = fleet(3, None).await;
    let computed = computes_per_round(&off, 5).await;
    assert!(
        computed.iter().all(|&n| n == 3),
        "control: each instance computes once per round without it, {computed:?}"
    );
}

/// Origin calls per soft invalidation of one hot key: readers on every instance are
/// answered at once (the stale copy), and the refreshes are counted once they are stored.
async fn refreshes_per_soft_invalidation(f: &Fleet, rounds: usize) -> Vec<usize> {
    // A first, fresh copy everywhere.
    f.burst(PATH, 1).await;
    let mut per_round = Vec::new();
    for _ in 0..rounds {
        // Counted from before the invalidation: a refresh that begins as it returns is
        // this round's.
        let before = f.origin.calls();
        f.sync.invalidate_soft("/dash").await.unwrap();
        // Nobody waits for the refresh: every reader is answered from the stored copy
        // (a reader that waited for a fetch would be a `MISS`).
        for (answer, took) in f.burst(PATH, 4).await {
            assert_ne!(
                answer.x_cache(),
                "MISS",
                "a reader waited {took:?} for the refresh ({})",
                answer.header("cache-status")
            );
        }
        // Every instance reads the refreshed copy before the next round.
        let refreshed = crate::support::eventually(Duration::from_secs(3), || async {
            let answers = f.burst(PATH, 1).await;
            answers.iter().all(|(a, _)| a.x_cache() == "HIT")
        })
        .await;
        if !refreshed {
            let answers = f.burst(PATH, 1).await;
            let statuses: Vec<_> = answers
                .iter()
                .map(|(a, _)| a.header("cache-status").to_owned())
                .collect();
            panic!("the refresh was never stored: {statuses:?}");
        }
        per_round.push(f.origin.calls() - before);
    }
    per_round
}

/// `invalidate_soft` keeps serving the stale copy on every instance while one background
/// refresh runs in the whole fleet; with fleet-wide single flight off, each instance
/// refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soft_invalidation_refreshes_once_for_the_whole_fleet() {
    let stale = Duration::from_secs(60);
    let on = fleet_serving_stale(3, Some(Duration::from_secs(2)), stale).await;
    let per_round = refreshes_per_soft_invalidation(&on, 10).await;
    assert!(
        per_round.iter().all(|&calls| calls == 1),
        "refreshes per soft invalidation {per_round:?}"
    );
    let off = fleet_serving_stale(3, None, stale).await;
    let per_round = refreshes_per_soft_invalidation(&off, 3).await;
    assert!(
        per_round.iter().all(|&calls| calls == 3),
        "control: one refresh per instance without it, {per_round:?}"
    );
}

/// An invalidation dooms a fetch in flight (its write will be refused): the process
/// fetching hands the key's fleet lease back as it hears of it, so another instance's miss
/// after the invalidation fetches at once instead of waiting for the doomed fetch to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_invalidation_frees_the_fleet_from_waiting_on_a_doomed_fetch() {
    let f = fleet(2, Some(Duration::from_secs(5))).await;
    let path = "/dash?delay_ms=1500";
    let (at_a, at_b) = (f.instances[0].0, f.instances[1].0);
    let doomed = {
        let client = f.client.clone();
        tokio::spawn(async move { get(&client, at_a, path).await })
    };
    // A leads, and holds the lease for the whole fetch.
    tokio::time::sleep(Duration::from_millis(200)).await;
    f.sync.invalidate("/dash").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let after = get(&f.client, at_b, path).await;
    let took = started.elapsed();
    let before = doomed.await.unwrap();
    assert_eq!(after.status, 200);
    assert_ne!(
        after.body, before.body,
        "served the fetch from before the invalidation"
    );
    assert!(
        took < Duration::from_millis(2300),
        "the miss after the invalidation waited {took:?} for the doomed fetch"
    );
}

/// A background refresh that waits for another instance's holds no slot of the service
/// inside the layer: behind a concurrency limit of one, this instance's other requests go
/// through at once while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_waiting_for_another_instance_holds_no_slot_of_the_service_inside() {
    use http_body_util::{BodyExt, Full};
    use tower::limit::GlobalConcurrencyLimitLayer;
    use tower::{Layer, ServiceExt};
    let f = fleet_serving_stale(1, Some(Duration::from_secs(5)), Duration::from_secs(60)).await;
    let at_a = f.instances[0].0;
    // Instance B: the same Redis, one request at a time inside its cache.
    let store = RedisStore::builder(f.server().url())
        .deadline(Duration::from_millis(500))
        .fleet_single_flight(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let b = CacheHandle::builder(store)
        .namespace("t")
        .stale_while_revalidate(Duration::from_secs(60))
        .build();
    let origin = tower::service_fn(|_: http::Request<Full<bytes::Bytes>>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(bytes::Bytes::from(
            "from b",
        ))))
    });
    let limited = GlobalConcurrencyLimitLayer::new(1).layer(origin);
    let service = CacheLayer::new(b.clone()).layer(limited);
    let read = |path: &'static str| {
        let service = service.clone();
        async move {
            let request = http::Request::get(path)
                .header("host", HOST[0].1)
                .body(Full::default())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            response.into_body().collect().await.unwrap();
            x_cache
        }
    };
    let path = "/dash?delay_ms=800";
    get(&f.client, at_a, path).await;
    let warm = crate::support::eventually(Duration::from_secs(5), || async {
        read(path).await == "HIT"
    })
    .await;
    assert!(warm, "B never read A's entry");
    f.sync.invalidate_soft("/dash").await.unwrap();
    // A refreshes (800 ms at the origin); B's stale hit finds it refreshing and waits.
    assert_eq!(get(&f.client, at_a, path).await.x_cache(), "STALE");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(read(path).await, "STALE");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let other = tokio::time::timeout(Duration::from_secs(5), read("/other")).await;
    let took = started.elapsed();
    assert_eq!(other.as_deref(), Ok("MISS"));
    assert!(
        took < Duration::from_millis(400),
        "a request waited {took:?} behind a refresh that was only waiting"
    );
}

/// The process leading a key's fetch is stopped (SIGSTOP) mid-fetch, holding the fleet
/// lease: the other instances' readers wait for it no longer than the lease, one of them
/// takes the flight over and fetches, and every reader is answered (none fails, none
/// waits the coalesce timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_leader_process_is_taken_over_within_its_lease() {
    use crate::near_processes::{spawn, FLEET_LEASE};
    let server = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("trc-fleet-stop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let leader = spawn("fleet", &server.url(), &dir.join("unused"), tx);
    let leader_addr: std::net::SocketAddr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the leader process starts");
        if let Some((_, addr)) = line.split_once("addr ") {
            break addr.trim().parse().unwrap();
        }
    };
    // Two instances in this process: the same Redis, namespace and lease, a fast origin.
    let origin_calls = Arc::new(AtomicUsize::new(0));
    let mut followers = Vec::new();
    for _ in 0..2 {
        let store = RedisStore::builder(server.url())
            .deadline(Duration::from_millis(300))
            .fleet_single_flight(Some(FLEET_LEASE))
            .build()
            .unwrap();
        let handle = CacheHandle::builder(store)
            .namespace("fleet")
            .coalesce_timeout(Duration::from_secs(5))
            .build();
        let calls = origin_calls.clone();
        let app = axum::Router::new()
            .route(
                "/slow",
                axum::routing::get(move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async { "from a follower" }
                }),
            )
            .layer(
                CacheLayer::new(handle)
                    .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
            );
        followers.push(crate::support::serve(app).await);
    }
    let client = client();
    let leading = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, leader_addr, "/slow").await })
    };
    // The leader holds the lease and is at its 1.5 s origin; stop it there.
    tokio::time::sleep(Duration::from_millis(300)).await;
    leader.signal("-STOP");
    let started = Instant::now();
    let mut reads = Vec::new();
    for addr in followers.iter().cycle().take(6) {
        let (client, addr) = (client.clone(), *addr);
        reads.push(tokio::spawn(async move {
            let answer = get(&client, addr, "/slow").await;
            (answer, started.elapsed())
        }));
    }
    for read in reads {
        let (answer, took) = read.await.unwrap();
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "from a follower");
        assert!(
            took < FLEET_LEASE + Duration::from_millis(1500),
            "a reader waited {took:?} for a stopped leader (lease {FLEET_LEASE:?})"
        );
    }
    assert_eq!(
        origin_calls.load(Ordering::SeqCst),
        1,
        "one follower took the flight over for the fleet"
    );
    leader.signal("-CONT");
    drop(leading);
    let _ = std::fs::remove_dir_all(&dir);
}

/// While Redis is unreachable every process falls back to its own single flight: one
/// origin fetch per instance for a burst of readers on each, and nobody waits on a fleet
/// lease it cannot read (every read well under the lease and the coalesce timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_each_instance_flies_alone_and_nobody_waits_for_the_fleet() {
    use tower_response_cache::{Backend, FallbackStore, MemoryStore};

    let mut server = RedisServer::start();
    let origin = Origin::default();
    let mut instances = Vec::new();
    for _ in 0..3 {
        let redis = RedisStore::builder(server.url())
            .deadline(Duration::from_millis(200))
            .fleet_single_flight(Some(Duration::from_secs(2)))
            .build()
            .unwrap();
        let store = FallbackStore::builder(redis, MemoryStore::new())
            .probe_interval(Duration::from_millis(100))
            .build()
            .await;
        let handle = CacheHandle::builder(store)
            .namespace("t")
            .coalesce_timeout(Duration::from_secs(5))
            .build();
        let addr = origin.serve(CacheLayer::new(handle.clone())).await;
        instances.push((addr, handle));
    }
    let client = client();
    for (addr, handle) in &instances {
        assert_eq!(handle.backend(), Backend::Redis);
        get(&client, *addr, "/warm").await;
    }

    server.kill();
    // Each instance finds out (a lost connection, or failed calls, open its circuit).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, (addr, handle)) in instances.iter().enumerate() {
        while handle.backend() != Backend::FallingBack {
            assert!(
                Instant::now() < deadline,
                "instance {i} still on Redis after it died"
            );
            get(&client, *addr, "/probe").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let before = origin.calls();
    let mut reads = Vec::new();
    for (addr, _) in &instances {
        for _ in 0..4 {
            let (client, addr) = (client.clone(), *addr);
            reads.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = get(&client, addr, PATH).await;
                (answer, started.elapsed())
            }));
        }
    }
    for read in reads {
        let (answer, took) = read.await.unwrap();
        assert_eq!(answer.status, 200);
        assert!(
            took < Duration::from_secs(1),
            "a read waited {took:?} with Redis down (a fleet lease it cannot read?)"
        );
    }
    assert_eq!(
        origin.calls() - before,
        instances.len(),
        "one fetch per instance: each flies alone, its own readers coalesced"
    );
}
