//! Leases: how long this process may trust its near cache without asking Redis, and how
//! long an invalidation must wait for every other process's lease to run out.
//!
//! A process with a near cache publishes a heartbeat every `lease / 4` on a channel of its
//! own, which its invalidation subscription also listens to. Redis delivers a subscriber's
//! messages in the order it executed the `PUBLISH`es, so a heartbeat coming back means every
//! invalidation published before it was delivered first (and applied: the listener handles
//! messages one at a time). The lease then lasts until the heartbeat's *send* time plus
//! `lease`, on this process's monotonic clock ([`Lease::renew`]).
//!
//! The heartbeat is a script that also advertises `lease` in a sorted set (the layout's
//! `leases_key`, one member per process, expiring after [`ADVERT_TTL`] in Redis time) in
//! the same step as its `PUBLISH`: whenever a heartbeat renews a lease, Redis held its
//! advertisement at the moment the heartbeat was published. An invalidation reads the
//! live advertisements after its own publish ([`LEASES_SCRIPT`]) and, for each advertising
//! process, waits until it acknowledged the invalidation (`ack.rs`) or its own lease (plus a
//! margin for clock-rate drift) has passed since the publish's reply. The invalidating
//! process needs no near cache of its own. See the near cache's module docs for the whole
//! argument.
//!
//! Instants are `std::time::Instant` (`CLOCK_MONOTONIC`): a process that is stopped
//! (`SIGSTOP`) keeps counting, so its lease has lapsed when it continues.
//!
//! Two parts live here: [`Lease`], this process's own lease (inside its near cache), and
//! [`Leases`], what an invalidating process keeps to wait for everybody else's (the
//! acknowledgements it awaits, the longest lease it saw, the script that reads the lease
//! set). They are apart because a process without a near cache has no lease of its own
//! and still waits for the others'.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use redis::Script;

use super::ack::{holders, Acks, Awaiting, Holder};
use super::layout::Layout;
use super::RedisStore;
use crate::store::StoreError;

/// How long an advertisement outlives its last heartbeat. Much longer than any lease, so a
/// process whose last heartbeat renewed a lease is still advertised when that lease ends;
/// a process that exits keeps invalidations waiting for its lease this long at most.
pub(crate) const ADVERT_TTL: Duration = Duration::from_secs(30);

/// The longest lease a process may take, and the longest an invalidation waits for one
/// (a forged advertisement cannot hold invalidations up for longer).
pub(crate) const MAX_LEASE: Duration = Duration::from_secs(10);

/// Heartbeats remembered (by sequence number) to find the send time of one that returns.
const REMEMBERED_HEARTBEATS: usize = 64;

/// Advertise a lease and publish a heartbeat, in one step; drop expired advertisements.
/// KEYS: the lease set (member `"{lease ms}:{process}"`, score = when it expires, Redis
/// time in ms), its epoch (a random value set when missing: a new one means the set was
/// lost). ARGV: member, advertisement TTL (ms), channel, payload, the publish command
/// (`SPUBLISH` on a cluster, where the channel shares the set's slot), a new epoch.
/// Returns the subscribers reached.
pub(crate) const HEARTBEAT_SCRIPT: &str = r#"
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
redis.call('SET', KEYS[2], ARGV[6], 'NX')
return redis.call(ARGV[5], ARGV[3], ARGV[4])
"#;

/// The lease set's epoch (`""` when there is none), then the live advertisements
/// (members), after dropping the expired ones: one per process with a near cache.
/// KEYS: the lease set, its epoch.
pub(crate) const LEASES_SCRIPT: &str = r#"
local epoch = ''
if redis.call('TYPE', KEYS[2])['ok'] == 'string' then epoch = redis.call('GET', KEYS[2]) end
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return {epoch} end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local out = redis.call('ZRANGE', KEYS[1], 0, -1)
table.insert(out, 1, epoch)
return out
"#;

/// How long an invalidation waits after its publish for leases of `lease`: the lease, plus
/// 0.5 % for clocks that run at different rates (NTP slews a clock by at most 0.05 %), plus
/// 1 ms.
pub(crate) fn wait_for(lease: Duration) -> Duration {
    let lease = lease.min(MAX_LEASE);
    lease + lease / 200 + Duration::from_millis(1)
}

/// Nanoseconds on this process's monotonic clock (since an arbitrary start).
fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// This process's lease.
#[derive(Debug)]
pub(crate) struct Lease {
    lease: Duration,
    /// Until when (see [`now_nanos`]) the lease is valid; 0 when lapsed.
    until: AtomicU64,
    /// Whether the lease was valid when last looked at (to count lapses once each).
    held: AtomicBool,
    lapses: AtomicU64,
    next: AtomicU64,
    /// Sent heartbeats: (sequence number, send time).
    sent: Mutex<VecDeque<(u64, u64)>>,
}

impl Lease {
    pub(crate) fn new(lease: Duration) -> Lease {
        Lease {
            lease,
            until: AtomicU64::new(0),
            held: AtomicBool::new(false),
            lapses: AtomicU64::new(0),
            next: AtomicU64::new(1),
            sent: Mutex::new(VecDeque::with_capacity(REMEMBERED_HEARTBEATS)),
        }
    }

    pub(crate) fn duration(&self) -> Duration {
        self.lease
    }

    /// Whether the lease is valid now. Counts a lapse the first time it is found lapsed.
    pub(crate) fn is_valid(&self) -> bool {
        if now_nanos() < self.until.load(Ordering::Acquire) {
            return true;
        }
        self.note_lapse();
        false
    }

    fn note_lapse(&self) {
        // A load first: while lapsed, every lookup comes here, from every thread.
        if self.held.load(Ordering::Relaxed) && self.held.swap(false, Ordering::AcqRel) {
            self.lapses.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("tower_response_cache_lease_lapses_total").increment(1);
            tracing::debug!("near-cache lease lapsed: reads go to Redis");
        }
    }

    /// Times the lease ran out (or was dropped) after being held.
    pub(crate) fn lapses(&self) -> u64 {
        self.lapses.load(Ordering::Relaxed)
    }

    /// A heartbeat about to be sent: its sequence number, with its send time remembered.
    pub(crate) fn sending(&self) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        if sent.len() == REMEMBERED_HEARTBEATS {
            sent.pop_front();
        }
        sent.push_back((seq, now_nanos()));
        seq
    }

    /// Heartbeat `seq` came back on the subscription: valid until its send time + lease.
    /// Unknown (forged, or long forgotten) sequence numbers renew nothing.
    pub(crate) fn renew(&self, seq: u64) {
        let sent_at = {
            let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            sent.iter().find(|(s, _)| *s == seq).map(|(_, at)| *at)
        };
        let Some(sent_at) = sent_at else { return };
        let until = sent_at.saturating_add(u64::try_from(self.lease.as_nanos()).unwrap_or(0));
        if until > now_nanos() {
            self.until.fetch_max(until, Ordering::AcqRel);
            self.held.store(true, Ordering::Release);
        }
    }

    /// The subscription was lost or is new: no lease until a heartbeat comes back on it.
    /// Heartbeats sent before now renew nothing either.
    pub(crate) fn drop_lease(&self) {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.until.store(0, Ordering::Release);
        self.note_lapse();
    }
}

/// What an invalidating process knows of others' leases: the longest advertisement it has
/// read and the epoch of the set it read it in, remembered for [`ADVERT_TTL`], so that
/// losing the lease set (Redis restarted empty: the epoch is gone or new) does not cut a
/// wait short in a process that saw it before. While the epoch is the one remembered, the
/// set is complete as read: a process that withdrew or expired is not waited for.
#[derive(Debug, Default)]
pub(crate) struct Advertised {
    seen: Mutex<Option<(Duration, Instant, String)>>,
}

impl Advertised {
    /// The lease to wait for, given what Redis advertises now in the set of `epoch`.
    pub(crate) fn longest(&self, advertised: Duration, epoch: &str) -> Duration {
        let advertised = advertised.min(MAX_LEASE);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let remembered = match &*seen {
            Some((lease, at, seen_in)) if at.elapsed() < ADVERT_TTL => {
                let same_set = !epoch.is_empty() && seen_in == epoch;
                if same_set {
                    Duration::ZERO
                } else {
                    *lease
                }
            }
            _ => Duration::ZERO,
        };
        if advertised >= remembered && advertised > Duration::ZERO {
            *seen = Some((advertised, Instant::now(), epoch.to_owned()));
        }
        advertised.max(remembered)
    }
}

/// What an invalidation needs to wait for other processes' near caches: the
/// acknowledgements it listens for, the longest lease it has seen advertised, and the
/// script that reads the advertisements. Owned apart from the near cache: a process
/// without one still waits for everybody else's.
pub(crate) struct Leases {
    /// This process's invalidations waiting for acknowledgements.
    pub(crate) acks: Acks,
    /// The longest lease other processes advertised (for `invalidate`'s wait).
    advertised: Advertised,
    /// Reads the live advertisements ([`LEASES_SCRIPT`]).
    script: Script,
}

impl Leases {
    pub(crate) fn new() -> Leases {
        Leases {
            acks: Acks::default(),
            advertised: Advertised::default(),
            script: Script::new(LEASES_SCRIPT),
        }
    }

    /// Read the lease set (its epoch, then the live advertisements).
    pub(crate) fn read(&self, layout: Layout) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(layout.leases_key())
            .key(layout.leases_epoch_key());
        invocation
    }

    /// The processes an invalidation published just before the lease set was `read` waits
    /// for: every advertised holder but this process (`own`), each lease capped at
    /// [`MAX_LEASE`], and a holder of unknown name for a longer lease remembered from a set
    /// since lost. Empty: nobody holds a lease it must wait for.
    pub(crate) fn holders(&self, read: &[String], own: u64) -> Vec<Holder> {
        let (epoch, mut holders) = match read.split_first() {
            Some((epoch, members)) => (epoch.as_str(), holders(members, own)),
            None => ("", Vec::new()),
        };
        for holder in &mut holders {
            holder.lease = holder.lease.min(MAX_LEASE);
        }
        let advertised = holders.iter().map(|h| h.lease).max().unwrap_or_default();
        let lease = self.advertised.longest(advertised, epoch);
        if lease.is_zero() {
            return Vec::new();
        }
        if lease > advertised {
            // A lease remembered from before the set was lost (Redis restarted empty): its
            // holder is unknown, so it is waited out.
            holders.push(Holder {
                process: None,
                lease,
            });
        }
        holders
    }
}

impl RedisStore {
    /// After an invalidation's publish (replied at `published_at`, or failed with
    /// `publish_error`): wait until each process advertising a near-cache lease that may
    /// predate it acknowledged it (`awaiting`) or that lease has run out.
    ///
    /// A publish that failed while some process advertises a lease is an error (that
    /// process may never hear of the invalidation: a fallback store replays it); without
    /// advertised leases it is only logged, as before near caches existed. When the leases
    /// cannot be read, the invalidation is reported as failed too.
    pub(super) async fn await_leases(
        &self,
        publish_error: Option<StoreError>,
        published_at: Instant,
        awaiting: &Awaiting<'_>,
    ) -> Result<(), StoreError> {
        let invocation = self.inner.leases.read(self.layout());
        let read = match self
            .invoke::<Vec<String>>(invocation, self.inner.calls.deadline)
            .await
        {
            Ok(read) => read,
            Err(error) => {
                return Err(StoreError::unavailable(
                    "could not read the near-cache leases after an invalidation: it may not have reached every process yet",
                    error,
                ))
            }
        };
        let holders = self
            .inner
            .leases
            .holders(&read, self.inner.channel.origin());
        if let Some(error) = publish_error {
            if holders.is_empty() {
                tracing::warn!(%error, "could not publish an invalidation to other processes");
                // The invalidation itself reached Redis; the failed publish still counts.
                (self.inner)
                    .calls
                    .background_failed("the publish failed", &error);
                return Ok(());
            }
            return Err(StoreError::unavailable(
                "could not publish an invalidation while near caches hold leases: they may not hear of it",
                error,
            ));
        }
        if holders.is_empty() {
            return Ok(());
        }
        awaiting
            .settled(&holders, |h| published_at + wait_for(h.lease))
            .await;
        metrics::histogram!("tower_response_cache_invalidate_wait_seconds")
            .record(published_at.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_heartbeat_renews_from_its_send_time() {
        let lease = Lease::new(Duration::from_millis(200));
        assert!(!lease.is_valid());
        let seq = lease.sending();
        lease.renew(seq);
        assert!(lease.is_valid());
        lease.drop_lease();
        assert!(!lease.is_valid());
        assert_eq!(lease.lapses(), 1);
        // A heartbeat sent before the subscription was lost renews nothing.
        lease.renew(seq);
        assert!(!lease.is_valid());
    }

    #[test]
    fn an_old_heartbeat_renews_nothing() {
        let lease = Lease::new(Duration::from_millis(20));
        let seq = lease.sending();
        std::thread::sleep(Duration::from_millis(30));
        lease.renew(seq);
        assert!(!lease.is_valid());
        lease.renew(12345);
        assert!(!lease.is_valid());
    }

    fn read(epoch: &str, members: &[&str]) -> Vec<String> {
        std::iter::once(epoch)
            .chain(members.iter().copied())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn an_invalidation_waits_for_every_other_holder_its_lease_capped() {
        let leases = Leases::new();
        let ms = Duration::from_millis;
        // Nobody advertises (or the set is not there at all): nothing to wait for.
        assert!(leases.holders(&[], 7).is_empty());
        assert!(leases.holders(&read("e1", &[]), 7).is_empty());
        // This process's own advertisement is left out; a huge lease is capped.
        let holders = leases.holders(
            &read("e1", &["200:0000000000000007", "3600000:000000000000000a"]),
            7,
        );
        assert_eq!(
            holders,
            [Holder {
                process: Some(10),
                lease: MAX_LEASE,
            }]
        );
        // Only this process holds a lease: nobody else to wait for.
        let alone = Leases::new();
        assert!(alone
            .holders(&read("e1", &["200:0000000000000007"]), 7)
            .is_empty());
        // The set was lost since (Redis restarted empty): the remembered lease is waited
        // out, its holder unknown.
        let lost = Leases::new();
        lost.holders(&read("e1", &["200:000000000000000a"]), 7);
        assert_eq!(
            lost.holders(&read("", &[]), 7),
            [Holder {
                process: None,
                lease: ms(200),
            }]
        );
    }

    #[test]
    fn the_wait_covers_the_lease_and_is_capped() {
        assert!(wait_for(Duration::from_millis(200)) > Duration::from_millis(200));
        assert!(wait_for(Duration::from_secs(3600)) < MAX_LEASE * 2);
        let advertised = Advertised::default();
        let ms = Duration::from_millis;
        assert_eq!(advertised.longest(ms(200), "e1"), ms(200));
        // The holder withdrew from the same set: nothing to wait for.
        assert_eq!(advertised.longest(Duration::ZERO, "e1"), Duration::ZERO);
        // The set was lost (no epoch, or a new one): the remembered lease still counts.
        assert_eq!(advertised.longest(ms(200), "e1"), ms(200));
        assert_eq!(advertised.longest(Duration::ZERO, ""), ms(200));
        assert_eq!(advertised.longest(ms(50), "e2"), ms(200));
    }
}
