//! The portal, as a module tree its binary (`main.rs`) and its tests (`tests/portal.rs`)
//! both include, so the example's files stay the single source.

pub mod app;
pub mod config;
pub mod dates;
pub mod db;
pub mod seed;

pub use app::{app, AppState};
pub use config::Config;

/// Open the database (creating and seeding it when absent) and build the shared state.
pub async fn state(config: &Config) -> Result<AppState, db::DbError> {
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
    })
}
