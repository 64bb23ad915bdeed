//! Redis failing under a real axum server: killed, paused, restarted with old data or empty,
//! down at start, and a pattern invalidation over a large keyspace. Through all of it no
//! request fails or waits much longer than the deadline, and no invalidated entry comes back.
//! Bad data and refusing Redis servers are in `bad_data.rs`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::stack::*;
use crate::support::{client, eventually, Answer, Origin};
use tower_response_cache::{Backend, CacheConfig};

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
    assert_eq!(
        s.handle.stats().circuit_openings,
        1,
        "one outage, one opening"
    );

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

/// A Redis restarted from an old snapshot while no request runs: the background calls
/// (the channel's resubscription and catch-up, near-cache heartbeats) meet the lost
/// connection first. Each of them counts, so the first request afterwards is not answered
/// from the resurrected entry, even with the probe far away.
///
/// The deadline is [`RELAXED`]: with the probe 30 s away nothing closes a circuit opened
/// before the restart, and at [`DEADLINE`] three near-cache heartbeats (every 25 ms) running
/// out of time on a loaded machine open it before the invalidation (or the check after it).
/// The restart is noticed from the lost connections, not from a deadline.
async fn restarted_while_idle(near: bool) {
    let server = RedisServer::start();
    let url = server.url();
    let mut s = Stack::start_with(
        server,
        &url,
        RELAXED,
        |r| {
            if near {
                r.near_cache(Duration::from_millis(100), 1 << 20)
            } else {
                r
            }
        },
        |b| b.probe_interval(Duration::from_secs(30)),
    )
    .await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    assert_eq!(s.handle.invalidate("/api/dashboard/*").await.unwrap(), 1);
    assert_eq!(s.handle.stats().circuit_openings, 0);

    blocking(|| s.server.restart());
    // Idle long enough for every background task to meet the restarted Redis.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        s.server.keys("t:k:*").len(),
        1,
        "premise: the snapshot brings the entry back"
    );
    let first = s.read("/api/dashboard/ABC").await;
    assert_ne!(
        first.body,
        old.body,
        "the first request after an idle restart read the resurrected entry ({}; {:?})",
        first.header("cache-status"),
        s.store
    );
    assert!(
        s.handle.stats().circuit_openings >= 1,
        "the restart was not counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_while_idle_is_not_read_before_the_replay() {
    restarted_while_idle(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_while_idle_is_not_read_before_the_replay_with_a_near_cache() {
    restarted_while_idle(true).await;
}

/// Positive control of the two above: with the probe near, the replay runs, the circuit
/// closes and Redis is read again, and the resurrected entry is gone from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_while_idle_is_read_again_after_the_replay() {
    let mut s = Stack::start(RedisServer::start(), |b| {
        b.probe_interval(Duration::from_millis(300))
    })
    .await;
    let old = s.warm("/api/dashboard/ABC").await;
    s.server.save();
    assert_eq!(s.handle.invalidate("/api/dashboard/*").await.unwrap(), 1);
    blocking(|| s.server.restart());
    let replayed = eventually(Duration::from_secs(5), || async {
        s.server.keys("t:k:*").is_empty() && s.backend() == Backend::Redis
    })
    .await;
    assert!(replayed, "no replay after the restart ({:?})", s.store);
    let fresh = s.read("/api/dashboard/ABC").await;
    assert_ne!(fresh.body, old.body);
    s.wait_stored_in_redis("/api/dashboard/ABC").await;
    s.warm("/api/dashboard/ABC").await;
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
    let handle = config.build().await.unwrap();
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
    let hit = eventually(Duration::from_secs(5), || async {
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
    let hit = eventually(Duration::from_secs(1), || async {
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

const BULK_KEYS: u64 = 200_000;
const KEPT_KEYS: u64 = 1_000;
/// Longer than any one command of a bulk invalidation may hold Redis.
const SLOW_COMMAND: Duration = Duration::from_millis(100);

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
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut s.server.connection())
        .unwrap();
    // Redis's own clock for how long one command held it: unlike the readers' latencies,
    // it does not count the time a busy machine leaves a reader unscheduled.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("slowlog-log-slower-than")
        .arg(SLOW_COMMAND.as_micros() as u64)
        .query(&mut s.server.connection())
        .unwrap();
    let _: () = redis::cmd("SLOWLOG")
        .arg("RESET")
        .query(&mut s.server.connection())
        .unwrap();
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
    // What Redis ran: `SCAN` in many small batches, never `KEYS`. (Deterministic, unlike
    // the timing below.)
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut s.server.connection())
        .unwrap();
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(calls("keys"), 0, "KEYS was used: {stats}");
    assert!(
        calls("scan") >= BULK_KEYS / 1000,
        "not scanned in batches of at most 1000: {stats}"
    );
    // No command held Redis long: a single command over the matching keys (`UNLINK` of
    // all of them at once) holds it for hundreds of milliseconds here.
    let slow: Vec<redis::Value> = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(10)
        .query(&mut s.server.connection())
        .unwrap();
    assert!(
        slow.is_empty(),
        "Redis ran commands over {SLOW_COMMAND:?} during the invalidation: {slow:?}"
    );
    // And no read waited long. The bound leaves room for a busy 2-core machine
    // descheduling the reader or Redis.
    assert!(
        max < Duration::from_millis(500),
        "a concurrent read waited {max:?} during the invalidation"
    );
    assert!(s.server.keys("t:k:/bulk/*").is_empty());
    assert_eq!(s.server.keys("t:k:/keep/*").len() as u64, KEPT_KEYS);
    assert_eq!(s.read("/hot").await.body, http_hit.body);
}
