//! A miss's way to the origin: its ticket (what its write is checked against), its turn in
//! the key's flight, and hit-for-miss (keys whose answers are not storable skip the queue).

use std::sync::Arc;
use std::time::Duration;

use super::state::Engine;
use crate::engine::coalesce::{
    follow, follow_past_sharing, Coalescer, Leader, Outcome, Role, Share, Turn,
};
use crate::engine::fill::{Budget, Fill};
use crate::stats::bump;

/// Taken before a miss calls the origin; its write is checked against it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    pub(super) bans: crate::engine::ban::Epoch,
    pub(super) store: u64,
}

impl Engine {
    /// A ticket as this process knows it now, without asking a shared store: taken before
    /// a lookup whose entry may be written back (freshened by a `304`), so that the write
    /// is refused for an invalidation between the lookup and the fetch. It is never later
    /// than a ticket taken after it; one from before Redis named a new data set is refused
    /// by the store, the safe way.
    pub(crate) fn ticket_now(&self) -> Ticket {
        Ticket {
            bans: self.shared().bans.epoch(),
            store: self
                .shared()
                .store
                .coordination()
                .map_or(0, |s| s.write_token()),
        }
    }

    /// What a miss carries from before it calls the origin to its store write: the ban
    /// epoch, and the store's current write token (asked of a shared store, so a fetch
    /// that began after another process's invalidation is not refused for it).
    ///
    /// A flight's `leader` takes it before it calls the origin; its flight records the
    /// token, so that another process's invalidation heard later forgets the flight only
    /// when the fetch began before it.
    pub(crate) async fn ticket(&self, leader: Option<&Leader>) -> Ticket {
        let bans = self.shared().bans.epoch();
        let store = match self.shared().store.coordination() {
            Some(store) => match store.current_write_token().await {
                Ok(token) => token,
                Err(_) => store.write_token(),
            },
            None => 0,
        };
        if let Some(leader) = leader {
            leader.took(store);
        }
        Ticket { bans, store }
    }

    pub(crate) fn flights(&self) -> &Arc<Coalescer> {
        &self.shared().flights
    }

    /// A miss joins the flight for its key: it leads, or it waits (up to the coalesce
    /// timeout, counted as coalesced) for the leader's outcome.
    ///
    /// When the leader shares its response as it arrives, `share` says what this follower
    /// makes of it: read it at once, wait for the stored entry, or fly apart (its `Vary`
    /// values differ).
    pub(crate) async fn take_turn(
        &self,
        logical: &str,
        flight: &[u8],
        share: impl FnOnce(&Arc<Fill>) -> Share,
    ) -> Turn {
        match self.shared().flights.join(logical, flight) {
            Role::Leader(leader) => Turn::Lead(leader),
            Role::Follower(outcome) => {
                bump!(self.shared().counters, coalesced);
                let limit = self.shared().coalesce_timeout;
                let started = tokio::time::Instant::now();
                let heard = match follow(outcome.clone(), limit).await {
                    Outcome::Sharing(fill) => {
                        match share(&fill) {
                            Share::Read => {
                                if let Some(reader) = fill.reader() {
                                    return Turn::Read(reader);
                                }
                            }
                            Share::OtherVariant => {
                                return Turn::OtherVariant(fill.head.vary.names.clone())
                            }
                            Share::WaitForEntry => {}
                        }
                        follow_past_sharing(outcome, limit.saturating_sub(started.elapsed())).await
                    }
                    other => other,
                };
                match heard {
                    // The entry should be there now, or the leader left: look again.
                    Outcome::Stored
                    | Outcome::Abandoned
                    | Outcome::Pending
                    | Outcome::Sharing(_) => Turn::LookAgain,
                    Outcome::Uncacheable => Turn::FetchAlone,
                }
            }
        }
    }

    /// The bytes all fills of this handle may hold while recording.
    pub(crate) fn fill_budget(&self) -> Arc<Budget> {
        self.shared().fill_budget.clone()
    }

    /// How long a follower waits for its flight's leader.
    pub(crate) fn coalesce_timeout(&self) -> Duration {
        self.shared().coalesce_timeout
    }

    /// The handle's stale windows, for responses that name none.
    pub(crate) fn default_stale(&self) -> (Duration, Duration) {
        (
            self.shared().stale_while_revalidate,
            self.shared().stale_if_error,
        )
    }

    fn hit_for_miss_key(&self, logical: &str, identity: &[u8]) -> u64 {
        self.shared()
            .hit_for_miss_seed
            .hash_one((logical, identity))
    }

    /// Was the last response for this key unstorable (recently)?
    pub(crate) fn is_hit_for_miss(&self, logical: &str, identity: &[u8]) -> bool {
        let key = self.hit_for_miss_key(logical, identity);
        match self.shared().hit_for_miss.get(&key).map(|until| *until) {
            Some(until) if until > tokio::time::Instant::now() => true,
            Some(_) => {
                self.shared().hit_for_miss.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Remember (or forget) that a key's response could not be stored.
    pub(crate) fn set_hit_for_miss(&self, logical: &str, identity: &[u8], uncacheable: bool) {
        let key = self.hit_for_miss_key(logical, identity);
        let map = &self.shared().hit_for_miss;
        if !uncacheable {
            if !map.is_empty() {
                map.remove(&key);
            }
            return;
        }
        if self.shared().hit_for_miss_ttl.is_zero() {
            return;
        }
        let now = tokio::time::Instant::now();
        // Bounded: a flood of unstorable URLs must not grow this without limit.
        if map.len() >= 10_000 {
            map.retain(|_, until| *until > now);
            if map.len() >= 10_000 {
                map.clear();
            }
        }
        map.insert(key, now + self.shared().hit_for_miss_ttl);
    }
}
