//! What a read leaves on an entry: a saturating use counter (0..=3) for the queues and a
//! read stamp for choosing among a URL's variants, packed in one relaxed atomic word.
//!
//! Stamps count writes, not time: every entry a store takes draws the next even stamp,
//! and a read is stamped with the odd number after the latest write it can see. So a read
//! after a write always stamps higher than that write, however many happen per second, and
//! an entry never read since it was stored keeps an even stamp.

use std::sync::atomic::{AtomicU64, Ordering};

/// Stores taken by any memory store in this process (the stamps' clock).
static WRITES: AtomicU64 = AtomicU64::new(0);

/// The stamps' clock now: stores taken so far by every memory store of the process.
pub(crate) fn clock() -> u64 {
    WRITES.load(Ordering::Relaxed)
}

/// Highest use count kept: a main-queue entry then survives at most three passes unread,
/// so the search for a victim stays short (S3-FIFO's and TinyUFO's cap).
pub(crate) const MAX_USES: u64 = 3;

const USES_MASK: u64 = 0b11;

/// Uses and the last read (or write) stamp of one entry.
#[derive(Debug, Default)]
pub(crate) struct Usage(AtomicU64);

impl Usage {
    /// A copy of another entry's usage (an entry rebuilt from it keeps its standing).
    pub(crate) fn copied(other: &Usage) -> Usage {
        Usage(AtomicU64::new(other.0.load(Ordering::Relaxed)))
    }

    /// Take the uses of the entry this one replaces (a new version of the same response:
    /// its key was wanted as much), keeping this one's write stamp.
    pub(crate) fn inherit_uses(&self, old: &Usage) {
        let v = self.0.load(Ordering::Relaxed);
        self.0
            .store((v & !USES_MASK) | old.uses(), Ordering::Relaxed);
    }

    /// A store read: one more use, up to [`MAX_USES`]. A relaxed load and store, not a
    /// read-modify-write: two racing reads may count once, which a frequency estimate
    /// tolerates, and a hit stays lock-free and cheap.
    #[inline]
    pub(crate) fn count_use(&self) {
        let v = self.0.load(Ordering::Relaxed);
        if v & USES_MASK < MAX_USES {
            self.0.store(v + 1, Ordering::Relaxed);
        }
    }

    /// The variant a request was answered with: stamped as read after every write so far.
    #[inline]
    pub(crate) fn stamp_read(&self) {
        let stamp = (WRITES.load(Ordering::Relaxed) << 1) | 1;
        let v = self.0.load(Ordering::Relaxed);
        let next = (stamp << 2) | (v & USES_MASK);
        if next != v {
            self.0.store(next, Ordering::Relaxed);
        }
    }

    /// Taken by a store: the next write stamp, and no uses yet.
    pub(crate) fn stamp_write(&self) {
        let stamp = (WRITES.fetch_add(1, Ordering::Relaxed) + 1) << 1;
        self.0.store(stamp << 2, Ordering::Relaxed);
    }

    pub(crate) fn uses(&self) -> u64 {
        self.0.load(Ordering::Relaxed) & USES_MASK
    }

    /// One use fewer (a pass through the main queue spends one).
    pub(crate) fn spend_use(&self) {
        let v = self.0.load(Ordering::Relaxed);
        if v & USES_MASK > 0 {
            self.0.store(v - 1, Ordering::Relaxed);
        }
    }

    /// No uses left (a pass through the main queue while recency pays spends them all).
    pub(crate) fn spend_all_uses(&self) {
        let v = self.0.load(Ordering::Relaxed);
        if v & USES_MASK > 0 {
            self.0.store(v & !USES_MASK, Ordering::Relaxed);
        }
    }

    /// The clock (stores taken by every memory store of the process) when the entry was
    /// last read, or when it was stored if never read since.
    pub(crate) fn touched_at(&self) -> u64 {
        self.stamp() >> 1
    }

    /// The last read's stamp, or the write's when never read since stored.
    pub(crate) fn stamp(&self) -> u64 {
        self.0.load(Ordering::Relaxed) >> 2
    }

    /// Whether it was read since the store took it.
    pub(crate) fn read_since_stored(&self) -> bool {
        self.stamp() & 1 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_saturate_and_stamps_order_reads_after_writes() {
        let a = Usage::default();
        a.stamp_write();
        assert!(!a.read_since_stored());
        for _ in 0..10 {
            a.count_use();
        }
        assert_eq!(a.uses(), MAX_USES);
        a.spend_use();
        assert_eq!(a.uses(), MAX_USES - 1);
        let stamp = a.stamp();
        a.spend_all_uses();
        assert_eq!(a.uses(), 0);
        assert_eq!(a.stamp(), stamp, "spending uses keeps the stamp");
        a.count_use();
        a.count_use();
        a.stamp_read();
        assert!(a.read_since_stored());
        assert_eq!(a.uses(), MAX_USES - 1, "a stamp keeps the uses");
        let b = Usage::default();
        b.stamp_write();
        assert!(b.stamp() > a.stamp(), "a later write stamps higher");
        a.stamp_read();
        assert!(a.stamp() > b.stamp(), "a read after it stamps higher again");
        let stamp = b.stamp();
        b.inherit_uses(&a);
        assert_eq!(b.uses(), a.uses(), "a new version takes the old one's uses");
        assert_eq!(b.stamp(), stamp, "and keeps its own write stamp");
    }
}
