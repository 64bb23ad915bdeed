//! The in-process store: a sharded map bounded by a byte budget.
//!
//! Entries sit behind `Arc`s, so a hit clones a reference count, not a body. Every entry is
//! weighed (key, headers, body, overhead) and the sum is kept under `max_bytes`: a put that
//! goes over evicts with the CLOCK algorithm (a FIFO of references where an entry read since
//! it was queued gets a second chance), which approximates LRU without a lock on the hit
//! path. Expired entries are swept by a background task; reads skip them before that.
//!
//! ```
//! use tower_response_cache::{MemoryStore, Store};
//!
//! let store = MemoryStore::builder().max_bytes(1 << 20).build();
//! // Cloning shares the same entries.
//! let shared = store.clone();
//! assert_eq!(shared.stats().bytes, store.stats().bytes);
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;

use super::{Backend, Store, StoreFuture, StoreKey, StoreStats, Variants};
use crate::clock;
use crate::entry::Entry;
use crate::pattern::Pattern;

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
    map: DashMap<Box<str>, Slot, ahash::RandomState>,
    max_bytes: usize,
    used: AtomicU64,
    entries: AtomicU64,
    evictions: AtomicU64,
    /// CLOCK queue of (map key, variant, entry, seconds when queued).
    clock: Mutex<VecDeque<QueuedRef>>,
    sweep_interval: Duration,
    sweeper_started: AtomicBool,
}

struct QueuedRef {
    key: Box<str>,
    variant: u64,
    /// The very entry queued: a replaced entry's reference dies with it.
    entry: Weak<Entry>,
    queued_at: u64,
}

#[derive(Default)]
struct Slot {
    variants: HashMap<u64, Variants, ahash::RandomState>,
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

    /// How often expired entries are swept (default 30 s).
    ///
    /// # Panics
    /// [`build`](Self::build) panics if the interval is zero.
    pub fn sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Build the store.
    ///
    /// # Panics
    /// If the sweep interval is zero.
    pub fn build(self) -> MemoryStore {
        assert!(
            !self.sweep_interval.is_zero(),
            "MemoryStore sweep interval must not be zero"
        );
        MemoryStore {
            inner: Arc::new(Inner {
                map: DashMap::with_hasher(ahash::RandomState::new()),
                max_bytes: self.max_bytes,
                used: AtomicU64::new(0),
                entries: AtomicU64::new(0),
                evictions: AtomicU64::new(0),
                clock: Mutex::new(VecDeque::new()),
                sweep_interval: self.sweep_interval,
                sweeper_started: AtomicBool::new(false),
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
        // Build the map key in a reused buffer: no allocation on the hit path.
        let variants = MAP_KEY.with_borrow_mut(|buffer| {
            buffer.clear();
            buffer.push_str(key.namespace);
            buffer.push(':');
            buffer.push_str(key.logical);
            let slot = self.inner.map.get(buffer.as_str())?;
            slot.variants.get(&key.variant).cloned()
        })?;
        Some(variants)
    }

    /// Store synchronously; returns whether the entry was kept.
    pub(crate) fn put_now(&self, key: StoreKey<'_>, entry: Arc<Entry>) -> bool {
        self.inner.ensure_sweeper();
        let map_key: Box<str> = map_key(key.namespace, key.logical).into_boxed_str();
        let weight = weight_of(&map_key, &entry);
        if weight > self.inner.max_bytes / 4 {
            return false;
        }
        let queued = Arc::downgrade(&entry);
        let added = weight as u64;
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
                    } else {
                        next.push(existing.clone());
                    }
                }
            }
            if next.len() >= MAX_VARY_VARIANTS {
                let dropped = next.remove(least_recently_used(&next));
                removed += weight_of(&map_key, &dropped) as u64;
                replaced += 1;
            }
            next.push(entry);
            slot.variants.insert(key.variant, next.into());
        }
        self.inner.entries.fetch_add(1, Ordering::Relaxed);
        self.inner.sub_entries(replaced);
        // Account before evicting so concurrent puts see the pressure.
        self.inner.used.fetch_add(added, Ordering::Relaxed);
        self.inner.sub_used(removed);
        self.inner.enqueue(QueuedRef {
            key: map_key,
            variant: key.variant,
            entry: queued,
            queued_at: clock::now_millis() / 1000,
        });
        self.inner.evict_to_budget();
        true
    }

    /// Remove the entries `drop_entry` picks under keys `keep_key` does not keep.
    ///
    /// First finds the keys under read locks, which hits share, one shard at a time; then
    /// removes them one key at a time. So a glob over the whole map never holds a shard
    /// write-locked while it matches: hits keep flowing. The caller holds the invalidation
    /// lock, so no write lands in between.
    fn remove_where(
        &self,
        mut keep_key: impl FnMut(&str) -> bool,
        drop_entry: impl Fn(&Entry) -> bool,
    ) -> u64 {
        let inner = &self.inner;
        let doomed: Vec<Box<str>> = inner
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
    let mut key = String::with_capacity(namespace.len() + 1 + logical.len());
    key.push_str(namespace);
    key.push(':');
    key.push_str(logical);
    key
}

/// Whether `new` replaces `existing`: the same response variant of one URL.
/// Which of a URL's variants to drop for a new one: the least recently read (a flood of junk
/// `Vary` values must not push out the variant real clients read). Reads are timed to the
/// second, so among those last read in the same second, one never read after the second it
/// was stored in goes first (a fresh junk write, against a hot variant read again), then the
/// oldest.
fn least_recently_used(variants: &[Arc<Entry>]) -> usize {
    variants
        .iter()
        .enumerate()
        .min_by_key(|(i, e)| {
            let last = e.last_access_secs();
            let read_since_stored = last > e.stored_at_millis() / 1000;
            (last, read_since_stored, *i)
        })
        .map_or(0, |(i, _)| i)
}

/// What the store itself holds per entry, besides the entry and its key strings: a map slot
/// (80 bytes, with room to grow: twice that), the key's variant map (about 120 bytes), the
/// variants list behind its `Arc` (24), and the eviction queue's reference (40, twice with
/// the queue's room to grow).
const SLOT_BYTES: usize = 2 * 80 + 120 + 24 + 2 * 40;

/// Bytes charged for an entry: the entry itself plus its key, held in the map and the queue.
fn weight_of(map_key: &str, entry: &Entry) -> usize {
    entry.weight() + 2 * (map_key.len() + 16) + SLOT_BYTES
}

/// Queue length past which dead references are dropped: half a reference per live entry,
/// plus slack so that a small store does not compact on every put.
fn compaction_threshold(live: usize) -> usize {
    live + live / 2 + 1024
}

impl Inner {
    fn sub_used(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    fn sub_entries(&self, n: u64) {
        let _ = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some(e.saturating_sub(n))
            });
    }

    fn enqueue(&self, queued: QueuedRef) {
        let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        clock.push_back(queued);
        // References to removed or replaced entries pile up, and each dead `Weak` keeps its
        // entry's allocation (about 470 bytes) and its key string alive outside the budget:
        // drop them once they are a third of the queue. After a compaction the queue holds
        // about `live` references, so the next one comes at least `live / 2 + 1024` pushes
        // later: O(1) amortised, and at most ~0.5 dead references per live entry.
        if clock.len() > compaction_threshold(self.entries.load(Ordering::Relaxed) as usize) {
            clock.retain(|r| r.entry.strong_count() > 0);
        }
    }

    fn evict_to_budget(&self) {
        while self.used.load(Ordering::Relaxed) > self.max_bytes as u64 {
            let next = {
                let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
                clock.pop_front()
            };
            let Some(r) = next else { return };
            let Some(entry) = r.entry.upgrade() else {
                continue;
            };
            if entry.last_access_secs() > r.queued_at {
                // Read since it was queued: a second chance at the back.
                let now = clock::now_millis() / 1000;
                let mut clock = self.clock.lock().unwrap_or_else(|e| e.into_inner());
                // Requeued with `now`, so a second pass evicts it unless read again later:
                // the loop ends even when every entry is hot.
                clock.push_back(QueuedRef {
                    queued_at: now,
                    ..r
                });
                continue;
            }
            self.evict_one(&r, &entry);
        }
    }

    fn evict_one(&self, r: &QueuedRef, entry: &Arc<Entry>) {
        let mut freed = 0u64;
        let mut emptied = false;
        if let Some(mut slot) = self.map.get_mut(&*r.key) {
            if let Some(variants) = slot.variants.get(&r.variant) {
                let kept: Vec<Arc<Entry>> = variants
                    .iter()
                    .filter(|e| !Arc::ptr_eq(e, entry))
                    .cloned()
                    .collect();
                if kept.len() != variants.len() {
                    freed = weight_of(&r.key, entry) as u64;
                    if kept.is_empty() {
                        slot.variants.remove(&r.variant);
                    } else {
                        slot.variants.insert(r.variant, kept.into());
                    }
                }
            }
            emptied = slot.variants.is_empty();
        }
        if emptied {
            self.map
                .remove_if(&*r.key, |_, slot| slot.variants.is_empty());
        }
        if freed > 0 {
            self.sub_used(freed);
            self.sub_entries(1);
            self.evictions.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tower_response_cache_evictions_total").increment(1);
        }
    }

    fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.load(Ordering::Relaxed) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.sweeper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let interval = self.sweep_interval;
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                MemoryStore { inner }.sweep_expired();
            }
        });
    }
}

impl MemoryStore {
    /// Remove every entry, in every namespace.
    pub fn clear(&self) -> u64 {
        self.remove_where(|_| false, |_| true)
    }

    /// Remove every expired entry now (the background sweeper calls this periodically).
    pub fn sweep_expired(&self) -> u64 {
        let now = clock::now_millis();
        self.remove_where(|_| false, |e| e.is_dead_at(now))
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        let found = self.get_now(key);
        Box::pin(std::future::ready(Ok(found)))
    }

    fn try_get_now(&self, key: StoreKey<'_>) -> Option<Option<Variants>> {
        Some(self.get_now(key))
    }

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>, _token: u64) -> StoreFuture<'a, ()> {
        // Applied now, not when polled: see the ban rule on `Store`.
        self.put_now(key, entry);
        Box::pin(std::future::ready(Ok(())))
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        let removed = match pattern.literal() {
            Some(literal) => self.remove_key(&map_key(namespace, literal)),
            None => {
                let prefix_len = namespace.len() + 1;
                self.remove_where(
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
        let now = clock::now_millis();
        let mut marked = 0;
        for mut slot in self.inner.map.iter_mut() {
            if !in_namespace(slot.key(), namespace)
                || !pattern.matches(&slot.key().as_bytes()[namespace.len() + 1..])
            {
                continue;
            }
            for variants in slot.value_mut().variants.values_mut() {
                let expired: Vec<Arc<Entry>> = variants
                    .iter()
                    .map(|e| {
                        marked += 1;
                        if e.is_fresh_at(now) {
                            Arc::new(e.expired_at(now))
                        } else {
                            e.clone()
                        }
                    })
                    .collect();
                *variants = expired.into();
            }
        }
        // Entries with no stale window are of no use once expired: remove them now.
        self.remove_where(|key| !in_namespace(key, namespace), |e| e.is_dead_at(now));
        Box::pin(std::future::ready(Ok(marked)))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        let removed = self.remove_where(
            |key| !in_namespace(key, namespace),
            |e| e.tags().iter().any(|t| t == tag),
        );
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        let removed = self.remove_where(|key| !in_namespace(key, namespace), |_| true);
        Box::pin(std::future::ready(Ok(removed)))
    }

    fn backend(&self) -> Backend {
        Backend::Memory
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            entries: self.inner.entries.load(Ordering::Relaxed),
            bytes: self.inner.used.load(Ordering::Relaxed),
            evictions: self.inner.evictions.load(Ordering::Relaxed),
            circuit_openings: 0,
        }
    }
}

fn in_namespace(key: &str, namespace: &str) -> bool {
    key.len() > namespace.len()
        && key.starts_with(namespace)
        && key.as_bytes()[namespace.len()] == b':'
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, StatusCode};

    fn entry(body_len: usize, ttl_secs: u64) -> Arc<Entry> {
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from(vec![b'x'; body_len]),
            Duration::from_secs(ttl_secs),
        ))
    }

    fn key(logical: &str) -> StoreKey<'_> {
        StoreKey {
            namespace: "ns",
            logical,
            variant: 1,
        }
    }

    #[test]
    fn a_flood_of_unique_keys_stays_within_the_budget() {
        let store = MemoryStore::builder().max_bytes(1 << 20).build();
        for i in 0..100_000 {
            let logical = format!("/flood/{i}/{}", "k".repeat(i % 300));
            store.put_now(key(&logical), entry(i % 2000, 60));
            assert!(store.stats().bytes <= 1 << 20, "over budget after {i}");
        }
        let stats = store.stats();
        assert!(stats.evictions > 90_000, "{stats:?}");
        assert!(stats.entries > 100, "{stats:?}");
        // The eviction queue does not grow without bound either.
        let queue = store.inner.clock.lock().unwrap().len() as u64;
        assert!(
            queue as usize <= compaction_threshold(stats.entries as usize) + 1,
            "{queue} refs for {stats:?}"
        );
    }

    #[test]
    fn dead_references_stay_under_half_a_live_entry() {
        // Many live entries, each replaced again and again (or removed and stored again, as
        // an unsafe request's invalidation does): every replaced entry leaves a dead
        // reference, which keeps its allocation until the queue is compacted.
        let store = MemoryStore::new();
        let live = 10_000;
        let started = std::time::Instant::now();
        for round in 0..10 {
            for i in 0..live {
                let logical = format!("/live/{i}");
                if round % 2 == 1 {
                    store.remove_key(&map_key("ns", &logical));
                }
                store.put_now(key(&logical), entry(10, 60));
                let queue = store.inner.clock.lock().unwrap().len();
                let entries = store.stats().entries as usize;
                assert!(
                    queue <= entries + entries / 2 + 1025,
                    "{queue} refs for {entries} entries"
                );
            }
        }
        assert_eq!(store.stats().entries, live as u64);
        let dead = store
            .inner
            .clock
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.entry.strong_count() == 0)
            .count();
        assert!(dead <= live / 2 + 1025, "{dead} dead refs");
        // Amortised O(1): 100 000 puts in well under a second in a release build.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn replacing_one_key_again_and_again_keeps_the_queue_small() {
        let store = MemoryStore::new();
        let started = std::time::Instant::now();
        for _ in 0..20_000 {
            store.put_now(key("/hot"), entry(10, 60));
        }
        let queue = store.inner.clock.lock().unwrap().len();
        assert!(queue <= 1025 + 2, "{queue} queue references for one entry");
        // Quadratic behaviour took seconds here; linear takes milliseconds.
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn recently_read_entries_survive_eviction() {
        let store = MemoryStore::builder().max_bytes(64 * 1024).build();
        store.put_now(key("/hot"), entry(1000, 60));
        for i in 0..500 {
            // The hot key is read between puts; its read time must move past its queue time.
            if let Some(slot) = store.inner.map.get("ns:/hot") {
                slot.variants[&1][0].touch(u64::MAX);
            }
            store.put_now(key(&format!("/cold/{i}")), entry(1000, 60));
        }
        assert!(store.get_now(key("/hot")).is_some());
        assert!(store.get_now(key("/cold/0")).is_none());
    }

    #[test]
    fn entries_too_big_for_the_budget_are_refused() {
        let store = MemoryStore::builder().max_bytes(10_000).build();
        assert!(!store.put_now(key("/big"), entry(5000, 60)));
        assert!(store.put_now(key("/small"), entry(100, 60)));
        assert_eq!(store.stats().entries, 1);
    }

    #[test]
    fn replacing_an_entry_keeps_the_accounting_exact() {
        let store = MemoryStore::builder().build();
        store.put_now(key("/a"), entry(100, 60));
        let once = store.stats();
        for _ in 0..10 {
            store.put_now(key("/a"), entry(100, 60));
        }
        assert_eq!(store.stats().bytes, once.bytes);
        assert_eq!(store.stats().entries, 1);
        store.remove_key("ns:/a");
        assert_eq!(
            store.stats(),
            StoreStats {
                entries: 0,
                bytes: 0,
                evictions: 0,
                circuit_openings: 0,
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_in_the_background() {
        let store = MemoryStore::builder()
            .sweep_interval(Duration::from_secs(5))
            .build();
        store.put_now(key("/short"), entry(10, 2));
        store.put_now(key("/long"), entry(10, 600));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(store.stats().entries, 1);
        assert!(store.get_now(key("/short")).is_none());
        assert!(store.get_now(key("/long")).is_some());
    }

    #[tokio::test]
    async fn namespaces_are_kept_apart() {
        let store = MemoryStore::new();
        let a = StoreKey {
            namespace: "a",
            logical: "/x",
            variant: 1,
        };
        let b = StoreKey {
            namespace: "b",
            logical: "/x",
            variant: 1,
        };
        store.put_now(a, entry(1, 60));
        store.put_now(b, entry(1, 60));
        assert_eq!(store.invalidate("a", &Pattern::new("*")).await.unwrap(), 1);
        assert_eq!(store.invalidate_all("a").await.unwrap(), 0);
        assert!(store.get_now(b).is_some());
        assert_eq!(store.invalidate("b", &Pattern::new("/x")).await.unwrap(), 1);
    }

    fn variant_entry(hash: u64) -> Arc<Entry> {
        Arc::new(
            Entry::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from_static(b"v"),
                Duration::from_secs(60),
            )
            .with_vary(crate::entry::Vary {
                names: vec![http::header::USER_AGENT],
                values: Bytes::copy_from_slice(&hash.to_be_bytes()),
            }),
        )
    }

    /// A hit on the variant with this vary hash, as the handle records it.
    fn read_variant(store: &MemoryStore, hash: u64) -> bool {
        let Some(variants) = store.get_now(key("/v")) else {
            return false;
        };
        let Some(entry) = variants
            .iter()
            .find(|e| e.vary().values[..] == hash.to_be_bytes())
        else {
            return false;
        };
        entry.touch(clock::now_millis() / 1000);
        true
    }

    #[tokio::test(start_paused = true)]
    async fn a_hot_variant_outlives_a_flood_of_junk_variants() {
        let store = MemoryStore::new();
        store.put_now(key("/v"), variant_entry(0));
        // Junk writes a few a second, the hot variant read between them.
        for junk in 1..=40 {
            tokio::time::advance(Duration::from_millis(300)).await;
            assert!(
                read_variant(&store, 0),
                "hot variant evicted before junk {junk}"
            );
            store.put_now(key("/v"), variant_entry(junk));
        }
        // Then many in the very second of its last read: the tie goes against the junk.
        tokio::time::advance(Duration::from_secs(1)).await;
        for junk in 100..140 {
            assert!(
                read_variant(&store, 0),
                "hot variant evicted before junk {junk}"
            );
            store.put_now(key("/v"), variant_entry(junk));
        }
        assert!(read_variant(&store, 0));
        let variants = store.get_now(key("/v")).unwrap();
        assert_eq!(variants.len(), MAX_VARY_VARIANTS);
        // The newest junk is kept, the oldest went; the accounting followed.
        assert!(variants
            .iter()
            .any(|e| e.vary().values[..] == 139u64.to_be_bytes()));
        assert!(!variants
            .iter()
            .any(|e| e.vary().values[..] == 1u64.to_be_bytes()));
        assert_eq!(store.stats().entries, MAX_VARY_VARIANTS as u64);
        let weight: u64 = variants.iter().map(|e| weight_of("ns:/v", e) as u64).sum();
        assert_eq!(store.stats().bytes, weight);
    }

    #[tokio::test(start_paused = true)]
    async fn unread_variants_go_oldest_first() {
        let store = MemoryStore::new();
        for hash in 0..MAX_VARY_VARIANTS as u64 + 3 {
            store.put_now(key("/v"), variant_entry(hash));
            tokio::time::advance(Duration::from_millis(400)).await;
        }
        let variants = store.get_now(key("/v")).unwrap();
        let kept: Vec<u64> = variants
            .iter()
            .map(|e| u64::from_be_bytes(e.vary().values[..].try_into().unwrap()))
            .collect();
        assert_eq!(kept, (3..MAX_VARY_VARIANTS as u64 + 3).collect::<Vec<_>>());
    }
}
