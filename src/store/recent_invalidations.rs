//! Invalidations a fallback store remembers, to replay them to a Redis that restarted (it
//! may have loaded a snapshot taken before them): the last five minutes' worth, at most
//! 10 000, its own and those heard from other processes.
//!
//! The window is real time, as a Redis snapshot's age is: `std::time::Instant`, not
//! Tokio's. Invalidations are remembered from request tasks and from the listener's
//! thread; on Tokio's clock a runtime whose time is paused (a test's) would stamp its own
//! minutes ahead of the thread's, and prune what other processes invalidated early.

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Invalidation;

/// How long invalidations are remembered.
const WINDOW: Duration = Duration::from_secs(300);
/// Most invalidations remembered.
const MAX_REMEMBERED: usize = 10_000;

/// Recent invalidations, oldest first, with the namespace each applies to.
#[derive(Default)]
pub(crate) struct RecentInvalidations {
    list: Mutex<VecDeque<(Instant, String, Invalidation)>>,
}

impl RecentInvalidations {
    /// Remember one, forgetting those past the window or the count.
    pub(crate) fn remember(&self, namespace: &str, invalidation: &Invalidation) {
        let now = Instant::now();
        let mut list = self.lock();
        list.push_back((now, namespace.to_owned(), invalidation.clone()));
        while list.len() > MAX_REMEMBERED
            || list
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > WINDOW)
        {
            list.pop_front();
        }
    }

    /// Each remembered invalidation once, oldest first (a glob's replay scans the whole
    /// keyspace: once is enough).
    pub(crate) fn distinct(&self) -> Vec<(String, Invalidation)> {
        let mut seen = HashSet::new();
        self.lock()
            .iter()
            .map(|(_, namespace, invalidation)| (namespace.clone(), invalidation.clone()))
            .filter(|item| seen.insert(item.clone()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, String, Invalidation)>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(p: &str) -> Invalidation {
        Invalidation::Pattern(p.to_owned())
    }

    #[test]
    fn each_is_replayed_once_in_order() {
        let recent = RecentInvalidations::default();
        for p in ["a*", "b*", "a*"] {
            recent.remember("ns", &pattern(p));
        }
        recent.remember("other", &pattern("a*"));
        assert_eq!(
            recent.distinct(),
            vec![
                ("ns".to_owned(), pattern("a*")),
                ("ns".to_owned(), pattern("b*")),
                ("other".to_owned(), pattern("a*")),
            ]
        );
    }

    /// One remembered on a thread outside the runtime (the listener's), then one on a
    /// runtime whose paused clock ran ten minutes ahead: both are within five minutes of
    /// real time, so both are kept.
    #[tokio::test(start_paused = true)]
    async fn a_paused_runtime_does_not_age_what_another_thread_remembered() {
        let recent = std::sync::Arc::new(RecentInvalidations::default());
        let heard = recent.clone();
        std::thread::spawn(move || heard.remember("ns", &pattern("heard*")))
            .join()
            .unwrap();
        tokio::time::advance(Duration::from_secs(600)).await;
        recent.remember("ns", &pattern("own*"));
        assert_eq!(recent.distinct().len(), 2, "{:?}", recent.distinct());
    }
}
