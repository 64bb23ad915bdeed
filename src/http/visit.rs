//! A `GET` or `HEAD` the cache may answer, as it travels through the layer: what the
//! serving path (`serve.rs`) and the background refresh (`refresh.rs`) both hold.

use std::sync::Arc;

use http::request::Parts;

use super::config::Config;
use crate::cache_control::RequestDirectives;
use crate::key::Variant;

/// A `GET` or `HEAD` the cache may answer, on its way through the cache.
pub(super) struct Visit<S, ReqB> {
    pub(super) config: Arc<Config>,
    /// The ready inner service.
    pub(super) inner: S,
    pub(super) parts: Parts,
    pub(super) body: ReqB,
    pub(super) logical: String,
    pub(super) variant: Variant,
    /// The client asked for a fresh answer (`no-cache`): what the lookup finds is validated
    /// with the origin, never served as it is; what comes back is stored.
    pub(super) revalidate: bool,
    /// The request's directives that weigh against a hit (from the classifying pass).
    pub(super) directives: Option<RequestDirectives>,
}
