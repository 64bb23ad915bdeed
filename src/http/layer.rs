//! [`CacheLayer`]: wraps a service in [`CacheService`].
//!
//! The layer carries the [`CacheHandle`], the [`CachePolicy`] and an optional key function.
//! Cloning the layer (tower does, once per connection) never creates a new store: every
//! clone shares the handle's entries.

use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use super::config::Config;
use super::service::CacheService;
use crate::handle::CacheHandle;
use crate::headers::CacheStatusDetail;
use crate::policy::CachePolicy;

/// Caches the responses of the service it wraps. See the [crate docs](crate) for an example.
#[derive(Clone)]
pub struct CacheLayer {
    config: Arc<Config>,
}

impl CacheLayer {
    /// A layer caching into `handle`'s store with the default [`CachePolicy`].
    pub fn new(handle: CacheHandle) -> Self {
        CacheLayer {
            config: Arc::new(Config::new(handle)),
        }
    }

    /// Replace the policy: what is served and stored.
    pub fn policy(mut self, policy: CachePolicy) -> Self {
        Arc::make_mut(&mut self.config).policy = policy;
        self
    }

    /// How much the `Cache-Status` of an answer says (default
    /// [`Brief`](CacheStatusDetail::Brief): `hit`, or `fwd=` and why). `Full` adds when the
    /// entry expires, whether Redis is reachable, whether a request joined another's fetch:
    /// what an operator debugging wants, and what a client probing for the moment to strike
    /// wants too (see [`CacheStatusDetail`]).
    pub fn cache_status_detail(mut self, detail: CacheStatusDetail) -> Self {
        Arc::make_mut(&mut self.config).cache_status_detail = detail;
        self
    }

    /// Choose logical keys: the function sees the request's parts and returns the key that
    /// invalidation patterns match (e.g. `dashboard:ABC`), or `None` to bypass the cache.
    /// The default is the request path. Host, query and `Vary` still select variants.
    ///
    /// The function sees the raw URI: `%41` is not decoded to `A`. Derive keys from parts
    /// you validate (the portal example accepts only plain GUIDs and bypasses the rest), or
    /// two spellings of one resource get two entries and an invalidation written for one
    /// misses the other. Escape IDs that go into patterns with [`Pattern::escape`](crate::Pattern::escape).
    ///
    /// ```
    /// use tower_response_cache::{CacheHandle, CacheLayer};
    ///
    /// let layer = CacheLayer::new(CacheHandle::in_memory()).key_fn(|parts| {
    ///     let guid = parts.uri.path().strip_prefix("/api/dashboard/")?;
    ///     Some(format!("dashboard:{guid}"))
    /// });
    /// # let _ = layer;
    /// ```
    pub fn key_fn<F>(mut self, key_fn: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.config).key_fn = Some(Arc::new(key_fn));
        self
    }

    /// The handle this layer caches into.
    pub fn handle(&self) -> &CacheHandle {
        &self.config.handle
    }

    /// The handle, policy and key function, shared with a purge endpoint built from this
    /// layer (it removes the key this layer would use).
    pub(crate) fn config(&self) -> &Arc<Config> {
        &self.config
    }
}

crate::service_macros::layer_impls!(
    CacheLayer,
    CacheService,
    "A [`CacheLayer`] caching into `handle`: \
     `ServiceBuilder::new().layer(CacheService::layer(handle))`."
);

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("handle", &self.config.handle)
            .field("policy", &self.config.policy)
            .field(
                "key_fn",
                &self
                    .config
                    .key_fn
                    .as_ref()
                    .map(|_| "Fn(&Parts) -> Option<String>"),
            )
            .finish()
    }
}
