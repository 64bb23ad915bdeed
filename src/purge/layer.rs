//! [`PurgeLayer`]: the purge endpoints' settings, shared by every service it builds.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::bucket::Bucket;
use super::service::Purge;
use super::settings::Settings;
use crate::http::CacheLayer;

/// Purge endpoints in front of the service it wraps: `PURGE <path>` and a JSON `POST` to
/// [`json_path`](Self::json_path), for operators and deploy scripts.
///
/// Opt-in: nothing answers a purge until a `PurgeLayer` is added to a stack, and it needs a
/// bearer token to be built. In front of an application it answers
///
/// - `PURGE /api/dashboard/ABC`: removes every variant of the logical key the
///   [`CacheLayer`] it was built from uses for a `GET` of that URI (its
///   key function's, or the path; the query selects no variant here, so all go). Answers
///   `{"removed": n, "key": "dashboard:ABC"}`.
/// - `POST /_cache/purge` with one of `{"pattern": "dashboard:ABC*"}` (add `"soft": true`
///   to mark stale instead, see [`CacheHandle::invalidate_soft`](crate::CacheHandle::invalidate_soft)),
///   `{"tag": "company:ABC"}` or `{"all": true}`. Answers `{"removed": n}`.
///
/// Every other request passes through untouched. Refusals are JSON `{"error": ...}`,
/// checked in this order: `429` past the rate limit (with `Retry-After`; every request to
/// the endpoints counts, so tokens cannot be guessed faster than purges are allowed), `401`
/// without `Authorization: Bearer <token>` or with another token (compared in constant
/// time, with `WWW-Authenticate`), `413` for a body over the limit, `405` for a method other
/// than `POST` at the JSON path, `400` for bad JSON, an empty or over-long (1 KiB) pattern
/// or tag, a control character, or a `PURGE` of a path the cache layer keys as `None`. A
/// store error is `503` with `"applied_locally": true`: as with the handle, this process
/// serves nothing the purge matched. Answers are `Cache-Control: no-store`.
///
/// Each answer counts in `tower_response_cache_purge_requests_total{status}`.
///
/// # Examples
///
/// ```
/// use axum::{body::Body, routing::get, Router};
/// use http::Request;
/// use http_body_util::BodyExt;
/// use tower::ServiceExt;
/// use tower_response_cache::{CacheHandle, CacheLayer, PurgeLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CacheLayer::new(CacheHandle::in_memory());
/// let purge = PurgeLayer::new(&cache, "a-long-random-secret-token");
/// let app = Router::new()
///     .route("/report", get(|| async { "figures" }))
///     .layer(cache)
///     .layer(purge);
///
/// let get = || Request::get("/report").body(Body::empty());
/// app.clone().oneshot(get()?).await?.into_body().collect().await?;
/// assert_eq!(app.clone().oneshot(get()?).await?.headers()["x-cache"], "HIT");
///
/// let purge = Request::builder()
///     .method("PURGE")
///     .uri("/report")
///     .header("authorization", "Bearer a-long-random-secret-token")
///     .body(Body::empty())?;
/// let answer = app.clone().oneshot(purge).await?;
/// assert_eq!(answer.status(), 200);
/// let body = answer.into_body().collect().await?.to_bytes();
/// assert_eq!(body, r#"{"key":"/report","removed":1}"#);
/// assert_eq!(app.clone().oneshot(get()?).await?.headers()["x-cache"], "MISS");
///
/// // Without the token, nothing is purged.
/// let anonymous = Request::builder().method("PURGE").uri("/report").body(Body::empty())?;
/// assert_eq!(app.oneshot(anonymous).await?.status(), 401);
/// # Ok(()) }
/// ```
///
/// Cloning the layer never creates a new rate limit: every clone, and every service built
/// from it, takes from one bucket.
#[derive(Clone)]
pub struct PurgeLayer {
    settings: Settings,
}

impl PurgeLayer {
    /// Purge endpoints for the entries `cache` stores, open to requests that carry
    /// `Authorization: Bearer <token>`. Defaults: JSON at `POST /_cache/purge`, bodies up
    /// to 4 KiB, 10 requests per second (in a burst of 10).
    ///
    /// # Panics
    ///
    /// When `token` is shorter than 16 bytes: a short token is guessed, whatever the rate
    /// limit. Use a long random one (`openssl rand -hex 32`).
    pub fn new(cache: &CacheLayer, token: impl AsRef<str>) -> Self {
        let token = token.as_ref().as_bytes();
        assert!(
            token.len() >= 16,
            "a purge token needs at least 16 bytes, got {}",
            token.len()
        );
        PurgeLayer {
            settings: Settings {
                cache: cache.config().clone(),
                token: token.into(),
                json_path: "/_cache/purge".into(),
                max_body_size: 4096,
                bucket: Arc::new(Bucket::new(10, Duration::from_secs(1))),
            },
        }
    }

    /// Where the JSON `POST` is answered (every method there reaches the purge endpoint:
    /// other than `POST`, a `405`).
    pub fn json_path(mut self, path: impl Into<String>) -> Self {
        self.settings.json_path = path.into().into();
        self
    }

    /// Longest request body read, in bytes; a longer one is answered `413`.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.settings.max_body_size = bytes;
        self
    }

    /// At most `requests` per `per`, in bursts of up to `requests`; past it, `429` with
    /// `Retry-After`. Every request to the endpoints counts, with or without a valid token.
    ///
    /// # Panics
    ///
    /// When `requests` is 0 or `per` is zero.
    pub fn rate_limit(mut self, requests: u32, per: Duration) -> Self {
        self.settings.bucket = Arc::new(Bucket::new(requests, per));
        self
    }
}

impl<S> tower_layer::Layer<S> for PurgeLayer {
    type Service = Purge<S>;

    fn layer(&self, inner: S) -> Purge<S> {
        Purge::new(inner, self.settings.clone())
    }
}

impl fmt::Debug for PurgeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.settings.fmt(f)
    }
}
