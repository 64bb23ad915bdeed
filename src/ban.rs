//! The ban log: what keeps a response fetched before an invalidation from being stored
//! after it.
//!
//! A miss takes a ticket (the current epoch) before it calls the inner service. Every
//! invalidation records a ban under a write lock, bumping the epoch, and only then removes
//! matching entries from the store. A write holds the read lock while it checks for bans
//! newer than its ticket and hands the entry to the store, so for each write either the
//! invalidation's sweep sees the entry, or the write sees the ban and is dropped. Either way,
//! once `invalidate` returns nothing it matched can appear from a request that began before.
//!
//! Bans are kept for [`RETENTION`]; a write whose ticket is older than that is dropped too,
//! which errs on the safe side for requests slower than that.

use std::collections::{HashMap, VecDeque};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::pattern::Pattern;

/// How long bans are remembered: longer than any request should take to answer.
pub(crate) const RETENTION: Duration = Duration::from_secs(300);
/// Most glob bans kept, whatever their age; older ones raise the floor instead.
const MAX_GLOB_BANS: usize = 4096;

/// An epoch a miss saw before it called the inner service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket(u64);

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
    exact: HashMap<Box<str>, (u64, Instant)>,
    tags: HashMap<Box<str>, (u64, Instant)>,
    globs: VecDeque<(u64, Instant, Pattern)>,
}

/// What an invalidation covers.
pub(crate) enum Ban<'a> {
    Pattern(&'a Pattern),
    Tag(&'a str),
    All,
}

impl BanLog {
    /// The ticket for a miss starting now.
    pub(crate) fn ticket(&self) -> Ticket {
        Ticket(self.read().epoch)
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
                bans.tags.insert(tag.into(), (epoch, now));
            }
            Ban::Pattern(pattern) => match pattern.literal() {
                Some(key) => {
                    bans.exact.insert(key.into(), (epoch, now));
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
    pub(crate) fn is_banned(&self, ticket: Ticket, logical: &str, tags: &[String]) -> bool {
        let since = ticket.0;
        if since == self.epoch {
            return false;
        }
        if since < self.floor || self.all > since {
            return true;
        }
        if self.exact.get(logical).is_some_and(|(e, _)| *e > since) {
            return true;
        }
        if tags
            .iter()
            .any(|t| self.tags.get(t.as_str()).is_some_and(|(e, _)| *e > since))
        {
            return true;
        }
        self.globs
            .iter()
            .rev()
            .take_while(|(e, _, _)| *e > since)
            .any(|(_, _, p)| p.matches(logical.as_bytes()))
    }

    fn prune(&mut self, now: Instant) {
        let Some(cutoff) = now.checked_sub(RETENTION) else {
            return;
        };
        let mut floor = self.floor;
        while let Some((epoch, at, _)) = self.globs.front() {
            if *at >= cutoff && self.globs.len() <= MAX_GLOB_BANS {
                break;
            }
            floor = floor.max(*epoch);
            self.globs.pop_front();
        }
        // Exact and tag bans are pruned in bulk when they are many, to keep this O(1)
        // amortised.
        for map in [&mut self.exact, &mut self.tags] {
            if map.len() > 1024 {
                map.retain(|_, (epoch, at)| {
                    let keep = *at >= cutoff;
                    if !keep {
                        floor = floor.max(*epoch);
                    }
                    keep
                });
            }
        }
        self.floor = floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ban_after_the_ticket_covers_matching_keys_only() {
        let log = BanLog::default();
        let ticket = log.ticket();
        log.record(Ban::Pattern(&Pattern::new("/api/dashboard/A*")));
        let bans = log.read();
        assert!(bans.is_banned(ticket, "/api/dashboard/ABC", &[]));
        assert!(!bans.is_banned(ticket, "/api/dashboard/XYZ", &[]));
    }

    #[test]
    fn a_ban_before_the_ticket_does_not_apply() {
        let log = BanLog::default();
        log.record(Ban::Pattern(&Pattern::new("/a")));
        let ticket = log.ticket();
        assert!(!log.read().is_banned(ticket, "/a", &[]));
    }

    #[test]
    fn exact_tag_and_all_bans() {
        let log = BanLog::default();
        let t = log.ticket();
        log.record(Ban::Pattern(&Pattern::new("companies_all_synced")));
        assert!(log.read().is_banned(t, "companies_all_synced", &[]));
        assert!(!log.read().is_banned(t, "companies", &[]));
        let t = log.ticket();
        log.record(Ban::Tag("company:ABC"));
        assert!(log.read().is_banned(t, "/x", &["company:ABC".into()]));
        assert!(!log.read().is_banned(t, "/x", &["company:XYZ".into()]));
        let t = log.ticket();
        log.record(Ban::All);
        assert!(log.read().is_banned(t, "/anything", &[]));
    }

    #[tokio::test(start_paused = true)]
    async fn forgotten_bans_make_old_tickets_unusable() {
        let log = BanLog::default();
        let old = log.ticket();
        log.record(Ban::Pattern(&Pattern::new("/x*")));
        tokio::time::advance(RETENTION + Duration::from_secs(1)).await;
        log.record(Ban::Pattern(&Pattern::new("/y*")));
        // The `/x*` ban was forgotten, so a ticket older than it is refused for any key.
        assert!(log.read().is_banned(old, "/z", &[]));
        let fresh = log.ticket();
        assert!(!log.read().is_banned(fresh, "/z", &[]));
    }
}
