//! What every [`GrpcCacheService`](super::GrpcCacheService) built by one layer shares.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderName;

use crate::handle::CacheHandle;

/// The handle, the opted-in methods and the size limits.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) handle: CacheHandle,
    /// Method path → its TTL (`None`: the handle's).
    pub(crate) methods: HashMap<Box<str>, Option<Duration>>,
    pub(crate) max_request_size: usize,
    pub(crate) max_response_size: usize,
    pub(crate) keyed_metadata: Vec<HeaderName>,
    pub(crate) cache_status_detail: crate::headers::CacheStatusDetail,
}
