//! Entries in Redis: how a response is laid out, encoded, read and written.
//!
//! [`Entries`] owns what a read or a write of an entry needs beyond a connection: the key
//! layout (one Redis or a cluster, see `layout.rs`), the write and touch scripts, the
//! decode memo (`memo.rs`), the `Vary` names last seen per variant (`variants.rs`) and the
//! size limit with its refusal count. They sit together because they change together: a
//! new field in the entry hash touches the layout, the codec, the scripts and the reads at
//! once, and nothing else in the store. The `RedisStore` methods here run the reads and
//! writes through the store's calls, fenced by its write token.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::Script;

use super::codec::encode_value;
use super::layout::{Layout, EPOCH};
use super::memo::DecodeMemo;
use super::near::Near;
use super::replies::ReplyBudget;
use super::tokens::{token_epoch, token_generation};
use super::variants::{
    self, index_field, names_text, sub_id, value_field, Index, NamesMemo, MAX_VARY_VARIANTS,
};
use super::{classify, RedisStore, MAX_TTL_MS, PUT_SCRIPT, SOFT_SCRIPT};
use crate::entry::{DecodeError, Entry};
use crate::store::{Source, StoreError, StoreKey, VariantRead, Variants};

/// Dead fields of the entry hash a write prunes (bounded work per write).
const PRUNE_PER_WRITE: usize = 8;

/// The layout, scripts and memories of reading and writing entries.
pub(crate) struct Entries {
    /// How keys are named on this kind of Redis.
    pub(crate) layout: Layout,
    /// Writes one `Vary` variant's value, fenced by the write token (see `scripts.rs`).
    pub(crate) put: Script,
    /// Moves a `Vary` variant to the front of its index (see `variants.rs`).
    pub(crate) touch: Script,
    /// Marks the values of an entry hash soft-invalidated, in batches (see `soft.rs`).
    pub(crate) soft: Script,
    /// Decodings of recent replies, reused when the same bytes come back.
    memo: DecodeMemo,
    /// The `Vary` names last seen per variant, so a read asks for the right value.
    pub(crate) vary_names: NamesMemo,
    /// The largest value written (see `RedisStoreBuilder::max_value_bytes`).
    max_value_bytes: usize,
    /// Writes refused for being larger than that.
    refused_large: AtomicU64,
    /// The bytes of replies held at once (see `replies.rs`).
    pub(crate) replies: ReplyBudget,
}

impl Entries {
    pub(crate) fn new(layout: Layout, max_value_bytes: usize, reply_budget: usize) -> Entries {
        Entries {
            layout,
            put: Script::new(PUT_SCRIPT),
            touch: Script::new(variants::TOUCH_SCRIPT),
            soft: Script::new(SOFT_SCRIPT),
            memo: DecodeMemo::new(),
            vary_names: NamesMemo::new(),
            max_value_bytes,
            refused_large: AtomicU64::new(0),
            replies: ReplyBudget::new(reply_budget, max_value_bytes),
        }
    }

    /// Whether a value of `len` bytes is written; one that is not is counted.
    pub(crate) fn admits(&self, len: usize) -> bool {
        if len > self.max_value_bytes {
            self.refused_large.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Writes refused for their size.
    pub(crate) fn refused_large(&self) -> u64 {
        self.refused_large.load(Ordering::Relaxed)
    }

    /// Decode one `Vary` variant's value, read from `field` of `entry_key` for `variant`
    /// (or reuse the decoding of the same bytes read there last). Takes the reply's
    /// buffer, so the entries can share it.
    pub(crate) fn decode(
        &self,
        entry_key: &str,
        field: &str,
        variant: u64,
        raw: Vec<u8>,
    ) -> Result<Variants, DecodeError> {
        let slot = variant ^ xxhash_rust::xxh3::xxh3_64(field.as_bytes());
        self.memo
            .decode(entry_key.as_bytes(), slot, bytes::Bytes::from(raw))
    }
}

/// How long Redis keeps `entry`: its retention, clamped to what `PEXPIRE` takes.
fn ttl_ms(entry: &Entry) -> u64 {
    entry
        .retention()
        .as_millis()
        .clamp(1, u128::from(MAX_TTL_MS)) as u64
}

impl RedisStore {
    /// One Redis call on the request path under the store's deadline; a `WRONGTYPE` (a
    /// foreign value under the entry key) removes it and reads as `Ok(None)`; other answers
    /// that are no outage read as `Ok(None)` and touch nothing.
    /// Room for a reply of `values` values is reserved first (see `replies.rs`): held
    /// until the reply has arrived, which the caller decodes right after without waiting
    /// on anything; a read that finds none in time reads as `Ok(None)`.
    async fn read_call<T: redis::FromRedisValue>(
        &self,
        entry_key: &str,
        cmd: redis::Cmd,
        values: usize,
    ) -> Result<Option<T>, StoreError> {
        let deadline = self.inner.calls.deadline;
        let Some(_room) = self.inner.entries.replies.reserve(values, deadline).await else {
            tracing::debug!(key = %entry_key, "no room for another reply: reading it as a miss");
            return Ok(None);
        };
        let reply = self
            .inner
            .calls
            .answer::<T>(self.lane, cmd, deadline)
            .await?;
        match reply {
            Ok(reply) => Ok(Some(reply)),
            Err(error) if error.code() == Some("WRONGTYPE") => {
                // Something that is not our hash sits under our key: remove it.
                tracing::warn!(key = %entry_key, %error, "unexpected value under a cache key; deleting it");
                self.delete_later(redis::cmd("UNLINK").arg(entry_key).clone());
                Ok(None)
            }
            Err(error) => {
                let error = classify(error);
                if error.is_unavailable() {
                    // BUSY, LOADING, NOPERM, a lost connection: an outage, not bad data.
                    return Err(error);
                }
                tracing::warn!(key = %entry_key, %error, "Redis refused a cache read; reading it as a miss");
                Ok(None)
            }
        }
    }

    /// Where `key` lives: its entry hash's key, and its variant's index field there.
    fn address(&self, key: StoreKey<'_>) -> (String, String) {
        let entry_key = self
            .inner
            .entries
            .layout
            .entry_key(key.namespace, key.logical);
        (entry_key, index_field(key.variant))
    }

    /// The variants of the index `index` read under `entry_key`, when it is one; anything
    /// else there (an earlier version's value, junk) is removed and reads as none.
    fn parse_index(&self, entry_key: &str, index_field: &str, raw: &[u8]) -> Option<Index> {
        let index = Index::parse(raw);
        if index.is_none() {
            tracing::debug!(key = %entry_key, "not an index of this version; removing it");
            self.delete_later(redis::cmd("HDEL").arg(entry_key).arg(index_field).clone());
        }
        index
    }

    /// Decode one `Vary` variant's value; bytes that do not decode are removed (a miss).
    fn decode(
        &self,
        key: StoreKey<'_>,
        entry_key: &str,
        field: &str,
        raw: Vec<u8>,
    ) -> Option<Variants> {
        match self
            .inner
            .entries
            .decode(entry_key, field, key.variant, raw)
        {
            Ok(variants) => Some(variants),
            Err(error) => {
                tracing::warn!(key = %entry_key, %error, "undecodable cache entry; deleting it");
                self.delete_later(redis::cmd("HDEL").arg(entry_key).arg(field).clone());
                None
            }
        }
    }

    /// [`Coordination::get_for`](crate::store::Coordination::get_for): the one `Vary`
    /// variant that can answer a request of this identity and these headers, read with the
    /// variant's index in one `HMGET` (see `variants.rs`), and a second read when the index
    /// names other headers than expected.
    pub(crate) async fn get_for_request(
        &self,
        key: StoreKey<'_>,
        identity: &[u8],
        headers: &http::HeaderMap,
    ) -> Result<VariantRead, StoreError> {
        let (entry_key, index_field) = self.address(key);
        let near_seen = self.inner.near.as_ref().map(Near::epoch_now);
        let guessed = self.inner.entries.vary_names.guess(&entry_key, key.variant);
        let names: &[http::HeaderName] = guessed.as_deref().unwrap_or(&[]);
        let mut sub = sub_id(identity, &crate::key::vary_values(names, headers));
        let mut field = value_field(&index_field, &sub);
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&entry_key).arg(&index_field).arg(&field);
        let Some((index, mut value)) = self
            .read_call::<(Option<Vec<u8>>, Option<Vec<u8>>)>(&entry_key, cmd, 1)
            .await?
        else {
            return Ok(VariantRead::Missing);
        };
        let index = index.and_then(|raw| self.parse_index(&entry_key, &index_field, &raw));
        if let Some(index) = &index {
            if index.names[..] != *names {
                self.inner
                    .entries
                    .vary_names
                    .learn(&entry_key, key.variant, &index.names);
                sub = sub_id(identity, &crate::key::vary_values(&index.names, headers));
                field = value_field(&index_field, &sub);
                let mut cmd = redis::cmd("HGET");
                cmd.arg(&entry_key).arg(&field);
                value = self
                    .read_call::<Option<Vec<u8>>>(&entry_key, cmd, 1)
                    .await?
                    .flatten();
            } else if guessed.is_none() && !names.is_empty() {
                self.inner
                    .entries
                    .vary_names
                    .learn(&entry_key, key.variant, names);
            }
        }
        let Some(variants) = value.and_then(|raw| self.decode(key, &entry_key, &field, raw)) else {
            return Ok(match index {
                Some(index) if !index.is_empty() => VariantRead::OtherVariants(index.names),
                _ => VariantRead::Missing,
            });
        };
        if index.as_ref().is_some_and(|index| index.wants_touch(&sub)) {
            self.touch_later(entry_key.clone(), index_field, sub);
        }
        if let (Some(near), Some(seen)) = (&self.inner.near, near_seen) {
            near.fill(seen, key, &variants);
        }
        Ok(VariantRead::Variants(variants, Source::Redis))
    }

    /// [`Store::get`](crate::store::Store::get) (no request to choose with): every `Vary`
    /// variant the index lists, in a second read.
    pub(crate) async fn get_variants(
        &self,
        key: StoreKey<'_>,
    ) -> Result<Option<Variants>, StoreError> {
        let (entry_key, index_field) = self.address(key);
        let near_seen = self.inner.near.as_ref().map(Near::epoch_now);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&entry_key).arg(&index_field);
        let Some(Some(raw)) = self
            .read_call::<Option<Vec<u8>>>(&entry_key, cmd, 1)
            .await?
        else {
            return Ok(None);
        };
        let Some(index) = self.parse_index(&entry_key, &index_field, &raw) else {
            return Ok(None);
        };
        let fields: Vec<String> = index
            .ids()
            .map(|id| value_field(&index_field, id))
            .collect();
        if fields.is_empty() {
            return Ok(None);
        }
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(&entry_key).arg(&fields);
        let Some(values) = self
            .read_call::<Vec<Option<Vec<u8>>>>(&entry_key, cmd, fields.len())
            .await?
        else {
            return Ok(None);
        };
        let variants: Vec<Arc<Entry>> = fields
            .iter()
            .zip(values)
            .filter_map(|(field, raw)| self.decode(key, &entry_key, field, raw?))
            .flat_map(|variants| variants.iter().cloned().collect::<Vec<_>>())
            .collect();
        if variants.is_empty() {
            return Ok(None);
        }
        if let (Some(near), Some(seen)) = (&self.inner.near, near_seen) {
            near.fill(seen, key, &variants);
        }
        Ok(Some(variants.into()))
    }

    /// Move a `Vary` variant to the front of its index, off the response path.
    fn touch_later(&self, entry_key: String, index_field: String, sub: String) {
        let store = self.clone();
        tokio::spawn(async move {
            let mut invocation = store.inner.entries.touch.prepare_invoke();
            invocation.key(&entry_key).arg(&index_field).arg(&sub);
            let touched: Result<redis::Value, _> =
                store.invoke(invocation, store.inner.calls.deadline).await;
            if let Err(error) = touched {
                store
                    .inner
                    .calls
                    .background_failed("could not record a read of a cache entry", &error);
            }
        });
    }

    fn delete_later(&self, cmd: redis::Cmd) {
        let store = self.clone();
        tokio::spawn(async move {
            let deleted: Result<redis::Value, _> =
                store.query(cmd, store.inner.calls.deadline).await;
            if let Err(error) = deleted {
                store
                    .inner
                    .calls
                    .background_failed("could not delete a bad cache entry", &error);
            }
        });
    }

    pub(super) async fn put_entry(
        &self,
        key: StoreKey<'_>,
        entry: Arc<Entry>,
        token: u64,
    ) -> Result<bool, StoreError> {
        let value = encode_value(&entry, token_generation(token));
        let entry_key = self
            .inner
            .entries
            .layout
            .entry_key(key.namespace, key.logical);
        if !self.inner.entries.admits(value.len()) {
            // A value that large would ride the request deadline of every read.
            tracing::debug!(key = %entry_key, bytes = value.len(), "not stored in Redis: larger than max_value_bytes");
            return Ok(false);
        }
        let ttl_ms = ttl_ms(&entry);
        let layout = self.inner.entries.layout;
        let tags: Vec<String> = entry
            .tags()
            .iter()
            .map(|t| layout.tag_key(key.namespace, key.logical, t))
            .collect();
        let index_field = index_field(key.variant);
        let sub = sub_id(entry.identity(), &entry.vary().values);
        let (secret_key, secret_slot) = layout.secret_key(key.logical);
        // A process meets a bucket's secret at its first write there (on a cluster each
        // slot group has its own, read with nothing else): refused once for not knowing it,
        // the write is sent again with it. The token is checked as before.
        let near_seen = self.inner.near.as_ref().map(Near::epoch_now);
        let mut attempts = 0;
        let stored = loop {
            attempts += 1;
            let secret = self.inner.generations.secrets.get(secret_slot);
            let counters = layout.write_counter_keys(key.namespace, key.logical, secret.as_ref());
            let mut invocation = self.inner.entries.put.prepare_invoke();
            invocation
                .key(&entry_key)
                .key(layout.expiry_key(key.namespace, key.logical));
            for counter in &counters {
                invocation.key(counter);
            }
            let epoch = match layout {
                Layout::Single => {
                    invocation.key(EPOCH);
                    token_epoch(token).to_string()
                }
                Layout::Cluster => String::new(),
            };
            invocation.key(&secret_key);
            for tag in &tags {
                invocation.key(tag);
            }
            invocation
                .arg(&index_field)
                .arg(value.as_ref())
                .arg(ttl_ms)
                .arg(token_generation(token))
                .arg(epoch)
                .arg(counters.len())
                .arg(PRUNE_PER_WRITE)
                .arg(secret.as_ref().map_or("", |s| s.as_str()))
                .arg(&sub)
                .arg(names_text(&entry.vary().names))
                .arg(MAX_VARY_VARIANTS);
            // A write runs off the response path; a large value gets time to travel (10 ms
            // per MiB on top of the deadline, about 100 MB/s) instead of counting as an
            // outage.
            let deadline =
                self.inner.calls.deadline + Duration::from_millis(10 * (value.len() >> 20) as u64);
            match self.invoke::<redis::Value>(invocation, deadline).await? {
                redis::Value::Int(stored) => break stored != 0,
                redis::Value::BulkString(current) => {
                    // Chosen with a secret Redis does not hold: refused; learnt now.
                    let current = String::from_utf8_lossy(&current);
                    self.inner.generations.secrets.learn(secret_slot, &current);
                    if attempts < 2 {
                        continue;
                    }
                    tracing::debug!(key = %entry_key, "not stored: the bucket secret changed");
                    return Ok(false);
                }
                other => {
                    return Err(StoreError::new(
                        "unexpected reply of the write script",
                        format!("{other:?}"),
                    ))
                }
            }
        };
        if !stored {
            tracing::debug!(key = %entry_key, "not stored: an invalidation happened while it was fetched");
        } else {
            self.inner
                .entries
                .vary_names
                .learn(&entry_key, key.variant, &entry.vary().names);
            if let (Some(near), Some(seen)) = (&self.inner.near, near_seen) {
                near.fill_entries(seen, key, std::slice::from_ref(&entry));
            }
        }
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::redis::builder::DEFAULT_REPLY_BUDGET;

    fn entry(body: &'static str) -> Arc<Entry> {
        Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(body.as_bytes()),
            Duration::from_secs(60),
        ))
    }

    #[test]
    fn index_fields_are_sixteen_hex_digits() {
        assert_eq!(index_field(0), "0000000000000000");
        assert_eq!(index_field(0xdead_beef), "00000000deadbeef");
        assert_eq!(index_field(u64::MAX), "ffffffffffffffff");
    }

    #[test]
    fn values_over_the_limit_are_refused_and_counted() {
        let entries = Entries::new(Layout::Single, 10, DEFAULT_REPLY_BUDGET);
        assert!(entries.admits(10));
        assert_eq!(entries.refused_large(), 0);
        assert!(!entries.admits(11));
        assert!(!entries.admits(1 << 20));
        assert_eq!(entries.refused_large(), 2);
    }

    #[test]
    fn a_written_value_decodes_to_its_entry_and_junk_does_not() {
        let entries = Entries::new(Layout::Cluster, 1 << 20, DEFAULT_REPLY_BUDGET);
        let value = encode_value(&entry("dashboard"), 7);
        let key = entries.layout.entry_key("portal", "/api/dashboard/ABC");
        let field = value_field(&index_field(3), &sub_id(b"identity", b""));
        let variants = entries.decode(&key, &field, 3, value.to_vec()).unwrap();
        assert_eq!(variants.len(), 1);
        assert_eq!(variants[0].body(), "dashboard");
        assert!(entries
            .decode(&key, &field, 3, b"not an entry".to_vec())
            .is_err());
    }

    #[test]
    fn redis_keeps_an_entry_at_least_a_millisecond() {
        let gone = Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::new(),
            Duration::ZERO,
        );
        assert!(ttl_ms(&gone) >= 1);
        assert_eq!(ttl_ms(&entry("a")), 60_000);
    }
}
