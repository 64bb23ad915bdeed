//! Every Redis call of a [`RedisStore`](super::RedisStore): within a deadline, with Redis's
//! errors sorted into outages (which open a fallback store's circuit) and answers.
//!
//! [`Calls`] owns what every call needs and nothing else: the two connections (requests,
//! and invalidations, which may block on `WAIT`), the deadlines, the durability setting
//! that lengthens the invalidation lane's deadline, and the error sink. It is its own part
//! so that the rules of a call (a deadline always, errors classified one way, background
//! errors counted) live in one place and can be checked without the rest of the store.
//!
//! A call made on a request's behalf returns its error to the caller, which counts it. A
//! call nobody waits for (the channel's subscription and catch-up, near-cache heartbeats,
//! acknowledgements, a miss's token read, a late delete) reports its error to the
//! [`OutcomeSink`] instead: after a restart the first call to meet the dead connection is
//! often one of these, and the connection heals behind it, so an error nobody counted would
//! let a Redis restored from an old snapshot be read before the fallback replays what it
//! missed. A near cache's heartbeat reports its successes there too: the circuit opens on
//! failures *in a row*, and an idle process whose only calls are heartbeats would otherwise
//! gather a timeout now and then, over hours, until three opened it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::{ErrorKind, RedisError};

use super::connection::{Connection, Node};
use super::durable::Durability;
use super::lane::Lane;
use crate::store::{OutcomeSink, StoreError};

/// The connections, deadlines and error sink every Redis call goes through.
pub(crate) struct Calls {
    data: Connection,
    /// The connection invalidations are sent on (see `durable.rs`).
    invalidations: Connection,
    /// The connection of the store's own tasks (see [`Lane::Background`]).
    background: Connection,
    /// Whether an invalidation waits for replicas (its lane's calls may queue behind that).
    durability: Durability,
    /// Deadline of each call on the request path.
    pub(crate) deadline: Duration,
    /// Deadline of each step of an invalidation (one `SCAN` batch).
    pub(crate) scan_deadline: Duration,
    /// Told of every error of a call no caller hears of, and of heartbeats that answered.
    outcomes: Mutex<Option<OutcomeSink>>,
    /// Calls in a row that ran out of time, per lane (by [`Lane::index`]).
    silent: [AtomicU32; 3],
}

/// Calls in a row on one lane that run out of time before its connection is renewed
/// ([`Connection::renew`]): a Redis that is down or paused makes every call run out of
/// time too, and renewing each time would only churn connections.
const SILENT_CALLS_BEFORE_RENEWAL: u32 = 3;

impl Calls {
    pub(crate) fn new(
        [data, invalidations, background]: [Connection; 3],
        durability: Durability,
        deadline: Duration,
        scan_deadline: Duration,
    ) -> Calls {
        Calls {
            data,
            invalidations,
            background,
            durability,
            deadline,
            scan_deadline,
            outcomes: Mutex::new(None),
            silent: Default::default(),
        }
    }

    /// Whether and for how many replicas an invalidation waits.
    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    /// The connection of `lane`.
    pub(crate) fn connection(&self, lane: Lane) -> &Connection {
        match lane {
            Lane::Data => &self.data,
            Lane::Invalidations => &self.invalidations,
            Lane::Background => &self.background,
        }
    }

    /// Send the outcomes of background calls to `sink` (the fallback store's failure count).
    pub(crate) fn set_outcome_sink(&self, sink: OutcomeSink) {
        *self.outcomes.lock().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// A call nobody waits for failed: log it and count it like a request's error.
    pub(crate) fn background_failed(&self, what: &str, error: &StoreError) {
        tracing::debug!(%error, "{what}");
        self.report(Err(error));
    }

    /// A call nobody waits for answered: like a request's success, it ends a run of
    /// failures.
    pub(crate) fn background_answered(&self) {
        self.report(Ok(()));
    }

    fn report(&self, outcome: Result<(), &StoreError>) {
        let sink = self
            .outcomes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(sink) = sink {
            sink(outcome);
        }
    }

    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(lane, deadline);
        self.on_lane(lane, deadline, async {
            let mut connection = self.connection(lane).connected().await?;
            cmd.query_async::<T>(&mut connection).await
        })
        .await?
        .map_err(classify)
    }

    /// A call whose answers the caller sorts itself (a read tells a foreign value from an
    /// outage): only running out of time is an error here; Redis's answer comes back as it
    /// is.
    pub(crate) async fn answer<T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<Result<T, RedisError>, StoreError> {
        let deadline = self.lane_deadline(lane, deadline);
        let call = async {
            let mut connection = self.connection(lane).connected().await?;
            cmd.query_async::<T>(&mut connection).await
        };
        self.on_lane(lane, deadline, call).await
    }

    pub(crate) async fn invoke<T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        invocation: redis::ScriptInvocation<'_>,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(lane, deadline);
        self.on_lane(lane, deadline, async {
            let mut connection = self.connection(lane).connected().await?;
            invocation.invoke_async::<T>(&mut connection).await
        })
        .await?
        .map_err(classify)
    }

    pub(crate) async fn query_node<T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        node: &Node,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let deadline = self.lane_deadline(lane, deadline);
        self.on_lane(lane, deadline, async {
            let value = self.connection(lane).query_node(node, cmd).await?;
            Ok(redis::from_redis_value(value.extract_error()?)?)
        })
        .await?
        .map_err(classify)
    }

    /// On the invalidation connection a call may queue behind another invalidation's
    /// `WAIT` for replicas (see `durable.rs`): its deadline includes that wait.
    pub(crate) fn lane_deadline(&self, lane: Lane, deadline: Duration) -> Duration {
        match lane {
            Lane::Data | Lane::Background => deadline,
            Lane::Invalidations => deadline + self.durability.timeout(),
        }
    }

    pub(crate) async fn primaries(
        &self,
        lane: Lane,
        deadline: Duration,
    ) -> Result<Vec<Node>, StoreError> {
        self.on_lane(lane, deadline, self.connection(lane).primaries())
            .await?
            .map_err(classify)
    }

    /// `call` on `lane`, cut off at `deadline` (an outage). When calls in a row keep
    /// running out of time, the lane's connection is renewed: it may be one that answers
    /// nothing, which its manager never replaces on its own (see [`Connection::renew`]).
    async fn on_lane<T>(
        &self,
        lane: Lane,
        deadline: Duration,
        call: impl std::future::Future<Output = T>,
    ) -> Result<T, StoreError> {
        let silent = &self.silent[lane.index()];
        match tokio::time::timeout(deadline, call).await {
            Ok(answer) => {
                silent.store(0, Ordering::Relaxed);
                Ok(answer)
            }
            Err(_) => {
                if silent.fetch_add(1, Ordering::Relaxed) + 1 >= SILENT_CALLS_BEFORE_RENEWAL {
                    silent.store(0, Ordering::Relaxed);
                    tracing::warn!(
                        ?lane,
                        "Redis calls keep running out of time on one connection: opening another"
                    );
                    self.connection(lane).renew();
                }
                Err(out_of_time(deadline))
            }
        }
    }
}

/// A call that ran out of `deadline`: an outage.
fn out_of_time(deadline: Duration) -> StoreError {
    StoreError::unavailable(
        "Redis did not answer within the deadline",
        format!("{deadline:?}"),
    )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::connection::Timeouts;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const TIMEOUTS: Timeouts = Timeouts {
        response: Duration::from_secs(5),
        connect: Duration::from_secs(5),
    };

    fn calls_to(url: &str, durability: Durability) -> Calls {
        let connection = || Connection::single(url, &TIMEOUTS).unwrap();
        Calls::new(
            [connection(), connection(), connection()],
            durability,
            Duration::from_millis(50),
            Duration::from_secs(2),
        )
    }

    #[tokio::test]
    async fn only_the_invalidation_lane_waits_for_replicas_on_top_of_its_deadline() {
        let durability = Durability::Required {
            replicas: 1,
            timeout: Duration::from_millis(250),
        };
        let calls = calls_to("redis://127.0.0.1:1/", durability);
        let deadline = Duration::from_millis(50);
        assert_eq!(calls.lane_deadline(Lane::Data, deadline), deadline);
        assert_eq!(
            calls.lane_deadline(Lane::Invalidations, deadline),
            Duration::from_millis(300)
        );
        let off = calls_to("redis://127.0.0.1:1/", Durability::Off);
        assert_eq!(off.lane_deadline(Lane::Invalidations, deadline), deadline);
    }

    #[tokio::test]
    async fn a_redis_that_accepts_but_never_answers_is_an_outage_at_the_deadline() {
        // A listener that takes connections and never says a word.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let calls = calls_to(&format!("redis://127.0.0.1:{port}/"), Durability::Off);
        let started = std::time::Instant::now();
        let error = calls
            .query::<String>(Lane::Data, redis::cmd("PING"), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(error.is_unavailable(), "{error}");
        assert!(error.to_string().contains("deadline"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn background_outcomes_reach_the_sink_once_it_is_set() {
        let calls = calls_to("redis://127.0.0.1:1/", Durability::Off);
        let error = StoreError::unavailable("down", "test");
        // No sink yet: logged only.
        calls.background_failed("a heartbeat failed", &error);
        let failed = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let (f, a) = (failed.clone(), answered.clone());
        calls.set_outcome_sink(Arc::new(move |outcome: Result<(), &StoreError>| {
            match outcome {
                Ok(()) => a.fetch_add(1, Ordering::SeqCst),
                Err(error) => {
                    assert!(error.is_unavailable());
                    f.fetch_add(1, Ordering::SeqCst)
                }
            };
        }));
        calls.background_failed("a heartbeat failed", &error);
        calls.background_failed("an acknowledgement failed", &error);
        calls.background_answered();
        assert_eq!(failed.load(Ordering::SeqCst), 2);
        assert_eq!(answered.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn connection_trouble_is_an_outage_and_answers_are_not() {
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let lost = classify(refused);
        assert!(lost.is_connection_lost() && lost.is_unavailable());
        let auth = classify(RedisError::from((
            ErrorKind::AuthenticationFailed,
            "the password was refused",
        )));
        assert!(
            auth.is_unavailable() && !auth.is_connection_lost(),
            "{auth}"
        );
        let answer = classify(RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "not what was asked for",
        )));
        assert!(!answer.is_unavailable(), "{answer}");
    }
}
