//! What the purge endpoints of one [`PurgeLayer`](super::PurgeLayer) share: the cache
//! layer's key function and handle, the token, the limits and the rate bucket.

use std::fmt;
use std::sync::Arc;

use super::bucket::Bucket;
use crate::http::Config;

/// What every `Purge` service built by one layer shares.
#[derive(Clone)]
pub(crate) struct Settings {
    /// The cache layer's handle and key function: a `PURGE` removes the key it would use.
    pub(crate) cache: Arc<Config>,
    pub(crate) token: Arc<[u8]>,
    pub(crate) json_path: Arc<str>,
    pub(crate) max_body_size: usize,
    pub(crate) bucket: Arc<Bucket>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token.
        f.debug_struct("PurgeLayer")
            .field("handle", &self.cache.handle)
            .field("json_path", &self.json_path)
            .field("max_body_size", &self.max_body_size)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}
