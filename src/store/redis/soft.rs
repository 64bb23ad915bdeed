//! Soft invalidation in Redis: entries are marked stale, not removed.
//!
//! Every stored value starts with the generation it was fetched under and a mark (see
//! `codec.rs`). `invalidate_soft` raises the generation (so a response fetched before it is
//! never stored after it) and rewrites the mark of every value of every matching entry hash
//! to its generation and time, in a script on the Redis side that walks the hash in
//! bounded batches (`HSCAN`, see `scripts.rs`: a query flood can give one key tens of
//! thousands of variants, and one script over all of them would stall Redis). A read (the same `HMGET`)
//! serves a value whose mark is above the generation it was fetched under as expired at the
//! mark's time: stale, within its stale-while-revalidate window, while one request refreshes
//! it. The refresh is fetched after the mark and stored unmarked, so it reads as fresh.
//! Generations, not clocks, decide, so clock skew between processes cannot make an old
//! entry look fresh; the mark's time only places the start of the stale window.

use std::sync::Arc;

use crate::store::Variants;

/// The mark a soft invalidation at `generation`, at `now_ms`, writes into each value.
pub(crate) fn mark(generation: u64, now_ms: u64) -> [u8; 16] {
    let mut mark = [0u8; 16];
    mark[..8].copy_from_slice(&generation.to_be_bytes());
    mark[8..].copy_from_slice(&now_ms.to_be_bytes());
    mark
}

/// `variants`, fetched under generation `written`, as a read must see them given the mark
/// (`marked`, `marked_at_ms`; zeros when unmarked).
pub(crate) fn apply(variants: Variants, written: u64, marked: u64, marked_at_ms: u64) -> Variants {
    if marked <= written {
        return variants;
    }
    variants
        .iter()
        .map(|entry| {
            if entry.is_fresh_at(marked_at_ms) {
                Arc::new(entry.expired_at(marked_at_ms))
            } else {
                entry.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock;
    use crate::entry::Entry;
    use std::time::Duration;

    fn fresh() -> Variants {
        let entry = Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"v1"),
            Duration::from_secs(600),
        );
        vec![Arc::new(entry)].into()
    }

    #[test]
    fn values_fetched_before_the_mark_read_as_expired_at_its_time() {
        let now = clock::now_millis();
        assert!(!apply(fresh(), 4, 5, now)[0].is_fresh_at(now));
    }

    #[test]
    fn values_fetched_at_or_after_the_mark_and_unmarked_values_stay_fresh() {
        let now = clock::now_millis();
        assert!(apply(fresh(), 5, 5, now)[0].is_fresh_at(now));
        assert!(apply(fresh(), 9, 5, now)[0].is_fresh_at(now));
        assert!(apply(fresh(), 1, 0, 0)[0].is_fresh_at(now));
    }

    #[test]
    fn the_mark_is_two_big_endian_numbers() {
        assert_eq!(mark(1, 2), [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
    }
}
