//! Acknowledgements: how an invalidation returns before the leases run out when every
//! process holding one has applied it.
//!
//! `invalidate` publishes its message with a sequence number of the invalidating process.
//! A process with a near cache applies the message to its near cache (the listener does so
//! before it reads the next message) and then publishes `ack:<its process>:<seq>` on the
//! invalidating process's own channel. The invalidating process reads which processes
//! advertise a lease after its publish (`lease.rs`); once a process acknowledged, its near
//! cache cannot serve an entry the invalidation covers, and waiting out its lease adds
//! nothing. A process that does not answer (stopped, partitioned, its subscription lost)
//! is waited for until its own lease has run out.
//!
//! Why the list read after the publish is complete: a process serving from its near cache
//! after the publish holds a lease renewed by a heartbeat whose script advertised it in
//! the same step, at most one lease before the publish, and an advertisement lives 30 s.
//! A process whose heartbeat came after the publish heard the invalidation first.
//!
//! Anyone who can `PUBLISH` to the Redis can forge an acknowledgement, as they can forge an
//! invalidation or write an entry: the cache trusts the Redis it is given. Acknowledgements
//! of a sequence number nobody waits for are dropped, and one invalidation keeps at most
//! [`MAX_ACKS`] of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Acknowledgements one invalidation keeps (more processes than that wait their lease).
const MAX_ACKS: usize = 1024;

/// The invalidations of this process waiting for acknowledgements.
#[derive(Debug, Default)]
pub(crate) struct Acks {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, Pending>>,
}

#[derive(Debug)]
struct Pending {
    acked: Vec<u64>,
    notify: Arc<Notify>,
}

/// One invalidation's wait for acknowledgements; stops listening when dropped.
pub(crate) struct Awaiting<'a> {
    acks: &'a Acks,
    seq: u64,
    notify: Arc<Notify>,
}

impl Acks {
    /// Start listening for the acknowledgements of a new invalidation.
    pub(crate) fn expect(&self) -> Awaiting<'_> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        self.lock().insert(
            seq,
            Pending {
                acked: Vec::new(),
                notify: notify.clone(),
            },
        );
        Awaiting {
            acks: self,
            seq,
            notify,
        }
    }

    /// A message on this process's channel: `ack:<process>:<seq>` (anything else is not
    /// an acknowledgement: `false`).
    pub(crate) fn heard(&self, payload: &[u8]) -> bool {
        let Some((holder, seq)) = parse_ack(payload) else {
            return false;
        };
        let mut pending = self.lock();
        if let Some(p) = pending.get_mut(&seq) {
            if !p.acked.contains(&holder) && p.acked.len() < MAX_ACKS {
                p.acked.push(holder);
                p.notify.notify_waiters();
            }
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Awaiting<'_> {
    /// The sequence number the message carries.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Returns once each of `holders` acknowledged or the instant `lease_end` gives for
    /// it has passed.
    pub(crate) async fn settled(&self, holders: &[Holder], lease_end: impl Fn(&Holder) -> Instant) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so an acknowledgement between the two wakes it.
            notified.as_mut().enable();
            let Some(until) = self.unsettled_until(holders, &lease_end) else {
                return;
            };
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                () = notified => {}
            }
        }
    }

    /// When the last lease of a holder that has not acknowledged runs out (`None`: all
    /// settled now).
    fn unsettled_until(
        &self,
        holders: &[Holder],
        lease_end: &impl Fn(&Holder) -> Instant,
    ) -> Option<Instant> {
        let pending = self.acks.lock();
        let acked = pending.get(&self.seq).map(|p| p.acked.as_slice());
        let now = Instant::now();
        holders
            .iter()
            .filter(|h| {
                !h.process
                    .is_some_and(|p| acked.is_some_and(|a| a.contains(&p)))
            })
            .map(lease_end)
            .filter(|until| *until > now)
            .max()
    }
}

impl Drop for Awaiting<'_> {
    fn drop(&mut self) {
        self.acks.lock().remove(&self.seq);
    }
}

/// What one process publishes to acknowledge invalidation `seq` of another.
pub(crate) fn ack_payload(holder: u64, seq: u64) -> String {
    format!("ack:{holder:016x}:{seq}")
}

fn parse_ack(payload: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(payload).ok()?.strip_prefix("ack:")?;
    let (holder, seq) = text.split_once(':')?;
    Some((u64::from_str_radix(holder, 16).ok()?, seq.parse().ok()?))
}

/// A process advertising a near-cache lease, as an invalidation reads it after its publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Holder {
    /// `None` when the member names no process: then it can never acknowledge.
    pub(crate) process: Option<u64>,
    pub(crate) lease: Duration,
}

/// Read the members of the lease set (`<lease ms>:<process>`), leaving out `own` (this
/// process applied its invalidation before publishing it).
pub(crate) fn holders(members: &[String], own: u64) -> Vec<Holder> {
    members
        .iter()
        .map(|member| {
            let (lease, process) = member.split_once(':').unwrap_or((member, ""));
            Holder {
                process: u64::from_str_radix(process, 16).ok(),
                lease: lease.parse().map(Duration::from_millis).unwrap_or_default(),
            }
        })
        .filter(|h| h.process != Some(own))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(process: u64, lease_ms: u64) -> Holder {
        Holder {
            process: Some(process),
            lease: Duration::from_millis(lease_ms),
        }
    }

    #[tokio::test]
    async fn the_wait_ends_when_every_holder_acknowledged() {
        let acks = Acks::default();
        let awaiting = acks.expect();
        let published_at = Instant::now();
        assert!(acks.heard(ack_payload(1, awaiting.seq()).as_bytes()));
        let holders = [holder(1, 60_000), holder(2, 60_000)];
        let waiting = awaiting.settled(&holders, |h| published_at + h.lease);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err(),
            "process 2 has not acknowledged"
        );
        // Another invalidation's acknowledgement does not count.
        acks.heard(ack_payload(2, awaiting.seq() + 1).as_bytes());
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting.as_mut())
                .await
                .is_err()
        );
        acks.heard(ack_payload(2, awaiting.seq()).as_bytes());
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("every holder acknowledged");
    }

    #[tokio::test]
    async fn a_silent_holder_is_waited_for_its_own_lease() {
        let acks = Acks::default();
        let awaiting = acks.expect();
        let published_at = Instant::now();
        acks.heard(ack_payload(1, awaiting.seq()).as_bytes());
        let holders = [
            holder(1, 60_000),
            holder(2, 100),
            Holder {
                process: None,
                lease: Duration::from_millis(50),
            },
        ];
        awaiting.settled(&holders, |h| published_at + h.lease).await;
        let took = published_at.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn heartbeats_and_junk_are_not_acknowledgements() {
        let acks = Acks::default();
        assert!(!acks.heard(b"17"));
        assert!(!acks.heard(b"ack:zz:1"));
        assert!(!acks.heard(b"ack:01"));
        assert!(!acks.heard(&[0xff, 0xfe]));
        // Nobody waits for it: dropped.
        assert!(acks.heard(b"ack:01:99"));
        assert!(acks.lock().is_empty());
    }

    #[test]
    fn the_lease_set_names_the_holders_but_this_process() {
        let members = [
            "200:000000000000000a".to_owned(),
            "50:0000000000000007".to_owned(),
            "9000:nobody".to_owned(),
        ];
        assert_eq!(
            holders(&members, 7),
            vec![
                holder(10, 200),
                Holder {
                    process: None,
                    lease: Duration::from_secs(9),
                }
            ]
        );
    }
}
