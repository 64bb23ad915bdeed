//! The value under one variant field of an entry hash: every `Vary` variant of that URL
//! stored with that key, each an [`Entry`] in its own versioned format. Bytes that do not
//! decode are an error (the store reads them as a miss and deletes them), never a panic.

use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};

use crate::entry::{DecodeError, Entry};
use crate::store::Variants;

/// Most `Vary` variants kept under one URL.
pub(crate) const MAX_VARY_VARIANTS: usize = 16;

pub(crate) fn encode_variants(variants: &[Arc<Entry>]) -> bytes::Bytes {
    let mut out = BytesMut::new();
    out.put_u32(variants.len() as u32);
    for entry in variants {
        let bytes = entry.encode();
        out.put_u32(bytes.len() as u32);
        out.put_slice(&bytes);
    }
    out.freeze()
}

pub(crate) fn decode_variants(mut raw: &[u8]) -> Result<Variants, DecodeError> {
    let truncated = || Entry::decode(b"").unwrap_err();
    if raw.len() < 4 {
        return Err(truncated());
    }
    let count = raw.get_u32() as usize;
    if count == 0 || count > MAX_VARY_VARIANTS {
        return Err(truncated());
    }
    let mut variants = Vec::with_capacity(count);
    for _ in 0..count {
        if raw.len() < 4 {
            return Err(truncated());
        }
        let len = raw.get_u32() as usize;
        if raw.len() < len {
            return Err(truncated());
        }
        variants.push(Arc::new(Entry::decode(&raw[..len])?));
        raw.advance(len);
    }
    if !raw.is_empty() {
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
            let _ = decode_variants(&bytes);
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
        assert!(decode_variants(&encoded[..encoded.len() - 1]).is_err());
    }
}
