//! Single-flight: concurrent misses of one key reach the inner service once.
//!
//! The first miss becomes the leader and holds a [`Leader`] guard; later misses follow and
//! wait (bounded) for its outcome. Once the leader's response is known to be storable, the
//! leader shares its fill and followers read it as it arrives (see the `fill` module); a
//! follower that cannot read it (other `Vary` values, a late join) looks up the stored
//! entry once the leader is done.
//! When its response cannot be stored, followers all go to the origin at once rather than
//! queueing one by one. When the leader vanishes (its client disconnected, its future was
//! dropped), the guard's drop releases followers and one of them leads next.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry as MapEntry;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::engine::fill::Fill;

/// What a leader's flight ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Pending,
    /// The entry is in the store: look it up.
    Stored,
    /// The response could not be stored: go to the origin yourself.
    Uncacheable,
    /// The leader gave up: try to lead.
    Abandoned,
    /// The response is being read into a fill that followers may read too.
    Sharing(Arc<Fill>),
}

/// Two outcomes are the same when they are the same state (and, sharing, the same fill):
/// what a follower's `watch` wakes on.
impl PartialEq for Outcome {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Outcome::Sharing(a), Outcome::Sharing(b)) => Arc::ptr_eq(a, b),
            (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
        }
    }
}

/// A flight's key: the logical key and the exact bytes that select the variant (its
/// identity, plus the values of headers its known variants vary on). Exact, not hashed: a
/// request only ever waits for a fetch of precisely its own inputs.
type FlightKey = (Box<str>, Box<[u8]>);

#[derive(Debug)]
pub(crate) struct Coalescer {
    flights: DashMap<FlightKey, Flight>,
    /// How many flights ended with a stored entry, per bucket of logical keys. A miss
    /// reads its bucket before its lookup: when the count moved by the time it joins, a
    /// flight stored the entry it looked for in between, and it looks again instead of
    /// leading a second fetch. Fixed size: a flood of keys only shares buckets (one more
    /// lookup, never a wrong answer).
    stored: Box<[AtomicU64]>,
    /// Seeds the bucket of a key, so that nobody outside picks keys that share one.
    buckets: std::collections::hash_map::RandomState,
}

/// Buckets of [`Coalescer::stored`].
const STORED_BUCKETS: usize = 1024;

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer {
            flights: DashMap::new(),
            stored: (0..STORED_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::collections::hash_map::RandomState::new(),
        }
    }
}

struct Flight {
    id: u64,
    outcome: watch::Receiver<Outcome>,
    /// The store's write token its leader took before calling the origin; `None` until
    /// then (see [`Coalescer::forget_fetched_before`]).
    token: Option<u64>,
    /// Called when an invalidation forgets the flight before it ends (see
    /// [`Leader::on_forget`]).
    on_forget: Option<OnForget>,
}

impl std::fmt::Debug for Flight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flight")
            .field("id", &self.id)
            .field("token", &self.token)
            .field("holds_fleet_lease", &self.on_forget.is_some())
            .finish_non_exhaustive()
    }
}

/// What a forgotten flight hands back (its fleet-wide lease).
type OnForget = Box<dyn FnOnce() + Send + Sync>;

impl Flight {
    /// An invalidation forgot this flight: hand back what it holds for others.
    fn forgotten(&mut self) {
        if let Some(on_forget) = self.on_forget.take() {
            on_forget();
        }
    }
}

/// What a miss does after joining the flight for its key (see `CacheHandle::take_turn`).
pub(crate) enum Turn {
    /// Fetch it, as the flight's leader.
    Lead(Leader),
    /// Waited for another request's fetch: its entry is stored, or it left. Look up again.
    LookAgain,
    /// Waited, and the response cannot be stored: fetch without leading.
    FetchAlone,
    /// The leader's response is being shared: read it.
    Read(crate::engine::fill::FillBody),
    /// The leader's response varies on these headers and this request sends other
    /// values: fly with the requests that send its own.
    OtherVariant(Vec<http::HeaderName>),
}

/// What a follower makes of a response shared while it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Share {
    /// Read it.
    Read,
    /// Not as it arrives (a conditional request): wait for the stored entry.
    WaitForEntry,
    /// It is another variant.
    OtherVariant,
}

/// Either lead the flight for a key or follow the one in the air.
pub(crate) enum Role {
    Leader(Leader),
    Follower(watch::Receiver<Outcome>),
}

/// What a leader does once its flight ended.
type OnEnd = Box<dyn FnOnce(&Outcome) + Send + Sync>;

/// Held by the one request fetching a key. Dropping it without [`Leader::finish`] tells
/// followers the flight was abandoned.
pub(crate) struct Leader {
    coalescer: Arc<Coalescer>,
    key: FlightKey,
    id: u64,
    sender: Option<watch::Sender<Outcome>>,
    /// Told how the flight ended, once (the fleet-wide lease this leader holds).
    on_end: Option<OnEnd>,
}

impl Coalescer {
    pub(crate) fn join(self: &Arc<Self>, logical: &str, flight: &[u8]) -> Role {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let key: FlightKey = (logical.into(), flight.into());
        match self.flights.entry(key.clone()) {
            MapEntry::Occupied(flight) => Role::Follower(flight.get().outcome.clone()),
            MapEntry::Vacant(slot) => {
                let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (sender, outcome) = watch::channel(Outcome::Pending);
                slot.insert(Flight {
                    id,
                    outcome,
                    token: None,
                    on_forget: None,
                });
                Role::Leader(Leader {
                    coalescer: self.clone(),
                    key,
                    id,
                    sender: Some(sender),
                    on_end: None,
                })
            }
        }
    }

    /// How many flights of `logical`'s bucket have ended with a stored entry: read before
    /// a lookup, compared after joining (see [`Coalescer::stored`]).
    pub(crate) fn stored_count(&self, logical: &str) -> u64 {
        self.bucket(logical).load(Ordering::Acquire)
    }

    fn bucket(&self, logical: &str) -> &AtomicU64 {
        use std::hash::BuildHasher;
        let hash = self.buckets.hash_one(logical);
        &self.stored[hash as usize % self.stored.len()]
    }

    /// Take the flights of keys `matches` says yes to out of the map, so requests arriving
    /// after an invalidation never join (or read) a fetch from before it. Their leaders
    /// carry on; only those who joined already hear from them.
    pub(crate) fn forget(&self, matches: impl Fn(&str) -> bool) {
        if self.flights.is_empty() {
            return;
        }
        self.flights.retain(|(logical, _), flight| {
            let keep = !matches(logical);
            // A flight that has not taken its token yet has not called the origin: it
            // fetches after this invalidation and stores, so it keeps what it holds.
            if !keep && flight.token.is_some() {
                flight.forgotten();
            }
            keep
        });
    }

    /// [`forget`](Self::forget) for another process's invalidation, heard late: only the
    /// flights whose token `fetched_before` says predates it. A flight whose leader has
    /// not taken its token yet has not called the origin either (the origin is called
    /// after the token is taken), so what it fetches is fresh with respect to this
    /// invalidation: it stays.
    pub(crate) fn forget_fetched_before(
        &self,
        matches: impl Fn(&str) -> bool,
        fetched_before: impl Fn(u64) -> bool,
    ) {
        if self.flights.is_empty() {
            return;
        }
        self.flights.retain(|(logical, _), flight| {
            let keep = !(matches(logical) && flight.token.is_some_and(&fetched_before));
            if !keep {
                flight.forgotten();
            }
            keep
        });
    }

    /// Flights in the air (for tests and stats).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.len()
    }
}

/// Wait for a leader's outcome, at most `limit`. A leader that outlives the wait counts as
/// uncacheable for this follower, who then goes to the origin itself.
pub(crate) async fn follow(mut outcome: watch::Receiver<Outcome>, limit: Duration) -> Outcome {
    follow_until(&mut outcome, limit, |o| *o != Outcome::Pending).await
}

/// Wait (at most `limit`) for an outcome past sharing: the stored entry, or none.
pub(crate) async fn follow_past_sharing(
    mut outcome: watch::Receiver<Outcome>,
    limit: Duration,
) -> Outcome {
    follow_until(&mut outcome, limit, |o| {
        !matches!(o, Outcome::Pending | Outcome::Sharing(_))
    })
    .await
}

async fn follow_until(
    outcome: &mut watch::Receiver<Outcome>,
    limit: Duration,
    done: impl FnMut(&Outcome) -> bool,
) -> Outcome {
    let wait = outcome.wait_for(done);
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(result)) => result.clone(),
        // The sender was dropped: the leader is gone.
        Ok(Err(_)) => Outcome::Abandoned,
        Err(_) => Outcome::Uncacheable,
    }
}

impl Leader {
    /// End the flight: remove it first so newcomers start afresh, then tell followers.
    pub(crate) fn finish(mut self, outcome: Outcome) {
        self.end(outcome);
    }

    /// Record the write token this leader took, before it calls the origin.
    pub(crate) fn took(&self, token: u64) {
        if let Some(mut flight) = self.coalescer.flights.get_mut(&self.key) {
            if flight.id == self.id {
                flight.token = Some(token);
            }
        }
    }

    /// Call `on_forget` if an invalidation forgets the flight before it ends: what it
    /// fetches will not be stored, so what it holds for others (its fleet-wide lease, on
    /// which other processes' misses of the key wait) goes back at once rather than when
    /// the doomed fetch ends.
    pub(crate) fn on_forget(&self, on_forget: impl FnOnce() + Send + Sync + 'static) {
        if let Some(mut flight) = self.coalescer.flights.get_mut(&self.key) {
            if flight.id == self.id {
                flight.on_forget = Some(Box::new(on_forget));
            }
        }
    }

    /// Call `on_end` with the flight's outcome when it ends (however it ends).
    pub(crate) fn on_end(&mut self, on_end: impl FnOnce(&Outcome) + Send + Sync + 'static) {
        self.on_end = Some(Box::new(on_end));
    }

    /// Let followers read `fill` while this leader's response arrives.
    pub(crate) fn share(&self, fill: std::sync::Arc<Fill>) {
        if let Some(sender) = &self.sender {
            let _ = sender.send(Outcome::Sharing(fill));
        }
    }

    fn end(&mut self, outcome: Outcome) {
        let Some(sender) = self.sender.take() else {
            return;
        };
        if matches!(outcome, Outcome::Stored) {
            // Counted before the flight leaves the map: a miss that joins after it left
            // sees the count moved.
            self.coalescer
                .bucket(&self.key.0)
                .fetch_add(1, Ordering::AcqRel);
        }
        self.coalescer
            .flights
            .remove_if(&self.key, |_, flight| flight.id == self.id);
        if let Some(on_end) = self.on_end.take() {
            on_end(&outcome);
        }
        let _ = sender.send(outcome);
    }
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("key", &self.key)
            .field("id", &self.id)
            .field("holds_fleet_lease", &self.on_end.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.end(Outcome::Abandoned);
    }
}

/// Followers of a leader whose answer will not be stored go to the origin at once.
pub(crate) fn release(leader: Option<Leader>) {
    if let Some(leader) = leader {
        leader.finish(Outcome::Uncacheable);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lead(c: &Arc<Coalescer>) -> Leader {
        lead_at(c, "/k", b"1")
    }

    fn lead_at(c: &Arc<Coalescer>, logical: &str, flight: &[u8]) -> Leader {
        match c.join(logical, flight) {
            Role::Leader(l) => l,
            Role::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(c: &Arc<Coalescer>) -> watch::Receiver<Outcome> {
        match c.join("/k", b"1") {
            Role::Follower(f) => f,
            Role::Leader(_) => panic!("expected to follow"),
        }
    }

    #[tokio::test]
    async fn followers_hear_the_outcome_and_the_flight_ends() {
        let c = Arc::new(Coalescer::default());
        let leader = lead(&c);
        let f = follower(&c);
        leader.finish(Outcome::Stored);
        assert_eq!(follow(f, Duration::from_secs(1)).await, Outcome::Stored);
        assert_eq!(c.in_flight(), 0);
        // A later miss leads a new flight.
        let _again = lead(&c);
    }

    #[tokio::test]
    async fn only_a_flight_that_stored_its_entry_moves_its_keys_count() {
        let c = Arc::new(Coalescer::default());
        let before = c.stored_count("/k");
        lead(&c).finish(Outcome::Uncacheable);
        drop(lead(&c));
        assert_eq!(c.stored_count("/k"), before, "nothing was stored");
        lead(&c).finish(Outcome::Stored);
        assert_eq!(c.stored_count("/k"), before + 1);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let c = Arc::new(Coalescer::default());
        let leader = lead(&c);
        let f = follower(&c);
        drop(leader);
        assert_eq!(follow(f, Duration::from_secs(1)).await, Outcome::Abandoned);
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_leader_releases_followers_after_the_limit() {
        let c = Arc::new(Coalescer::default());
        let _leader = lead(&c);
        let f = follower(&c);
        assert_eq!(
            follow(f, Duration::from_millis(50)).await,
            Outcome::Uncacheable
        );
    }

    #[test]
    fn distinct_keys_fly_separately() {
        let c = Arc::new(Coalescer::default());
        let _a = lead(&c);
        assert!(matches!(c.join("/k", b"2"), Role::Leader(_)));
        assert!(matches!(c.join("/other", b"1"), Role::Leader(_)));
    }

    #[test]
    fn a_late_invalidation_forgets_only_flights_that_took_their_token_before_it() {
        let c = Arc::new(Coalescer::default());
        let before = lead(&c);
        before.took(4);
        let after = lead_at(&c, "/k", b"2");
        after.took(5);
        // Not yet at the origin: what it fetches is fetched after the invalidation.
        let _untaken = lead_at(&c, "/k", b"3");
        let _elsewhere = lead_at(&c, "/other", b"1");
        c.forget_fetched_before(|key| key == "/k", |token| token < 5);
        assert!(matches!(c.join("/k", b"1"), Role::Leader(_)));
        assert!(matches!(c.join("/k", b"2"), Role::Follower(_)));
        assert!(matches!(c.join("/k", b"3"), Role::Follower(_)));
        assert!(matches!(c.join("/other", b"1"), Role::Follower(_)));
    }

    #[test]
    fn a_forgotten_flight_hands_back_what_it_holds_once_and_only_when_forgotten() {
        use std::sync::atomic::AtomicUsize;
        let c = Arc::new(Coalescer::default());
        let handed = Arc::new(AtomicUsize::new(0));
        let hand_back = |leader: &Leader| {
            let handed = handed.clone();
            leader.on_forget(move || {
                handed.fetch_add(1, Ordering::SeqCst);
            });
        };
        let doomed = lead(&c);
        doomed.took(4);
        hand_back(&doomed);
        let fresh = lead_at(&c, "/k", b"2");
        fresh.took(5);
        hand_back(&fresh);
        c.forget_fetched_before(|key| key == "/k", |token| token < 5);
        assert_eq!(
            handed.load(Ordering::SeqCst),
            1,
            "the doomed flight's, only"
        );
        // Ending after it was forgotten hands back nothing more.
        doomed.finish(Outcome::Uncacheable);
        assert_eq!(handed.load(Ordering::SeqCst), 1);
        // A flight that ends before any invalidation is never "forgotten".
        fresh.finish(Outcome::Stored);
        c.forget(|_| true);
        assert_eq!(handed.load(Ordering::SeqCst), 1);
        // This process's own invalidation: a flight at the origin hands back; one that
        // has not taken its token fetches after the invalidation, and keeps its lease.
        let own = lead_at(&c, "/k", b"3");
        own.took(6);
        hand_back(&own);
        let not_yet = lead_at(&c, "/k", b"4");
        hand_back(&not_yet);
        c.forget(|key| key == "/k");
        assert_eq!(
            handed.load(Ordering::SeqCst),
            2,
            "the one at the origin, only"
        );
    }

    #[test]
    fn a_token_recorded_after_the_flight_ended_names_no_other_flight() {
        let c = Arc::new(Coalescer::default());
        let first = lead(&c);
        c.forget(|_| true);
        let second = lead(&c);
        first.took(1);
        second.took(9);
        c.forget_fetched_before(|_| true, |token| token < 5);
        assert!(matches!(c.join("/k", b"1"), Role::Follower(_)));
    }
}
