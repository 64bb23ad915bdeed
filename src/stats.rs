//! Counters a [`CacheHandle`](crate::CacheHandle) keeps, and the snapshot it reports.
//!
//! Each counter is also sent to the `metrics` facade (`tower_response_cache_*_total`), so an
//! installed recorder (Prometheus, StatsD) sees them without extra wiring.

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
    /// Entries removed to stay within the memory budget.
    pub evictions: u64,
    /// Answers served from an expired entry (stale-while-revalidate or stale-if-error).
    pub stale: u64,
    /// Requests that went around the cache (method, credentials, `no-store`).
    pub bypasses: u64,
    /// Misses that waited for another request's response instead of reaching the origin.
    pub coalesced: u64,
    /// Calls to `invalidate`, `invalidate_tag` and `invalidate_all`, and invalidations by
    /// unsafe methods.
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
        ::metrics::counter!(concat!(
            "tower_response_cache_",
            stringify!($name),
            "_total"
        ))
        .increment(1);
    }};
}
pub(crate) use bump;
