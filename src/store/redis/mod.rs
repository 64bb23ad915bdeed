//! [`RedisStore`]: entries in Redis, shared by every process that points at it — one

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Script;

use super::{
    Backend, Coordination, Invalidation, InvalidationListener, Store, StoreError, StoreFuture,
    StoreKey, StoreStats, Variants,
};
use crate::entry::Entry;
use crate::pattern::Pattern;

mod ack;
mod call;
mod channel;
mod codec;
mod connection;
mod generation;
mod invalidate;
mod layout;
mod lease;
mod maxmemory;
mod memo;
mod near;
mod scripts;
mod secret;
mod soft;

use call::classify;
use channel::Message;
use codec::{encode_value, MAX_VARY_VARIANTS};
use connection::{Connection, Subscriber, Timeouts};
use generation::*;
use invalidate::Removal;
use layout::{Layout, CENTRAL_GENERATION, EPOCH, WIDE_GENERATION};
use memo::DecodeMemo;
use near::Near;
use scripts::*;

const SCAN_COUNT: usize = 1000;

/// The longest TTL a value gets in Redis: 2^31 − 1 seconds (about 68 years). A longer
/// `max-age` is clamped to it before it reaches Redis.
pub(crate) const MAX_TTL_MS: u64 = ((1u64 << 31) - 1) * 1000;

/// Dead fields of the entry hash a write prunes (bounded work per write).
const PRUNE_PER_WRITE: usize = 8;

/// A [`Store`] in Redis. Cheap to clone.
///
/// [`RedisStore`]: entries in Redis, shared by every process that points at it — one
/// Redis server, or a Redis Cluster.
///
/// `layout.rs` names the keys. On one Redis, for namespace `ns` and logical key `L`, the
/// entry is the hash `ns:k:L` (field = the variant, value = its encoded [`Vary`] variants,
/// see `codec.rs`, after a header with the generation it was fetched under and a soft
/// invalidation's mark, see `soft.rs`): a hit is one `HGET`, one round trip.
///
/// Every invalidation first raises a generation counter. A write carries the generation its
/// request saw when it began and is dropped, atomically in a script, when an invalidation
/// that may cover it happened since: a response fetched before an invalidation never lands
/// after it, whichever process fetched it. Each invalidation draws a new generation from
/// the central counter and raises the counters it touches to it; a write is dropped when
/// one of its counters is above what the request saw. On one Redis an exact invalidation
/// raises one of 1024 bucket counters (by a hash of namespace and key keyed with the
/// deployment's secret, see `secret.rs`, so no client can aim at a key) and a glob, tag or
/// `invalidate_all` the wide counter: a `POST` to one path refuses fills of that path (and
/// of the 1/1024 of keys sharing its bucket), not every fill in flight. A token also
/// carries the epoch of the data set (a random number the first invalidation after Redis
/// started empty draws), so a fetch from before an empty restart is refused even when the
/// new counter happens to equal its generation. In a cluster each of 16 key buckets has
/// its own wide counter (a script may only touch one slot), which a glob raises in every
/// bucket, and 1024 keyed counters, of which an exact invalidation raises its key's. (A
/// narrow gap the single-Redis check does not have: if the whole cluster restarts empty
/// while a fetch is in flight in a process that had seen a higher generation, and another
/// process then invalidates, the counters restart below that fetch's token and its write
/// can land. The fallback store's restart detection raises the counters again when it
/// notices; the window is the fetch's duration.)
///
/// TTLs are clamped to 2^31 − 1 s before they reach Redis, and the write script checks its
/// arguments and the types of every key it touches before it writes anything: no write is
/// ever applied in half. Each write also prunes a few dead fields of the hash it writes
/// (and dead members of its tag sets), so Redis memory follows the live entries.
///
/// Every invalidation is published on the channel `tower-response-cache:invalidations`
/// (on a cluster, the sharded channel `{tower-response-cache}:invalidations`: Redis 7 or
/// later), so other processes ban their in-flight fetches and drop their local entries.
///
/// Pattern invalidation walks `SCAN MATCH <pattern> COUNT 1000` on every primary and
/// `UNLINK`s each batch: Redis does the matching, in small steps that never block other
/// clients long. Exact keys take one `UNLINK`. `KEYS` is never used.
///
/// Every call has a deadline (default 50 ms). Connection problems are returned as
/// [unavailable](StoreError::is_unavailable) errors, which is what opens a
/// [`FallbackStore`](super::FallbackStore)'s circuit, and so are the answers of a Redis that
/// cannot serve now (`BUSY`, `LOADING`, `NOPERM`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`):
/// nothing is deleted for them. A foreign value under a cache key (`WRONGTYPE`, or bytes
/// that do not decode) is a miss and is deleted; other answers (out of memory, read-only)
/// are logged and read as a miss or a skipped write.
///
/// ```no_run
/// # async fn run() -> Result<(), tower_response_cache::StoreError> {
/// use tower_response_cache::{CacheHandle, RedisStore};
///
/// let redis = RedisStore::builder("redis://127.0.0.1:6379/0").build()?;
/// let cache = CacheHandle::builder(redis).namespace("portal").build();
///
/// // A cluster: any of its nodes as seeds.
/// let cluster = RedisStore::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).build()?;
/// # let _ = (cache, cluster); Ok(()) }
/// ```
///
/// [`Vary`]: http::header::VARY
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStoreBuilder {
    target: Target,
    deadline: Duration,
    scan_deadline: Duration,
    connect_timeout: Duration,
    /// The near cache's lease and byte budget, when on.
    near: Option<(Duration, usize)>,
}

#[derive(Debug, Clone)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
}

pub(crate) struct Inner {
    connection: Connection,
    layout: Layout,
    /// Where the invalidation channel is subscribed.
    subscriber: Subscriber,
    deadline: Duration,
    scan_deadline: Duration,
    /// The write token this process has: on one Redis the epoch and the generation as
    /// Redis last told it (see [`token`]), in a cluster the highest generation Redis told.
    /// Only what Redis said: never above the counter an invalidation draws from.
    generation: AtomicU64,
    /// A token one step past `generation`, set when another process's message claims a
    /// higher generation and cleared when Redis answers: writes the fallback checks locally
    /// (see `RedisStore::heard`) must carry at least this. 0 when none.
    heard_floor: AtomicU64,
    /// Questions asked of one Redis about its epoch and generation, and the latest whose
    /// answer was adopted (see `RedisStore::set_token`).
    asked: AtomicU64,
    adopted: Mutex<u64>,
    /// Tells published invalidations from this process apart from others'.
    origin: u64,
    listener: Mutex<Option<InvalidationListener>>,
    /// Told of every error of a call no caller hears of (see `call.rs`).
    errors: Mutex<Option<call::ErrorSink>>,
    put_script: Script,
    bump_script: Script,
    raise_script: Script,
    soft_script: Script,
    bump_single_script: Script,
    restore_single_script: Script,
    /// Decodings of recent replies, reused when the same bytes come back.
    memo: DecodeMemo,
    /// The near cache, when on.
    near: Option<Near>,
    /// This process's invalidations waiting for acknowledgements.
    acks: ack::Acks,
    /// The longest lease other processes advertised (for `invalidate`'s wait).
    advertised: lease::Advertised,
    leases_script: Script,
    /// The bucket secrets learned from Redis (see `secret.rs`).
    secrets: secret::Secrets,
    raise_keyed_script: Script,
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
        let invalid = |e| StoreError::new("invalid Redis URL", e);
        let timeouts = Timeouts {
            response: self.scan_deadline,
            connect: self.connect_timeout,
        };
        let (connection, subscriber) = match &self.target {
            Target::Single(url) => (
                Connection::single(url, &timeouts),
                Subscriber::Plain(redis::Client::open(url.as_str()).map_err(invalid)?),
            ),
            Target::Cluster(seeds) if seeds.is_empty() => {
                return Err(StoreError::msg(
                    "a Redis Cluster needs at least one seed node",
                ))
            }
            Target::Cluster(seeds) => (
                Connection::cluster(seeds, &timeouts),
                Subscriber::Sharded {
                    seeds: seeds.clone(),
                    connect: self.connect_timeout.max(Duration::from_secs(1)),
                },
            ),
        };
        let connection = connection.map_err(invalid)?;
        let origin = rand_u64();
        let layout = connection.layout();
        let near = self
            .near
            .map(|(lease, max_bytes)| Near::new(lease, max_bytes, layout.process_channel(origin)));
        let inner = Arc::new(Inner {
            layout,
            connection,
            subscriber,
            deadline: self.deadline,
            scan_deadline: self.scan_deadline,
            generation: AtomicU64::new(0),
            heard_floor: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            adopted: Mutex::new(0),
            origin,
            listener: Mutex::new(None),
            errors: Mutex::new(None),
            put_script: Script::new(PUT_SCRIPT),
            bump_script: Script::new(BUMP_SCRIPT),
            raise_script: Script::new(RAISE_SCRIPT),
            soft_script: Script::new(SOFT_SCRIPT),
            bump_single_script: Script::new(BUMP_SINGLE_SCRIPT),
            restore_single_script: Script::new(RESTORE_SINGLE_SCRIPT),
            memo: DecodeMemo::new(),
            near,
            acks: ack::Acks::default(),
            advertised: lease::Advertised::default(),
            leases_script: Script::new(lease::LEASES_SCRIPT),
            secrets: secret::Secrets::new(layout.secret_slots()),
            raise_keyed_script: Script::new(RAISE_KEYED_SCRIPT),
        });
        tokio::spawn(channel::listen(Arc::downgrade(&inner)));
        tokio::spawn(maxmemory::check(Arc::downgrade(&inner)));
        if inner.near.is_some() {
            tokio::spawn(near::heartbeat(Arc::downgrade(&inner)));
        }
        Ok(RedisStore { inner })
    }
}

impl RedisStore {
    /// A builder for the Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        Self::with_target(Target::Single(url.into()))
    }

    /// A builder for the Redis Cluster that `seeds` belong to (`redis://[:password@]host:port`,
    /// any nodes of it; the rest are discovered). Keys are spread over the primaries in hash
    /// tagged buckets (see the type docs).
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisStoreBuilder {
        Self::with_target(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    fn with_target(target: Target) -> RedisStoreBuilder {
        RedisStoreBuilder {
            target,
            deadline: Duration::from_millis(50),
            scan_deadline: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(250),
            near: None,
        }
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.layout == Layout::Cluster
    }

    /// `PING` within the deadline.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.query(redis::cmd("PING"), self.inner.deadline).await?;
        Ok(())
    }

    /// The server's `run_id` (every primary's, in a cluster): it changes when Redis restarts.
    pub(crate) async fn run_id(&self) -> Result<String, StoreError> {
        let nodes = self.primaries(self.inner.deadline).await?;
        let mut ids = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let cmd = redis::cmd("INFO").arg("server").clone();
            let info: String = self.query_node(node, cmd, self.inner.deadline).await?;
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .unwrap_or_default()
                .trim();
            ids.push(id.to_owned());
        }
        Ok(ids.join(","))
    }

    /// [`Store::get`] without the box (the fallback store awaits it directly).
    pub(crate) async fn get_variants(
        &self,
        key: StoreKey<'_>,
    ) -> Result<Option<Variants>, StoreError> {
        let entry_key = self.inner.layout.entry_key(key.namespace, key.logical);
        let field = field(key.variant);
        let ticket = self.inner.near.as_ref().map(Near::ticket);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&entry_key).arg(&field);
        let reply = tokio::time::timeout(self.inner.deadline, async {
            let mut connection = self.inner.connection.connected().await?;
            cmd.query_async::<Option<Vec<u8>>>(&mut connection).await
        })
        .await
        .map_err(|_| {
            StoreError::unavailable(
                "Redis did not answer within the deadline",
                format!("{:?}", self.inner.deadline),
            )
        })?;
        let raw = match reply {
            Ok(raw) => raw,
            Err(error) if error.code() == Some("WRONGTYPE") => {
                // Something that is not our hash sits under our key: remove it.
                tracing::warn!(key = %entry_key, %error, "unexpected value under a cache key; deleting it");
                self.delete_later(redis::cmd("UNLINK").arg(&entry_key).clone());
                return Ok(None);
            }
            Err(error) => {
                let error = classify(error);
                if error.is_unavailable() {
                    // BUSY, LOADING, NOPERM, a lost connection: an outage, not bad data.
                    return Err(error);
                }
                // Some other answer: read as a miss, and touch nothing.
                tracing::warn!(key = %entry_key, %error, "Redis refused a cache read; reading it as a miss");
                return Ok(None);
            }
        };
        let Some(raw) = raw else { return Ok(None) };
        // Taking the reply's buffer, so the entries can share it.
        match (self.inner.memo).decode(entry_key.as_bytes(), key.variant, bytes::Bytes::from(raw)) {
            Ok(variants) => {
                if let (Some(near), Some(ticket)) = (&self.inner.near, ticket) {
                    near.fill(ticket, key, &variants);
                }
                Ok(Some(variants))
            }
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
            let deleted: Result<redis::Value, _> = store.query(cmd, store.inner.deadline).await;
            if let Err(error) = deleted {
                store
                    .inner
                    .background_failed("could not delete a bad cache entry", &error);
            }
        });
    }

    async fn put_entry(
        &self,
        key: StoreKey<'_>,
        entry: Arc<Entry>,
        token: u64,
    ) -> Result<bool, StoreError> {
        // Keep the other `Vary` variants of this URL.
        let mut variants: Vec<Arc<Entry>> = match self.get_variants(key).await? {
            Some(existing) => existing
                .iter()
                .filter(|e| !e.same_variant(&entry))
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
            .map(|e| e.retention().as_millis().clamp(1, u128::from(MAX_TTL_MS)) as u64)
            .max()
            .unwrap_or(1);
        let layout = self.inner.layout;
        let tags: Vec<String> = entry
            .tags()
            .iter()
            .map(|t| layout.tag_key(key.namespace, key.logical, t))
            .collect();
        variants.push(entry.clone());
        let value = encode_value(&variants, token_generation(token));
        let entry_key = layout.entry_key(key.namespace, key.logical);
        let (secret_key, secret_slot) = layout.secret_key(key.logical);
        let secret = self.inner.secrets.get(secret_slot);
        let counters = layout.write_counter_keys(key.namespace, key.logical, secret.as_ref());
        let mut invocation = self.inner.put_script.prepare_invoke();
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
            .arg(field(key.variant))
            .arg(value.as_ref())
            .arg(ttl_ms)
            .arg(token_generation(token))
            .arg(epoch)
            .arg(counters.len())
            .arg(PRUNE_PER_WRITE)
            .arg(secret.as_ref().map_or("", |s| s.as_str()));
        let ticket = self.inner.near.as_ref().map(Near::ticket);
        let stored = match self
            .invoke::<redis::Value>(invocation, self.inner.deadline)
            .await?
        {
            redis::Value::Int(stored) => stored != 0,
            redis::Value::BulkString(current) => {
                // Chosen with a secret Redis does not hold: refused; the next write knows.
                let current = String::from_utf8_lossy(&current);
                self.inner.secrets.learn(secret_slot, &current);
                tracing::debug!(key = %entry_key, "not stored: the bucket secret changed");
                return Ok(false);
            }
            other => {
                return Err(StoreError::new(
                    "unexpected reply of the write script",
                    format!("{other:?}"),
                ))
            }
        };
        if !stored {
            tracing::debug!(key = %entry_key, "not stored: an invalidation happened while it was fetched");
        } else if let (Some(near), Some(ticket)) = (&self.inner.near, ticket) {
            near.fill_entries(ticket, key, std::slice::from_ref(&entry));
        }
        Ok(stored)
    }
}

/// The hash field of a variant: 16 lowercase hex digits (by hand: it is on every hit).
fn field(variant: u64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits: Vec<u8> = (0..16)
        .rev()
        .map(|i| HEX[((variant >> (i * 4)) & 0xf) as usize])
        .collect();
    String::from_utf8(digits).expect("hex digits are ASCII")
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

impl Store for RedisStore {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        Box::pin(self.get_variants(key))
    }

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>) -> StoreFuture<'a, ()> {
        let token = self.write_token();
        Box::pin(async move { self.put_entry(key, entry, token).await.map(drop) })
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        self.detached(namespace, Removal::Pattern(pattern.clone()))
    }

    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        self.detached(namespace, Removal::Soft(pattern.clone()))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        self.detached(namespace, Removal::Tag(tag.to_owned()))
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        self.detached(namespace, Removal::All)
    }

    fn backend(&self) -> Backend {
        Backend::Redis
    }

    fn stats(&self) -> StoreStats {
        self.near_stats(StoreStats::default())
    }

    fn coordination(&self) -> Option<&dyn Coordination> {
        Some(self)
    }
}

impl Coordination for RedisStore {
    fn put_checked<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<Entry>,
        token: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.put_entry(key, entry, token))
    }

    fn write_token(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> bool {
        // Only the near cache answers at once; anything else asks Redis.
        self.near_read_now(key, read)
    }

    fn checks_remote_invalidations(&self) -> bool {
        true
    }

    fn fetched_before(&self, token: u64, generation: u64) -> bool {
        self.predates(token, generation)
    }

    fn current_write_token(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.learn_generation(self.inner.deadline).await;
            Ok(self.write_token())
        })
    }

    fn set_listener(&self, listener: InvalidationListener) {
        *self
            .inner
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("layout", &self.inner.layout)
            .field("deadline", &self.inner.deadline)
            .field("generation", &self.inner.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_sixteen_hex_digits() {
        assert_eq!(field(0), "0000000000000000");
        assert_eq!(field(0xdead_beef), "00000000deadbeef");
        assert_eq!(field(u64::MAX), "ffffffffffffffff");
    }
}
