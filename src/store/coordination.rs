//! [`Coordination`]: what the built-in stores and the handle agree on beyond [`Store`]:
//! answers without waiting, write tokens a shared store checks itself, and other
//! processes' invalidations. Sealed: its rules are the ban semantics' and the handle relies
//! on them, so no other store implements it (they get the handle's local bans, which is
//! right for a store only one process uses).

use std::sync::Arc;

use super::{InvalidationListener, Source, Store, StoreFuture, StoreKey, Variants};

/// Whose turn it is to fetch a key, fleet-wide (see
/// [`Coordination::fleet_turn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetTurn {
    /// Fetch it: this process holds the flight's lease (hand it back with
    /// [`Coordination::end_fleet_turn`]), or no fleet-wide flight applies (`None`: a local
    /// store, the feature off, or Redis not answering).
    Lead(Option<FleetLease>),
    /// Another process is fetching it: wait for its entry.
    Follow,
    /// Another process found its answer cannot be stored: fetch alone, without waiting.
    Pass,
}

/// A fleet-wide flight's lease, held by the process fetching its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetLease {
    pub(crate) key: String,
    pub(crate) token: String,
}

/// How a fleet-wide flight ended (see [`Coordination::end_fleet_turn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FleetEnd {
    /// The entry is stored: the followers find it.
    Stored,
    /// The answer cannot be stored: the followers fetch alone for a while.
    Unstorable,
    /// The fetch gave up (or its write was refused): one follower takes the turn.
    Abandoned,
}
use crate::entry::Entry;

/// What [`Coordination::get_for`] found for one request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum VariantRead {
    /// Entries that may answer the request (a store may return more than the one that
    /// does; the handle picks by identity and `Vary` values), and where they were read.
    Variants(Variants, Source),
    /// None answers it, but the key holds variants for other values of these headers.
    OtherVariants(Vec<http::HeaderName>),
    /// Nothing under the key.
    Missing,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::store::MemoryStore {}
    #[cfg(feature = "redis")]
    impl Sealed for crate::store::RedisStore {}
    #[cfg(feature = "redis")]
    impl<P: crate::store::Primary> Sealed for crate::store::FallbackStore<P> {}
}

/// The coordination protocol of the built-in stores (sealed; see the module docs).
/// Public so that tools and tests can drive a store the way the handle does.
pub trait Coordination: sealed::Sealed + Store {
    /// [`get`](Store::get) for one request, of this identity (host, query, keyed headers,
    /// as the key builds it) and these headers: a store may read only what can answer it
    /// (Redis reads one `Vary` variant, not every one). The default asks `get`.
    fn get_for<'a>(
        &'a self,
        key: StoreKey<'a>,
        identity: &'a [u8],
        headers: &'a http::HeaderMap,
    ) -> StoreFuture<'a, VariantRead> {
        let _ = (identity, headers);
        let read = self.get(key);
        Box::pin(async move {
            Ok(match read.await? {
                Some(variants) => VariantRead::Variants(variants, Source::Store),
                None => VariantRead::Missing,
            })
        })
    }

    /// Answer [`get`](Store::get) without waiting, when the store can (process memory),
    /// by lending the variants stored under `key` to `read` (an empty slice: nothing is
    /// stored); returns where they were read. `None` means "ask `get`", and `read` was not
    /// called. The layer answers memory hits in `read`: no future, and no reference count
    /// taken on the way. `read` runs under the store's read lock for `key`: it must not
    /// call into the store.
    fn read_now(&self, key: StoreKey<'_>, read: &mut dyn FnMut(&[Arc<Entry>])) -> Option<Source> {
        let _ = (key, read);
        None
    }

    /// Store `entry` under `key` unless another process invalidated since `token` (what
    /// [`write_token`](Coordination::write_token) or
    /// [`current_write_token`](Coordination::current_write_token) returned when the
    /// request began). `Ok(false)`: refused (an invalidation since `token`, or an entry
    /// too large for the store), and nothing was written.
    fn put_checked<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<Entry>,
        token: u64,
    ) -> StoreFuture<'a, bool>;

    /// A token naming the store's invalidation state as this process last heard of it.
    /// Local stores return 0.
    fn write_token(&self) -> u64 {
        0
    }

    /// [`write_token`](Coordination::write_token) as the store's authority has it now: a
    /// shared store asks (one round trip, on misses only). A fetch that begins after
    /// another process's invalidation is then not refused for carrying a token this process
    /// had not caught up with yet.
    fn current_write_token(&self) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(Ok(self.write_token())))
    }

    /// Whether a fetch that took `token` (from
    /// [`current_write_token`](Coordination::current_write_token) or
    /// [`write_token`](Coordination::write_token)) began before the invalidation another
    /// process made at `generation` (a [`StoreEvent::Remote`](super::StoreEvent::Remote)):
    /// its answer must then not reach a request that arrives after that invalidation is
    /// heard. The default says yes to every fetch.
    fn fetched_before(&self, token: u64, generation: u64) -> bool {
        let _ = (token, generation);
        true
    }

    /// Whether [`put_checked`](Coordination::put_checked) itself refuses a write whose token
    /// is older than an invalidation made by another process (Redis's write script does).
    /// Then the handle does not also ban in-flight fetches when another process's
    /// invalidation is heard: that message may arrive after a fetch that began after the
    /// invalidation, and the ban would throw a good answer away.
    fn checks_remote_invalidations(&self) -> bool {
        false
    }

    /// Register what to call when another process invalidates through this store (a
    /// shared store hears of it, e.g. by Redis pub/sub). Local stores never call it.
    fn set_listener(&self, listener: InvalidationListener) {
        let _ = listener;
    }

    /// Take the turn to fetch the flight `flight` of `logical` for the whole fleet of
    /// processes sharing the store, or learn that another process has it. Local stores
    /// (and a shared one with the feature off) answer `Lead(None)`.
    fn fleet_turn<'a>(
        &'a self,
        namespace: &'a str,
        logical: &'a str,
        flight: &'a [u8],
    ) -> StoreFuture<'a, FleetTurn> {
        let _ = (namespace, logical, flight);
        Box::pin(std::future::ready(Ok(FleetTurn::Lead(None))))
    }

    /// Hand back a fleet-wide flight's lease once its entry is stored (or could not be):
    /// off the request path, never failing it.
    fn end_fleet_turn(&self, lease: FleetLease, end: FleetEnd) {
        let _ = (lease, end);
    }
}
