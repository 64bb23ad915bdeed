//! [`CacheHandleBuilder`]: a handle's settings, and the listener that makes other
//! processes' invalidations ban this process's in-flight fetches.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{CacheHandle, Engine, Shared};
use crate::config_error::ConfigError;
use crate::engine::ban::{Ban, BanLog};
use crate::engine::coalesce::Coalescer;
use crate::engine::fill::Budget;
use crate::pattern::Pattern;
use crate::stats::Counters;
use crate::store::MAX_NAMESPACE;
use crate::store::{Invalidation, Store, StoreEvent};

/// Builds a [`CacheHandle`].
#[must_use]
pub struct CacheHandleBuilder {
    store: Arc<dyn Store>,
    namespace: String,
    ttl: Duration,
    coalesce_timeout: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    hit_for_miss_ttl: Duration,
    fill_budget: usize,
}

impl CacheHandleBuilder {
    /// Prefix of every key, so several applications can share one store (default `"cache"`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// How long entries stay fresh when the response says nothing (default one hour).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a miss waits for another request fetching the same key (default 10 s);
    /// after that it goes to the origin itself.
    pub fn coalesce_timeout(mut self, timeout: Duration) -> Self {
        self.coalesce_timeout = timeout;
        self
    }

    /// Serve an expired entry for this long while one background request refreshes it
    /// (RFC 5861 `stale-while-revalidate`; default 0: never). A response's own
    /// `Cache-Control: stale-while-revalidate=N` wins.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// Serve an expired entry for this long when the origin fails (5xx, an error, or the
    /// policy's origin timeout; RFC 5861 `stale-if-error`; default 0: never).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// After a response for a key could not be stored, let misses of that key go to the
    /// origin without waiting for each other for this long (Varnish's hit-for-miss;
    /// default 10 s; at most a day, so no setting overflows the clock).
    pub fn hit_for_miss_ttl(mut self, ttl: Duration) -> Self {
        self.hit_for_miss_ttl = ttl.min(Duration::from_secs(86_400));
        self
    }

    /// Bytes all misses being recorded may hold together (default 64 MiB), on top of the
    /// store's own budget. Past it a miss streams on to its clients unrecorded.
    pub fn fill_budget(mut self, bytes: usize) -> Self {
        self.fill_budget = bytes;
        self
    }

    /// Build the handle.
    ///
    /// # Panics
    /// When a setting cannot be used: see [`try_build`](Self::try_build).
    pub fn build(self) -> CacheHandle {
        self.try_build().unwrap_or_else(|error| panic!("{error}"))
    }

    /// Build the handle, or say which setting cannot be used: the namespace must be 1 to
    /// 4096 bytes (a longer one is not carried by the invalidation channel).
    pub fn try_build(self) -> Result<CacheHandle, ConfigError> {
        check_namespace(&self.namespace)?;
        let handle = CacheHandle {
            engine: Engine::new(Shared {
                store: self.store,
                namespace: self.namespace.into_boxed_str(),
                ttl: self.ttl,
                coalesce_timeout: self.coalesce_timeout,
                stale_while_revalidate: self.stale_while_revalidate,
                stale_if_error: self.stale_if_error,
                hit_for_miss_ttl: self.hit_for_miss_ttl,
                bans: BanLog::default(),
                flights: Arc::new(Coalescer::default()),
                fill_budget: Arc::new(Budget::new(self.fill_budget)),
                hit_for_miss: dashmap::DashMap::new(),
                hit_for_miss_seed: ahash::RandomState::new(),
                counters: Counters::default(),
            }),
        };
        // Invalidations made by other processes ban in-flight fetches here too.
        let Some(coordination) = handle.shared().store.coordination() else {
            return Ok(handle);
        };
        let weak = handle.engine().downgrade();
        coordination.set_listener(Arc::new(move |event| {
            let Some(shared) = weak.upgrade() else { return };
            let Some(coordination) = shared.store.coordination() else {
                return;
            };
            // Requests arriving from now on must not read a fetch from before it. The message
            // may arrive after fetches that began after the invalidation: those stay.
            match event {
                StoreEvent::Remote {
                    namespace,
                    invalidation,
                    generation,
                    ..
                } if **namespace == *shared.namespace => {
                    let before = |token| coordination.fetched_before(token, *generation);
                    match invalidation {
                        Invalidation::Pattern(p) => {
                            let pattern = Pattern::new(p);
                            let matches = |key: &str| pattern.matches_str(key);
                            shared.flights.forget_fetched_before(matches, before);
                        }
                        // A flight's tags are known only with its response.
                        Invalidation::Tag(_) | Invalidation::All => {
                            shared.flights.forget_fetched_before(|_| true, before);
                        }
                    }
                }
                StoreEvent::Remote { .. } => {}
                // Missed messages, of unknown generations: every flight may predate one.
                StoreEvent::ChannelLost => shared.flights.forget(|_| true),
            }
            match event {
                // The store refuses such writes itself, more precisely (see
                // `Store::checks_remote_invalidations`).
                StoreEvent::Remote { .. } if coordination.checks_remote_invalidations() => {}
                StoreEvent::Remote {
                    namespace,
                    invalidation,
                    ..
                } if **namespace == *shared.namespace => match invalidation {
                    Invalidation::Pattern(p) => shared.bans.record(Ban::Pattern(&Pattern::new(p))),
                    Invalidation::Tag(t) => shared.bans.record(Ban::Tag(t)),
                    Invalidation::All => shared.bans.record(Ban::All),
                },
                StoreEvent::Remote { .. } => {}
                StoreEvent::ChannelLost => shared.bans.record(Ban::All),
            }
        }));
        Ok(handle)
    }
}

pub(crate) fn check_namespace(namespace: &str) -> Result<(), ConfigError> {
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE {
        let shown: String = namespace.chars().take(64).collect();
        return Err(ConfigError::invalid(
            "CACHE_NAMESPACE",
            shown,
            "1 to 4096 bytes",
        ));
    }
    Ok(())
}

impl CacheHandle {
    /// A builder over `store`, with namespace `"cache"` and a one-hour TTL.
    pub fn builder(store: impl Store) -> CacheHandleBuilder {
        CacheHandleBuilder {
            store: Arc::new(store),
            namespace: "cache".to_owned(),
            ttl: Duration::from_secs(3600),
            coalesce_timeout: Duration::from_secs(10),
            fill_budget: 64 << 20,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            hit_for_miss_ttl: Duration::from_secs(10),
        }
    }

    /// A handle on a fresh [`MemoryStore`](crate::MemoryStore) with the defaults.
    pub fn in_memory() -> CacheHandle {
        Self::builder(crate::store::MemoryStore::new()).build()
    }
}

impl fmt::Debug for CacheHandleBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandleBuilder")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish()
    }
}
