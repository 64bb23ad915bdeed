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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{AGE, CONTENT_LENGTH};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::clock;
use crate::headers::{CACHE_STATUS, X_CACHE};

const MAGIC: &[u8; 4] = b"TRC\x00";
/// The format version; bytes of any other version read as a miss.
const VERSION: u8 = 4;
/// Most header (or trailer) fields a decoded entry may have: a forged count must not drive
/// `HeaderMap` past its capacity (which panics) or allocate without bound.
const MAX_FIELDS: u32 = 1024;
/// Fixed per-entry overhead counted against a memory budget: the struct itself behind its
/// `Arc` (456 + 16 bytes on 64-bit targets; a store adds its own slot costs).
const OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>() + 16;

/// A cached response: status, headers, body, when it was stored and for how long it is fresh.
pub struct Entry {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at_ms: u64,
    ttl: Duration,
    /// How long after expiry the entry may still be served while it is refreshed.
    stale_while_revalidate: Duration,
    /// How long after expiry the entry may still be served when the origin fails.
    stale_if_error: Duration,
    /// How long after expiry the entry is kept to be validated upstream (it has a
    /// validator the origin can check), served only after a `304`.
    validation_window: Duration,
    tags: Vec<String>,
    /// The exact request inputs besides the logical key this entry answers (host, query,
    /// keyed headers; for gRPC the message): compared on every hit, so a hash collision
    /// of the store's index can never answer another request.
    identity: Bytes,
    vary: Vary,
    /// Trailers sent after the body (gRPC puts its status there); `None` for plain HTTP.
    trailers: Option<HeaderMap>,
    /// Coarse last-access time (seconds on [`clock`]), for the memory store's eviction.
    last_access: AtomicU64,
    /// What a full answer's headers start from; built at the first answer. See
    /// [`answer_headers`](Entry::answer_headers).
    answer_headers: OnceLock<HeaderMap>,
}

/// The request headers a response varies on and their values in the request that
/// produced it (as [`key::vary_values`](crate::key::vary_values) writes them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vary {
    pub(crate) names: Vec<HeaderName>,
    pub(crate) values: Bytes,
}

/// Why bytes could not be decoded into an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    reason: &'static str,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a cache entry: {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}

fn bad(reason: &'static str) -> DecodeError {
    DecodeError { reason }
}

impl Entry {
    /// A new entry stored now, fresh for `ttl`.
    pub fn new(status: StatusCode, headers: HeaderMap, body: Bytes, ttl: Duration) -> Self {
        let now = clock::now_millis();
        Entry {
            status,
            headers,
            body,
            stored_at_ms: now,
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            validation_window: Duration::ZERO,
            tags: Vec::new(),
            identity: Bytes::new(),
            vary: Vary::default(),
            trailers: None,
            last_access: AtomicU64::new(now / 1000),
            answer_headers: OnceLock::new(),
        }
    }

    /// The response was already `age` old when it arrived (its `Age`, or its `Date`'s
    /// distance): it counts in the `Age` answers carry, its expiry stays where it is.
    pub(crate) fn with_initial_age(mut self, age: Duration) -> Self {
        let age_ms = millis(age).min(self.stored_at_ms);
        self.stored_at_ms -= age_ms;
        self.ttl = self.ttl.saturating_add(Duration::from_millis(age_ms));
        self
    }

    /// This entry freshened by a `304 Not Modified` (RFC 9111 §4.3.4): the same body,
    /// tags and variant, `headers` (the stored ones updated from the 304's), fresh for
    /// `ttl` from now.
    pub(crate) fn freshened(&self, headers: HeaderMap, ttl: Duration) -> Entry {
        Entry::new(self.status, headers, self.body.clone(), ttl)
            .with_stale(self.stale_while_revalidate, self.stale_if_error)
            .with_validation_window(validation_window(ttl))
            .with_tags(self.tags.clone())
            .with_vary(self.vary.clone())
            .with_identity(self.identity.clone())
    }

    /// Keep the entry `window` after expiry to validate it upstream (see the field).
    pub(crate) fn with_validation_window(mut self, window: Duration) -> Self {
        self.validation_window = window;
        self
    }

    /// Whether the entry is past its freshness and stale windows, kept only to be
    /// validated upstream.
    pub(crate) fn within_validation_window(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .expires_at_ms()
                .saturating_add(millis(self.validation_window))
    }

    /// Attach invalidation tags (from the `Cache-Tag` response header).
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// Allow serving the entry stale: `while_revalidate` after expiry while one background
    /// request refreshes it, `if_error` after expiry when the origin fails.
    pub fn with_stale(mut self, while_revalidate: Duration, if_error: Duration) -> Self {
        self.stale_while_revalidate = while_revalidate;
        self.stale_if_error = if_error;
        self
    }

    /// Attach trailers, replayed after the body on a hit (a gRPC call's `grpc-status`).
    pub fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.trailers = Some(trailers);
        self
    }

    pub(crate) fn with_vary(mut self, vary: Vary) -> Self {
        self.vary = vary;
        self
    }

    pub(crate) fn with_identity(mut self, identity: Bytes) -> Self {
        self.identity = identity;
        self
    }

    /// The exact request inputs this entry answers (see the field).
    pub(crate) fn identity(&self) -> &[u8] {
        &self.identity
    }

    /// Whether `other` answers exactly the requests this entry answers (then it replaces it).
    pub(crate) fn same_variant(&self, other: &Entry) -> bool {
        self.identity == other.identity && self.vary == other.vary
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored response headers (without the cache's own headers).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The response body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The trailers sent after the body, if the response had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Tags the entry can be invalidated by.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// How long the entry is fresh after it was stored.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A copy whose TTL is at most `cap` (bodies are shared, not copied).
    pub(crate) fn capped(&self, cap: Duration) -> Entry {
        Entry {
            status: self.status,
            headers: self.headers.clone(),
            body: self.body.clone(),
            stored_at_ms: self.stored_at_ms,
            ttl: self.ttl.min(cap),
            stale_while_revalidate: self.stale_while_revalidate.min(cap),
            stale_if_error: self.stale_if_error.min(cap),
            validation_window: self.validation_window.min(cap),
            tags: self.tags.clone(),
            identity: self.identity.clone(),
            vary: self.vary.clone(),
            trailers: self.trailers.clone(),
            last_access: AtomicU64::new(self.last_access_secs()),
            answer_headers: OnceLock::new(),
        }
    }

    /// The headers a full answer from this entry starts from: the stored ones, its
    /// `Content-Length` (but for a 204), and slots for the `Age`, `Cache-Status` and
    /// `X-Cache` each answer sets. Built once, at the first answer: a hit clones a map that
    /// already has room for what it adds, instead of growing a copy of the stored one.
    pub(crate) fn answer_headers(&self) -> &HeaderMap {
        self.answer_headers.get_or_init(|| {
            let mut headers = HeaderMap::with_capacity(self.headers.len() + 4);
            for (name, value) in &self.headers {
                headers.append(name.clone(), value.clone());
            }
            if self.status != StatusCode::NO_CONTENT && !headers.contains_key(CONTENT_LENGTH) {
                headers.insert(CONTENT_LENGTH, self.body.len().into());
            }
            for name in [AGE, CACHE_STATUS, X_CACHE] {
                headers.insert(name, HeaderValue::from_static(""));
            }
            headers
        })
    }

    pub(crate) fn vary(&self) -> &Vary {
        &self.vary
    }

    /// A copy that expired at `now_ms` but keeps its stale windows (soft invalidation).
    pub(crate) fn expired_at(&self, now_ms: u64) -> Entry {
        Entry {
            ttl: Duration::from_millis(now_ms.saturating_sub(self.stored_at_ms)),
            ..self.capped(Duration::MAX)
        }
    }

    /// Whether the entry may be served stale at `now_ms` while it is refreshed.
    pub(crate) fn within_stale_while_revalidate(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .expires_at_ms()
                .saturating_add(millis(self.stale_while_revalidate))
    }

    /// Whether the entry may be served stale at `now_ms` when the origin fails.
    pub(crate) fn within_stale_if_error(&self, now_ms: u64) -> bool {
        now_ms
            < self
                .expires_at_ms()
                .saturating_add(millis(self.stale_if_error))
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
            .stale_while_revalidate
            .max(self.stale_if_error)
            .max(self.validation_window);
        self.ttl.saturating_add(longest)
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
        self.stored_at_ms.saturating_add(millis(self.ttl))
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

    pub(crate) fn touch(&self, now_secs: u64) {
        // A relaxed store is enough: eviction only needs an approximate recency.
        if self.last_access.load(Ordering::Relaxed) != now_secs {
            self.last_access.store(now_secs, Ordering::Relaxed);
        }
    }

    pub(crate) fn last_access_secs(&self) -> u64 {
        self.last_access.load(Ordering::Relaxed)
    }

    /// Approximate bytes this entry holds in memory, counted against a byte budget: the
    /// struct, the body, the header maps as allocated (measured: a `HeaderMap` holds about
    /// 104 bytes per slot of its capacity plus its index table, whatever it holds), and the
    /// answer template built at the first hit, counted from the start so that the weight
    /// never changes while the entry is stored.
    pub fn weight(&self) -> usize {
        /// Heap bytes per slot of a `HeaderMap`'s capacity: a bucket and its index share.
        const SLOT: usize = 112;
        let map_weight = |map: &HeaderMap, capacity: usize| -> usize {
            let contents: usize = map.iter().map(|(n, v)| n.as_str().len() + v.len()).sum();
            64 + capacity * SLOT + contents
        };
        let headers = map_weight(&self.headers, self.headers.capacity());
        // `answer_headers`: a copy with room for four more (and a `Content-Length` value).
        // `HeaderMap::with_capacity(n)` rounds up: a power-of-two table, three quarters used.
        let wanted = self.headers.len() + 4;
        let raw = (wanted + wanted / 3).next_power_of_two();
        let template = map_weight(&self.headers, raw - raw / 4) + 48;
        let trailers = self
            .trailers
            .as_ref()
            .map_or(0, |t| map_weight(t, t.capacity()));
        let tags: usize = self.tags.iter().map(|t| t.len() + 24).sum();
        OVERHEAD_BYTES
            + self.body.len()
            + headers
            + template
            + trailers
            + tags
            + self.identity.len()
            + self.vary.values.len()
            + self.vary.names.len() * 32
    }

    /// Encode into the versioned byte format.
    pub fn encode(&self) -> Bytes {
        let map_len = |m: &HeaderMap| {
            m.iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 8)
                .sum::<usize>()
        };
        let estimate = 128
            + self.body.len()
            + self.identity.len()
            + self.vary.values.len()
            + self.vary.names.len() * 32
            + self.tags.iter().map(|t| t.len() + 4).sum::<usize>()
            + map_len(&self.headers)
            + self.trailers.as_ref().map_or(0, map_len);
        let mut out = BytesMut::with_capacity(estimate);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u16(self.status.as_u16());
        out.put_u64(self.stored_at_ms);
        out.put_u64(millis(self.ttl));
        out.put_u64(millis(self.stale_while_revalidate));
        out.put_u64(millis(self.stale_if_error));
        out.put_u64(millis(self.validation_window));
        put_bytes(&mut out, &self.identity);
        out.put_u32(self.vary.names.len() as u32);
        for name in &self.vary.names {
            put_bytes(&mut out, name.as_str().as_bytes());
        }
        put_bytes(&mut out, &self.vary.values);
        out.put_u32(self.tags.len() as u32);
        for tag in &self.tags {
            put_bytes(&mut out, tag.as_bytes());
        }
        put_headers(&mut out, &self.headers);
        put_bytes(&mut out, &self.body);
        // A presence byte, then the trailers like the headers.
        match &self.trailers {
            None => out.put_u8(0),
            Some(trailers) => {
                out.put_u8(1);
                put_headers(&mut out, trailers);
            }
        }
        out.freeze()
    }

    /// Decode bytes made by [`Entry::encode`]. Anything else is an error, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Entry, DecodeError> {
        Self::decode_from(bytes, None)
    }

    /// [`decode`](Entry::decode) without copying: the body and header values share `bytes`'
    /// buffer (what a Redis hit reads is decoded in place).
    pub fn decode_shared(bytes: &Bytes) -> Result<Entry, DecodeError> {
        Self::decode_from(bytes, Some(bytes))
    }

    /// Decode `bytes`; with `owner` (the `Bytes` that `bytes` is), slices share it.
    fn decode_from(bytes: &[u8], owner: Option<&Bytes>) -> Result<Entry, DecodeError> {
        let mut buf = bytes;
        if buf.len() < MAGIC.len() + 1 || &buf[..MAGIC.len()] != MAGIC {
            return Err(bad("missing magic"));
        }
        buf.advance(MAGIC.len());
        let version = buf.get_u8();
        if version != VERSION {
            return Err(bad("unknown version"));
        }
        need(buf, 2 + 8 + 8 + 8 + 8)?;
        let status = StatusCode::from_u16(buf.get_u16()).map_err(|_| bad("invalid status code"))?;
        let stored_at_ms = buf.get_u64();
        let ttl = Duration::from_millis(buf.get_u64());
        let stale_while_revalidate = Duration::from_millis(buf.get_u64());
        let stale_if_error = Duration::from_millis(buf.get_u64());
        need(buf, 8)?;
        let validation_window = Duration::from_millis(buf.get_u64());
        let identity = share(owner, get_bytes(&mut buf)?);
        let mut names = Vec::new();
        for _ in 0..get_field_count(&mut buf)? {
            let raw = get_bytes(&mut buf)?;
            names.push(HeaderName::from_bytes(raw).map_err(|_| bad("invalid vary name"))?);
        }
        let vary_values = share(owner, get_bytes(&mut buf)?);
        let mut tags = Vec::new();
        for _ in 0..get_count(&mut buf)? {
            let raw = get_bytes(&mut buf)?;
            let tag = std::str::from_utf8(raw).map_err(|_| bad("tag is not UTF-8"))?;
            tags.push(tag.to_owned());
        }
        let headers = get_headers(&mut buf, owner)?;
        let body = share(owner, get_bytes(&mut buf)?);
        need(buf, 1)?;
        let trailers = match buf.get_u8() {
            0 => None,
            1 => Some(get_headers(&mut buf, owner)?),
            _ => return Err(bad("invalid trailers flag")),
        };
        if !buf.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(Entry {
            status,
            headers,
            body,
            stored_at_ms,
            ttl,
            stale_while_revalidate,
            stale_if_error,
            validation_window,
            tags,
            identity,
            vary: Vary {
                names,
                values: vary_values,
            },
            trailers,
            last_access: AtomicU64::new(clock::now_millis() / 1000),
            answer_headers: OnceLock::new(),
        })
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

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u32(headers.len() as u32);
    for (name, value) in headers {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

/// `raw` as `Bytes`: a slice of `owner` when there is one (no copy), else a copy.
fn share(owner: Option<&Bytes>, raw: &[u8]) -> Bytes {
    match owner {
        Some(owner) => owner.slice_ref(raw),
        None => Bytes::copy_from_slice(raw),
    }
}

fn get_headers(buf: &mut &[u8], owner: Option<&Bytes>) -> Result<HeaderMap, DecodeError> {
    let count = get_field_count(buf)?;
    let mut headers = HeaderMap::with_capacity(count as usize);
    for _ in 0..count {
        let name = get_bytes(buf)?;
        let value = get_bytes(buf)?;
        let name = HeaderName::from_bytes(name).map_err(|_| bad("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(share(owner, value))
            .map_err(|_| bad("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(bad("truncated"))
    } else {
        Ok(())
    }
}

fn get_count(buf: &mut &[u8]) -> Result<u32, DecodeError> {
    need(buf, 4)?;
    let n = buf.get_u32();
    // Every counted item takes at least four bytes: a larger count is corrupt, and checking
    // here keeps a forged count from driving a huge loop.
    if (n as usize).saturating_mul(4) > buf.len() {
        return Err(bad("count exceeds the data"));
    }
    Ok(n)
}

/// A count of header fields or names, at most [`MAX_FIELDS`].
fn get_field_count(buf: &mut &[u8]) -> Result<u32, DecodeError> {
    let n = get_count(buf)?;
    if n > MAX_FIELDS {
        return Err(bad("too many fields"));
    }
    Ok(n)
}

fn get_bytes<'a>(buf: &mut &'a [u8]) -> Result<&'a [u8], DecodeError> {
    need(buf, 4)?;
    let len = buf.get_u32() as usize;
    need(buf, len)?;
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body_len", &self.body.len())
            .field("stored_at_ms", &self.stored_at_ms)
            .field("ttl", &self.ttl)
            .field("tags", &self.tags)
            .field("trailers", &self.trailers.as_ref().map(HeaderMap::len))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Entry {
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
    fn round_trip_keeps_every_field() {
        let entry = sample();
        let back = Entry::decode(&entry.encode()).unwrap();
        assert_eq!(back.status(), StatusCode::NOT_FOUND);
        assert_eq!(back.headers(), entry.headers());
        assert_eq!(back.body(), entry.body());
        assert_eq!(back.ttl(), Duration::from_secs(42));
        assert_eq!(back.stored_at_millis(), entry.stored_at_millis());
        assert_eq!(back.tags(), entry.tags());
        assert_eq!(back.retention(), Duration::from_secs(642));
        let expired = back.stored_at_millis() + 42_000;
        assert!(back.within_stale_while_revalidate(expired + 4_999));
        assert!(!back.within_stale_while_revalidate(expired + 5_000));
        assert!(back.within_stale_if_error(expired + 599_999));
        assert!(back.is_dead_at(expired + 600_000));
        assert_eq!(back.vary(), entry.vary());
        assert_eq!(back.identity(), entry.identity());
        assert!(back.same_variant(&entry));
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

    #[test]
    fn a_forged_field_count_is_an_error_not_a_panic() {
        // Tens of thousands of tiny header fields: more than HeaderMap can hold.
        let mut entry = sample().encode().to_vec();
        let mut forged = entry.split_off(0);
        forged.truncate(4 + 1 + 2 + 8 * 5);
        let field = |out: &mut Vec<u8>, bytes: &[u8]| {
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(&mut forged, b"id");
        forged.extend_from_slice(&0u32.to_be_bytes()); // vary names
        field(&mut forged, b""); // vary values
        forged.extend_from_slice(&0u32.to_be_bytes()); // tags
        let n = 40_000u32;
        forged.extend_from_slice(&n.to_be_bytes());
        for i in 0..n {
            field(&mut forged, format!("x{i}").as_bytes());
            field(&mut forged, b"");
        }
        field(&mut forged, b"body");
        forged.push(0);
        assert!(Entry::decode(&forged).is_err());
    }

    #[test]
    fn trailers_round_trip_and_count_in_the_weight() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("ok"));
        let plain = sample();
        let entry = sample().with_trailers(trailers.clone());
        assert!(entry.weight() > plain.weight());
        let back = Entry::decode(&entry.encode()).unwrap();
        assert_eq!(back.trailers(), Some(&trailers));
        assert_eq!(back.body(), entry.body());
        assert_eq!(back.headers(), entry.headers());
        // No trailers and empty trailers are told apart.
        assert_eq!(Entry::decode(&plain.encode()).unwrap().trailers(), None);
        let empty = sample().with_trailers(HeaderMap::new());
        assert_eq!(
            Entry::decode(&empty.encode()).unwrap().trailers(),
            Some(&HeaderMap::new())
        );
        assert_eq!(
            entry.capped(Duration::from_secs(1)).trailers(),
            Some(&trailers)
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        for entry in [sample(), sample().with_trailers(trailers)] {
            let bytes = entry.encode();
            for len in 0..bytes.len() {
                assert!(
                    Entry::decode(&bytes[..len]).is_err(),
                    "prefix of {len} bytes"
                );
            }
        }
    }

    #[test]
    fn foreign_bytes_are_errors() {
        assert!(Entry::decode(b"").is_err());
        assert!(Entry::decode(b"{\"json\": true}").is_err());
        let mut wrong_version = sample().encode().to_vec();
        wrong_version[4] = 99;
        assert!(Entry::decode(&wrong_version).is_err());
        let mut trailing = sample().encode().to_vec();
        trailing.push(0);
        assert!(Entry::decode(&trailing).is_err());
    }

    proptest! {
        #[test]
        fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Entry::decode(&bytes);
            let _ = Entry::decode_shared(&Bytes::from(bytes));
        }

        #[test]
        fn corrupting_any_byte_never_panics(index in 0usize..200, value in any::<u8>()) {
            let mut bytes = sample().encode().to_vec();
            let i = index % bytes.len();
            bytes[i] = value;
            let _ = Entry::decode(&bytes);
            let _ = Entry::decode_shared(&Bytes::from(bytes));
        }
    }

    #[test]
    fn shared_decoding_copies_no_body_and_agrees_with_decoding() {
        let encoded = sample().encode();
        let shared = Entry::decode_shared(&encoded).unwrap();
        let copied = Entry::decode(&encoded).unwrap();
        let range = encoded.as_ptr_range();
        assert!(
            range.contains(&shared.body().as_ptr()),
            "the body was copied out of the buffer"
        );
        assert!(!range.contains(&copied.body().as_ptr()));
        assert_eq!(shared.body(), copied.body());
        assert_eq!(shared.headers(), copied.headers());
        assert_eq!(shared.status(), copied.status());
        assert_eq!(shared.tags(), copied.tags());
    }
}
