//! [`Budget`]: the bytes all fills of one handle may record at once.
//!
//! Two counts, because they bound different things:
//! - **recording**: bytes of bodies being recorded for the store. A fill may only record
//!   while this stays under the limit, and gives its bytes back the moment its body ends
//!   (stored or not): a client that holds its response without reading cannot keep the
//!   cache from recording other answers.
//! - **passing**: bytes a fill that no longer records holds for readers that are behind.
//!   They only pace fills (past the limit a fill runs one frame ahead of its slowest
//!   reader instead of a window), so they never refuse a recording either.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held by all fills of one handle, against a limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    recording: AtomicUsize,
    passing: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Budget {
        Budget {
            limit,
            recording: AtomicUsize::new(0),
            passing: AtomicUsize::new(0),
        }
    }

    /// Reserve `bytes` for recording; `false` when that would pass the limit.
    pub(super) fn try_record(&self, bytes: usize) -> bool {
        let mut used = self.recording.load(Ordering::Relaxed);
        loop {
            let Some(next) = used.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self.recording.compare_exchange_weak(
                used,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => used = now,
            }
        }
    }

    pub(super) fn release_recorded(&self, bytes: usize) {
        self.recording.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(super) fn hold_passing(&self, bytes: usize) {
        self.passing.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn release_passing(&self, bytes: usize) {
        self.passing.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Whether all fills together still hold less than the limit (recorded and passing).
    pub(super) fn has_room(&self) -> bool {
        self.recording
            .load(Ordering::Relaxed)
            .saturating_add(self.passing.load(Ordering::Relaxed))
            <= self.limit
    }

    /// Bytes held by fills right now, recorded and passing.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.recording.load(Ordering::Relaxed) + self.passing.load(Ordering::Relaxed)
    }

    /// Bytes reserved for recording right now.
    #[cfg(test)]
    pub(crate) fn recording(&self) -> usize {
        self.recording.load(Ordering::Relaxed)
    }
}
