//! [`CacheConfig`]: the cache configured from environment variables.
//!
//! The variables and their defaults are listed once, in [`CacheConfig`]'s docs (the README
//! links there).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), tower_response_cache::ConfigError> {
//! use tower_response_cache::CacheConfig;
//!
//! let vars = [("CACHE_TTL_SECONDS", "60"), ("CACHE_NAMESPACE", "portal")];
//! let config = CacheConfig::from_lookup(|name| {
//!     vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
//! })?;
//! let cache = config.build().await?;
//! assert_eq!(cache.namespace(), "portal");
//!
//! let bad = CacheConfig::from_lookup(|name| (name == "REDIS_PORT").then(|| "http".to_string()));
//! assert!(bad.unwrap_err().to_string().contains("REDIS_PORT"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use crate::config_error::ConfigError;
use crate::handle::CacheHandle;
use crate::store::{FallbackMode, MemoryStore};

/// Cache settings, usually read by [`CacheConfig::from_env`].
///
/// # Environment variables
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `REDIS_ENABLED` | `false` | use Redis (with the memory fallback): `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off` |
/// | `REDIS_URL` | — | `redis://[:password@]host:port/db` (also `rediss://`, `redis+unix://`, `unix://`); when set, the four below do not build the URL |
/// | `REDIS_HOST` | `localhost` | Redis host |
/// | `REDIS_PORT` | `6379` | Redis port |
/// | `REDIS_DB` | `0` | Redis database number |
/// | `REDIS_PASSWORD` | — | Redis password (percent-encoded into the URL); also used for every cluster node that names none |
/// | `REDIS_SENTINELS` | — | `host:port,host:port,…` (or `redis://` URLs, with a sentinel's own password if it has one) of Redis Sentinels; when set, the primary they name `REDIS_SENTINEL_MASTER` is used and followed through failovers, with `REDIS_PASSWORD` and `REDIS_DB`, and `REDIS_URL`/`HOST`/`PORT` are not used |
/// | `REDIS_SENTINEL_MASTER` | — | the name the sentinels monitor the primary under; required with `REDIS_SENTINELS` |
/// | `REDIS_CLUSTER_NODES` | — | `host:port,host:port,…` (or `redis://` / `rediss://` URLs) of Redis Cluster nodes, any of them as seeds; when set, Redis is a cluster and `REDIS_URL`/`HOST`/`PORT`/`DB` are not used |
/// | `CACHE_TTL_SECONDS` | `3600` | TTL, in whole seconds, when a response gives none |
/// | `CACHE_NAMESPACE` | `cache` | prefix of every key (several applications can share one Redis), 1 to 4096 bytes |
/// | `CACHE_MAX_BYTES` | `268435456` | memory store budget, at least 4096 (also the fallback's) |
/// | `CACHE_REDIS_TIMEOUT_MS` | `50` | deadline of each Redis call, more than 0 |
/// | `CACHE_REDIS_MAX_VALUE_BYTES` | `1048576` | the largest value written to Redis, at least 4096: a larger response is served, not stored there (a read must fit the deadline; see `RedisStoreBuilder::max_value_bytes`) |
/// | `CACHE_REDIS_REPLY_BUDGET_BYTES` | `268435456` | bytes of Redis replies a process holds at once, each read counted at the largest value; at least 4096: a read that finds no room within the deadline is a miss (see `RedisStoreBuilder::reply_budget`) |
/// | `CACHE_FALLBACK_TTL_SECONDS` | `30` | longest life of an entry written while Redis is down |
/// | `CACHE_FALLBACK_MODE` | `serve` | while Redis is unreachable: `serve` from memory (what another process invalidates meanwhile may be served here for up to `CACHE_FALLBACK_TTL_SECONDS`) or `bypass` the cache (no stale answer; every request reaches the origin); see [`FallbackMode`] |
/// | `CACHE_INVALIDATE_REPLICAS` | `auto` | replicas each `invalidate` waits for (`WAIT`) before it returns: `auto` waits for one behind Sentinel, and elsewhere for one on a primary that has a replica (not on one without), `0` never waits, `N` always waits for N; fewer in time is an error ([`StoreError::is_not_replicated`](crate::StoreError::is_not_replicated)) |
/// | `CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS` | `250` | how long an `invalidate` waits for its replicas, more than 0 |
/// | `CACHE_NEAR_LEASE_MS` | — (off) | turn the near cache (an L1 in front of Redis or a Redis Cluster) on with this lease, 4–10 000 ms; an `invalidate` then waits for every process's acknowledgement, or this long for one that does not answer |
/// | `CACHE_NEAR_MAX_BYTES` | `67108864` | the near cache's byte budget |
/// | `CACHE_FLEET_LEASE_MS` | `2000` | fleet-wide single flight: when a key misses in several processes at once one fetches and the others wait for its entry; a leader that stalls is taken over after this long; `0` turns it off |
///
/// Values are trimmed; an empty value is the same as none. An invalid value is an error
/// naming the variable (and a field set in code to a bad value is one when building).
/// Building never fails because of Redis: with Redis off (or the `redis` feature not
/// compiled in) the cache is in memory, and with Redis unreachable it starts on memory at
/// once and switches to Redis when it answers.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Use Redis.
    pub redis_enabled: bool,
    /// Where Redis is.
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port` URLs); when not empty, Redis is a
    /// cluster and [`redis_url`](Self::redis_url) is not used.
    pub redis_cluster_nodes: Vec<String>,
    /// Redis Sentinel addresses (`redis://host:port` URLs); when not empty, Redis is the
    /// primary they name [`redis_sentinel_master`](Self::redis_sentinel_master).
    pub redis_sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub redis_sentinel_master: String,
    /// The password of a Sentinel primary (`REDIS_PASSWORD`; a URL carries its own).
    pub redis_password: Option<String>,
    /// The database of a Sentinel primary (`REDIS_DB`).
    pub redis_db: i64,
    /// Replicas an invalidation waits for: `None` for `auto`, `Some(0)` never.
    pub invalidate_replicas: Option<u32>,
    /// How long an invalidation waits for its replicas.
    pub invalidate_replicas_timeout: Duration,
    /// Default TTL.
    pub ttl: Duration,
    /// Key prefix.
    pub namespace: String,
    /// Memory budget in bytes.
    pub max_bytes: usize,
    /// Deadline of each Redis call.
    pub redis_timeout: Duration,
    /// The largest value written to Redis (see `RedisStoreBuilder::max_value_bytes`).
    pub redis_max_value_bytes: usize,
    /// Bytes of Redis replies held at once (see `RedisStoreBuilder::reply_budget`).
    pub redis_reply_budget_bytes: usize,
    /// Longest life of an entry written while falling back.
    pub fallback_ttl: Duration,
    /// What the cache does while Redis is unreachable.
    pub fallback_mode: FallbackMode,
    /// The near cache's lease, when it is on (see `RedisStoreBuilder::near_cache`).
    pub near_lease: Option<Duration>,
    /// The near cache's byte budget.
    pub near_max_bytes: usize,
    /// The lease of a fleet-wide single flight (`None`: off; see
    /// `RedisStoreBuilder::fleet_single_flight`).
    pub fleet_lease: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_enabled: false,
            redis_url: "redis://localhost:6379/0".to_owned(),
            redis_cluster_nodes: Vec::new(),
            redis_sentinels: Vec::new(),
            redis_sentinel_master: String::new(),
            redis_password: None,
            redis_db: 0,
            invalidate_replicas: None,
            invalidate_replicas_timeout: Duration::from_millis(250),
            ttl: Duration::from_secs(3600),
            namespace: "cache".to_owned(),
            max_bytes: 256 << 20,
            redis_timeout: Duration::from_millis(50),
            redis_max_value_bytes: 1 << 20,
            redis_reply_budget_bytes: 256 << 20,
            fallback_ttl: Duration::from_secs(30),
            fallback_mode: FallbackMode::Serve,
            near_lease: None,
            near_max_bytes: 64 << 20,
            fleet_lease: Some(Duration::from_secs(2)),
        }
    }
}

impl CacheConfig {
    /// Read the process environment: the variables in the table of [`CacheConfig`].
    pub fn from_env() -> Result<CacheConfig, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read variables through `lookup` (for tests, or settings from elsewhere).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<CacheConfig, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = CacheConfig::default();
        if let Some(value) = get("REDIS_ENABLED") {
            config.redis_enabled = match value.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(invalid("REDIS_ENABLED", value, "true or false")),
            };
        }
        config.redis_url = match get("REDIS_URL") {
            Some(url) => {
                if !(url.starts_with("redis://")
                    || url.starts_with("rediss://")
                    || url.starts_with("redis+unix://")
                    || url.starts_with("unix://"))
                {
                    return Err(invalid("REDIS_URL", url, "a redis:// URL"));
                }
                url
            }
            None => {
                let host = get("REDIS_HOST").unwrap_or_else(|| "localhost".to_owned());
                let port: u16 = parse(&get, "REDIS_PORT", "a port number")?.unwrap_or(6379);
                let db: u32 = parse(&get, "REDIS_DB", "a database number")?.unwrap_or(0);
                match get("REDIS_PASSWORD") {
                    Some(password) => {
                        format!("redis://:{}@{host}:{port}/{db}", encode_userinfo(&password))
                    }
                    None => format!("redis://{host}:{port}/{db}"),
                }
            }
        };
        if let Some(sentinels) = get("REDIS_SENTINELS") {
            config.redis_password = get("REDIS_PASSWORD");
            config.redis_db = parse::<u32>(&get, "REDIS_DB", "a database number")?
                .unwrap_or(0)
                .into();
            config.redis_sentinels = cluster_nodes(&sentinels, None)
                .ok_or_else(|| invalid("REDIS_SENTINELS", sentinels, "host:port,host:port,…"))?;
            config.redis_sentinel_master = get("REDIS_SENTINEL_MASTER").ok_or_else(|| {
                invalid(
                    "REDIS_SENTINEL_MASTER",
                    String::new(),
                    "the name the sentinels monitor the primary under (REDIS_SENTINELS is set)",
                )
            })?;
        }
        if let Some(replicas) = get("CACHE_INVALIDATE_REPLICAS") {
            config.invalidate_replicas = match replicas.to_ascii_lowercase().as_str() {
                "auto" => None,
                n => Some(n.parse().map_err(|_| {
                    invalid(
                        "CACHE_INVALIDATE_REPLICAS",
                        replicas.clone(),
                        "auto or a number",
                    )
                })?),
            };
        }
        if let Some(ms) =
            parse::<u64>(&get, "CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS", "milliseconds")?
        {
            if ms == 0 {
                return Err(invalid(
                    "CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS",
                    ms.to_string(),
                    "more than 0",
                ));
            }
            config.invalidate_replicas_timeout = Duration::from_millis(ms);
        }
        if let Some(nodes) = get("REDIS_CLUSTER_NODES") {
            config.redis_cluster_nodes = cluster_nodes(&nodes, get("REDIS_PASSWORD"))
                .ok_or_else(|| invalid("REDIS_CLUSTER_NODES", nodes, "host:port,host:port,…"))?;
        }
        if !config.redis_sentinels.is_empty() && !config.redis_cluster_nodes.is_empty() {
            return Err(invalid(
                "REDIS_SENTINELS",
                config.redis_sentinels.join(","),
                "unset when REDIS_CLUSTER_NODES is set (a cluster needs no sentinels)",
            ));
        }
        if let Some(ttl) = parse::<u64>(&get, "CACHE_TTL_SECONDS", "whole seconds")? {
            config.ttl = Duration::from_secs(ttl);
        }
        if let Some(namespace) = get("CACHE_NAMESPACE") {
            config.namespace = namespace;
        }
        if let Some(bytes) = parse::<usize>(&get, "CACHE_MAX_BYTES", "a number of bytes")? {
            if bytes < 4096 {
                return Err(invalid(
                    "CACHE_MAX_BYTES",
                    bytes.to_string(),
                    "at least 4096",
                ));
            }
            config.max_bytes = bytes;
        }
        if let Some(ms) = parse::<u64>(&get, "CACHE_REDIS_TIMEOUT_MS", "milliseconds")? {
            if ms == 0 {
                return Err(invalid(
                    "CACHE_REDIS_TIMEOUT_MS",
                    ms.to_string(),
                    "more than 0",
                ));
            }
            config.redis_timeout = Duration::from_millis(ms);
        }
        if let Some(secs) = parse::<u64>(&get, "CACHE_FALLBACK_TTL_SECONDS", "whole seconds")? {
            config.fallback_ttl = Duration::from_secs(secs);
        }
        if let Some(mode) = get("CACHE_FALLBACK_MODE") {
            config.fallback_mode = match mode.to_ascii_lowercase().as_str() {
                "serve" => FallbackMode::Serve,
                "bypass" => FallbackMode::Bypass,
                _ => return Err(invalid("CACHE_FALLBACK_MODE", mode, "serve or bypass")),
            };
        }
        if let Some(ms) = parse::<u64>(&get, "CACHE_NEAR_LEASE_MS", "milliseconds")? {
            if !(4..=10_000).contains(&ms) {
                return Err(invalid("CACHE_NEAR_LEASE_MS", ms.to_string(), "4 to 10000"));
            }
            config.near_lease = Some(Duration::from_millis(ms));
        }
        if let Some(bytes) =
            parse::<usize>(&get, "CACHE_REDIS_MAX_VALUE_BYTES", "a number of bytes")?
        {
            config.redis_max_value_bytes = bytes;
        }
        if let Some(bytes) =
            parse::<usize>(&get, "CACHE_REDIS_REPLY_BUDGET_BYTES", "a number of bytes")?
        {
            config.redis_reply_budget_bytes = bytes;
        }
        if let Some(bytes) = parse::<usize>(&get, "CACHE_NEAR_MAX_BYTES", "a number of bytes")? {
            if bytes < 4096 {
                return Err(invalid(
                    "CACHE_NEAR_MAX_BYTES",
                    bytes.to_string(),
                    "at least 4096",
                ));
            }
            config.near_max_bytes = bytes;
        }
        if let Some(ms) = parse::<u64>(&get, "CACHE_FLEET_LEASE_MS", "milliseconds")? {
            if ms > 60_000 {
                return Err(invalid(
                    "CACHE_FLEET_LEASE_MS",
                    ms.to_string(),
                    "0 (off) to 60000",
                ));
            }
            config.fleet_lease = (ms > 0).then(|| Duration::from_millis(ms));
        }
        config.validate()?;
        Ok(config)
    }

    /// Check the settings the way [`from_lookup`](Self::from_lookup) checks the variables
    /// (a configuration written in code is checked here): each bad one is an error naming
    /// the variable that sets it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::handle::check_namespace(&self.namespace)?;
        let at_least = |variable, value: usize, least: usize, expected| {
            if value < least {
                return Err(invalid(variable, value.to_string(), expected));
            }
            Ok(())
        };
        at_least("CACHE_MAX_BYTES", self.max_bytes, 4096, "at least 4096")?;
        at_least(
            "CACHE_REDIS_MAX_VALUE_BYTES",
            self.redis_max_value_bytes,
            4096,
            "at least 4096",
        )?;
        at_least(
            "CACHE_REDIS_REPLY_BUDGET_BYTES",
            self.redis_reply_budget_bytes,
            4096,
            "at least 4096",
        )?;
        at_least(
            "CACHE_NEAR_MAX_BYTES",
            self.near_max_bytes,
            4096,
            "at least 4096",
        )?;
        if self.redis_timeout.is_zero() {
            return Err(invalid("CACHE_REDIS_TIMEOUT_MS", "0".into(), "more than 0"));
        }
        if let Some(lease) = self.near_lease {
            if !(Duration::from_millis(4)..=Duration::from_secs(10)).contains(&lease) {
                let ms = lease.as_millis().to_string();
                return Err(invalid("CACHE_NEAR_LEASE_MS", ms, "4 to 10000"));
            }
        }
        Ok(())
    }

    /// Build the handle. Never waits long for Redis and never fails because of it (see the
    /// module docs); a setting that cannot be used is an error naming it (see
    /// [`validate`](Self::validate)).
    pub async fn build(self) -> Result<CacheHandle, ConfigError> {
        self.validate()?;
        let memory = MemoryStore::builder().max_bytes(self.max_bytes).build();
        let builder = if self.redis_enabled {
            self.redis_store(memory).await
        } else {
            CacheHandle::builder(memory)
        };
        builder.namespace(self.namespace).ttl(self.ttl).try_build()
    }

    #[cfg(feature = "redis")]
    async fn redis_store(&self, memory: MemoryStore) -> crate::handle::CacheHandleBuilder {
        use crate::store::{FallbackStore, RedisStore};
        let redis = if !self.redis_sentinels.is_empty() {
            let sentinel = RedisStore::sentinel(
                self.redis_sentinels.iter().cloned(),
                self.redis_sentinel_master.as_str(),
            )
            .primary_db(self.redis_db);
            match &self.redis_password {
                Some(password) => sentinel.primary_password(password.as_str()),
                None => sentinel,
            }
        } else if self.redis_cluster_nodes.is_empty() {
            RedisStore::builder(self.redis_url.as_str())
        } else {
            RedisStore::cluster(self.redis_cluster_nodes.iter().cloned())
        };
        let timeout = self.invalidate_replicas_timeout;
        let redis = match self.invalidate_replicas {
            None if !self.redis_sentinels.is_empty() => redis.durable_invalidations(1, timeout),
            None => redis.durable_invalidations_when_replicated(1, timeout),
            Some(replicas) => redis.durable_invalidations(replicas, timeout),
        };
        let mut redis = redis
            .deadline(self.redis_timeout)
            .max_value_bytes(self.redis_max_value_bytes)
            .reply_budget(self.redis_reply_budget_bytes);
        if let Some(lease) = self.near_lease {
            redis = redis.near_cache(lease, self.near_max_bytes);
        }
        let redis = redis.fleet_single_flight(self.fleet_lease);
        match redis.build() {
            Ok(redis) => {
                let store = FallbackStore::builder(redis, memory)
                    .fallback_ttl(self.fallback_ttl)
                    .mode(self.fallback_mode)
                    .build()
                    .await;
                CacheHandle::builder(store)
            }
            Err(error) => {
                tracing::error!(%error, "Redis cannot be used; caching in memory only");
                CacheHandle::builder(memory)
            }
        }
    }

    #[cfg(not(feature = "redis"))]
    async fn redis_store(&self, memory: MemoryStore) -> crate::handle::CacheHandleBuilder {
        tracing::warn!("REDIS_ENABLED is set but tower-response-cache was built without its `redis` feature; caching in memory only");
        CacheHandle::builder(memory)
    }
}

impl fmt::Debug for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry a password.
        let url = hide_password(&self.redis_url);
        f.debug_struct("CacheConfig")
            .field("redis_enabled", &self.redis_enabled)
            .field("redis_url", &url)
            .field(
                "redis_cluster_nodes",
                &self
                    .redis_cluster_nodes
                    .iter()
                    .map(|n| hide_password(n))
                    .collect::<Vec<_>>(),
            )
            .field(
                "redis_sentinels",
                &self
                    .redis_sentinels
                    .iter()
                    .map(|n| hide_password(n))
                    .collect::<Vec<_>>(),
            )
            .field("redis_sentinel_master", &self.redis_sentinel_master)
            .field(
                "redis_password",
                &self.redis_password.as_ref().map(|_| "***"),
            )
            .field("redis_db", &self.redis_db)
            .field("invalidate_replicas", &self.invalidate_replicas)
            .field(
                "invalidate_replicas_timeout",
                &self.invalidate_replicas_timeout,
            )
            .field("ttl", &self.ttl)
            .field("namespace", &self.namespace)
            .field("max_bytes", &self.max_bytes)
            .field("redis_timeout", &self.redis_timeout)
            .field("fallback_ttl", &self.fallback_ttl)
            .field("fallback_mode", &self.fallback_mode)
            .field("near_lease", &self.near_lease)
            .field("near_max_bytes", &self.near_max_bytes)
            .field("fleet_lease", &self.fleet_lease)
            .field("redis_max_value_bytes", &self.redis_max_value_bytes)
            .field("redis_reply_budget_bytes", &self.redis_reply_budget_bytes)
            .finish()
    }
}

fn hide_password(url: &str) -> String {
    match url.split_once('@') {
        Some((_, host)) => format!("redis://***@{host}"),
        None => url.to_owned(),
    }
}

/// `host:port` or `redis://…` entries, comma-separated, as cluster seed URLs (with the
/// password added to those that carry none); `None` when an entry is not a node address.
fn cluster_nodes(list: &str, password: Option<String>) -> Option<Vec<String>> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|node| {
            let (scheme, rest) = match node.split_once("://") {
                Some((scheme @ ("redis" | "rediss"), rest)) => (scheme, rest),
                Some(_) => return None,
                None => ("redis", node),
            };
            let address = rest.rsplit_once('@').map_or(rest, |(_, a)| a);
            let address = address.trim_end_matches('/');
            let (host, port) = address.rsplit_once(':')?;
            if host.is_empty() || port.parse::<u16>().ok()? == 0 {
                return None;
            }
            Some(match (&password, rest.contains('@')) {
                (Some(password), false) => {
                    format!("{scheme}://:{}@{address}", encode_userinfo(password))
                }
                _ => format!("{scheme}://{}", rest.trim_end_matches('/')),
            })
        })
        .collect::<Option<Vec<_>>>()
        .filter(|nodes| !nodes.is_empty())
}

fn invalid(variable: &'static str, value: String, expected: &'static str) -> ConfigError {
    ConfigError::invalid(variable, value, expected)
}

fn parse<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    match get(variable) {
        None => Ok(None),
        Some(value) => value
            .parse()
            .map(Some)
            .map_err(|_| invalid(variable, value, expected)),
    }
}

/// Percent-encode a password for the userinfo part of a URL.
fn encode_userinfo(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for byte in raw.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        CacheConfig::from_lookup(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_are_memory_and_an_hour() {
        let c = config(&[]).unwrap();
        assert!(!c.redis_enabled);
        assert_eq!(c.ttl, Duration::from_secs(3600));
        assert_eq!(c.redis_url, "redis://localhost:6379/0");
    }

    #[test]
    fn near_cache_variables() {
        let c = config(&[
            ("CACHE_NEAR_LEASE_MS", "150"),
            ("CACHE_NEAR_MAX_BYTES", "1048576"),
        ])
        .unwrap();
        assert_eq!(c.near_lease, Some(Duration::from_millis(150)));
        assert_eq!(c.near_max_bytes, 1 << 20);
        assert_eq!(config(&[]).unwrap().near_lease, None);
        let bad = config(&[("CACHE_NEAR_LEASE_MS", "60000")]).unwrap_err();
        assert!(bad.to_string().contains("CACHE_NEAR_LEASE_MS"));
    }

    #[test]
    fn the_redis_value_cap_is_a_mebibyte_unless_set() {
        assert_eq!(config(&[]).unwrap().redis_max_value_bytes, 1 << 20);
        let set = config(&[("CACHE_REDIS_MAX_VALUE_BYTES", "8388608")]).unwrap();
        assert_eq!(set.redis_max_value_bytes, 8 << 20);
        for bad in ["100", "big"] {
            let error = config(&[("CACHE_REDIS_MAX_VALUE_BYTES", bad)]).unwrap_err();
            assert_eq!(error.variable(), "CACHE_REDIS_MAX_VALUE_BYTES");
        }
    }

    #[test]
    fn fallback_mode_is_serve_unless_set_to_bypass() {
        assert_eq!(config(&[]).unwrap().fallback_mode, FallbackMode::Serve);
        for (value, mode) in [
            ("serve", FallbackMode::Serve),
            ("bypass", FallbackMode::Bypass),
            (" Bypass ", FallbackMode::Bypass),
        ] {
            let c = config(&[("CACHE_FALLBACK_MODE", value)]).unwrap();
            assert_eq!(c.fallback_mode, mode, "{value:?}");
        }
        let error = config(&[("CACHE_FALLBACK_MODE", "memory")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("CACHE_FALLBACK_MODE") && error.contains("memory"),
            "{error}"
        );
    }

    #[test]
    fn seed_variables_build_the_url() {
        let c = config(&[
            ("REDIS_ENABLED", "true"),
            ("REDIS_HOST", "cache.internal"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_PASSWORD", "p@ss word"),
            ("CACHE_TTL_SECONDS", "60"),
        ])
        .unwrap();
        assert!(c.redis_enabled);
        assert_eq!(c.redis_url, "redis://:p%40ss%20word@cache.internal:6380/2");
        assert_eq!(c.ttl, Duration::from_secs(60));
        assert!(
            !format!("{c:?}").contains("p%40ss"),
            "Debug must hide the password"
        );
    }

    #[test]
    fn redis_url_wins() {
        let c = config(&[
            ("REDIS_URL", "redis://10.0.0.1:7000/1"),
            ("REDIS_HOST", "x"),
        ])
        .unwrap();
        assert_eq!(c.redis_url, "redis://10.0.0.1:7000/1");
    }

    #[test]
    fn cluster_nodes_become_seed_urls_with_the_password() {
        let c = config(&[
            (
                "REDIS_CLUSTER_NODES",
                "10.0.0.1:7000, redis://10.0.0.2:7001/,rediss://:own@h:7002",
            ),
            ("REDIS_PASSWORD", "p w"),
        ])
        .unwrap();
        assert_eq!(
            c.redis_cluster_nodes,
            [
                "redis://:p%20w@10.0.0.1:7000",
                "redis://:p%20w@10.0.0.2:7001",
                "rediss://:own@h:7002"
            ]
        );
        assert!(
            !format!("{c:?}").contains("p%20w"),
            "Debug must hide passwords"
        );
        assert!(config(&[]).unwrap().redis_cluster_nodes.is_empty());
    }

    #[test]
    fn sentinels_name_the_primary_with_the_password_and_db() {
        let c = config(&[
            (
                "REDIS_SENTINELS",
                "10.0.0.1:26379, redis://:s@10.0.0.2:26379",
            ),
            ("REDIS_SENTINEL_MASTER", "cache"),
            ("REDIS_PASSWORD", "p w"),
            ("REDIS_DB", "3"),
        ])
        .unwrap();
        assert_eq!(
            c.redis_sentinels,
            ["redis://10.0.0.1:26379", "redis://:s@10.0.0.2:26379"]
        );
        assert_eq!(c.redis_sentinel_master, "cache");
        assert_eq!(c.redis_password.as_deref(), Some("p w"));
        assert_eq!(c.redis_db, 3);
        let shown = format!("{c:?}");
        assert!(!shown.contains("p w") && !shown.contains(":s@"), "{shown}");
        let error = config(&[("REDIS_SENTINELS", "10.0.0.1:26379")])
            .unwrap_err()
            .to_string();
        assert!(error.contains("REDIS_SENTINEL_MASTER"), "{error}");
        let both = config(&[
            ("REDIS_SENTINELS", "10.0.0.1:26379"),
            ("REDIS_SENTINEL_MASTER", "cache"),
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000"),
        ]);
        assert!(both.unwrap_err().to_string().contains("REDIS_SENTINELS"));
    }

    #[test]
    fn invalidations_wait_for_a_replica_when_there_is_one_unless_told_otherwise() {
        let c = config(&[]).unwrap();
        assert_eq!(c.invalidate_replicas, None);
        assert_eq!(c.invalidate_replicas_timeout, Duration::from_millis(250));
        let c = config(&[
            ("CACHE_INVALIDATE_REPLICAS", "2"),
            ("CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS", "40"),
        ])
        .unwrap();
        assert_eq!(c.invalidate_replicas, Some(2));
        assert_eq!(c.invalidate_replicas_timeout, Duration::from_millis(40));
        assert_eq!(
            config(&[("CACHE_INVALIDATE_REPLICAS", " AUTO ")])
                .unwrap()
                .invalidate_replicas,
            None
        );
        assert_eq!(
            config(&[("CACHE_INVALIDATE_REPLICAS", "0")])
                .unwrap()
                .invalidate_replicas,
            Some(0)
        );
    }

    #[test]
    fn invalid_values_name_the_variable() {
        for (name, value) in [
            ("REDIS_ENABLED", "maybe"),
            ("REDIS_PORT", "99999"),
            ("REDIS_DB", "-1"),
            ("REDIS_URL", "http://x"),
            ("CACHE_TTL_SECONDS", "1h"),
            ("CACHE_MAX_BYTES", "12"),
            ("CACHE_REDIS_TIMEOUT_MS", "0"),
            ("CACHE_FALLBACK_TTL_SECONDS", "soon"),
            ("CACHE_FALLBACK_MODE", "stale"),
            ("CACHE_FLEET_LEASE_MS", "99999"),
            ("CACHE_FLEET_LEASE_MS", "soon"),
            ("REDIS_CLUSTER_NODES", "10.0.0.1"),
            ("REDIS_CLUSTER_NODES", "http://10.0.0.1:7000"),
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000,:7001"),
            ("REDIS_CLUSTER_NODES", ",,"),
            ("REDIS_SENTINELS", "10.0.0.1"),
            ("CACHE_INVALIDATE_REPLICAS", "all"),
            ("CACHE_INVALIDATE_REPLICAS_TIMEOUT_MS", "0"),
        ] {
            let error = config(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(value), "{error}");
        }
    }

    #[test]
    fn the_fleet_lease_is_on_by_default_and_zero_turns_it_off() {
        assert_eq!(
            config(&[]).unwrap().fleet_lease,
            Some(Duration::from_secs(2))
        );
        let off = config(&[("CACHE_FLEET_LEASE_MS", "0")]).unwrap();
        assert_eq!(off.fleet_lease, None);
        let short = config(&[("CACHE_FLEET_LEASE_MS", "300")]).unwrap();
        assert_eq!(short.fleet_lease, Some(Duration::from_millis(300)));
    }

    #[tokio::test]
    async fn a_bad_setting_made_in_code_is_an_error_naming_it_not_a_panic() {
        let long = "n".repeat(4097);
        type Setting = fn(&mut CacheConfig, &str);
        let cases: [(&str, Setting); 7] = [
            ("CACHE_NAMESPACE", |c, _| c.namespace = String::new()),
            ("CACHE_NAMESPACE", |c, long| c.namespace = long.to_owned()),
            ("CACHE_MAX_BYTES", |c, _| c.max_bytes = 12),
            ("CACHE_NEAR_MAX_BYTES", |c, _| c.near_max_bytes = 0),
            ("CACHE_REDIS_MAX_VALUE_BYTES", |c, _| {
                c.redis_max_value_bytes = 100
            }),
            ("CACHE_REDIS_TIMEOUT_MS", |c, _| {
                c.redis_timeout = Duration::ZERO
            }),
            ("CACHE_NEAR_LEASE_MS", |c, _| {
                c.near_lease = Some(Duration::from_secs(60))
            }),
        ];
        for (variable, set) in cases {
            let mut config = CacheConfig::default();
            set(&mut config, &long);
            let error = config.build().await.map(|_| ()).unwrap_err();
            assert_eq!(error.variable(), variable, "{error}");
        }
        // The positive control: the defaults build.
        let cache = CacheConfig::default().build().await.unwrap();
        assert_eq!(cache.namespace(), "cache");
        // An oversized namespace from the environment is refused when read.
        let error = config(&[("CACHE_NAMESPACE", &long)]).unwrap_err();
        assert_eq!(error.variable(), "CACHE_NAMESPACE");
    }

    #[test]
    fn an_empty_namespace_is_refused_by_the_handle_builder() {
        let built = CacheHandle::builder(MemoryStore::new())
            .namespace("")
            .try_build();
        assert_eq!(built.map(|_| ()).unwrap_err().variable(), "CACHE_NAMESPACE");
        assert!(CacheHandle::builder(MemoryStore::new())
            .namespace("n")
            .try_build()
            .is_ok());
    }
}
