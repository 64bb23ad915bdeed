//! The connection a [`RedisStore`](super::RedisStore) talks through: one multiplexed,
//! self-healing connection to a single Redis, or a cluster connection that routes each
//! command to the primary owning its key's slot.
//!
//! Both are used through [`redis::aio::ConnectionLike`], so the store's commands and
//! scripts are written once. What differs is what must reach every primary of a cluster
//! (`SCAN`, `INFO`): [`Connection::primaries`] lists them and [`Node`] addresses one.
//!
//! A [`Subscriber`] opens the separate connection the invalidation channel is read on:
//! plain pub/sub on one Redis, sharded pub/sub (RESP3 pushes) on a cluster.
//!
//! Behind Redis Sentinel the one Redis is whichever primary the sentinels name now
//! (`sentinel.rs`): calls go to it as to one Redis, and the subscription ends when it moves.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Msg, PushKind, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::OnceCell;

use super::lane::Lane;
use super::layout::Layout;
use super::sentinel::SentinelLink;

/// Where one command of a fan-out goes: the single Redis, or one primary of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    /// The only server there is.
    Only,
    /// The cluster primary at this address.
    Primary { host: String, port: u16 },
}

/// A connection to one Redis or to a cluster. Cheap to clone.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(Arc<SingleLink>),
    Cluster(Arc<ClusterLink>),
    /// One lane of the connections to the primary the sentinels name.
    Sentinel(Arc<SentinelLink>, Lane),
}

/// One Redis, through a connection manager that [`Connection::renew`] replaces.
pub(crate) struct SingleLink {
    client: redis::Client,
    config: ConnectionManagerConfig,
    manager: Mutex<ConnectionManager>,
}

/// A cluster client connected on first use (connecting needs the cluster's slot map,
/// which a builder that must not fail cannot wait for).
pub(crate) struct ClusterLink {
    client: ClusterClient,
    /// Replaced by an empty cell when the connection is renewed.
    connection: Mutex<Arc<OnceCell<ClusterConnection>>>,
}

/// A connected handle, for one command.
pub(crate) enum Connected {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// Its failures make the link ask the sentinels again.
    Sentinel(ConnectionManager, Arc<SentinelLink>),
}

/// Timeouts shared by both kinds.
pub(crate) struct Timeouts {
    pub(crate) response: Duration,
    pub(crate) connect: Duration,
}

impl Connection {
    /// A lazily connected link to the Redis at `url`.
    pub(crate) fn single(url: &str, timeouts: &Timeouts) -> Result<Connection, RedisError> {
        let client = redis::Client::open(url)?;
        let config = manager_config(timeouts);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Connection::Single(Arc::new(SingleLink {
            client,
            config,
            manager: Mutex::new(manager),
        })))
    }

    /// Open a new connection for the next calls, connected on first use: the current one
    /// answers nothing. A connection's driver runs on the runtime of the call that opened
    /// it, and stops when that runtime stops being polled (an application that called the
    /// store from a `block_on` of its own); a peer that vanished without a reset answers
    /// nothing too. The connection manager reconnects only after an error it sees, and a
    /// call cut off at its deadline shows it none.
    pub(crate) fn renew(&self) {
        match self {
            Connection::Single(link) => {
                match ConnectionManager::new_lazy_with_config(
                    link.client.clone(),
                    link.config.clone(),
                ) {
                    Ok(manager) => *lock(&link.manager) = manager,
                    Err(error) => tracing::debug!(%error, "renewing the Redis connection failed"),
                }
            }
            Connection::Sentinel(link, lane) => link.renew(*lane),
            // The next call connects to the cluster again (its slot map and every node).
            Connection::Cluster(link) => *lock(&link.connection) = Arc::new(OnceCell::new()),
        }
    }

    /// A lazily connected link to the cluster that `seeds` (any of its nodes) belong to.
    pub(crate) fn cluster(seeds: &[String], timeouts: &Timeouts) -> Result<Connection, RedisError> {
        let client = ClusterClient::builder(seeds.iter().map(String::as_str))
            .retries(1)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .connection_timeout(timeouts.connect)
            .response_timeout(timeouts.response)
            .build()?;
        Ok(Connection::Cluster(Arc::new(ClusterLink {
            client,
            connection: Mutex::new(Arc::new(OnceCell::new())),
        })))
    }

    /// Which key layout this connection needs.
    pub(crate) fn layout(&self) -> Layout {
        match self {
            Connection::Single(_) | Connection::Sentinel(..) => Layout::Single,
            Connection::Cluster(_) => Layout::Cluster,
        }
    }

    /// A handle to send one command on (connecting a cluster link the first time; a failed
    /// connect is retried by the next call).
    pub(crate) async fn connected(&self) -> RedisResult<Connected> {
        match self {
            Connection::Single(link) => Ok(Connected::Single(lock(&link.manager).clone())),
            Connection::Cluster(link) => {
                let cell = lock(&link.connection).clone();
                let connection = cell
                    .get_or_try_init(|| link.client.get_async_connection())
                    .await?;
                Ok(Connected::Cluster(connection.clone()))
            }
            Connection::Sentinel(link, lane) => {
                let manager = link.connection(*lane).await?;
                Ok(Connected::Sentinel(manager, link.clone()))
            }
        }
    }

    /// Send `cmd` to one node: what a command that is not about one key (`SCAN`, `INFO`)
    /// needs in a cluster.
    pub(crate) async fn query_node(&self, node: &Node, cmd: Cmd) -> RedisResult<Value> {
        match (self.connected().await?, node) {
            (mut one @ (Connected::Single(_) | Connected::Sentinel(..)), _) => {
                one.req_packed_command(&cmd).await
            }
            (Connected::Cluster(mut cluster), Node::Primary { host, port }) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                cluster.route_command(cmd, routing).await
            }
            (Connected::Cluster(mut cluster), Node::Only) => cluster.req_packed_command(&cmd).await,
        }
    }

    /// Every primary (the one server of a single Redis), from `CLUSTER NODES`.
    pub(crate) async fn primaries(&self) -> RedisResult<Vec<Node>> {
        let mut connected = match self.connected().await? {
            Connected::Single(_) | Connected::Sentinel(..) => return Ok(vec![Node::Only]),
            cluster => cluster,
        };
        let text: String = redis::from_redis_value(
            connected
                .req_packed_command(&redis::cmd("CLUSTER").arg("NODES").clone())
                .await?,
        )?;
        let primaries = parse_primaries(&text);
        if primaries.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "CLUSTER NODES listed no healthy primary",
            )));
        }
        Ok(primaries)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection manager's settings: the manager's own retries would hold a request for
/// seconds, so the deadline and the fallback circuit handle failures instead.
pub(crate) fn manager_config(timeouts: &Timeouts) -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(100))
        .set_response_timeout(Some(timeouts.response))
        .set_connection_timeout(Some(timeouts.connect))
}

/// The healthy primaries in `CLUSTER NODES` output: lines of
/// `id host:port@bus[,hostname] flags primary-id ping pong epoch state slots…`.
fn parse_primaries(text: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (address, flags) = (fields.get(1)?, fields.get(2)?);
            let flags: Vec<&str> = flags.split(',').collect();
            let healthy = flags.contains(&"master") && !flags.iter().any(|f| f.starts_with("fail"));
            // A primary without slots holds no keys.
            if !healthy || fields.len() < 9 {
                return None;
            }
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Node::Primary {
                host: host.to_owned(),
                port: port.parse().ok()?,
            })
        })
        .collect();
    nodes.sort_by_key(|n| format!("{n:?}"));
    nodes
}

/// Where the invalidation channel is subscribed.
#[derive(Clone)]
pub(crate) enum Subscriber {
    /// `SUBSCRIBE` on the one Redis.
    Plain(redis::Client),
    /// `SSUBSCRIBE` on the primary owning the channels' slot, found through the seeds.
    Sharded {
        seeds: Vec<String>,
        connect: Duration,
    },
    /// `SUBSCRIBE` on the primary the sentinels name, until it moves.
    Sentinel(Arc<SentinelLink>),
}

impl Subscriber {
    /// Subscribe to `channels` (one slot, on a cluster) on a new connection. The stream
    /// ends when the connection is lost: then messages may have been missed, and the
    /// listener starts over with a new subscription.
    pub(crate) async fn subscribe(
        &self,
        channels: &[String],
    ) -> RedisResult<BoxStream<'static, Msg>> {
        match self {
            Subscriber::Plain(client) => {
                let mut pubsub = client.get_async_pubsub().await?;
                // One SUBSCRIBE: every channel on one connection, ordered by one server.
                pubsub.subscribe(channels).await?;
                Ok(pubsub.into_on_message().boxed())
            }
            Subscriber::Sentinel(link) => {
                // Watching for a move from before the primary is asked for: a move while
                // subscribing ends the stream at once.
                let moved = link.moved();
                let mut pubsub = link.client().await?.get_async_pubsub().await?;
                pubsub.subscribe(channels).await?;
                Ok(pubsub.into_on_message().take_until(moved).boxed())
            }
            Subscriber::Sharded { seeds, connect } => {
                let (pushes, received) = tokio::sync::mpsc::unbounded_channel();
                let client = ClusterClient::builder(seeds.iter().map(String::as_str))
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(pushes)
                    .retries(1)
                    .connection_timeout(*connect)
                    .response_timeout(*connect)
                    .build()?;
                let mut connection = client.get_async_connection().await?;
                connection.ssubscribe(channels).await?;
                // The connection lives as long as the stream. A dropped connection, or the
                // slot moving away (the server's `sunsubscribe`), ends the stream: the
                // client would resubscribe on its own, silently past what was missed.
                let stream = futures_util::stream::unfold(
                    (received, connection),
                    |(mut received, connection)| async move {
                        loop {
                            let push = received.recv().await?;
                            match push.kind {
                                PushKind::SMessage => {
                                    if let Some(message) = Msg::from_push_info(push) {
                                        return Some((message, (received, connection)));
                                    }
                                }
                                PushKind::Disconnection | PushKind::SUnsubscribe => return None,
                                _ => {}
                            }
                        }
                    },
                );
                Ok(stream.boxed())
            }
        }
    }
}

impl ConnectionLike for Connected {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connected::Single(c) => c.req_packed_command(cmd),
            Connected::Cluster(c) => c.req_packed_command(cmd),
            Connected::Sentinel(c, link) => Box::pin(async move {
                let reply = c.req_packed_command(cmd).await;
                if let Err(error) = &reply {
                    link.saw(error);
                }
                reply
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connected::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connected::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connected::Sentinel(c, link) => Box::pin(async move {
                let reply = c.req_packed_commands(pipeline, offset, count).await;
                if let Err(error) = &reply {
                    link.saw(error);
                }
                reply
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connected::Single(c) | Connected::Sentinel(c, _) => c.get_db(),
            Connected::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_output_gives_the_healthy_primaries() {
        let text = "\
4cb9 127.0.0.1:21002@22002 master - 0 1795658106710 2 connected 5461-10922
aff5 127.0.0.1:21001@22001,host-a myself,master - 0 1795658106000 1 connected 0-5460
6ede 127.0.0.1:21003@22003 master,fail - 0 1795658107714 3 connected 10923-16383
77aa 127.0.0.1:21004@22004 slave aff5 0 1795658107714 1 connected
88bb 127.0.0.1:21005@22005 master - 0 1795658107714 4 connected
";
        let primaries = parse_primaries(text);
        assert_eq!(
            primaries,
            vec![
                Node::Primary {
                    host: "127.0.0.1".into(),
                    port: 21001
                },
                Node::Primary {
                    host: "127.0.0.1".into(),
                    port: 21002
                },
            ]
        );
    }
}
