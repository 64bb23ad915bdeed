//! The invalidation channel: every invalidation a [`RedisStore`](super::RedisStore) makes is
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

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;

use super::ack::ack_payload;
use super::{Inner, RedisStore};
use crate::store::{Invalidation, StoreError, StoreEvent};

/// Longest namespace a message may name (longer ones are not ours: ignored; a handle's
/// namespace is never longer).
use crate::handle::MAX_NAMESPACE;

/// What goes over the channel (JSON). Anyone who can `PUBLISH` can send one: a message
/// that does not parse is ignored and logged, and the generation it claims is never taken
/// as is (see `RedisStore::heard`).
#[derive(serde::Serialize, serde::Deserialize)]
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

/// Listen until the store is dropped, resubscribing with a short backoff.
pub(crate) async fn listen(store: Weak<Inner>) {
    let mut connected_before = false;
    let mut failing = false;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let subscriber = inner.subscriber.clone();
        let own = inner.layout.process_channel(inner.origin);
        let channels = [inner.layout.channel().to_owned(), own.clone()];
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
            RedisStore::from_inner(inner).catch_up_generation().await;
        }
        if connected_before {
            if let Some(inner) = store.upgrade() {
                tracing::warn!("invalidation channel was lost and is back: dropping local entries");
                notify(&inner, &StoreEvent::ChannelLost);
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
    if inner.acks.heard(payload) {
        return;
    }
    if let Some(near) = &inner.near {
        near.heard_heartbeat(payload);
    }
}

/// A message on the invalidation channel.
fn heard_invalidation(inner: std::sync::Arc<Inner>, payload: &[u8]) {
    // What cannot be read may have been an invalidation: the near cache forgets all it
    // holds rather than risk serving what it covered.
    let unreadable = |why: &str| {
        tracing::warn!("ignoring a message on the invalidation channel: {why}");
        if let Some(near) = &inner.near {
            near.forget_all();
        }
    };
    let Ok(message) = serde_json::from_slice::<Message>(payload) else {
        return unreadable("malformed");
    };
    if message.origin == inner.origin {
        return;
    }
    if message.namespace.len() > MAX_NAMESPACE {
        return unreadable("oversized namespace");
    }
    let store = RedisStore::from_inner(inner);
    // The generation is a claim, not a fact: see `RedisStore::heard`.
    store.heard(message.generation);
    let (origin, ack) = (message.origin, message.ack);
    if let Some(near) = &store.inner.near {
        near.apply(&message.namespace, &message.invalidation);
    }
    // The handle forgets the fetches in flight before it, and the fallback drops its local
    // entries, before the sender can hear that this process is done.
    notify(
        &store.inner,
        &StoreEvent::Remote {
            namespace: message.namespace,
            invalidation: message.invalidation,
            generation: message.generation,
        },
    );
    if let (Some(_), Some(seq)) = (&store.inner.near, ack) {
        // Applied everywhere in this process: the sender may stop waiting for its lease.
        tokio::spawn(async move { store.acknowledge(origin, seq).await });
    }
}

impl RedisStore {
    /// Tell process `origin` that its invalidation `seq` was applied here.
    async fn acknowledge(&self, origin: u64, seq: u64) {
        let layout = self.inner.layout;
        let cmd = redis::cmd(layout.publish_command())
            .arg(layout.process_channel(origin))
            .arg(ack_payload(self.inner.origin, seq))
            .clone();
        if let Err(error) = self.query::<i64>(cmd, self.inner.calls.deadline).await {
            (self.inner)
                .calls
                .background_failed("could not acknowledge an invalidation", &error);
        }
    }
}

pub(crate) fn notify(inner: &Inner, event: &StoreEvent) {
    let listener = inner
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(listener) = listener {
        listener(event);
    }
}
