//! The physical limit the load tests compare the cache against: one binary, one router,
//! two routes answering the same bytes with the same handler.
//!
//! - `GET /static`: the bytes straight from a static;
//! - `GET /cached`: the same handler behind `CacheLayer` on a `MemoryStore` (after the
//!   first request, every answer is a memory hit).
//!
//! `CEILING_BODY` names a file holding the body (the load script saves a real dashboard
//! there); without it a small JSON body is used. `CEILING_ADDR` is the listen address
//! (default `127.0.0.1:3001`).

use std::sync::OnceLock;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
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

    // TODO(redis): a `/redis-raw` route doing one raw GET of these bytes, and `/cached-redis`
    // through a Redis-backed layer, for the Redis-hit ratio.
    let cache = CacheHandle::builder(MemoryStore::builder().max_bytes(64 << 20).build())
        .namespace("ceiling")
        .build();
    let app = Router::new()
        .route("/static", get(body))
        .route("/cached", get(body).layer(CacheLayer::new(cache)));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "ceiling: {} bytes on http://{}/static and /cached",
        BODY.get().map_or(0, Bytes::len),
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
