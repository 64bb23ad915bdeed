//! The value under one variant field of an entry hash: every `Vary` variant of that URL
//! stored with that key, each an [`Entry`] in its own versioned format. Bytes that do not
//! decode are an error (the store reads them as a miss and deletes them), never a panic.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::entry::{DecodeError, Entry};
use crate::store::Variants;

/// Most `Vary` variants kept under one URL.
pub(crate) const MAX_VARY_VARIANTS: usize = 16;

pub(crate) fn encode_variants(variants: &[Arc<Entry>]) -> Bytes {
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
pub(crate) fn decode_variants(raw: &Bytes) -> Result<Variants, DecodeError> {
    let truncated = || Entry::decode(b"").unwrap_err();
    let mut rest: &[u8] = raw;
    if rest.len() < 4 {
        return Err(truncated());
    }
    let count = rest.get_u32() as usize;
    if count == 0 || count > MAX_VARY_VARIANTS {
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
        assert!(decode_variants(&encoded.slice(..encoded.len() - 1)).is_err());
    }
}
