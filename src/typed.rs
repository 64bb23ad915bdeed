//! Typed values in the cache: [`CacheHandle::get_or_insert_with`] and its fallible and
//! per-TTL twins. A value is stored as JSON under its key, in the same logical key space as
//! responses (so `invalidate("companies_*")` removes typed values too). A typed read is an
//! adapter of the one lookup loop (`engine::look`), beside HTTP and gRPC: coalesced like an
//! HTTP miss in this process and, on Redis, across the fleet (one `init` per key for all
//! the instances sharing it), and written with the one commit.

use std::future::Future;
use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::engine::coalesce::Share;
use crate::engine::fill::Fill;
use crate::engine::Found;
use crate::engine::{self, Fetching, Lookup, Weighed};
use crate::entry::Entry;
use crate::handle::CacheHandle;
use crate::headers::{Forward, Waited};
use crate::key::Variant;
use crate::stats::Outcome;

/// `init` as a loader that cannot fail.
async fn infallible<T>(init: impl Future<Output = T>) -> Result<T, std::convert::Infallible> {
    Ok(init.await)
}

impl CacheHandle {
    /// Return the cached value under `key`, or run `init`, store its value for the
    /// handle's TTL and return it. Values are stored as JSON.
    ///
    /// # Concurrent calls on the same key
    /// Only one `init` runs at a time per key; the other callers wait for its value (at
    /// most the coalesce timeout) instead of running theirs. Store errors are logged and
    /// the value is computed as if the cache were empty.
    ///
    /// # Panics
    /// If `init` panics, the panic reaches this caller; the waiting callers then run their
    /// own `init`.
    pub async fn get_or_insert_with<T, F>(&self, key: &str, init: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        self.load(key, None, infallible(init))
            .await
            .unwrap_or_else(|never| match never {})
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with), with the value fresh for `ttl`.
    pub async fn get_or_insert_with_ttl<T, F>(&self, key: &str, ttl: Duration, init: F) -> T
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        self.load(key, Some(ttl), infallible(init))
            .await
            .unwrap_or_else(|never| match never {})
    }

    /// Like [`get_or_insert_with`](Self::get_or_insert_with) for loaders that can fail.
    /// Errors are returned to this caller and never cached; a waiting caller then runs its
    /// own loader.
    pub async fn try_get_or_insert_with<T, E, F>(&self, key: &str, init: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        self.load(key, None, init).await
    }

    /// [`try_get_or_insert_with`](Self::try_get_or_insert_with), with the value fresh for
    /// `ttl`.
    pub async fn try_get_or_insert_with_ttl<T, E, F>(
        &self,
        key: &str,
        ttl: Duration,
        init: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        self.load(key, Some(ttl), init).await
    }

    /// The typed read: `ttl` `None` is the handle's. The lookup loop is the one every
    /// read goes through (`engine::look`): a hit answers, a follower waits for its
    /// leader's value (in this process, or across the fleet), the leader computes and
    /// commits.
    async fn load<T, E, F>(&self, key: &str, ttl: Option<Duration>, init: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        let read = TypedRead {
            handle: self,
            logical: crate::key::bound(key.into()).into_owned(),
            // Typed values have no request inputs besides their key.
            variant: Variant {
                hash: 0,
                identity: Bytes::new(),
            },
            headers: HeaderMap::new(),
            value: PhantomData,
        };
        let Fetching {
            visit: read,
            leader,
            ..
        } = match engine::look(self.engine(), read).await {
            ControlFlow::Break(value) => return Ok(value),
            ControlFlow::Continue(fetching) => fetching,
        };
        // A miss counts once, when it computes (a follower that then reads the stored
        // value is a hit), as for HTTP.
        self.engine().count(Outcome::Miss);
        let ticket = self.engine().ticket(leader.as_ref()).await;
        let value = match init.await {
            Ok(value) => value,
            Err(error) => {
                // Given up, not unstorable: a waiting caller runs its own loader, and no
                // `pass` mark keeps the fleet's other callers from coalescing.
                drop(leader);
                return Err(error);
            }
        };
        match serde_json::to_vec(&value) {
            Ok(json) => {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                let ttl = ttl.unwrap_or(self.ttl());
                let entry = Entry::new(StatusCode::OK, headers, Bytes::from(json), ttl);
                self.engine()
                    .commit(&read.logical, 0, ticket, entry, leader)
                    .await;
            }
            Err(error) => {
                tracing::warn!(key = %read.logical, %error, "value could not be serialised; not cached");
                engine::release(leader);
            }
        }
        Ok(value)
    }
}

/// A typed read in the lookup loop: its key, and what a stored entry means to it (a value
/// of type `T`, when the entry is fresh and decodes as one).
struct TypedRead<'h, T> {
    handle: &'h CacheHandle,
    logical: String,
    variant: Variant,
    headers: HeaderMap,
    value: PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Lookup<T> for TypedRead<'_, T> {
    fn key(&self) -> (&str, &Variant, &HeaderMap) {
        (&self.logical, &self.variant, &self.headers)
    }

    /// Only a fresh entry that decodes as `T` answers; anything else is computed anew.
    fn weigh(self, found: Found, _waited: Waited) -> Weighed<Self, T> {
        let forward = match found {
            Found::Hit(entry, _) => match serde_json::from_slice(entry.body()) {
                Ok(value) => {
                    self.handle.engine().count(Outcome::Hit);
                    return ControlFlow::Break(value);
                }
                Err(_) => {
                    tracing::warn!(key = %self.logical, "cached value does not decode as the requested type; recomputing");
                    Forward::UriMiss
                }
            },
            Found::Stale(..) => Forward::Stale,
            Found::VaryMiss(_) => Forward::VaryMiss,
            Found::UriMiss => Forward::UriMiss,
        };
        ControlFlow::Continue((self, forward))
    }

    /// A value is read once stored, never as it is computed.
    fn share(_: &Arc<Fill>, _: &HeaderMap) -> Share {
        Share::WaitForEntry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use crate::handle::test_handle as handle;

    #[tokio::test]
    async fn typed_values_are_computed_once_and_invalidated_by_key() {
        let cache = handle();
        let calls = AtomicUsize::new(0);
        let load = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            vec![1, 2, 3]
        };
        let a: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", load())
            .await;
        let b: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", load())
            .await;
        assert_eq!((a, b), (vec![1, 2, 3], vec![1, 2, 3]));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.invalidate("companies_all_synced").await.unwrap(), 1);
        let _: Vec<i32> = cache
            .get_or_insert_with("companies_all_synced", load())
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(cache.invalidate("companies_*").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn concurrent_typed_loads_coalesce() {
        let cache = handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_insert_with("k", async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            42u32
                        })
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(cache.stats().coalesced >= 1);
    }

    #[tokio::test]
    async fn loader_errors_are_returned_and_not_cached() {
        let cache = handle();
        let r: Result<u8, &str> = cache
            .try_get_or_insert_with("k", async { Err("db down") })
            .await;
        assert_eq!(r, Err("db down"));
        let r: Result<u8, &str> = cache.try_get_or_insert_with("k", async { Ok(7) }).await;
        assert_eq!(r, Ok(7));
    }

    #[tokio::test]
    async fn a_value_loaded_across_an_invalidation_is_not_stored() {
        let cache = handle();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let loader = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_insert_with("companies_all_synced", async move {
                        started_tx.send(()).unwrap();
                        release_rx.await.unwrap();
                        "old".to_string()
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        cache.invalidate("companies_*").await.unwrap();
        release_tx.send(()).unwrap();
        assert_eq!(loader.await.unwrap(), "old");
        // The stale value was returned to its own caller but not stored.
        let now: String = cache
            .get_or_insert_with("companies_all_synced", async { "new".to_string() })
            .await;
        assert_eq!(now, "new");
    }

    #[tokio::test(start_paused = true)]
    async fn typed_values_expire_after_their_ttl() {
        let cache = handle();
        let v: u8 = cache
            .get_or_insert_with_ttl("k", Duration::from_secs(10), async { 1 })
            .await;
        assert_eq!(v, 1);
        tokio::time::advance(Duration::from_secs(9)).await;
        let v: u8 = cache.get_or_insert_with("k", async { 2 }).await;
        assert_eq!(v, 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        let v: u8 = cache.get_or_insert_with("k", async { 3 }).await;
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn a_value_of_another_type_is_recomputed_not_a_panic() {
        let cache = handle();
        let _: String = cache
            .get_or_insert_with("k", async { "text".to_string() })
            .await;
        let n: u32 = cache.get_or_insert_with("k", async { 5 }).await;
        assert_eq!(n, 5);
    }
}
