//! Keeping a [`MemoryStore`](super::MemoryStore) within its byte budget: what an entry
//! weighs, the CLOCK queue that picks what to evict (an entry read since it was queued gets
//! a second chance), and the sweeper that drops expired entries in the background.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::{Inner, MemoryStore};
use crate::clock;
use crate::entry::Entry;

/// A reference in the CLOCK queue.
pub(super) struct QueuedRef {
    pub(super) key: Box<str>,
    pub(super) variant: u64,
    /// The very entry queued: a replaced entry's reference dies with it.
    pub(super) entry: Weak<Entry>,
    pub(super) queued_at: u64,
}

/// What the store itself holds per entry, besides the entry and its key strings: a map slot
/// (80 bytes, with room to grow: twice that), the key's variant map (about 120 bytes), the
/// variants list behind its `Arc` (24), and the eviction queue's reference (40, twice with
/// the queue's room to grow).
const SLOT_BYTES: usize = 2 * 80 + 120 + 24 + 2 * 40;

/// Bytes charged for an entry: the entry itself plus its key, held in the map and the queue.
pub(super) fn weight_of(map_key: &str, entry: &Entry) -> usize {
    entry.weight() + 2 * (map_key.len() + 16) + SLOT_BYTES
}

/// Queue length past which dead references are dropped: half a reference per live entry,
/// plus slack so that a small store does not compact on every put.
pub(super) fn compaction_threshold(live: usize) -> usize {
    live + live / 2 + 1024
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

    pub(super) fn enqueue(&self, queued: QueuedRef) {
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

    pub(super) fn evict_to_budget(&self) {
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

    pub(super) fn ensure_sweeper(self: &Arc<Self>) {
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
