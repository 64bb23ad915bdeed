//! The HTTP side: routes, handlers, JSON errors, and the sync step the timer shares.

use std::error::Error as _;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_response_cache::{CacheHandle, CacheLayer, CacheStats, PurgeLayer, X_CACHE};

use crate::dates::Date;
use crate::db::{self, Db, DbError, Range, Synced};
use crate::metrics;

/// The company list's key in the typed data cache, as in the seed's DAO.
pub const COMPANIES_KEY: &str = "companies_all_synced";

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    /// `None` with `PORTAL_CACHE=off`.
    pub cache: Option<CacheHandle>,
    /// `PORTAL_PURGE_TOKEN`: with a cache, mounts the purge endpoints (`PURGE <path>`,
    /// `POST /_cache/purge`) for bearers of this token. `None`: no purge endpoint at all.
    pub purge_token: Option<String>,
}

/// The portal's routes. Only the dashboard goes through [`CacheLayer`]; the company list is
/// cached as data, and the rest is never cached. Every request is timed for `/metrics`.
pub fn app(state: AppState) -> Router {
    let cache_layer = state
        .cache
        .as_ref()
        .map(|cache| CacheLayer::new(cache.clone()).key_fn(dashboard_key));
    let purge = match (&cache_layer, &state.purge_token) {
        (Some(layer), Some(token)) => Some(PurgeLayer::new(layer, token)),
        _ => None,
    };
    let dashboard = match cache_layer {
        Some(layer) => get(dashboard).layer(layer),
        None => get(dashboard),
    };
    let router = Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics::render))
        .route("/api/companies", get(companies))
        .route("/api/dashboard/{guid}", dashboard)
        .route("/api/sync/{guid}", post(sync))
        .route("/api/cache/stats", get(cache_stats))
        .fallback(no_route)
        .with_state(state)
        .layer(axum::middleware::from_fn(metrics::record_latency));
    // Outermost: a purge is answered before routing, whatever its path; without a token a
    // `PURGE` is an unknown method like any other.
    match purge {
        Some(purge) => router.layer(purge),
        None => router,
    }
}

/// `/api/dashboard/{guid}` → `dashboard:{guid}`, which the sync invalidates as
/// `dashboard:{guid}*` (every date range at once: ranges are query variants of one key).
fn dashboard_key(parts: &Parts) -> Option<String> {
    let guid = parts.uri.path().strip_prefix("/api/dashboard/")?;
    // Anything but a plain GUID (say, a percent-escaped spelling of one) goes around the
    // cache: its entry would escape the sync's invalidation pattern.
    let plain = !guid.is_empty() && guid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    plain.then(|| format!("dashboard:{guid}"))
}

/// An error answer: `{"error": "..."}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn unknown_company(guid: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, format!("unknown company {guid:?}"))
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        tracing::error!(%error, "database request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {method} {}", uri.path()),
    )
}

async fn health(State(state): State<AppState>) -> Response {
    let cache = json!({
        "enabled": state.cache.is_some(),
        "backend": state.cache.as_ref().map(|c| c.backend().as_str()),
    });
    match state.db.run(db::count_companies).await {
        Ok(companies) => Json(json!({
            "status": "ok",
            "cache": cache,
            "database": { "status": "ok", "companies": companies },
        }))
        .into_response(),
        Err(error) => {
            tracing::error!(%error, "health check: database unavailable");
            let body = json!({
                "status": "degraded",
                "cache": cache,
                "database": { "status": "error", "error": error.to_string() },
            });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

async fn companies(State(state): State<AppState>) -> Result<Response, ApiError> {
    let db = state.db.clone();
    let load = async move { db.run(db::companies).await };
    let (companies, x_cache) = match &state.cache {
        Some(cache) => {
            let mut loaded = false;
            let companies: Vec<db::Company> = cache
                .try_get_or_insert_with(COMPANIES_KEY, async {
                    loaded = true;
                    load.await
                })
                .await?;
            // The layer does not see data-level caching; say what happened the same way.
            (companies, Some(if loaded { "MISS" } else { "HIT" }))
        }
        None => (load.await?, None),
    };
    let mut response = Json(json!({ "companies": companies })).into_response();
    if let Some(x_cache) = x_cache {
        response
            .headers_mut()
            .insert(X_CACHE, HeaderValue::from_static(x_cache));
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
struct DashboardParams {
    from: Option<String>,
    to: Option<String>,
}

async fn dashboard(
    State(state): State<AppState>,
    guid: Result<Path<String>, PathRejection>,
    params: Result<Query<DashboardParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Path(guid) = guid.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let Query(params) =
        params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let range = Range {
        from: date_param("from", params.from.as_deref())?,
        to: date_param("to", params.to.as_deref())?,
    };
    if let (Some(from), Some(to)) = (range.from, range.to) {
        if from > to {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`from` ({from}) is after `to` ({to})"),
            ));
        }
    }
    // Past the cache: this request is an origin fetch.
    ::metrics::counter!("portal_origin_fetches_total", "route" => "dashboard").increment(1);
    let key = guid.clone();
    match state
        .db
        .run(move |conn| db::dashboard(conn, &key, range))
        .await?
    {
        Some(dashboard) => {
            tracing::debug!(%guid, query_ms = dashboard.query_ms, "dashboard computed");
            Ok(Json(dashboard).into_response())
        }
        None => {
            let mut response = ApiError::unknown_company(&guid).into_response();
            // Unknown GUIDs are cached too (404 is cacheable), but briefly.
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("max-age=60"),
            );
            Ok(response)
        }
    }
}

fn date_param(name: &str, value: Option<&str>) -> Result<Option<Date>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(value) => Date::parse(value).map(Some).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("invalid `{name}` date {value:?}: expected YYYY-MM-DD"),
            )
        }),
    }
}

/// What `POST /api/sync/{guid}` answers.
#[derive(Debug, Serialize)]
pub struct SyncReport {
    #[serde(flatten)]
    pub synced: Synced,
    /// What the cache dropped; `None` with the cache off.
    pub cache: Option<Invalidated>,
}

/// Entries removed by a sync's invalidations. One that failed is named in `errors`: the
/// portal may serve what it covers until it expires. One that applied on Redis's primary
/// but no replica confirmed in time is named in `unreplicated` instead: readers see the new
/// data, but should the primary fail over before the replica catches up, the old entries
/// may come back. Either way the import itself is committed, so the answer is 200.
#[derive(Debug, Serialize)]
pub struct Invalidated {
    pub dashboards: Option<u64>,
    pub companies: Option<u64>,
    pub errors: Vec<String>,
    pub unreplicated: Vec<String>,
}

async fn sync(
    State(state): State<AppState>,
    guid: Result<Path<String>, PathRejection>,
) -> Result<Json<SyncReport>, ApiError> {
    let Path(guid) = guid.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    match run_sync(&state, guid.clone()).await? {
        Some(report) => Ok(Json(report)),
        None => Err(ApiError::unknown_company(&guid)),
    }
}

/// One sync of one company: import the next batch, then drop what it made stale. `None`
/// when there is no such company. The import is committed before the invalidation, so a
/// read that starts after this returns sees the new `alter_id`.
pub async fn run_sync(state: &AppState, guid: String) -> Result<Option<SyncReport>, DbError> {
    let Some(synced) = state.db.run(move |conn| db::sync(conn, &guid)).await? else {
        return Ok(None);
    };
    let cache = match &state.cache {
        Some(cache) => Some(invalidate_company(cache, &synced.guid).await),
        None => None,
    };
    tracing::info!(
        guid = %synced.guid,
        company = %synced.name,
        alter_id = synced.alter_id,
        inserted = synced.inserted,
        "sync complete"
    );
    Ok(Some(SyncReport { synced, cache }))
}

/// Drop one company's dashboards (every date range) and the company list. Failures are
/// logged and reported, never fatal: the import itself succeeded.
async fn invalidate_company(cache: &CacheHandle, guid: &str) -> Invalidated {
    let mut errors = Vec::new();
    let mut unreplicated = Vec::new();
    let mut attempt = |result: Result<u64, tower_response_cache::CacheError>| match result {
        Ok(removed) => Some(removed),
        Err(error) => {
            let message = match error.source() {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            };
            if error.is_not_replicated() {
                tracing::warn!(%guid, error = %message, "cache invalidation after sync not confirmed by a replica");
                unreplicated.push(message);
            } else {
                tracing::warn!(%guid, error = %message, "cache invalidation after sync failed");
                errors.push(message);
            }
            None
        }
    };
    // The company list first: on Redis every invalidation refuses every write in flight (one
    // counter per store), so a dashboard fetch that began between the two would be computed
    // twice. Dashboards are the slow ones; until their own invalidation they are still hits,
    // so none of them is in flight in between.
    let companies = attempt(cache.invalidate(COMPANIES_KEY).await);
    // GUIDs hold no glob characters: the portal only creates plain hex ones.
    let dashboards = attempt(cache.invalidate(&format!("dashboard:{guid}*")).await);
    Invalidated {
        dashboards,
        companies,
        errors,
        unreplicated,
    }
}

#[derive(Serialize)]
struct StatsBody {
    enabled: bool,
    #[serde(flatten)]
    stats: Option<CacheStats>,
}

async fn cache_stats(State(state): State<AppState>) -> Json<StatsBody> {
    Json(StatsBody {
        enabled: state.cache.is_some(),
        stats: state.cache.as_ref().map(CacheHandle::stats),
    })
}
