//! [`ReplyBudget`]: the bytes of entry replies a store may hold at once.
//!
//! A read of an entry brings a whole value (up to `max_value_bytes`) into this process
//! before it can be decoded, and a process under load has many reads in flight: a thousand
//! concurrent reads of 1 MiB values hold a gigabyte that no memory budget counts. So every
//! entry read first reserves what its reply may hold (the value cap and room for the
//! index), and gives it back once the reply has arrived; it is decoded right after,
//! without waiting on anything (the decoded entry then shares the reply's buffer and lives
//! as long as the answers that send it). The budget also bounds the reads in flight, which
//! is why it is set well above one value: see `RedisStoreBuilder::reply_budget`.
//!
//! A read of several values (every variant of a URL, for a typed read) reserves for each,
//! up to the whole budget.
//!
//! A read that cannot reserve within the call deadline reads as a miss, not as an outage:
//! Redis answered nothing wrong, this process is only busy. The count of such reads is
//! [`StoreStats::reply_budget_full`](crate::StoreStats::reply_budget_full).
//!
//! Reservations are in KiB, for the worst case: a value another process wrote with a
//! larger cap, or junk under a key, can exceed it, so the budget bounds the bytes of
//! replies this process's own writes can produce.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

/// Room reserved beside the value for the variant index and the reply's framing.
const INDEX_ALLOWANCE: usize = 4 * 1024;
/// The unit of a reservation.
const UNIT: usize = 1024;

/// The bytes of entry replies in flight, bounded (see the module docs).
pub(crate) struct ReplyBudget {
    units: Semaphore,
    /// Units in all.
    total: u32,
    /// Units a read of one value reserves.
    per_read: u32,
    /// Reads that found no room within their deadline.
    full: AtomicU64,
}

impl ReplyBudget {
    /// A budget of `budget_bytes` for replies of values up to `max_value_bytes`; never less
    /// than one read's worth, so a lone read always proceeds.
    pub(crate) fn new(budget_bytes: usize, max_value_bytes: usize) -> ReplyBudget {
        let per_read = max_value_bytes
            .saturating_add(INDEX_ALLOWANCE)
            .div_ceil(UNIT)
            .min(u32::MAX as usize);
        let units = (budget_bytes / UNIT).max(per_read).min(u32::MAX as usize);
        ReplyBudget {
            units: Semaphore::new(units),
            total: units as u32,
            per_read: per_read as u32,
            full: AtomicU64::new(0),
        }
    }

    /// Room for a reply of `values` values, held until the returned permit drops; `None`
    /// (counted) when none freed up within `deadline`.
    pub(crate) async fn reserve(
        &self,
        values: usize,
        deadline: Duration,
    ) -> Option<SemaphorePermit<'_>> {
        let units = (self.per_read as usize)
            .saturating_mul(values.max(1))
            .min(self.total as usize) as u32;
        if let Ok(permit) = self.units.try_acquire_many(units) {
            return Some(permit);
        }
        match tokio::time::timeout(deadline, self.units.acquire_many(units)).await {
            Ok(Ok(permit)) => Some(permit),
            // Never closed; out of time.
            _ => {
                self.full.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("tower_response_cache_redis_reply_budget_full_total")
                    .increment(1);
                None
            }
        }
    }

    /// Reads that found no room within their deadline.
    pub(crate) fn full(&self) -> u64 {
        self.full.load(Ordering::Relaxed)
    }

    /// Reads that fit at once.
    #[cfg(test)]
    fn reads_at_once(&self) -> usize {
        self.units.available_permits() / self.per_read as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_fits_whole_reads_and_never_less_than_one() {
        let budget = ReplyBudget::new(64 << 20, 1 << 20);
        assert_eq!(budget.per_read, 1024 + 4);
        assert_eq!(budget.reads_at_once(), 63);
        let tiny = ReplyBudget::new(10, 1 << 20);
        assert_eq!(tiny.reads_at_once(), 1);
    }

    #[tokio::test]
    async fn a_read_waits_for_room_and_one_that_finds_none_in_time_is_counted() {
        let budget = ReplyBudget::new(2 * (1 << 20), 1 << 20);
        assert_eq!(budget.reads_at_once(), 1);
        let held = budget.reserve(1, Duration::from_millis(10)).await;
        assert!(held.is_some());
        // No room: out of time, counted.
        assert!(budget.reserve(1, Duration::from_millis(10)).await.is_none());
        assert_eq!(budget.full(), 1);
        // Room frees while a read waits: it proceeds.
        let waiting = budget.reserve(1, Duration::from_secs(5));
        let release = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        };
        let (got, ()) = tokio::join!(waiting, release);
        assert!(got.is_some());
        assert_eq!(budget.full(), 1);
    }

    #[tokio::test]
    async fn a_read_of_many_values_reserves_for_each_up_to_the_whole_budget() {
        let budget = ReplyBudget::new(8 << 20, 1 << 20);
        assert_eq!(budget.reads_at_once(), 7);
        let three = budget.reserve(3, Duration::from_millis(10)).await.unwrap();
        assert_eq!(budget.reads_at_once(), 4);
        drop(three);
        // Sixteen values: the whole budget, not a wait that can never end.
        let all = budget.reserve(16, Duration::from_millis(10)).await;
        assert!(all.is_some());
        assert_eq!(budget.reads_at_once(), 0);
        assert!(budget.reserve(1, Duration::from_millis(10)).await.is_none());
    }
}
