//! [`RedisStore`]: entries in Redis, shared by every process that points at it — one
//! Redis server, or a Redis Cluster.
//!
//! [`layout`] names the keys. On one Redis, for namespace `ns` and logical key `L`, the
//! entry is the hash `ns:k:L` (field = the variant, value = its encoded [`Vary`] variants,
//! see `codec.rs`, after a header with the generation it was fetched under and a soft
//! invalidation's mark, see `soft.rs`): a hit is one `HGET`, one round trip.
//!
//! Every invalidation first raises a generation counter. A write carries the generation its
//! request saw when it began and is dropped, atomically in a script, when an invalidation
//! happened since: a response fetched before an invalidation never lands after it, whichever
//! process fetched it. On one Redis the counter is one key and a write must match it
//! exactly. In a cluster each key bucket has its own counter (a script may only touch one
//! slot): an invalidation draws a new generation from the cluster-wide counter and raises
//! the counters of the buckets it touches to it, and a write is dropped when its bucket's
//! counter is above what the request saw. (A narrow gap the single-Redis check does not
//! have: if the whole cluster restarts empty while a fetch is in flight in a process that
//! had seen a higher generation, and another process then invalidates, the counters restart
//! below that fetch's token and its write can land. The fallback store's restart detection
//! raises the counters again when it notices; the window is the fetch's duration.)
//!
//! Every invalidation is published on the channel `tower-response-cache:invalidations`,
//! so other processes ban their in-flight fetches and drop their local entries.
//!
//! Pattern invalidation walks `SCAN MATCH <pattern> COUNT 1000` on every primary and
//! `UNLINK`s each batch: Redis does the matching, in small steps that never block other
//! clients long. Exact keys take one `UNLINK`. `KEYS` is never used.
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
//!
//! // A cluster: any of its nodes as seeds.
//! let cluster = RedisStore::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"]).build()?;
//! # let _ = (cache, cluster); Ok(()) }
//! ```
//!
//! [`Vary`]: http::header::VARY

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::{ErrorKind, RedisError, Script};

use super::{
    Backend, Invalidation, InvalidationListener, Store, StoreError, StoreFuture, StoreKey,
    StoreStats, Variants,
};
use crate::entry::Entry;
use crate::pattern::Pattern;

mod channel;
mod codec;
mod connection;
pub mod layout;
mod memo;
mod soft;

use channel::{Message, CHANNEL};
use codec::{encode_value, MAX_VARY_VARIANTS};
use connection::{Connection, Node, Timeouts};
use layout::{Layout, CENTRAL_GENERATION};
use memo::DecodeMemo;

const SCAN_COUNT: usize = 1000;

/// Store a variant set unless an invalidation happened since the request began.
/// KEYS: entry hash, generation, tag sets… ARGV: field, value, ttl ms, generation seen,
/// check (`eq`: the generation must be the one seen, one Redis; `le`: it must not be above
/// it, a cluster bucket). Returns {stored (0/1), current generation}.
const PUT_SCRIPT: &str = r#"
local gen = tonumber(redis.call('GET', KEYS[2]) or '0')
local seen = tonumber(ARGV[4])
if (ARGV[5] == 'eq' and gen ~= seen) or (ARGV[5] == 'le' and gen > seen) then
  return {0, gen}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
for i = 3, #KEYS do
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return {1, gen}
"#;

/// Mark every value of an entry hash soft-invalidated: bytes 9–24 of each value (see
/// `codec.rs`) become ARGV[1], the mark. Returns 1 when the hash was there.
const SOFT_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local value = fields[i + 1]
  if #value >= 24 then
    redis.call('HSET', KEYS[1], fields[i], string.sub(value, 1, 8) .. ARGV[1] .. string.sub(value, 25))
  end
end
return 1
"#;

/// Raise a counter past where it is and to at least ARGV[1]; return the new value.
const BUMP_SCRIPT: &str = r#"
local g = tonumber(redis.call('GET', KEYS[1]) or '0') + 1
local floor = tonumber(ARGV[1])
if g < floor then g = floor end
redis.call('SET', KEYS[1], g)
return g
"#;

/// Raise a counter to at least ARGV[1] (never lower it); return its value.
const RAISE_SCRIPT: &str = r#"
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if g < floor then redis.call('SET', KEYS[1], floor) return floor end
return g
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
    target: Target,
    deadline: Duration,
    scan_deadline: Duration,
    connect_timeout: Duration,
}

#[derive(Debug, Clone)]
enum Target {
    Single(String),
    Cluster(Vec<String>),
}

pub(crate) struct Inner {
    connection: Connection,
    layout: Layout,
    /// Where the invalidation channel can be subscribed (every seed of a cluster).
    subscribers: Vec<redis::Client>,
    deadline: Duration,
    scan_deadline: Duration,
    /// The highest generation this process has seen.
    generation: AtomicU64,
    /// Tells published invalidations from this process apart from others'.
    origin: u64,
    listener: Mutex<Option<InvalidationListener>>,
    put_script: Script,
    bump_script: Script,
    raise_script: Script,
    soft_script: Script,
    /// Decodings of recent replies, reused when the same bytes come back.
    memo: DecodeMemo,
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
        let (connection, urls) = match &self.target {
            Target::Single(url) => (Connection::single(url, &timeouts), vec![url.clone()]),
            Target::Cluster(seeds) if seeds.is_empty() => {
                return Err(StoreError::msg(
                    "a Redis Cluster needs at least one seed node",
                ))
            }
            Target::Cluster(seeds) => (Connection::cluster(seeds, &timeouts), seeds.clone()),
        };
        let connection = connection.map_err(invalid)?;
        let subscribers = urls
            .iter()
            .map(|url| redis::Client::open(url.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let inner = Arc::new(Inner {
            layout: connection.layout(),
            connection,
            subscribers,
            deadline: self.deadline,
            scan_deadline: self.scan_deadline,
            generation: AtomicU64::new(0),
            origin: rand_u64(),
            listener: Mutex::new(None),
            put_script: Script::new(PUT_SCRIPT),
            bump_script: Script::new(BUMP_SCRIPT),
            raise_script: Script::new(RAISE_SCRIPT),
            soft_script: Script::new(SOFT_SCRIPT),
            memo: DecodeMemo::new(),
        });
        tokio::spawn(channel::listen(Arc::downgrade(&inner)));
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
    /// tagged buckets; see [`layout`].
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisStoreBuilder {
        Self::with_target(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    fn with_target(target: Target) -> RedisStoreBuilder {
        RedisStoreBuilder {
            target,
            deadline: Duration::from_millis(50),
            scan_deadline: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(250),
        }
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.layout == Layout::Cluster
    }

    /// After Redis restarted (its counters may have gone back), raise its invalidation
    /// counters to at least what this process has seen, so a write fetched before the
    /// restart can never pass the check again.
    pub(crate) async fn restore_generation(&self) -> Result<(), StoreError> {
        let floor = self.inner.generation.load(Ordering::Relaxed);
        let mut keys = vec![CENTRAL_GENERATION.to_owned()];
        keys.extend(self.inner.layout.bucket_generation_keys());
        let raised = try_join_all(keys.iter().map(|key| {
            let mut invocation = self.inner.raise_script.prepare_invoke();
            invocation.key(key).arg(floor);
            self.invoke::<u64>(invocation, self.inner.scan_deadline)
        }))
        .await?;
        let generation = raised.into_iter().max().unwrap_or(floor);
        match self.inner.layout {
            Layout::Single => self.inner.generation.store(generation, Ordering::Relaxed),
            Layout::Cluster => self.adopt(generation),
        }
        Ok(())
    }

    /// Learn the current generation (when the channel (re)connects), so this process's
    /// writes are not refused for carrying an old one.
    pub(crate) async fn catch_up_generation(&self) {
        self.learn_generation(self.inner.scan_deadline).await;
    }

    /// Read the generation counter and adopt it (also before each miss fetches, see
    /// [`Store::current_write_token`]); on failure this process keeps what it knows.
    async fn learn_generation(&self, deadline: Duration) {
        let cmd = redis::cmd("GET").arg(CENTRAL_GENERATION).clone();
        let Ok(generation) = self.query::<Option<u64>>(cmd, deadline).await else {
            return;
        };
        let generation = generation.unwrap_or(0);
        match self.inner.layout {
            // One Redis's counter is the authority, even when it went down (restarted empty).
            Layout::Single => self.inner.generation.store(generation, Ordering::Relaxed),
            Layout::Cluster => self.adopt(generation),
        }
    }

    fn adopt(&self, generation: u64) {
        self.inner
            .generation
            .fetch_max(generation, Ordering::Relaxed);
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

    async fn within<T>(
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

    async fn query<T: redis::FromRedisValue>(
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

    async fn invoke<T: redis::FromRedisValue>(
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

    async fn query_node<T: redis::FromRedisValue>(
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

    async fn primaries(&self, deadline: Duration) -> Result<Vec<Node>, StoreError> {
        Self::within(deadline, self.inner.connection.primaries()).await
    }

    /// [`Store::get`] without the box (the fallback store awaits it directly).
    pub(crate) async fn get_variants(
        &self,
        key: StoreKey<'_>,
    ) -> Result<Option<Variants>, StoreError> {
        let entry_key = self.inner.layout.entry_key(key.namespace, key.logical);
        let field = field(key.variant);
        let mut cmd = redis::cmd("HGET");
        cmd.arg(&entry_key).arg(&field);
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
        // Taking the reply's buffer, so the entries can share it.
        match (self.inner.memo).decode(entry_key.as_bytes(), key.variant, bytes::Bytes::from(raw)) {
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
            .map(|e| e.retention().as_millis().clamp(1, u64::MAX as u128) as u64)
            .max()
            .unwrap_or(1);
        let layout = self.inner.layout;
        let tags: Vec<String> = entry
            .tags()
            .iter()
            .map(|t| layout.tag_key(key.namespace, key.logical, t))
            .collect();
        variants.push(entry);
        let value = encode_value(&variants, token);
        let entry_key = layout.entry_key(key.namespace, key.logical);
        let mut invocation = self.inner.put_script.prepare_invoke();
        invocation
            .key(&entry_key)
            .key(layout.generation_key(key.logical));
        for tag in &tags {
            invocation.key(tag);
        }
        let check = match layout {
            Layout::Single => "eq",
            Layout::Cluster => "le",
        };
        invocation
            .arg(field(key.variant))
            .arg(value.as_ref())
            .arg(ttl_ms)
            .arg(token)
            .arg(check);
        let (stored, generation) = self
            .invoke::<(u8, u64)>(invocation, self.inner.deadline)
            .await?;
        if stored == 0 {
            match layout {
                // One Redis's counter is the authority: adopt it, even when it went down (a
                // Redis that restarted empty), so the next writes carry a matching token.
                Layout::Single => self.inner.generation.store(generation, Ordering::Relaxed),
                Layout::Cluster => self.adopt(generation),
            }
            tracing::debug!(key = %entry_key, "not stored: an invalidation happened while it was fetched");
        }
        Ok(())
    }

    /// Raise the generation before removing anything, so a write racing the removal is
    /// dropped. In a cluster, raise the counters of the buckets `logical` names (every
    /// bucket for `None`) to a generation above any seen.
    async fn bump_generation(&self, logical: Option<&str>) -> Result<u64, StoreError> {
        let layout = self.inner.layout;
        let generation = match layout {
            Layout::Single => {
                let cmd = redis::cmd("INCR").arg(CENTRAL_GENERATION).clone();
                self.query(cmd, self.inner.deadline).await?
            }
            Layout::Cluster => {
                let floor = self.inner.generation.load(Ordering::Relaxed) + 1;
                let drawn = self.bump(CENTRAL_GENERATION.to_owned(), floor).await?;
                let buckets = match logical {
                    Some(logical) => vec![layout.generation_key(logical)],
                    None => layout.bucket_generation_keys(),
                };
                let raised = try_join_all(buckets.into_iter().map(|k| self.bump(k, drawn))).await?;
                raised.into_iter().max().unwrap_or(drawn)
            }
        };
        self.adopt(generation);
        Ok(generation)
    }

    async fn bump(&self, key: String, floor: u64) -> Result<u64, StoreError> {
        let mut invocation = self.inner.bump_script.prepare_invoke();
        invocation.key(key).arg(floor);
        self.invoke(invocation, self.inner.deadline).await
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

    /// `SCAN MATCH` + `UNLINK` in batches on every primary; returns how many keys were
    /// removed.
    async fn unlink_matching(&self, pattern: &str) -> Result<u64, StoreError> {
        self.on_matching(pattern, None).await
    }

    /// `UNLINK` one batch of keys (a cluster connection splits it by slot).
    async fn unlink(&self, keys: &[Vec<u8>]) -> Result<u64, StoreError> {
        let cmd = redis::cmd("UNLINK").arg(keys).clone();
        self.query::<u64>(cmd, self.inner.scan_deadline).await
    }

    /// Mark each of `keys` soft-invalidated with `mark`, one script per key (a script may
    /// only touch one slot), sent together; returns how many were still there.
    async fn mark_soft(&self, keys: &[Vec<u8>], mark: &[u8]) -> Result<u64, StoreError> {
        let marked = try_join_all(keys.iter().map(|key| {
            let mut invocation = self.inner.soft_script.prepare_invoke();
            invocation.key(key.as_slice()).arg(mark);
            self.invoke::<u64>(invocation, self.inner.scan_deadline)
        }))
        .await?;
        Ok(marked.into_iter().sum())
    }

    /// Walk the keys matching `pattern` on every primary, batch by batch: `UNLINK` them, or
    /// with `soft`, mark them soft-invalidated. Returns how many were removed or marked.
    async fn on_matching(&self, pattern: &str, soft: Option<&[u8]>) -> Result<u64, StoreError> {
        let deadline = self.inner.scan_deadline;
        let mut removed = 0u64;
        for node in self.primaries(deadline).await? {
            let mut cursor: u64 = 0;
            loop {
                let cmd = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .clone();
                let (next, keys): (u64, Vec<Vec<u8>>) =
                    self.query_node(&node, cmd, deadline).await?;
                if !keys.is_empty() {
                    removed += match soft {
                        None => self.unlink(&keys).await?,
                        Some(mark) => self.mark_soft(&keys, mark).await?,
                    };
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    async fn invalidate_pattern(
        &self,
        namespace: &str,
        pattern: &Pattern,
    ) -> Result<u64, StoreError> {
        let layout = self.inner.layout;
        let removed = match pattern.literal() {
            Some(literal) => {
                let generation = self.bump_generation(Some(literal)).await?;
                let key = layout.entry_key(namespace, literal);
                let cmd = redis::cmd("UNLINK").arg(key).clone();
                (generation, self.query(cmd, self.inner.deadline).await?)
            }
            None => {
                let generation = self.bump_generation(None).await?;
                let scan = layout.entry_scan(namespace, pattern.as_str());
                (generation, self.unlink_matching(&scan).await?)
            }
        };
        let (generation, removed) = removed;
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await;
        Ok(removed)
    }

    /// Mark the matching entries stale instead of removing them: a read compares the mark's
    /// generation with the one each value was fetched under (see `soft.rs`).
    async fn invalidate_pattern_soft(
        &self,
        namespace: &str,
        pattern: &Pattern,
    ) -> Result<u64, StoreError> {
        let layout = self.inner.layout;
        let generation = self.bump_generation(pattern.literal()).await?;
        let mark = soft::mark(generation, crate::clock::now_millis());
        let marked = match pattern.literal() {
            Some(literal) => {
                let key = layout.entry_key(namespace, literal).into_bytes();
                self.mark_soft(&[key], &mark).await?
            }
            None => {
                let scan = layout.entry_scan(namespace, pattern.as_str());
                self.on_matching(&scan, Some(&mark)).await?
            }
        };
        // Other processes drop their local copies (hard: the safe side) and ban fetches.
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await;
        Ok(marked)
    }

    async fn invalidate_by_tag(&self, namespace: &str, tag: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation(None).await?;
        let deadline = self.inner.scan_deadline;
        let mut removed = 0;
        for tag_key in self.inner.layout.tag_keys(namespace, tag) {
            let cmd = redis::cmd("SMEMBERS").arg(&tag_key).clone();
            let members: Vec<Vec<u8>> = self.query(cmd, deadline).await?;
            for batch in members.chunks(SCAN_COUNT) {
                let cmd = redis::cmd("UNLINK").arg(batch).clone();
                removed += self.query::<u64>(cmd, deadline).await?;
            }
            let cmd = redis::cmd("UNLINK").arg(&tag_key).clone();
            let _: u64 = self.query(cmd, self.inner.deadline).await?;
        }
        self.publish(namespace, generation, Invalidation::Tag(tag.to_owned()))
            .await;
        Ok(removed)
    }

    async fn invalidate_namespace(&self, namespace: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation(None).await?;
        let layout = self.inner.layout;
        let removed = self
            .unlink_matching(&layout.entry_scan(namespace, "*"))
            .await?;
        self.unlink_matching(&layout.tag_scan(namespace)).await?;
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
    // A cluster that lost a primary answers CLUSTERDOWN until it heals: an outage too.
    let down = matches!(
        error.code(),
        Some("CLUSTERDOWN" | "TRYAGAIN" | "MASTERDOWN")
    );
    if error.is_timeout() || auth || down || error.kind() == ErrorKind::AuthenticationFailed {
        return StoreError::unavailable("Redis is unusable", error);
    }
    // Everything else is an answer: WRONGTYPE, OOM, READONLY, a script error.
    StoreError::new("Redis refused the command", error)
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

    fn put<'a>(&'a self, key: StoreKey<'a>, entry: Arc<Entry>, token: u64) -> StoreFuture<'a, ()> {
        Box::pin(self.put_entry(key, entry, token))
    }

    fn write_token(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    fn checks_remote_invalidations(&self) -> bool {
        true
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

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        Box::pin(self.invalidate_pattern(namespace, pattern))
    }

    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        Box::pin(self.invalidate_pattern_soft(namespace, pattern))
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
