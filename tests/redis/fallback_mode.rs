//! A process cut off from Redis while another process, still connected, invalidates: what
//! the cut-off one answers depends on its `FallbackMode`. Under `bypass` it never answers
//! from the cache (every request reaches the origin, no request fails); under `serve` (the
//! positive control) it answers from memory what the other process invalidated, for at
//! most the fallback TTL.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::{Partition, RedisServer};
use crate::support::stack::*;
use crate::support::{eventually, Answer};
use tower_response_cache::{Backend, CacheConfig, CacheHandle, FallbackMode, RedisStore};

const PATH: &str = "/api/dashboard/ABC";

/// A server instance reaching Redis through a [`Partition`] (behind a generous deadline:
/// only the cut opens its circuit), and a sync process reaching Redis directly.
async fn cut_off(mode: FallbackMode, fallback_ttl: Duration) -> (Stack, Partition, CacheHandle) {
    let server = RedisServer::start();
    let partition = Partition::start(&server).await;
    let sync = CacheHandle::builder(RedisStore::builder(server.url()).build().unwrap())
        .namespace("t")
        .build();
    let url = partition.url();
    let stack = Stack::start_at(server, &url, RELAXED, |b| {
        b.mode(mode).fallback_ttl(fallback_ttl)
    })
    .await;
    assert_eq!(stack.store.mode(), mode);
    (stack, partition, sync)
}

/// Cut `s` off and wait until it falls back.
async fn cut(s: &Stack, partition: &Partition) {
    partition.cut();
    s.wait_for_backend(
        Backend::FallingBack,
        Duration::from_secs(5),
        "after the cut",
    )
    .await;
}

/// An answer that came from the origin during this very request: a miss whose body is the
/// origin's latest.
fn fresh_from_origin(s: &Stack, answer: &Answer, before: usize) {
    assert_eq!(
        answer.x_cache(),
        "MISS",
        "answered from the cache while bypassing ({})",
        answer.header("cache-status")
    );
    assert_eq!(s.origin.calls(), before + 1, "the origin was not asked");
    assert_eq!(answer.text(), format!("{PATH} #{}", before + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_process_that_bypasses_never_serves_what_another_process_invalidated() {
    let (s, partition, sync) = cut_off(FallbackMode::Bypass, Duration::from_secs(30)).await;
    let old = s.warm(PATH).await;
    cut(&s, &partition).await;

    // Neither the Redis entry nor anything written now is read back.
    for _ in 0..3 {
        let before = s.origin.calls();
        let answer = s.read(PATH).await;
        fresh_from_origin(&s, &answer, before);
        assert!(
            served_by_fallback(&answer),
            "{}",
            answer.header("cache-status")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.handle.stats().entries,
        0,
        "stored in memory while bypassing"
    );

    // Another process invalidates through Redis; this one cannot hear it.
    sync.invalidate(PATH).await.unwrap();
    for _ in 0..3 {
        let before = s.origin.calls();
        let answer = s.read(PATH).await;
        fresh_from_origin(&s, &answer, before);
        assert_ne!(answer.body, old.body);
    }

    // Positive control: the cache caches again once Redis is back.
    partition.heal();
    s.wait_for_backend(Backend::Redis, Duration::from_secs(10), "after healing")
        .await;
    let hit = s.warm(PATH).await;
    assert_ne!(hit.body, old.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_process_that_serves_from_memory_serves_the_invalidated_entry_within_the_fallback_ttl(
) {
    let ttl = Duration::from_secs(2);
    let (s, partition, sync) = cut_off(FallbackMode::Serve, ttl).await;
    s.warm(PATH).await;
    cut(&s, &partition).await;

    let first = s.read(PATH).await;
    assert_eq!(
        first.x_cache(),
        "MISS",
        "the Redis entry is not read while cut off"
    );
    let stored_at = Instant::now();
    let hit = eventually(Duration::from_secs(1), || async {
        let answer = s.read(PATH).await;
        (answer.x_cache() == "HIT").then_some(answer)
    })
    .await
    .expect("served from the memory fallback");
    assert!(served_by_fallback(&hit));
    assert_eq!(hit.body, first.body);

    sync.invalidate(PATH).await.unwrap();
    // Bounded staleness: the invalidated entry is still served here...
    let stale = s.read(PATH).await;
    assert_eq!(stale.x_cache(), "HIT");
    assert_eq!(
        stale.body, first.body,
        "served what another process invalidated"
    );
    // ...but never past the fallback TTL.
    let gone = eventually(Duration::from_secs(5), || async {
        let answer = s.read(PATH).await;
        (answer.body != first.body).then_some(answer)
    })
    .await
    .expect("the stale entry outlived the fallback TTL");
    assert!(
        stored_at.elapsed() >= ttl - Duration::from_millis(100),
        "expired early: {:?} ({})",
        stored_at.elapsed(),
        gone.header("cache-status")
    );
}

/// `CACHE_FALLBACK_MODE` reaches the store `CacheConfig::build` makes: with Redis down at
/// start, `bypass` runs the loader on every read and `serve` once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_mode_is_read_from_the_environment() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{closed_port}/0");
    for (mode, loads) in [("bypass", 3), ("serve", 1), ("", 1)] {
        let vars = [
            ("REDIS_ENABLED", "true"),
            ("REDIS_URL", url.as_str()),
            ("CACHE_FALLBACK_MODE", mode),
        ];
        let config = CacheConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
        .unwrap();
        let cache = config.build().await.unwrap();
        assert_eq!(cache.backend(), Backend::FallingBack);
        let calls = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let calls = calls.clone();
            let value: u32 = cache
                .get_or_insert_with("companies_all_synced", async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    7
                })
                .await;
            assert_eq!(value, 7);
            // A write is applied off the caller's path.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            loads,
            "CACHE_FALLBACK_MODE={mode:?}"
        );
    }
}

/// A bypassing stack behind a partition whose probe ticks only every 30 s, with `PATH`
/// stored in Redis; the pattern of its Redis keys.
async fn bypassing_with_a_slow_probe() -> (Stack, Partition, String) {
    let server = RedisServer::start();
    let partition = Partition::start(&server).await;
    let url = partition.url();
    let s = Stack::start_at(server, &url, RELAXED, |b| {
        b.mode(FallbackMode::Bypass)
            .probe_interval(Duration::from_secs(30))
    })
    .await;
    s.warm(PATH).await;
    let key = format!("t:k:{PATH}*");
    assert!(!s.server.keys(&key).is_empty(), "nothing stored in Redis");
    (s, partition, key)
}

/// An invalidation made while this process is cut off reaches Redis as soon as Redis
/// answers this process again, not at the probe's next tick: meanwhile other processes,
/// back on Redis already, would read what it covers. The probe here ticks every 30 s, so
/// only the invalidation itself can wake it within the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_queued_while_cut_off_reaches_redis_once_it_answers_without_waiting_for_the_probe(
) {
    let (s, partition, key) = bypassing_with_a_slow_probe().await;

    cut(&s, &partition).await;
    partition.heal();
    // Redis answers again, but nothing has told this process yet.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.backend(), Backend::FallingBack);

    let started = Instant::now();
    let result = s.handle.invalidate(PATH).await;
    assert!(result.is_err(), "reported as reaching Redis while cut off");
    let gone = eventually(Duration::from_secs(3), || async {
        s.server.keys(&key).is_empty()
    })
    .await;
    assert!(
        gone,
        "the invalidation had not reached Redis {:?} after it was made",
        started.elapsed()
    );
    s.wait_for_backend(Backend::Redis, Duration::from_secs(3), "after the replay")
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "waited for the probe's tick"
    );
}

/// An invalidation made while Redis is still out of reach (the probe it wakes fails too)
/// reaches Redis soon after Redis answers again, not at the probe's next tick: the probe
/// tries every 50 ms while invalidations wait. The probe here ticks every 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_queued_while_redis_is_out_of_reach_reaches_it_soon_after_it_answers() {
    let (s, partition, key) = bypassing_with_a_slow_probe().await;

    cut(&s, &partition).await;
    let result = s.handle.invalidate(PATH).await;
    assert!(result.is_err(), "reported as reaching Redis while cut off");
    // The probe the invalidation woke has failed by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !s.server.keys(&key).is_empty(),
        "reached Redis while cut off"
    );

    partition.heal();
    let healed = Instant::now();
    let gone = eventually(Duration::from_secs(3), || async {
        s.server.keys(&key).is_empty()
    })
    .await;
    assert!(
        gone,
        "the invalidation had not reached Redis {:?} after it answered again",
        healed.elapsed()
    );
    s.wait_for_backend(Backend::Redis, Duration::from_secs(3), "after the replay")
        .await;
}
