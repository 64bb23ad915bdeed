//! Keeping a [`MemoryStore`] within its byte budget: what an entry
//! weighs, how the shared policy's choices are applied to the map (`store::policy` decides
//! what to admit and what leaves), what each removal is counted as, and the sweeper that
//! drops expired entries in the background.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::{Inner, MemoryStore};
use crate::clock;
use crate::entry::Entry;
use crate::store::policy::{Admission, Resident, Victim};

/// What the store itself holds per entry, besides the entry and its key strings: a map slot
/// (48 bytes: the key's box and its variants, one of them inline; twice, with the map's
/// room to grow), a share of a variant table when a key has several (64), the variants
/// list behind its `Arc` (24), the policy queue's reference (48, twice with the queue's room
/// to grow) and its ghost once it leaves the small queue (32).
const SLOT_BYTES: usize = 2 * 48 + 64 + 24 + 2 * 48 + 32;

/// Bytes charged for an entry: the entry itself plus its key, held once (behind an `Arc`
/// the map and the queue share: its counts and the allocator's).
pub(super) fn weight_of(map_key: &str, entry: &Entry) -> usize {
    entry.weight() + map_key.len() + 32 + SLOT_BYTES
}

/// Why entries left the store, counted.
#[derive(Debug, Default)]
pub(super) struct Removals {
    /// To stay within the budget, or the variant cap.
    pub(super) capacity: AtomicU64,
    /// Expired past any stale window (swept, or found dead when a victim was chosen).
    pub(super) expiry: AtomicU64,
    /// Invalidated (by pattern, tag, namespace, or a clear).
    pub(super) invalidation: AtomicU64,
    /// Stores refused: too large for the budget, or less wanted than what they would push out.
    pub(super) refused: AtomicU64,
}

/// Why an entry leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    Capacity,
    Expiry,
    Invalidation,
}

impl Removals {
    pub(super) fn count(&self, cause: Cause, n: u64) {
        if n == 0 {
            return;
        }
        let counter = match cause {
            Cause::Capacity => {
                metrics::counter!("tower_response_cache_evictions_total").increment(n);
                &self.capacity
            }
            Cause::Expiry => {
                metrics::counter!("tower_response_cache_expirations_total").increment(n);
                &self.expiry
            }
            Cause::Invalidation => &self.invalidation,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("tower_response_cache_admissions_refused_total").increment(1);
    }
}

impl Inner {
    pub(super) fn sub_used(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    pub(super) fn sub_entries(&self, n: u64) {
        let _ = self
            .entries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |e| {
                Some(e.saturating_sub(n))
            });
    }

    fn over_budget(&self) -> u64 {
        self.used
            .load(Ordering::Relaxed)
            .saturating_sub(self.max_bytes as u64)
    }

    fn policy(&self) -> std::sync::MutexGuard<'_, crate::store::policy::Policy> {
        self.policy.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The policy's identity for one entry (sketch and ghost queue): its key, variant and
    /// `Vary` values. Each `Vary` variant counts for itself: junk values of a popular URL
    /// (a header a client chooses) neither inherit its popularity nor come back from its
    /// ghost.
    pub(super) fn hash_of(&self, map_key: &str, variant: u64, entry: &Entry) -> u64 {
        self.hasher
            .hash_one((map_key, variant, &entry.vary().values[..]))
    }

    /// Queue `entry`, just stored under `map_key`, and apply what the policy decides;
    /// returns whether the entry stays. `contest`: whether it may be refused.
    pub(super) fn admit(
        &self,
        map_key: Arc<str>,
        variant: u64,
        entry: &Arc<Entry>,
        weight: u64,
        contest: bool,
    ) -> bool {
        let hash = self.hash_of(&map_key, variant, entry);
        let resident = Resident::new(map_key.clone(), variant, hash, weight, entry);
        let admission = {
            let mut policy = self.policy();
            let live = self.entries.load(Ordering::Relaxed) as usize;
            let decision = policy.admit(resident, self.over_budget(), contest, live);
            policy.compact_if_needed(live);
            decision
        };
        match admission {
            Admission::Admitted(victims) => {
                self.evict(victims);
                self.evict_to_budget();
                true
            }
            Admission::Refused => {
                self.remove_entry(&map_key, variant, entry);
                self.removals.refuse();
                false
            }
        }
    }

    /// Evict until within the budget (concurrent stores may have pushed it over).
    pub(super) fn evict_to_budget(&self) {
        loop {
            let over = self.over_budget();
            if over == 0 {
                return;
            }
            let victims = self.policy().shrink(over);
            if victims.is_empty() {
                return;
            }
            self.evict(victims);
        }
    }

    fn evict(&self, victims: Vec<Victim>) {
        let now = clock::now_millis();
        for Victim { resident, entry } in victims {
            if self.remove_entry(&resident.key, resident.variant, &entry) {
                let cause = if entry.is_dead_at(now) {
                    Cause::Expiry
                } else {
                    Cause::Capacity
                };
                self.removals.count(cause, 1);
            }
        }
    }

    /// Remove this very entry (not a replacement of it); returns whether it was there.
    fn remove_entry(&self, key: &str, variant: u64, entry: &Arc<Entry>) -> bool {
        let mut freed = 0u64;
        let mut emptied = false;
        if let Some(mut slot) = self.map.get_mut(key) {
            if let Some(variants) = slot.variants.get(&variant) {
                let kept: Vec<Arc<Entry>> = variants
                    .iter()
                    .filter(|e| !Arc::ptr_eq(e, entry))
                    .cloned()
                    .collect();
                if kept.len() != variants.len() {
                    freed = weight_of(key, entry) as u64;
                    if kept.is_empty() {
                        slot.variants.remove(&variant);
                    } else {
                        slot.variants.insert(variant, kept.into());
                    }
                }
            }
            emptied = slot.variants.is_empty();
        }
        if emptied {
            self.map.remove_if(key, |_, slot| slot.variants.is_empty());
        }
        if freed > 0 {
            self.sub_used(freed);
            self.sub_entries(1);
        }
        freed > 0
    }

    /// Start the sweeper on this runtime, unless one is running: none has started yet, or
    /// the one that did has missed three beats (its runtime was dropped or is no longer
    /// polled). A store's first write may come from a runtime that goes long before the
    /// store; without a sweeper, expired entries would be held until capacity pushed them
    /// out. A write pays one load and one clock read.
    pub(super) fn ensure_sweeper(self: &Arc<Self>) {
        let interval = self.sweep_interval;
        let now = clock::now_millis();
        let Some(generation) = self.sweeper.claim(now, interval) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.sweeper.release(generation);
            return;
        };
        let weak: Weak<Inner> = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                // A sweeper started since (this one missed its beats) takes over.
                if !inner.sweeper.beat(generation, clock::now_millis()) {
                    return;
                }
                MemoryStore { inner }.sweep_expired();
            }
        });
    }
}

/// The sweeper's heartbeat: which sweeper is the current one, and when it last swept.
#[derive(Debug, Default)]
pub(super) struct Sweeper {
    /// When the current sweeper last beat, in clock milliseconds; 0: none is running.
    beat_ms: AtomicU64,
    /// Counts the sweepers started: only the latest sweeps.
    generation: AtomicU64,
}

impl Sweeper {
    /// Whether a new sweeper must start at `now_ms` (none runs, or the one that does missed
    /// three beats of `interval`); if so the caller starts it, as this generation.
    ///
    /// A beat as far ahead of `now_ms` counts as missed too: the clock is the runtime's,
    /// and a paused runtime (a test's) that ran ahead and went leaves beats in the future
    /// of the next writer's clock.
    fn claim(&self, now_ms: u64, interval: Duration) -> Option<u64> {
        let beat = self.beat_ms.load(Ordering::Relaxed);
        let missed = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(3);
        if beat != 0 && now_ms.abs_diff(beat) < missed {
            return None;
        }
        // One writer starts it; the others see the fresh beat.
        self.beat_ms
            .compare_exchange(beat, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        Some(self.generation.fetch_add(1, Ordering::AcqRel) + 1)
    }

    /// No runtime to start on: the next write tries again.
    fn release(&self, generation: u64) {
        if self.generation.load(Ordering::Acquire) == generation {
            self.beat_ms.store(0, Ordering::Release);
        }
    }

    /// Sweeper `generation` beats at `now_ms`: whether it is still the current one.
    fn beat(&self, generation: u64, now_ms: u64) -> bool {
        if self.generation.load(Ordering::Acquire) != generation {
            return false;
        }
        self.beat_ms.store(now_ms.max(1), Ordering::Release);
        true
    }
}
