//! The example portal: accounting dashboards over SQLite, cached with tower-response-cache.
//!
//! ```sh
//! cargo run --release -p portal   # then open http://127.0.0.1:3000
//! ```
//!
//! On first start it creates and seeds `portal.db` (20 companies, 1 000 000 vouchers).
//! Settings come from the environment or `.env`; see `examples/portal/env.example`.
//! To share the cache through Redis (with a memory fallback while Redis is down):
//!
//! ```sh
//! REDIS_ENABLED=true REDIS_URL=redis://127.0.0.1:6379/0 \
//!     cargo run --release -p portal --features redis
//! ```

use std::process::ExitCode;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

use portal::{app::run_sync, db, AppState, Config};

#[tokio::main]
async fn main() -> ExitCode {
    // Configuration first: it loads `.env`, which may set RUST_LOG.
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("portal: configuration error: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "portal stopped");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let state = portal::state(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let cache = state
        .cache
        .as_ref()
        .map_or("off", |cache| cache.backend().as_str());
    if state.cache.is_some() && config.cache.redis_enabled {
        // `Debug` hides a password in the URL.
        tracing::info!(settings = ?config.cache, "cache configured for Redis");
    }
    tracing::info!(url = %format!("http://{}", listener.local_addr()?), cache, "portal listening");

    let syncing = config
        .sync_interval
        .map(|every| tokio::spawn(sync_periodically(state.clone(), every)));
    axum::serve(listener, portal::app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    if let Some(task) = syncing {
        task.abort();
    }
    tracing::info!("portal stopped cleanly");
    Ok(())
}

/// Sync one company every `every`, round robin, as a scheduler in front of the accounting
/// system would.
async fn sync_periodically(state: AppState, every: Duration) {
    let guids = match state.db.run(db::guids).await {
        Ok(guids) if !guids.is_empty() => guids,
        Ok(_) => return,
        Err(error) => {
            tracing::error!(%error, "periodic sync disabled: cannot list companies");
            return;
        }
    };
    tracing::info!(every_secs = every.as_secs(), "periodic sync enabled");
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    for guid in guids.iter().cycle() {
        ticks.tick().await;
        if let Err(error) = run_sync(&state, guid.clone()).await {
            tracing::warn!(%guid, %error, "periodic sync failed");
        }
    }
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
}
