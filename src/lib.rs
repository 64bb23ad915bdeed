//! A Tower middleware that caches HTTP responses in process memory or Redis, and lets the
//! application invalidate them by key pattern.
//!
//! # Quick start
//!
//! ```
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};
//!
//! # async fn dashboard() -> &'static str { "{}" }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_response_cache::CacheError> {
//! let cache = CacheHandle::builder(MemoryStore::builder().max_bytes(256 << 20).build())
//!     .namespace("portal")
//!     .ttl(Duration::from_secs(3600))
//!     .build();
//! let app: Router = Router::new()
//!     .route("/api/dashboard/{guid}", get(dashboard))
//!     .layer(CacheLayer::new(cache.clone()));
//!
//! // Later, when a sync for company ABC finished:
//! let removed = cache.invalidate("/api/dashboard/ABC*").await?;
//! # let _ = (app, removed);
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
mod entry;
mod fill;
mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
pub mod handle;
mod head_update;
mod headers;
mod key;
mod layer;
mod pattern;
pub mod policy;
mod range;
mod record;
mod service;
mod stats;
pub mod store;

/// The README's examples, compiled as doc tests so they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

pub use body::{BoxError, ResponseBody};
pub use config::{CacheConfig, ConfigError};
pub use entry::{DecodeError, Entry};
pub use future::ResponseFuture;
#[cfg(feature = "grpc")]
pub use grpc::{GrpcCacheLayer, GrpcCacheService};
pub use handle::{CacheError, CacheHandle, CacheHandleBuilder};
pub use headers::{CACHE_STATUS, CACHE_TAG, X_CACHE};
pub use layer::CacheLayer;
pub use pattern::Pattern;
pub use policy::CachePolicy;
pub use service::CacheService;
pub use stats::CacheStats;
pub use store::{
    Backend, Invalidation, MemoryStore, MemoryStoreBuilder, Store, StoreError, StoreEvent,
    StoreKey, StoreStats,
};
