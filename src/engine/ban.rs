//! The ban log: what keeps a response fetched before an invalidation from being stored
//! after it.
//!
//! A miss takes the current epoch (part of its ticket) before it calls the inner service. Every
//! invalidation records a ban under a write lock, bumping the epoch, and only then removes
//! matching entries from the store. A write holds the read lock while it checks for bans
//! newer than its ticket and hands the entry to the store, so for each write either the
//! invalidation's sweep sees the entry, or the write sees the ban and is dropped. Either way,
//! once `invalidate` returns nothing it matched can appear from a request that began before.
//!
//! Bans are kept for [`RETENTION`]; a write whose ticket is older than that is dropped too,
//! which errs on the safe side for requests slower than that.
//!
//! The invariant: for every ticket at or above the floor, every ban recorded after it is
//! still in the log (or superseded by a newer ban of the same key or tag, which covers it).
//! A ban is only ever forgotten by raising the floor past its epoch, never silently.
//!
//! Recording a ban is amortised O(1) under the write lock that every miss's write also
//! needs: exact and tag bans sit in a map for lookups and, in recording order, in a FIFO
//! queue that is pruned from the front (when a ban is older than [`RETENTION`], or when
//! more than [`MAX_KEYED_BANS`] are remembered: then the floor rises instead, so an
//! attacker's flood of unsafe requests, each an exact invalidation, costs memory bounded
//! by that count and refuses in-flight writes rather than letting a stale one in).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::pattern::Pattern;

/// How long bans are remembered: longer than any request should take to answer.
pub(crate) const RETENTION: Duration = Duration::from_secs(300);
/// Most glob bans kept, whatever their age; older ones raise the floor instead.
const MAX_GLOB_BANS: usize = 4096;
/// Most exact (and, apart, tag) bans kept, whatever their age; older ones raise the floor.
pub(crate) const MAX_KEYED_BANS: usize = 1 << 16;

/// The epoch a miss saw before it called the inner service (its ticket's part here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Epoch(u64);

#[derive(Debug, Default)]
pub(crate) struct BanLog {
    state: RwLock<Bans>,
}

#[derive(Debug, Default)]
pub(crate) struct Bans {
    epoch: u64,
    /// Writes with tickets below this are dropped: bans they needed were forgotten.
    floor: u64,
    /// Epoch of the last `invalidate_all`.
    all: u64,
    exact: Keyed,
    tags: Keyed,
    globs: VecDeque<(u64, Instant, Pattern)>,
}

/// What an invalidation covers.
pub(crate) enum Ban<'a> {
    Pattern(&'a Pattern),
    Tag(&'a str),
    All,
}

impl BanLog {
    /// The epoch for a miss starting now.
    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.read().epoch)
    }

    /// Record a ban. Call before removing the matching entries from the store.
    pub(crate) fn record(&self, ban: Ban<'_>) {
        let now = Instant::now();
        let mut bans = self.state.write().unwrap_or_else(|e| e.into_inner());
        bans.epoch += 1;
        let epoch = bans.epoch;
        match ban {
            Ban::All => bans.all = epoch,
            Ban::Tag(tag) => {
                bans.tags.insert(tag, epoch, now);
            }
            Ban::Pattern(pattern) => match pattern.literal() {
                Some(key) => {
                    bans.exact.insert(key, epoch, now);
                }
                None => bans.globs.push_back((epoch, now, pattern.clone())),
            },
        }
        bans.prune(now);
    }

    /// Hold this while checking a ticket and handing the entry to the store.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Bans> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl Bans {
    /// Was an entry for `logical` with these `tags`, fetched under `ticket`, banned since?
    pub(crate) fn is_banned(&self, ticket: Epoch, logical: &str, tags: &[String]) -> bool {
        let since = ticket.0;
        if since == self.epoch {
            return false;
        }
        if since < self.floor || self.all > since {
            return true;
        }
        if self.exact.banned_since(logical, since) {
            return true;
        }
        if tags.iter().any(|t| self.tags.banned_since(t, since)) {
            return true;
        }
        self.globs
            .iter()
            .rev()
            .take_while(|(e, _, _)| *e > since)
            .any(|(_, _, p)| p.matches(logical.as_bytes()))
    }

    fn prune(&mut self, now: Instant) {
        // `None` early in the clock's life: nothing is old yet, but the caps still apply.
        let cutoff = now.checked_sub(RETENTION);
        let mut floor = self.floor;
        while let Some((epoch, at, _)) = self.globs.front() {
            if is_recent(*at, cutoff) && self.globs.len() <= MAX_GLOB_BANS {
                break;
            }
            floor = floor.max(*epoch);
            self.globs.pop_front();
        }
        floor = floor.max(self.exact.prune(cutoff));
        floor = floor.max(self.tags.prune(cutoff));
        self.floor = floor;
    }
}

fn is_recent(at: Instant, cutoff: Option<Instant>) -> bool {
    cutoff.is_none_or(|cutoff| at >= cutoff)
}

/// Exact or tag bans: the newest epoch per key for lookups, and every recording in order
/// (oldest first) so that pruning pops from the front instead of scanning the map.
#[derive(Debug, Default)]
pub(crate) struct Keyed {
    latest: HashMap<Arc<str>, u64>,
    /// (key, epoch, when recorded), in epoch order. A key banned again has an older element
    /// here whose epoch no longer matches `latest`: popping it forgets nothing.
    queue: VecDeque<(Arc<str>, u64, Instant)>,
}

impl Keyed {
    fn insert(&mut self, key: &str, epoch: u64, now: Instant) {
        let key: Arc<str> = match self.latest.get_key_value(key) {
            Some((existing, _)) => existing.clone(),
            None => key.into(),
        };
        self.latest.insert(key.clone(), epoch);
        self.queue.push_back((key, epoch, now));
    }

    fn banned_since(&self, key: &str, since: u64) -> bool {
        self.latest.get(key).is_some_and(|e| *e > since)
    }

    /// Forget bans recorded before `cutoff`, and the oldest beyond [`MAX_KEYED_BANS`].
    /// Returns the newest epoch forgotten (0 if none): the floor must rise to it.
    fn prune(&mut self, cutoff: Option<Instant>) -> u64 {
        let mut forgotten = 0;
        while let Some((_, _, at)) = self.queue.front() {
            if is_recent(*at, cutoff) && self.queue.len() <= MAX_KEYED_BANS {
                break;
            }
            let Some((key, epoch, _)) = self.queue.pop_front() else {
                break;
            };
            if self.latest.get(&key) == Some(&epoch) {
                self.latest.remove(&key);
                forgotten = epoch;
            }
        }
        // Give back the room a burst took, once it is mostly empty (amortised O(1)).
        if self.latest.capacity() > 1024 && self.latest.len() < self.latest.capacity() / 4 {
            self.latest.shrink_to(self.latest.len() * 2);
        }
        if self.queue.capacity() > 1024 && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(self.queue.len() * 2);
        }
        forgotten
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.latest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_after_the_ticket_covers_matching_keys_only() {
        let log = BanLog::default();
        let ticket = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("/api/dashboard/A*")));
        let bans = log.read();
        assert!(bans.is_banned(ticket, "/api/dashboard/ABC", &[]));
        assert!(!bans.is_banned(ticket, "/api/dashboard/XYZ", &[]));
    }

    #[test]
    fn a_ban_before_the_ticket_does_not_apply() {
        let log = BanLog::default();
        log.record(Ban::Pattern(&Pattern::new("/a")));
        let ticket = log.epoch();
        assert!(!log.read().is_banned(ticket, "/a", &[]));
    }

    #[test]
    fn exact_tag_and_all_bans() {
        let log = BanLog::default();
        let t = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("companies_all_synced")));
        assert!(log.read().is_banned(t, "companies_all_synced", &[]));
        assert!(!log.read().is_banned(t, "companies", &[]));
        let t = log.epoch();
        log.record(Ban::Tag("company:ABC"));
        assert!(log.read().is_banned(t, "/x", &["company:ABC".into()]));
        assert!(!log.read().is_banned(t, "/x", &["company:XYZ".into()]));
        let t = log.epoch();
        log.record(Ban::All);
        assert!(log.read().is_banned(t, "/anything", &[]));
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_bans_make_old_tickets_unusable() {
        let log = BanLog::default();
        let old = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("/x*")));
        tokio::time::advance(RETENTION + Duration::from_secs(1)).await;
        log.record(Ban::Pattern(&Pattern::new("/y*")));
        // The `/x*` ban was forgotten, so a ticket older than it is refused for any key.
        assert!(log.read().is_banned(old, "/z", &[]));
        let fresh = log.epoch();
        assert!(!log.read().is_banned(fresh, "/z", &[]));
    }

    #[tokio::test(start_paused = true)]
    async fn exact_bans_are_pruned_from_the_front_as_they_age() {
        let log = BanLog::default();
        for i in 0..10_000 {
            log.record(Ban::Pattern(&Pattern::new(&format!("/old/{i}"))));
        }
        let mid = log.epoch();
        tokio::time::advance(RETENTION / 2).await;
        for i in 0..10 {
            log.record(Ban::Pattern(&Pattern::new(&format!("/new/{i}"))));
        }
        assert_eq!(log.read().exact.len(), 10_010);
        tokio::time::advance(RETENTION / 2 + Duration::from_secs(1)).await;
        log.record(Ban::Tag("t"));
        let bans = log.read();
        // The old ones are gone and the floor rose past them; the recent ones still apply.
        assert_eq!(bans.exact.len(), 10);
        assert_eq!(bans.exact.queue.len(), 10);
        assert!(bans.floor >= 10_000);
        assert!(bans.is_banned(mid, "/new/3", &[]));
        assert!(!bans.is_banned(mid, "/other", &[]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_banned_again_keeps_its_newest_ban() {
        let log = BanLog::default();
        log.record(Ban::Pattern(&Pattern::new("/k")));
        tokio::time::advance(RETENTION - Duration::from_secs(10)).await;
        let ticket = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("/k")));
        tokio::time::advance(Duration::from_secs(20)).await;
        // Pops the first `/k` element: superseded, it forgets nothing.
        log.record(Ban::Pattern(&Pattern::new("/x")));
        let bans = log.read();
        assert!(bans.is_banned(ticket, "/k", &[]));
        assert_eq!(bans.floor, 0, "nothing was forgotten");
        assert_eq!(bans.exact.len(), 2);
    }

    #[test]
    fn too_many_young_bans_raise_the_floor_instead_of_growing() {
        let log = BanLog::default();
        let old = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("/first")));
        let after_first = log.epoch();
        for i in 0..MAX_KEYED_BANS + 100 {
            log.record(Ban::Tag(&format!("tag{i}")));
            log.record(Ban::Pattern(&Pattern::new(&format!("/k/{i}"))));
        }
        let bans = log.read();
        assert!(bans.exact.len() <= MAX_KEYED_BANS);
        assert!(bans.exact.queue.len() <= MAX_KEYED_BANS);
        assert!(bans.tags.len() <= MAX_KEYED_BANS);
        // `/first` was forgotten: tickets from before it are refused for any key.
        assert!(bans.is_banned(old, "/first", &[]));
        assert!(bans.is_banned(after_first, "/unrelated", &[]));
        drop(bans);
        // The floor stays below recent tickets: recent bans apply, precisely.
        let recent = log.epoch();
        log.record(Ban::Pattern(&Pattern::new("/y")));
        let bans = log.read();
        assert!(bans.is_banned(recent, "/y", &[]));
        assert!(!bans.is_banned(recent, "/unrelated", &[]));
    }
}
