//! Redis Sentinel: the primary of a monitored set is found through the sentinels, and
//! found again when it moves.
//!
//! [`SentinelLink`] asks the sentinels for the primary (`redis::sentinel`, which reads
//! `SENTINEL MASTERS` and checks the answer with `ROLE` on the primary itself) and keeps
//! two self-healing connections to it: one for requests, one for invalidations (whose
//! `WAIT` must not hold up a request, see `durable.rs`). It asks again
//!
//! - when a call on the primary fails in a way a failover explains (refused, reset,
//!   dropped, timed out, or `READONLY`: a demoted primary answers writes with it), and
//! - when a sentinel announces `+switch-master` for the set (a task subscribes to one
//!   sentinel at a time, and asks again whenever that subscription starts, since it may
//!   have missed one meanwhile).
//!
//! A new address is a new data set: the promoted replica may lack the last writes made on
//! the old primary. So the call that finds the move fails as a lost connection, and the
//! link tells the store (which counts it like any lost connection: a fallback store opens
//! its circuit and reads nothing from the new primary before its probe has seen the new
//! `run_id` and replayed recent invalidations), and the invalidation channel's
//! subscription on the old primary ends (see [`SentinelLink::moved`]). From there the
//! rules for one Redis that restarted apply unchanged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{ErrorKind, RedisConnectionInfo, RedisError, RedisResult};
use tokio::sync::watch;

use super::lane::Lane;

/// What the store is told when the primary moved.
pub(crate) type MovedSink = Arc<dyn Fn(&str) + Send + Sync>;

/// The primary as last resolved.
struct Resolved {
    address: String,
    client: redis::Client,
    /// One connection per lane (by [`Lane::index`]).
    lanes: [ConnectionManager; 3],
}

impl Resolved {
    fn connection(&self, lane: Lane) -> ConnectionManager {
        self.lanes[lane.index()].clone()
    }
}

/// The sentinels of one monitored set and the connections to its current primary.
pub(crate) struct SentinelLink {
    sentinels: Vec<String>,
    master: String,
    node: SentinelNodeConnectionInfo,
    resolver: tokio::sync::Mutex<Sentinel>,
    primary: Mutex<Option<Resolved>>,
    /// Set when the primary may have moved: the next call asks the sentinels.
    doubt: AtomicBool,
    /// The address of the last primary found, resolved or not since.
    last: Mutex<Option<String>>,
    /// Counts moves: a subscription on the old primary ends when it changes.
    moves: watch::Sender<u64>,
    on_move: Mutex<Option<MovedSink>>,
    config: ConnectionManagerConfig,
    connect: Duration,
}

impl SentinelLink {
    /// A link to the primary `master` as the `sentinels` (`redis://host:port` URLs) name
    /// it; `password` and `db` are the primary's. Resolves on first use.
    pub(crate) fn new(
        sentinels: &[String],
        master: &str,
        password: Option<&str>,
        db: i64,
        config: ConnectionManagerConfig,
        connect: Duration,
    ) -> RedisResult<SentinelLink> {
        if sentinels.is_empty() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "Redis Sentinel needs at least one sentinel address",
            )));
        }
        let resolver = Sentinel::build(sentinels.to_vec())?;
        let mut info = RedisConnectionInfo::default().set_db(db);
        if let Some(password) = password {
            info = info.set_password(password);
        }
        Ok(SentinelLink {
            sentinels: sentinels.to_vec(),
            master: master.to_owned(),
            node: SentinelNodeConnectionInfo::default().set_redis_connection_info(info),
            resolver: tokio::sync::Mutex::new(resolver),
            primary: Mutex::new(None),
            doubt: AtomicBool::new(false),
            last: Mutex::new(None),
            moves: watch::channel(0).0,
            on_move: Mutex::new(None),
            config,
            connect,
        })
    }

    /// Tell `sink` (with the new address) whenever the primary moved.
    pub(crate) fn set_on_move(&self, sink: MovedSink) {
        *lock(&self.on_move) = Some(sink);
    }

    /// The connection of `lane` to the current primary, asking the sentinels first when
    /// none is known or it may have moved. The call that finds a move fails.
    pub(crate) async fn connection(&self, lane: Lane) -> RedisResult<ConnectionManager> {
        if let Some(connection) = self.current(lane) {
            return Ok(connection);
        }
        self.resolve().await?;
        // What was just resolved, even if a doubt was raised meanwhile (the next call
        // asks again).
        lock(&self.primary)
            .as_ref()
            .map(|p| p.connection(lane))
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "the Redis primary is unknown")))
    }

    /// A client for the current primary (what the invalidation channel subscribes with).
    pub(crate) async fn client(&self) -> RedisResult<redis::Client> {
        self.connection(Lane::Data).await?;
        lock(&self.primary)
            .as_ref()
            .map(|p| p.client.clone())
            .ok_or_else(|| RedisError::from((ErrorKind::Io, "the Redis primary is unknown")))
    }

    /// Resolves when the primary moves after this call (for the channel's subscription).
    pub(crate) fn moved(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut moves = self.moves.subscribe();
        async move {
            let _ = moves.changed().await;
        }
    }

    /// A call on the primary failed: when a failover could explain it, ask the sentinels
    /// before the next call.
    pub(crate) fn saw(&self, error: &RedisError) {
        let moved = error.is_io_error()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
            || error.is_timeout()
            || matches!(error.code(), Some("READONLY" | "MASTERDOWN"));
        if moved {
            self.doubt.store(true, Ordering::Release);
        }
    }

    /// Open a new connection on `lane` to the primary found last (see
    /// [`Connection::renew`](super::connection::Connection::renew)), and ask the sentinels
    /// before the next call: the primary may have moved.
    pub(crate) fn renew(&self, lane: Lane) {
        if let Some(primary) = lock(&self.primary).as_mut() {
            match ConnectionManager::new_lazy_with_config(
                primary.client.clone(),
                self.config.clone(),
            ) {
                Ok(manager) => primary.lanes[lane.index()] = manager,
                Err(error) => tracing::debug!(%error, "renewing the Redis connection failed"),
            }
        }
        self.doubt();
    }

    /// Ask the sentinels before the next call.
    pub(crate) fn doubt(&self) {
        self.doubt.store(true, Ordering::Release);
    }

    fn current(&self, lane: Lane) -> Option<ConnectionManager> {
        if self.doubt.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.primary).as_ref().map(|p| p.connection(lane))
    }

    /// Ask the sentinels where the primary is (one caller at a time; the others then find
    /// the answer). Fails when the primary moved.
    async fn resolve(&self) -> RedisResult<()> {
        let mut resolver = self.resolver.lock().await;
        if lock(&self.primary).is_some() && !self.doubt.load(Ordering::Acquire) {
            return Ok(());
        }
        // Cleared before asking: a doubt raised while the answer is on its way stays.
        self.doubt.store(false, Ordering::Release);
        let found = tokio::time::timeout(
            self.connect * 4,
            resolver.async_master_for(&self.master, Some(&self.node)),
        )
        .await;
        let client = match found {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => {
                self.doubt.store(true, Ordering::Release);
                // An outage whatever the sentinels said (none answered, the primary they
                // name is down or not one yet): the circuit's business, not bad data.
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "no sentinel named a reachable primary",
                    error.to_string(),
                )));
            }
            Err(_) => {
                self.doubt.store(true, Ordering::Release);
                return Err(RedisError::from((
                    ErrorKind::Io,
                    "the sentinels did not name the primary in time",
                )));
            }
        };
        let address = client.get_connection_info().addr().to_string();
        let same = lock(&self.primary)
            .as_ref()
            .is_some_and(|p| p.address == address);
        if same {
            return Ok(());
        }
        let lane = || ConnectionManager::new_lazy_with_config(client.clone(), self.config.clone());
        let lanes = [lane()?, lane()?, lane()?];
        let previous = lock(&self.last).replace(address.clone());
        *lock(&self.primary) = Some(Resolved {
            address: address.clone(),
            client,
            lanes,
        });
        match previous {
            Some(previous) if previous != address => {
                tracing::warn!(master = %self.master, from = %previous, to = %address, "the Redis primary moved");
                self.moves.send_modify(|n| *n += 1);
                let sink = lock(&self.on_move).clone();
                if let Some(sink) = sink {
                    sink(&address);
                }
                Err(RedisError::from((
                    ErrorKind::Io,
                    "the Redis primary moved",
                    format!("{previous} -> {address}"),
                )))
            }
            _ => Ok(()),
        }
    }
}

/// Follow `+switch-master` on the sentinels, one at a time, until the link is dropped:
/// each announcement for this set, and each (re)subscription, makes the next call ask.
pub(crate) async fn watch(link: std::sync::Weak<SentinelLink>) {
    let mut next = 0usize;
    loop {
        let Some(strong) = link.upgrade() else { return };
        let url = strong.sentinels[next % strong.sentinels.len()].clone();
        let (master, connect) = (strong.master.clone(), strong.connect);
        drop(strong);
        next += 1;
        let subscribed = tokio::time::timeout(connect * 4, async {
            let mut pubsub = redis::Client::open(url.as_str())?
                .get_async_pubsub()
                .await?;
            pubsub.subscribe("+switch-master").await?;
            Ok::<_, RedisError>(pubsub)
        })
        .await;
        let Ok(Ok(pubsub)) = subscribed else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // Whatever was announced while nobody listened: ask again.
        match link.upgrade() {
            Some(link) => link.doubt(),
            None => return,
        }
        let mut messages = pubsub.into_on_message();
        loop {
            // Woken now and then to notice a dropped link.
            let message = match tokio::time::timeout(Duration::from_secs(1), messages.next()).await
            {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(_) if link.strong_count() == 0 => return,
                Err(_) => continue,
            };
            let payload: String = message.get_payload().unwrap_or_default();
            // "<name> <old ip> <old port> <new ip> <new port>"
            if payload.split_whitespace().next() == Some(master.as_str()) {
                match link.upgrade() {
                    Some(link) => link.doubt(),
                    None => return,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
