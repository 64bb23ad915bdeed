//! Everything the portal reads from its environment, in one place.
//!
//! `.env` in the current directory is loaded first (variables already set win), so a
//! developer can keep settings there; `env.example` beside this crate's `Cargo.toml`
//! documents each one.
//!
//! The cache's own variables are read by [`CacheConfig::from_env`] (the table is in its
//! module docs), the same way with or without the `redis` feature: a build without it warns
//! that `REDIS_ENABLED=true` cannot be honoured and caches in memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tower_response_cache::{CacheConfig, CacheHandle};

/// The portal's settings. [`Config::from_env`] builds them; tests build them by hand.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORTAL_ADDR`: where to listen (default `127.0.0.1:3000`).
    pub addr: SocketAddr,
    /// `PORTAL_DB`: the SQLite file, created and seeded when absent (default `portal.db`).
    pub db_path: PathBuf,
    /// `PORTAL_SEED_VOUCHERS`: vouchers generated when seeding (default 1 000 000).
    pub seed_vouchers: u64,
    /// `PORTAL_DB_CONNECTIONS`: SQLite connections in the pool (default: CPU count, ≥ 2).
    pub db_connections: usize,
    /// `PORTAL_SYNC_INTERVAL_SECS`: sync one company (round robin) this often; 0 or unset: never.
    pub sync_interval: Option<Duration>,
    /// `PORTAL_CACHE`: `on` (default) or `off` (no caching at all, to measure the database).
    pub cache_enabled: bool,
    /// The cache's settings, from [`CacheConfig::from_env`]: Redis or memory, TTL (default
    /// 3600 s, as in the seed), budget, deadlines. The namespace defaults to
    /// [`NAMESPACE`] rather than the crate's `cache`, so the portal and its `sync` process
    /// agree on it without configuration.
    pub cache: CacheConfig,
    /// `PORTAL_URL`: where the `sync` process finds the portal (default: from `addr`).
    pub portal_url: Option<String>,
    /// `PORTAL_PURGE_TOKEN`: when set (at least 16 bytes), `PURGE /api/dashboard/{guid}` and
    /// `POST /_cache/purge` answer bearers of this token. Unset: no purge endpoint.
    pub purge_token: Option<String>,
}

/// The portal's key prefix when `CACHE_NAMESPACE` is unset.
pub const NAMESPACE: &str = "portal";

/// A variable was set to something unusable. Its message names the variable.
#[derive(Debug)]
pub struct ConfigError(String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Config {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            db_path: PathBuf::from("portal.db"),
            seed_vouchers: 1_000_000,
            db_connections: cpus.max(2),
            sync_interval: None,
            cache_enabled: true,
            cache: {
                let mut cache = CacheConfig::default();
                cache.namespace = NAMESPACE.to_owned();
                cache
            },
            portal_url: None,
            purge_token: None,
        }
    }
}

impl Config {
    /// Load `.env` (if present), then read every variable; unset ones take their default.
    pub fn from_env() -> Result<Config, ConfigError> {
        match dotenvy::dotenv() {
            Ok(_) => {}
            Err(error) if error.not_found() => {}
            Err(error) => return Err(ConfigError(format!(".env: {error}"))),
        }
        let defaults = Config::default();
        Ok(Config {
            addr: parse("PORTAL_ADDR")?.unwrap_or(defaults.addr),
            db_path: var("PORTAL_DB").map_or(defaults.db_path, PathBuf::from),
            seed_vouchers: parse("PORTAL_SEED_VOUCHERS")?.unwrap_or(defaults.seed_vouchers),
            db_connections: parse::<usize>("PORTAL_DB_CONNECTIONS")?
                .unwrap_or(defaults.db_connections)
                .max(1),
            sync_interval: parse::<u64>("PORTAL_SYNC_INTERVAL_SECS")?
                .filter(|secs| *secs > 0)
                .map(Duration::from_secs),
            cache_enabled: match var("PORTAL_CACHE").as_deref() {
                None | Some("on" | "true" | "1") => true,
                Some("off" | "false" | "0") => false,
                Some(other) => {
                    return Err(ConfigError(format!(
                        "PORTAL_CACHE must be `on` or `off`, got {other:?}"
                    )))
                }
            },
            cache: cache_config()?,
            portal_url: var("PORTAL_URL"),
            purge_token: purge_token()?,
        })
    }

    /// The portal's base URL, without a trailing slash: `PORTAL_URL`, else `http://{addr}`
    /// (with an unspecified listen address read as loopback).
    pub fn portal_url(&self) -> String {
        if let Some(url) = &self.portal_url {
            return url.trim_end_matches('/').to_owned();
        }
        let mut addr = self.addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }

    /// The cache every part of the portal shares, or `None` with `PORTAL_CACHE=off`.
    ///
    /// Never fails and never waits long: with `REDIS_ENABLED=true` and Redis unreachable it
    /// starts on memory at once and moves to Redis when Redis answers.
    pub async fn cache(&self) -> Option<CacheHandle> {
        if !self.cache_enabled {
            return None;
        }
        // Read by `CacheConfig::from_env`, which checks what `build` checks.
        let cache = self.cache.clone().build().await;
        Some(cache.expect("the cache settings were checked when they were read"))
    }
}

/// The crate's variables, with the portal's namespace when `CACHE_NAMESPACE` is unset.
fn cache_config() -> Result<CacheConfig, ConfigError> {
    let mut config = CacheConfig::from_env().map_err(|e| ConfigError(e.to_string()))?;
    if var("CACHE_NAMESPACE").is_none() {
        config.namespace = NAMESPACE.to_owned();
    }
    Ok(config)
}

/// `PORTAL_PURGE_TOKEN`, long enough to resist guessing (the purge layer's own minimum).
fn purge_token() -> Result<Option<String>, ConfigError> {
    match var("PORTAL_PURGE_TOKEN") {
        Some(token) if token.len() < 16 => Err(ConfigError(format!(
            "PORTAL_PURGE_TOKEN must be at least 16 bytes, got {}",
            token.len()
        ))),
        token => Ok(token),
    }
}

/// A set, non-empty variable.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn parse<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    var(name)
        .map(|raw| {
            raw.trim()
                .parse()
                .map_err(|e| ConfigError(format!("{name}={raw:?}: {e}")))
        })
        .transpose()
}
