//! The invalidation channel: every invalidation a [`RedisStore`](super::RedisStore) makes is
//! published on `tower-response-cache:invalidations`, and every store listens there, so
//! other processes ban their in-flight fetches and drop their local entries.
//!
//! Plain pub/sub reaches every node of a Redis Cluster (the cluster bus forwards it), so the
//! listener subscribes on one node and moves to the next seed when that one goes away.
//! After a reconnect, messages may have been missed: the listener reports
//! [`StoreEvent::ChannelLost`], and the cache drops what it keeps locally.
//!
//! With a near cache the same connection also subscribes to this process's heartbeat
//! channel (see `near.rs`): the near cache is cleared and its lease dropped on every
//! (re)subscription before any message is read, each invalidation is applied to it before
//! the next message is read, and the lease is dropped when the connection ends.

use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;

use super::{Inner, RedisStore};
use crate::store::{Invalidation, StoreEvent};

pub(crate) const CHANNEL: &str = "tower-response-cache:invalidations";

/// Longest namespace a message may name (longer ones are not ours: ignored).
const MAX_NAMESPACE: usize = 4096;

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
}

/// Listen until the store is dropped, reconnecting (to the next seed in a cluster) with a
/// short backoff.
pub(crate) async fn listen(store: Weak<Inner>) {
    let mut connected_before = false;
    let mut attempt = 0usize;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let client = inner.subscribers[attempt % inner.subscribers.len()].clone();
        drop(inner);
        attempt += 1;
        let heartbeats = store
            .upgrade()
            .and_then(|inner| inner.near.as_ref().map(|n| n.channel().to_owned()));
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            match &heartbeats {
                // One SUBSCRIBE: both channels on one connection, ordered by one server.
                Some(heartbeats) => pubsub.subscribe(&[CHANNEL, heartbeats.as_str()]).await?,
                None => pubsub.subscribe(CHANNEL).await?,
            }
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Whatever was missed before this subscription is forgotten; no near-cache hit
        // until a heartbeat comes back on it.
        if let Some(near) = store.upgrade().as_ref().and_then(|i| i.near.as_ref()) {
            near.reset();
        }
        // Catch up with invalidations made before we listened, so our writes are not
        // refused for carrying an old generation.
        if let Some(inner) = store.upgrade() {
            RedisStore { inner }.catch_up_generation().await;
        }
        if connected_before {
            if let Some(inner) = store.upgrade() {
                tracing::warn!("invalidation channel was lost and is back: dropping local entries");
                notify(&inner, &StoreEvent::ChannelLost);
            }
        }
        connected_before = true;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Some(inner) = store.upgrade() else { return };
            if let Some(near) = &inner.near {
                if heartbeats.as_deref() == Some(message.get_channel_name()) {
                    near.heard_heartbeat(message.get_payload_bytes());
                    continue;
                }
            }
            let Ok(message) = serde_json::from_slice::<Message>(message.get_payload_bytes()) else {
                tracing::warn!("ignoring a malformed message on the invalidation channel");
                continue;
            };
            if message.origin == inner.origin {
                continue;
            }
            if message.namespace.len() > MAX_NAMESPACE {
                tracing::warn!(
                    "ignoring a message with an oversized namespace on the invalidation channel"
                );
                continue;
            }
            // The generation is a claim, not a fact: see `RedisStore::heard`.
            RedisStore {
                inner: inner.clone(),
            }
            .heard(message.generation);
            if let Some(near) = &inner.near {
                near.apply(&message.namespace, &message.invalidation);
            }
            notify(
                &inner,
                &StoreEvent::Remote {
                    namespace: message.namespace,
                    invalidation: message.invalidation,
                },
            );
        }
        if let Some(near) = store.upgrade().as_ref().and_then(|i| i.near.as_ref()) {
            near.lease.drop_lease();
        }
        tracing::warn!("invalidation channel closed; reconnecting");
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
