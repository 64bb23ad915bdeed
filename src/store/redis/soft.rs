//! Soft invalidation in Redis: entries are marked stale, not removed.
//!
//! `invalidate_soft` raises the generation (so a response fetched before it is never
//! stored after it) and sets the field `soft` of every matching entry hash to
//! `<generation>:<unix ms>`. Each variant field `f` of the hash has a sibling `f:g`, the
//! generation its response was fetched under. A read fetches the variant, its `:g` and the
//! mark in one `HMGET`; a variant fetched before the mark (its generation below the mark's,
//! or none noted) is served as expired at the mark's time: stale, within its
//! stale-while-revalidate window, and refreshed. A refresh is fetched after the mark, so
//! it reads as fresh. Generations, not clocks, decide, so clock skew between processes
//! cannot make an old entry look fresh.

use std::sync::Arc;

use crate::store::Variants;

/// The mark a soft invalidation at `generation`, at `now_ms`, leaves on an entry hash.
pub(crate) fn mark(generation: u64, now_ms: u64) -> String {
    format!("{generation}:{now_ms}")
}

fn parse_mark(mark: &[u8]) -> Option<(u64, u64)> {
    let (generation, at) = std::str::from_utf8(mark).ok()?.split_once(':')?;
    Some((generation.parse().ok()?, at.parse().ok()?))
}

/// `variants` as a read must see them, given the generation they were `written` under and
/// the hash's `soft` mark (both as Redis returned them; unreadable values count as absent).
pub(crate) fn apply(
    variants: Variants,
    written: Option<Vec<u8>>,
    soft: Option<Vec<u8>>,
) -> Variants {
    let Some((marked_at_generation, marked_at_ms)) = soft.as_deref().and_then(parse_mark) else {
        return variants;
    };
    let written = written
        .as_deref()
        .and_then(|g| std::str::from_utf8(g).ok())
        .and_then(|g| g.parse::<u64>().ok());
    if written.is_some_and(|g| g >= marked_at_generation) {
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

    fn bytes(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn variants_written_before_the_mark_read_as_expired_at_its_time() {
        let now = clock::now_millis();
        let seen = apply(fresh(), bytes("4"), bytes(&mark(5, now)));
        assert!(!seen[0].is_fresh_at(now));
        // No generation noted (written by an older version): stale too.
        assert!(!apply(fresh(), None, bytes(&mark(5, now)))[0].is_fresh_at(now));
    }

    #[test]
    fn variants_written_at_or_after_the_mark_and_unmarked_hashes_stay_fresh() {
        let now = clock::now_millis();
        assert!(apply(fresh(), bytes("5"), bytes(&mark(5, now)))[0].is_fresh_at(now));
        assert!(apply(fresh(), bytes("9"), bytes(&mark(5, now)))[0].is_fresh_at(now));
        assert!(apply(fresh(), bytes("1"), None)[0].is_fresh_at(now));
        // A garbled mark is no mark.
        assert!(apply(fresh(), bytes("1"), bytes("x:y"))[0].is_fresh_at(now));
    }
}
