//! [`GrpcCacheLayer`]: which methods are cached, for how long, and the size limits.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower_layer::Layer;

use super::service::GrpcCacheService;
use crate::handle::CacheHandle;

/// Default bound on a request message that may be cached (64 KiB): larger ones are
/// forwarded without being buffered further.
const DEFAULT_MAX_REQUEST: usize = 64 << 10;
/// Default bound on a response that may be stored (4 MiB, gRPC's default message limit).
const DEFAULT_MAX_RESPONSE: usize = 4 << 20;

/// Caches the unary gRPC methods it is told are idempotent. Cloning the layer never creates
/// a new store: every clone shares the handle's entries. See the [module docs](super) for
/// an example.
#[derive(Clone)]
pub struct GrpcCacheLayer {
    config: Arc<Config>,
}

/// What every [`GrpcCacheService`] built by one layer shares.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) handle: CacheHandle,
    /// Method path → its TTL (`None`: the handle's).
    pub(crate) methods: HashMap<Box<str>, Option<Duration>>,
    pub(crate) max_request_size: usize,
    pub(crate) max_response_size: usize,
    pub(crate) keyed_metadata: Vec<HeaderName>,
}

impl GrpcCacheLayer {
    /// A layer caching into `handle`'s store. No method is cached until opted in with
    /// [`method`](Self::method).
    pub fn new(handle: CacheHandle) -> Self {
        GrpcCacheLayer {
            config: Arc::new(Config {
                handle,
                methods: HashMap::new(),
                max_request_size: DEFAULT_MAX_REQUEST,
                max_response_size: DEFAULT_MAX_RESPONSE,
                keyed_metadata: Vec::new(),
            }),
        }
    }

    /// Cache the unary method at `path` (`/package.Service/Method`) for the handle's TTL.
    /// Opt in only methods whose answer depends on nothing but the request message (and the
    /// metadata named by [`key_on_metadata`](Self::key_on_metadata)), and never a streaming
    /// method.
    ///
    /// # Panics
    /// If `path` is not of the form `/package.Service/Method`.
    pub fn method(self, path: &str) -> Self {
        self.insert(path, None)
    }

    /// Like [`method`](Self::method), with its own TTL.
    ///
    /// # Panics
    /// If `path` is not of the form `/package.Service/Method`.
    pub fn method_with_ttl(self, path: &str, ttl: Duration) -> Self {
        self.insert(path, Some(ttl))
    }

    fn insert(mut self, path: &str, ttl: Option<Duration>) -> Self {
        let valid = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(service, method)| {
                !service.is_empty() && !method.is_empty() && !method.contains('/')
            });
        assert!(
            valid,
            "gRPC method path must look like /package.Service/Method, got {path:?}"
        );
        Arc::make_mut(&mut self.config)
            .methods
            .insert(path.into(), ttl);
        self
    }

    /// Largest request (the framed message, in bytes) that may be answered from the cache
    /// (default 64 KiB). A larger request is forwarded intact and its answer not stored.
    pub fn max_request_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_request_size = bytes;
        self
    }

    /// Largest response body (framed message) that may be stored (default 4 MiB). A larger
    /// one streams through and is not stored.
    pub fn max_response_size(mut self, bytes: usize) -> Self {
        Arc::make_mut(&mut self.config).max_response_size = bytes;
        self
    }

    /// Key entries on the value of this request metadata too (e.g. `x-tenant`). Calls with
    /// `authorization` or `cookie` metadata bypass the cache unless that name is keyed on
    /// here, which caches one entry per credential.
    pub fn key_on_metadata(mut self, name: HeaderName) -> Self {
        let config = Arc::make_mut(&mut self.config);
        if !config.keyed_metadata.contains(&name) {
            config.keyed_metadata.push(name);
            config
                .keyed_metadata
                .sort_by(|a, b| a.as_str().cmp(b.as_str()));
        }
        self
    }

    /// The handle this layer caches into.
    pub fn handle(&self) -> &CacheHandle {
        &self.config.handle
    }
}

impl<S> Layer<S> for GrpcCacheLayer {
    type Service = GrpcCacheService<S>;

    fn layer(&self, inner: S) -> GrpcCacheService<S> {
        GrpcCacheService::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for GrpcCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut methods: Vec<&str> = self.config.methods.keys().map(|m| &**m).collect();
        methods.sort_unstable();
        f.debug_struct("GrpcCacheLayer")
            .field("handle", &self.config.handle)
            .field("methods", &methods)
            .field("max_request_size", &self.config.max_request_size)
            .field("max_response_size", &self.config.max_response_size)
            .field("keyed_metadata", &self.config.keyed_metadata)
            .finish()
    }
}
