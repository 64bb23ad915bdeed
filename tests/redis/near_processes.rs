//! Plumbing of `redis_near.rs`: the instance and sync processes (the test binary run again),
//! a deployment of three instances and a sync process, and the checker that reads every
//! instance and counts reads older than the last returned invalidation.
#![allow(dead_code)]

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
use tower_response_cache::{CacheHandle, CacheLayer, RedisStore, RedisStoreBuilder};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub const LEASE: Duration = Duration::from_millis(200);
pub const NAMESPACE: &str = "near";

// ---------------------------------------------------------------------------------------
// The helper processes.

/// The body of the instance and sync processes (this test binary run again, with
/// `NEAR_ROLE` set); without `NEAR_ROLE` it returns at once.
pub fn run_helper() {
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
            "fleet" => fleet_instance(redis).await,
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
        .layer(
            CacheLayer::new(handle)
                .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("addr {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// An instance in a fleet on one Redis (namespace `fleet`, fleet-wide single flight with a
/// 600 ms lease) in front of an origin whose `/slow` takes 1.5 s: the leader a test stops.
async fn fleet_instance(redis: Vec<String>) {
    use axum::routing::get;
    let store = store_builder(&redis)
        .fleet_single_flight(Some(FLEET_LEASE))
        .build()
        .unwrap();
    let handle = CacheHandle::builder(store).namespace("fleet").build();
    let app = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "from the stopped leader"
            }),
        )
        .layer(CacheLayer::new(handle));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("addr {}", listener.local_addr().unwrap());
    std::io::stdout().flush().unwrap();
    axum::serve(listener, app).await.unwrap();
}

/// The fleet lease of [`fleet_instance`].
pub const FLEET_LEASE: Duration = Duration::from_millis(600);

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
pub struct Helper {
    child: Child,
}

impl Helper {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
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
pub fn spawn(role: &str, redis: &str, data: &Path, lines: mpsc::Sender<String>) -> Helper {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "near::near_helper",
            "--nocapture",
            "--test-threads=1",
        ])
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
pub struct Deployment {
    pub instances: Vec<(Helper, SocketAddr)>,
    pub sync: Option<Helper>,
    /// The version of the last `invalidate` that returned.
    pub committed: Arc<AtomicI64>,
    /// How long each returned `invalidate` took (ms).
    pub waits: Arc<std::sync::Mutex<Vec<u64>>>,
    /// An instance the checker leaves alone for now (`usize::MAX`: none), so that what its
    /// near cache holds is not replaced by reads.
    pub quiet: Arc<std::sync::atomic::AtomicUsize>,
    _dir: PathBuf,
}

impl Deployment {
    pub fn start(redis: &str) -> Deployment {
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

    pub fn stats(&self, i: usize) -> serde_json::Value {
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
pub struct Counts {
    pub reads: AtomicU64,
    pub l1_hits: AtomicU64,
    pub stale: AtomicU64,
}

/// Readers on every instance until `stop`: two each, every read checked against the
/// version committed before it started.
pub fn check(
    deployment: &Deployment,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Arc<Counts>> {
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
pub fn phase(deployment: &Deployment, name: &str, during: impl FnOnce()) -> (u64, u64, u64) {
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

pub fn p99(waits: &[u64]) -> u64 {
    let mut sorted = waits.to_vec();
    sorted.sort_unstable();
    sorted[(sorted.len() * 99 / 100).min(sorted.len() - 1)]
}

/// A histogram that keeps what it was given.
pub struct Recorded(pub Arc<std::sync::Mutex<Vec<(String, f64)>>>);

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
