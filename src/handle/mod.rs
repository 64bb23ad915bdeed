//! [`CacheHandle`]: the application's side of the cache.
//!
//! A handle is the application's façade over the engine's state (`engine/state.rs`: the
//! store, the namespace, the default TTL, bans, flights): invalidation, typed reads,
//! stats. It is cheap to clone (an `Arc` inside) and every method takes `&self`, so the
//! web layer, the data-access code and the sync pipeline can each hold one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_response_cache::CacheError> {
//! use std::time::{Duration, Instant};
//! use tower_response_cache::{CacheHandle, MemoryStore};
//!
//! let cache = CacheHandle::builder(MemoryStore::new())
//!     .namespace("portal")
//!     .ttl(Duration::from_secs(3600))
//!     .build();
//!
//! // Data-level caching, coalesced like HTTP misses: the closure runs once.
//! let companies: Vec<String> = cache
//!     .get_or_insert_with("companies_all_synced", async { vec!["ACME".to_string()] })
//!     .await;
//! assert_eq!(companies, ["ACME"]);
//!
//! // After a sync: drop the list and every dashboard of company ABC.
//! cache.invalidate("companies_all_synced").await?;
//! cache.invalidate("dashboard:ABC*").await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{Duration, Instant};

use crate::engine::invalidate::Scope;
use crate::engine::state::{Engine, Shared};
use crate::pattern::Pattern;
use crate::stats::{bump, CacheStats};
use crate::store::{Backend, Store, StoreError};

mod builder;

pub(crate) use builder::check_namespace;
pub use builder::CacheHandleBuilder;

/// The application's handle on a cache: cheap to clone (an `Arc` inside), every method
/// takes `&self`.
#[derive(Clone)]
pub struct CacheHandle {
    engine: Engine,
}

/// An invalidation did not reach the store. The local part of it still applied: no
/// response fetched before the call will be stored by this process afterwards.
#[derive(Debug)]
pub struct CacheError {
    operation: &'static str,
    source: StoreError,
}

impl fmt::Display for CacheError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cache {} failed", self.operation)
    }
}

impl CacheError {
    /// The store's error.
    pub fn store_error(&self) -> &StoreError {
        &self.source
    }

    /// The invalidation applied on the Redis primary, but not enough replicas acknowledged
    /// it in time (see [`StoreError::not_replicated`]).
    pub fn is_not_replicated(&self) -> bool {
        self.source.is_not_replicated()
    }
}

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl CacheHandle {
    /// The namespace every key is stored under.
    pub fn namespace(&self) -> &str {
        self.engine.namespace()
    }

    /// The default TTL.
    pub fn ttl(&self) -> Duration {
        self.shared().ttl
    }

    /// Which backend is serving now.
    pub fn backend(&self) -> Backend {
        self.engine.backend()
    }

    /// Remove every entry whose logical key matches `pattern`, a Redis-style glob anchored
    /// at both ends (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\` escapes). A pattern without glob
    /// characters removes exactly that key, in O(1). Returns how many entries were removed.
    ///
    /// When this returns, no request that began before the call will store a response for
    /// a matching key, and no matching entry stored before the call is served.
    ///
    /// A literal key longer than 512 bytes reaches the key it was stored under (which keeps
    /// its first 256 bytes and a hash of the whole); a glob matches stored keys as they are,
    /// so past the kept prefix it sees `~` and 32 hex digits.
    pub async fn invalidate(&self, pattern: &str) -> Result<u64, CacheError> {
        let pattern = bounded_pattern(Pattern::new(pattern));
        self.invalidate_matching(&pattern).await
    }

    pub(crate) async fn invalidate_matching(&self, pattern: &Pattern) -> Result<u64, CacheError> {
        self.invalidating("invalidate", Scope::Pattern(pattern))
            .await
    }

    /// Mark entries whose logical key matches `pattern` stale instead of removing them:
    /// they are served under their stale-while-revalidate window while one request refreshes
    /// them (for pipelines that prefer a fast page over a fresh one for a few seconds).
    /// Entries without such a window are removed (in Redis: read as expired). Responses
    /// fetched before the call are not stored after it, as with
    /// [`invalidate`](Self::invalidate). The memory store marks in place; Redis marks the
    /// entry hashes, so every instance sharing it sees the mark; while Redis is unreachable a
    /// soft invalidation is a hard one (queued and replayed as one: the safe side).
    pub async fn invalidate_soft(&self, pattern: &str) -> Result<u64, CacheError> {
        let pattern = bounded_pattern(Pattern::new(pattern));
        self.invalidating("invalidate_soft", Scope::Soft(&pattern))
            .await
    }

    /// Remove every entry whose response named `tag` in its `Cache-Tag` header.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        self.invalidating("invalidate_tag", Scope::Tag(tag)).await
    }

    /// Remove every entry in this handle's namespace.
    pub async fn invalidate_all(&self) -> Result<u64, CacheError> {
        self.invalidating("invalidate_all", Scope::All).await
    }

    /// Run the engine's invalidation of `scope`, timed and reported as `operation`.
    async fn invalidating(
        &self,
        operation: &'static str,
        scope: Scope<'_>,
    ) -> Result<u64, CacheError> {
        let started = Instant::now();
        let result = self.engine.invalidate(scope).await;
        self.report(operation, started, result)
    }

    /// Time the call (`tower_response_cache_invalidation_seconds`, by operation), count a
    /// failure, and say which operation failed.
    fn report<T>(
        &self,
        operation: &'static str,
        started: Instant,
        result: Result<T, StoreError>,
    ) -> Result<T, CacheError> {
        metrics::histogram!("tower_response_cache_invalidation_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result.map_err(|source| {
            bump!(self.shared().counters, store_errors);
            tracing::warn!(operation, error = %source, "cache invalidation did not reach the store");
            CacheError { operation, source }
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared().counters;
        let store = self.shared().store.stats();
        CacheStats {
            hits: c.hits.get(),
            misses: c.misses.get(),
            stale: c.stale.get(),
            stores: c.stores.get(),
            evictions: store.evictions,
            expirations: store.expirations,
            invalidated: store.invalidated,
            admissions_refused: store.admissions_refused,
            bypasses: c.bypasses.get(),
            coalesced: c.coalesced.get(),
            fleet_followers: c.fleet_followers.get(),
            fleet_takeovers: c.fleet_takeovers.get(),
            fleet_timeouts: c.fleet_timeouts.get(),
            invalidations: c.invalidations.get(),
            store_errors: c.store_errors.get(),
            entries: store.entries,
            bytes: store.bytes,
            circuit_openings: store.circuit_openings,
            l1_hits: store.l1_hits,
            redis_hits: store.redis_hits,
            lease_lapses: store.lease_lapses,
            reply_budget_full: store.reply_budget_full,
            backend: self.engine.backend(),
        }
    }

    /// Set the gauges `tower_response_cache_entries`, `tower_response_cache_bytes` and
    /// `tower_response_cache_backend{backend}` (1 for the backend serving, 0 for the
    /// others), each labelled with the namespace, from a fresh [`stats`](Self::stats), and
    /// return that snapshot. Counters and histograms reach the `metrics` recorder as things
    /// happen; these describe a state, so call this where metrics are read, e.g. before
    /// rendering a Prometheus scrape.
    pub fn record_gauges(&self) -> CacheStats {
        let stats = self.stats();
        let namespace = self.shared().namespace.to_string();
        metrics::gauge!("tower_response_cache_entries", "namespace" => namespace.clone())
            .set(stats.entries as f64);
        metrics::gauge!("tower_response_cache_bytes", "namespace" => namespace.clone())
            .set(stats.bytes as f64);
        for backend in [Backend::Memory, Backend::Redis, Backend::FallingBack] {
            let labels = [
                ("namespace", namespace.clone()),
                ("backend", backend.as_str().to_owned()),
            ];
            metrics::gauge!("tower_response_cache_backend", &labels)
                .set(f64::from(u8::from(backend == stats.backend)));
        }
        stats
    }

    pub(crate) fn shared(&self) -> &Shared {
        self.engine.shared()
    }

    /// The engine this handle is the façade of: what the adapters drive.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }
}

/// A literal pattern as long keys are stored (bounded), so it reaches its key.
fn bounded_pattern(pattern: Pattern) -> Pattern {
    match pattern.literal() {
        Some(literal) if literal.len() > crate::key::MAX_LOGICAL_KEY_LEN => {
            let stored = crate::key::bound(literal.into());
            Pattern::new(&crate::pattern::escape(&stored))
        }
        _ => pattern,
    }
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("namespace", &self.shared().namespace)
            .field("ttl", &self.shared().ttl)
            .field("backend", &self.backend())
            .finish()
    }
}

/// A handle on a fresh memory store, namespace `t`, for unit tests.
#[cfg(test)]
pub(crate) fn test_handle() -> CacheHandle {
    CacheHandle::builder(crate::store::MemoryStore::new())
        .namespace("t")
        .build()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::test_handle as handle;

    #[tokio::test]
    async fn a_literal_invalidation_reaches_a_key_stored_shortened() {
        let handle = handle();
        let long = format!("/search/{}", "q".repeat(2000));
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            1u32
        };
        handle.get_or_insert_with(&long, load()).await;
        handle.get_or_insert_with(&long, load()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(handle.invalidate(&long).await.unwrap(), 1);
        handle.get_or_insert_with(&long, load()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A glob over the kept prefix reaches it too.
        assert_eq!(handle.invalidate("/search/qqq*").await.unwrap(), 1);
    }
}
