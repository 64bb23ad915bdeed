//! The decoded form of recently read Redis values, reused when Redis answers with the very
//! same bytes again (decoding, soft marks included, depends on the bytes alone).
//!
//! A hot URL's hit reads the same value from Redis over and over; decoding it (the headers
//! into a `HeaderMap`, the entries into `Arc`s) costs about as much as the rest of the hit
//! path together. The memo keeps, per slot (a hash of the key picks one of 256), the last
//! value read there and what it decoded to. A new reply is compared with it byte for byte:
//! equal bytes decode to an equal result, so the memo can never answer anything Redis did
//! not just return. Values over 64 KiB are decoded every time; at most 256 values (16 MiB)
//! are held, shared with the entries that were served from them.

use std::sync::RwLock;

use bytes::Bytes;

use super::codec::decode_value;
use crate::entry::DecodeError;
use crate::store::Variants;

const SLOTS: usize = 256;
const MAX_BYTES: usize = 64 * 1024;

/// The last value read in a slot and what it decoded to.
type Slot = RwLock<Option<(Bytes, Variants)>>;

/// See the [module docs](self).
pub(crate) struct DecodeMemo {
    slots: Box<[Slot]>,
}

impl DecodeMemo {
    pub(crate) fn new() -> DecodeMemo {
        DecodeMemo {
            slots: (0..SLOTS).map(|_| RwLock::new(None)).collect(),
        }
    }

    /// Decode `raw`, read from Redis under `key` and `variant`, or reuse the last decoding
    /// of the same bytes.
    pub(crate) fn decode(
        &self,
        key: &[u8],
        variant: u64,
        raw: Bytes,
    ) -> Result<Variants, DecodeError> {
        if raw.len() > MAX_BYTES {
            return decode_value(&raw);
        }
        let hash = xxhash_rust::xxh3::xxh3_64(key) ^ variant;
        let slot = &self.slots[hash as usize % SLOTS];
        if let Some((bytes, variants)) = &*slot.read().unwrap_or_else(|e| e.into_inner()) {
            if *bytes == raw {
                return Ok(variants.clone());
            }
        }
        let variants = decode_value(&raw)?;
        *slot.write().unwrap_or_else(|e| e.into_inner()) = Some((raw, variants.clone()));
        Ok(variants)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use std::sync::Arc;
    use std::time::Duration;

    fn value(body: &'static str) -> Bytes {
        let entry = Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            Bytes::from_static(body.as_bytes()),
            Duration::from_secs(60),
        ));
        super::super::codec::encode_value(&entry, 1)
    }

    #[test]
    fn the_same_bytes_reuse_the_decoding_and_other_bytes_never_do() {
        let memo = DecodeMemo::new();
        // One encoding, read twice (an entry's bytes carry the millisecond it was made).
        let one = value("one");
        let first = memo.decode(b"k", 1, one.clone()).unwrap();
        let again = memo.decode(b"k", 1, one).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "equal bytes were decoded again"
        );
        let changed = memo.decode(b"k", 1, value("two")).unwrap();
        assert_eq!(changed[0].body(), "two", "different bytes must decode anew");
        // Slots are shared by many keys: whatever another key left in a slot, a reply is
        // only ever answered with its own bytes' decoding.
        for key in 0..1000u32 {
            memo.decode(&key.to_be_bytes(), 1, value("one")).unwrap();
        }
        for key in 0..1000u32 {
            let other = memo
                .decode(&(key + 7).to_be_bytes(), 1, value("three"))
                .unwrap();
            assert_eq!(other[0].body(), "three");
        }
        assert!(memo
            .decode(b"k", 1, Bytes::from_static(b"garbage"))
            .is_err());
    }
}
