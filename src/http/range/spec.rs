//! `Range` and `If-Range` read to the letter (RFC 9110 §14.1, §14.2, §13.1.5), and the one
//! slice of a stored body they select. Pure functions: the cache-facing part is in `mod.rs`.
//!
//! What this cache answers, from a complete representation of `len` bytes:
//! - one satisfiable range: `206` with that slice (a multi-range request whose ranges all
//!   but one fall beyond the end counts as one);
//! - several satisfiable ranges: the whole `200` (RFC 9110 allows ignoring `Range`; a
//!   `multipart/byteranges` answer is not worth its complexity here);
//! - none satisfiable: `416` with `Content-Range: bytes */len`;
//! - a field that is not a `bytes` range set this parser reads: the whole `200`.

use std::time::SystemTime;

use http::header::{DATE, ETAG, LAST_MODIFIED};
use http::{HeaderMap, HeaderValue};

use crate::headers::{date, parse_date, Fields};

/// At most this many ranges are read; a longer list is answered whole.
const MAX_RANGES: usize = 64;

/// One `range-spec`: `first-last`, `first-`, or `-suffix` (positions inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last `n` bytes.
    Suffix(u64),
}

/// What a `Range` field asks of a representation of known length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Send the whole representation (no range, one we do not serve, or several).
    Full,
    /// Send these bytes (`start..end`, never empty) as a `206`.
    Partial { start: u64, end: u64 },
    /// Nothing asked for exists: `416`.
    Unsatisfiable,
}

/// The `range-spec`s of a `bytes=` field, or `None` when it is not one (another unit, a
/// syntax error, `last < first`, too many ranges): such a field is ignored.
pub(crate) fn parse(value: &[u8]) -> Option<Vec<Spec>> {
    let value = std::str::from_utf8(value).ok()?;
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = Vec::new();
    // `1#range-spec`: empty list elements are allowed and skipped (RFC 9110 §5.6.1.2).
    for element in set.split(',') {
        let element = element.trim_matches([' ', '\t']);
        if element.is_empty() {
            continue;
        }
        if specs.len() == MAX_RANGES {
            return None;
        }
        let (first, last) = element.split_once('-')?;
        let spec = if first.is_empty() {
            Spec::Suffix(digits(last)?)
        } else {
            let first = digits(first)?;
            let last = if last.is_empty() {
                None
            } else {
                Some(digits(last)?)
            };
            if last.is_some_and(|last| last < first) {
                return None;
            }
            Spec::From { first, last }
        };
        specs.push(spec);
    }
    (!specs.is_empty()).then_some(specs)
}

/// `1*DIGIT`, saturating: a position beyond `u64` is beyond any body.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// The bytes `spec` selects of `len`, as `start..end`; `None` when unsatisfiable.
pub(crate) fn resolve(spec: Spec, len: u64) -> Option<(u64, u64)> {
    match spec {
        Spec::From { first, last } => {
            if first >= len {
                return None;
            }
            let last = last.map_or(len - 1, |last| last.min(len - 1));
            Some((first, last + 1))
        }
        Spec::Suffix(0) => None,
        Spec::Suffix(_) if len == 0 => None,
        Spec::Suffix(n) => Some((len.saturating_sub(n), len)),
    }
}

/// What the `Range` field lines of a request select from `len` bytes.
pub(crate) fn select<'a>(lines: impl IntoIterator<Item = &'a HeaderValue>, len: u64) -> Selection {
    let mut lines = lines.into_iter();
    let (Some(line), None) = (lines.next(), lines.next()) else {
        // None, or several lines of a singleton field: not a range we read.
        return Selection::Full;
    };
    let Some(specs) = parse(line.as_bytes()) else {
        return Selection::Full;
    };
    if len == 0 {
        // A zero-length body has no byte to send: only a non-zero suffix is satisfiable
        // (RFC 9110 §14.1.1), and it is answered with the (empty) whole.
        return if specs.iter().any(|s| matches!(s, Spec::Suffix(n) if *n > 0)) {
            Selection::Full
        } else {
            Selection::Unsatisfiable
        };
    }
    let mut satisfiable = specs.into_iter().filter_map(|s| resolve(s, len));
    match (satisfiable.next(), satisfiable.next()) {
        (None, _) => Selection::Unsatisfiable,
        (Some((start, end)), None) => Selection::Partial { start, end },
        (Some(_), Some(_)) => Selection::Full,
    }
}

/// Whether `If-Range` (if any) lets the range apply to the stored response with these
/// headers (RFC 9110 §13.1.5): an entity tag must match its `ETag` strongly (a weak tag
/// never does); a date must equal its `Last-Modified`, which must be strong (a `Date` at
/// least a second later, §8.8.2.2; without `Date`, the time the cache `received` it, as
/// §6.6.1 lets a recipient assume). Otherwise the whole representation is sent.
pub(crate) fn if_range_holds(
    request: &HeaderMap,
    stored: &(impl Fields + ?Sized),
    received: SystemTime,
) -> bool {
    let mut lines = request.get_all(http::header::IF_RANGE).iter();
    let value = match (lines.next(), lines.next()) {
        (None, _) => return true,
        (Some(value), None) => value,
        (Some(_), Some(_)) => return false,
    };
    let condition = value.as_bytes();
    if condition.starts_with(b"\"") || condition.starts_with(b"W/") {
        let Some(etag) = stored.first(&ETAG).map(HeaderValue::as_bytes) else {
            return false;
        };
        return condition.starts_with(b"\"") && etag.starts_with(b"\"") && etag == condition;
    }
    let (Some(since), Some(modified)) = (parse_date(value), date(stored, LAST_MODIFIED)) else {
        return false;
    };
    let sent = match stored.first(&DATE) {
        Some(value) => match parse_date(value) {
            Some(sent) => sent,
            None => return false,
        },
        None => received,
    };
    since == modified
        && sent
            .duration_since(modified)
            .is_ok_and(|d| d.as_secs() >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sel(range: &str, len: u64) -> Selection {
        select([&HeaderValue::from_str(range).unwrap()], len)
    }

    fn part(start: u64, end: u64) -> Selection {
        Selection::Partial { start, end }
    }

    #[test]
    fn one_range_of_each_form() {
        assert_eq!(sel("bytes=0-1", 10), part(0, 2));
        assert_eq!(sel("bytes=1-", 10), part(1, 10));
        assert_eq!(sel("bytes=-1", 10), part(9, 10));
        assert_eq!(sel("bytes=-20", 10), part(0, 10));
        assert_eq!(sel("bytes=5-99999999999999999999999", 10), part(5, 10));
        assert_eq!(sel("BYTES=2-2", 10), part(2, 3));
        assert_eq!(sel("bytes= 2-3 ,", 10), part(2, 4));
    }

    #[test]
    fn unsatisfiable_ranges_are_416() {
        assert_eq!(sel("bytes=10-", 10), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=10-20, 30-", 10), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=-0", 10), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=0-", 0), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=-5", 0), Selection::Full);
    }

    #[test]
    fn several_ranges_are_answered_whole_unless_one_is_left() {
        assert_eq!(sel("bytes=0-1, 4-5", 10), Selection::Full);
        assert_eq!(sel("bytes=0-1, 40-50", 10), part(0, 2));
    }

    #[test]
    fn what_is_not_a_bytes_range_set_is_ignored() {
        for bad in [
            "bytes=5-1",
            "bytes=a-",
            "bytes=-",
            "bytes=",
            "bytes=1-2-3",
            "bytes =1-2",
            "items=0-1",
            "bytes=+1-2",
            "0-1",
        ] {
            assert_eq!(sel(bad, 10), Selection::Full, "{bad}");
        }
        let many = format!("bytes={}", vec!["0-0"; MAX_RANGES + 1].join(","));
        assert_eq!(sel(&many, 10), Selection::Full);
        let two = [
            HeaderValue::from_static("bytes=0-1"),
            HeaderValue::from_static("bytes=0-1"),
        ];
        assert_eq!(select(&two, 10), Selection::Full);
        assert_eq!(select([], 10), Selection::Full);
    }

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (http::HeaderName::from_static(n), v.parse().unwrap()))
            .collect()
    }

    /// Received long before the dates in these tests.
    fn if_range_holds_at(request: &HeaderMap, stored: &HeaderMap) -> bool {
        if_range_holds(request, stored, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn if_range_needs_a_strong_match() {
        let stored = map(&[
            ("etag", "\"v1\""),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("date", "Wed, 21 Oct 2015 07:30:00 GMT"),
        ]);
        assert!(if_range_holds_at(&map(&[]), &stored));
        assert!(if_range_holds_at(&map(&[("if-range", "\"v1\"")]), &stored));
        assert!(!if_range_holds_at(&map(&[("if-range", "\"v2\"")]), &stored));
        assert!(!if_range_holds_at(
            &map(&[("if-range", "W/\"v1\"")]),
            &stored
        ));
        let weak = map(&[("etag", "W/\"v1\"")]);
        assert!(!if_range_holds_at(&map(&[("if-range", "W/\"v1\"")]), &weak));
        let lm = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert!(if_range_holds_at(&map(&[("if-range", lm)]), &stored));
        let other = "Wed, 21 Oct 2015 07:28:01 GMT";
        assert!(!if_range_holds_at(&map(&[("if-range", other)]), &stored));
        // A Last-Modified within a second of Date is weak; without Date, the time the
        // cache received it decides.
        let close = map(&[("last-modified", lm), ("date", lm)]);
        assert!(!if_range_holds_at(&map(&[("if-range", lm)]), &close));
        let undated = map(&[("last-modified", lm)]);
        assert!(!if_range_holds_at(&map(&[("if-range", lm)]), &undated));
        let later = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:01 GMT").unwrap();
        assert!(if_range_holds(&map(&[("if-range", lm)]), &undated, later));
        assert!(!if_range_holds_at(
            &map(&[("if-range", "garbage")]),
            &stored
        ));
    }

    proptest! {
        /// Whatever the range, a partial answer lies within the body, is never empty, and
        /// is exactly the bytes the spec names (checked against a direct reading).
        #[test]
        fn slices_stay_inside_and_match_the_spec(
            len in 0u64..64,
            first in 0u64..80,
            span in proptest::option::of(0u64..80),
            suffix in proptest::option::of(0u64..80),
        ) {
            let (header, want) = match suffix {
                Some(n) => (format!("bytes=-{n}"), {
                    let start = len.saturating_sub(n);
                    (n > 0 && len > 0).then_some((start, len))
                }),
                None => {
                    let last = span.map(|s| first + s);
                    let header = match last {
                        Some(last) => format!("bytes={first}-{last}"),
                        None => format!("bytes={first}-"),
                    };
                    let end = last.map_or(len, |l| (l + 1).min(len));
                    (header, (first < len).then_some((first, end)))
                }
            };
            let got = sel(&header, len);
            match (want, got.clone()) {
                (Some((start, end)), Selection::Partial { start: s, end: e }) => {
                    prop_assert_eq!((s, e), (start, end));
                    prop_assert!(s < e && e <= len);
                }
                (None, Selection::Unsatisfiable) => {}
                // A zero-length body answers a non-zero suffix whole.
                (None, Selection::Full) => prop_assert!(len == 0 && suffix.is_some_and(|n| n > 0)),
                (want, got) => prop_assert!(false, "{header} of {len}: want {want:?}, got {got:?}"),
            }
        }

        /// The parser never panics and never yields `last < first`.
        #[test]
        fn parse_is_total(value in "[ -~]{0,40}") {
            if let Some(specs) = parse(value.as_bytes()) {
                for spec in specs {
                    if let Spec::From { first, last: Some(last) } = spec {
                        prop_assert!(last >= first);
                    }
                }
            }
        }
    }
}
