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
//!
//! # Metrics
//!
//! Every counter and histogram goes to the [`metrics`](https://docs.rs/metrics) facade as it
//! happens, so an installed recorder (Prometheus, StatsD, …) sees them without extra wiring;
//! with none installed they cost an atomic increment. The gauges describe a state: call
//! [`CacheHandle::record_gauges`] where metrics are read (before rendering a scrape).
//! Counters also feed [`CacheHandle::stats`].
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `tower_response_cache_hits_total` | counter | – | Requests and typed reads answered from a fresh entry. |
//! | `tower_response_cache_stale_total` | counter | – | Answers served from an expired entry (stale-while-revalidate, stale-if-error). |
//! | `tower_response_cache_misses_total` | counter | – | Lookups that found nothing usable: the request went to the origin, or read the response another request was fetching (see `coalesced`). |
//! | `tower_response_cache_coalesced_total` | counter | – | Misses that waited for another request's fetch of the same key instead of reaching the origin. |
//! | `tower_response_cache_fleet_followers_total` | counter | – | Misses that waited for another process's fetch (fleet-wide single flight). |
//! | `tower_response_cache_fleet_takeovers_total` | counter | – | Times a waiting process took a flight over (the leader's lease ran out, or it ended without an entry) and fetched itself. |
//! | `tower_response_cache_fleet_timeouts_total` | counter | – | Times a process waited the whole coalesce timeout for another's fetch, then fetched itself. |
//! | `tower_response_cache_bypasses_total` | counter | – | Requests sent around the cache (method, credentials, `no-store`, a body on a `GET`, …). |
//! | `tower_response_cache_stores_total` | counter | – | Entries written to the store. |
//! | `tower_response_cache_store_errors_total` | counter | – | Store operations that failed (each logged; none failed a request). |
//! | `tower_response_cache_invalidations_total` | counter | – | Calls to `invalidate`, `invalidate_soft`, `invalidate_tag`, `invalidate_all`, and invalidations by unsafe methods. |
//! | `tower_response_cache_invalidation_seconds` | histogram | `operation` (`invalidate`, `invalidate_soft`, `invalidate_tag`, `invalidate_all`) | How long an invalidation took until it returned: what its caller waited. |
//! | `tower_response_cache_invalidate_wait_seconds` | histogram | – | Near cache on Redis only: how long an invalidation waited, after publishing, for every process holding a lease to acknowledge it (or for the lease to run out). |
//! | `tower_response_cache_evictions_total` | counter | – | Memory entries removed to stay within the byte budget (or a URL's `Vary` variant cap). |
//! | `tower_response_cache_expirations_total` | counter | – | Memory entries removed because they expired (past any stale window). |
//! | `tower_response_cache_admissions_refused_total` | counter | – | Writes a memory store or near cache did not keep: too large for its budget, or refused by its admission policy. |
//! | `tower_response_cache_circuit_opened_total` | counter | – | Times a fallback store stopped using Redis (its circuit opened). |
//! | `tower_response_cache_redis_reply_budget_full_total` | counter | – | Redis reads that found no room in the store's reply budget within the deadline and read as misses. |
//! | `tower_response_cache_lease_lapses_total` | counter | – | Times a near cache's lease lapsed (its reads went to Redis until a heartbeat renewed it). |
//! | `tower_response_cache_purge_requests_total` | counter | `status` (the answer's status code) | Requests answered by the purge endpoints ([`PurgeLayer`]), refusals included. |
//! | `tower_response_cache_entries` | gauge | `namespace` | Entries held, where the store can tell; set by [`CacheHandle::record_gauges`]. |
//! | `tower_response_cache_bytes` | gauge | `namespace` | Bytes held, where the store can tell; set by [`CacheHandle::record_gauges`]. |
//! | `tower_response_cache_backend` | gauge | `namespace`, `backend` (`memory`, `redis`, `falling_back`) | 1 for the backend serving, 0 for the others; set by [`CacheHandle::record_gauges`]. |
//!
//! The hit ratio is `hits / (hits + misses)`. A histogram is what its recorder makes of it:
//! `metrics-exporter-prometheus` renders a summary (quantiles over a rolling window) unless
//! given buckets.
//!
//! # Glossary
//!
//! One word per idea, in the code, these docs, `Cache-Status` and the metrics.
//!
//! - **Logical key**: what invalidation patterns match, the request path as spelled
//!   (`/api/dashboard/ABC`) or what a key function returns (`dashboard:ABC`).
//! - **Identity**: the exact inputs besides the logical key that select a response (scheme,
//!   raw path, host, query, keyed request headers). A hit compares it byte for byte; its
//!   64-bit hash (a [`StoreKey`]'s `variant`) only indexes the store.
//! - **Vary variant**: one of the responses stored for one identity that differ in the
//!   request headers the response names in `Vary`; a URL keeps at most 16, the least
//!   recently read going first.
//! - **Entry**: one stored response (status, headers, body, freshness, identity, tags).
//! - **Fresh / stale**: an entry within its TTL answers as a hit; past it, within a
//!   stale-while-revalidate or stale-if-error window (or a soft invalidation's), it may
//!   answer as stale while one refresh runs.
//! - **Miss, fetch, origin**: a request no entry answers goes to the inner service (the
//!   origin); what comes back is recorded by a **fill** as it streams to the client, and
//!   stored at its end when storable.
//! - **Flight**: the fetches of one identity (and the `Vary` values the key's entries vary
//!   on) in the air at once: its **leader** fetches, its **followers** wait for or read the
//!   leader's answer. Fleet-wide, the leader of one process holds the key's **fleet lease**
//!   in Redis and the others follow it.
//! - **Ticket**: what a miss takes before it calls the origin (the ban log's **epoch** and
//!   the store's **write token**); its entry is stored only if no invalidation since covers
//!   it.
//! - **Ban**: this process's record of an invalidation, checked against tickets;
//!   **generation**: the shared counter an invalidation in Redis raises, against which
//!   write tokens are checked across processes.
//! - **Invalidation**: hard removes (by pattern, tag or all); **soft** marks entries stale
//!   so they are served while refreshed.
//! - **Near cache** (`l1` in `Cache-Status` and `CacheStats::l1_hits`): process memory in
//!   front of Redis, answering only under its **near lease**, renewed by heartbeats.
//! - **Fallback**: the memory store a `FallbackStore` answers from while its **circuit**
//!   is open (Redis unreachable); the probe closes it after **replaying** the invalidations
//!   made meanwhile.
//! - **Deadline**: how long one store call may take before it counts as failed; **timeout**
//!   names waits that end in a fallback answer instead (the coalesce timeout).
//! - **Hit-for-miss**: a key whose answers were not storable goes to the origin without
//!   queueing behind a leader, for a while.
//!
//! # Where things are
//!
//! From a request to its answer: an **adapter** (`http/`, `grpc/`, `typed.rs`) classifies
//! the request with the **policy** (`policy/`, reading `cache_control.rs`) and builds its
//! **key** (`key/`); the **engine** (`engine/`: the lookup loop, single flight in this
//! process and across the fleet, the invalidation protocol and its bans, all on one
//! `Engine` that a **handle**, `handle/`, is the application's façade over) looks it up,
//! and on a miss the adapter's answer is recorded by a **fill** (`engine/fill/`) and
//! committed as an **entry** (`entry/`) to a **store** (`store/`: `memory/` and its
//! eviction `policy/`, `redis/`, `fallback.rs`). Hits are answered by `answer.rs` with the
//! `headers/` the cache sets, written with the entry's header values into a copy of the
//! header map its layout holds (`entry/layout.rs`: one per set of header names, shared by
//! the entries that have it; the slots are `entry/stored_headers.rs`'s alone). Each adapter
//! counts what a request came to (hit, miss, stale, bypass) once, through the engine.
//!
//! - A store backend of one's own: a folder under `store/` implementing [`Store`]
//!   (or, outside the crate, any type implementing it).
//! - A `Cache-Control` directive: `cache_control.rs` parses it; what it means for storing
//!   is `policy/response.rs`, for a request `policy/request/`.
//! - A body transform (compression): outside the cache, as a layer of its own — the README
//!   says on which side of the cache and why; inside, the body a fill records is in
//!   `engine/fill/` and the body a hit answers with in `answer.rs`.
#![deny(missing_docs, unreachable_pub, unsafe_code)]
#![warn(missing_debug_implementations)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod answer;
mod body;
mod cache_control;
mod clock;
mod config;
mod config_error;
mod engine;
mod entry;
mod future;
#[cfg(feature = "grpc")]
mod grpc;
mod handle;
mod headers;
mod http;
mod key;
mod pattern;
mod policy;
mod purge;
mod service_macros;
mod stats;
mod store;
mod typed;

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
pub use config::CacheConfig;
#[doc(inline)]
pub use config_error::ConfigError;
#[doc(inline)]
pub use entry::{DecodeError, Entry, StoredHeaders};
#[doc(inline)]
pub use future::ResponseFuture;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
#[doc(inline)]
pub use grpc::{GrpcCacheLayer, GrpcCacheService};
#[doc(inline)]
pub use handle::{CacheError, CacheHandle, CacheHandleBuilder};
#[doc(inline)]
pub use headers::{CacheStatusDetail, CACHE_STATUS, CACHE_TAG, X_CACHE};
#[doc(inline)]
pub use pattern::Pattern;
#[doc(inline)]
pub use policy::{CachePolicy, DEFAULT_BYPASS_HEADERS, DEFAULT_KEYED_HEADERS};
#[doc(inline)]
pub use purge::{Purge, PurgeLayer};
#[doc(inline)]
pub use stats::CacheStats;
#[doc(inline)]
pub use store::{
    Backend, FallbackMode, MemoryStore, MemoryStoreBuilder, Store, StoreError, StoreFuture,
    StoreKey, StoreStats, Variants,
};

/// The protocol the built-in stores and the handle agree on beyond [`Store`]: answers
/// without waiting, write tokens the store checks itself, other processes' invalidations,
/// fleet-wide flights.
///
/// [`Coordination`](coordination::Coordination) is sealed: only the built-in stores
/// implement it. It is public so that tools, tests and benches can drive a store the way
/// the handle does. Everything here is outside the 0.1 stability promise: it changes with
/// the built-in stores. A store of one's own implements [`Store`] alone.
///
/// ```
/// use tower_response_cache::coordination::Coordination;
/// use tower_response_cache::MemoryStore;
///
/// // A local store takes no write token.
/// assert_eq!(MemoryStore::new().write_token(), 0);
/// ```
pub mod coordination {
    #[doc(inline)]
    pub use crate::store::{
        Coordination, FleetEnd, FleetLease, FleetTurn, Invalidation, InvalidationListener, Source,
        StoreEvent, VariantRead,
    };
}
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use store::{
    FallbackStore, FallbackStoreBuilder, OutcomeSink, Primary, RedisStore, RedisStoreBuilder,
};
