//! The near cache: a [`MemoryStore`] in front of Redis (an L1) that keeps ban semantics.
//!
//! Turned on with [`RedisStoreBuilder::near_cache`](super::RedisStoreBuilder::near_cache)
//! (or `CACHE_NEAR_LEASE_MS`); off by default. A hit answered from it costs no Redis call.
//!
//! # The guarantee, and why it holds
//!
//! *When `invalidate` returns, no process serves a stored entry fetched before it*, with
//! the near cache on in any number of processes, and whether or not the invalidating process
//! has one. (A request may still join a fetch already in flight in a process that has not
//! heard of the invalidation yet, one without a near cache or a silent one, and share its
//! answer: fetches are not stored entries, and the message forgets them when it arrives.)
//!
//! 1. A process answers from its near cache only while it holds a lease (`lease.rs`): a
//!    heartbeat it published at Redis time `h`, sent at `s ≤ h`, came back on its
//!    invalidation subscription, and its monotonic clock says less than `lease` has passed
//!    since `s`. Redis delivers one subscriber's messages in the order it executed the
//!    `PUBLISH`es, and the listener applies each invalidation to the near cache before it
//!    reads the next message: every invalidation published before `h` was applied when the
//!    lease was renewed.
//! 2. `invalidate` raises the generation, removes the entries from Redis, then applies
//!    itself to its own near cache (after the removal, so no read of this process can
//!    refill it with what was removed), publishes at Redis time `p`, and reads which
//!    processes advertise a lease. It returns when each of those processes acknowledged
//!    the message (`ack.rs`: sent after applying it) or its own lease (plus a drift margin)
//!    has passed since the publish's reply. The invalidation runs in a task of its own, so
//!    a caller that stops waiting does not stop it between the removal and the publish. A
//!    publish that fails while leases are advertised, or a lease read that fails, makes
//!    `invalidate` fail (a fallback store replays it).
//! 3. Take a process serving from its near cache after `invalidate` returned, under a lease
//!    renewed by a heartbeat published at `h`. If `h > p`, it applied the invalidation
//!    before renewing. If `h < p`, the heartbeat's script advertised the lease in the same
//!    step as its `PUBLISH` (with a 30 s expiry), so the read after `p` listed the process:
//!    either it acknowledged, so it had applied the invalidation, or `invalidate` waited
//!    until its lease had ended (by `s + lease < p + lease`).
//! 4. A lost subscription is a new one: on every (re)subscription the near cache is cleared
//!    and the lease dropped before any message is read (redis-rs returns from `SUBSCRIBE`
//!    and `SSUBSCRIBE` only once the server confirmed them), so invalidations missed while
//!    it was down cannot matter, and heartbeats sent before do not renew. A paused Redis, a
//!    paused process or a dead connection stop the heartbeats: the lease lapses within
//!    `lease`, and reads go to Redis. A subscription silent for four leases is replaced (a
//!    half-open connection never ends on its own). A message that cannot be read empties
//!    the near cache.
//! 5. Fills obey the ban: a value read from Redis is stored in the near cache only if no
//!    invalidation was applied to the near cache (and it was not cleared) since the read was
//!    sent (an epoch, checked and bumped under one lock). A read that raced an invalidation
//!    this process hears of later was stored before the invalidation is applied, which
//!    removes it.
//!
//! Only durations on each process's own clock are compared (and Redis's clock for the
//! advertisement's 30 s expiry, which a forward jump of Redis's clock by that much would cut
//! short). Not covered:
//!
//! - a host suspended (`CLOCK_MONOTONIC` stops) with the process on it;
//! - a fresh invalidating process started within one lease of Redis restarting empty (the
//!   advertisements are gone, and the listeners may not yet have noticed the lost
//!   connection; a running process remembers the longest lease it saw for 30 s, and the
//!   lease set's epoch tells it the set was lost);
//! - a failover that loses acknowledged writes (asynchronous replication: Sentinel, or a
//!   cluster primary's replica taking over) — the removal or the generation bump may be
//!   gone on the new primary, which then serves the old entry again — and a split brain,
//!   where processes on a minority primary keep their leases until it steps down.
//!   `WAIT` before the publish would narrow the first; neither is handled.
//!
//! # What the near cache holds
//!
//! What Redis answered for a key and variant (every `Vary` variant of it), and what this
//! process wrote to Redis, with the same expiry (an entry's time is its own, from when it
//! was stored): never longer than Redis keeps it. Only fresh entries are answered from it;
//! stale ones, and `Vary` variants it does not hold, are asked of Redis. It may still hold
//! a variant Redis has since replaced or pruned, never one an invalidation covers. It has
//! its own byte budget and the memory store's eviction and admission policy (it is a
//! [`MemoryStore`]: S3-FIFO with TinyLFU admission, `store::policy`); a hit counts a use
//! there as any read of a memory store does. Used by the HTTP
//! layer's, the gRPC layer's, `Range` requests' and typed reads' hits (through
//! `Coordination::read_now`, which says it answered: each says `detail=l1`).
//!
//! On a Redis Cluster every name the processes meet at shares the slot of the hash tag
//! `{tower-response-cache}`, and they use sharded pub/sub: one primary executes every
//! publish, so the order argument of 1. holds, and the heartbeat script may publish on a
//! channel of its key's slot. The listener's stream ends when that primary's connection
//! drops or the slot moves (point 4).
//!
//! # Cost to Redis
//!
//! One heartbeat script (`ZADD` + `PUBLISH` to one subscriber) per process per `lease / 4`:
//! 20 a second per process at a 200 ms lease. `invalidate` adds one script call (the lease
//! read), and each process with a near cache publishes one acknowledgement per
//! invalidation it hears.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::Script;

use super::layout::Layout;
use super::lease::{Lease, ADVERT_TTL, HEARTBEAT_SCRIPT, MAX_LEASE};
use super::{Inner, RedisStore, RedisStoreBuilder};
use crate::entry::Entry;
use crate::pattern::Pattern;
use crate::store::{Invalidation, MemoryStore, StoreKey, StoreStats};

/// The near cache of one [`RedisStore`].
pub(crate) struct Near {
    memory: MemoryStore,
    pub(crate) lease: Lease,
    /// Bumped (under `apply`) by every invalidation applied and every clear.
    epoch: AtomicU64,
    apply: Mutex<()>,
    /// This process's channel, which its heartbeats are published on.
    channel: String,
    /// This process's advertisement in the lease set.
    member: String,
    heartbeat: Script,
    hits: AtomicU64,
    redis_hits: AtomicU64,
}

/// The near cache's epoch, taken before a Redis read: a fill with it is refused when the
/// near cache changed since (an invalidation, a lost subscription).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Epoch(u64);

impl Near {
    /// A near cache for the process whose channel is `channel` (named after `origin`).
    pub(crate) fn new(lease: Duration, max_bytes: usize, channel: String) -> Near {
        let lease = lease.clamp(Duration::from_millis(4), MAX_LEASE);
        let process = channel.rsplit(':').next().unwrap_or_default().to_owned();
        Near {
            memory: MemoryStore::builder().max_bytes(max_bytes).build(),
            lease: Lease::new(lease),
            epoch: AtomicU64::new(0),
            apply: Mutex::new(()),
            member: format!("{}:{process}", lease.as_millis()),
            channel,
            heartbeat: Script::new(HEARTBEAT_SCRIPT),
            hits: AtomicU64::new(0),
            redis_hits: AtomicU64::new(0),
        }
    }

    /// Lend every variant held for `key` to `read`, when the lease is valid and some are
    /// held; `false` otherwise (and `read` was not called).
    pub(crate) fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> bool {
        if !self.lease.is_valid() {
            return false;
        }
        self.memory.with_variants(key, |variants| {
            let Some(variants) = variants else {
                return false;
            };
            self.hits.fetch_add(1, Ordering::Relaxed);
            read(variants);
            true
        })
    }

    pub(crate) fn epoch_now(&self) -> Epoch {
        Epoch(self.epoch.load(Ordering::Acquire))
    }

    /// Keep what Redis answered for `key`, unless the near cache changed since `seen` (taken before the read).
    pub(crate) fn fill(&self, seen: Epoch, key: StoreKey<'_>, variants: &[Arc<Entry>]) {
        self.redis_hits.fetch_add(1, Ordering::Relaxed);
        self.fill_entries(seen, key, variants);
    }

    /// Keep `entries` (just written to Redis, or read from it) unless the near cache changed
    /// since `seen`.
    pub(crate) fn fill_entries(&self, seen: Epoch, key: StoreKey<'_>, entries: &[Arc<Entry>]) {
        let _applying = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::Acquire) != seen.0 {
            return;
        }
        for entry in entries {
            self.memory.put_now(key, entry.clone());
        }
    }

    /// Apply an invalidation (this process's, or one heard on the channel).
    pub(crate) fn apply(&self, namespace: &str, invalidation: &Invalidation) {
        let _applying = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // The memory store applies at call time; its future only reports the count.
        match invalidation {
            Invalidation::Pattern(p) => drop(crate::store::Store::invalidate(
                &self.memory,
                namespace,
                &Pattern::new(p),
            )),
            Invalidation::Tag(t) => drop(crate::store::Store::invalidate_tag(
                &self.memory,
                namespace,
                t,
            )),
            Invalidation::All => drop(crate::store::Store::invalidate_all(&self.memory, namespace)),
        }
    }

    /// A message on the invalidation channel that this process cannot read (another
    /// version's, or not ours) may have been an invalidation: forget everything it holds.
    /// The lease stays: the messages after it are still applied in order.
    pub(crate) fn forget_all(&self) {
        let _applying = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.memory.clear();
    }

    /// A new subscription: forget everything and hold no lease until a heartbeat returns.
    pub(crate) fn reset(&self) {
        let _applying = self.apply.lock().unwrap_or_else(|e| e.into_inner());
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.lease.drop_lease();
        self.memory.clear();
    }

    /// The next heartbeat: advertise this process's lease in the lease set and publish a
    /// new sequence number on its channel, in one step (see `lease.rs`).
    fn heartbeat(&self, layout: Layout) -> redis::ScriptInvocation<'_> {
        let seq = self.lease.sending();
        let mut invocation = self.heartbeat.prepare_invoke();
        invocation
            .key(layout.leases_key())
            .key(layout.leases_epoch_key())
            .arg(&self.member)
            .arg(ADVERT_TTL.as_millis() as u64)
            .arg(&self.channel)
            .arg(seq.to_string())
            .arg(layout.publish_command())
            .arg(format!("{:016x}", super::rand_u64()));
        invocation
    }

    /// A message on the heartbeat channel.
    pub(crate) fn heard_heartbeat(&self, payload: &[u8]) {
        if let Some(seq) = std::str::from_utf8(payload)
            .ok()
            .and_then(|s| s.parse().ok())
        {
            self.lease.renew(seq);
        }
    }

    /// What it counted, and holds now.
    pub(crate) fn counters(&self) -> NearCounters {
        let memory = crate::store::Store::stats(&self.memory);
        NearCounters {
            hits: self.hits.load(Ordering::Relaxed),
            redis_hits: self.redis_hits.load(Ordering::Relaxed),
            lapses: self.lease.lapses(),
            entries: memory.entries,
            bytes: memory.bytes,
            memory,
        }
    }
}

/// What a near cache counted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NearCounters {
    pub(crate) hits: u64,
    pub(crate) redis_hits: u64,
    pub(crate) lapses: u64,
    pub(crate) entries: u64,
    pub(crate) bytes: u64,
    /// What its memory store counted (evictions and refusals by cause).
    pub(crate) memory: StoreStats,
}

impl RedisStoreBuilder {
    /// Keep recently read entries in process memory too (a near cache, or L1), within
    /// `max_bytes`, answering hits without a Redis round trip while this process holds a
    /// `lease` (4 ms to 10 s; 200 ms is a good start) renewed by heartbeats over its
    /// invalidation subscription. Off unless called.
    ///
    /// The ban guarantee stays: every `invalidate` made through this Redis (by any process,
    /// with a near cache or not) returns only when every process advertising a lease has
    /// acknowledged it, or after the longest advertised lease: a round trip or two while
    /// every process is healthy, about `lease` when one is stopped or cut off. See the
    /// README; the argument is in the docs of `src/store/redis/near.rs`. On a Redis Cluster
    /// (Redis 7 or later) the heartbeats and invalidations travel by sharded pub/sub in one
    /// slot.
    pub fn near_cache(mut self, lease: Duration, max_bytes: usize) -> Self {
        self.near = Some((lease, max_bytes));
        self
    }
}

impl RedisStore {
    /// Lend a near-cache hit's entries to `read`, when there is a near cache, a lease and
    /// an entry (`false` otherwise, and `read` was not called).
    pub(super) fn near_read_now(
        &self,
        key: StoreKey<'_>,
        read: &mut dyn FnMut(&[Arc<Entry>]),
    ) -> bool {
        self.inner
            .near
            .as_ref()
            .is_some_and(|near| near.read_now(key, read))
    }

    /// `stats` with the near cache's counters.
    pub(crate) fn near_stats(&self, stats: StoreStats) -> StoreStats {
        let Some(near) = &self.inner.near else {
            return stats;
        };
        let c = near.counters();
        StoreStats {
            l1_hits: c.hits,
            redis_hits: c.redis_hits,
            lease_lapses: c.lapses,
            l1_entries: c.entries,
            l1_bytes: c.bytes,
            evictions: stats.evictions + c.memory.evictions,
            expirations: stats.expirations + c.memory.expirations,
            invalidated: stats.invalidated + c.memory.invalidated,
            admissions_refused: stats.admissions_refused + c.memory.admissions_refused,
            ..stats
        }
    }
}

/// A dropped store withdraws its advertisement (best effort), as the last words of its
/// thread (`store/background.rs`), whether or not it is dropped within a runtime: its near
/// cache is gone with it, and other processes' invalidations need not wait for its lease
/// for the 30 s the advertisement would otherwise live.
impl Drop for Inner {
    fn drop(&mut self) {
        let Some(near) = &self.near else { return };
        let connection = self.calls.connection(super::lane::Lane::Background).clone();
        let cmd = redis::cmd("ZREM")
            .arg(self.entries.layout.leases_key())
            .arg(&near.member)
            .clone();
        self.background.stop_after(async move {
            let withdrawn = async {
                let mut connected = connection.connected().await?;
                cmd.query_async::<i64>(&mut connected).await
            };
            if withdrawn.await.is_err() {
                tracing::debug!("could not withdraw the near-cache advertisement");
            }
        });
    }
}

/// Publish a heartbeat every `lease / 4` until the store is dropped.
pub(crate) async fn heartbeat(store: Weak<Inner>) {
    let Some(period) = store
        .upgrade()
        .and_then(|inner| inner.near.as_ref().map(|n| n.lease.duration() / 4))
    else {
        return;
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = store.upgrade() else { return };
        let store = RedisStore::for_tasks(inner);
        let Some(near) = store.inner.near.as_ref() else {
            return;
        };
        let invocation = near.heartbeat(store.layout());
        match store
            .invoke::<i64>(invocation, store.inner.calls.deadline)
            .await
        {
            Ok(_) => store.inner.calls.background_answered(),
            Err(error) => (store.inner)
                .calls
                .background_failed("near-cache heartbeat failed", &error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Arc<Entry> {
        Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"body"),
            Duration::from_secs(60),
        ))
    }

    const KEY: StoreKey<'static> = StoreKey {
        namespace: "ns",
        logical: "/a",
        variant: 1,
    };

    /// Whether the near cache answers `KEY` at once.
    fn holds(near: &Near) -> bool {
        near.read_now(KEY, &mut |_| ())
    }

    fn leased() -> Near {
        let near = Near::new(
            Duration::from_millis(500),
            1 << 20,
            "p:0000000000000001".into(),
        );
        let seq = near.lease.sending();
        near.lease.renew(seq);
        near
    }

    #[test]
    fn a_read_from_before_an_applied_invalidation_is_not_kept() {
        let near = leased();
        let seen = near.epoch_now();
        // Heard while the read was on its way: the read's value may predate it.
        near.apply("ns", &Invalidation::Pattern("/other".into()));
        near.fill(seen, KEY, &[entry()]);
        assert!(!holds(&near));
        // A read after it is kept.
        near.fill(near.epoch_now(), KEY, &[entry()]);
        assert!(holds(&near));
        // And a later invalidation removes it.
        near.apply("ns", &Invalidation::Pattern("/a".into()));
        assert!(!holds(&near));
    }

    #[test]
    fn nothing_is_answered_without_a_lease_or_after_a_reset() {
        let near = Near::new(
            Duration::from_millis(500),
            1 << 20,
            "p:0000000000000001".into(),
        );
        near.fill(near.epoch_now(), KEY, &[entry()]);
        assert!(!holds(&near), "no lease yet");
        let seq = near.lease.sending();
        near.lease.renew(seq);
        assert!(holds(&near));
        let seen = near.epoch_now();
        near.reset();
        assert!(!holds(&near));
        near.fill(seen, KEY, &[entry()]);
        let seq = near.lease.sending();
        near.lease.renew(seq);
        assert!(!holds(&near), "a fill from before the reset");
    }
}
