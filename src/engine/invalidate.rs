//! The invalidation protocol, one for every kind of invalidation: ban what fetches in the
//! air would store, forget the flights whose followers would be handed a response from
//! before, then clear the store. The ban comes first, so a fetch that ends while the store
//! is being cleared cannot store what the invalidation is removing.

use super::ban::Ban;
use super::state::Engine;
use crate::pattern::Pattern;
use crate::stats::bump;
use crate::store::StoreError;

/// What an invalidation covers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Scope<'a> {
    /// The entries whose logical key matches: removed.
    Pattern(&'a Pattern),
    /// The entries whose logical key matches: marked stale (see
    /// [`CacheHandle::invalidate_soft`](crate::CacheHandle::invalidate_soft)).
    Soft(&'a Pattern),
    /// The entries whose response named this `Cache-Tag`.
    Tag(&'a str),
    /// Every entry of the namespace.
    All,
}

impl Engine {
    /// Invalidate `scope`: returns how many entries the store removed or marked. The ban
    /// and the forgotten flights hold in this process whether or not the store answers.
    pub(crate) async fn invalidate(&self, scope: Scope<'_>) -> Result<u64, StoreError> {
        let shared = self.shared();
        bump!(shared.counters, invalidations);
        let (ban, pattern) = match scope {
            Scope::Pattern(pattern) | Scope::Soft(pattern) => {
                (Ban::Pattern(pattern), Some(pattern))
            }
            Scope::Tag(tag) => (Ban::Tag(tag), None),
            Scope::All => (Ban::All, None),
        };
        shared.bans.record(ban);
        match pattern {
            Some(pattern) => shared.flights.forget(|key| pattern.matches_str(key)),
            // A flight's tags are known only with its response: every flight is forgotten.
            None => shared.flights.forget(|_| true),
        }
        let (store, namespace) = (&shared.store, &*shared.namespace);
        match scope {
            Scope::Pattern(pattern) => store.invalidate(namespace, pattern).await,
            Scope::Soft(pattern) => store.invalidate_soft(namespace, pattern).await,
            Scope::Tag(tag) => store.invalidate_tag(namespace, tag).await,
            Scope::All => store.invalidate_all(namespace).await,
        }
    }
}
