//! Whether Redis would refuse our writes when full: `maxmemory` set with the policy
//! `noeviction`. A cache wants Redis to evict (`allkeys-lfu`, or `volatile-lfu`: every
//! entry we write has an expiry); under `noeviction` every write past `maxmemory` fails
//! with `OOM`, so the cache stops caching while requests still succeed. Checked once at
//! start, on every primary, with `INFO memory` (allowed where managed services disable
//! `CONFIG`), and logged as a warning: nothing else changes.

use std::sync::Weak;
use std::time::Duration;

use super::{Inner, RedisStore};

/// Tries before giving up when Redis does not answer at start.
const ATTEMPTS: u32 = 10;

/// What `INFO memory` says of the eviction setup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemoryPolicy {
    pub(crate) maxmemory: u64,
    pub(crate) policy: String,
}

impl MemoryPolicy {
    /// Read from an `INFO memory` reply; `None` when it lacks either field.
    pub(crate) fn from_info(info: &str) -> Option<MemoryPolicy> {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
        };
        Some(MemoryPolicy {
            maxmemory: field("maxmemory")?.parse().ok()?,
            policy: field("maxmemory_policy")?.to_owned(),
        })
    }

    /// Whether writes fail once Redis is full instead of evicting something.
    pub(crate) fn refuses_writes(&self) -> bool {
        self.maxmemory > 0 && self.policy == "noeviction"
    }
}

/// Check every primary once it answers, and warn about one that refuses writes when full.
pub(crate) async fn check(store: Weak<Inner>) {
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let Some(inner) = store.upgrade() else { return };
        let store = RedisStore::for_tasks(inner);
        let Ok(nodes) = store.primaries(store.inner.calls.scan_deadline).await else {
            continue;
        };
        let mut answered = true;
        for node in &nodes {
            let cmd = redis::cmd("INFO").arg("memory").clone();
            match store
                .query_node::<String>(node, cmd, store.inner.calls.scan_deadline)
                .await
            {
                Ok(info) => warn_if_refusing(&info),
                Err(error) => {
                    tracing::debug!(%error, "could not read Redis's maxmemory policy");
                    answered = false;
                }
            }
        }
        if answered {
            return;
        }
    }
}

fn warn_if_refusing(info: &str) {
    let Some(memory) = MemoryPolicy::from_info(info) else {
        return;
    };
    if memory.refuses_writes() {
        tracing::warn!(
            maxmemory = memory.maxmemory,
            policy = %memory.policy,
            "Redis has maxmemory set with maxmemory-policy noeviction: once full it refuses \
             cache writes; set maxmemory-policy allkeys-lfu (or volatile-lfu)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(maxmemory: u64, policy: &str) -> String {
        format!(
            "# Memory\r\nused_memory:1024\r\nmaxmemory:{maxmemory}\r\n\
             maxmemory_human:0B\r\nmaxmemory_policy:{policy}\r\n"
        )
    }

    #[test]
    fn only_a_bounded_noeviction_server_refuses_writes() {
        let refusing = MemoryPolicy::from_info(&info(2 << 20, "noeviction")).unwrap();
        assert_eq!(refusing.maxmemory, 2 << 20);
        assert!(refusing.refuses_writes());
        // Unbounded: it never reaches a limit.
        assert!(!MemoryPolicy::from_info(&info(0, "noeviction"))
            .unwrap()
            .refuses_writes());
        for policy in ["allkeys-lfu", "volatile-lfu", "allkeys-lru"] {
            assert!(!MemoryPolicy::from_info(&info(2 << 20, policy))
                .unwrap()
                .refuses_writes());
        }
        // `maxmemory_human` is not `maxmemory`; a reply without the fields says nothing.
        assert_eq!(
            MemoryPolicy::from_info("# Memory\r\nmaxmemory_human:2M\r\n"),
            None
        );
    }
}
