//! A ghost queue: hashes of entries recently dropped from one of the queues, within a byte
//! budget. A key stored again while its ghost remains was dropped too early: it goes
//! straight to the main queue, and which ghost held it tells the policy which queue was
//! too short.

use std::collections::{HashMap, VecDeque};

/// Remembered hashes, oldest first, with their weights.
pub(crate) struct Ghost {
    order: VecDeque<(u64, u64)>,
    present: HashMap<u64, u32, ahash::RandomState>,
    bytes: u64,
    max_bytes: u64,
}

impl Ghost {
    pub(crate) fn new(max_bytes: u64) -> Ghost {
        Ghost {
            order: VecDeque::new(),
            present: HashMap::with_hasher(ahash::RandomState::new()),
            bytes: 0,
            max_bytes,
        }
    }

    /// Remember `hash`, forgetting the oldest past the budget.
    pub(crate) fn remember(&mut self, hash: u64, weight: u64) {
        self.order.push_back((hash, weight));
        *self.present.entry(hash).or_default() += 1;
        self.bytes += weight;
        while self.bytes > self.max_bytes {
            let Some((old, w)) = self.order.pop_front() else {
                break;
            };
            self.bytes -= w;
            self.forget(old);
        }
    }

    /// Bytes remembered.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `hash` was remembered; it is forgotten either way.
    pub(crate) fn take(&mut self, hash: u64) -> bool {
        self.forget(hash)
    }

    fn forget(&mut self, hash: u64) -> bool {
        match self.present.get_mut(&hash) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.present.remove(&hash);
                true
            }
            None => false,
        }
    }
}
