//! [`RedisStore`]: entries in Redis, shared by every process that points at it.
//!
//! Layout, for namespace `ns` and logical key `L`:
//!
//! - `ns:k:L` — a hash; field = the variant (16 hex digits), value = the encoded entries of
//!   that variant (one per `Vary` value set). A hit is one `HGET`: one round trip.
//! - `ns:m:tag:T` — a set of the entry keys carrying tag `T`.
//! - `tower-response-cache:gen` — a counter every invalidation bumps first. A write carries
//!   the counter its request saw when it began and is dropped (atomically, in a script) if an
//!   invalidation happened since, so a response fetched before an invalidation never lands
//!   after it, whichever process fetched it.
//! - channel `tower-response-cache:invalidations` — every invalidation is published, so
//!   other processes ban their in-flight fetches and drop their local entries.
//!
//! Pattern invalidation walks `SCAN MATCH ns:k:<pattern> COUNT 1000` and `UNLINK`s each
//! batch: Redis does the matching, in small steps that never block other clients long.
//! Exact keys take one `UNLINK`. `KEYS` is never used.
//!
//! Every call has a deadline (default 50 ms). Connection problems are returned as
//! [unavailable](StoreError::is_unavailable) errors, which is what opens a
//! [`FallbackStore`](super::FallbackStore)'s circuit; errors Redis answers with (wrong
//! type, out of memory, read-only) are logged and read as a miss or a skipped write.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_response_cache::StoreError> {
//! use tower_response_cache::{store::RedisStore, CacheHandle};
//!
//! let redis = RedisStore::builder("redis://127.0.0.1:6379/0").build()?;
//! let cache = CacheHandle::builder(redis).namespace("portal").build();
//! # let _ = cache; Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, Script};

use super::{
    Backend, Invalidation, InvalidationListener, Store, StoreError, StoreEvent, StoreFuture,
    StoreKey, StoreStats, Variants,
};
use crate::entry::Entry;
use crate::pattern::{escape, Pattern};

const GENERATION_KEY: &str = "tower-response-cache:gen";
const CHANNEL: &str = "tower-response-cache:invalidations";
/// Most `Vary` variants kept under one URL.
const MAX_VARY_VARIANTS: usize = 16;
const SCAN_COUNT: usize = 1000;

/// Store a variant set unless the generation moved since the request began.
/// KEYS: entry hash, generation, tag sets… ARGV: field, value, ttl ms, generation seen.
/// Returns {stored (0/1), current generation}.
const PUT_SCRIPT: &str = r#"
local gen = tonumber(redis.call('GET', KEYS[2]) or '0')
if gen ~= tonumber(ARGV[4]) then return {0, gen} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, gen}
"#;

/// A [`Store`] in Redis. Cheap to clone. See the [module docs](crate::store::redis).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    url: String,
    deadline: Duration,
    scan_deadline: Duration,
    connect_timeout: Duration,
}

struct Inner {
    client: redis::Client,
    connection: ConnectionManager,
    deadline: Duration,
    scan_deadline: Duration,
    /// The highest generation this process has seen.
    generation: AtomicU64,
    /// Tells published invalidations from this process apart from others'.
    origin: u64,
    listener: Mutex<Option<InvalidationListener>>,
    put_script: Script,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Message {
    origin: u64,
    generation: u64,
    namespace: String,
    invalidation: Invalidation,
}

impl RedisStoreBuilder {
    /// Deadline of each Redis call on the request path (default 50 ms).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Deadline of each step of an invalidation (one `SCAN` batch; default 2 s).
    pub fn scan_deadline(mut self, deadline: Duration) -> Self {
        self.scan_deadline = deadline;
        self
    }

    /// Deadline of establishing a connection (default 250 ms).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Build the store. Connects lazily: an unreachable Redis is not an error here, only
    /// an invalid URL is. Must be called within a Tokio runtime (it starts the task that
    /// listens for other processes' invalidations).
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(self.url.as_str())
            .map_err(|e| StoreError::new("invalid Redis URL", e))?;
        // The manager's own retries would hold a request for seconds: the deadline and the
        // fallback circuit handle failures instead.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(100))
            .set_response_timeout(Some(self.scan_deadline))
            .set_connection_timeout(Some(self.connect_timeout));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| StoreError::new("could not set up the Redis connection", e))?;
        let inner = Arc::new(Inner {
            client,
            connection,
            deadline: self.deadline,
            scan_deadline: self.scan_deadline,
            generation: AtomicU64::new(0),
            origin: rand_u64(),
            listener: Mutex::new(None),
            put_script: Script::new(PUT_SCRIPT),
        });
        tokio::spawn(listen(Arc::downgrade(&inner)));
        Ok(RedisStore { inner })
    }
}

impl RedisStore {
    /// A builder for the Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            deadline: Duration::from_millis(50),
            scan_deadline: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(250),
        }
    }

    /// After Redis restarted (its counter may have gone back), raise its invalidation
    /// counter to at least what this process has seen, so a write fetched before the restart
    /// can never carry a token that matches again.
    pub(crate) async fn restore_generation(&self) -> Result<(), StoreError> {
        const RAISE: &str = r#"
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if g < floor then redis.call('SET', KEYS[1], floor) return floor end
return g
"#;
        let floor = self.inner.generation.load(Ordering::Relaxed);
        let script = Script::new(RAISE);
        let mut invocation = script.key(GENERATION_KEY);
        invocation.arg(floor);
        let mut connection = self.inner.connection.clone();
        let call = invocation.invoke_async::<u64>(&mut connection);
        match tokio::time::timeout(self.inner.scan_deadline, call).await {
            Ok(Ok(generation)) => {
                self.inner.generation.store(generation, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(error)) => Err(classify(error)),
            Err(_) => Err(StoreError::unavailable(
                "Redis did not answer within the deadline",
                format!("{:?}", self.inner.scan_deadline),
            )),
        }
    }

    /// `PING` within the deadline.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(redis::cmd("PING"), self.inner.deadline).await?;
        Ok(())
    }

    /// The server's `run_id`: it changes when Redis restarts.
    pub(crate) async fn run_id(&self) -> Result<String, StoreError> {
        let info: String = self
            .query(
                redis::cmd("INFO").arg("server").clone(),
                self.inner.deadline,
            )
            .await?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .unwrap_or_default()
            .trim()
            .to_owned())
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        let mut connection = self.inner.connection.clone();
        match tokio::time::timeout(deadline, cmd.query_async::<T>(&mut connection)).await {
            Ok(result) => result.map_err(classify),
            Err(_) => Err(StoreError::unavailable(
                "Redis did not answer within the deadline",
                format!("{deadline:?}"),
            )),
        }
    }

    fn entry_key(namespace: &str, logical: &str) -> String {
        format!("{namespace}:k:{logical}")
    }

    fn tag_key(namespace: &str, tag: &str) -> String {
        format!("{namespace}:m:tag:{tag}")
    }

    async fn get_variants(&self, key: StoreKey<'_>) -> Result<Option<Variants>, StoreError> {
        let entry_key = Self::entry_key(key.namespace, key.logical);
        let field = field(key.variant);
        let cmd = redis::cmd("HGET").arg(&entry_key).arg(&field).clone();
        let raw: Option<Vec<u8>> = match self.query(cmd, self.inner.deadline).await {
            Ok(raw) => raw,
            Err(error) if !error.is_unavailable() => {
                // Something that is not our hash sits under our key: remove it.
                tracing::warn!(key = %entry_key, %error, "unexpected value under a cache key; deleting it");
                self.delete_later(redis::cmd("UNLINK").arg(&entry_key).clone());
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let Some(raw) = raw else { return Ok(None) };
        match decode_variants(&raw) {
            Ok(variants) => Ok(Some(variants)),
            Err(error) => {
                tracing::warn!(key = %entry_key, %error, "undecodable cache entry; deleting it");
                self.delete_later(redis::cmd("HDEL").arg(&entry_key).arg(&field).clone());
                Ok(None)
            }
        }
    }

    fn delete_later(&self, cmd: redis::Cmd) {
        let store = self.clone();
        tokio::spawn(async move {
            let _: Result<redis::Value, _> = store.query(cmd, store.inner.deadline).await;
        });
    }

    async fn put_entry(
        &self,
        key: StoreKey<'_>,
        entry: Arc<Entry>,
        token: u64,
    ) -> Result<(), StoreError> {
        // Keep the other `Vary` variants of this URL.
        let mut variants: Vec<Arc<Entry>> = match self.get_variants(key).await? {
            Some(existing) => existing
                .iter()
                .filter(|e| e.vary() != entry.vary())
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        if variants.len() >= MAX_VARY_VARIANTS {
            variants.remove(0);
        }
        let ttl_ms = variants
            .iter()
            .chain(std::iter::once(&entry))
            .map(|e| e.retention().as_millis().clamp(1, u64::MAX as u128) as u64)
            .max()
            .unwrap_or(1);
        let tags: Vec<String> = entry
            .tags()
            .iter()
            .map(|t| Self::tag_key(key.namespace, t))
            .collect();
        variants.push(entry);
        let value = encode_variants(&variants);
        let entry_key = Self::entry_key(key.namespace, key.logical);
        let mut invocation = self.inner.put_script.prepare_invoke();
        invocation.key(&entry_key).key(GENERATION_KEY);
        for tag in &tags {
            invocation.key(tag);
        }
        invocation
            .arg(field(key.variant))
            .arg(value.as_ref())
            .arg(ttl_ms)
            .arg(token);
        let mut connection = self.inner.connection.clone();
        let call = invocation.invoke_async::<(u8, u64)>(&mut connection);
        let (stored, generation) = match tokio::time::timeout(self.inner.deadline, call).await {
            Ok(result) => result.map_err(classify)?,
            Err(_) => {
                return Err(StoreError::unavailable(
                    "Redis did not answer within the deadline",
                    format!("{:?}", self.inner.deadline),
                ))
            }
        };
        if stored == 0 {
            // Redis's counter is the authority: adopt it, even when it went down (a Redis
            // that restarted empty), so the next writes carry a matching token.
            self.inner.generation.store(generation, Ordering::Relaxed);
            tracing::debug!(key = %entry_key, "not stored: an invalidation happened while it was fetched");
        }
        Ok(())
    }

    /// Bump the generation first, so a write racing the removal is dropped.
    async fn bump_generation(&self) -> Result<u64, StoreError> {
        let generation: u64 = self
            .query(
                redis::cmd("INCR").arg(GENERATION_KEY).clone(),
                self.inner.deadline,
            )
            .await?;
        self.inner
            .generation
            .fetch_max(generation, Ordering::Relaxed);
        Ok(generation)
    }

    async fn publish(&self, namespace: &str, generation: u64, invalidation: Invalidation) {
        let message = Message {
            origin: self.inner.origin,
            generation,
            namespace: namespace.to_owned(),
            invalidation,
        };
        let payload = serde_json::to_string(&message).expect("message serialises");
        let cmd = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).clone();
        if let Err(error) = self.query::<i64>(cmd, self.inner.deadline).await {
            tracing::warn!(%error, "could not publish an invalidation to other processes");
        }
    }

    /// `SCAN MATCH` + `UNLINK` in batches; returns how many keys were removed.
    async fn unlink_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        let mut cursor: u64 = 0;
        let mut removed = 0u64;
        loop {
            let cmd = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT)
                .clone();
            let (next, keys): (u64, Vec<Vec<u8>>) =
                self.query(cmd, self.inner.scan_deadline).await?;
            if !keys.is_empty() {
                let n: u64 = self
                    .query(
                        redis::cmd("UNLINK").arg(&keys).clone(),
                        self.inner.scan_deadline,
                    )
                    .await?;
                removed += n;
            }
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    async fn invalidate_pattern(
        &self,
        namespace: &str,
        pattern: &Pattern,
    ) -> Result<u64, StoreError> {
        let generation = self.bump_generation().await?;
        let removed = match pattern.literal() {
            Some(literal) => {
                let key = Self::entry_key(namespace, literal);
                self.query(redis::cmd("UNLINK").arg(key).clone(), self.inner.deadline)
                    .await?
            }
            None => {
                let scan = format!("{}:k:{}", escape(namespace), pattern.as_str());
                self.unlink_matching(&scan).await?
            }
        };
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await;
        Ok(removed)
    }

    async fn invalidate_by_tag(&self, namespace: &str, tag: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation().await?;
        let tag_key = Self::tag_key(namespace, tag);
        let members: Vec<Vec<u8>> = self
            .query(
                redis::cmd("SMEMBERS").arg(&tag_key).clone(),
                self.inner.scan_deadline,
            )
            .await?;
        let mut removed = 0;
        for batch in members.chunks(SCAN_COUNT) {
            removed += self
                .query::<u64>(
                    redis::cmd("UNLINK").arg(batch).clone(),
                    self.inner.scan_deadline,
                )
                .await?;
        }
        let _: u64 = self
            .query(
                redis::cmd("UNLINK").arg(&tag_key).clone(),
                self.inner.deadline,
            )
            .await?;
        self.publish(namespace, generation, Invalidation::Tag(tag.to_owned()))
            .await;
        Ok(removed)
    }

    async fn invalidate_namespace(&self, namespace: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation().await?;
        let removed = self
            .unlink_matching(&format!("{}:k:*", escape(namespace)))
            .await?;
        self.unlink_matching(&format!("{}:m:tag:*", escape(namespace)))
            .await?;
        self.publish(namespace, generation, Invalidation::All).await;
        Ok(removed)
    }
}

/// Connection trouble is "unavailable"; anything Redis answered with is not.
fn classify(error: RedisError) -> StoreError {
    if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal() {
        return StoreError::connection_lost("the Redis connection failed", error);
    }
    let auth = matches!(error.code(), Some("NOAUTH" | "WRONGPASS"));
    if error.is_timeout() || auth || error.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::unavailable("Redis is unusable", error);
    }
    // Everything else is an answer: WRONGTYPE, OOM, READONLY, a script error.
    StoreError::new("Redis refused the command", error)
}

fn field(variant: u64) -> String {
    format!("{variant:016x}")
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

fn encode_variants(variants: &[Arc<Entry>]) -> bytes::Bytes {
    let mut out = BytesMut::new();
    out.put_u32(variants.len() as u32);
    for entry in variants {
        let bytes = entry.encode();
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    }
    out.freeze()
}

fn decode_variants(mut raw: &[u8]) -> Result<Variants, crate::entry::DecodeError> {
    let truncated = || Entry::decode(b"").unwrap_err();
    if raw.len() < 4 {
        return Err(truncated());
    }
    let count = raw.get_u32() as usize;
    if count == 0 || count > MAX_VARY_VARIANTS {
        return Err(truncated());
    }
    let mut variants = Vec::with_capacity(count);
    for _ in 0..count {
        if raw.len() < 4 {
            return Err(truncated());
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(truncated());
        }
        variants.push(Arc::new(Entry::decode(&raw[..len])?));
        raw.advance(len);
    }
    if !raw.is_empty() {
        return Err(truncated());
    }
    Ok(variants.into())
}

/// Listen for other processes' invalidations until the store is dropped, reconnecting
/// with a short backoff. After a reconnect, messages may have been missed: report it.
async fn listen(store: std::sync::Weak<Inner>) {
    let mut connected_before = false;
    loop {
        let Some(inner) = store.upgrade() else { return };
        let client = inner.client.clone();
        drop(inner);
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // Catch up with invalidations made before we listened, so our writes are not
        // refused for carrying an old generation.
        if let Some(inner) = store.upgrade() {
            let current = RedisStore { inner };
            if let Ok(generation) = current
                .query::<Option<u64>>(
                    redis::cmd("GET").arg(GENERATION_KEY).clone(),
                    current.inner.scan_deadline,
                )
                .await
            {
                current
                    .inner
                    .generation
                    .store(generation.unwrap_or(0), Ordering::Relaxed);
            }
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
            let Ok(message) = serde_json::from_slice::<Message>(message.get_payload_bytes()) else {
                tracing::warn!("ignoring a malformed message on the invalidation channel");
                continue;
            };
            inner
                .generation
                .fetch_max(message.generation, Ordering::Relaxed);
            if message.origin != inner.origin {
                notify(
                    &inner,
                    &StoreEvent::Remote {
                        namespace: message.namespace,
                        invalidation: message.invalidation,
                    },
                );
            }
        }
        tracing::warn!("invalidation channel closed; reconnecting");
    }
}

fn notify(inner: &Inner, event: &StoreEvent) {
    let listener = inner
        .listener
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    if let Some(listener) = listener {
        listener(event);
    }
}

impl Store for RedisStore {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        Box::pin(self.get_variants(key))
    }

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>, token: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.put_entry(key, entry, token))
    }

    fn write_token(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    fn set_listener(&self, listener: InvalidationListener) {
        *self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        Box::pin(self.invalidate_pattern(namespace, pattern))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.invalidate_by_tag(namespace, tag))
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        Box::pin(self.invalidate_namespace(namespace))
    }

    fn backend(&self) -> Backend {
        Backend::Redis
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("deadline", &self.inner.deadline)
            .field("generation", &self.inner.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decoding_random_variant_sets_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_variants(&bytes);
        }
    }

    #[test]
    fn variant_sets_round_trip() {
        let entry = Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"body"),
            Duration::from_secs(5),
        ));
        let encoded = encode_variants(&[entry.clone(), entry]);
        let decoded = decode_variants(&encoded).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[1].body(), "body");
        assert!(decode_variants(&encoded[..encoded.len() - 1]).is_err());
    }
}
