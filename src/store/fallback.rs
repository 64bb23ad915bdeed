//! [`FallbackStore`]: Redis first, process memory when Redis fails, healing on its own.
//!
//! The primary is usually Redis, and the docs here say Redis; any [`Primary`] works (the
//! circuit, the queue and the replay only need what that trait asks for).
//!
//! Redis is optional: an outage must cost neither a failed request nor an invalidation
//! that Redis never hears of. The circuit breaker here decides when Redis is trusted, and
//! [`FallbackMode`] what the cache does while it is not: keep serving from memory
//! (bounded staleness) or step aside (no stale answer, the origin takes the load).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::background::Background;
use super::primary::Primary;
use super::recent_invalidations::RecentInvalidations;
use super::redis::RedisStore;
use super::{
    Backend, Coordination, FallbackMode, FleetEnd, FleetLease, FleetTurn, Invalidation,
    InvalidationListener, MemoryStore, Source, Store, StoreError, StoreEvent, StoreFuture,
    StoreKey, StoreStats, VariantRead, Variants,
};
use crate::entry::Entry;
use crate::pattern::Pattern;

/// How often the probe tries while invalidations are queued (when sooner than its interval).
const QUEUED_PROBE_INTERVAL: Duration = Duration::from_millis(50);

/// Redis with a memory fallback and a circuit breaker. Cheap to clone.
///
/// The primary is a [`RedisStore`] unless another [`Primary`] is given to
/// [`builder`](FallbackStore::builder): what follows says "Redis" for whichever it is. A
/// primary that is not one of the built-in stores is read and written through [`Store`]
/// alone (no write tokens, no other processes' invalidations, no fleet-wide flights).
///
/// A circuit breaker decides which store serves:
///
/// - **closed** (Redis healthy): every call goes to Redis, each within its deadline. An
///   unreachable-Redis error falls through to memory for that call and counts a failure;
///   `failure_threshold` failures in a row open the circuit, and a lost connection opens it
///   at once. Errors of the Redis calls no request waits for (the invalidation channel's
///   loss and resubscription, near-cache heartbeats, acknowledgements, token reads) count
///   the same: after a restart they are often the first to meet the new server. A
///   heartbeat that answers counts as a success, as a request's answer does: an idle
///   process whose only calls are heartbeats opens the circuit on timeouts in a row, not
///   on three scattered over hours.
/// - **open** (falling back): calls go to memory without touching Redis. With
///   [`FallbackMode::Serve`] (the default) entries written then live at most
///   `fallback_ttl` (default 30 s), because this process cannot hear other processes'
///   invalidations meanwhile: what another process invalidates may be served here until
///   it expires. With [`FallbackMode::Bypass`] nothing is read or written: every lookup is
///   a miss and goes to the origin. Invalidations apply to memory at once, are reported as
///   not having reached Redis, and are queued.
/// - a background probe `PING`s Redis every `probe_interval` while open, at once when an
///   invalidation is queued, and every 50 ms while any is (other processes may be back on
///   Redis and read what it covers: it should reach Redis as soon as this process can
///   reach it). When Redis answers,
///   the queued invalidations are replayed to it, the fallback entries are dropped, and
///   only then does the circuit close: Redis is never read before it has heard every
///   invalidation made during the outage.
///
/// While closed, the probe also watches Redis's `run_id`: a Redis that restarted may hold
/// entries from a snapshot taken before recent invalidations, so those (the last five
/// minutes' worth, at most 10 000: this process's own and those heard from other processes
/// on the channel, which may have exited since) are replayed before it is read again.
///
/// Queueing an invalidation while open and the probe's "nothing left to replay: close" are
/// one step (under the queue's lock): an invalidation made while the circuit closes is
/// either sent to Redis or replayed before Redis is read.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use std::time::Duration;
/// use tower_response_cache::{FallbackMode, FallbackStore, RedisStore};
/// use tower_response_cache::{CacheHandle, MemoryStore};
///
/// let redis = RedisStore::builder("redis://127.0.0.1:6379/0").build()?;
/// let store = FallbackStore::builder(redis, MemoryStore::new())
///     .fallback_ttl(Duration::from_secs(30))
///     .mode(FallbackMode::Bypass) // never a stale answer; the origin takes the load
///     .build()
///     .await;
/// let cache = CacheHandle::builder(store).namespace("portal").build();
/// # let _ = cache; Ok(()) }
/// ```
pub struct FallbackStore<P: Primary = RedisStore> {
    inner: Arc<Inner<P>>,
}

impl<P: Primary> Clone for FallbackStore<P> {
    fn clone(&self) -> Self {
        FallbackStore {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Builds a [`FallbackStore`].
#[must_use]
pub struct FallbackStoreBuilder<P: Primary = RedisStore> {
    primary: P,
    memory: MemoryStore,
    fallback_ttl: Duration,
    failure_threshold: u32,
    probe_interval: Duration,
    mode: FallbackMode,
}

struct Inner<P> {
    primary: P,
    /// The same primary, for the probe's calls (see [`Primary::for_tasks`]).
    tasks: P,
    memory: MemoryStore,
    open: AtomicBool,
    failures: AtomicU32,
    failure_threshold: u32,
    fallback_ttl: Duration,
    probe_interval: Duration,
    /// Serve from memory or bypass while open.
    mode: FallbackMode,
    /// Invalidations Redis has not heard yet, in order.
    pending: Mutex<Vec<(String, Invalidation)>>,
    /// Recent invalidations, replayed to a Redis that restarted.
    recent: RecentInvalidations,
    run_id: Mutex<Option<String>>,
    listener: Mutex<Option<InvalidationListener>>,
    /// Times the circuit opened (for stats and tests).
    openings: AtomicU64,
    /// Wakes the probe before its next tick: an invalidation was queued while open.
    wake: Arc<Notify>,
    /// The thread the probe runs on (see `store/background.rs`); `None` when none could be
    /// started, and the probe runs on the runtime that built the store.
    background: Option<Background>,
}

impl<P: Primary> FallbackStoreBuilder<P> {
    /// Longest life of an entry written while falling back (default 30 s).
    pub fn fallback_ttl(mut self, ttl: Duration) -> Self {
        self.fallback_ttl = ttl;
        self
    }

    /// What the cache does while Redis is unreachable (default [`FallbackMode::Serve`]):
    /// serve from memory, with entries another process invalidates meanwhile served here for
    /// up to [`fallback_ttl`](Self::fallback_ttl), or bypass the cache (every request goes
    /// to the origin, nothing is stored, no stale answer).
    pub fn mode(mut self, mode: FallbackMode) -> Self {
        self.mode = mode;
        self
    }

    /// Failures in a row that open the circuit (default 3).
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.failure_threshold = failures.max(1);
        self
    }

    /// How often the background probe checks Redis (default 500 ms; at least 1 ms).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Build the store: one `PING` decides whether to start on Redis or, at once, on
    /// memory. Never fails. Must be awaited within a Tokio runtime; the probe runs on a
    /// thread of the store's own, which ends when the store is dropped, so that runtime may
    /// be dropped or no longer polled once the store is built.
    pub async fn build(self) -> FallbackStore<P> {
        // The runtime awaiting this may go long before the store (a `block_on` at startup):
        // the probe, which replays queued invalidations and closes the circuit, must not go
        // with it.
        let background = Background::start("trc-fallback")
            .map_err(|error| {
                tracing::warn!(%error, "could not start the fallback store's thread: its probe runs on this runtime");
            })
            .ok();
        let inner = Arc::new(Inner {
            tasks: self.primary.for_tasks(),
            primary: self.primary,
            memory: self.memory,
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            failure_threshold: self.failure_threshold,
            fallback_ttl: self.fallback_ttl,
            probe_interval: self.probe_interval,
            mode: self.mode,
            pending: Mutex::new(Vec::new()),
            recent: RecentInvalidations::default(),
            run_id: Mutex::new(None),
            listener: Mutex::new(None),
            openings: AtomicU64::new(0),
            wake: Arc::new(Notify::new()),
            background,
        });
        match inner.primary.run_id().await {
            Ok(run_id) => *lock(&inner.run_id) = Some(run_id),
            Err(error) => {
                tracing::warn!(%error, "Redis is unreachable at start: serving from memory until it answers");
                inner.open_circuit();
            }
        }
        // Remote invalidations drop local entries too, and a lost channel drops them all.
        let weak = Arc::downgrade(&inner);
        let listener: InvalidationListener = Arc::new(move |event| {
            let Some(inner) = weak.upgrade() else { return };
            match event {
                StoreEvent::Remote {
                    namespace,
                    invalidation,
                    ..
                } => {
                    inner.apply_locally(namespace, invalidation);
                    // Replayed too if Redis comes back from a snapshot taken before it: the
                    // process that made it (the sync pipeline) may be gone by then.
                    inner.remember(namespace, invalidation);
                }
                StoreEvent::ChannelLost => {
                    inner.memory.clear();
                }
            }
            let listener = lock(&inner.listener).clone();
            if let Some(listener) = listener {
                listener(event);
            }
        });
        if let Some(primary) = inner.primary.coordination() {
            primary.set_listener(listener);
        }
        // Outcomes of Redis calls no request waits for count like a request's.
        let weak = Arc::downgrade(&inner);
        inner.primary.set_outcome_sink(Arc::new(move |outcome| {
            if let Some(inner) = weak.upgrade() {
                match outcome {
                    Ok(()) => inner.succeeded(),
                    Err(error) => inner.failed(error),
                }
            }
        }));
        match &inner.background {
            Some(background) => background.spawn(probe(Arc::downgrade(&inner))),
            None => drop(tokio::spawn(probe(Arc::downgrade(&inner)))),
        }
        FallbackStore { inner }
    }
}

impl<P: Primary> FallbackStore<P> {
    /// A builder combining `primary` (usually a [`RedisStore`]) with the `memory` fallback.
    pub fn builder(primary: P, memory: MemoryStore) -> FallbackStoreBuilder<P> {
        FallbackStoreBuilder {
            primary,
            memory,
            fallback_ttl: Duration::from_secs(30),
            failure_threshold: 3,
            probe_interval: Duration::from_millis(500),
            mode: FallbackMode::Serve,
        }
    }

    /// Whether the circuit is open (serving from memory).
    pub fn is_falling_back(&self) -> bool {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Invalidations waiting for Redis to return.
    pub fn pending_invalidations(&self) -> usize {
        lock(&self.inner.pending).len()
    }

    /// What the cache does while Redis is unreachable.
    pub fn mode(&self) -> FallbackMode {
        self.inner.mode
    }
}

impl<P: Primary> Inner<P> {
    /// The primary's coordination protocol, when it has one (the built-in stores).
    fn coordinated(&self) -> Option<&dyn Coordination> {
        self.primary.coordination()
    }

    fn open_circuit(&self) {
        if !self.open.swap(true, Ordering::AcqRel) {
            self.openings.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tower_response_cache_circuit_opened_total").increment(1);
            tracing::warn!("Redis circuit open: serving from memory");
        }
    }

    fn failed(&self, error: &StoreError) {
        if error.is_connection_lost() {
            // Redis may have restarted from an old snapshot: read nothing from it until the
            // probe has checked its run_id (and replayed what it may have missed).
            tracing::debug!(%error, "Redis connection lost");
            self.open_circuit();
            return;
        }
        if !error.is_unavailable() {
            return;
        }
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::debug!(%error, failures, "Redis call failed");
        if failures >= self.failure_threshold {
            self.open_circuit();
        }
    }

    fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    fn apply_locally(&self, namespace: &str, invalidation: &Invalidation) {
        // The memory store applies at call time; its future only reports the count.
        match invalidation {
            Invalidation::Pattern(p) => {
                let pattern = Pattern::new(p);
                drop(self.memory.invalidate(namespace, &pattern));
            }
            Invalidation::Tag(t) => drop(self.memory.invalidate_tag(namespace, t)),
            Invalidation::All => drop(self.memory.invalidate_all(namespace)),
        }
    }

    fn remember(&self, namespace: &str, invalidation: &Invalidation) {
        self.recent.remember(namespace, invalidation);
    }

    async fn invalidate(
        &self,
        namespace: &str,
        invalidation: Invalidation,
    ) -> Result<u64, StoreError> {
        self.remember(namespace, &invalidation);
        let local = match &invalidation {
            Invalidation::Pattern(p) => self.memory.invalidate(namespace, &Pattern::new(p)).await,
            Invalidation::Tag(t) => self.memory.invalidate_tag(namespace, t).await,
            Invalidation::All => self.memory.invalidate_all(namespace).await,
        }
        .unwrap_or(0);
        // Queue it, or see the circuit closed, in one step with the probe's "nothing
        // pending: close" (see `close_if_replayed`): an invalidation is never queued behind
        // a circuit that closes without replaying it.
        let queued = {
            let mut pending = lock(&self.pending);
            let open = self.open.load(Ordering::Acquire);
            if open {
                pending.push((namespace.to_owned(), invalidation.clone()));
            }
            open
        };
        if queued {
            // Other processes may be back on Redis already and read what this covers: the
            // probe tries now rather than at its next tick.
            self.wake.notify_one();
        }
        if !queued {
            match send(&self.primary, namespace, &invalidation).await {
                Ok(removed) => {
                    self.succeeded();
                    return Ok(removed + local);
                }
                Err(error) if error.is_not_replicated() => {
                    // Applied on the primary, which answers: nothing to replay now. Should
                    // the primary change, the probe sees a new run_id and replays it (it
                    // is remembered above).
                    self.succeeded();
                    return Err(error);
                }
                Err(error) => {
                    self.failed(&error);
                    // Whatever went wrong (unreachable, out of memory, read-only), Redis may
                    // still hold what this invalidation covers: stop reading it until the
                    // probe has replayed the invalidation.
                    {
                        let mut pending = lock(&self.pending);
                        pending.push((namespace.to_owned(), invalidation));
                        self.open_circuit();
                    }
                    return Err(StoreError::unavailable(
                        "the invalidation did not reach Redis: it applied locally and will be replayed to Redis before Redis is read again",
                        error,
                    ));
                }
            }
        }
        Err(StoreError::unavailable(
            "Redis is unreachable: the invalidation applied locally and will be replayed to Redis before it is read again",
            format!("{local} local entries removed"),
        ))
    }

    /// Soft on Redis when it is reachable; otherwise hard, like
    /// [`invalidate`](Self::invalidate) (queued, replayed as hard: the safe side).
    async fn invalidate_soft(&self, namespace: &str, pattern: &Pattern) -> Result<u64, StoreError> {
        let hard = || Invalidation::Pattern(pattern.as_str().to_owned());
        if self.open.load(Ordering::Acquire) {
            return self.invalidate(namespace, hard()).await;
        }
        match self.primary.invalidate_soft(namespace, pattern).await {
            Ok(marked) => {
                self.succeeded();
                self.remember(namespace, &hard());
                let local = self.memory.invalidate_soft(namespace, pattern).await;
                Ok(marked + local.unwrap_or(0))
            }
            Err(error) if error.is_not_replicated() => {
                self.succeeded();
                self.remember(namespace, &hard());
                drop(self.memory.invalidate_soft(namespace, pattern).await);
                Err(error)
            }
            Err(error) => {
                self.failed(&error);
                self.invalidate(namespace, hard()).await
            }
        }
    }

    /// Close the circuit if nothing is queued, in one step with [`invalidate`]'s "open:
    /// queue it" (both under the queue's lock). Returns whether it closed.
    ///
    /// [`invalidate`]: Self::invalidate
    fn close_if_replayed(&self, run_id: String) -> bool {
        let pending = lock(&self.pending);
        if !pending.is_empty() {
            return false;
        }
        *lock(&self.run_id) = Some(run_id);
        self.failures.store(0, Ordering::Release);
        self.open.store(false, Ordering::Release);
        drop(pending);
        true
    }

    /// Replay queued invalidations in order; stops at the first failure, keeping the rest.
    /// Replayed invalidations do not wait for replicas one by one (see
    /// [`Primary::unwaited`]): the probe waits once, after the circuit closed.
    async fn replay(&self) -> bool {
        let primary = self.tasks.unwaited();
        loop {
            let next = lock(&self.pending).first().cloned();
            let Some((namespace, invalidation)) = next else {
                return true;
            };
            if let Err(error) = send(&primary, &namespace, &invalidation).await {
                tracing::debug!(%error, "replaying invalidations to Redis failed; retrying later");
                return false;
            }
            lock(&self.pending).remove(0);
        }
    }
}

async fn send<P: Primary>(
    primary: &P,
    namespace: &str,
    invalidation: &Invalidation,
) -> Result<u64, StoreError> {
    match invalidation {
        Invalidation::Pattern(p) => primary.invalidate(namespace, &Pattern::new(p)).await,
        Invalidation::Tag(t) => primary.invalidate_tag(namespace, t).await,
        Invalidation::All => primary.invalidate_all(namespace).await,
    }
}

/// The background probe: heals an open circuit, and catches a restarted Redis.
async fn probe<P: Primary>(store: Weak<Inner<P>>) {
    let Some(interval) = store.upgrade().map(|i| i.probe_interval) else {
        return;
    };
    let Some(wake) = store.upgrade().map(|i| Arc::clone(&i.wake)) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let hurried = interval.min(QUEUED_PROBE_INTERVAL);
    loop {
        // While invalidations wait for the primary, other processes may be back on it
        // already and read what they cover: try again soon, not at the next tick.
        let waiting = store
            .upgrade()
            .is_some_and(|i| i.open.load(Ordering::Acquire) && !lock(&i.pending).is_empty());
        tokio::select! {
            _ = ticker.tick() => {}
            () = wake.notified() => {}
            () = tokio::time::sleep(hurried), if waiting => {}
        }
        let Some(inner) = store.upgrade() else { return };
        let run_id = inner.tasks.run_id().await;
        if inner.open.load(Ordering::Acquire) {
            let Ok(run_id) = run_id else { continue };
            let restarted = lock(&inner.run_id)
                .as_ref()
                .is_some_and(|old| *old != run_id);
            if restarted {
                queue_recent(&inner);
            }
            // A restarted Redis may have an older counter than tokens in flight: raise it
            // first, so the replayed invalidations move it past every one of them.
            if inner.tasks.restore_generation().await.is_err() {
                continue;
            }
            // Before the first request is let through: its connection may be the one the
            // outage broke.
            inner.primary.reconnect();
            // Entries written while deaf to other processes are not trusted any longer.
            let mut closed = false;
            for _ in 0..16 {
                if !inner.replay().await {
                    break;
                }
                inner.memory.clear();
                // An invalidation queued since the replay emptied the queue keeps it open:
                // replay again.
                if inner.close_if_replayed(run_id.clone()) {
                    closed = true;
                    break;
                }
            }
            if closed {
                tracing::info!("Redis answers again: circuit closed");
                // The replay applied on the primary, which is what Redis serves now; that
                // it reached a replica is for a later failover, and only logged.
                match inner.tasks.wait_for_replicas().await {
                    Err(error) if error.is_not_replicated() => {
                        tracing::warn!(%error, "replayed invalidations did not reach a replica in time");
                    }
                    Err(error) => inner.failed(&error),
                    Ok(()) => {}
                }
            }
        } else {
            match run_id {
                Ok(run_id) => {
                    // A success of a call no request waits for counts like a request's,
                    // as its errors do: failures in a row are counted across both.
                    inner.succeeded();
                    let restarted = lock(&inner.run_id)
                        .replace(run_id.clone())
                        .is_some_and(|old| old != run_id);
                    if restarted {
                        tracing::warn!("Redis restarted: replaying recent invalidations before reading it again");
                        inner.open_circuit();
                        queue_recent(&inner);
                    }
                }
                Err(error) => inner.failed(&error),
            }
        }
    }
}

/// Queue every remembered invalidation for replay (ahead of newer pending ones).
fn queue_recent<P>(inner: &Inner<P>) {
    let recent = inner.recent.distinct();
    let seen: std::collections::HashSet<&(String, Invalidation)> = recent.iter().collect();
    let mut pending = lock(&inner.pending);
    // Pending ones are normally among the remembered; keep any that aged out of memory.
    let older: Vec<_> = pending.drain(..).filter(|p| !seen.contains(p)).collect();
    drop(seen);
    pending.extend(older);
    pending.extend(recent);
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl<P: Primary> Store for FallbackStore<P> {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        Box::pin(async move {
            let inner = &self.inner;
            if !inner.open.load(Ordering::Acquire) {
                match inner.primary.get(key).await {
                    Ok(found) => {
                        inner.succeeded();
                        return Ok(found);
                    }
                    Err(error) => inner.failed(&error),
                }
            }
            Ok(match inner.mode {
                FallbackMode::Serve => inner.memory.get_now(key),
                FallbackMode::Bypass => None,
            })
        })
    }

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>) -> StoreFuture<'a, ()> {
        let written = self.put_checked(key, entry, self.write_token());
        Box::pin(async move { written.await.map(drop) })
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        Box::pin(self.inner.invalidate(
            namespace,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        ))
    }

    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        Box::pin(self.inner.invalidate_soft(namespace, pattern))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(
            self.inner
                .invalidate(namespace, Invalidation::Tag(tag.to_owned())),
        )
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.inner.invalidate(namespace, Invalidation::All))
    }

    fn backend(&self) -> Backend {
        if self.is_falling_back() {
            Backend::FallingBack
        } else {
            self.inner.primary.backend()
        }
    }

    fn stats(&self) -> StoreStats {
        self.inner.primary.add_stats(StoreStats {
            circuit_openings: self.inner.openings.load(Ordering::Relaxed),
            ..self.inner.memory.stats()
        })
    }

    fn coordination(&self) -> Option<&dyn Coordination> {
        Some(self)
    }
}

impl<P: Primary> Coordination for FallbackStore<P> {
    fn get_for<'a>(
        &'a self,
        key: StoreKey<'a>,
        identity: &'a [u8],
        headers: &'a http::HeaderMap,
    ) -> StoreFuture<'a, VariantRead> {
        Box::pin(async move {
            let inner = &self.inner;
            if !inner.open.load(Ordering::Acquire) {
                let read = match inner.coordinated() {
                    Some(primary) => primary.get_for(key, identity, headers).await,
                    None => inner.primary.get(key).await.map(|found| match found {
                        Some(variants) => VariantRead::Variants(variants, Source::Store),
                        None => VariantRead::Missing,
                    }),
                };
                match read {
                    Ok(found) => {
                        inner.succeeded();
                        return Ok(found);
                    }
                    Err(error) => inner.failed(&error),
                }
            }
            let found = match inner.mode {
                FallbackMode::Serve => inner.memory.get_now(key),
                FallbackMode::Bypass => None,
            };
            Ok(found.map_or(VariantRead::Missing, |variants| {
                VariantRead::Variants(variants, Source::Fallback)
            }))
        })
    }

    fn put_checked<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<Entry>,
        token: u64,
    ) -> StoreFuture<'a, bool> {
        let inner = &self.inner;
        if inner.open.load(Ordering::Acquire) {
            if inner.mode == FallbackMode::Bypass {
                return Box::pin(std::future::ready(Ok(false)));
            }
            // Redis's script cannot check this write: check it here against the generation
            // this process has heard of, so another process's invalidation heard since the
            // fetch began still refuses it.
            if inner.primary.refuses_locally(token) {
                tracing::debug!(key = %key.logical, "not stored: another process invalidated while it was fetched");
                return Box::pin(std::future::ready(Ok(false)));
            }
            // Applied now, under the caller's ban lock (see `Store`).
            let kept = inner
                .memory
                .put_now(key, Arc::new(entry.capped(inner.fallback_ttl)));
            return Box::pin(std::future::ready(Ok(kept)));
        }
        // Called now, under the caller's ban lock: a primary without a token check applies
        // the write here (see `Store`).
        let write = match inner.coordinated() {
            Some(primary) => primary.put_checked(key, entry, token),
            None => {
                let written = inner.primary.put(key, entry);
                Box::pin(async move { written.await.map(|()| true) })
            }
        };
        Box::pin(async move {
            match write.await {
                Ok(kept) => {
                    inner.succeeded();
                    Ok(kept)
                }
                Err(error) => {
                    // Not written to memory instead: this write is past the caller's ban
                    // check, so an invalidation may have slipped in meanwhile. Once the
                    // circuit is open, writes go to memory under that check.
                    inner.failed(&error);
                    Err(error)
                }
            }
        })
    }

    fn write_token(&self) -> u64 {
        self.inner.coordinated().map_or(0, |p| p.write_token())
    }

    fn checks_remote_invalidations(&self) -> bool {
        self.inner
            .coordinated()
            .is_some_and(|p| p.checks_remote_invalidations())
    }

    fn fetched_before(&self, token: u64, generation: u64) -> bool {
        self.inner
            .coordinated()
            .is_none_or(|p| p.fetched_before(token, generation))
    }

    fn current_write_token(&self) -> StoreFuture<'_, u64> {
        if self.is_falling_back() {
            // Writes go to memory, which takes no token.
            return Box::pin(std::future::ready(Ok(self.write_token())));
        }
        match self.inner.coordinated() {
            Some(primary) => primary.current_write_token(),
            None => Box::pin(std::future::ready(Ok(0))),
        }
    }

    fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> Option<Source> {
        // While falling back, memory answers at once; otherwise Redis's near cache may.
        if self.is_falling_back() {
            return match self.inner.mode {
                FallbackMode::Serve => self
                    .inner
                    .memory
                    .read_now(key, read)
                    .map(|_| Source::Fallback),
                FallbackMode::Bypass => None,
            };
        }
        self.inner.coordinated()?.read_now(key, read)
    }

    fn set_listener(&self, listener: InvalidationListener) {
        *lock(&self.inner.listener) = Some(listener);
    }

    fn fleet_turn<'a>(
        &'a self,
        namespace: &'a str,
        logical: &'a str,
        flight: &'a [u8],
    ) -> StoreFuture<'a, FleetTurn> {
        if self.is_falling_back() {
            // Each process is on its own: a local flight.
            return Box::pin(std::future::ready(Ok(FleetTurn::Lead(None))));
        }
        let Some(primary) = self.inner.coordinated() else {
            return Box::pin(std::future::ready(Ok(FleetTurn::Lead(None))));
        };
        Box::pin(async move {
            match primary.fleet_turn(namespace, logical, flight).await {
                Ok(turn) => Ok(turn),
                Err(error) => {
                    self.inner.failed(&error);
                    Ok(FleetTurn::Lead(None))
                }
            }
        })
    }

    fn end_fleet_turn(&self, lease: FleetLease, end: FleetEnd) {
        if let Some(primary) = self.inner.coordinated() {
            primary.end_fleet_turn(lease, end);
        }
    }
}

impl<P: Primary> std::fmt::Debug for FallbackStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStore")
            .field("falling_back", &self.is_falling_back())
            .field("mode", &self.inner.mode)
            .field("openings", &self.inner.openings.load(Ordering::Relaxed))
            .field("pending_invalidations", &self.pending_invalidations())
            .finish()
    }
}

impl<P: Primary> std::fmt::Debug for FallbackStoreBuilder<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStoreBuilder")
            .field("fallback_ttl", &self.fallback_ttl)
            .field("failure_threshold", &self.failure_threshold)
            .field("probe_interval", &self.probe_interval)
            .field("mode", &self.mode)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::background::ends_within;

    /// The probe runs (and fails: nothing listens on port 1) on the store's own thread,
    /// which ends once the store is dropped, even while a probe is under way.
    #[tokio::test]
    async fn a_dropped_fallback_store_leaves_no_thread_behind() {
        let redis = RedisStore::builder("redis://127.0.0.1:1/").build().unwrap();
        let store = FallbackStore::builder(redis, MemoryStore::new())
            .probe_interval(Duration::from_millis(10))
            .build()
            .await;
        let background = store.inner.background.as_ref();
        let thread = background.expect("a thread of its own").take_thread();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!thread.is_finished(), "the probe's thread ended under it");
        drop(store);
        let ended =
            tokio::task::spawn_blocking(move || ends_within(&thread, Duration::from_secs(5)));
        assert!(
            ended.await.unwrap(),
            "the probe's thread outlived its store"
        );
    }
}
