//! The value under one `Vary` variant's field of an entry hash (see `variants.rs`): a
//! 24-byte header, then a count (always 1) and the [`Entry`] in its own versioned format.
//!
//! The header is three big-endian `u64`s: the generation the value was fetched under, and a
//! soft invalidation's mark (its generation and unix ms; zeros when unmarked), which the
//! soft-invalidation script rewrites in place (see `soft.rs`). A hit reads all of it with the index, in one `HMGET`.
//! Bytes that do not decode are an error (the store reads them as a miss and deletes them),
//! never a panic.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::entry::{DecodeError, Entry};
use crate::store::Variants;

/// Bytes before the variants: generation written, soft mark's generation, soft mark's ms.
pub(crate) const HEADER_LEN: usize = 24;

/// The stored value of `entry`, fetched under generation `written`, unmarked.
pub(crate) fn encode_value(entry: &Entry, written: u64) -> Bytes {
    let body = encode_variants(std::slice::from_ref(entry));
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_u64(written);
    out.put_u64(0);
    out.put_u64(0);
    out.put_slice(&body);
    out.freeze()
}

/// The variants a read must see in a stored value: decoded (sharing `raw`'s buffer), and
/// read as expired at the mark's time when a soft invalidation marked them after they were
/// fetched. A function of the bytes alone, so equal bytes may share one decoding.
pub(crate) fn decode_value(raw: &Bytes) -> Result<Variants, DecodeError> {
    if raw.len() < HEADER_LEN {
        return Err(Entry::decode(b"").unwrap_err());
    }
    let mut header = &raw[..HEADER_LEN];
    let (written, marked, marked_at_ms) = (header.get_u64(), header.get_u64(), header.get_u64());
    let variants = decode_variants(&raw.slice(HEADER_LEN..))?;
    Ok(super::soft::apply(variants, written, marked, marked_at_ms))
}

fn encode_variants(variants: &[Entry]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u32(variants.len() as u32);
    for entry in variants {
        let bytes = entry.encode();
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    }
    out.freeze()
}

/// Decode a variant set; the entries share `raw`'s buffer (a hit copies no body).
fn decode_variants(raw: &Bytes) -> Result<Variants, DecodeError> {
    let truncated = || Entry::decode(b"").unwrap_err();
    let mut rest: &[u8] = raw;
    if rest.len() < 4 {
        return Err(truncated());
    }
    let count = rest.get_u32() as usize;
    // One entry per value: anything else (an earlier version's variant list, an index read
    // as a value) is not this version's.
    if count != 1 {
        return Err(truncated());
    }
    let mut variants = Vec::with_capacity(count);
    for _ in 0..count {
        if rest.len() < 4 {
            return Err(truncated());
        }
        let len = rest.get_u32() as usize;
        if rest.len() < len {
            return Err(truncated());
        }
        let entry = raw.slice_ref(&rest[..len]);
        variants.push(Arc::new(Entry::decode_shared(&entry)?));
        rest.advance(len);
    }
    if !rest.is_empty() {
        return Err(truncated());
    }
    Ok(variants.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    proptest! {
        #[test]
        fn decoding_random_variant_sets_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_variants(&Bytes::from(bytes));
        }
    }

    #[test]
    fn values_carry_their_generation_and_read_marked_after_a_soft_mark() {
        let entry = Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            Bytes::from_static(b"body"),
            Duration::from_secs(600),
        ));
        let value = encode_value(&entry, 7);
        assert_eq!(&value[..8], &7u64.to_be_bytes());
        let now = crate::clock::now_millis();
        assert!(decode_value(&value).unwrap()[0].is_fresh_at(now));
        // What the soft script does: bytes 9–24 become the mark.
        let mut marked = value.to_vec();
        marked[8..24].copy_from_slice(&super::super::soft::mark(8, now));
        let seen = decode_value(&Bytes::from(marked)).unwrap();
        assert_eq!(seen[0].body(), "body");
        assert!(!seen[0].is_fresh_at(now));
        assert!(decode_value(&value.slice(..HEADER_LEN - 1)).is_err());
    }

    #[test]
    fn one_entry_round_trips_and_a_list_of_several_is_not_this_versions() {
        let entry = || {
            Entry::new(
                http::StatusCode::OK,
                http::HeaderMap::new(),
                bytes::Bytes::from_static(b"body"),
                Duration::from_secs(5),
            )
        };
        let encoded = encode_variants(&[entry()]);
        let decoded = decode_variants(&encoded).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].body(), "body");
        assert!(decode_variants(&encoded.slice(..encoded.len() - 1)).is_err());
        // What an earlier version kept under one field: every variant of the URL.
        assert!(decode_variants(&encode_variants(&[entry(), entry()])).is_err());
    }
}
