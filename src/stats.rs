//! Counters a [`CacheHandle`](crate::CacheHandle) keeps, and the snapshot it reports.
//!
//! Each counter is also sent to the `metrics` facade (`tower_response_cache_*_total`), so an
//! installed recorder (Prometheus, StatsD) sees them without extra wiring. Every metric the
//! crate emits is listed in the crate docs' `# Metrics` section (checked by `tests/metrics.rs`).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::Backend;

/// A snapshot of what the cache has done. See [`CacheHandle::stats`](crate::CacheHandle::stats).
/// New counters may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests (and typed reads) answered from the cache.
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Entries written to the store.
    pub stores: u64,
    /// Entries removed to stay within the memory budget (or a URL's `Vary` variant cap).
    pub evictions: u64,
    /// Entries removed from memory because they expired (past any stale window).
    pub expirations: u64,
    /// Entries removed from memory by invalidations (patterns, tags, namespaces, clears).
    pub invalidated: u64,
    /// Writes a store did not keep: too large for its budget (Redis: over
    /// `max_value_bytes`), or refused by a memory store's (or near cache's) admission
    /// policy in favour of entries requested more often.
    pub admissions_refused: u64,
    /// Answers served from an expired entry (stale-while-revalidate or stale-if-error).
    pub stale: u64,
    /// Requests that went around the cache (method, credentials, `no-store`).
    pub bypasses: u64,
    /// Misses that waited for another request's response instead of reaching the origin.
    pub coalesced: u64,
    /// Misses that waited for another process's fetch (fleet-wide single flight) and were
    /// answered from its entry.
    pub fleet_followers: u64,
    /// Times a process waiting for another's fetch took the flight over (the leader's lease
    /// ran out, or it ended without an entry) and fetched itself.
    pub fleet_takeovers: u64,
    /// Times a process waited the whole coalesce timeout for another's fetch and then
    /// fetched itself.
    pub fleet_timeouts: u64,
    /// Calls to `invalidate`, `invalidate_soft`, `invalidate_tag` and `invalidate_all`, and
    /// invalidations by unsafe methods.
    pub invalidations: u64,
    /// Store operations that failed (each logged; none failed a request).
    pub store_errors: u64,
    /// Entries held now, where the store can tell.
    pub entries: u64,
    /// Bytes held now, where the store can tell.
    pub bytes: u64,
    /// Times the cache fell back from Redis to memory (a fallback store's circuit opened).
    pub circuit_openings: u64,
    /// Lookups answered by the near cache in front of Redis, with no Redis call.
    pub l1_hits: u64,
    /// Redis reads that found an entry (counted with the near cache on).
    pub redis_hits: u64,
    /// Times the near cache's lease lapsed (reads went to Redis until a heartbeat renewed it).
    pub lease_lapses: u64,
    /// Redis reads that found no room in the store's reply budget in time and read as
    /// misses (see `RedisStoreBuilder::reply_budget`).
    pub reply_budget_full: u64,
    /// Which backend is serving.
    pub backend: Backend,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) stale: Counter,
    pub(crate) stores: Counter,
    pub(crate) bypasses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) fleet_followers: Counter,
    pub(crate) fleet_takeovers: Counter,
    pub(crate) fleet_timeouts: Counter,
    pub(crate) invalidations: Counter,
    pub(crate) store_errors: Counter,
}

/// One relaxed atomic counter, mirrored to `metrics`.
#[derive(Debug, Default)]
pub(crate) struct Counter(pub(crate) AtomicU64);

impl Counter {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

macro_rules! bump {
    ($counters:expr, $name:ident) => {{
        $counters
            .$name
            .0
            .fetch_add(1, ::std::sync::atomic::Ordering::Relaxed);
        // A static key is hashed at compile time (the `counter!` macro hashes a `concat!`
        // name on every call), and the recorder is asked each time, so one installed after
        // the handle was built still sees every count.
        static KEY: ::metrics::Key = ::metrics::Key::from_static_name(concat!(
            "tower_response_cache_",
            stringify!($name),
            "_total"
        ));
        static METADATA: ::metrics::Metadata<'static> = ::metrics::Metadata::new(
            module_path!(),
            ::metrics::Level::INFO,
            ::core::option::Option::Some(module_path!()),
        );
        ::metrics::with_recorder(|recorder| recorder.register_counter(&KEY, &METADATA))
            .increment(1);
    }};
}
pub(crate) use bump;

/// What one request (or typed read) came to: counted once, by the adapter that answered it,
/// through [`Engine::count`](crate::engine::state::Engine::count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered from a fresh entry.
    Hit,
    /// Found nothing usable: answered by the origin (or a `504` for `only-if-cached`).
    Miss,
    /// Answered from an expired entry (stale-while-revalidate, stale-if-error, `max-stale`).
    Stale,
    /// Sent around the cache.
    Bypass,
}

impl Counters {
    /// Count one request's outcome.
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Hit => bump!(self, hits),
            Outcome::Miss => bump!(self, misses),
            Outcome::Stale => bump!(self, stale),
            Outcome::Bypass => bump!(self, bypasses),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder};
    use metrics::{SharedString, Unit};

    use super::Counters;

    /// Counts what reaches the `metrics` facade, by name.
    #[derive(Default)]
    struct Seen(Mutex<HashMap<String, Arc<Count>>>);

    #[derive(Default)]
    struct Count(AtomicU64);

    impl CounterFn for Count {
        fn increment(&self, value: u64) {
            self.0.fetch_add(value, Ordering::Relaxed);
        }
        fn absolute(&self, value: u64) {
            self.0.store(value, Ordering::Relaxed);
        }
    }

    impl Recorder for Seen {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            let mut seen = self.0.lock().unwrap();
            Counter::from_arc(seen.entry(key.name().to_owned()).or_default().clone())
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn every_count_reaches_the_metrics_recorder_installed_at_the_time() {
        let counters = Counters::default();
        // Before any recorder: counted here, seen by nobody.
        bump!(counters, hits);
        let seen = Seen::default();
        metrics::with_local_recorder(&seen, || {
            bump!(counters, hits);
            bump!(counters, hits);
            bump!(counters, misses);
        });
        assert_eq!(counters.hits.get(), 3);
        let seen = seen.0.lock().unwrap();
        let count = |name: &str| seen.get(name).map_or(0, |c| c.0.load(Ordering::Relaxed));
        assert_eq!(count("tower_response_cache_hits_total"), 2);
        assert_eq!(count("tower_response_cache_misses_total"), 1);
    }
}
