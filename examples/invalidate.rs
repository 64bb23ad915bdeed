//! Invalidate cached entries from a process of its own, as a sync pipeline does:
//!
//! ```sh
//! REDIS_ENABLED=true REDIS_URL=redis://127.0.0.1:6379/0 CACHE_NAMESPACE=portal \
//!     cargo run --features redis --example invalidate -- '/api/dashboard/ABC*'
//! ```
//!
//! Builds the cache from the same variables as the server (`CacheConfig::from_env`), so the
//! invalidation reaches every server instance through Redis, and prints how many entries
//! it removed. Exits with an error when Redis is not in use or not reached: an invalidation
//! that stays inside this short-lived process would reach no one.

use std::error::Error;
use std::process::ExitCode;

use tower_response_cache::{Backend, CacheConfig};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(pattern) = std::env::args().nth(1) else {
        eprintln!("usage: cargo run --features redis --example invalidate -- <pattern>");
        return ExitCode::from(2);
    };
    let config = match CacheConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("invalidate: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    let cache = match config.build().await {
        Ok(cache) => cache,
        Err(error) => {
            eprintln!("invalidate: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    if cache.backend() != Backend::Redis {
        eprintln!(
            "invalidate: the cache is on {}, not Redis: other processes cannot be reached \
             (set REDIS_ENABLED=true, check REDIS_URL, build with --features redis)",
            cache.backend().as_str()
        );
        return ExitCode::FAILURE;
    }
    match cache.invalidate(&pattern).await {
        Ok(removed) => {
            println!("{removed}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let cause = error.source().map(|s| s.to_string()).unwrap_or_default();
            eprintln!("invalidate: {error}: {cause}");
            ExitCode::FAILURE
        }
    }
}
