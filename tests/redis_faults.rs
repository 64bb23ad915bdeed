//! Redis failing under a real axum server: killed, paused, restarted with old data or empty,
//! down at start, full, read-only, holding bad data, refusing our password, and a pattern
//! invalidation over a large keyspace. Through all of it no request fails or waits much
//! longer than the deadline, and no invalidated entry comes back.
#![cfg(feature = "redis")]

mod common;
mod redis_support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::Uri;
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use common::{client, Answer, HttpClient};
use http_body_util::{BodyExt, Full};
use redis_support::RedisServer;
use tower_response_cache::store::{FallbackStore, FallbackStoreBuilder, RedisStore};
use tower_response_cache::{Backend, CacheConfig, CacheHandle, CacheLayer, MemoryStore};

/// The per-call Redis deadline of the timing tests.
const DEADLINE: Duration = Duration::from_millis(50);
/// What "not much longer than the deadline" means for one whole HTTP request on a loaded
/// CI machine.
const BOUND: Duration = Duration::from_secs(1);
/// A generous deadline for tests about what happens, not how fast: a slow CI machine must
/// not open the circuit behind their back.
const RELAXED: Duration = Duration::from_millis(500);

/// Counts its calls and answers `<path> #<call number>`, so a body tells which fetch made it.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<AtomicUsize>,
    /// Answer with `Cache-Control: no-store`: nothing gets written over a bad value.
    no_store: Arc<AtomicBool>,
}

impl Origin {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn origin(State(origin): State<Origin>, uri: Uri) -> axum::response::Response {
    let n = origin.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let mut response = axum::response::Response::new(format!("{} #{n}", uri.path()).into());
    if origin.no_store.load(Ordering::SeqCst) {
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
    }
    response
}

/// A redis-server, a fallback store on it, and an axum server caching through it.
struct Stack {
    server: RedisServer,
    store: FallbackStore,
    handle: CacheHandle,
    origin: Origin,
    addr: SocketAddr,
    client: HttpClient,
}

impl Stack {
    /// Deadline [`DEADLINE`], probe every 100 ms, the rest as `configure` says.
    async fn start(
        server: RedisServer,
        configure: impl FnOnce(FallbackStoreBuilder) -> FallbackStoreBuilder,
    ) -> Stack {
        let url = server.url();
        Self::start_at(server, &url, DEADLINE, configure).await
    }

    async fn start_at(
        server: RedisServer,
        url: &str,
        deadline: Duration,
        configure: impl FnOnce(FallbackStoreBuilder) -> FallbackStoreBuilder,
    ) -> Stack {
        let redis = RedisStore::builder(url).deadline(deadline).build().unwrap();
        let builder = FallbackStore::builder(redis, MemoryStore::new())
            .probe_interval(Duration::from_millis(100));
        let store = configure(builder).build().await;
        let handle = CacheHandle::builder(store.clone())
            .namespace("t")
            .ttl(Duration::from_secs(3600))
            .build();
        let origin = Origin::default();
        let addr = serve_origin(&origin, &handle).await;
        Stack {
            server,
            store,
            handle,
            origin,
            addr,
            client: client(),
        }
    }

    /// One GET, which must answer 200 with the origin's body for `path` within [`BOUND`].
    async fn read(&self, path: &str) -> Answer {
        let started = Instant::now();
        let answer = try_get(&self.client, self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        check(path, &answer, started.elapsed()).unwrap_or_else(|e| panic!("{e}"));
        answer
    }

    /// Read `path` until it is a hit served from Redis; returns that hit.
    async fn warm(&self, path: &str) -> Answer {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = self.read(path).await;
            if answer.x_cache() == "HIT" && !served_by_fallback(&answer) {
                return answer;
            }
            assert!(
                Instant::now() < deadline,
                "{path} never became a Redis hit (last: {})",
                answer.header("cache-status")
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn backend(&self) -> Backend {
        self.handle.backend()
    }

    async fn wait_for_backend(&self, backend: Backend, within: Duration, why: &str) {
        let reached = eventually(within, || async { self.backend() == backend }).await;
        assert!(
            reached,
            "{why}: backend still {:?} after {within:?}",
            self.backend()
        );
    }

    /// Wait until Redis holds an entry for `path` (they are written off the response path).
    async fn wait_stored_in_redis(&self, path: &str) {
        let key = format!("t:k:{path}");
        let stored = eventually(Duration::from_secs(5), || async {
            !self.server.keys(&key).is_empty()
        })
        .await;
        assert!(stored, "{key} never appeared in Redis");
    }
}

async fn serve_origin(origin: &Origin, handle: &CacheHandle) -> SocketAddr {
    let app = Router::new()
        .fallback(any(self::origin))
        .with_state(origin.clone())
        .layer(CacheLayer::new(handle.clone()));
    common::serve(app).await
}

async fn try_get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// 200, the origin's body for this path, within [`BOUND`].
fn check(path: &str, answer: &Answer, took: Duration) -> Result<(), String> {
    if answer.status != 200 {
        return Err(format!("GET {path}: status {}", answer.status));
    }
    if !answer.text().starts_with(&format!("{path} #")) {
        return Err(format!("GET {path}: unexpected body {:?}", answer.text()));
    }
    if took >= BOUND {
        return Err(format!("GET {path}: took {took:?} (bound {BOUND:?})"));
    }
    Ok(())
}

fn served_by_fallback(answer: &Answer) -> bool {
    answer.header("cache-status").contains("fallback")
}

/// Poll `condition` every 10 ms until it holds or `within` passes; whether it held.
async fn eventually<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn eventually_some<T, F, Fut>(within: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe().await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Blocking harness calls (kill, restart) off the async workers' backs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Concurrent GET loops over a few paths, checking every answer, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    report: Arc<Mutex<Report>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Report {
    failures: Vec<String>,
    slowest: Duration,
    served_by_fallback: usize,
}

impl Traffic {
    fn start(stack: &Stack, workers: usize, paths: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let report = Arc::new(Mutex::new(Report::default()));
        let workers = (0..workers)
            .map(|w| {
                let (stop, requests, report) = (stop.clone(), requests.clone(), report.clone());
                let (client, addr) = (stack.client.clone(), stack.addr);
                tokio::spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let path = format!("/t/{}", i % paths);
                        i += 1;
                        let started = Instant::now();
                        let result = try_get(&client, addr, &path).await;
                        let took = started.elapsed();
                        let mut report = report.lock().unwrap();
                        report.slowest = report.slowest.max(took);
                        match result.and_then(|a| check(&path, &a, took).map(|()| a)) {
                            Ok(answer) => {
                                if served_by_fallback(&answer) {
                                    report.served_by_fallback += 1;
                                }
                            }
                            Err(failure) => report.failures.push(failure),
                        }
                        drop(report);
                        requests.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            requests,
            report,
            workers,
        }
    }

    /// Let `n` more requests complete.
    async fn run_for(&self, n: usize, phase: &str) {
        let target = self.requests.load(Ordering::SeqCst) + n;
        let done = eventually(Duration::from_secs(10), || async {
            self.requests.load(Ordering::SeqCst) >= target
        })
        .await;
        assert!(done, "traffic stalled {phase}: {:?}", self.report.lock());
    }

    async fn stop(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.expect("traffic worker panicked");
        }
        Arc::try_unwrap(self.report)
            .expect("workers are done")
            .into_inner()
            .unwrap()
    }
}

fn assert_clean(report: &Report, what: &str) {
    eprintln!(
        "{what}: slowest request {:?}, {} answered by the fallback, {} failed",
        report.slowest,
        report.served_by_fallback,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{what}: {} requests failed, first: {:?}",
        report.failures.len(),
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.slowest < BOUND,
        "{what}: slowest request {:?}",
        report.slowest
    );
    assert!(
        report.served_by_fallback > 0,
        "{what}: no answer came from the fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_mid_traffic_fails_no_request_and_heals_after_an_empty_restart() {
    let mut s = Stack::start(RedisServer::start(), |b| b).await;
    for i in 0..4 {
        s.warm(&format!("/t/{i}")).await;
    }
    let traffic = Traffic::start(&s, 8, 16);
    traffic.run_for(100, "before the kill").await;
    assert_eq!(s.handle.stats().circuit_openings, 0);

    blocking(|| s.server.kill());
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGKILL",
    )
    .await;
    traffic.run_for(200, "while Redis is dead").await;

    blocking(|| s.server.restart_empty());
    s.wait_for_backend(Backend::Redis, Duration::from_secs(10), "after restart")
        .await;
    traffic.run_for(100, "after the circuit closed").await;
    let report = traffic.stop().await;
    assert_clean(&report, "kill");
    assert_eq!(s.handle.stats().circuit_openings, 1, "one outage, one opening");

    // Entries are written to Redis again.
    s.read("/after-restart").await;
    s.wait_stored_in_redis("/after-restart").await;
    s.warm("/after-restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_redis_fails_no_request_and_the_circuit_closes_when_it_resumes() {
    let s = Stack::start(RedisServer::start(), |b| b).await;
    for i in 0..4 {
        s.warm(&format!("/t/{i}")).await;
    }
    let traffic = Traffic::start(&s, 8, 16);
    traffic.run_for(100, "before the pause").await;

    s.server.pause();
    // (A failed assertion drops the server, whose SIGKILL ends a stopped process too.)
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGSTOP",
    )
    .await;
    traffic.run_for(200, "while Redis hangs").await;
    s.server.resume();

    s.wait_for_backend(Backend::Redis, Duration::from_secs(10), "after SIGCONT")
        .await;
    traffic.run_for(100, "after the circuit closed").await;
    let report = traffic.stop().await;
    assert_clean(&report, "pause");

    s.read("/after-resume").await;
    s.wait_stored_in_redis("/after-resume").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_during_an_outage_is_replayed_before_a_restarted_redis_is_read() {
    let mut s = Stack::start(RedisServer::start(), |b| b).await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    blocking(|| s.server.kill());

    let result = s.handle.invalidate("/api/dashboard/*").await;
    assert!(
        result.is_err(),
        "Redis was not reached, and the caller must hear it"
    );
    assert!(s.store.pending_invalidations() >= 1);
    let during = s.read("/api/dashboard/ABC").await;
    assert_eq!(during.x_cache(), "MISS");
    assert_ne!(during.body, old.body);
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGKILL",
    )
    .await;

    // Redis comes back from its snapshot, holding the invalidated entry.
    blocking(|| s.server.restart());
    s.wait_for_backend(Backend::Redis, Duration::from_secs(10), "after restart")
        .await;
    let after = s.read("/api/dashboard/ABC").await;
    assert_eq!(
        after.x_cache(),
        "MISS",
        "served {:?} ({}; {:?})",
        after.text(),
        after.header("cache-status"),
        s.store
    );
    assert_ne!(after.body, old.body, "the invalidated entry came back");
    assert_eq!(s.store.pending_invalidations(), 0);
}

/// The same, when Redis is back before the circuit had opened (one failure is below the
/// threshold, and the probe is far away): reads must still wait for the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_that_missed_redis_is_replayed_even_if_the_circuit_never_opened() {
    let mut s = Stack::start(RedisServer::start(), |b| {
        b.probe_interval(Duration::from_secs(30))
    })
    .await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    blocking(|| s.server.kill());
    assert!(s.handle.invalidate("/api/dashboard/*").await.is_err());
    blocking(|| s.server.restart());

    for _ in 0..20 {
        let answer = s.read("/api/dashboard/ABC").await;
        assert_ne!(
            answer.body,
            old.body,
            "an entry invalidated while Redis was down was served from the restarted Redis \
             ({}; {} invalidations still pending)",
            answer.header("cache-status"),
            s.store.pending_invalidations()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_old_snapshot_hears_recent_invalidations_again() {
    let mut s = Stack::start(RedisServer::start(), |b| b).await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    assert_eq!(s.handle.invalidate("/api/dashboard/*").await.unwrap(), 1);
    assert!(s.server.keys("t:k:*").is_empty());

    // No request in between: only the probe can tell Redis restarted.
    blocking(|| s.server.restart());
    let replayed = eventually(Duration::from_secs(5), || async {
        s.server.keys("t:k:/api/dashboard/ABC").is_empty()
    })
    .await;
    assert!(
        replayed,
        "the restarted Redis still holds the entry invalidated after its snapshot"
    );
    s.wait_for_backend(Backend::Redis, Duration::from_secs(5), "after the replay")
        .await;
    let after = s.read("/api/dashboard/ABC").await;
    assert_eq!(after.x_cache(), "MISS");
    assert_ne!(after.body, old.body, "the invalidated entry came back");
    // And the new entry is written to the restarted Redis.
    s.wait_stored_in_redis("/api/dashboard/ABC").await;
}

/// Stricter: requests arriving right after the restart, before any probe ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_from_an_old_snapshot_is_not_read_before_the_replay() {
    let mut s = Stack::start(RedisServer::start(), |b| {
        b.probe_interval(Duration::from_secs(30))
    })
    .await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    assert_eq!(s.handle.invalidate("/api/dashboard/*").await.unwrap(), 1);
    blocking(|| s.server.restart());
    assert_eq!(
        s.server.keys("t:k:*").len(),
        1,
        "premise: the snapshot brings the entry back"
    );

    for _ in 0..20 {
        let answer = s.read("/api/dashboard/ABC").await;
        assert_ne!(
            answer.body,
            old.body,
            "an invalidated entry was served from a Redis restarted from an older snapshot ({})",
            answer.header("cache-status")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After a restart the server's invalidation counter may be lower than the one this
/// process has seen; writes must still land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_reach_redis_again_after_it_restarts_empty_behind_our_generation() {
    let mut s = Stack::start(RedisServer::start(), |b| b).await;
    s.warm("/a").await;
    for _ in 0..3 {
        s.handle.invalidate("/a").await.unwrap();
    }
    s.warm("/b").await;

    blocking(|| s.server.restart_empty());
    // The probe notices the restart (new run_id) and heals; wait for a stored write.
    let stored = eventually(Duration::from_secs(5), || async {
        s.read("/c").await;
        !s.server.keys("t:k:/c").is_empty()
    })
    .await;
    let generation: Option<u64> = redis::cmd("GET")
        .arg("tower-response-cache:gen")
        .query(&mut s.server.connection())
        .unwrap();
    assert!(
        stored,
        "nothing is written to a Redis that restarted empty (backend {:?}, {:?}, \
         its invalidation counter is at {generation:?} after 3 invalidations before the restart)",
        s.backend(),
        s.store
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_with_redis_down_serves_from_memory_at_once_and_switches_when_it_comes_up() {
    let mut server = RedisServer::start();
    // Nothing listens on the port now; a restart brings Redis up on it.
    blocking(|| server.kill());
    let url = server.url();
    let vars = [
        ("REDIS_ENABLED", "true"),
        ("REDIS_URL", url.as_str()),
        ("CACHE_NAMESPACE", "t"),
        ("CACHE_REDIS_TIMEOUT_MS", "50"),
    ];
    let config = CacheConfig::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let started = Instant::now();
    let handle = config.build().await;
    let took = started.elapsed();
    assert!(took < BOUND, "building took {took:?} with Redis down");
    assert_eq!(handle.backend(), Backend::FallingBack);

    let origin = Origin::default();
    let addr = serve_origin(&origin, &handle).await;
    let client = client();
    let first = get_checked(&client, addr, "/x").await;
    assert_eq!(first.x_cache(), "MISS");
    assert!(
        served_by_fallback(&first),
        "{}",
        first.header("cache-status")
    );
    let hit = eventually_some(Duration::from_secs(5), || async {
        let a = get_checked(&client, addr, "/x").await;
        (a.x_cache() == "HIT").then_some(a)
    })
    .await
    .expect("/x is served from memory");
    assert!(served_by_fallback(&hit), "{}", hit.header("cache-status"));
    assert_eq!(hit.body, first.body);

    blocking(|| server.restart_empty());
    let switched = eventually(Duration::from_secs(10), || async {
        handle.backend() == Backend::Redis
    })
    .await;
    assert!(switched, "the circuit never closed once Redis came up");
    get_checked(&client, addr, "/y").await;
    let stored = eventually(Duration::from_secs(5), || async {
        !server.keys("t:k:/y").is_empty()
    })
    .await;
    assert!(stored, "entries are not written to Redis after it came up");
    // The memory entry is not served any longer.
    let x = get_checked(&client, addr, "/x").await;
    assert!(!served_by_fallback(&x), "{}", x.header("cache-status"));
    assert_eq!(x.x_cache(), "MISS");
}

async fn get_checked(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    let started = Instant::now();
    let answer = try_get(client, addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    check(path, &answer, started.elapsed()).unwrap_or_else(|e| panic!("{e}"));
    answer
}

fn ttl_of(answer: &Answer) -> u64 {
    let status = answer.header("cache-status");
    status
        .split(';')
        .find_map(|part| part.trim().strip_prefix("ttl="))
        .and_then(|ttl| ttl.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {status:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_written_while_falling_back_live_briefly_and_are_dropped_when_redis_returns() {
    let mut s = Stack::start(RedisServer::start(), |b| {
        b.fallback_ttl(Duration::from_secs(1))
    })
    .await;
    blocking(|| s.server.kill());
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after SIGKILL",
    )
    .await;

    let first = s.read("/f").await;
    let hit = eventually_some(Duration::from_secs(1), || async {
        let a = s.read("/f").await;
        (a.x_cache() == "HIT").then_some(a)
    })
    .await
    .expect("/f is served from the fallback");
    assert!(served_by_fallback(&hit));
    assert!(
        ttl_of(&hit) <= 1,
        "a fallback entry lives {}s, not the capped 1s",
        ttl_of(&hit)
    );
    // The handle's TTL is an hour: only the cap can expire it.
    let started = Instant::now();
    let expired = eventually(Duration::from_secs(5), || async {
        s.read("/f").await.x_cache() == "MISS"
    })
    .await;
    assert!(
        expired,
        "the fallback entry outlived its 1 s cap ({:?})",
        started.elapsed()
    );
    assert_ne!(first.body, s.read("/f").await.body);

    // Entries from the outage are dropped when Redis returns.
    let g = s.read("/g").await;
    assert_eq!(g.x_cache(), "MISS");
    assert!(s.handle.stats().entries >= 1);
    blocking(|| s.server.restart_empty());
    s.wait_for_backend(Backend::Redis, Duration::from_secs(10), "after restart")
        .await;
    assert_eq!(
        s.handle.stats().entries,
        0,
        "fallback entries survived Redis's return"
    );
    let again = s.read("/g").await;
    assert_eq!(again.x_cache(), "MISS");
    assert!(!served_by_fallback(&again));
}

// ---- bad data and errors -----------------------------------------------------------------

fn hkeys(server: &RedisServer, key: &str) -> Vec<String> {
    redis::cmd("HKEYS")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

fn hget(server: &RedisServer, key: &str, field: &str) -> Option<Vec<u8>> {
    redis::cmd("HGET")
        .arg(key)
        .arg(field)
        .query(&mut server.connection())
        .unwrap()
}

fn redis_cmd(server: &RedisServer, args: &[&str]) {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    let _: redis::Value = cmd.query(&mut server.connection()).unwrap();
}

fn set_bytes(server: &RedisServer, key: &str, field: &str, value: &[u8]) {
    let _: i64 = redis::cmd("HSET")
        .arg(key)
        .arg(field)
        .arg(value)
        .query(&mut server.connection())
        .unwrap();
}

fn key_type(server: &RedisServer, key: &str) -> String {
    redis::cmd("TYPE")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

async fn relaxed_stack() -> Stack {
    let server = RedisServer::start();
    let url = server.url();
    Stack::start_at(server, &url, RELAXED, |b| b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_foreign_values_are_a_miss_and_are_deleted() {
    let s = relaxed_stack().await;
    s.warm("/bad/model").await;
    let fields = hkeys(&s.server, "t:k:/bad/model");
    assert_eq!(fields.len(), 1, "one variant, one field: {fields:?}");
    let valid = hget(&s.server, "t:k:/bad/model", &fields[0]).expect("the stored value");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage",
            (0..200u32).map(|i| (i * 7919 % 251) as u8).collect(),
        ),
        ("truncated to half", valid[..valid.len() / 2].to_vec()),
        ("one byte short", valid[..valid.len() - 1].to_vec()),
        ("one byte too many", [&valid[..], b"!"].concat()),
        ("empty", Vec::new()),
        (
            "foreign JSON",
            br#"{"status":200,"headers":{},"body":"hello"}"#.to_vec(),
        ),
        (
            "a huge variant count",
            vec![0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1],
        ),
        (
            "a huge length",
            vec![0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 1, 2],
        ),
        ("every byte flipped", valid.iter().map(|b| !b).collect()),
    ];
    for (i, (what, bytes)) in cases.iter().enumerate() {
        let path = format!("/bad/{i}");
        let key = format!("t:k:{path}");
        let stored = s.warm(&path).await;
        let field = hkeys(&s.server, &key).pop().expect("a field");
        set_bytes(&s.server, &key, &field, bytes);

        // The origin's answer is not stored, so only the cache can remove the bad value.
        s.origin.no_store.store(true, Ordering::SeqCst);
        let answer = s.read(&path).await;
        assert_eq!(
            answer.x_cache(),
            "MISS",
            "{what}: {}",
            answer.header("cache-status")
        );
        assert_ne!(answer.body, stored.body, "{what}");
        let deleted = eventually(Duration::from_secs(5), || async {
            hget(&s.server, &key, &field).is_none()
        })
        .await;
        assert!(deleted, "{what}: the undecodable value was not deleted");
        s.origin.no_store.store(false, Ordering::SeqCst);
        // The key caches again.
        s.warm(&path).await;
    }
    assert_eq!(s.backend(), Backend::Redis, "bad data opened the circuit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_of_the_wrong_type_under_a_cache_key_is_a_miss_and_is_deleted() {
    let s = relaxed_stack().await;
    redis_cmd(&s.server, &["SET", "t:k:/wrong", "a plain string"]);
    s.origin.no_store.store(true, Ordering::SeqCst);
    let answer = s.read("/wrong").await;
    assert_eq!(answer.x_cache(), "MISS");
    let deleted = eventually(Duration::from_secs(5), || async {
        key_type(&s.server, "t:k:/wrong") == "none"
    })
    .await;
    assert!(deleted, "the string under the cache key was not deleted");
    s.origin.no_store.store(false, Ordering::SeqCst);
    s.warm("/wrong").await;

    // A write that meets a value of the wrong type (a list appears meanwhile) is skipped.
    redis_cmd(&s.server, &["RPUSH", "t:k:/list", "x"]);
    for _ in 0..3 {
        s.read("/list").await;
    }
    s.warm("/list").await;
    assert_eq!(s.backend(), Backend::Redis, "WRONGTYPE opened the circuit");
}

/// Many misses at once whose writes Redis refuses: every one answers, and errors Redis
/// answers with (unlike connection trouble) leave the circuit closed.
async fn misses_under_refused_writes(s: &Stack, prefix: &str) {
    let errors_before = s.handle.stats().store_errors;
    let reads: Vec<_> = (0..10)
        .map(|i| {
            let (client, addr) = (s.client.clone(), s.addr);
            let path = format!("{prefix}/{i}");
            tokio::spawn(async move { get_checked(&client, addr, &path).await })
        })
        .collect();
    for read in reads {
        let answer = read.await.unwrap();
        assert_eq!(answer.x_cache(), "MISS");
    }
    let refused = eventually(Duration::from_secs(5), || async {
        s.handle.stats().store_errors >= errors_before + 10
    })
    .await;
    assert!(
        refused,
        "expected 10 refused writes, counted {}",
        s.handle.stats().store_errors - errors_before
    );
    assert!(s.server.keys(&format!("t:k:{prefix}/*")).is_empty());
    assert_eq!(
        s.backend(),
        Backend::Redis,
        "errors Redis answered with opened the circuit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_refusing_writes_costs_no_request() {
    let s = relaxed_stack().await;
    let kept = s.warm("/kept").await;
    redis_cmd(
        &s.server,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    redis_cmd(&s.server, &["CONFIG", "SET", "maxmemory", "1"]);

    misses_under_refused_writes(&s, "/oom").await;
    // Reads still work.
    let hit = s.read("/kept").await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &kept.body));

    redis_cmd(&s.server, &["CONFIG", "SET", "maxmemory", "0"]);
    s.warm("/oom/0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_replica_refusing_writes_costs_no_request() {
    let s = relaxed_stack().await;
    let kept = s.warm("/kept").await;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = nowhere.local_addr().unwrap().port().to_string();
    drop(nowhere);
    redis_cmd(&s.server, &["REPLICAOF", "127.0.0.1", &dead_port]);

    misses_under_refused_writes(&s, "/ro").await;
    let hit = s.read("/kept").await;
    assert_eq!((hit.x_cache(), &hit.body), ("HIT", &kept.body));

    redis_cmd(&s.server, &["REPLICAOF", "NO", "ONE"]);
    s.warm("/ro/0").await;
}

/// Redis answers the invalidation with an error (full: `INCR` is refused; read-only:
/// every write is): `invalidate` reports it, and the entry must still not be served.
async fn invalidation_refused_by_redis(refuse: &[&[&str]], what: &str) {
    let s = relaxed_stack().await;
    let old = s.warm("/api/dashboard/ABC").await;
    for command in refuse {
        redis_cmd(&s.server, command);
    }
    let result = s.handle.invalidate("/api/dashboard/*").await;
    for _ in 0..5 {
        let answer = s.read("/api/dashboard/ABC").await;
        assert_ne!(
            answer.body,
            old.body,
            "{what}: the invalidated entry was served from Redis (invalidate returned {result:?}, \
             {} pending, {})",
            s.store.pending_invalidations(),
            answer.header("cache-status")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_full_redis_refuses_still_stops_the_entry_being_served() {
    invalidation_refused_by_redis(
        &[
            &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
            &["CONFIG", "SET", "maxmemory", "1"],
        ],
        "OOM",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_a_read_only_redis_refuses_still_stops_the_entry_being_served() {
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = nowhere.local_addr().unwrap().port().to_string();
    drop(nowhere);
    invalidation_refused_by_redis(&[&["REPLICAOF", "127.0.0.1", &dead_port]], "READONLY").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_password_costs_no_request() {
    for (what, password) in [("wrong password", Some("wrong")), ("no password", None)] {
        let server = RedisServer::start_with(&["--requirepass", "right-password"]);
        let url = match password {
            Some(p) => format!("redis://:{p}@127.0.0.1:{}/0", server.port),
            None => format!("redis://127.0.0.1:{}/0", server.port),
        };
        let started = Instant::now();
        let s = Stack::start_at(server, &url, DEADLINE, |b| b).await;
        let took = started.elapsed();
        assert!(took < BOUND, "{what}: building took {took:?}");
        for path in ["/p/1", "/p/1", "/p/2", "/p/1"] {
            // `read` checks the status, the origin's body and the time taken.
            s.read(path).await;
        }
        let reads: Vec<_> = (0..10)
            .map(|i| {
                let (client, addr) = (s.client.clone(), s.addr);
                tokio::spawn(async move { get_checked(&client, addr, &format!("/q/{i}")).await })
            })
            .collect();
        for read in reads {
            read.await.unwrap();
        }
        assert!(s.origin.calls() >= 2, "{what}");
    }
}

// ---- a pattern over a large keyspace -----------------------------------------------------

const BULK_KEYS: u64 = 200_000;
const KEPT_KEYS: u64 = 1_000;

/// Fill `count` hashes named `<prefix><i>` in one server-side loop per 50 000.
fn fill(server: &RedisServer, prefix: &str, count: u64) {
    const FILL: &str = r"
for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do
  redis.call('HSET', ARGV[3] .. i, '0000000000000000', 'x')
end
return 0";
    let mut connection = server.connection();
    for start in (0..count).step_by(50_000) {
        let end = (start + 50_000).min(count) - 1;
        let _: i64 = redis::cmd("EVAL")
            .arg(FILL)
            .arg(0)
            .arg(start)
            .arg(end)
            .arg(prefix)
            .query(&mut connection)
            .unwrap();
    }
}

fn max_and_p99(mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    (max, p99)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_invalidation_over_a_large_keyspace_does_not_stall_other_clients() {
    let s = relaxed_stack().await;
    let http_hit = s.warm("/hot").await;
    let started = Instant::now();
    fill(&s.server, "t:k:/bulk/", BULK_KEYS);
    fill(&s.server, "t:k:/keep/", KEPT_KEYS);
    let filled_in = started.elapsed();
    let dbsize: u64 = redis::cmd("DBSIZE")
        .query(&mut s.server.connection())
        .unwrap();
    assert!(dbsize >= BULK_KEYS + KEPT_KEYS, "{dbsize} keys");

    // Another client reading single keys as fast as it can, timing each read.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut connection = s.server.connection();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("t:k:/keep/{}", i % KEPT_KEYS);
                i += 1;
                let at = Instant::now();
                let value: Option<Vec<u8>> = redis::cmd("HGET")
                    .arg(&key)
                    .arg("0000000000000000")
                    .query(&mut connection)
                    .unwrap();
                samples.push((at, at.elapsed()));
                assert!(value.is_some(), "{key} is gone");
            }
            samples
        })
    };
    // And HTTP reads through the layer, which must stay Redis hits.
    let http = {
        let (client, addr, stop) = (s.client.clone(), s.addr, stop.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let at = Instant::now();
                let answer = get_checked(&client, addr, "/hot").await;
                latencies.push(at.elapsed());
                assert_eq!(answer.x_cache(), "HIT");
                assert!(!served_by_fallback(&answer));
            }
            latencies
        })
    };
    // A baseline first (a measurement window, not a wait for a condition).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let begin = Instant::now();
    let removed = s.handle.invalidate("/bulk/*").await.unwrap();
    let end = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = blocking(|| reader.join()).expect("reader thread");
    let http_latencies = http.await.expect("HTTP reader");

    let during: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at >= begin && *at < end)
        .map(|(_, took)| *took)
        .collect();
    let baseline: Vec<Duration> = samples
        .iter()
        .filter(|(at, _)| *at < begin)
        .map(|(_, took)| *took)
        .collect();
    let (max, p99) = max_and_p99(during.clone());
    let (base_max, base_p99) = max_and_p99(baseline);
    let (http_max, http_p99) = max_and_p99(http_latencies);
    eprintln!(
        "invalidate(\"/bulk/*\") over {BULK_KEYS} matching + {KEPT_KEYS} other keys \
         (filled in {filled_in:?}): removed {removed} in {:?}; concurrent HGETs during it: \
         {} reads, max {max:?}, p99 {p99:?} (before it: max {base_max:?}, p99 {base_p99:?}); \
         HTTP hits through the layer: max {http_max:?}, p99 {http_p99:?}",
        end - begin,
        during.len()
    );
    assert_eq!(removed, BULK_KEYS);
    assert!(
        during.len() >= 20,
        "too few reads overlapped the invalidation to tell: {}",
        during.len()
    );
    assert!(
        max < Duration::from_millis(50),
        "a concurrent read waited {max:?} during the invalidation"
    );
    assert!(s.server.keys("t:k:/bulk/*").is_empty());
    assert_eq!(s.server.keys("t:k:/keep/*").len() as u64, KEPT_KEYS);
    assert_eq!(s.read("/hot").await.body, http_hit.body);
}
