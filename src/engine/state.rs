//! The engine's state, one per handle: the store, the namespace and the defaults entries
//! are stored with, the ban log, the flights in the air, the fill budget, hit-for-miss and
//! the counters. [`Engine`] holds it behind one `Arc`;
//! [`CacheHandle`](crate::CacheHandle) is the application's façade over an `Engine`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::ban::BanLog;
use super::coalesce::Coalescer;
use super::fill::Budget;
use crate::stats::{Counters, Outcome};
use crate::store::{Backend, Store};

/// What every clone of one handle shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) namespace: Box<str>,
    pub(crate) ttl: Duration,
    pub(crate) coalesce_timeout: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
    pub(crate) hit_for_miss_ttl: Duration,
    pub(crate) bans: BanLog,
    pub(crate) flights: Arc<Coalescer>,
    pub(crate) fill_budget: Arc<Budget>,
    /// Keys whose last response could not be stored (hash of key → until when): their
    /// misses go straight to the origin instead of queueing behind each other. Hashed
    /// with a per-process random seed: nobody outside can aim a collision at a key.
    pub(crate) hit_for_miss: dashmap::DashMap<u64, tokio::time::Instant>,
    pub(crate) hit_for_miss_seed: ahash::RandomState,
    pub(crate) counters: Counters,
}

/// The engine: its state behind one `Arc`. Cheap to clone: a background refresh, a fill
/// or a subscription to the store's events holds one of its own.
#[derive(Clone)]
pub(crate) struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    pub(crate) fn new(shared: Shared) -> Engine {
        Engine {
            shared: Arc::new(shared),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A reference that does not keep the engine alive (for tasks that end with it).
    pub(crate) fn downgrade(&self) -> Weak<Shared> {
        Arc::downgrade(&self.shared)
    }

    /// Count what one request came to (adapters count here, not in the counters).
    #[inline]
    pub(crate) fn count(&self, outcome: Outcome) {
        self.shared.counters.count(outcome);
    }

    /// Which store answers now.
    pub(crate) fn backend(&self) -> Backend {
        self.shared.store.backend()
    }

    /// The namespace every key is stored under.
    pub(crate) fn namespace(&self) -> &str {
        &self.shared.namespace
    }
}
