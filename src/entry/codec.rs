//! The versioned byte format of an [`Entry`]: what Redis (or any store that keeps bytes)
//! holds. It starts with a magic and a version byte, and every count and length is checked
//! before it is trusted, so foreign or corrupt bytes decode to an error (a miss), never a
//! panic or an unbounded allocation.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::{Entry, Stored, StoredHeaders, Vary};

const MAGIC: &[u8; 4] = b"TRC\x00";
/// The format version; bytes of any other version read as a miss.
const VERSION: u8 = 4;
/// Most header (or trailer) fields a decoded entry may have: a forged count must not drive
/// `HeaderMap` past its capacity (which panics) or allocate without bound.
const MAX_FIELDS: u32 = 1024;
/// How far ahead of this process's clock another's may be when it stores an entry: a
/// storage time past it is no writer's (it would keep a forged entry fresh for ever).
const MAX_CLOCK_AHEAD_MS: u64 = 86_400_000;
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
    /// Encode into the versioned byte format.
    pub fn encode(&self) -> Bytes {
        let estimate = 128
            + self.body.len()
            + self.identity.len()
            + self.vary().values.len()
            + self.vary().names.len() * 32
            + self.tags().iter().map(|t| t.len() + 4).sum::<usize>()
            + fields_len(self.headers().iter())
            + self.trailers().map_or(0, |t| fields_len(t.iter()));
        let mut out = BytesMut::with_capacity(estimate);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u16(self.status.as_u16());
        out.put_u64(self.stored_at_ms);
        out.put_u64(self.ttl_ms);
        out.put_u64(self.stale_while_revalidate_ms);
        out.put_u64(self.stale_if_error_ms);
        out.put_u64(self.validation_window_ms);
        put_bytes(&mut out, &self.identity);
        let vary = self.vary();
        out.put_u32(vary.names.len() as u32);
        for name in &vary.names {
            put_bytes(&mut out, name.as_str().as_bytes());
        }
        put_bytes(&mut out, &vary.values);
        out.put_u32(self.tags().len() as u32);
        for tag in self.tags() {
            put_bytes(&mut out, tag.as_bytes());
        }
        put_headers(&mut out, self.headers().len(), self.headers().iter());
        put_bytes(&mut out, &self.body);
        // A presence byte, then the trailers like the headers.
        match self.trailers() {
            None => out.put_u8(0),
            Some(trailers) => {
                out.put_u8(1);
                put_headers(&mut out, trailers.len(), trailers.iter());
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
        if !is_storable_status(status) {
            return Err(bad("a status the cache never stores"));
        }
        let stored_at_ms = buf.get_u64();
        if stored_at_ms > crate::clock::now_millis().saturating_add(MAX_CLOCK_AHEAD_MS) {
            return Err(bad("stored in the future"));
        }
        let ttl_ms = buf.get_u64();
        let stale_while_revalidate_ms = buf.get_u64();
        let stale_if_error_ms = buf.get_u64();
        need(buf, 8)?;
        let validation_window_ms = buf.get_u64();
        let identity = Box::from(get_bytes(&mut buf)?);
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
        let count = get_field_count(&mut buf)?;
        let mut fields = Vec::with_capacity(count as usize);
        for _ in 0..count {
            fields.push(get_field(&mut buf, owner)?);
        }
        let headers = Stored::from_fields(fields);
        let body = share(owner, get_bytes(&mut buf)?);
        if !length_agrees(headers.view(), body.len()) {
            return Err(bad("Content-Length disagrees with the body"));
        }
        need(buf, 1)?;
        let trailers = match buf.get_u8() {
            0 => None,
            1 => Some(get_headers(&mut buf, owner)?),
            _ => return Err(bad("invalid trailers flag")),
        };
        if !buf.is_empty() {
            return Err(bad("trailing bytes"));
        }
        let entry = Entry {
            status,
            headers,
            body,
            stored_at_ms,
            ttl_ms,
            stale_while_revalidate_ms,
            stale_if_error_ms,
            validation_window_ms,
            // A soft mark is kept beside the value and applied when it is read.
            invalidated: false,
            identity,
            extras: None,
            usage: Default::default(),
        };
        let entry = entry.with_tags(tags).with_vary(Vary {
            names,
            values: vary_values,
        });
        Ok(match trailers {
            Some(trailers) => entry.with_trailers(trailers),
            None => entry,
        })
    }
}

/// A final status other than the ones never stored (`206`, `304`, `416`): a `1xx`, or a
/// code past `599`, in a stored value was not written by this crate.
fn is_storable_status(status: StatusCode) -> bool {
    (200..600).contains(&status.as_u16()) && ![206, 304, 416].contains(&status.as_u16())
}

/// Whether a `Content-Length` (if any) is one value that says the body's length: an answer
/// must never announce another length than the bytes it sends.
fn length_agrees(headers: StoredHeaders<'_>, body_len: usize) -> bool {
    let mut lengths = headers.get_all(&http::header::CONTENT_LENGTH);
    match (lengths.next(), lengths.next()) {
        (None, _) => true,
        (Some(length), None) => length.as_bytes() == body_len.to_string().as_bytes(),
        (Some(_), Some(_)) => false,
    }
}

fn put_bytes(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u32(bytes.len() as u32);
    out.put_slice(bytes);
}

/// Bytes the fields take encoded.
fn fields_len<'a>(fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>) -> usize {
    fields.map(|(n, v)| n.as_str().len() + v.len() + 8).sum()
}

fn put_headers<'a>(
    out: &mut BytesMut,
    count: usize,
    fields: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
) {
    out.put_u32(count as u32);
    for (name, value) in fields {
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
        let (name, value) = get_field(buf, owner)?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn get_field(
    buf: &mut &[u8],
    owner: Option<&Bytes>,
) -> Result<(HeaderName, HeaderValue), DecodeError> {
    let name = get_bytes(buf)?;
    let value = get_bytes(buf)?;
    let name = HeaderName::from_bytes(name).map_err(|_| bad("invalid header name"))?;
    let value = HeaderValue::from_maybe_shared(share(owner, value))
        .map_err(|_| bad("invalid header value"))?;
    Ok((name, value))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::sample;
    use proptest::prelude::*;
    use std::time::Duration;

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

    #[test]
    fn values_the_crate_never_writes_are_errors() {
        let with = |status: u16, length: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(length) = length {
                headers.insert(http::header::CONTENT_LENGTH, length.parse().unwrap());
            }
            let status = StatusCode::from_u16(status).unwrap();
            let entry = Entry::new(
                status,
                headers,
                Bytes::from_static(b"body"),
                Duration::from_secs(9),
            );
            Entry::decode(&entry.encode())
        };
        // The positive controls: what the crate writes reads back.
        assert!(with(200, Some("4")).is_ok());
        assert!(with(404, None).is_ok());
        assert!(with(599, Some("4")).is_ok());
        for status in [100, 103, 199, 206, 304, 416, 600, 777, 999] {
            assert!(with(status, Some("4")).is_err(), "status {status}");
        }
        for length in ["5", "0", "04", "4, 4", "-1", ""] {
            assert!(
                with(200, Some(length)).is_err(),
                "content-length {length:?}"
            );
        }
        let mut twice = HeaderMap::new();
        twice.append(http::header::CONTENT_LENGTH, "4".parse().unwrap());
        twice.append(http::header::CONTENT_LENGTH, "4".parse().unwrap());
        let entry = Entry::new(
            StatusCode::OK,
            twice,
            Bytes::from_static(b"body"),
            Duration::from_secs(9),
        );
        assert!(Entry::decode(&entry.encode()).is_err());
    }

    #[test]
    fn a_storage_time_past_every_writers_clock_is_an_error() {
        let stored_at = |ms: u64| {
            let mut bytes = sample().encode().to_vec();
            // Magic (4), version (1), status (2), then the storage time.
            bytes[7..15].copy_from_slice(&ms.to_be_bytes());
            Entry::decode(&bytes)
        };
        let now = crate::clock::now_millis();
        assert!(stored_at(now).is_ok());
        assert!(
            stored_at(now + 60_000).is_ok(),
            "a writer's clock a minute ahead"
        );
        assert!(stored_at(now + 2 * 86_400_000).is_err());
        assert!(stored_at(u64::MAX).is_err());
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
