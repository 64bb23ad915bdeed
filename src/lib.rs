//! A Tower middleware that caches HTTP responses in process memory or Redis, and lets the
//! application invalidate them by key pattern.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use axum::{body::Body, routing::get, Router};
//! use http::Request;
//! use http_body_util::BodyExt;
//! use tower::ServiceExt;
//! use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};
//!
//! # async fn dashboard() -> &'static str { "{}" }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheHandle::builder(MemoryStore::builder().max_bytes(256 << 20).build())
//!     .namespace("portal")
//!     .ttl(Duration::from_secs(3600))
//!     .build();
//! let app = Router::new()
//!     .route("/api/dashboard/{guid}", get(dashboard))
//!     .layer(CacheLayer::new(cache.clone()));
//!
//! let get = || Request::get("/api/dashboard/ABC").body(Body::empty());
//! let first = app.clone().oneshot(get()?).await?;
//! assert_eq!(first.headers()["x-cache"], "MISS");
//! first.into_body().collect().await?; // stored as it streamed
//! let second = app.clone().oneshot(get()?).await?;
//! assert_eq!(second.headers()["x-cache"], "HIT");
//!
//! // Later, when a sync for company ABC finished:
//! let removed = cache.invalidate("/api/dashboard/ABC*").await?;
//! assert_eq!(removed, 1);
//! # Ok(()) }
//! ```
//!
//! # What it does
//!
//! - [`CacheLayer`] answers `GET` and `HEAD` from stored responses, coalesces concurrent
//!   misses of one key into one call of the inner service, and records storable responses
//!   as they stream to the client. Rules are in [`CachePolicy`].
//! - [`CacheHandle`] invalidates by Redis-style glob over logical keys, by tag, or all, and
//!   caches typed values ([`CacheHandle::get_or_insert_with`]).
//! - Every answer carries `Cache-Status` (RFC 9211), `X-Cache` and, on hits, `Age`.
//! - A store error never fails a request: it is logged, counted, and read as a miss.
//! - With the `grpc` feature, `GrpcCacheLayer` caches the unary gRPC methods you opt in,
//!   trailers included (see the `grpc` module).
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod ban;
mod body;
mod cache_control;
mod clock;
mod coalesce;
mod config;
mod engine;
mod entry;
mod fill;
mod future;
#[cfg(feature = "grpc")]
mod grpc;
mod handle;
mod headers;
mod http;
mod key;
mod pattern;
mod policy;
mod stats;
mod store;

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

// One public path per item: everything is re-exported here, the modules are private.
#[doc(inline)]
pub use crate::http::{CacheLayer, CacheService};
#[doc(inline)]
pub use body::{BoxError, CacheBody};
#[doc(inline)]
pub use config::{CacheConfig, ConfigError};
#[doc(inline)]
pub use entry::{DecodeError, Entry};
#[doc(inline)]
pub use future::ResponseFuture;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
#[doc(inline)]
pub use grpc::{GrpcCacheLayer, GrpcCacheService};
#[doc(inline)]
pub use handle::{CacheError, CacheHandle, CacheHandleBuilder};
#[doc(inline)]
pub use headers::{CACHE_STATUS, CACHE_TAG, X_CACHE};
#[doc(inline)]
pub use pattern::Pattern;
#[doc(inline)]
pub use policy::{CachePolicy, DEFAULT_BYPASS_HEADERS, DEFAULT_KEYED_HEADERS};
#[doc(inline)]
pub use stats::CacheStats;
#[doc(inline)]
pub use store::{
    Backend, Coordination, FallbackMode, Invalidation, InvalidationListener, MemoryStore,
    MemoryStoreBuilder, Store, StoreError, StoreEvent, StoreFuture, StoreKey, StoreStats, Variants,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use store::{FallbackStore, FallbackStoreBuilder, RedisStore, RedisStoreBuilder};
