//! Durable invalidations: `invalidate` returns only after its removal and its generation
//! bump reached a replica, so a failover right after it cannot promote a replica that
//! still holds what it removed (the entry would come back, and a fill fetched before it
//! would pass the write check again).
//!
//! Replication is asynchronous: a primary answers a write before any replica has it. After
//! an invalidation's writes, `WAIT numreplicas timeout` on the connection that sent them
//! returns how many replicas acknowledged everything that connection wrote. `WAIT` blocks
//! the connection it is sent on, so invalidations have a connection of their own
//! ([`Lane::Invalidations`](super::lane::Lane)): a request never waits behind one.
//! On a cluster `WAIT` goes to every primary through that lane's connection to it: a
//! primary the invalidation wrote to answers when its replicas have it, the others at once.
//!
//! [`Durability::Auto`] (the default for one Redis and a cluster) waits on a primary that
//! lists a replica in `ROLE` and not on one without (a lone Redis: there is nothing to
//! wait for, and nothing to promote); [`Durability::Required`] (the default behind
//! Sentinel, which fails over to a replica by design) always waits, so an invalidation
//! made while every replica is away fails too. An invalidation that no replica acknowledged in time is an
//! error ([`StoreError::not_replicated`]): it has applied on the primary, and a fallback
//! store replays it if the primary changes (its `run_id` does).
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_response_cache::StoreError> {
//! use std::time::Duration;
//! use tower_response_cache::RedisStore;
//!
//! // Every invalidation waits for two replicas, at most 500 ms.
//! let redis = RedisStore::sentinel(["redis://10.0.0.1:26379"], "cache")
//!     .durable_invalidations(2, Duration::from_millis(500))
//!     .build()?;
//! # let _ = redis; Ok(()) }
//! ```

use std::time::Duration;

use super::connection::Node;
use super::lane::Lane;
use super::RedisStore;
use crate::store::StoreError;

/// How long an invalidation waits for replicas by default.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);

/// Whether and for how many replicas an invalidation waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Durability {
    /// Never wait.
    Off,
    /// Wait for `replicas` on a primary that lists at least one replica.
    Auto { replicas: u32, timeout: Duration },
    /// Always wait for `replicas`.
    Required { replicas: u32, timeout: Duration },
}

impl Durability {
    /// The longest a `WAIT` may block (zero when off).
    pub(crate) fn timeout(&self) -> Duration {
        match self {
            Durability::Off => Duration::ZERO,
            Durability::Auto { timeout, .. } | Durability::Required { timeout, .. } => *timeout,
        }
    }
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Auto {
            replicas: 1,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

impl RedisStore {
    /// A handle whose invalidations do not wait for replicas: for a replay of many, which
    /// waits once at its end ([`wait_for_replicas`](Self::wait_for_replicas)). One `WAIT`
    /// per replayed invalidation would let a queue that grows faster than a `WAIT` times
    /// out (no replica left) keep a fallback's circuit open for good.
    pub(crate) fn unwaited(&self) -> RedisStore {
        RedisStore {
            waits: false,
            ..self.clone()
        }
    }

    /// The handle invalidations run on: their own connection, so that their `WAIT` never
    /// holds up a request; the store's own tasks (a fallback store's replay) keep theirs,
    /// which no request uses either.
    pub(super) fn invalidating(&self) -> RedisStore {
        let lane = match self.lane {
            Lane::Background => Lane::Background,
            Lane::Data | Lane::Invalidations => Lane::Invalidations,
        };
        RedisStore {
            lane,
            ..self.clone()
        }
    }

    /// Wait until everything invalidations wrote so far reached the replicas the
    /// durability setting asks for.
    pub(crate) async fn wait_for_replicas(&self) -> Result<(), StoreError> {
        self.invalidating().reach_replicas().await
    }

    /// Wait until the writes this store's invalidation lane made reached the replicas the
    /// durability setting asks for, on every primary.
    pub(super) async fn reach_replicas(&self) -> Result<(), StoreError> {
        let (replicas, timeout, auto) = match self.inner.calls.durability() {
            Durability::Off => return Ok(()),
            Durability::Auto { replicas, timeout } => (replicas, timeout, true),
            Durability::Required { replicas, timeout } => (replicas, timeout, false),
        };
        if replicas == 0 {
            return Ok(());
        }
        // The invalidation lane's deadline includes the `WAIT`; on the tasks' lane (a
        // fallback store's replay) it is added here.
        let deadline = match self.lane {
            Lane::Background => self.inner.calls.deadline + timeout,
            Lane::Data | Lane::Invalidations => self.inner.calls.deadline,
        };
        for node in self.primaries(self.inner.calls.scan_deadline).await? {
            if auto && self.listed_replicas(&node).await? == 0 {
                continue;
            }
            let cmd = redis::cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis().max(1) as u64)
                .clone();
            let acknowledged: u64 = self.query_node(&node, cmd, deadline).await?;
            if acknowledged < u64::from(replicas) {
                return Err(StoreError::not_replicated(
                    "the invalidation applied on the Redis primary, but not enough replicas acknowledged it in time: a failover now could bring back what it removed",
                    format!(
                        "{acknowledged} of {replicas} replicas within {timeout:?} ({})",
                        describe(&node)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// How many replicas `node` lists in `ROLE` (connected ones).
    async fn listed_replicas(&self, node: &Node) -> Result<usize, StoreError> {
        let role: redis::Value = self
            .query_node(node, redis::cmd("ROLE"), self.inner.calls.deadline)
            .await?;
        Ok(match role {
            redis::Value::Array(parts) => match parts.get(2) {
                Some(redis::Value::Array(replicas)) => replicas.len(),
                _ => 0,
            },
            _ => 0,
        })
    }
}

fn describe(node: &Node) -> String {
    match node {
        Node::Only => "the primary".to_owned(),
        Node::Primary { host, port } => format!("primary {host}:{port}"),
    }
}
