//! What every [`CacheService`](super::CacheService) built by one layer shares: the handle,
//! the policy and the key function, and the request rules that read them.

use std::borrow::Cow;
use std::sync::Arc;

use http::request::Parts;

use crate::handle::CacheHandle;
use crate::headers::CacheStatusDetail;
use crate::key;
use crate::policy::CachePolicy;

/// Maps a request to its logical key; `None` sends the request around the cache.
pub(crate) type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What every [`CacheService`](super::CacheService) built by one layer shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) handle: CacheHandle,
    pub(crate) policy: CachePolicy,
    pub(crate) key_fn: Option<KeyFn>,
    pub(crate) cache_status_detail: CacheStatusDetail,
}

impl Config {
    /// The default policy, keyed by path.
    pub(crate) fn new(handle: CacheHandle) -> Config {
        Config {
            handle,
            policy: CachePolicy::default(),
            key_fn: None,
            cache_status_detail: CacheStatusDetail::Brief,
        }
    }

    /// What the identity of a request is made of; the keyed headers join it only when the
    /// request carries one (`keyed`).
    pub(crate) fn keying(&self, keyed: bool) -> key::Keying<'_> {
        key::Keying {
            headers: match keyed {
                true => self.policy.keyed_headers(),
                false => &[],
            },
            normalize_query: self.policy.normalizes_query(),
        }
    }

    #[inline]
    pub(crate) fn logical_key<'a>(&self, parts: &'a http::request::Parts) -> Option<Cow<'a, str>> {
        match &self.key_fn {
            Some(key_fn) => key_fn(parts).map(|k| Cow::Owned(key::bound(k.into()).into_owned())),
            None => Some(key::logical_from_path(parts)),
        }
    }
}
