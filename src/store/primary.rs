//! [`Primary`]: what a [`FallbackStore`](super::FallbackStore) needs of the store it falls
//! back from, beyond [`Store`].
//!
//! The circuit breaker, the queue of invalidations and the replay do not depend on Redis:
//! they need a store that can fail, a way to ask whether it answers (and whether it is
//! still the same data set), and a few hooks around the replay. Those hooks live here, so
//! the fallback's state machine is written once against this trait and can be tested with
//! a primary that is not Redis. [`RedisStore`](super::RedisStore) is the usual primary.

use std::sync::Arc;

use super::{Store, StoreError, StoreFuture, StoreStats};

/// Where a [`Primary`] reports the outcome of a call no request waits for (see
/// [`Primary::set_outcome_sink`]).
pub type OutcomeSink = Arc<dyn Fn(Result<(), &StoreError>) + Send + Sync>;

/// The store a [`FallbackStore`](super::FallbackStore) serves from while it answers
/// (usually a [`RedisStore`](super::RedisStore)), falling back to memory while it does not.
///
/// A primary that also implements [`Coordination`](super::Coordination) (the built-in
/// stores) is driven through it: its write tokens, its listener for other processes'
/// invalidations and its fleet-wide flights pass through the fallback store. Any other is
/// driven through [`Store`] alone, like a store the handle holds directly: it must apply a
/// write when `put` is called (see [`Store`]).
///
/// Only [`run_id`](Primary::run_id) must be written; the other methods have defaults that
/// suit a primary with no replicas, no write tokens and no background calls.
pub trait Primary: Store + Clone {
    /// What names the data set the primary serves now (Redis: its `run_id`, every
    /// primary's in a cluster), or an error when it cannot be reached. The fallback store's
    /// probe calls it: an answer heals an open circuit (after the replay), and an answer
    /// that differs from the last one means the primary restarted or was replaced, so it
    /// may hold entries from before recent invalidations, which are replayed before it is
    /// read again.
    fn run_id(&self) -> StoreFuture<'_, String>;

    /// Send the outcomes of calls no caller waits for (background work) to `sink`: the
    /// fallback store counts them like a request's, an error towards opening the circuit,
    /// an answer ending a run of errors (the circuit opens on failures in a row). The
    /// default has no such calls.
    fn set_outcome_sink(&self, sink: OutcomeSink) {
        let _ = sink;
    }

    /// Before the replay that heals an open circuit: make sure writes fetched before the
    /// outage are refused (Redis raises its invalidation counters past every write token
    /// this process handed out). The default has nothing to restore.
    fn restore_generation(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// A handle for calls the fallback store's probe makes (asking whether the primary
    /// answers, restoring its generation, the replay, the wait for replicas): they run on
    /// the fallback store's thread. Redis: a handle on the connection of the store's own
    /// tasks, so that the connection requests use is never opened (and driven) on that
    /// thread. The default is a clone.
    fn for_tasks(&self) -> Self {
        self.clone()
    }

    /// The primary answers again after an outage and the circuit is about to close: the
    /// connections requests use, which the probe does not (see
    /// [`for_tasks`](Primary::for_tasks)), may have broken meanwhile; open them afresh, on
    /// the next request's runtime, so the first requests do not find them broken. The
    /// default has none.
    fn reconnect(&self) {}

    /// A handle whose invalidations do not wait for replicas one by one: the replay sends
    /// many and waits once, with [`wait_for_replicas`](Primary::wait_for_replicas). The
    /// default is a clone.
    fn unwaited(&self) -> Self {
        self.clone()
    }

    /// Wait until the invalidations sent through [`unwaited`](Primary::unwaited) reached
    /// the replicas; an error for which [`StoreError::is_not_replicated`] holds is only
    /// logged. The default has no replicas to wait for.
    fn wait_for_replicas(&self) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Whether a write that took `token` must be refused by the memory fallback, because an
    /// invalidation another process made since it was fetched has been heard here. The
    /// default refuses none (no other process shares the primary's invalidations).
    fn refuses_locally(&self, token: u64) -> bool {
        let _ = token;
        false
    }

    /// Add what the primary counts beyond the fallback's own `stats` (Redis: its near
    /// cache). The default adds nothing.
    fn add_stats(&self, stats: StoreStats) -> StoreStats {
        stats
    }
}
