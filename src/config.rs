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
//! let cache = config.build().await;
//! assert_eq!(cache.namespace(), "portal");
//!
//! let bad = CacheConfig::from_lookup(|name| (name == "REDIS_PORT").then(|| "http".to_string()));
//! assert!(bad.unwrap_err().to_string().contains("REDIS_PORT"));
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

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
/// | `REDIS_CLUSTER_NODES` | — | `host:port,host:port,…` (or `redis://` / `rediss://` URLs) of Redis Cluster nodes, any of them as seeds; when set, Redis is a cluster and `REDIS_URL`/`HOST`/`PORT`/`DB` are not used |
/// | `CACHE_TTL_SECONDS` | `3600` | TTL, in whole seconds, when a response gives none |
/// | `CACHE_NAMESPACE` | `cache` | prefix of every key (several applications can share one Redis) |
/// | `CACHE_MAX_BYTES` | `268435456` | memory store budget, at least 4096 (also the fallback's) |
/// | `CACHE_REDIS_TIMEOUT_MS` | `50` | deadline of each Redis call, more than 0 |
/// | `CACHE_FALLBACK_TTL_SECONDS` | `30` | longest life of an entry written while Redis is down |
/// | `CACHE_FALLBACK_MODE` | `serve` | while Redis is unreachable: `serve` from memory (what another process invalidates meanwhile may be served here for up to `CACHE_FALLBACK_TTL_SECONDS`) or `bypass` the cache (no stale answer; every request reaches the origin); see [`FallbackMode`] |
/// | `CACHE_NEAR_LEASE_MS` | — (off) | turn the near cache (an L1 in front of Redis or a Redis Cluster) on with this lease, 4–10 000 ms; an `invalidate` then waits for every process's acknowledgement, or this long for one that does not answer |
/// | `CACHE_NEAR_MAX_BYTES` | `67108864` | the near cache's byte budget |
///
/// Values are trimmed; an empty value is the same as none. An invalid value is an error
/// naming the variable. Building never fails: with Redis off (or the `redis` feature not
/// compiled in) the cache is in memory, and with Redis unreachable it starts on memory at
/// once and switches to Redis when it answers.
#[derive(Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Use Redis.
    pub redis_enabled: bool,
    /// Where Redis is.
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster (`redis://host:port` URLs); when not empty, Redis is a
    /// cluster and [`redis_url`](Self::redis_url) is not used.
    pub redis_cluster_nodes: Vec<String>,
    /// Default TTL.
    pub ttl: Duration,
    /// Key prefix.
    pub namespace: String,
    /// Memory budget in bytes.
    pub max_bytes: usize,
    /// Deadline of each Redis call.
    pub redis_timeout: Duration,
    /// Longest life of an entry written while falling back.
    pub fallback_ttl: Duration,
    /// What the cache does while Redis is unreachable.
    pub fallback_mode: FallbackMode,
    /// The near cache's lease, when it is on (see `RedisStoreBuilder::near_cache`).
    pub near_lease: Option<Duration>,
    /// The near cache's byte budget.
    pub near_max_bytes: usize,
}

/// A configuration variable had a value that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    variable: &'static str,
    value: String,
    expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid value {:?} for {}: expected {}",
            self.value, self.variable, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            redis_enabled: false,
            redis_url: "redis://localhost:6379/0".to_owned(),
            redis_cluster_nodes: Vec::new(),
            ttl: Duration::from_secs(3600),
            namespace: "cache".to_owned(),
            max_bytes: 256 << 20,
            redis_timeout: Duration::from_millis(50),
            fallback_ttl: Duration::from_secs(30),
            fallback_mode: FallbackMode::Serve,
            near_lease: None,
            near_max_bytes: 64 << 20,
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
        if let Some(nodes) = get("REDIS_CLUSTER_NODES") {
            config.redis_cluster_nodes = cluster_nodes(&nodes, get("REDIS_PASSWORD"))
                .ok_or_else(|| invalid("REDIS_CLUSTER_NODES", nodes, "host:port,host:port,…"))?;
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
        Ok(config)
    }

    /// Build the handle. Never fails and never waits long for Redis: see the module docs.
    pub async fn build(self) -> CacheHandle {
        let memory = MemoryStore::builder().max_bytes(self.max_bytes).build();
        let builder = if self.redis_enabled {
            self.redis_store(memory).await
        } else {
            CacheHandle::builder(memory)
        };
        builder.namespace(self.namespace).ttl(self.ttl).build()
    }

    #[cfg(feature = "redis")]
    async fn redis_store(&self, memory: MemoryStore) -> crate::handle::CacheHandleBuilder {
        use crate::store::{FallbackStore, RedisStore};
        let redis = if self.redis_cluster_nodes.is_empty() {
            RedisStore::builder(self.redis_url.as_str())
        } else {
            RedisStore::cluster(self.redis_cluster_nodes.iter().cloned())
        };
        let mut redis = redis.deadline(self.redis_timeout);
        if let Some(lease) = self.near_lease {
            redis = redis.near_cache(lease, self.near_max_bytes);
        }
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
            .field("ttl", &self.ttl)
            .field("namespace", &self.namespace)
            .field("max_bytes", &self.max_bytes)
            .field("redis_timeout", &self.redis_timeout)
            .field("fallback_ttl", &self.fallback_ttl)
            .field("fallback_mode", &self.fallback_mode)
            .field("near_lease", &self.near_lease)
            .field("near_max_bytes", &self.near_max_bytes)
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
    ConfigError {
        variable,
        value,
        expected,
    }
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
            ("REDIS_CLUSTER_NODES", "10.0.0.1"),
            ("REDIS_CLUSTER_NODES", "http://10.0.0.1:7000"),
            ("REDIS_CLUSTER_NODES", "10.0.0.1:7000,:7001"),
            ("REDIS_CLUSTER_NODES", ",,"),
        ] {
            let error = config(&[(name, value)]).unwrap_err().to_string();
            assert!(error.contains(name) && error.contains(value), "{error}");
        }
    }
}
