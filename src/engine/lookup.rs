//! Reading and writing entries: a lookup picks the entry that answers a request's exact
//! identity and `Vary` values; a commit stores an entry unless an invalidation since its
//! ticket covers it, and tells the flight that fetched it whether it did. Every write of
//! an entry goes through [`Engine::commit`](super::state::Engine::commit).

use std::sync::Arc;

use http::HeaderMap;

use super::state::Engine;
use super::Ticket;
use crate::clock;
use crate::engine::coalesce::{Leader, Outcome};
use crate::entry::Entry;
use crate::key::{vary_matches, Variant};
use crate::stats::bump;
use crate::store::{Backend, Source, StoreKey, VariantRead};

/// What a lookup found, and where the entry was read (the answer says so).
pub(crate) enum Found {
    Hit(Arc<Entry>, Source),
    /// An expired entry still within one of its stale windows.
    Stale(Arc<Entry>, Source),
    /// Nothing under this URL.
    UriMiss,
    /// Entries exist under this URL, but for other values of the `Vary` headers (named).
    VaryMiss(Vec<http::HeaderName>),
}

impl Engine {
    fn store_key<'a>(&'a self, logical: &'a str, variant: u64) -> StoreKey<'a> {
        StoreKey {
            namespace: &self.shared().namespace,
            logical,
            variant,
        }
    }

    /// Find a fresh entry for the request. Store errors are logged and read as a miss.
    ///
    /// A hit the store can answer at once (a near cache in front of Redis) is taken first;
    /// anything else (a miss, a stale entry, a variant it does not hold) asks the store.
    pub(crate) async fn lookup(
        &self,
        logical: &str,
        variant: &Variant,
        request_headers: &HeaderMap,
    ) -> Found {
        let (hash, identity) = (variant.hash, &variant.identity);
        let now = clock::now_millis();
        if let Some((entry, source)) = self.hit_now(logical, hash, identity, request_headers, now) {
            return Found::Hit(entry, source);
        }
        let key = self.store_key(logical, variant.hash);
        let read = match self.shared().store.coordination() {
            Some(store) => store.get_for(key, &variant.identity, request_headers).await,
            None => {
                // A store of one's own says only whether it serves from a fallback.
                let source = match self.shared().store.backend() {
                    Backend::FallingBack => Source::Fallback,
                    _ => Source::Store,
                };
                let found = self.shared().store.get(key).await;
                found.map(|found| {
                    found.map_or(VariantRead::Missing, |v| VariantRead::Variants(v, source))
                })
            }
        };
        let (variants, source) = match read {
            Ok(VariantRead::Variants(variants, source)) => (variants, source),
            Ok(VariantRead::OtherVariants(mut names)) if !names.is_empty() => {
                names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                return Found::VaryMiss(names);
            }
            Ok(_) => return Found::UriMiss,
            Err(error) => {
                bump!(self.shared().counters, store_errors);
                tracing::warn!(key = %logical, %error, "cache lookup failed; treating as a miss");
                return Found::UriMiss;
            }
        };
        pick(&variants, &variant.identity, request_headers, now, source)
    }

    /// The fresh entry, judged at `now`, that the store holds at once (memory, a near
    /// cache) for this request, and where it was read: `None` when there is none, or the
    /// store must be asked. The store lends its variants for the choice; only the entry
    /// chosen is shared.
    pub(crate) fn hit_now(
        &self,
        logical: &str,
        hash: u64,
        identity: &[u8],
        request_headers: &HeaderMap,
        now: u64,
    ) -> Option<(Arc<Entry>, Source)> {
        let store = self.shared().store.coordination()?;
        let mut hit = None;
        let source = store.read_now(self.store_key(logical, hash), &mut |variants| {
            hit = fresh(variants, identity, request_headers, now).cloned();
        })?;
        hit.map(|entry| (entry, source))
    }

    /// Store `entry` unless an invalidation since `ticket` covers it, then tell the
    /// flight `leader` leads whether it is stored (its followers read it, or go to the
    /// origin). Returns whether the store kept it (a store of one's own: whether it took
    /// it). Never fails: errors are logged.
    pub(crate) async fn commit(
        &self,
        logical: &str,
        variant: u64,
        ticket: Ticket,
        entry: impl Into<Arc<Entry>>,
        leader: Option<Leader>,
    ) -> bool {
        let stored = self.write(logical, variant, ticket, entry.into()).await;
        if let Some(leader) = leader {
            leader.finish(if stored {
                Outcome::Stored
            } else {
                Outcome::Uncacheable
            });
        }
        stored
    }

    /// [`commit`](Self::commit)'s write: checked against the bans, then the store's token.
    async fn write(&self, logical: &str, variant: u64, ticket: Ticket, entry: Arc<Entry>) -> bool {
        let write = {
            let bans = self.shared().bans.read();
            if bans.is_banned(ticket.bans, logical, entry.tags()) {
                tracing::debug!(key = %logical, "not storing a response fetched before an invalidation");
                return false;
            }
            // Called under the read lock: local stores apply the write here (see `Store`).
            let key = self.store_key(logical, variant);
            match self.shared().store.coordination() {
                Some(store) => store.put_checked(key, entry, ticket.store),
                None => {
                    let written = self.shared().store.put(key, entry);
                    Box::pin(async move { written.await.map(|()| true) })
                }
            }
        };
        match write.await {
            Ok(false) => false,
            Ok(true) => {
                bump!(self.shared().counters, stores);
                true
            }
            Err(error) => {
                bump!(self.shared().counters, store_errors);
                tracing::warn!(key = %logical, %error, "cache write failed; response served uncached");
                false
            }
        }
    }
}

/// The entry among `variants` that answers a request of this identity with these headers:
/// fresh, else stale (within a stale window), else a miss saying whether other `Vary`
/// variants exist. Entries of another identity (sharing the index by a hash collision)
/// answer nothing.
fn pick(
    variants: &[Arc<Entry>],
    identity: &[u8],
    request_headers: &HeaderMap,
    now: u64,
    source: Source,
) -> Found {
    if let Some(entry) = fresh(variants, identity, request_headers, now) {
        return Found::Hit(entry.clone(), source);
    }
    let usable = |entry: &&Arc<Entry>| !entry.is_dead_at(now) && entry.identity() == identity;
    // None is fresh: the last that matches is the stale one.
    let stale = variants
        .iter()
        .rev()
        .filter(usable)
        .find(|entry| vary_matches(entry.vary(), request_headers));
    if let Some(entry) = stale {
        return Found::Stale(entry.clone(), source);
    }
    // A miss: name the headers the other variants vary on, so this request's fetch is
    // coalesced only with requests that send the same values.
    let mut names: Vec<http::HeaderName> = Vec::new();
    let mut any = false;
    for entry in variants.iter().filter(usable) {
        any = true;
        for name in &entry.vary().names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
    }
    if !any {
        return Found::UriMiss;
    }
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    Found::VaryMiss(names)
}

/// The fresh entry among `variants` that answers a request of this identity with these
/// headers, marked as used at `now`.
fn fresh<'a>(
    variants: &'a [Arc<Entry>],
    identity: &[u8],
    request_headers: &HeaderMap,
    now: u64,
) -> Option<&'a Arc<Entry>> {
    let entry = variants.iter().find(|entry| {
        entry.is_fresh_at(now)
            && entry.identity() == identity
            && vary_matches(entry.vary(), request_headers)
    })?;
    // The variant this request reads: the one a full variant list keeps longest, and,
    // among several, the one a use counts on (a store counts a lone entry's itself, but
    // cannot tell which of several a reader picks).
    if variants.len() > 1 {
        entry.usage().count_use();
    }
    entry.usage().stamp_read();
    Some(entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::StatusCode;
    use std::time::Duration;

    use crate::handle::test_handle as handle;

    #[tokio::test]
    async fn an_entry_answers_only_its_exact_identity_whatever_its_index() {
        let handle = handle();
        // Two requests whose identities share an index hash (what an attacker computes
        // for xxh3): the store files them under one slot.
        let victim = Variant {
            hash: 42,
            identity: Bytes::from_static(b"victim"),
        };
        let attacker = Variant {
            hash: 42,
            identity: Bytes::from_static(b"attacker"),
        };
        let entry = Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"poison"),
            Duration::from_secs(60),
        )
        .with_identity(attacker.identity.clone());
        let ticket = handle.engine().ticket(None).await;
        assert!(
            handle
                .engine()
                .commit("/page", 42, ticket, entry, None)
                .await
        );
        let empty = HeaderMap::new();
        assert!(matches!(
            handle.engine().lookup("/page", &victim, &empty).await,
            Found::UriMiss
        ));
        let now = crate::clock::now_millis();
        assert!(handle
            .engine()
            .hit_now("/page", 42, b"victim", &empty, now)
            .is_none());
        assert!(matches!(
            handle.engine().lookup("/page", &attacker, &empty).await,
            Found::Hit(_, Source::Memory)
        ));
    }
}
