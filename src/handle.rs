//! [`CacheHandle`]: the application's side of the cache.
//!
//! A handle owns the store, the namespace, the default TTL and the invalidation machinery.
//! It is cheap to clone (an `Arc` inside) and every method takes `&self`, so the web layer,
//! the data-access code and the sync pipeline can each hold one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_response_cache::CacheError> {
//! use std::time::Duration;
//! use tower_response_cache::{CacheHandle, MemoryStore};
//!
//! let cache = CacheHandle::builder(MemoryStore::new())
//!     .namespace("portal")
//!     .ttl(Duration::from_secs(3600))
//!     .build();
//!
//! // Data-level caching, coalesced like HTTP misses: the closure runs once.
//! let companies: Vec<String> = cache
//!     .get_or_insert_with("companies_all_synced", None, async { vec!["ACME".to_string()] })
//!     .await;
//! assert_eq!(companies, ["ACME"]);
//!
//! // After a sync: drop the list and every dashboard of company ABC.
//! cache.invalidate("companies_all_synced").await?;
//! cache.invalidate("dashboard:ABC*").await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ban::{Ban, BanLog};
use crate::clock;
use crate::coalesce::{follow, follow_past_sharing, Coalescer, Outcome, Role, Share, Turn};
use crate::entry::Entry;
use crate::fill::{Budget, Fill};
use crate::key::{vary_matches, Variant};
use crate::pattern::Pattern;
use crate::stats::{bump, CacheStats, Counters};
use crate::store::{Backend, Invalidation, Store, StoreError, StoreEvent, StoreKey};

/// The application's handle on a cache. See the [module docs](crate::handle).
#[derive(Clone)]
pub struct CacheHandle {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    namespace: Box<str>,
    ttl: Duration,
    coalesce_timeout: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    hit_for_miss_ttl: Duration,
    bans: BanLog,
    flights: Arc<Coalescer>,
    fill_budget: Arc<Budget>,
    /// Keys whose last response could not be stored (hash of key → until when): their
    /// misses go straight to the origin instead of queueing behind each other. Hashed
    /// with a per-process random seed: nobody outside can aim a collision at a key.
    hit_for_miss: dashmap::DashMap<u64, tokio::time::Instant>,
    hit_for_miss_seed: ahash::RandomState,
    pub(crate) counters: Counters,
}

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

impl std::error::Error for CacheError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Taken before a miss calls the origin; its write is checked against it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    bans: crate::ban::Ticket,
    store: u64,
}

/// What a lookup found.
pub(crate) enum Found {
    Hit(Arc<Entry>),
    /// An expired entry still within one of its stale windows.
    Stale(Arc<Entry>),
    /// Nothing under this URL.
    UriMiss,
    /// Entries exist under this URL, but for other values of the `Vary` headers (named).
    VaryMiss(Vec<http::HeaderName>),
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
    /// default 10 s).
    pub fn hit_for_miss_ttl(mut self, ttl: Duration) -> Self {
        self.hit_for_miss_ttl = ttl;
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
    /// If the namespace is empty.
    pub fn build(self) -> CacheHandle {
        assert!(
            !self.namespace.is_empty(),
            "cache namespace must not be empty"
        );
        let handle = CacheHandle {
            shared: Arc::new(Shared {
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
        let weak = Arc::downgrade(&handle.shared);
        handle.shared.store.set_listener(Arc::new(move |event| {
            let Some(shared) = weak.upgrade() else { return };
            // Requests arriving from now on must not read a fetch from before it.
            match event {
                StoreEvent::Remote {
                    namespace,
                    invalidation: Invalidation::Pattern(p),
                } if **namespace == *shared.namespace => {
                    let pattern = Pattern::new(p);
                    shared.flights.forget(|key| pattern.matches_str(key));
                }
                StoreEvent::Remote { namespace, .. } if **namespace != *shared.namespace => {}
                _ => shared.flights.forget(|_| true),
            }
            match event {
                // The store refuses such writes itself, more precisely (see
                // `Store::checks_remote_invalidations`).
                StoreEvent::Remote { .. } if shared.store.checks_remote_invalidations() => {}
                StoreEvent::Remote {
                    namespace,
                    invalidation,
                } if **namespace == *shared.namespace => match invalidation {
                    Invalidation::Pattern(p) => shared.bans.record(Ban::Pattern(&Pattern::new(p))),
                    Invalidation::Tag(t) => shared.bans.record(Ban::Tag(t)),
                    Invalidation::All => shared.bans.record(Ban::All),
                },
                StoreEvent::Remote { .. } => {}
                StoreEvent::ChannelLost => shared.bans.record(Ban::All),
            }
        }));
        handle
    }
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
        Self::builder(crate::MemoryStore::new()).build()
    }

    /// The namespace every key is stored under.
    pub fn namespace(&self) -> &str {
        &self.shared.namespace
    }

    /// The default TTL.
    pub fn ttl(&self) -> Duration {
        self.shared.ttl
    }

    /// Which backend is serving now.
    pub fn backend(&self) -> Backend {
        self.shared.store.backend()
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
        bump!(self.shared.counters, invalidations);
        self.shared.bans.record(Ban::Pattern(pattern));
        self.shared.flights.forget(|key| pattern.matches_str(key));
        let result = self
            .shared
            .store
            .invalidate(&self.shared.namespace, pattern)
            .await;
        self.report("invalidate", result)
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
        bump!(self.shared.counters, invalidations);
        self.shared.bans.record(Ban::Pattern(&pattern));
        self.shared.flights.forget(|key| pattern.matches_str(key));
        let result = self
            .shared
            .store
            .invalidate_soft(&self.shared.namespace, &pattern)
            .await;
        self.report("invalidate_soft", result)
    }

    /// Remove every entry whose response named `tag` in its `Cache-Tag` header.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<u64, CacheError> {
        bump!(self.shared.counters, invalidations);
        self.shared.bans.record(Ban::Tag(tag));
        // A flight's tags are known only with its response: forget every flight.
        self.shared.flights.forget(|_| true);
        let result = self
            .shared
            .store
            .invalidate_tag(&self.shared.namespace, tag)
            .await;
        self.report("invalidate_tag", result)
    }

    /// Remove every entry in this handle's namespace.
    pub async fn invalidate_all(&self) -> Result<u64, CacheError> {
        bump!(self.shared.counters, invalidations);
        self.shared.bans.record(Ban::All);
        self.shared.flights.forget(|_| true);
        let result = self
            .shared
            .store
            .invalidate_all(&self.shared.namespace)
            .await;
        self.report("invalidate_all", result)
    }

    fn report<T>(
        &self,
        operation: &'static str,
        result: Result<T, StoreError>,
    ) -> Result<T, CacheError> {
        result.map_err(|source| {
            bump!(self.shared.counters, store_errors);
            tracing::warn!(operation, error = %source, "cache invalidation did not reach the store");
            CacheError { operation, source }
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        let store = self.shared.store.stats();
        CacheStats {
            hits: c.hits.get(),
            misses: c.misses.get(),
            stale: c.stale.get(),
            stores: c.stores.get(),
            evictions: store.evictions,
            bypasses: c.bypasses.get(),
            coalesced: c.coalesced.get(),
            invalidations: c.invalidations.get(),
            store_errors: c.store_errors.get(),
            entries: store.entries,
            bytes: store.bytes,
            circuit_openings: store.circuit_openings,
            l1_hits: store.l1_hits,
            redis_hits: store.redis_hits,
            lease_lapses: store.lease_lapses,
            backend: self.shared.store.backend(),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// Return the cached value under `key`, or run `init`, store its value for `ttl` (the
    /// handle's TTL when `None`) and return it. Values are stored as JSON.
    ///
    /// # Concurrent calls on the same key
    /// Only one `init` runs at a time per key; the other callers wait for its value (at
    /// most the coalesce timeout) instead of running theirs. Store errors are logged and
    /// the value is computed as if the cache were empty.
    pub async fn get_or_insert_with<T, F>(&self, key: &str, ttl: Option<Duration>, init: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        match self
            .try_get_or_insert_with(key, ttl, async {
                Ok::<T, std::convert::Infallible>(init.await)
            })
            .await
        {
            Ok(value) => value,
            Err(never) => match never {},
        }
    }

    /// Like [`get_or_insert_with`](Self::get_or_insert_with) for loaders that can fail.
    /// Errors are returned to this caller and never cached; a waiting caller then runs its
    /// own loader.
    pub async fn try_get_or_insert_with<T, E, F>(
        &self,
        key: &str,
        ttl: Option<Duration>,
        init: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        let logical = crate::key::bound(key.into()).into_owned();
        let empty = HeaderMap::new();
        // Typed values have no request inputs besides their key.
        let variant = Variant {
            hash: 0,
            identity: Bytes::new(),
        };
        loop {
            if let Found::Hit(entry) = self.lookup(&logical, &variant, &empty).await {
                if let Ok(value) = serde_json::from_slice(entry.body()) {
                    bump!(self.shared.counters, hits);
                    return Ok(value);
                }
                tracing::warn!(key = %logical, "cached value does not decode as the requested type; recomputing");
            }
            bump!(self.shared.counters, misses);
            match self
                .take_turn(&logical, &variant.identity, |_| Share::WaitForEntry)
                .await
            {
                Turn::LookAgain | Turn::Read(_) | Turn::OtherVariant(_) => continue,
                Turn::FetchAlone => return init.await,
                Turn::Lead(leader) => {
                    let ticket = self.ticket().await;
                    let value = match init.await {
                        Ok(value) => value,
                        Err(error) => {
                            leader.finish(Outcome::Uncacheable);
                            return Err(error);
                        }
                    };
                    let outcome = match serde_json::to_vec(&value) {
                        Ok(json) => {
                            let mut headers = HeaderMap::new();
                            headers
                                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                            let entry = Entry::new(
                                StatusCode::OK,
                                headers,
                                Bytes::from(json),
                                ttl.unwrap_or(self.shared.ttl),
                            );
                            if self.commit(&logical, 0, ticket, entry).await {
                                Outcome::Stored
                            } else {
                                Outcome::Uncacheable
                            }
                        }
                        Err(error) => {
                            tracing::warn!(key = %logical, %error, "value could not be serialised; not cached");
                            Outcome::Uncacheable
                        }
                    };
                    leader.finish(outcome);
                    return Ok(value);
                }
            }
        }
    }

    /// The ticket for a miss that is about to fetch: what its write will be checked against.
    /// What a miss carries from before it calls the origin to its store write: the ban
    /// epoch, and the store's current write token (asked of a shared store, so a fetch
    /// that began after another process's invalidation is not refused for it).
    pub(crate) async fn ticket(&self) -> Ticket {
        let bans = self.shared.bans.ticket();
        let store = match self.shared.store.current_write_token().await {
            Ok(token) => token,
            Err(_) => self.shared.store.write_token(),
        };
        Ticket { bans, store }
    }

    pub(crate) fn flights(&self) -> &Arc<Coalescer> {
        &self.shared.flights
    }

    /// A miss joins the flight for its key: it leads, or it waits (up to the coalesce
    /// timeout, counted as coalesced) for the leader's outcome.
    ///
    /// When the leader shares its response as it arrives, `share` says what this follower
    /// makes of it: read it at once, wait for the stored entry, or fly apart (its `Vary`
    /// values differ).
    pub(crate) async fn take_turn(
        &self,
        logical: &str,
        flight: &[u8],
        share: impl FnOnce(&Arc<Fill>) -> Share,
    ) -> Turn {
        match self.shared.flights.join(logical, flight) {
            Role::Leader(leader) => Turn::Lead(leader),
            Role::Follower(outcome) => {
                bump!(self.shared.counters, coalesced);
                let limit = self.shared.coalesce_timeout;
                let started = tokio::time::Instant::now();
                let heard = match follow(outcome.clone(), limit).await {
                    Outcome::Sharing(fill) => {
                        match share(&fill) {
                            Share::Read => {
                                if let Some(reader) = fill.reader() {
                                    return Turn::Read(reader);
                                }
                            }
                            Share::OtherVariant => {
                                return Turn::OtherVariant(fill.head.vary.names.clone())
                            }
                            Share::WaitForEntry => {}
                        }
                        follow_past_sharing(outcome, limit.saturating_sub(started.elapsed())).await
                    }
                    other => other,
                };
                match heard {
                    // The entry should be there now, or the leader left: look again.
                    Outcome::Stored
                    | Outcome::Abandoned
                    | Outcome::Pending
                    | Outcome::Sharing(_) => Turn::LookAgain,
                    Outcome::Uncacheable => Turn::FetchAlone,
                }
            }
        }
    }

    /// The bytes all fills of this handle may hold while recording.
    pub(crate) fn fill_budget(&self) -> Arc<Budget> {
        self.shared.fill_budget.clone()
    }

    /// How long a follower waits for its flight's leader.
    pub(crate) fn coalesce_timeout(&self) -> Duration {
        self.shared.coalesce_timeout
    }

    /// The handle's stale windows, for responses that name none.
    pub(crate) fn default_stale(&self) -> (Duration, Duration) {
        (
            self.shared.stale_while_revalidate,
            self.shared.stale_if_error,
        )
    }

    fn hit_for_miss_key(&self, logical: &str, identity: &[u8]) -> u64 {
        self.shared.hit_for_miss_seed.hash_one((logical, identity))
    }

    /// Was the last response for this key unstorable (recently)?
    pub(crate) fn is_hit_for_miss(&self, logical: &str, identity: &[u8]) -> bool {
        let key = self.hit_for_miss_key(logical, identity);
        match self.shared.hit_for_miss.get(&key).map(|until| *until) {
            Some(until) if until > tokio::time::Instant::now() => true,
            Some(_) => {
                self.shared.hit_for_miss.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remember (or forget) that a key's response could not be stored.
    pub(crate) fn set_hit_for_miss(&self, logical: &str, identity: &[u8], uncacheable: bool) {
        let key = self.hit_for_miss_key(logical, identity);
        let map = &self.shared.hit_for_miss;
        if !uncacheable {
            if !map.is_empty() {
                map.remove(&key);
            }
            return;
        }
        if self.shared.hit_for_miss_ttl.is_zero() {
            return;
        }
        let now = tokio::time::Instant::now();
        // Bounded: a flood of unstorable URLs must not grow this without limit.
        if map.len() >= 10_000 {
            map.retain(|_, until| *until > now);
            if map.len() >= 10_000 {
                map.clear();
            }
        }
        map.insert(key, now + self.shared.hit_for_miss_ttl);
    }

    fn store_key<'a>(&'a self, logical: &'a str, variant: u64) -> StoreKey<'a> {
        StoreKey {
            namespace: &self.shared.namespace,
            logical,
            variant,
        }
    }

    /// Find a fresh entry for the request. Store errors are logged and read as a miss.
    pub(crate) async fn lookup(
        &self,
        logical: &str,
        variant: &Variant,
        request_headers: &HeaderMap,
    ) -> Found {
        let variants = match self
            .shared
            .store
            .get(self.store_key(logical, variant.hash))
            .await
        {
            Ok(Some(variants)) => variants,
            Ok(None) => return Found::UriMiss,
            Err(error) => {
                bump!(self.shared.counters, store_errors);
                tracing::warn!(key = %logical, %error, "cache lookup failed; treating as a miss");
                return Found::UriMiss;
            }
        };
        pick(&variants, &variant.identity, request_headers)
    }

    /// [`lookup`](Self::lookup) without waiting, where the store can answer at once (memory):
    /// `None` means the store must be asked asynchronously.
    pub(crate) fn lookup_now(
        &self,
        logical: &str,
        hash: u64,
        identity: &[u8],
        request_headers: &HeaderMap,
    ) -> Option<Found> {
        let found = self
            .shared
            .store
            .try_get_now(self.store_key(logical, hash))?;
        Some(match found {
            Some(variants) => pick(&variants, identity, request_headers),
            None => Found::UriMiss,
        })
    }

    /// Store `entry` unless an invalidation since `ticket` covers it. Returns whether it
    /// was handed to the store. Never fails: errors are logged.
    pub(crate) async fn commit(
        &self,
        logical: &str,
        variant: u64,
        ticket: Ticket,
        entry: impl Into<Arc<Entry>>,
    ) -> bool {
        let entry = entry.into();
        let write = {
            let bans = self.shared.bans.read();
            if bans.is_banned(ticket.bans, logical, entry.tags()) {
                tracing::debug!(key = %logical, "not storing a response fetched before an invalidation");
                return false;
            }
            // Called under the read lock: local stores apply the write here (see `Store`).
            self.shared
                .store
                .put(self.store_key(logical, variant), entry, ticket.store)
        };
        match write.await {
            Ok(()) => {
                bump!(self.shared.counters, stores);
                true
            }
            Err(error) => {
                bump!(self.shared.counters, store_errors);
                tracing::warn!(key = %logical, %error, "cache write failed; response served uncached");
                false
            }
        }
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

/// The entry among `variants` that answers a request of this identity with these headers:
/// fresh, else stale (within a stale window), else a miss saying whether other `Vary`
/// variants exist. Entries of another identity (sharing the index by a hash collision)
/// answer nothing.
fn pick(variants: &[Arc<Entry>], identity: &[u8], request_headers: &HeaderMap) -> Found {
    let now = clock::now_millis();
    let usable = |entry: &&Arc<Entry>| !entry.is_dead_at(now) && entry.identity() == identity;
    let mut stale = None;
    for entry in variants.iter().filter(usable) {
        if vary_matches(entry.vary(), request_headers) {
            if entry.is_fresh_at(now) {
                // Recency for the memory store's eviction.
                entry.touch(now / 1000);
                return Found::Hit(entry.clone());
            }
            stale = Some(entry.clone());
        }
    }
    if let Some(entry) = stale {
        return Found::Stale(entry);
    }
    // A miss: name the headers the other variants vary on, so this request's fetch is
    // coalesced only with requests that send the same values.
    let mut names: Vec<http::HeaderName> = Vec::new();
    let mut any = false;
    for entry in variants.iter().filter(usable) {
        any = true;
        for name in &entry.vary().names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    if !any {
        return Found::UriMiss;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Found::VaryMiss(names)
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("namespace", &self.shared.namespace)
            .field("ttl", &self.shared.ttl)
            .field("backend", &self.backend())
            .finish()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn handle() -> CacheHandle {
        CacheHandle::builder(MemoryStore::new())
            .namespace("t")
            .build()
    }

    #[tokio::test]
    async fn an_entry_answers_only_its_exact_identity_whatever_its_index() {
        let handle = handle();
        // Two requests whose identities share an index hash (what an attacker computes
        // for xxh3): the store files them under one slot.
        let victim = Variant {
            hash: 42,
            identity: Bytes::from_static(b"victim"),
        };
        let attacker = Variant {
            hash: 42,
            identity: Bytes::from_static(b"attacker"),
        };
        let entry = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"poison"),
            Duration::from_secs(60),
        )
        .with_identity(attacker.identity.clone());
        let ticket = handle.ticket().await;
        assert!(handle.commit("/page", 42, ticket, entry).await);
        let empty = HeaderMap::new();
        assert!(matches!(
            handle.lookup("/page", &victim, &empty).await,
            Found::UriMiss
        ));
        assert!(matches!(
            handle.lookup_now("/page", 42, b"victim", &empty),
            Some(Found::UriMiss)
        ));
        assert!(matches!(
            handle.lookup("/page", &attacker, &empty).await,
            Found::Hit(_)
        ));
    }

    #[tokio::test]
    async fn a_literal_invalidation_reaches_a_key_stored_shortened() {
        let handle = handle();
        let long = format!("/search/{}", "q".repeat(2000));
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            1u32
        };
        handle.get_or_insert_with(&long, None, load()).await;
        handle.get_or_insert_with(&long, None, load()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(handle.invalidate(&long).await.unwrap(), 1);
        handle.get_or_insert_with(&long, None, load()).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // A glob over the kept prefix reaches it too.
        assert_eq!(handle.invalidate("/search/qqq*").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn typed_values_are_computed_once_and_invalidated_by_key() {
        let cache = handle();
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            vec![1, 2, 3]
        };
        let a: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", None, load())
            .await;
        let b: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", None, load())
            .await;
        assert_eq!((a, b), (vec![1, 2, 3], vec![1, 2, 3]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.invalidate("companies_all_synced").await.unwrap(), 1);
        let _: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", None, load())
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.invalidate("companies_*").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn concurrent_typed_loads_coalesce() {
        let cache = handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_insert_with("k", None, async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            42u32
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.stats().coalesced >= 1);
    }

    #[tokio::test]
    async fn loader_errors_are_returned_and_not_cached() {
        let cache = handle();
        let r: Result<u8, &str> = cache
            .try_get_or_insert_with("k", None, async { Err("db down") })
            .await;
        assert_eq!(r, Err("db down"));
        let r: Result<u8, &str> = cache
            .try_get_or_insert_with("k", None, async { Ok(7) })
            .await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test]
    async fn a_value_loaded_across_an_invalidation_is_not_stored() {
        let cache = handle();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_with("companies_all_synced", None, async move {
                        started_tx.send(()).unwrap();
                        release_rx.await.unwrap();
                        "old".to_string()
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        cache.invalidate("companies_*").await.unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(loader.await.unwrap(), "old");
        // The stale value was returned to its own caller but not stored.
        let now: String = cache
            .get_or_insert_with("companies_all_synced", None, async { "new".to_string() })
            .await;
        assert_eq!(now, "new");
    }

    #[tokio::test(start_paused = true)]
    async fn typed_values_expire_after_their_ttl() {
        let cache = handle();
        let v: u8 = cache
            .get_or_insert_with("k", Some(Duration::from_secs(10)), async { 1 })
            .await;
        assert_eq!(v, 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        let v: u8 = cache.get_or_insert_with("k", None, async { 2 }).await;
        assert_eq!(v, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let v: u8 = cache.get_or_insert_with("k", None, async { 3 }).await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn a_value_of_another_type_is_recomputed_not_a_panic() {
        let cache = handle();
        let _: String = cache
            .get_or_insert_with("k", None, async { "text".to_string() })
            .await;
        let n: u32 = cache.get_or_insert_with("k", None, async { 5 }).await;
        assert_eq!(n, 5);
    }
}
