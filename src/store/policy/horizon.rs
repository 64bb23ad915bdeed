//! How far back one store's own stores reach on the process's clock.
//!
//! Read stamps count the stores of every memory store in the process (`usage.rs`: one
//! clock, so a hit stamps without knowing its store). A rule that asks "unread for this
//! many of *this store's* stores" must not count a busy neighbour's (a near cache, a
//! fallback): it looks up what the process's clock read when this store had taken that
//! many fewer. Marks are kept every 1/64 of the longest look-back asked, so the answer is
//! at most that much early (the horizon that long later), in constant memory.

use std::collections::VecDeque;

/// Marks kept per look-back asked, and at most in all.
const MARKS_PER_SPAN: u64 = 64;
const MAX_MARKS: usize = 4 * MARKS_PER_SPAN as usize;

/// This store's stores, and the process's clock at some of them.
#[derive(Default)]
pub(crate) struct Horizon {
    /// Stores this store took.
    stores: u64,
    /// `(stores, clock)` at marks, oldest first.
    marks: VecDeque<(u64, u64)>,
}

impl Horizon {
    /// One store taken here, with the process's clock at `clock`; `span` is the longest
    /// look-back that will be asked (it sets how often a mark is kept).
    pub(crate) fn record(&mut self, clock: u64, span: u64) {
        self.stores += 1;
        let step = (span / MARKS_PER_SPAN).max(1);
        let due = self
            .marks
            .back()
            .is_none_or(|&(stores, _)| self.stores - stores >= step);
        if due {
            if self.marks.len() == MAX_MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back((self.stores, clock));
        }
    }

    /// The process's clock when this store had taken `span` fewer stores than now (or a
    /// little earlier); `None` when it has not taken that many, or the marks do not reach.
    pub(crate) fn clock_back(&self, span: u64) -> Option<u64> {
        let target = self.stores.checked_sub(span)?;
        let after = self.marks.partition_point(|&(stores, _)| stores <= target);
        after.checked_sub(1).map(|i| self.marks[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_back_by_own_stores_whatever_the_clock_did_in_between() {
        let mut horizon = Horizon::default();
        // Each store here comes after ten elsewhere: the clock reads 10, 20, 30...
        for n in 1..=1000u64 {
            horizon.record(n * 10, 100);
        }
        assert_eq!(horizon.clock_back(100), Some(900 * 10));
        // Marks every 100/64 = 1 store: exact. Further back than the marks reach: None.
        assert_eq!(horizon.clock_back(1000), None);
        assert_eq!(horizon.clock_back(2000), None);
    }

    #[test]
    fn a_long_look_back_is_answered_at_most_a_step_early() {
        let mut horizon = Horizon::default();
        for n in 1..=100_000u64 {
            horizon.record(n, 6400);
        }
        // One mark every 100 stores: the answer is the mark at or before 93 600.
        let back = horizon.clock_back(6400).unwrap();
        assert!((93_500..=93_600).contains(&back), "{back}");
        assert_eq!(horizon.clock_back(0), Some(100_000 - 99));
    }
}
