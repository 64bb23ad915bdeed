//! The invalidation channel: every invalidation a [`RedisStore`] makes is
//! published on the layout's channel (`tower-response-cache:invalidations`), and every
//! store listens there, so other processes ban their in-flight fetches and drop their
//! local entries.
//!
//! On a Redis Cluster the channel is a sharded one in the slot of `{tower-response-cache}`
//! (see `layout.rs`): the listener follows the slot to its primary, and the stream ends
//! when that connection drops or the slot moves. After a reconnect, messages may have been
//! missed: the listener reports [`StoreEvent::ChannelLost`], and the cache drops what it
//! keeps locally. The loss itself counts as a lost connection the moment the subscription
//! ends (a fallback store opens its circuit): when Redis restarts, the channel is often
//! the first to know, and no request may be running to find out.
//!
//! The same connection subscribes to this process's own channel: its near-cache
//! heartbeats come back there, and other processes acknowledge its invalidations there
//! (`ack.rs`). The near cache is cleared and its lease dropped on every (re)subscription
//! before any message is read, each invalidation is applied to it (and then acknowledged)
//! before the next message is read, and the lease is dropped when the connection ends.
//!
//! [`Channel`] owns the channel's state: where it subscribes, the names of the two
//! channels, this process's origin (which tells its own messages apart) and the listener
//! the handle or the fallback store registered. Reading a message (parse, own or not,
//! bounded) is a pure step of its own ([`Channel::read`]), tested here without a Redis;
//! the listening task composes it with the near cache, the tokens and the calls.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;

use super::ack::ack_payload;
use super::connection::Subscriber;
use super::layout::Layout;
use super::{Inner, RedisStore};
use crate::store::{Invalidation, InvalidationListener, StoreError, StoreEvent};

/// Longest namespace a message may name (longer ones are not ours: ignored; a handle's
/// namespace is never longer).
use crate::store::MAX_NAMESPACE;

/// What goes over the channel (JSON). Anyone who can `PUBLISH` can send one: a message
/// that does not parse is ignored and logged, and the generation it claims is never taken
/// as is (see `RedisStore::heard`).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(crate) struct Message {
    /// Which process sent it: a process ignores its own.
    pub(crate) origin: u64,
    /// The generation the invalidation drew.
    pub(crate) generation: u64,
    pub(crate) namespace: String,
    pub(crate) invalidation: Invalidation,
    /// The sender's sequence number for acknowledgements (`ack.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ack: Option<u64>,
}

/// The invalidation channel of one store: where it listens, who it is, whom it tells.
pub(crate) struct Channel {
    /// Where the channel is subscribed.
    subscriber: Subscriber,
    /// Names the channels (plain or sharded pub/sub).
    layout: Layout,
    /// Tells published invalidations from this process apart from others'.
    origin: u64,
    /// Told of other processes' invalidations and of a lost channel.
    listener: Mutex<Option<InvalidationListener>>,
}

/// What a message on the invalidation channel is to this process.
#[derive(Debug)]
pub(crate) enum Heard {
    /// This process's own: applied before it was published.
    Own,
    /// Not readable as an invalidation (it may have been one): why.
    Unreadable(&'static str),
    /// Another process's invalidation.
    Invalidation(Message),
}

impl Channel {
    pub(crate) fn new(subscriber: Subscriber, layout: Layout, origin: u64) -> Channel {
        Channel {
            subscriber,
            layout,
            origin,
            listener: Mutex::new(None),
        }
    }

    /// This process's name on the channel.
    pub(crate) fn origin(&self) -> u64 {
        self.origin
    }

    /// This process's own channel (heartbeats, acknowledgements).
    pub(crate) fn own(&self) -> String {
        self.layout.process_channel(self.origin)
    }

    /// Register what to call with other processes' invalidations.
    pub(crate) fn set_listener(&self, listener: InvalidationListener) {
        *self.listener.lock().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    /// Tell the listener, if any (outside the lock: it may call back into the store).
    pub(crate) fn notify(&self, event: &StoreEvent) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(listener) = listener {
            listener(event);
        }
    }

    /// Read a message heard on the invalidation channel.
    pub(crate) fn read(&self, payload: &[u8]) -> Heard {
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            return Heard::Unreadable("malformed");
        };
        if message.origin == self.origin {
            return Heard::Own;
        }
        if message.namespace.len() > MAX_NAMESPACE {
            return Heard::Unreadable("oversized namespace");
        }
        Heard::Invalidation(message)
    }

    /// The `PUBLISH` of this process's invalidation in `namespace`, at `generation`,
    /// acknowledged under `ack`.
    pub(crate) fn publish(
        &self,
        namespace: &str,
        generation: u64,
        invalidation: Invalidation,
        ack: u64,
    ) -> redis::Cmd {
        let message = Message {
            origin: self.origin,
            generation,
            namespace: namespace.to_owned(),
            invalidation,
            ack: Some(ack),
        };
        let payload = serde_json::to_string(&message).expect("message serialises");
        redis::cmd(self.layout.publish_command())
            .arg(self.layout.channel())
            .arg(payload)
            .clone()
    }

    /// The `PUBLISH` telling process `origin` that its invalidation `seq` applied here.
    pub(crate) fn acknowledgement(&self, origin: u64, seq: u64) -> redis::Cmd {
        redis::cmd(self.layout.publish_command())
            .arg(self.layout.process_channel(origin))
            .arg(ack_payload(self.origin, seq))
            .clone()
    }
}

/// Listen until the store is dropped, resubscribing with a short backoff.
pub(crate) async fn listen(store: Weak<Inner>) {
    let mut connected_before = false;
    let mut failing = false;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let subscriber = inner.channel.subscriber.clone();
        let own = inner.channel.own();
        let channels = [inner.channel.layout.channel().to_owned(), own.clone()];
        drop(inner);
        let subscribed =
            tokio::time::timeout(Duration::from_secs(2), subscriber.subscribe(&channels)).await;
        let mut messages = match subscribed {
            Ok(Ok(messages)) => messages,
            failed => {
                if !failing {
                    let error = match failed {
                        Ok(Err(error)) => super::call::classify(error),
                        _ => StoreError::unavailable(
                            "subscribing to the invalidation channel timed out",
                            "2 s",
                        ),
                    };
                    tracing::warn!(%error, "could not subscribe to the invalidation channel; retrying");
                    // The first failure of a streak counts (the loss before it already did).
                    if let Some(inner) = store.upgrade() {
                        inner.calls.background_failed("could not subscribe", &error);
                    }
                    failing = true;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        failing = false;
        // Whatever was missed before this subscription is forgotten; no near-cache hit
        // until a heartbeat comes back on it.
        if let Some(near) = store.upgrade().as_ref().and_then(|i| i.near.as_ref()) {
            near.reset();
        }
        // Catch up with invalidations made before we listened, so our writes are not
        // refused for carrying an old generation.
        if let Some(inner) = store.upgrade() {
            RedisStore::for_tasks(inner).catch_up_generation().await;
        }
        if connected_before {
            if let Some(inner) = store.upgrade() {
                tracing::warn!("invalidation channel was lost and is back: dropping local entries");
                inner.channel.notify(&StoreEvent::ChannelLost);
            }
        }
        connected_before = true;
        // With a near cache, this process's heartbeats come back every `lease / 4`: a
        // subscription that stays silent much longer is taken for dead (a half-open
        // connection never ends on its own) and replaced.
        let silence = store.upgrade().and_then(|inner| {
            let lease = inner.near.as_ref()?.lease.duration();
            Some((lease * 4).max(Duration::from_secs(1)))
        });
        loop {
            let message = match silence {
                None => messages.next().await,
                Some(limit) => match tokio::time::timeout(limit, messages.next()).await {
                    Ok(message) => message,
                    Err(_) => {
                        tracing::warn!("no heartbeat came back on the invalidation channel for {limit:?}: subscribing again");
                        None
                    }
                },
            };
            let Some(message) = message else { break };
            let Some(inner) = store.upgrade() else { return };
            let payload = message.get_payload_bytes();
            if message.get_channel_name() == own {
                heard_own(&inner, payload);
            } else {
                heard_invalidation(inner, payload);
            }
        }
        let Some(inner) = store.upgrade() else { return };
        if let Some(near) = &inner.near {
            near.lease.drop_lease();
        }
        tracing::warn!("invalidation channel closed; reconnecting");
        // Redis may be restarting: count it now, before any other call meets the new server
        // (and its connection heals behind that call).
        inner.calls.background_failed(
            "the invalidation channel was lost",
            &StoreError::connection_lost(
                "the invalidation channel was lost",
                "its subscription ended",
            ),
        );
    }
}

/// A message on this process's channel: an acknowledgement, or a heartbeat.
fn heard_own(inner: &Inner, payload: &[u8]) {
    if inner.leases.acks.heard(payload) {
        return;
    }
    if let Some(near) = &inner.near {
        near.heard_heartbeat(payload);
    }
}

/// A message on the invalidation channel.
fn heard_invalidation(inner: Arc<Inner>, payload: &[u8]) {
    let message = match inner.channel.read(payload) {
        Heard::Own => return,
        Heard::Unreadable(why) => {
            // What cannot be read may have been an invalidation: the near cache forgets
            // all it holds rather than risk serving what it covered.
            tracing::warn!("ignoring a message on the invalidation channel: {why}");
            if let Some(near) = &inner.near {
                near.forget_all();
            }
            return;
        }
        Heard::Invalidation(message) => message,
    };
    let store = RedisStore::for_tasks(inner);
    // The generation is a claim, not a fact: see `RedisStore::heard`.
    store.heard(message.generation);
    let (origin, ack) = (message.origin, message.ack);
    if let Some(near) = &store.inner.near {
        near.apply(&message.namespace, &message.invalidation);
    }
    // The handle forgets the fetches in flight before it, and the fallback drops its local
    // entries, before the sender can hear that this process is done.
    store.inner.channel.notify(&StoreEvent::Remote {
        namespace: message.namespace,
        invalidation: message.invalidation,
        generation: message.generation,
    });
    if let (Some(_), Some(seq)) = (&store.inner.near, ack) {
        // Applied everywhere in this process: the sender may stop waiting for its lease.
        tokio::spawn(async move { store.acknowledge(origin, seq).await });
    }
}

impl RedisStore {
    /// Tell process `origin` that its invalidation `seq` was applied here.
    async fn acknowledge(&self, origin: u64, seq: u64) {
        let cmd = self.inner.channel.acknowledgement(origin, seq);
        if let Err(error) = self.query::<i64>(cmd, self.inner.calls.deadline).await {
            (self.inner)
                .calls
                .background_failed("could not acknowledge an invalidation", &error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(origin: u64) -> Channel {
        let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        Channel::new(Subscriber::Plain(client), Layout::Single, origin)
    }

    /// The payload of `cmd`, a `PUBLISH channel payload`.
    fn payload(cmd: &redis::Cmd) -> Vec<u8> {
        match cmd.args_iter().nth(2) {
            Some(redis::Arg::Simple(bytes)) => bytes.to_vec(),
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn another_process_reads_what_this_one_publishes_and_this_one_skips_it() {
        let (sender, receiver) = (channel(1), channel(2));
        let cmd = sender.publish("portal", 42, Invalidation::Tag("company:ABC".into()), 7);
        let sent = payload(&cmd);
        match receiver.read(&sent) {
            Heard::Invalidation(message) => {
                assert_eq!(message.origin, 1);
                assert_eq!(message.generation, 42);
                assert_eq!(message.namespace, "portal");
                assert_eq!(
                    message.invalidation,
                    Invalidation::Tag("company:ABC".into())
                );
                assert_eq!(message.ack, Some(7));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(sender.read(&sent), Heard::Own));
    }

    #[test]
    fn junk_and_oversized_namespaces_are_unreadable_not_ignored() {
        let receiver = channel(2);
        assert!(matches!(
            receiver.read(b"{not json"),
            Heard::Unreadable("malformed")
        ));
        let long = channel(1).publish(&"n".repeat(MAX_NAMESPACE + 1), 1, Invalidation::All, 1);
        assert!(matches!(
            receiver.read(&payload(&long)),
            Heard::Unreadable("oversized namespace")
        ));
        // An earlier version's message, without an acknowledgement number, still reads.
        let old = br#"{"origin":1,"generation":3,"namespace":"ns","invalidation":{"kind":"all"}}"#;
        assert!(matches!(
            receiver.read(old),
            Heard::Invalidation(Message { ack: None, .. })
        ));
    }

    #[test]
    fn the_listener_hears_every_event_once_set() {
        let channel = channel(1);
        // Nobody listens yet: nothing happens.
        channel.notify(&StoreEvent::ChannelLost);
        let heard = Arc::new(Mutex::new(Vec::new()));
        let log = heard.clone();
        channel.set_listener(Arc::new(move |event| {
            log.lock().unwrap().push(event.clone())
        }));
        channel.notify(&StoreEvent::ChannelLost);
        assert_eq!(*heard.lock().unwrap(), [StoreEvent::ChannelLost]);
    }

    #[test]
    fn acknowledgements_go_to_the_sender_s_own_channel() {
        let receiver = channel(2);
        let cmd = receiver.acknowledgement(1, 9);
        assert_eq!(payload(&cmd), ack_payload(2, 9).into_bytes());
        let target = match cmd.args_iter().nth(1) {
            Some(redis::Arg::Simple(bytes)) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => panic!("{other:?}"),
        };
        assert_eq!(target, channel(1).own());
        assert_ne!(channel(1).own(), channel(2).own());
    }
}
