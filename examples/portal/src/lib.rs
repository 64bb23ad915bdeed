//! The example portal: accounting dashboards over SQLite, cached with tower-response-cache.
//!
//! The library holds the whole application; its binaries are thin: `portal` (the server,
//! `src/main.rs`), `sync` (the sync pipeline as its own process) and `stale_check` (the
//! load test's stale-read checker). The tests in `tests/` start it on a free port.

pub mod app;
pub mod config;
pub mod dates;
pub mod db;
pub mod metrics;
pub mod seed;

pub use app::{app, AppState};
pub use config::Config;

/// Open the database (creating and seeding it when absent) and build the shared state.
pub async fn state(config: &Config) -> Result<AppState, db::DbError> {
    // Before anything is counted: counts made before a recorder is installed are lost.
    metrics::recorder();
    let (path, vouchers) = (config.db_path.clone(), config.seed_vouchers);
    tracing::info!(path = %path.display(), "opening database");
    let seeded = tokio::task::spawn_blocking(move || seed::prepare(&path, vouchers))
        .await
        .map_err(|e| db::DbError::Task(e.to_string()))??;
    if let Some(seeded) = seeded {
        tracing::info!(
            companies = seeded.companies,
            vouchers = seeded.vouchers,
            elapsed_ms = seeded.elapsed.as_millis() as u64,
            "seeded a new database"
        );
    }
    Ok(AppState {
        db: db::Db::new(&config.db_path, config.db_connections),
        cache: config.cache().await,
        purge_token: config.purge_token.clone(),
    })
}
