//! The in-process store: a sharded map bounded by a byte budget.
//!
//! Entries sit behind `Arc`s, so a hit clones a reference count, not a body. Every entry is
//! weighed (key, headers, body, overhead) and the sum is kept under `max_bytes`: what to
//! admit and what to evict is decided by the policy in `store::policy` (S3-FIFO queues with
//! TinyLFU admission: scan-resistant, frequency-aware, by bytes, whatever the request
//! rate). Every read of the store counts a use on the entries it lends, with one relaxed
//! counter: no lock on the hit path. Expired entries are swept by a background task; reads
//! skip them before that.
//!
//! ```
//! use tower_response_cache::{MemoryStore, Store};
//!
//! let store = MemoryStore::builder().max_bytes(1 << 20).build();
//! // Cloning shares the same entries.
//! let shared = store.clone();
//! assert_eq!(shared.stats().bytes, store.stats().bytes);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;

use super::{
    Backend, Coordination, Source, Store, StoreFuture, StoreKey, StoreStats, VariantRead, Variants,
};
use crate::clock;
use crate::entry::Entry;
use crate::pattern::Pattern;
use crate::store::policy::{Policy, Resident};

mod eviction;
#[cfg(test)]
mod tests;
mod variant_map;

use eviction::{weight_of, Cause, Removals, Sweeper};
use variant_map::VariantMap;

/// Most `Vary` variants kept for one URL; more are a sign of a header with unbounded values.
const MAX_VARY_VARIANTS: usize = 16;

/// An in-process [`Store`]. Cheap to clone: clones share the same entries.
///
/// ```
/// use tower_response_cache::{MemoryStore, Store};
///
/// let store = MemoryStore::builder().max_bytes(64 << 20).build();
/// assert_eq!(store.stats().entries, 0);
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    max_bytes: usize,
    sweep_interval: Duration,
}

struct Inner {
    /// `{namespace}:{logical}` → every variant of that logical key.
    /// aHash: keyed per process (flood-resistant like SipHash) and several times faster.
    /// A key is held once: the policy's queue shares it.
    map: DashMap<Arc<str>, Slot, ahash::RandomState>,
    max_bytes: usize,
    used: AtomicU64,
    entries: AtomicU64,
    removals: Removals,
    /// The eviction and admission policy's state, taken by stores, never by reads.
    policy: Mutex<Policy>,
    /// Hashes keys for the policy's sketch and ghost queue.
    hasher: ahash::RandomState,
    sweep_interval: Duration,
    /// The sweeper's heartbeat (see `eviction.rs`).
    sweeper: Sweeper,
}

#[derive(Default)]
struct Slot {
    variants: VariantMap,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        MemoryStoreBuilder {
            max_bytes: 256 << 20,
            sweep_interval: Duration::from_secs(30),
        }
    }
}

impl MemoryStoreBuilder {
    /// The byte budget (default 256 MiB). Entries larger than a quarter of it are not stored.
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// How often expired entries are swept (default 30 s; at least 1 ms, so a zero never
    /// spins the sweeper).
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Build the store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                map: DashMap::with_hasher(ahash::RandomState::new()),
                max_bytes: self.max_bytes,
                used: AtomicU64::new(0),
                entries: AtomicU64::new(0),
                removals: Removals::default(),
                policy: Mutex::new(Policy::new(self.max_bytes)),
                hasher: ahash::RandomState::new(),
                sweep_interval: self.sweep_interval,
                sweeper: Sweeper::default(),
            }),
        }
    }
}

impl MemoryStore {
    /// A builder with the defaults: 256 MiB, sweep every 30 s.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// A store with the default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// The byte budget.
    pub fn max_bytes(&self) -> usize {
        self.inner.max_bytes
    }

    /// Look up synchronously (the memory store never waits).
    pub(crate) fn get_now(&self, key: StoreKey<'_>) -> Option<Variants> {
        self.with_variants(key, |variants| variants.cloned())
    }

    /// `read` the variants stored under `key`, under the read lock of their shard. A lone
    /// entry counts a use; of several `Vary` variants none does, as the store cannot tell
    /// which one the reader picks, and counting them all would credit junk variants with
    /// every read of the real one: the reader counts a use on its pick (the engine's
    /// lookup does).
    pub(crate) fn with_variants<R>(
        &self,
        key: StoreKey<'_>,
        read: impl FnOnce(Option<&Variants>) -> R,
    ) -> R {
        // Build the map key in a reused buffer: no allocation on the hit path.
        let slot = MAP_KEY.with_borrow_mut(|buffer| {
            buffer.clear();
            push_escaped(buffer, key.namespace);
            buffer.push(':');
            buffer.push_str(key.logical);
            self.inner.map.get(buffer.as_str())
        });
        let variants = slot
            .as_ref()
            .and_then(|slot| slot.variants.get(&key.variant));
        if let Some([entry]) = variants.map(|v| &v[..]) {
            entry.usage().count_use();
        }
        read(variants)
    }

    /// Store synchronously; returns whether the entry was kept.
    pub(crate) fn put_now(&self, key: StoreKey<'_>, entry: Arc<Entry>) -> bool {
        self.inner.ensure_sweeper();
        let mut map_key: Arc<str> = Arc::from(map_key(key.namespace, key.logical));
        let weight = weight_of(&map_key, &entry);
        if weight > self.inner.max_bytes / 4 {
            self.inner.removals.refuse();
            return false;
        }
        entry.usage().stamp_write();
        let stored = entry.clone();
        let added = weight as u64;
        let mut capped = 0u64;
        let mut removed = 0u64;
        let mut replaced = 0u64;
        {
            let mut slot = self.inner.map.entry(map_key.clone()).or_default();
            let old = slot.variants.get(&key.variant);
            let mut next: Vec<Arc<Entry>> = Vec::with_capacity(old.map_or(1, |v| v.len() + 1));
            if let Some(old) = old {
                for existing in old.iter() {
                    if existing.same_variant(&entry) {
                        removed += weight_of(&map_key, existing) as u64;
                        replaced += 1;
                        // A new version keeps the old one's standing: otherwise anyone who
                        // can make a popular page be stored again (a client's `no-cache`
                        // under the RFC 9111 preset) sends it back unread to the small
                        // queue, to leave before its next read.
                        entry.usage().inherit_uses(existing.usage());
                    } else {
                        next.push(existing.clone());
                    }
                }
            }
            if next.len() >= MAX_VARY_VARIANTS {
                let dropped = next.remove(least_recently_used(&next));
                removed += weight_of(&map_key, &dropped) as u64;
                capped += 1;
            }
            next.push(entry);
            slot.variants.insert(key.variant, next.into());
            // The key the map holds (the one just made, unless the slot was there).
            map_key = slot.key().clone();
        }
        self.inner.entries.fetch_add(1, Ordering::Relaxed);
        self.inner.sub_entries(replaced + capped);
        self.inner.removals.count(Cause::Capacity, capped);
        // Account before evicting so concurrent puts see the pressure.
        self.inner.used.fetch_add(added, Ordering::Relaxed);
        self.inner.sub_used(removed);
        // A new version of a cached response is not contested: its key was wanted.
        self.inner
            .admit(map_key, key.variant, &stored, added, replaced == 0)
    }

    /// Remove the entries `drop_entry` picks under keys `keep_key` does not keep.
    ///
    /// First finds the keys under read locks, which hits share, one shard at a time; then
    /// removes them one key at a time. So a glob over the whole map never holds a shard
    /// write-locked while it matches: hits keep flowing. The caller holds the invalidation
    /// lock, so no write lands in between.
    fn remove_where(
        &self,
        cause: Cause,
        mut keep_key: impl FnMut(&str) -> bool,
        drop_entry: impl Fn(&Entry) -> bool,
    ) -> u64 {
        let inner = &self.inner;
        let doomed: Vec<Arc<str>> = inner
            .map
            .iter()
            .filter(|slot| {
                !keep_key(slot.key())
                    && slot
                        .variants
                        .values()
                        .any(|variants| variants.iter().any(|e| drop_entry(e)))
            })
            .map(|slot| slot.key().clone())
            .collect();
        let mut removed_entries = 0u64;
        let mut removed_bytes = 0u64;
        for key in doomed {
            let emptied = {
                let Some(mut slot) = inner.map.get_mut(key.as_ref()) else {
                    continue;
                };
                slot.variants.retain(|_, variants| {
                    let kept: Vec<Arc<Entry>> = variants
                        .iter()
                        .filter(|e| {
                            if drop_entry(e) {
                                removed_entries += 1;
                                removed_bytes += weight_of(&key, e) as u64;
                                false
                            } else {
                                true
                            }
                        })
                        .cloned()
                        .collect();
                    if kept.len() != variants.len() {
                        *variants = kept.into();
                    }
                    !variants.is_empty()
                });
                slot.variants.is_empty()
            };
            if emptied {
                inner
                    .map
                    .remove_if(key.as_ref(), |_, slot| slot.variants.is_empty());
            }
        }
        inner.sub_entries(removed_entries);
        inner.sub_used(removed_bytes);
        inner.removals.count(cause, removed_entries);
        removed_entries
    }

    fn remove_key(&self, map_key: &str) -> u64 {
        let Some((key, slot)) = self.inner.map.remove(map_key) else {
            return 0;
        };
        let mut count = 0u64;
        let mut bytes = 0u64;
        for variants in slot.variants.values() {
            for entry in variants.iter() {
                count += 1;
                bytes += weight_of(&key, entry) as u64;
            }
        }
        self.inner.sub_entries(count);
        self.inner.sub_used(bytes);
        self.inner.removals.count(Cause::Invalidation, count);
        count
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_bytes", &self.inner.max_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

thread_local! {
    static MAP_KEY: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

fn map_key(namespace: &str, logical: &str) -> String {
    let namespace = escaped(namespace);
    let mut key = String::with_capacity(namespace.len() + 1 + logical.len());
    key.push_str(&namespace);
    key.push(':');
    key.push_str(logical);
    key
}

/// Which of a URL's variants to drop for a new one: one never read since it was stored
/// first (the oldest such), else the least recently read, so a flood of junk `Vary` values
/// never pushes out a variant real clients read. Reads and writes are ordered by stamps
/// that count writes (`Usage`), not time: this holds at any request rate.
fn least_recently_used(variants: &[Arc<Entry>]) -> usize {
    variants
        .iter()
        .enumerate()
        .min_by_key(|(i, e)| {
            let usage = e.usage();
            (usage.read_since_stored(), usage.stamp(), *i)
        })
        .map_or(0, |(i, _)| i)
}

impl MemoryStore {
    /// Remove every entry, in every namespace.
    pub fn clear(&self) -> u64 {
        self.remove_where(Cause::Invalidation, |_| false, |_| true)
    }

    /// Remove every expired entry now (the background sweeper calls this periodically).
    pub fn sweep_expired(&self) -> u64 {
        let now = clock::now_millis();
        self.remove_where(Cause::Expiry, |_| false, |e| e.is_dead_at(now))
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        let found = self.get_now(key);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>) -> StoreFuture<'a, ()> {
        // Applied now, not when polled: see the ban rule on `Store`.
        self.put_now(key, entry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        let removed = match pattern.literal() {
            Some(literal) => self.remove_key(&map_key(namespace, literal)),
            None => {
                let namespace = &*escaped(namespace);
                let prefix_len = namespace.len() + 1;
                self.remove_where(
                    Cause::Invalidation,
                    |key| {
                        !(key.len() >= prefix_len
                            && key.as_bytes()[namespace.len()] == b':'
                            && key.starts_with(namespace)
                            && pattern.matches(&key.as_bytes()[prefix_len..]))
                    },
                    |_| true,
                )
            }
        };
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        let namespace = &*escaped(namespace);
        let now = clock::now_millis();
        let mut marked = 0;
        let mut copies = Vec::new();
        for mut slot in self.inner.map.iter_mut() {
            if !in_namespace(slot.key(), namespace)
                || !pattern.matches(&slot.key().as_bytes()[namespace.len() + 1..])
            {
                continue;
            }
            let map_key = slot.key().clone();
            for (variant, variants) in slot.value_mut().variants.iter_mut() {
                let expired: Vec<Arc<Entry>> = variants
                    .iter()
                    .map(|e| {
                        marked += 1;
                        if e.is_fresh_at(now) {
                            let copy = Arc::new(e.expired_at(now));
                            copies.push(Resident::new(
                                map_key.clone(),
                                *variant,
                                self.inner.hash_of(&map_key, *variant, e),
                                weight_of(&map_key, &copy) as u64,
                                &copy,
                            ));
                            copy
                        } else {
                            e.clone()
                        }
                    })
                    .collect();
                *variants = expired.into();
            }
        }
        // The marked copies take the originals' places in the queues.
        {
            let mut policy = self.inner.policy.lock().unwrap_or_else(|e| e.into_inner());
            for copy in copies {
                policy.requeue(copy);
            }
        }
        // Entries with no stale window are of no use once expired: remove them now.
        self.remove_where(
            Cause::Invalidation,
            |key| !in_namespace(key, namespace),
            |e| e.is_dead_at(now),
        );
        Box::pin(std::future::ready(Ok(marked)))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        let namespace = &*escaped(namespace);
        let removed = self.remove_where(
            Cause::Invalidation,
            |key| !in_namespace(key, namespace),
            |e| e.tags().iter().any(|t| t == tag),
        );
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        let namespace = &*escaped(namespace);
        let removed = self.remove_where(
            Cause::Invalidation,
            |key| !in_namespace(key, namespace),
            |_| true,
        );
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn backend(&self) -> Backend {
        Backend::Memory
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.inner.entries.load(Ordering::Relaxed),
            bytes: self.inner.used.load(Ordering::Relaxed),
            evictions: self.inner.removals.capacity.load(Ordering::Relaxed),
            expirations: self.inner.removals.expiry.load(Ordering::Relaxed),
            invalidated: self.inner.removals.invalidation.load(Ordering::Relaxed),
            admissions_refused: self.inner.removals.refused.load(Ordering::Relaxed),
            ..StoreStats::default()
        }
    }

    fn coordination(&self) -> Option<&dyn Coordination> {
        Some(self)
    }
}

impl Coordination for MemoryStore {
    fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> Option<Source> {
        self.with_variants(key, |variants| read(variants.map_or(&[], |v| &v[..])));
        Some(Source::Memory)
    }

    fn get_for<'a>(
        &'a self,
        key: StoreKey<'a>,
        _identity: &'a [u8],
        _headers: &'a http::HeaderMap,
    ) -> StoreFuture<'a, VariantRead> {
        let found = self.get_now(key);
        Box::pin(std::future::ready(Ok(found
            .map_or(VariantRead::Missing, |variants| {
                VariantRead::Variants(variants, Source::Memory)
            }))))
    }

    fn put_checked<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<Entry>,
        _token: u64,
    ) -> StoreFuture<'a, bool> {
        // Applied now, not when polled: see the ban rule on `Store`.
        let kept = self.put_now(key, entry);
        Box::pin(std::future::ready(Ok(kept)))
    }
}

/// A namespace as it starts map keys: `%` and `:` escaped, so no namespace and logical key
/// spell another pair's map key (`a` + `b:c` is not `a:b` + `c`).
fn escaped(namespace: &str) -> std::borrow::Cow<'_, str> {
    if !needs_escape(namespace) {
        return std::borrow::Cow::Borrowed(namespace);
    }
    std::borrow::Cow::Owned(namespace.replace('%', "%25").replace(':', "%3A"))
}

/// [`escaped`] written into `buffer` (no allocation: the hit path builds its key so).
fn push_escaped(buffer: &mut String, namespace: &str) {
    if !needs_escape(namespace) {
        buffer.push_str(namespace);
        return;
    }
    for c in namespace.chars() {
        match c {
            '%' => buffer.push_str("%25"),
            ':' => buffer.push_str("%3A"),
            c => buffer.push(c),
        }
    }
}

/// Whether `namespace` holds a `:` or a `%`. A byte scan: both are ASCII, and a pattern of
/// chars decodes UTF-8 (this runs on every hit).
fn needs_escape(namespace: &str) -> bool {
    namespace.bytes().any(|b| b == b':' || b == b'%')
}

/// Whether a map key is in `namespace` (given escaped).
fn in_namespace(key: &str, namespace: &str) -> bool {
    key.len() > namespace.len()
        && key.starts_with(namespace)
        && key.as_bytes()[namespace.len()] == b':'
}
