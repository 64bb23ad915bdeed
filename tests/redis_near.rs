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
//! tested elsewhere, and this checks what the near cache adds.
#![cfg(feature = "redis")]

mod common;
mod redis_support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use redis_support::{RedisCluster, RedisServer};
use tower_response_cache::{CacheHandle, CacheLayer, Store, StoreKey};
use tower_response_cache::{RedisStore, RedisStoreBuilder};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const LEASE: Duration = Duration::from_millis(200);
const NAMESPACE: &str = "near";

// ---------------------------------------------------------------------------------------
// The helper processes.

/// Not a test of its own: the body of the instance and sync processes. Without
/// `NEAR_ROLE` it returns at once.
#[test]
fn near_helper() {
    let Ok(role) = std::env::var("NEAR_ROLE") else {
        return;
    };
    // Exit when the test that started this process goes away (its end of stdin closes).
    std::thread::spawn(|| {
        let mut line = String::new();
        while std::io::stdin().read_line(&mut line).unwrap_or(0) > 0 {
            line.clear();
        }
        std::process::exit(0);
    });
    let redis: Vec<String> = std::env::var("NEAR_REDIS")
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let data = PathBuf::from(std::env::var("NEAR_DATA").unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        match role.as_str() {
            "instance" => instance(redis, data).await,
            "sync" => sync(redis, data).await,
            other => panic!("unknown role {other}"),
        }
    });
}

fn store_builder(redis: &[String]) -> RedisStoreBuilder {
    let builder = if redis.len() > 1 {
        RedisStore::cluster(redis.iter().cloned())
    } else {
        RedisStore::builder(redis[0].as_str())
    };
    // A debug build on a busy machine: no spurious deadline misses.
    builder.deadline(Duration::from_millis(300))
}

/// A server whose `/v` answers the version in the data file, cached (60 s) in Redis with a
/// near cache; `/stats` answers the handle's counters, uncached.
async fn instance(redis: Vec<String>, data: PathBuf) {
    use axum::routing::get;
    let store = store_builder(&redis)
        .near_cache(LEASE, 8 << 20)
        .build()
        .unwrap();
    let handle = CacheHandle::builder(store)
        .namespace(NAMESPACE)
        .ttl(Duration::from_secs(60))
        .build();
    let stats = handle.clone();
    let app = axum::Router::new()
        .route(
            "/v",
            get(move || {
                let data = data.clone();
                async move {
                    let version = std::fs::read_to_string(&data).unwrap_or_default();
                    format!("{{\"alter_id\":{}}}", version.trim())
                }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let stats = stats.stats();
                async move {
                    (
                        [("cache-control", "no-store")],
                        serde_json::to_string(&stats).unwrap(),
                    )
                }
            }),
        )
        .layer(CacheLayer::new(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("addr {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// The sync pipeline: every 100 ms, a new version in the data file, then `invalidate("/v")`
/// through Redis (no near cache here); prints `committed <version> <ms it took>` once it
/// returned.
async fn sync(redis: Vec<String>, data: PathBuf) {
    let store = store_builder(&redis).build().unwrap();
    let handle = CacheHandle::builder(store).namespace(NAMESPACE).build();
    let tmp = data.with_extension("tmp");
    for version in 2i64.. {
        std::fs::write(&tmp, version.to_string()).unwrap();
        std::fs::rename(&tmp, &data).unwrap();
        let started = Instant::now();
        match handle.invalidate("/v").await {
            Ok(_) => println!("committed {version} {}", started.elapsed().as_millis()),
            Err(error) => eprintln!("sync: invalidate failed: {error}"),
        }
        std::io::stdout().flush().unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// The test side.

/// A helper process, killed when dropped.
struct Helper {
    child: Child,
}

impl Helper {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start a helper; every stdout line goes to `lines`.
fn spawn(role: &str, redis: &str, data: &Path, lines: mpsc::Sender<String>) -> Helper {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "near_helper", "--nocapture", "--test-threads=1"])
        .env("NEAR_ROLE", role)
        .env("NEAR_REDIS", redis)
        .env("NEAR_DATA", data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    Helper { child }
}

/// Three instances and the sync process on one Redis (or a cluster).
struct Deployment {
    instances: Vec<(Helper, SocketAddr)>,
    sync: Option<Helper>,
    /// The version of the last `invalidate` that returned.
    committed: Arc<AtomicI64>,
    /// How long each returned `invalidate` took (ms).
    waits: Arc<std::sync::Mutex<Vec<u64>>>,
    /// An instance the checker leaves alone for now (`usize::MAX`: none), so that what its
    /// near cache holds is not replaced by reads.
    quiet: Arc<std::sync::atomic::AtomicUsize>,
    _dir: PathBuf,
}

impl Deployment {
    fn start(redis: &str) -> Deployment {
        let dir =
            std::env::temp_dir().join(format!("trc-near-{}-{}", std::process::id(), rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let data = dir.join("version");
        std::fs::write(&data, "1").unwrap();
        let mut instances = Vec::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel();
            let helper = spawn("instance", redis, &data, tx);
            // The test harness prints its own lines first.
            let addr = loop {
                let line = rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("an instance starts");
                if let Some((_, addr)) = line.split_once("addr ") {
                    break addr.trim().parse().unwrap();
                }
            };
            instances.push((helper, addr));
        }
        let committed = Arc::new(AtomicI64::new(0));
        let waits = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sync = spawn("sync", redis, &data, tx);
        {
            let (committed, waits) = (committed.clone(), waits.clone());
            std::thread::spawn(move || {
                for line in rx {
                    let Some((_, line)) = line.split_once("committed ") else {
                        continue;
                    };
                    let mut words = line.split_whitespace();
                    let version: i64 = words.next().unwrap().parse().unwrap();
                    let ms: u64 = words.next().unwrap().parse().unwrap();
                    committed.fetch_max(version, Ordering::SeqCst);
                    waits.lock().unwrap().push(ms);
                }
            });
        }
        Deployment {
            instances,
            sync: Some(sync),
            committed,
            waits,
            quiet: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            _dir: dir,
        }
    }

    fn stats(&self, i: usize) -> serde_json::Value {
        let addr = self.instances[i].1;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let response = client
                .get(format!("http://{addr}/stats").parse().unwrap())
                .await
                .unwrap();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            serde_json::from_slice(&body).unwrap()
        })
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.sync.take();
        self.instances.clear();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(7);
    h.finish()
}

#[derive(Default)]
struct Counts {
    reads: AtomicU64,
    l1_hits: AtomicU64,
    stale: AtomicU64,
}

/// Readers on every instance until `stop`: two each, every read checked against the
/// version committed before it started.
fn check(deployment: &Deployment, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Arc<Counts>> {
    let addrs: Vec<SocketAddr> = deployment.instances.iter().map(|(_, a)| *a).collect();
    let committed = deployment.committed.clone();
    let quiet = deployment.quiet.clone();
    std::thread::spawn(move || {
        let counts = Arc::new(Counts::default());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut readers = Vec::new();
            for (i, addr) in addrs.into_iter().enumerate() {
                for _ in 0..2 {
                    let (counts, committed, stop) = (counts.clone(), committed.clone(), stop.clone());
                    let quiet = quiet.clone();
                    readers.push(tokio::spawn(async move {
                        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
                        let uri: hyper::Uri = format!("http://{addr}/v").parse().unwrap();
                        while !stop.load(Ordering::SeqCst) {
                            if quiet.load(Ordering::SeqCst) == i {
                                tokio::time::sleep(Duration::from_millis(5)).await;
                                continue;
                            }
                            let floor = committed.load(Ordering::SeqCst);
                            // A stopped instance answers late (or not before the end).
                            let Ok(Ok(response)) =
                                tokio::time::timeout(Duration::from_secs(2), client.get(uri.clone())).await
                            else {
                                continue;
                            };
                            let status = response
                                .headers()
                                .get("cache-status")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let Ok(body) = response.into_body().collect().await else { continue };
                            let json: serde_json::Value =
                                serde_json::from_slice(&body.to_bytes()).unwrap();
                            let version = json["alter_id"].as_i64().unwrap();
                            counts.reads.fetch_add(1, Ordering::Relaxed);
                            if status.contains("detail=l1") {
                                counts.l1_hits.fetch_add(1, Ordering::Relaxed);
                            }
                            if version < floor {
                                counts.stale.fetch_add(1, Ordering::Relaxed);
                                eprintln!("STALE: {addr} answered {version} after {floor} was committed ({status})");
                            }
                        }
                    }));
                }
            }
            for reader in readers {
                let _ = reader.await;
            }
        });
        counts
    })
}

/// Run the checker for `phase` while `during` runs; returns (reads, L1 hits, stale).
fn phase(deployment: &Deployment, name: &str, during: impl FnOnce()) -> (u64, u64, u64) {
    let before = deployment.committed.load(Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let checker = check(deployment, stop.clone());
    during();
    stop.store(true, Ordering::SeqCst);
    let counts = checker.join().unwrap();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let result = (get(&counts.reads), get(&counts.l1_hits), get(&counts.stale));
    let after = deployment.committed.load(Ordering::SeqCst);
    eprintln!(
        "{name}: {} reads, {} from L1, {} stale; invalidations committed {before} -> {after}",
        result.0, result.1, result.2
    );
    assert!(after > before, "{name}: the sync process committed nothing");
    result
}

fn p99(waits: &[u64]) -> u64 {
    let mut sorted = waits.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
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

    let (_, _, s) = phase(&deployment, "redis paused", || {
        std::thread::sleep(Duration::from_millis(500));
        redis.pause();
        std::thread::sleep(Duration::from_millis(700));
        redis.resume();
        std::thread::sleep(Duration::from_millis(1000));
    });
    stale += s;

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
fn on_a_cluster_the_near_cache_steps_aside_and_nothing_is_stale() {
    let cluster = RedisCluster::start();
    cluster.wait_until_ok();
    let deployment = Deployment::start(&cluster.seeds().join(","));
    let (reads, l1, stale) = phase(&deployment, "cluster", || {
        std::thread::sleep(Duration::from_secs(2))
    });
    assert!(reads > 100, "too few reads: {reads}");
    assert_eq!(l1, 0, "no near cache on a cluster");
    assert_eq!(stale, 0, "stale reads after an invalidate returned");
}

/// Heartbeats stop (Redis refuses writes and publishes for a while): the lease lapses and
/// reads go to Redis; when heartbeats return, hits come from the near cache again.
#[tokio::test]
async fn the_lease_lapses_without_heartbeats_and_returns_with_them() {
    use tower_response_cache::Entry;
    let redis = RedisServer::start();
    let lease = Duration::from_millis(100);
    let store = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .near_cache(lease, 1 << 20)
        .build()
        .unwrap();
    let key = StoreKey {
        namespace: "near",
        logical: "/page",
        variant: 7,
    };
    let entry = Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"hello"),
        Duration::from_secs(60),
    );
    let token = store.current_write_token().await.unwrap();
    store.put(key, Arc::new(entry), token).await.unwrap();
    let near_hit = |store: &RedisStore| store.try_get_now(key).flatten().is_some();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !near_hit(&store) {
        assert!(
            Instant::now() < deadline,
            "no near-cache hit with heartbeats flowing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lapses = store.stats().lease_lapses;

    // Writes (the heartbeat script) and PUBLISH wait while reads go on.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1000)
        .arg("WRITE")
        .query(&mut redis.connection())
        .unwrap();
    tokio::time::sleep(lease + lease / 2).await;
    // No lease: `try_get_now` declines, so the layer asks Redis (`get`).
    assert!(!near_hit(&store), "a near-cache hit without a lease");
    assert!(store.stats().lease_lapses > lapses, "the lapse is counted");
    // (The read queues behind the paused heartbeat on the multiplexed connection.)
    let before = store.stats().redis_hits;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(store.get(key).await.unwrap().is_some(), "Redis answers");
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
    use tower_response_cache::Entry;
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(300))
        .near_cache(Duration::from_millis(100), 1 << 20)
        .build()
        .unwrap();
    let key = StoreKey {
        namespace: "near",
        logical: "/page",
        variant: 7,
    };
    let entry = Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"old"),
        Duration::from_secs(60),
    );
    let token = store.current_write_token().await.unwrap();
    store.put(key, Arc::new(entry), token).await.unwrap();
    let near_hit = |store: &RedisStore| store.try_get_now(key).flatten().is_some();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !near_hit(&store) {
        assert!(
            Instant::now() < deadline,
            "no near-cache hit with heartbeats flowing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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
    let entry = Arc::new(Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"fresh"),
        Duration::from_secs(60),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let token = store.current_write_token().await.unwrap();
        store.put(fresh, entry.clone(), token).await.unwrap();
        if store.try_get_now(fresh).flatten().is_some() {
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
    let handle = config.build().await;
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
        .layer(CacheLayer::new(handle.clone()));
    let addr = common::serve(app).await;
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = common::get(&client, addr, "/page").await;
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
    let stats = handle.stats();
    assert!(stats.l1_hits > 0, "{stats:?}");
    handle.invalidate("/page").await.unwrap();
    let answer = common::get(&client, addr, "/page").await;
    assert_eq!(answer.text(), "call 2", "{}", answer.header("cache-status"));
}

/// A histogram that keeps what it was given.
struct Recorded(Arc<std::sync::Mutex<Vec<(String, f64)>>>);

impl metrics::Recorder for Recorded {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        key: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        struct Keep(String, Arc<std::sync::Mutex<Vec<(String, f64)>>>);
        impl metrics::HistogramFn for Keep {
            fn record(&self, value: f64) {
                self.1.lock().unwrap().push((self.0.clone(), value));
            }
        }
        metrics::Histogram::from_arc(Arc::new(Keep(key.name().to_owned(), self.0.clone())))
    }
}

/// A process without a near cache (the sync pipeline) still waits for another process's
/// lease, and the wait is exported as a histogram.
#[test]
fn an_invalidation_waits_for_advertised_leases_and_exports_the_wait() {
    let redis = RedisServer::start();
    let values = Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = Recorded(values.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lease = Duration::from_millis(150);
    let took = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let invalidator = RedisStore::builder(redis.url())
                .deadline(Duration::from_millis(300))
                .build()
                .unwrap();
            let pattern = tower_response_cache::Pattern::new("/page");
            // Nobody advertises a lease yet: no wait.
            let started = Instant::now();
            invalidator.invalidate("near", &pattern).await.unwrap();
            assert!(started.elapsed() < lease, "waited with no lease advertised");
            let _holder = RedisStore::builder(redis.url())
                .deadline(Duration::from_millis(300))
                .near_cache(lease, 1 << 20)
                .build()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            invalidator.invalidate("near", &pattern).await.unwrap();
            started.elapsed()
        })
    });
    assert!(
        took >= lease,
        "returned after {took:?}, before the lease of {lease:?}"
    );
    let values = values.lock().unwrap();
    let waits: Vec<f64> = values
        .iter()
        .filter(|(name, _)| name == "tower_response_cache_invalidate_wait_seconds")
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(waits.len(), 1, "{values:?}");
    assert!(waits[0] >= lease.as_secs_f64(), "{waits:?}");
}

/// An invalidation that fails (here: Redis holds writes longer than the deadline) still
/// clears this process's near cache: it returned an error, but this process does not serve
/// what it tried to remove.
#[tokio::test]
async fn a_failed_invalidation_still_clears_this_process_near_cache() {
    use tower_response_cache::Entry;
    let redis = RedisServer::start();
    let store = RedisStore::builder(redis.url())
        .deadline(Duration::from_millis(200))
        .near_cache(Duration::from_millis(100), 1 << 20)
        .build()
        .unwrap();
    let key = StoreKey {
        namespace: "near",
        logical: "/page",
        variant: 7,
    };
    let fresh = StoreKey {
        logical: "/fresh",
        ..key
    };
    let entry = Arc::new(Entry::new(
        http::StatusCode::OK,
        http::HeaderMap::new(),
        Bytes::from_static(b"old"),
        Duration::from_secs(60),
    ));
    for key in [key, fresh] {
        let token = store.current_write_token().await.unwrap();
        store.put(key, entry.clone(), token).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.try_get_now(key).flatten().is_none() {
        assert!(
            Instant::now() < deadline,
            "no near-cache hit with heartbeats flowing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(500)
        .arg("WRITE")
        .query(&mut redis.connection())
        .unwrap();
    let failed = store
        .invalidate("near", &tower_response_cache::Pattern::new("/page"))
        .await;
    assert!(
        failed.is_err(),
        "the invalidation was held past its deadline"
    );
    // The lease comes back once writes flow again (the other key hits again)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.try_get_now(fresh).flatten().is_none() {
        assert!(Instant::now() < deadline, "near-cache hits did not resume");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ...and the key it tried to invalidate is not among them.
    assert!(store.try_get_now(key).flatten().is_none());
}
