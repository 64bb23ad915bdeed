//! [`GrpcCacheLayer`]: which methods are cached, for how long, and the size limits.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use super::config::Config;
use super::service::GrpcCacheService;
use crate::handle::CacheHandle;
use crate::headers::CacheStatusDetail;

/// Default bound on a request message that may be cached (64 KiB): larger ones are
/// forwarded without being buffered further.
const DEFAULT_MAX_REQUEST: usize = 64 << 10;
/// Default bound on a response that may be stored (4 MiB, gRPC's default message limit).
const DEFAULT_MAX_RESPONSE: usize = 4 << 20;

/// Opt-in caching of unary gRPC methods (feature `grpc`). Cloning the layer never creates
/// a new store: every clone shares the handle's entries.
///
/// The HTTP [`CacheLayer`](crate::CacheLayer) sends gRPC around the cache. [`GrpcCacheLayer`]
/// caches the unary methods you name, those whose answer depends only on the request
/// message: a second identical call is answered from the stored headers, message and
/// trailers (`grpc-status: 0`) without reaching the service.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use tonic::transport::Server;
/// use tower_response_cache::{CacheHandle, GrpcCacheLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CacheHandle::in_memory();
/// let (_reporter, health) = tonic_health::server::health_reporter();
/// let server = Server::builder()
///     .layer(
///         GrpcCacheLayer::new(cache.clone())
///             .method("/grpc.health.v1.Health/Check")
///             .method_with_ttl("/portal.Companies/List", Duration::from_secs(30)),
///     )
///     .add_service(health)
///     .serve("127.0.0.1:50051".parse()?);
/// # let _ = server;
///
/// // After a sync: every cached answer of the service's methods is gone.
/// cache.invalidate("/portal.Companies/*").await?;
/// # Ok(()) }
/// ```
///
/// # What is cached
///
/// - Only methods opted in with [`GrpcCacheLayer::method`], called as `POST` with
///   `content-type: application/grpc[+codec]` (not gRPC-Web). Everything else passes
///   through untouched, without cache headers, so the layer can share a stack with the
///   HTTP `CacheLayer` (put the gRPC layer outside it: the HTTP layer marks gRPC calls
///   `X-Cache: BYPASS`).
/// - **Unary only.** Opt in no streaming method. A call whose request is not exactly one
///   message (a client stream) is forwarded and not cached; an answer that is not exactly
///   one message (a server stream) is streamed through as it arrives and never stored, but
///   concurrent identical calls of a wrongly opted-in stream may wait for it up to the
///   handle's coalesce timeout.
/// - Key: the logical key is the method path, so invalidation patterns match it
///   (`/pkg.Service/Method`, `/pkg.Service/*`). The variant hashes (xxh3, 64 bits) the
///   request message as sent, the authority, `content-type`, `grpc-encoding`,
///   `grpc-accept-encoding` and the metadata named by
///   [`key_on_metadata`](GrpcCacheLayer::key_on_metadata); not `grpc-timeout` or
///   `user-agent`.
/// - Calls with `authorization` or `cookie` metadata bypass the cache (`X-Cache: BYPASS`)
///   unless that name is keyed on. A request message over
///   [`max_request_size`](GrpcCacheLayer::max_request_size) (64 KiB) is forwarded intact and
///   not cached.
/// - Stored: HTTP 200, a gRPC content type, exactly one message within
///   [`max_response_size`](GrpcCacheLayer::max_response_size) (4 MiB), and trailers with
///   `grpc-status: 0`. Never a trailers-only answer (an error before any message), never a
///   non-zero `grpc-status`, never an answer with `set-cookie` or `cache-control: no-store
///   | private | no-cache` metadata. The TTL is the method's, else the handle's.
/// - Concurrent identical calls reach the service once (single flight); an invalidation
///   bans answers fetched before it, as for HTTP. A store error never fails a call.
/// - Answers carry `x-cache` (`HIT`, `MISS`, `BYPASS`) and `cache-status` metadata; hits
///   also `age`. A miss cannot know at its headers whether it will be stored (that waits
///   for the trailers), so its `cache-status` never says `stored`.
/// - Entries keep their trailers ([`Entry::trailers`](crate::Entry::trailers)) in memory
///   and Redis alike.
#[derive(Clone)]
pub struct GrpcCacheLayer {
    config: Arc<Config>,
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
                cache_status_detail: CacheStatusDetail::Brief,
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

    /// How much the `cache-status` of an answer says (default `Brief`; see
    /// [`CacheLayer::cache_status_detail`](crate::CacheLayer::cache_status_detail)).
    pub fn cache_status_detail(mut self, detail: CacheStatusDetail) -> Self {
        Arc::make_mut(&mut self.config).cache_status_detail = detail;
        self
    }

    /// The handle this layer caches into.
    pub fn handle(&self) -> &CacheHandle {
        &self.config.handle
    }
}

crate::service_macros::layer_impls!(
    GrpcCacheLayer,
    GrpcCacheService,
    "A [`GrpcCacheLayer`] caching into `handle` (no method is cached until opted in)."
);

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
