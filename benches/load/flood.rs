//! A key flood target (issue 9): what the process really holds while a `MemoryStore`
//! keeps its byte budget.
//!
//! Every path (a catch-all) answers a fresh 4 KiB body with status 200, behind
//! `CacheLayer::new(CacheHandle::builder(MemoryStore::builder().max_bytes(..).build()).build())`
//! with the default key (the path). Flooded with random paths, every request is a miss
//! that is stored and evicts an older entry. `benches/load/flood.sh` drives it with oha and
//! samples its RSS.
//!
//! Outside the cache (added after the layer, so never keyed nor stored):
//!
//! - `GET /__stats`: the handle's [`CacheStats`](tower_response_cache::CacheStats), the
//!   budget, and the process's `VmRSS` / `VmHWM` in bytes (from `/proc/self/status`);
//! - `GET /__bypass/...`: the same answers without the cache, for the server's own memory
//!   under the same load (connections, buffers, allocator);
//! - `GET /__trim` (glibc only): calls `malloc_trim(0)`, which hands free heap pages back
//!   to the kernel, and answers the RSS before and after: what the allocator held free.
//!
//! Listens on the first argument, else `FLOOD_ADDR`, else `127.0.0.1:3200`. The budget is
//! `FLOOD_MAX_BYTES` (default 64 MiB), the body size `FLOOD_BODY_BYTES` (default 4096).
//! Prints one line at start, nothing per request.

use axum::http::header::CONTENT_TYPE;
use axum::http::Uri;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

/// A fresh body per request, as a handler rendering a page allocates one: the path, padded.
async fn answer(uri: Uri, body_bytes: usize) -> impl IntoResponse {
    let mut body = Vec::with_capacity(body_bytes);
    body.extend_from_slice(uri.path().as_bytes());
    body.resize(body_bytes, b'.');
    ([(CONTENT_TYPE, "text/plain")], body)
}

/// `VmRSS` and `VmHWM` of this process, in bytes (0 where `/proc` is missing).
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() -> bool {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim takes a byte count and only releases free memory.
    unsafe { malloc_trim(0) != 0 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("FLOOD_ADDR").ok())
        .unwrap_or_else(|| "127.0.0.1:3200".to_owned());
    let env_usize = |name: &str, default: usize| -> Result<usize, String> {
        match std::env::var(name) {
            Ok(v) => v.parse().map_err(|e| format!("{name}={v}: {e}")),
            Err(_) => Ok(default),
        }
    };
    let max_bytes = env_usize("FLOOD_MAX_BYTES", 64 << 20)?;
    let body_bytes = env_usize("FLOOD_BODY_BYTES", 4096)?;

    let handle = CacheHandle::builder(MemoryStore::builder().max_bytes(max_bytes).build()).build();
    let stats_handle = handle.clone();
    let stats = move || {
        let stats = stats_handle.stats();
        let (rss, hwm) = rss();
        async move {
            Json(serde_json::json!({
                "cache": stats,
                "max_bytes": max_bytes,
                "vm_rss": rss,
                "vm_hwm": hwm,
            }))
        }
    };
    let trim_route = || async {
        let (before, _) = rss();
        let trimmed = trim();
        let (after, _) = rss();
        Json(serde_json::json!({ "trimmed": trimmed, "rss_before": before, "rss_after": after }))
    };
    let app = Router::new()
        .fallback(move |uri: Uri| answer(uri, body_bytes))
        .layer(CacheLayer::new(handle))
        // Added after the layer: not cached.
        .route("/__stats", get(stats))
        .route(
            "/__bypass/{*rest}",
            get(move |uri: Uri| answer(uri, body_bytes)),
        )
        .route("/__trim", get(trim_route));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "flood: {body_bytes}-byte answers on every path of http://{} behind a {max_bytes}-byte MemoryStore; /__stats, /__trim",
        listener.local_addr()?
    );
    axum::serve(listener, app).await?;
    Ok(())
}
