//! Where entries live: the [`Store`] trait and its implementations.
//!
//! [`MemoryStore`] keeps entries in process memory within a byte budget. With the `redis`
//! feature, `RedisStore` keeps them in Redis and `FallbackStore` combines a primary store
//! (Redis, or any `Primary`) with a memory fallback.
//!
//! Keys are laid out as namespace, logical key, then variant, so that one invalidation of a
//! logical key removes every variant of it (every query string, host and `Vary` value).
//!
//! ```
//! use tower_response_cache::{MemoryStore, Store};
//!
//! let store = MemoryStore::builder().max_bytes(64 << 20).build();
//! assert_eq!(store.stats().entries, 0);
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::entry::Entry;
use crate::pattern::Pattern;

/// The longest namespace a handle takes: other processes' invalidation messages name
/// theirs, and a longer one is not read.
pub(crate) const MAX_NAMESPACE: usize = 4096;

#[cfg(feature = "redis")]
mod background;
mod coordination;
#[cfg(feature = "redis")]
mod fallback;
mod memory;
pub(crate) mod policy;
#[cfg(feature = "redis")]
mod primary;
#[cfg(feature = "redis")]
mod recent_invalidations;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, RedisStoreBuilder};
pub use coordination::{Coordination, FleetEnd, FleetLease, FleetTurn, VariantRead};
#[cfg(feature = "redis")]
pub use fallback::{FallbackStore, FallbackStoreBuilder};
pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use primary::{OutcomeSink, Primary};

/// The future a [`Store`] method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Every entry stored under one namespace, logical key and variant: one per distinct set
/// of values of the request headers the response's `Vary` names.
pub type Variants = Arc<[Arc<Entry>]>;

/// Where one entry is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreKey<'a> {
    /// Keeps several applications apart in one store.
    pub namespace: &'a str,
    /// What invalidation patterns match: the path, or what a key function returned.
    pub logical: &'a str,
    /// Hash of what else selects the response: host, query and keyed headers.
    pub variant: u64,
}

/// A place to keep cached entries: what a store of one's own implements.
///
/// Implementations must be cheap to share (`Arc` inside) and must never panic on bad data:
/// bytes that do not decode are a miss. Errors are logged by the caller and never fail a
/// request.
///
/// Ban semantics rely on one rule for stores that apply writes locally: the write is applied
/// when `put` is *called* (before the future is polled). The caller holds its invalidation
/// lock only for that call, so an invalidation either sees the write or bans it. A store
/// shared by several processes needs more than that (write tokens checked by the store,
/// other processes' invalidations heard): that protocol is [`Coordination`], which only the
/// built-in stores implement.
pub trait Store: Send + Sync + 'static {
    /// Every variant stored under `key`, fresh or not; `None` when there is none.
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>>;

    /// Store `entry` under `key`, replacing the entry with the same `Vary` values.
    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>) -> StoreFuture<'a, ()>;

    /// Remove every entry whose logical key in `namespace` matches `pattern`; returns how
    /// many entries were removed (as far as the store can tell).
    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64>;

    /// Mark entries matching `pattern` stale instead of removing them: they are served under
    /// their stale-while-revalidate window while one request refreshes them, and removed
    /// when they have none. Stores that cannot rewrite entries in place remove them (the
    /// default), which is always safe: hard invalidation beats soft.
    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        self.invalidate(namespace, pattern)
    }

    /// Remove every entry in `namespace` carrying `tag`.
    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64>;

    /// Remove every entry in `namespace`.
    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64>;

    /// Which backend is serving now (default: memory).
    fn backend(&self) -> Backend {
        Backend::Memory
    }

    /// Counters the store keeps itself (default: none).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// How a built-in store coordinates with the handle; `None` (the default) for every
    /// other store.
    #[doc(hidden)]
    fn coordination(&self) -> Option<&dyn Coordination> {
        None
    }
}

/// An invalidation, as sent between processes sharing a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Invalidation {
    /// Logical keys matching a glob.
    Pattern(String),
    /// Entries carrying a tag.
    Tag(String),
    /// Every entry of the namespace.
    All,
}

/// What a shared store tells the handle about other processes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreEvent {
    /// Another process invalidated in `namespace`.
    #[non_exhaustive]
    Remote {
        /// The namespace the invalidation applies to.
        namespace: String,
        /// What was invalidated.
        invalidation: Invalidation,
        /// The generation the invalidation drew, as its message claims: a fetch whose
        /// write token is from that generation on began after it (see
        /// [`Coordination::fetched_before`]). Only a claim, and harmless as one: a low
        /// claim spares fetches from a forged invalidation, a high one discards fetches.
        generation: u64,
    },
    /// The channel invalidations arrive on was lost and re-established: some may have been
    /// missed, so anything fetched before now is suspect.
    ChannelLost,
}

/// Called with [`StoreEvent`]s (see [`Coordination::set_listener`]).
pub type InvalidationListener = Arc<dyn Fn(&StoreEvent) + Send + Sync>;

/// Where a read was answered from: `Cache-Status` says so (`detail=l1` for the near cache,
/// `fallback` for the memory fallback), and nobody asks the store again afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// The memory store.
    Memory,
    /// The near cache (L1) in front of Redis: no Redis call.
    Near,
    /// Redis.
    Redis,
    /// The memory fallback, while Redis is unreachable.
    Fallback,
    /// A store of one's own (one without [`Coordination`]).
    Store,
}

/// Which backend a store is serving from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backend {
    /// Process memory only.
    Memory,
    /// Redis, healthy.
    Redis,
    /// Redis is configured but unreachable: serving from memory until it answers again.
    FallingBack,
}

impl Backend {
    /// Lower-case name, as shown in logs, `/health` and `Cache-Status` details.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::FallingBack => "falling_back",
        }
    }
}

/// What a fallback store does while Redis is unreachable (its circuit is open).
///
/// A process cut off from Redis cannot hear other processes' invalidations. It either keeps
/// caching in its own memory, accepting that what another process invalidates meanwhile
/// may be served here for a while, or it stops caching, accepting that every request
/// reaches the origin until Redis answers again. Set with
/// `FallbackStoreBuilder::mode` or `CACHE_FALLBACK_MODE` (`serve` or `bypass`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FallbackMode {
    /// Serve from process memory (the default): entries written while Redis is
    /// unreachable live at most the fallback TTL (30 s by default) and are dropped when
    /// Redis returns. Bounded staleness: an entry another process invalidates in that time
    /// may be served here until it expires. The origin keeps the cache's protection.
    #[default]
    Serve,
    /// Bypass the cache: every lookup is a miss and nothing is stored until Redis answers
    /// again, so no stale answer is ever served. Concurrent misses of one key still reach
    /// the origin once; every other request reaches it too.
    Bypass,
}

impl FallbackMode {
    /// `serve` or `bypass`, as `CACHE_FALLBACK_MODE` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            FallbackMode::Serve => "serve",
            FallbackMode::Bypass => "bypass",
        }
    }
}

/// Counters kept by a store. New counters may be added: a store of one's own starts from
/// `StoreStats::default()` and sets the fields it keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct StoreStats {
    /// Entries held now (memory stores; 0 where unknown).
    pub entries: u64,
    /// Bytes held now, as counted against the budget (memory stores; 0 where unknown).
    pub bytes: u64,
    /// Entries removed to stay within the byte budget (or a URL's `Vary` variant cap).
    pub evictions: u64,
    /// Entries removed because they expired (past any stale window), by the sweeper or when
    /// chosen to make room.
    pub expirations: u64,
    /// Entries removed by invalidations (patterns, tags, namespaces, clears).
    pub invalidated: u64,
    /// Writes the store did not keep: larger than its budget allows, or refused by its
    /// admission policy in favour of entries wanted more.
    pub admissions_refused: u64,
    /// Times a fallback store's circuit opened (Redis unusable); 0 for other stores.
    pub circuit_openings: u64,
    /// Lookups answered by a Redis store's near cache (no Redis call).
    pub l1_hits: u64,
    /// Redis reads that found an entry (with a near cache on; 0 without).
    pub redis_hits: u64,
    /// Times a near cache's lease lapsed (reads went to Redis until it was renewed).
    pub lease_lapses: u64,
    /// Entries a near cache holds now.
    pub l1_entries: u64,
    /// Bytes a near cache holds now, as counted against its budget.
    pub l1_bytes: u64,
    /// Redis reads that found no room in the store's reply budget within the deadline and
    /// read as misses (see `RedisStoreBuilder::reply_budget`).
    pub reply_budget_full: u64,
}

/// A store operation failed. Never shown to HTTP clients; logged and counted.
#[derive(Debug)]
pub struct StoreError {
    message: String,
    unavailable: bool,
    connection_lost: bool,
    not_replicated: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// An error with a message and an underlying cause.
    pub fn new(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            message: message.into(),
            unavailable: false,
            connection_lost: false,
            not_replicated: false,
            source: Some(source.into()),
        }
    }

    /// The backend could not be reached (refused, timed out, dropped): the kind of error
    /// that opens a fallback store's circuit. Errors the backend answered with do not.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            unavailable: true,
            ..StoreError::new(message, source)
        }
    }

    /// Whether the backend could not be reached.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// The connection itself failed (refused, reset, dropped), not just one slow answer:
    /// the backend may have restarted. Implies [`is_unavailable`](Self::is_unavailable).
    pub fn connection_lost(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            connection_lost: true,
            ..StoreError::unavailable(message, source)
        }
    }

    /// Whether the connection itself failed (see [`connection_lost`](Self::connection_lost)).
    pub fn is_connection_lost(&self) -> bool {
        self.connection_lost
    }

    /// An invalidation applied on the Redis primary, but no replica (or fewer than asked
    /// for) acknowledged it in time: a failover now could promote a replica that still
    /// holds what it removed. Not an outage (the primary answered).
    pub fn not_replicated(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StoreError {
            not_replicated: true,
            ..StoreError::new(message, source)
        }
    }

    /// Whether an invalidation applied on the primary but did not reach enough replicas
    /// in time (see [`not_replicated`](Self::not_replicated)).
    pub fn is_not_replicated(&self) -> bool {
        self.not_replicated
    }

    /// An error with only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        StoreError {
            message: message.into(),
            unavailable: false,
            connection_lost: false,
            not_replicated: false,
            source: None,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl<S: Store + ?Sized> Store for Arc<S> {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        (**self).get(key)
    }
    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>) -> StoreFuture<'a, ()> {
        (**self).put(key, entry)
    }
    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        (**self).invalidate(namespace, pattern)
    }
    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        (**self).invalidate_tag(namespace, tag)
    }
    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        (**self).invalidate_soft(namespace, pattern)
    }
    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        (**self).invalidate_all(namespace)
    }
    fn backend(&self) -> Backend {
        (**self).backend()
    }
    fn stats(&self) -> StoreStats {
        (**self).stats()
    }
    fn coordination(&self) -> Option<&dyn Coordination> {
        (**self).coordination()
    }
}
