//! Every Redis call of a [`RedisStore`]: within a deadline, with Redis's errors sorted
//! into outages (which open a fallback store's circuit) and answers.
//!
//! A call made on a request's behalf returns its error to the caller, which counts it. A
//! call nobody waits for (the channel's subscription and catch-up, near-cache heartbeats,
//! acknowledgements, a miss's token read, a late delete) reports its error to the
//! [`ErrorSink`] instead: after a restart the first call to meet the dead connection is
//! often one of these, and the connection heals behind it, so an error nobody counted would
//! let a Redis restored from an old snapshot be read before the fallback replays what it
//! missed.

use std::sync::Arc;
use std::time::Duration;

use redis::{ErrorKind, RedisError};

use super::connection::{Lane, Node};
use super::{Inner, RedisStore};
use crate::store::StoreError;

/// Where the errors of calls nobody waits for go: a fallback store's circuit.
pub(crate) type ErrorSink = Arc<dyn Fn(&StoreError) + Send + Sync>;

impl RedisStore {
    /// Send the errors of background calls to `sink` (the fallback store's failure count).
    pub(crate) fn set_error_sink(&self, sink: ErrorSink) {
        *self.inner.errors.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }
}

impl Inner {
    /// A call nobody waits for failed: log it and count it like a request's error.
    pub(super) fn background_failed(&self, what: &str, error: &StoreError) {
        tracing::debug!(%error, "{what}");
        let sink = self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(sink) = sink {
            sink(error);
        }
    }
}

impl RedisStore {
    pub(super) async fn within<T>(
        deadline: Duration,
        call: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(StoreError::unavailable(
                "Redis did not answer within the deadline",
                format!("{deadline:?}"),
            )),
        }
    }

    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(deadline);
        Self::within(deadline, async {
            let mut connection = self.connection().connected().await?;
            cmd.query_async::<T>(&mut connection).await
        })
        .await
    }

    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(deadline);
        Self::within(deadline, async {
            let mut connection = self.connection().connected().await?;
            invocation.invoke_async::<T>(&mut connection).await
        })
        .await
    }

    pub(super) async fn query_node<T: redis::FromRedisValue>(
        &self,
        node: &Node,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(deadline);
        Self::within(deadline, async {
            let value = self.connection().query_node(node, cmd).await?;
            Ok(redis::from_redis_value(value.extract_error()?)?)
        })
        .await
    }

    /// On the invalidation connection a call may queue behind another invalidation's
    /// `WAIT` for replicas (see `durable.rs`): its deadline includes that wait.
    fn lane_deadline(&self, deadline: Duration) -> Duration {
        match self.lane {
            Lane::Data => deadline,
            Lane::Invalidations => deadline + self.inner.durability.timeout(),
        }
    }

    pub(super) async fn primaries(&self, deadline: Duration) -> Result<Vec<Node>, StoreError> {
        Self::within(deadline, self.connection().primaries()).await
    }
}

/// Connection trouble is "unavailable"; anything Redis answered with is not.
pub(super) fn classify(error: RedisError) -> StoreError {
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return StoreError::connection_lost("the Redis connection failed", error);
    }
    let auth = matches!(error.code(), Some("NOAUTH" | "WRONGPASS"));
    // A cluster that lost a primary answers CLUSTERDOWN until it heals; a Redis running a
    // long script answers BUSY, one loading its data LOADING, a user lacking a command
    // NOPERM: outages too (the circuit opens, nothing is deleted).
    let down = matches!(
        error.code(),
        Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN" | "BUSY" | "LOADING" | "NOPERM")
    );
    if error.is_timeout() || auth || down || error.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::unavailable("Redis is unusable", error);
    }
    // Everything else is an answer: OOM, READONLY, a script error.
    StoreError::new("Redis refused the command", error)
}
