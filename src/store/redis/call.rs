//! Every Redis call of a [`RedisStore`]: within a deadline, with Redis's errors sorted
//! into outages (which open a fallback store's circuit) and answers.

use std::time::Duration;

use redis::{ErrorKind, RedisError};

use super::connection::Node;
use super::RedisStore;
use crate::store::StoreError;

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
        Self::within(deadline, async {
            let mut connection = self.inner.connection.connected().await?;
            cmd.query_async::<T>(&mut connection).await
        })
        .await
    }

    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        Self::within(deadline, async {
            let mut connection = self.inner.connection.connected().await?;
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
        Self::within(deadline, async {
            let value = self.inner.connection.query_node(node, cmd).await?;
            Ok(redis::from_redis_value(value.extract_error()?)?)
        })
        .await
    }

    pub(super) async fn primaries(&self, deadline: Duration) -> Result<Vec<Node>, StoreError> {
        Self::within(deadline, self.inner.connection.primaries()).await
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
