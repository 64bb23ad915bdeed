//! Opt-in caching of unary gRPC methods (feature `grpc`).
//!
//! The HTTP [`CacheLayer`](crate::CacheLayer) sends gRPC around the cache. [`GrpcCacheLayer`]
//! caches the unary methods you name, those whose answer depends only on the request
//! message: a second identical call is answered from the stored headers, message and
//! trailers (`grpc-status: 0`) without reaching the service.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use tonic::transport::Server;
//! use tower_response_cache::{CacheHandle, GrpcCacheLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheHandle::in_memory();
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let server = Server::builder()
//!     .layer(
//!         GrpcCacheLayer::new(cache.clone())
//!             .method("/grpc.health.v1.Health/Check")
//!             .method_with_ttl("/portal.Companies/List", Duration::from_secs(30)),
//!     )
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?);
//! # let _ = server;
//!
//! // After a sync: every cached answer of the service's methods is gone.
//! cache.invalidate("/portal.Companies/*").await?;
//! # Ok(()) }
//! ```
//!
//! # What is cached
//!
//! - Only methods opted in with [`GrpcCacheLayer::method`], called as `POST` with
//!   `content-type: application/grpc[+codec]` (not gRPC-Web). Everything else passes
//!   through untouched, without cache headers, so the layer can share a stack with the
//!   HTTP `CacheLayer` (put the gRPC layer outside it: the HTTP layer marks gRPC calls
//!   `X-Cache: BYPASS`).
//! - **Unary only.** Opt in no streaming method. A call whose request is not exactly one
//!   message (a client stream) is forwarded and not cached; an answer that is not exactly
//!   one message (a server stream) is streamed through as it arrives and never stored, but
//!   concurrent identical calls of a wrongly opted-in stream may wait for it up to the
//!   handle's coalesce timeout.
//! - Key: the logical key is the method path, so invalidation patterns match it
//!   (`/pkg.Service/Method`, `/pkg.Service/*`). The variant hashes (xxh3, 64 bits) the
//!   request message as sent, the authority, `content-type`, `grpc-encoding`,
//!   `grpc-accept-encoding` and the metadata named by
//!   [`key_on_metadata`](GrpcCacheLayer::key_on_metadata); not `grpc-timeout` or
//!   `user-agent`.
//! - Calls with `authorization` or `cookie` metadata bypass the cache (`X-Cache: BYPASS`)
//!   unless that name is keyed on. A request message over
//!   [`max_request_size`](GrpcCacheLayer::max_request_size) (64 KiB) is forwarded intact and
//!   not cached.
//! - Stored: HTTP 200, a gRPC content type, exactly one message within
//!   [`max_response_size`](GrpcCacheLayer::max_response_size) (4 MiB), and trailers with
//!   `grpc-status: 0`. Never a trailers-only answer (an error before any message), never a
//!   non-zero `grpc-status`, never an answer with `set-cookie` or `cache-control: no-store
//!   | private | no-cache` metadata. The TTL is the method's, else the handle's.
//! - Concurrent identical calls reach the service once (single flight); an invalidation
//!   bans answers fetched before it, as for HTTP. A store error never fails a call.
//! - Answers carry `x-cache` (`HIT`, `MISS`, `BYPASS`) and `cache-status` metadata; hits
//!   also `age`. A miss cannot know at its headers whether it will be stored (that waits
//!   for the trailers), so its `cache-status` never says `stored`.
//! - Entries keep their trailers ([`Entry::trailers`](crate::Entry::trailers)) in memory
//!   and Redis alike.

mod layer;
mod record;
mod request;
mod service;

pub use layer::GrpcCacheLayer;
pub use service::GrpcCacheService;

/// Where gRPC puts a call's status: the trailers, or the headers of a trailers-only answer.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
