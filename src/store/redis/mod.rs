//! [`RedisStore`]: entries in Redis, shared by every process that points at it (see the
//! type's docs for what it guarantees).
//!
//! The store is built from parts that each own their state, held together in `Inner`:
//!
//! | part | file | owns |
//! |---|---|---|
//! | `Calls` | `call.rs` | the connections, deadlines, durability and error sink: every Redis call |
//! | `Tokens` | `tokens.rs` | the write token, the claimed floor, the order answers are adopted in |
//! | `Generations` | `generation.rs` | the scripts that move the invalidation counters, the bucket secrets |
//! | `Entries` | `entries.rs` | the key layout, the write/touch/soft scripts, the decode memo, `Vary` names, the size limit |
//! | `Channel` | `channel.rs` | the subscription, this process's origin, the invalidation listener |
//! | `Leases` | `lease.rs` | acknowledgements awaited, the longest lease seen, the lease-set script |
//! | `Fleet` | `fleet.rs` | the fleet-wide flight's lease and scripts |
//! | `Near` | `near.rs` | the near cache (L1), when on |
//! | `Background` | `../background.rs` | the thread and runtime the store's own tasks run on |
//!
//! A rule that needs one part's state is a method of that part, and is tested with it
//! alone (the token's ordering, a message's parse, a call's deadline). What needs several
//! (a read fenced by the near cache's epoch, an invalidation that bumps, removes, publishes
//! and waits) is a `RedisStore` method composing them, in the file of the part it is
//! mostly about; `invalidate.rs` holds the invalidations. A handle is `Inner` plus the
//! lane its calls take and whether its invalidations wait for replicas.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::Script;

use super::background::Background;
use super::{
    Backend, Coordination, FleetEnd, FleetLease, FleetTurn, Invalidation, InvalidationListener,
    Primary, Source, Store, StoreError, StoreFuture, StoreKey, StoreStats, VariantRead, Variants,
};
use crate::entry::Entry;
use crate::pattern::Pattern;

mod ack;
mod builder;
mod call;
mod channel;
mod codec;
mod connection;
mod durable;
mod entries;
mod fleet;
mod generation;
mod invalidate;
mod lane;
mod layout;
mod lease;
mod maxmemory;
mod memo;
mod near;
mod replies;
mod scripts;
mod secret;
mod sentinel;
mod soft;
mod tokens;
mod variants;

pub use builder::RedisStoreBuilder;
use builder::{Target, DEFAULT_FLEET_LEASE};
use call::{classify, Calls};
use channel::Channel;
use connection::{Connection, Subscriber, Timeouts};
use durable::Durability;
use entries::Entries;
use generation::*;
use invalidate::Removal;
use lane::Lane;
use layout::{Layout, CENTRAL_GENERATION, EPOCH, WIDE_GENERATION};
use near::Near;
use scripts::*;
use sentinel::SentinelLink;
use tokens::{token_generation, Tokens};

const SCAN_COUNT: usize = 1000;

/// The longest TTL a value gets in Redis: 2^31 − 1 seconds (about 68 years). A longer
/// `max-age` is clamped to it before it reaches Redis.
pub(crate) const MAX_TTL_MS: u64 = ((1u64 << 31) - 1) * 1000;

/// A [`Store`] in Redis. Cheap to clone.
///
/// [`RedisStore`]: entries in Redis, shared by every process that points at it — one
/// Redis server, the primary Redis Sentinel names (followed through failovers, see
/// `sentinel.rs`), or a Redis Cluster. An invalidation returns once a replica has it
/// (`durable.rs`).
///
/// `layout.rs` names the keys. On one Redis, for namespace `ns` and logical key `L`, the
/// entry is the hash `ns:k:L`: each [`Vary`] variant is a field of its own (its encoded
/// entry, see `codec.rs`, after a header with the generation it was fetched under and a
/// soft invalidation's mark, see `soft.rs`), filed in a small index per variant of the key
/// (`variants.rs`). A hit is one `HMGET` of the index and the one value it serves, one
/// round trip; a write sends only its own value. Values above
/// [`max_value_bytes`](RedisStoreBuilder::max_value_bytes) are not stored.
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
    /// The connection this handle's calls use (invalidations run on their own).
    lane: Lane,
    /// Whether this handle's invalidations wait for replicas (a replay waits once, at its
    /// end, instead: see `durable.rs`).
    waits: bool,
}

pub(crate) struct Inner {
    /// The connections and deadlines every call goes through (see `call.rs`).
    calls: Calls,
    /// The write token this process holds (see `tokens.rs`).
    tokens: Tokens,
    /// What moves the invalidation counters in Redis (see `generation.rs`).
    generations: Generations,
    /// How entries are named, encoded, read and written (see `entries.rs`).
    entries: Entries,
    /// Where other processes' invalidations are heard, and whom they are told to (see
    /// `channel.rs`).
    channel: Channel,
    /// What an invalidation waits for other processes' near caches with (see `lease.rs`).
    leases: lease::Leases,
    /// Fleet-wide single flight (see `fleet.rs`).
    fleet: fleet::Fleet,
    /// The near cache, when on (see `near.rs`).
    near: Option<Near>,
    /// The thread the tasks that keep the store alive run on (see `store/background.rs`).
    background: Background,
}

impl RedisStore {
    /// A builder for the Redis at `url` (`redis://[:password@]host:port/db`).
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Single(url.into()))
    }

    /// A builder for the Redis Cluster that `seeds` belong to (`redis://[:password@]host:port`,
    /// any nodes of it; the rest are discovered). Keys are spread over the primaries in hash
    /// tagged buckets (see the type docs).
    pub fn cluster<S: Into<String>>(seeds: impl IntoIterator<Item = S>) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Cluster(seeds.into_iter().map(Into::into).collect()))
    }

    /// A builder for the primary that Redis Sentinel names `master`, found through
    /// `sentinels` (`redis://host:port` URLs, with the sentinels' password if they have
    /// one) and followed when it moves (see `sentinel.rs`). The primary's own password and
    /// database are [`primary_password`](RedisStoreBuilder::primary_password) and
    /// [`primary_db`](RedisStoreBuilder::primary_db).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_response_cache::StoreError> {
    /// use tower_response_cache::RedisStore;
    ///
    /// let redis = RedisStore::sentinel(
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    ///     "cache",
    /// )
    /// .primary_password("secret")
    /// .build()?;
    /// # let _ = redis; Ok(()) }
    /// ```
    pub fn sentinel<S: Into<String>>(
        sentinels: impl IntoIterator<Item = S>,
        master: impl Into<String>,
    ) -> RedisStoreBuilder {
        RedisStoreBuilder::new(Target::Sentinel {
            sentinels: sentinels.into_iter().map(Into::into).collect(),
            master: master.into(),
            password: None,
            db: 0,
        })
    }

    /// A handle on `inner` for requests.
    pub(crate) fn from_inner(inner: Arc<Inner>) -> RedisStore {
        RedisStore {
            inner,
            lane: Lane::Data,
            waits: true,
        }
    }

    /// A handle on `inner` for the store's own tasks: its calls go on their lane (see
    /// [`Lane::Background`]), whose connection is driven on the store's thread.
    pub(crate) fn for_tasks(inner: Arc<Inner>) -> RedisStore {
        RedisStore {
            lane: Lane::Background,
            ..RedisStore::from_inner(inner)
        }
    }

    /// A call on this handle's lane (see `call.rs`).
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        self.inner.calls.query(self.lane, cmd, deadline).await
    }

    /// A script call on this handle's lane (see `call.rs`).
    pub(super) async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        self.inner
            .calls
            .invoke(self.lane, invocation, deadline)
            .await
    }

    /// A call to one primary on this handle's lane (see `call.rs`).
    pub(super) async fn query_node<T: redis::FromRedisValue>(
        &self,
        node: &connection::Node,
        cmd: redis::Cmd,
        deadline: Duration,
    ) -> Result<T, StoreError> {
        self.inner
            .calls
            .query_node(self.lane, node, cmd, deadline)
            .await
    }

    /// Every primary, as this handle's connection sees them.
    pub(super) async fn primaries(
        &self,
        deadline: Duration,
    ) -> Result<Vec<connection::Node>, StoreError> {
        self.inner.calls.primaries(self.lane, deadline).await
    }

    /// Send the outcomes of background calls to `sink` (the fallback store's failure count).
    pub(crate) fn set_outcome_sink(&self, sink: crate::store::OutcomeSink) {
        self.inner.calls.set_outcome_sink(sink);
    }

    /// Whether a write carrying `token` must be refused by this process's own knowledge
    /// (see [`Tokens::refuses_locally`]).
    pub(crate) fn refuses_locally(&self, token: u64) -> bool {
        self.inner.tokens.refuses_locally(token)
    }

    /// Whether this store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.layout() == Layout::Cluster
    }

    /// How keys are named on this Redis (see `layout.rs`).
    pub(super) fn layout(&self) -> Layout {
        self.inner.entries.layout
    }

    /// `PING` within the deadline.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self
            .query(redis::cmd("PING"), self.inner.calls.deadline)
            .await?;
        Ok(())
    }

    /// The server's `run_id` (every primary's, in a cluster): it changes when Redis restarts.
    pub(crate) async fn run_id(&self) -> Result<String, StoreError> {
        let nodes = self.primaries(self.inner.calls.deadline).await?;
        let mut ids = Vec::with_capacity(nodes.len());
        for node in &nodes {
            let cmd = redis::cmd("INFO").arg("server").clone();
            let info: String = self
                .query_node(node, cmd, self.inner.calls.deadline)
                .await?;
            let id = info
                .lines()
                .find_map(|l| l.strip_prefix("run_id:"))
                .unwrap_or_default()
                .trim();
            ids.push(id.to_owned());
        }
        Ok(ids.join(","))
    }
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
        self.add_stats(StoreStats::default())
    }

    fn coordination(&self) -> Option<&dyn Coordination> {
        Some(self)
    }
}

impl Coordination for RedisStore {
    fn get_for<'a>(
        &'a self,
        key: StoreKey<'a>,
        identity: &'a [u8],
        headers: &'a http::HeaderMap,
    ) -> StoreFuture<'a, VariantRead> {
        Box::pin(self.get_for_request(key, identity, headers))
    }

    fn put_checked<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<Entry>,
        token: u64,
    ) -> StoreFuture<'a, bool> {
        Box::pin(self.put_entry(key, entry, token))
    }

    fn write_token(&self) -> u64 {
        self.inner.tokens.current()
    }

    fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> Option<Source> {
        // Only the near cache answers at once; anything else asks Redis.
        self.near_read_now(key, read).then_some(Source::Near)
    }

    fn checks_remote_invalidations(&self) -> bool {
        true
    }

    fn fetched_before(&self, token: u64, generation: u64) -> bool {
        self.inner.tokens.predates(token, generation)
    }

    fn current_write_token(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            self.learn_generation(self.inner.calls.deadline).await;
            Ok(self.write_token())
        })
    }

    fn set_listener(&self, listener: InvalidationListener) {
        self.inner.channel.set_listener(listener);
    }

    fn fleet_turn<'a>(
        &'a self,
        namespace: &'a str,
        logical: &'a str,
        flight: &'a [u8],
    ) -> StoreFuture<'a, FleetTurn> {
        Box::pin(self.take_fleet_turn(namespace, logical, flight))
    }

    fn end_fleet_turn(&self, lease: FleetLease, end: FleetEnd) {
        let pass = self.inner.fleet.lease().unwrap_or(DEFAULT_FLEET_LEASE);
        self.hand_back_fleet_turn(lease, end, pass);
    }
}

impl Primary for RedisStore {
    fn run_id(&self) -> StoreFuture<'_, String> {
        Box::pin(RedisStore::run_id(self))
    }

    fn for_tasks(&self) -> Self {
        RedisStore {
            lane: Lane::Background,
            ..self.clone()
        }
    }

    fn reconnect(&self) {
        for lane in [Lane::Data, Lane::Invalidations] {
            self.inner.calls.connection(lane).renew();
        }
    }

    fn set_outcome_sink(&self, sink: crate::store::OutcomeSink) {
        RedisStore::set_outcome_sink(self, sink);
    }

    fn restore_generation(&self) -> StoreFuture<'_, ()> {
        Box::pin(RedisStore::restore_generation(self))
    }

    fn unwaited(&self) -> Self {
        RedisStore::unwaited(self)
    }

    fn wait_for_replicas(&self) -> StoreFuture<'_, ()> {
        Box::pin(RedisStore::wait_for_replicas(self))
    }

    fn refuses_locally(&self, token: u64) -> bool {
        RedisStore::refuses_locally(self, token)
    }

    fn add_stats(&self, stats: StoreStats) -> StoreStats {
        let entries = &self.inner.entries;
        self.near_stats(StoreStats {
            admissions_refused: stats.admissions_refused + entries.refused_large(),
            reply_budget_full: stats.reply_budget_full + entries.replies.full(),
            ..stats
        })
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("layout", &self.layout())
            .field("deadline", &self.inner.calls.deadline)
            .field("generation", &self.inner.tokens.current())
            .finish_non_exhaustive()
    }
}
