//! The sync pipeline as its own process, as in the seed: `cargo run -p portal --bin sync -- <guid>`.
//!
//! With the cache on Redis, this process imports the next batch into the portal's database
//! itself (the portal's own sync step, `portal::app::run_sync`) and invalidates
//! `dashboard:{guid}*` and `companies_all_synced` through a cache handle built from the same
//! configuration as the portal's, so every running portal instance stops serving the old
//! dashboard:
//!
//! ```sh
//! REDIS_ENABLED=true REDIS_URL=redis://127.0.0.1:6379/0 \
//!     cargo run -p portal --features redis --bin sync -- <guid>
//! ```
//!
//! With the memory store (Redis off, this build without the `redis` feature, or Redis not
//! answering) a separate process cannot reach the portal's cache, so it says so and asks
//! the running portal to sync instead (`POST /api/sync/{guid}`). Without a GUID it lists
//! the companies.
//!
//! Reads the portal's settings (`.env`, `PORTAL_DB`, `PORTAL_ADDR`, `PORTAL_URL` and the
//! cache variables): see `examples/portal/env.example`. Prints the same JSON as `POST /api/sync/{guid}`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_response_cache::{Backend, CacheHandle};
use tracing_subscriber::EnvFilter;

use portal::{app::run_sync, db, AppState, Config};

/// How long a fresh handle may take to reach Redis before this process gives up on it.
const REDIS_WAIT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sync: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let base = config.portal_url();
    let Some(guid) = std::env::args().nth(1) else {
        eprintln!(
            "usage: cargo run -p portal --bin sync -- <company guid>\n\ncompanies at {base}:"
        );
        return over_http(Method::GET, &format!("{base}/api/companies")).await;
    };
    match shared_cache(&config).await {
        Ok(cache) => sync_here(&config, cache, guid).await,
        Err(reason) => {
            eprintln!(
                "sync: {reason}, so this process cannot reach the portal's cache \
                 (cross-process invalidation needs Redis); asking the portal at {base} to run \
                 the sync instead"
            );
            over_http(Method::POST, &format!("{base}/api/sync/{guid}")).await
        }
    }
}

/// The portal's cache, when it lives in a Redis this process reaches too; otherwise why not.
async fn shared_cache(config: &Config) -> Result<CacheHandle, String> {
    if !config.cache_enabled {
        return Err("the portal's cache is off (PORTAL_CACHE=off)".to_owned());
    }
    if !config.cache.redis_enabled {
        return Err("the cache is in memory (REDIS_ENABLED is not true)".to_owned());
    }
    if !cfg!(feature = "redis") {
        return Err(
            "this build has no Redis support (run it with `-p portal --features redis`)".to_owned(),
        );
    }
    let Some(cache) = config.cache().await else {
        return Err("the portal's cache is off".to_owned());
    };
    // Building never waits for Redis: a cold connection may still be on its way. Give the
    // background probe a moment before deciding that Redis is down.
    let deadline = Instant::now() + REDIS_WAIT;
    while cache.backend() != Backend::Redis {
        if Instant::now() >= deadline {
            // Without the password a URL may carry.
            let url = &config.cache.redis_url;
            let at = url.rsplit_once('@').map_or(url.as_str(), |(_, host)| host);
            return Err(format!(
                "Redis at {} did not answer within {REDIS_WAIT:?}",
                at.trim_start_matches("redis://")
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(cache)
}

/// Import into the portal's database and invalidate through Redis, as the portal's own
/// `POST /api/sync/{guid}` does.
async fn sync_here(config: &Config, cache: CacheHandle, guid: String) -> ExitCode {
    let path = &config.db_path;
    if !path.exists() {
        eprintln!(
            "sync: no database at {}: start the portal once to create and seed it \
             (PORTAL_DB names the file)",
            path.display()
        );
        return ExitCode::FAILURE;
    }
    let state = AppState {
        db: db::Db::new(path, 1),
        cache: Some(cache),
        purge_token: None,
    };
    let report = match run_sync(&state, guid.clone()).await {
        Ok(Some(report)) => report,
        Ok(None) => {
            eprintln!("sync: unknown company {guid:?} in {}", path.display());
            return ExitCode::FAILURE;
        }
        Err(error) => {
            eprintln!("sync: {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => println!("{json}"),
        Err(error) => eprintln!("sync: cannot print the report: {error}"),
    }
    let errors = report.cache.as_ref().map_or(&[][..], |c| &c.errors[..]);
    let unreplicated = report
        .cache
        .as_ref()
        .map_or(&[][..], |c| &c.unreplicated[..]);
    if errors.is_empty() && unreplicated.is_empty() {
        eprintln!(
            "sync: imported into {} and invalidated through Redis",
            path.display()
        );
        ExitCode::SUCCESS
    } else if errors.is_empty() {
        // Applied on the primary, which is what every portal reads: only a failover before
        // the replica catches up could bring the old entries back.
        eprintln!(
            "sync: imported into {} and invalidated through Redis, but no replica confirmed it \
             in time: should the primary fail over now, the old dashboard may come back until \
             its entries expire: {}",
            path.display(),
            unreplicated.join("; ")
        );
        ExitCode::SUCCESS
    } else {
        // The import is committed; what failed is the portal seeing it before the TTL.
        eprintln!(
            "sync: imported, but invalidating the portal's cache failed: the portal may serve \
             the old dashboard until its entries expire: {}",
            errors.join("; ")
        );
        ExitCode::FAILURE
    }
}

/// Ask the running portal, print its answer.
async fn over_http(method: Method, url: &str) -> ExitCode {
    match call(method, url).await {
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
            eprintln!("sync: {url}: {error}\n(is the portal running? `cargo run -p portal`)");
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
