//! The physical limits the load tests compare the cache against: one binary, one router,
//! routes answering the same bytes.
//!
//! - `GET /static`: the bytes straight from a static;
//! - `GET /cached`: the same handler behind `CacheLayer` on a `MemoryStore` (after the
//!   first request, every answer is a memory hit).
//!
//! With the `redis` feature and `CEILING_REDIS_URL` set, two more:
//!
//! - `GET /redis-raw`: a handler doing one raw Redis `GET` of the same bytes (stored at
//!   start) on a managed, multiplexed connection — what one round trip costs;
//! - `GET /redis-cached`: the `/static` handler behind `CacheLayer` on the cache that
//!   `CacheConfig` builds with `REDIS_ENABLED=true` (Redis, with the memory fallback), so
//!   after the first request every answer is a Redis hit: one `HGET`;
//! - `GET /stats`: both caches' [`CacheStats`](tower_response_cache::CacheStats), to check
//!   that the Redis route stayed on Redis.
//!
//! `CEILING_BODY` names a file holding the body (the load script saves a real dashboard
//! there); without it a small JSON body is used. `CEILING_ADDR` is the listen address
//! (default `127.0.0.1:3001`). `CACHE_REDIS_TIMEOUT_MS` and `CACHE_NAMESPACE` apply to the
//! Redis-backed cache as they do in the portal (namespace default `ceiling`).

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

static BODY: OnceLock<Bytes> = OnceLock::new();

/// The same answer on both routes: what a handler returning a prebuilt body costs.
async fn body() -> impl IntoResponse {
    let body = BODY.get().expect("set before serving").clone();
    ([(CONTENT_TYPE, "application/json")], body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bytes = match std::env::var_os("CEILING_BODY") {
        Some(path) => std::fs::read(&path)
            .map_err(|e| format!("CEILING_BODY={}: {e}", path.to_string_lossy()))?,
        None => br#"{"guid":"ceiling","alter_id":1}"#.to_vec(),
    };
    // A leaked static: cloning it is a pointer copy, like a `&'static [u8]` body.
    BODY.set(Bytes::from_static(Box::leak(bytes.into_boxed_slice())))
        .expect("set once");
    let addr = std::env::var("CEILING_ADDR").unwrap_or_else(|_| "127.0.0.1:3001".to_owned());

    let cache = CacheHandle::builder(MemoryStore::builder().max_bytes(64 << 20).build())
        .namespace("ceiling")
        .build();
    let app = Router::new()
        .route("/static", get(body))
        .route("/cached", get(body).layer(CacheLayer::new(cache.clone())));
    let redis_url = std::env::var("CEILING_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty());
    let (app, routes) = match redis_url {
        Some(url) => (
            redis_routes::add(app, &url, cache).await?,
            "/static, /cached, /redis-raw, /redis-cached and /stats",
        ),
        None => {
            let stats = move || {
                let stats = cache.stats();
                async move { Json(serde_json::json!({ "memory": stats })) }
            };
            (
                app.route("/stats", get(stats)),
                "/static, /cached and /stats",
            )
        }
    };

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "ceiling: {} bytes on http://{}: {routes}",
        BODY.get().map_or(0, Bytes::len),
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(feature = "redis")]
mod redis_routes {
    use axum::http::header::CONTENT_TYPE;
    use axum::http::StatusCode;
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::{Json, Router};
    use redis::aio::ConnectionManager;
    use tower_response_cache::{Backend, CacheConfig, CacheHandle, CacheLayer};

    /// One `GET`, its bytes as the body.
    async fn raw(mut redis: ConnectionManager, key: &str) -> Response {
        match redis::cmd("GET")
            .arg(key)
            .query_async::<Option<Vec<u8>>>(&mut redis)
            .await
        {
            Ok(Some(bytes)) => ([(CONTENT_TYPE, "application/json")], bytes).into_response(),
            Ok(None) => (StatusCode::NOT_FOUND, "the body is not in Redis").into_response(),
            Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
        }
    }

    /// `/redis-raw`, `/redis-cached` and `/stats` for both caches.
    pub(super) async fn add(
        app: Router,
        url: &str,
        memory: CacheHandle,
    ) -> Result<Router, Box<dyn std::error::Error>> {
        let client = redis::Client::open(url).map_err(|e| format!("CEILING_REDIS_URL: {e}"))?;
        let mut connection = ConnectionManager::new(client)
            .await
            .map_err(|e| format!("CEILING_REDIS_URL={url}: {e}"))?;
        // The portal's way: the crate's own variables, Redis on.
        let mut config = CacheConfig::from_lookup(|name| match name {
            "REDIS_ENABLED" => Some("true".to_owned()),
            "REDIS_URL" => Some(url.to_owned()),
            _ => std::env::var(name).ok(),
        })?;
        if std::env::var("CACHE_NAMESPACE").map_or(true, |v| v.trim().is_empty()) {
            config.namespace = "ceiling".to_owned();
        }
        // Beside the cache's keys, under its namespace, gone in an hour: the Redis may be
        // someone else's.
        let raw_key: &'static str = Box::leak(format!("{}:raw-body", config.namespace).into());
        let body = super::BODY.get().expect("set before the routes");
        let () = redis::cmd("SET")
            .arg(raw_key)
            .arg(&body[..])
            .arg("EX")
            .arg(3600)
            .query_async(&mut connection)
            .await?;
        let cache = config.build().await.map_err(|e| e.to_string())?;
        if cache.backend() != Backend::Redis {
            return Err(format!(
                "the Redis-backed cache is on {} at start: is Redis at {url} up?",
                cache.backend().as_str()
            )
            .into());
        }
        let stats = {
            let cache = cache.clone();
            move || {
                let (memory, redis) = (memory.stats(), cache.stats());
                async move { Json(serde_json::json!({ "memory": memory, "redis": redis })) }
            }
        };
        Ok(app
            .route("/redis-raw", get(move || raw(connection.clone(), raw_key)))
            .route(
                "/redis-cached",
                get(super::body).layer(CacheLayer::new(cache)),
            )
            .route("/stats", get(stats)))
    }
}

#[cfg(not(feature = "redis"))]
mod redis_routes {
    use axum::Router;
    use tower_response_cache::CacheHandle;

    pub(super) async fn add(
        _: Router,
        _: &str,
        _: CacheHandle,
    ) -> Result<Router, Box<dyn std::error::Error>> {
        Err(
            "CEILING_REDIS_URL is set, but this build has no Redis support: \
             build with `--features redis`"
                .into(),
        )
    }
}
