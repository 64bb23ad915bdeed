//! A stored response and its versioned byte format.
//!
//! The memory store keeps [`Entry`] values behind an `Arc`, so a hit copies nothing but
//! reference counts. Stores that keep bytes (Redis) use [`Entry::encode`] and
//! [`Entry::decode`]; the format starts with a magic and a version byte so that foreign or
//! corrupt bytes under a cache key decode to an error (a miss), never a panic.
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, StatusCode};
//! use std::time::Duration;
//! use tower_response_cache::Entry;
//!
//! let entry = Entry::new(StatusCode::OK, HeaderMap::new(), Bytes::from_static(b"hi"), Duration::from_secs(60));
//! let bytes = entry.encode();
//! let back = Entry::decode(&bytes).unwrap();
//! assert_eq!(back.body(), &Bytes::from_static(b"hi"));
//! assert!(Entry::decode(b"garbage").is_err());
//! ```

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::clock;
pub(crate) use usage::{clock, Usage};

mod codec;
mod layout;
mod stored_headers;
mod usage;

pub use codec::DecodeError;
use stored_headers::Stored;
pub use stored_headers::StoredHeaders;
pub(crate) use stored_headers::MAX_STORED_VALUES;

/// Fixed per-entry overhead counted against a memory budget: the struct itself behind its
/// `Arc` (a store adds its own slot costs).
const OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>() + 16;

/// Heap bytes of one header name in a `HeaderMap` (a bucket: hash, name, value, links).
pub(crate) const BUCKET_BYTES: usize = 104;
/// Heap bytes of a second or later value of one name (value and two links).
const EXTRA_VALUE_BYTES: usize = 72;
/// Heap bytes of a slot of a `HeaderMap`'s index table (a position and a hash).
pub(crate) const INDEX_BYTES: usize = 4;
/// What the allocator keeps beside each heap block.
pub(crate) const ALLOCATION_BYTES: usize = 16;

/// A cached response: status, headers, body, when it was stored and for how long it is fresh.
pub struct Entry {
    status: StatusCode,
    /// The stored headers: their values, and the layout (names, the map answers start as)
    /// shared with entries of the same names (see `stored_headers.rs`).
    headers: Stored,
    body: Bytes,
    stored_at_ms: u64,
    /// How long it is fresh after `stored_at_ms`. (Spans are kept in milliseconds, as the
    /// byte format has them: 8 bytes where a `Duration` takes 16.)
    ttl_ms: u64,
    /// How long after expiry the entry may still be served while it is refreshed.
    stale_while_revalidate_ms: u64,
    /// How long after expiry the entry may still be served when the origin fails.
    stale_if_error_ms: u64,
    /// How long after expiry the entry is kept to be validated upstream (it has a
    /// validator the origin can check), served only after a `304`.
    validation_window_ms: u64,
    /// Stale because an invalidation said it may have changed (a soft mark), not because
    /// time passed: only a validator the origin repeats may freshen it again.
    invalidated: bool,
    /// The exact request inputs besides the logical key this entry answers (host, query,
    /// keyed headers; for gRPC the message): compared on every hit, so a hash collision
    /// of the store's index can never answer another request. A box, not `Bytes`: 16
    /// bytes inline, and never a share of a larger buffer kept alive.
    identity: Box<[u8]>,
    /// Tags, `Vary` and trailers, in one box: `None` for the many entries with none of
    /// them, which then carry 8 bytes for the three instead of 40.
    extras: Option<Box<Extras>>,
    /// Uses and the last read, for a memory store's eviction (see `store::policy`).
    usage: Usage,
}

/// What an entry that varies on nothing reads as its [`Vary`].
static NO_VARY: Vary = Vary {
    names: Vec::new(),
    values: Bytes::new(),
};

/// The parts of an entry most entries lack (see `Entry::extras`).
#[derive(Clone, Default)]
struct Extras {
    /// Tags the entry can be invalidated by (from `Cache-Tag`).
    tags: Box<[String]>,
    /// What the response varies on; [`NO_VARY`] when nothing.
    vary: Vary,
    /// Trailers sent after the body (gRPC puts its status there). Boxed: an entry with
    /// tags or a `Vary` but no trailers saves the 96 bytes of an empty `HeaderMap`.
    trailers: Option<Box<HeaderMap>>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.vary == NO_VARY && self.trailers.is_none()
    }
}

/// The request headers a response varies on and their values in the request that
/// produced it (as [`key::vary_values`](crate::key::vary_values) writes them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vary {
    pub(crate) names: Vec<HeaderName>,
    pub(crate) values: Bytes,
}

impl Entry {
    /// A new entry stored now, fresh for `ttl`.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes, ttl: Duration) -> Self {
        let now = clock::now_millis();
        Entry {
            status,
            headers: Stored::from_map(headers),
            body,
            stored_at_ms: now,
            ttl_ms: millis(ttl),
            stale_while_revalidate_ms: 0,
            stale_if_error_ms: 0,
            validation_window_ms: 0,
            invalidated: false,
            identity: Box::default(),
            extras: None,
            usage: Usage::default(),
        }
    }

    /// The response was already `age` old when it arrived (its `Age`, or its `Date`'s
    /// distance): it counts in the `Age` answers carry, its expiry stays where it is.
    pub(crate) fn with_initial_age(mut self, age: Duration) -> Self {
        let age_ms = millis(age).min(self.stored_at_ms);
        self.stored_at_ms -= age_ms;
        self.ttl_ms = self.ttl_ms.saturating_add(age_ms);
        self
    }

    /// This entry freshened by a `304 Not Modified` (RFC 9111 §4.3.4): the same body,
    /// tags and variant, `headers` (the stored ones updated from the 304's), fresh for
    /// `ttl` from now.
    pub(crate) fn freshened(&self, headers: HeaderMap, ttl: Duration) -> Entry {
        Entry::new(self.status, headers, self.body.clone(), ttl)
            .with_stale(
                Duration::from_millis(self.stale_while_revalidate_ms),
                Duration::from_millis(self.stale_if_error_ms),
            )
            .with_validation_window(validation_window(ttl))
            .with_extras(|extras| *extras = self.extras.as_deref().cloned().unwrap_or_default())
            .with_identity_bytes(self.identity.clone())
    }

    /// Keep the entry `window` after expiry to validate it upstream (see the field).
    pub(crate) fn with_validation_window(mut self, window: Duration) -> Self {
        self.validation_window_ms = millis(window);
        self
    }

    /// Whether the entry is past its freshness and stale windows, kept only to be
    /// validated upstream.
    pub(crate) fn within_validation_window(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .expires_at_ms()
                .saturating_add(self.validation_window_ms)
    }

    /// Attach invalidation tags (from the `Cache-Tag` response header).
    pub fn with_tags(self, tags: Vec<String>) -> Self {
        self.with_extras(|extras| extras.tags = tags.into_boxed_slice())
    }

    /// Allow serving the entry stale: `while_revalidate` after expiry while one background
    /// request refreshes it, `if_error` after expiry when the origin fails.
    pub fn with_stale(mut self, while_revalidate: Duration, if_error: Duration) -> Self {
        self.stale_while_revalidate_ms = millis(while_revalidate);
        self.stale_if_error_ms = millis(if_error);
        self
    }

    /// Attach trailers, replayed after the body on a hit (a gRPC call's `grpc-status`).
    pub fn with_trailers(self, trailers: HeaderMap) -> Self {
        self.with_extras(|extras| extras.trailers = Some(Box::new(trailers)))
    }

    pub(crate) fn with_vary(self, vary: Vary) -> Self {
        self.with_extras(|extras| extras.vary = vary)
    }

    /// Change the extras; the box goes when nothing is left in it.
    fn with_extras(mut self, change: impl FnOnce(&mut Extras)) -> Self {
        let mut extras = self.extras.take().map_or_else(Extras::default, |b| *b);
        change(&mut extras);
        self.extras = (!extras.is_empty()).then(|| Box::new(extras));
        self
    }

    pub(crate) fn with_identity(self, identity: Bytes) -> Self {
        self.with_identity_bytes(Box::from(&identity[..]))
    }

    fn with_identity_bytes(mut self, identity: Box<[u8]>) -> Self {
        self.identity = identity;
        self
    }

    /// The exact request inputs this entry answers (see the field).
    pub(crate) fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// Whether `other` answers exactly the requests this entry answers (then it replaces it).
    pub(crate) fn same_variant(&self, other: &Entry) -> bool {
        self.identity == other.identity && self.vary() == other.vary()
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored response headers (without the cache's own headers).
    pub fn headers(&self) -> StoredHeaders<'_> {
        self.headers.view()
    }

    /// The response body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The trailers sent after the body, if the response had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.extras.as_deref()?.trailers.as_deref()
    }

    /// Tags the entry can be invalidated by.
    pub fn tags(&self) -> &[String] {
        self.extras.as_deref().map_or(&[], |extras| &extras.tags)
    }

    /// How long the entry is fresh after it was stored.
    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms)
    }

    /// A copy whose TTL is at most `cap` (bodies are shared, not copied).
    pub(crate) fn capped(&self, cap: Duration) -> Entry {
        let cap = millis(cap);
        Entry {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            stored_at_ms: self.stored_at_ms,
            ttl_ms: self.ttl_ms.min(cap),
            stale_while_revalidate_ms: self.stale_while_revalidate_ms.min(cap),
            stale_if_error_ms: self.stale_if_error_ms.min(cap),
            validation_window_ms: self.validation_window_ms.min(cap),
            invalidated: self.invalidated,
            identity: self.identity.clone(),
            extras: self.extras.clone(),
            usage: Usage::copied(&self.usage),
        }
    }

    /// The headers of a full answer from this entry: a copy of its layout's map (see
    /// `stored_headers.rs`) with its values and the cache's own headers set to `age`,
    /// `cache_status` and `x_cache`. The copy is exact and the values go into slots, so
    /// nothing is hashed and nothing grows.
    #[inline]
    pub(crate) fn answer_headers(
        &self,
        age: HeaderValue,
        cache_status: HeaderValue,
        x_cache: HeaderValue,
    ) -> HeaderMap {
        self.headers.answer(age, cache_status, x_cache)
    }

    pub(crate) fn vary(&self) -> &Vary {
        self.extras
            .as_deref()
            .map_or(&NO_VARY, |extras| &extras.vary)
    }

    /// A copy that expired at `now_ms` but keeps its stale windows (soft invalidation).
    pub(crate) fn expired_at(&self, now_ms: u64) -> Entry {
        Entry {
            ttl_ms: now_ms.saturating_sub(self.stored_at_ms),
            invalidated: true,
            ..self.capped(Duration::MAX)
        }
    }

    /// Whether a soft invalidation made the entry stale (see [`expired_at`](Self::expired_at)).
    pub(crate) fn is_invalidated(&self) -> bool {
        self.invalidated
    }

    /// Whether the entry may be served stale at `now_ms` while it is refreshed.
    pub(crate) fn within_stale_while_revalidate(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .expires_at_ms()
                .saturating_add(self.stale_while_revalidate_ms)
    }

    /// Whether the entry may be served stale at `now_ms` when the origin fails.
    pub(crate) fn within_stale_if_error(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms().saturating_add(self.stale_if_error_ms)
    }

    /// Whether the entry is of no use any more, fresh or stale.
    pub(crate) fn is_dead_at(&self, now_ms: u64) -> bool {
        !self.within_stale_while_revalidate(now_ms)
            && !self.within_stale_if_error(now_ms)
            && !self.within_validation_window(now_ms)
    }

    /// How long the store must keep the entry: its TTL plus its longest stale window.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn retention(&self) -> Duration {
        let longest = self
            .stale_while_revalidate_ms
            .max(self.stale_if_error_ms)
            .max(self.validation_window_ms);
        Duration::from_millis(self.ttl_ms.saturating_add(longest))
    }

    /// Whole seconds since the entry expired (0 while fresh).
    pub(crate) fn stale_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.expires_at_ms()) / 1000
    }

    /// Milliseconds since the Unix epoch when the entry was stored.
    pub fn stored_at_millis(&self) -> u64 {
        self.stored_at_ms
    }

    fn expires_at_ms(&self) -> u64 {
        self.stored_at_ms.saturating_add(self.ttl_ms)
    }

    /// Whether the entry is still fresh at `now_ms`.
    pub(crate) fn is_fresh_at(&self, now_ms: u64) -> bool {
        now_ms < self.expires_at_ms()
    }

    /// Whole seconds since the entry was stored (the `Age` header).
    pub(crate) fn age_secs(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.stored_at_ms) / 1000
    }

    /// Whole seconds of freshness left (the `ttl` of `Cache-Status`).
    pub(crate) fn remaining_secs(&self, now_ms: u64) -> u64 {
        self.expires_at_ms().saturating_sub(now_ms) / 1000
    }

    /// Uses and the last read, kept for a memory store's eviction.
    pub(crate) fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Approximate bytes this entry holds in memory, counted against a byte budget: the
    /// struct, the body, the header values (their names and answer map are a layout shared
    /// with entries of the same names, charged to none of them: see `layout.rs`),
    /// trailers, tags and keys. It never changes while the entry is stored.
    pub fn weight(&self) -> usize {
        let contents = |map: &HeaderMap| -> usize {
            map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum()
        };
        // The index table has a slot for every four thirds of the capacity.
        let index = |map: &HeaderMap| map.capacity() * 4 / 3 * INDEX_BYTES;
        let extra = |map: &HeaderMap| (map.len() - map.keys_len()) * EXTRA_VALUE_BYTES;
        // Trailers are kept as they came: charged for the buckets of their whole capacity.
        let trailers = self.trailers().map_or(0, |t| {
            std::mem::size_of::<HeaderMap>()
                + ALLOCATION_BYTES
                + index(t)
                + t.capacity() * BUCKET_BYTES
                + extra(t)
                + contents(t)
        });
        let tags: usize = self.tags().iter().map(|t| t.len() + 24).sum();
        let vary = self.vary();
        let extras = self.extras.as_ref().map_or(0, |_| {
            std::mem::size_of::<Extras>()
                + ALLOCATION_BYTES
                + trailers
                + tags
                + vary.values.len()
                + vary.names.len() * 32
        });
        OVERHEAD_BYTES + self.body.len() + self.headers.weight() + self.identity.len() + extras
    }
}

/// How long an entry fresh for `ttl` is kept after expiry to be validated upstream: as
/// long again, at least a minute, at most a day.
pub(crate) fn validation_window(ttl: Duration) -> Duration {
    ttl.clamp(Duration::from_secs(60), Duration::from_secs(86_400))
}

fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("status", &self.status)
            .field("headers", &self.headers().len())
            .field("body_len", &self.body.len())
            .field("stored_at_ms", &self.stored_at_ms)
            .field("ttl", &self.ttl())
            .field("tags", &self.tags())
            .field("trailers", &self.trailers().map(HeaderMap::len))
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use http::HeaderValue;

    /// An entry with every field set.
    pub(in crate::entry) fn sample() -> Entry {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        Entry::new(
            StatusCode::NOT_FOUND,
            headers,
            Bytes::from_static(b"{\"a\":1}"),
            Duration::from_secs(42),
        )
        .with_tags(vec!["company:ABC".into(), "dashboard".into()])
        .with_stale(Duration::from_secs(5), Duration::from_secs(600))
        .with_vary(Vary {
            names: vec![HeaderName::from_static("accept-language")],
            values: Bytes::from_static(b"\0\0\0\x01\0\0\0\x02en"),
        })
        .with_identity(Bytes::from_static(b"host\xffq=1"))
    }

    #[test]
    fn entries_for_other_inputs_are_other_variants() {
        let other = sample().with_identity(Bytes::from_static(b"host\xffq=2"));
        assert!(!other.same_variant(&sample()));
        let other_vary = sample().with_vary(Vary {
            names: vec![HeaderName::from_static("accept-language")],
            values: Bytes::from_static(b"de"),
        });
        assert!(!other_vary.same_variant(&sample()));
    }
}
