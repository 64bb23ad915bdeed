//! [`RedisStore`]: entries in Redis, shared by every process that points at it — one

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::{ErrorKind, RedisError, Script};

use super::{
    Backend, Coordination, Invalidation, InvalidationListener, Store, StoreError, StoreFuture,
    StoreKey, StoreStats, Variants,
};
use crate::entry::Entry;
use crate::pattern::Pattern;

mod channel;
mod codec;
mod connection;
mod layout;
mod lease;
mod memo;
mod near;
mod soft;

use channel::{Message, CHANNEL};
use codec::{encode_value, MAX_VARY_VARIANTS};
use connection::{Connection, Node, Timeouts};
use layout::{Layout, CENTRAL_GENERATION, EPOCH, WIDE_GENERATION};
use memo::DecodeMemo;
use near::Near;

const SCAN_COUNT: usize = 1000;

/// The longest TTL a value gets in Redis: 2^31 − 1 seconds (about 68 years). A longer
/// `max-age` is clamped to it before it reaches Redis.
pub(crate) const MAX_TTL_MS: u64 = ((1u64 << 31) - 1) * 1000;

/// Dead fields of the entry hash a write prunes (bounded work per write).
const PRUNE_PER_WRITE: usize = 8;

/// Store a variant set unless an invalidation happened since the request began.
///
/// KEYS: entry hash, its expiry set, the counters the write is checked against (ARGV[6] of
/// them), the epoch key when ARGV[5] is not empty, then the tag sets. ARGV: field, value,
/// ttl ms, generation seen, epoch seen (`''` in a cluster), how many counters.
///
/// Every argument and the type of every key is checked before anything is written: a
/// script that errs midway would leave half a write (a value without its TTL or its tags).
/// The write prunes up to ARGV[7] dead fields (and tag set members whose entry is gone).
/// Returns 1 when stored, 0 when refused.
const PUT_SCRIPT: &str = r#"
local ttl = tonumber(ARGV[3])
local seen = tonumber(ARGV[4])
local counters = tonumber(ARGV[6])
local prune = tonumber(ARGV[7])
if not ttl or not seen or not counters or not prune or ttl < 1 or ttl > 2147483647000
  or ttl % 1 ~= 0 or #ARGV[1] == 0 then
  return redis.error_reply('ERR tower-response-cache: invalid write arguments')
end
local first_tag = 3 + counters
local epoch = false
if ARGV[5] ~= '' then
  epoch = redis.call('GET', KEYS[first_tag])
  first_tag = first_tag + 1
end
local function kind(key) return redis.call('TYPE', key)['ok'] end
local k = kind(KEYS[1])
local x = kind(KEYS[2])
if (k ~= 'none' and k ~= 'hash') or (x ~= 'none' and x ~= 'zset') then
  return redis.error_reply('WRONGTYPE tower-response-cache: a foreign value under a cache key')
end
for i = first_tag, #KEYS do
  local t = kind(KEYS[i])
  if t ~= 'none' and t ~= 'set' then
    return redis.error_reply('WRONGTYPE tower-response-cache: a foreign value under a tag key')
  end
end
-- No epoch yet (nobody invalidated since Redis started empty): only a token that never
-- learned one (epoch 0) matches.
if ARGV[5] ~= '' and (epoch or '0') ~= ARGV[5] then return 0 end
for i = 3, 2 + counters do
  local g = tonumber(redis.call('GET', KEYS[i]) or '0')
  if not g or g > seen then return 0 end
end
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, prune)
if #dead > 0 then
  redis.call('HDEL', KEYS[1], unpack(dead))
  redis.call('ZREM', KEYS[2], unpack(dead))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
if redis.call('PTTL', KEYS[2]) < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end
for i = first_tag, #KEYS do
  local gone = redis.call('SRANDMEMBER', KEYS[i], 2)
  for _, member in ipairs(gone) do
    if member ~= KEYS[1] and redis.call('EXISTS', member) == 0 then
      redis.call('SREM', KEYS[i], member)
    end
  end
  redis.call('SADD', KEYS[i], KEYS[1])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 1
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

/// One Redis: draw a new generation from the central counter (KEYS[1]) and raise the
/// counters KEYS[3..] to it, in one step; the epoch (KEYS[2]) is created as ARGV[1] when
/// missing (only invalidations create it: until the first one after Redis started empty,
/// tokens carry epoch 0, which a missing epoch matches). Returns {epoch, generation}.
const BUMP_SINGLE_SCRIPT: &str = r#"
local e = redis.call('GET', KEYS[2])
if not e then redis.call('SET', KEYS[2], ARGV[1]) e = ARGV[1] end
local g = (tonumber(redis.call('GET', KEYS[1]) or '0') or 0) + 1
redis.call('SET', KEYS[1], g)
for i = 3, #KEYS do
  if (tonumber(redis.call('GET', KEYS[i]) or '0') or 0) < g then redis.call('SET', KEYS[i], g) end
end
return {tonumber(e) or 0, g}
"#;

/// One Redis after a restart: raise the central and wide counters (KEYS[1], KEYS[2]) to at
/// least ARGV[1], so every fetch in flight from before is refused; returns {epoch (0 when
/// there is none yet, KEYS[3]), generation}.
const RESTORE_SINGLE_SCRIPT: &str = r#"
local e = redis.call('GET', KEYS[3])
local floor = tonumber(ARGV[1])
local g = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if g < floor then redis.call('SET', KEYS[1], floor) g = floor end
if (tonumber(redis.call('GET', KEYS[2]) or '0') or 0) < floor then redis.call('SET', KEYS[2], floor) end
return {tonumber(e) or 0, g}
"#;

/// Bits of a write token that hold the generation; the 24 above hold the epoch.
const GENERATION_BITS: u32 = 40;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
const EPOCH_MASK: u64 = (1 << 24) - 1;

/// A write token: the epoch of the data set (one Redis; 0 in a cluster) and the generation.
fn token(epoch: u64, generation: u64) -> u64 {
    ((epoch & EPOCH_MASK) << GENERATION_BITS) | generation.min(GENERATION_MASK)
}

fn token_generation(token: u64) -> u64 {
    token & GENERATION_MASK
}

fn token_epoch(token: u64) -> u64 {
    token >> GENERATION_BITS
}

/// A fresh epoch: random, never 0 (0 is "none").
fn new_epoch() -> u64 {
    (rand_u64() % EPOCH_MASK) + 1
}

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
/// raises one of 1024 bucket counters (by namespace and key) and a glob, tag or
/// `invalidate_all` the wide counter: a `POST` to one path refuses fills of that path (and
/// of the 1/1024 of keys sharing its bucket), not every fill in flight. A token also
/// carries the epoch of the data set (a random number the first invalidation after Redis
/// started empty draws), so a fetch from before an empty restart is refused even when the
/// new counter happens to equal its generation. In a cluster each of 16 key buckets has
/// its own counter (a script may only touch one slot) and a glob raises all of them. (A
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
/// Every invalidation is published on the channel `tower-response-cache:invalidations`,
/// so other processes ban their in-flight fetches and drop their local entries.
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
    /// Where the invalidation channel can be subscribed (every seed of a cluster).
    subscribers: Vec<redis::Client>,
    deadline: Duration,
    scan_deadline: Duration,
    /// The write token this process has: on one Redis the epoch and the generation as
    /// Redis last told it (see [`token`]), in a cluster the highest generation seen.
    generation: AtomicU64,
    /// Tells published invalidations from this process apart from others'.
    origin: u64,
    listener: Mutex<Option<InvalidationListener>>,
    put_script: Script,
    bump_script: Script,
    raise_script: Script,
    soft_script: Script,
    bump_single_script: Script,
    restore_single_script: Script,
    /// Decodings of recent replies, reused when the same bytes come back.
    memo: DecodeMemo,
    /// The near cache, when on (never on a cluster).
    near: Option<Near>,
    /// The longest lease other processes advertised (for `invalidate`'s wait).
    advertised: lease::Advertised,
    leases_script: Script,
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
        let origin = rand_u64();
        let near = self.near_for(origin);
        let inner = Arc::new(Inner {
            layout: connection.layout(),
            connection,
            subscribers,
            deadline: self.deadline,
            scan_deadline: self.scan_deadline,
            generation: AtomicU64::new(0),
            origin,
            listener: Mutex::new(None),
            put_script: Script::new(PUT_SCRIPT),
            bump_script: Script::new(BUMP_SCRIPT),
            raise_script: Script::new(RAISE_SCRIPT),
            soft_script: Script::new(SOFT_SCRIPT),
            bump_single_script: Script::new(BUMP_SINGLE_SCRIPT),
            restore_single_script: Script::new(RESTORE_SINGLE_SCRIPT),
            memo: DecodeMemo::new(),
            near,
            advertised: lease::Advertised::default(),
            leases_script: Script::new(lease::LEASES_SCRIPT),
        });
        tokio::spawn(channel::listen(Arc::downgrade(&inner)));
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

    /// After Redis restarted (its counters may have gone back), raise its invalidation
    /// counters to at least what this process has seen, so a write fetched before the
    /// restart can never pass the check again.
    pub(crate) async fn restore_generation(&self) -> Result<(), StoreError> {
        let floor = token_generation(self.inner.generation.load(Ordering::Relaxed));
        match self.inner.layout {
            Layout::Single => {
                let mut invocation = self.inner.restore_single_script.prepare_invoke();
                invocation
                    .key(CENTRAL_GENERATION)
                    .key(WIDE_GENERATION)
                    .key(EPOCH)
                    .arg(floor);
                let (epoch, generation) = self
                    .invoke::<(u64, u64)>(invocation, self.inner.scan_deadline)
                    .await?;
                self.set_token(epoch, generation);
            }
            Layout::Cluster => {
                let mut keys = vec![CENTRAL_GENERATION.to_owned()];
                keys.extend(self.inner.layout.bucket_generation_keys());
                let raised = try_join_all(keys.iter().map(|key| {
                    let mut invocation = self.inner.raise_script.prepare_invoke();
                    invocation.key(key).arg(floor);
                    self.invoke::<u64>(invocation, self.inner.scan_deadline)
                }))
                .await?;
                self.adopt(raised.into_iter().max().unwrap_or(floor));
            }
        }
        Ok(())
    }

    /// Learn the current generation (when the channel (re)connects), so this process's
    /// writes are not refused for carrying an old one.
    pub(crate) async fn catch_up_generation(&self) {
        self.learn_generation(self.inner.scan_deadline).await;
    }

    /// Read the generation counter (and, on one Redis, the epoch) and adopt it (also before
    /// each miss fetches, see [`Store::current_write_token`]); on failure this process keeps
    /// what it knows.
    async fn learn_generation(&self, deadline: Duration) {
        match self.inner.layout {
            Layout::Single => {
                let cmd = redis::cmd("MGET")
                    .arg(EPOCH)
                    .arg(CENTRAL_GENERATION)
                    .clone();
                if let Ok((epoch, generation)) = self
                    .query::<(Option<u64>, Option<u64>)>(cmd, deadline)
                    .await
                {
                    let (epoch, generation) = (epoch.unwrap_or(0), generation.unwrap_or(0));
                    // One Redis is the authority, even when it went down (restarted empty).
                    self.set_token(epoch, generation);
                }
            }
            Layout::Cluster => {
                let cmd = redis::cmd("GET").arg(CENTRAL_GENERATION).clone();
                if let Ok(generation) = self.query::<Option<u64>>(cmd, deadline).await {
                    self.adopt(generation.unwrap_or(0));
                }
            }
        }
    }

    /// One Redis: take its epoch and generation as they are.
    fn set_token(&self, epoch: u64, generation: u64) {
        self.inner
            .generation
            .store(token(epoch, generation), Ordering::Relaxed);
    }

    /// A cluster: never go back.
    fn adopt(&self, generation: u64) {
        self.inner
            .generation
            .fetch_max(token(0, generation), Ordering::Relaxed);
    }

    /// Another process says it invalidated at `generation`. Not trusted (anyone who can
    /// `PUBLISH` can say anything): this process moves one step past what it knows, which
    /// refuses every fetch in flight here that a check against this process's own
    /// knowledge decides (the fallback's memory writes), and asks Redis for the real value.
    /// A message claiming `u64::MAX` moves the token by one, not to the end.
    pub(crate) fn heard(&self, generation: u64) {
        let now = self.inner.generation.load(Ordering::Relaxed);
        if generation <= token_generation(now) {
            return;
        }
        let next = token(token_epoch(now), token_generation(now) + 1);
        let _ = self.inner.generation.compare_exchange(
            now,
            next.max(now),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        let store = self.clone();
        tokio::spawn(async move {
            store.learn_generation(store.inner.deadline).await;
        });
    }

    /// Whether a write carrying `token` must be refused by this process's own knowledge
    /// (the fallback's memory writes): an invalidation was heard of since it was taken, or
    /// it names another data set.
    pub(crate) fn refuses_locally(&self, token: u64) -> bool {
        let now = self.inner.generation.load(Ordering::Relaxed);
        token_epoch(token) != token_epoch(now) || token_generation(token) < token_generation(now)
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
        let counters = layout.write_counter_keys(key.namespace, key.logical);
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
            .arg(PRUNE_PER_WRITE);
        let ticket = self.inner.near.as_ref().map(Near::ticket);
        let stored = self.invoke::<u8>(invocation, self.inner.deadline).await?;
        if stored == 0 {
            tracing::debug!(key = %entry_key, "not stored: an invalidation happened while it was fetched");
        } else if let (Some(near), Some(ticket)) = (&self.inner.near, ticket) {
            near.fill_entries(ticket, key, std::slice::from_ref(&entry));
        }
        Ok(())
    }

    /// Raise the generation before removing anything, so a write racing the removal is
    /// dropped: on one Redis the bucket counter of `logical` (the wide counter for `None`),
    /// in a cluster the counters of the buckets `logical` names (every bucket for `None`),
    /// each to a generation above any seen. Returns the generation drawn.
    async fn bump_generation(
        &self,
        namespace: &str,
        logical: Option<&str>,
    ) -> Result<u64, StoreError> {
        let layout = self.inner.layout;
        match layout {
            Layout::Single => {
                let counter = match logical {
                    Some(logical) => layout.generation_key(namespace, logical),
                    None => WIDE_GENERATION.to_owned(),
                };
                let mut invocation = self.inner.bump_single_script.prepare_invoke();
                invocation
                    .key(CENTRAL_GENERATION)
                    .key(EPOCH)
                    .key(counter)
                    .arg(new_epoch());
                let (epoch, generation) = self
                    .invoke::<(u64, u64)>(invocation, self.inner.deadline)
                    .await?;
                self.set_token(epoch, generation);
                Ok(generation)
            }
            Layout::Cluster => {
                let floor = token_generation(self.inner.generation.load(Ordering::Relaxed)) + 1;
                let drawn = self.bump(CENTRAL_GENERATION.to_owned(), floor).await?;
                let buckets = match logical {
                    Some(logical) => vec![layout.generation_key(namespace, logical)],
                    None => layout.bucket_generation_keys(),
                };
                let raised = try_join_all(buckets.into_iter().map(|k| self.bump(k, drawn))).await?;
                let generation = raised.into_iter().max().unwrap_or(drawn);
                self.adopt(generation);
                Ok(generation)
            }
        }
    }
    async fn bump(&self, key: String, floor: u64) -> Result<u64, StoreError> {
        let mut invocation = self.inner.bump_script.prepare_invoke();
        invocation.key(key).arg(floor);
        self.invoke(invocation, self.inner.deadline).await
    }

    /// Tell other processes, after the entries are gone from Redis: this process's near
    /// cache first, then the channel, then wait for other processes' near-cache leases
    /// (see `near.rs`).
    async fn publish(
        &self,
        namespace: &str,
        generation: u64,
        invalidation: Invalidation,
    ) -> Result<(), StoreError> {
        if let Some(near) = &self.inner.near {
            near.apply(namespace, &invalidation);
        }
        let message = Message {
            origin: self.inner.origin,
            generation,
            namespace: namespace.to_owned(),
            invalidation,
        };
        let payload = serde_json::to_string(&message).expect("message serialises");
        let cmd = redis::cmd("PUBLISH").arg(CHANNEL).arg(payload).clone();
        let published = self.query::<i64>(cmd, self.inner.deadline).await;
        self.await_leases(published.err(), std::time::Instant::now())
            .await
    }

    /// `SCAN MATCH` + `UNLINK` of entry keys of `namespace` (and their expiry sets) in
    /// batches on every primary; returns how many entries were removed.
    async fn unlink_matching(&self, namespace: &str, pattern: &str) -> Result<u64, StoreError> {
        self.on_matching(namespace, pattern, None).await
    }

    /// `UNLINK` entry keys of `namespace` and their expiry sets; returns how many entries
    /// were removed.
    async fn unlink_entries(&self, namespace: &str, keys: &[Vec<u8>]) -> Result<u64, StoreError> {
        let removed = self.unlink(keys).await?;
        let layout = self.inner.layout;
        let expiry: Vec<Vec<u8>> = keys
            .iter()
            .filter_map(|k| layout.expiry_of(namespace, k))
            .collect();
        if !expiry.is_empty() {
            self.unlink(&expiry).await?;
        }
        Ok(removed)
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

    /// Walk the entry keys of `namespace` matching `pattern` on every primary, batch by
    /// batch: `UNLINK` them (and their expiry sets), or with `soft`, mark them
    /// soft-invalidated. Returns how many were removed or marked.
    async fn on_matching(
        &self,
        namespace: &str,
        pattern: &str,
        soft: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        self.on_matching_keys(pattern, |keys| async move {
            match soft {
                None => self.unlink_entries(namespace, &keys).await,
                Some(mark) => self.mark_soft(&keys, mark).await,
            }
        })
        .await
    }

    /// Walk the keys matching `pattern` on every primary, handing each batch to `each`;
    /// returns the sum of what it returned.
    async fn on_matching_keys<F, Fut>(&self, pattern: &str, each: F) -> Result<u64, StoreError>
    where
        F: Fn(Vec<Vec<u8>>) -> Fut,
        Fut: std::future::Future<Output = Result<u64, StoreError>>,
    {
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
                    removed += each(keys).await?;
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
                let generation = self.bump_generation(namespace, Some(literal)).await?;
                let cmd = redis::cmd("UNLINK")
                    .arg(layout.entry_key(namespace, literal))
                    .clone();
                let removed = self.query(cmd, self.inner.deadline).await?;
                let cmd = redis::cmd("UNLINK")
                    .arg(layout.expiry_key(namespace, literal))
                    .clone();
                let _: u64 = self.query(cmd, self.inner.deadline).await?;
                (generation, removed)
            }
            None => {
                let generation = self.bump_generation(namespace, None).await?;
                let scan = layout.entry_scan(namespace, pattern.as_str());
                (generation, self.unlink_matching(namespace, &scan).await?)
            }
        };
        let (generation, removed) = removed;
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await?;
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
        let generation = self.bump_generation(namespace, pattern.literal()).await?;
        let mark = soft::mark(generation, crate::clock::now_millis());
        let marked = match pattern.literal() {
            Some(literal) => {
                let key = layout.entry_key(namespace, literal).into_bytes();
                self.mark_soft(&[key], &mark).await?
            }
            None => {
                let scan = layout.entry_scan(namespace, pattern.as_str());
                self.on_matching(namespace, &scan, Some(&mark)).await?
            }
        };
        // Other processes drop their local copies (hard: the safe side) and ban fetches.
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await?;
        Ok(marked)
    }

    async fn invalidate_by_tag(&self, namespace: &str, tag: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation(namespace, None).await?;
        let deadline = self.inner.scan_deadline;
        let mut removed = 0;
        for tag_key in self.inner.layout.tag_keys(namespace, tag) {
            let cmd = redis::cmd("SMEMBERS").arg(&tag_key).clone();
            let members: Vec<Vec<u8>> = self.query(cmd, deadline).await?;
            for batch in members.chunks(SCAN_COUNT) {
                removed += self.unlink_entries(namespace, batch).await?;
            }
            let cmd = redis::cmd("UNLINK").arg(&tag_key).clone();
            let _: u64 = self.query(cmd, self.inner.deadline).await?;
        }
        self.publish(namespace, generation, Invalidation::Tag(tag.to_owned()))
            .await?;
        Ok(removed)
    }

    async fn invalidate_namespace(&self, namespace: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation(namespace, None).await?;
        let layout = self.inner.layout;
        let removed = self
            .unlink_matching(namespace, &layout.entry_scan(namespace, "*"))
            .await?;
        self.on_matching_keys(&layout.tag_scan(namespace), |keys| async move {
            self.unlink(&keys).await
        })
        .await?;
        self.publish(namespace, generation, Invalidation::All)
            .await?;
        Ok(removed)
    }
}

/// Connection trouble is "unavailable"; anything Redis answered with is not.
fn classify(error: RedisError) -> StoreError {
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
        self.put_checked(key, entry, self.write_token())
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        let invalidation = || Invalidation::Pattern(pattern.as_str().to_owned());
        Box::pin(self.near_on_failure(
            namespace,
            invalidation,
            self.invalidate_pattern(namespace, pattern),
        ))
    }

    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a Pattern,
    ) -> StoreFuture<'a, u64> {
        let invalidation = || Invalidation::Pattern(pattern.as_str().to_owned());
        let soft = self.invalidate_pattern_soft(namespace, pattern);
        Box::pin(self.near_on_failure(namespace, invalidation, soft))
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        let invalidation = || Invalidation::Tag(tag.to_owned());
        Box::pin(self.near_on_failure(
            namespace,
            invalidation,
            self.invalidate_by_tag(namespace, tag),
        ))
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        let invalidation = || Invalidation::All;
        Box::pin(self.near_on_failure(
            namespace,
            invalidation,
            self.invalidate_namespace(namespace),
        ))
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
    ) -> StoreFuture<'a, ()> {
        Box::pin(self.put_entry(key, entry, token))
    }

    fn write_token(&self) -> u64 {
        self.inner.generation.load(Ordering::Relaxed)
    }

    fn try_get_now(&self, key: StoreKey<'_>) -> Option<Option<Variants>> {
        // Only a near-cache hit answers at once; anything else asks Redis.
        self.near_get_now(key).map(Some)
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
