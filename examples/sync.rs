//! The sync pipeline as its own process, as in the seed: `cargo run --example sync -- <guid>`.
//!
//! Once the portal can share a Redis-backed cache, this process imports the batch into the
//! portal's database itself and invalidates through Redis, which reaches every portal
//! instance. With the memory store a separate process cannot reach the portal's cache, so
//! it says so and asks the running portal to sync instead (`POST /api/sync/{guid}`).
//! Without a GUID it lists the companies.
//!
//! Reads the portal's settings (`.env`, `PORTAL_ADDR`, `PORTAL_URL`): see `env.example`.

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

// Only the configuration is shared with the portal.
#[allow(dead_code)]
#[path = "portal/config.rs"]
mod config;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sync: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let base = config.portal_url();
    let guid = std::env::args().nth(1);
    let (method, url) = match &guid {
        Some(guid) => (Method::POST, format!("{base}/api/sync/{guid}")),
        None => {
            eprintln!("usage: cargo run --example sync -- <company guid>\n\ncompanies at {base}:");
            (Method::GET, format!("{base}/api/companies"))
        }
    };
    if guid.is_some() {
        // TODO(redis): with `CacheConfig::from_env()` on Redis, open the database, run
        // `db::sync` here and invalidate `dashboard:{guid}*` and `companies_all_synced`
        // through a `CacheHandle` on the same Redis; keep this HTTP path as the fallback.
        eprintln!(
            "sync: cross-process cache invalidation needs Redis, and this build has only the \
             memory store; asking the portal at {base} to run the sync instead"
        );
    }
    match call(method, &url).await {
        Ok((status, body)) => {
            println!("{}", pretty(&body));
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("sync: the portal answered {status}");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!(
                "sync: {url}: {error}\n(is the portal running? `cargo run --example portal`)"
            );
            ExitCode::FAILURE
        }
    }
}

async fn call(
    method: Method,
    url: &str,
) -> Result<(StatusCode, Bytes), Box<dyn std::error::Error + Send + Sync>> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::default())?;
    // A sync of a large batch takes a while, but a portal that never answers is an error.
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request))
        .await
        .map_err(|_| "no answer within 60 s")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// The body as indented JSON, or as it came when it is not JSON.
fn pretty(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}
