//! An entry's stored headers: its values, and a [`Layout`] shared with every entry of the
//! same header names (`layout.rs`), which holds the names and the map its answers start as.
//!
//! A hit clones the layout's map and writes into its slots, in order: `Age` and
//! `Cache-Status` into the first two, the entry's values into the next ones
//! ([`Entry::answer_headers`](super::Entry::answer_headers) asks for it, this module alone
//! knows where they go). No name is hashed, the copy never grows. The map's layout:
//!
//! 1. `Age` and `Cache-Status`, empty: slots that every answer fills;
//! 2. a slot per stored value, under its name: the headers as the origin sent them, but
//!    its `Age`, `Cache-Status` and `X-Cache` (each answer sets its own), a name's values
//!    together (the order a `HeaderMap` keeps);
//! 3. `X-Cache: HIT`, what most answers say.
//!
//! A `Content-Length` the origin did not send is not added: the body of a full answer has
//! an exact size, from which the server writes it, and a `HEAD` answer, which has no body,
//! gets it from `answer.rs`.
//!
//! ```
//! use bytes::Bytes;
//! use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
//! use http::{HeaderMap, HeaderValue, StatusCode};
//! use std::time::Duration;
//! use tower_response_cache::Entry;
//!
//! let mut headers = HeaderMap::new();
//! headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
//! headers.insert("x-cache", HeaderValue::from_static("from the origin"));
//! let entry = Entry::new(StatusCode::OK, headers, Bytes::from_static(b"hi"), Duration::from_secs(60));
//!
//! // What was stored: the origin's headers, without the cache's own.
//! let stored = entry.headers();
//! assert_eq!(stored.get(&CONTENT_TYPE).unwrap(), "text/plain");
//! assert!(stored.get(&CONTENT_LENGTH).is_none());
//! assert_eq!(stored.len(), 1);
//! ```

use std::fmt;
use std::sync::Arc;

use http::header::AGE;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::layout::Layout;
use super::ALLOCATION_BYTES;
use crate::headers::{Fields, CACHE_STATUS, HIT, X_CACHE};

/// Header values an entry keeps at most: what the byte format reads back, and far below
/// the 32 768 a `HeaderMap` holds (the answer map adds the cache's three). The layer does
/// not store a response with more (`policy/response.rs`), so an entry never answers with
/// fewer headers than the origin sent.
pub(crate) const MAX_STORED_VALUES: usize = 1024;

/// Headers set by the cache on every answer: never stored.
fn is_answers_own(name: &HeaderName) -> bool {
    name == AGE || name == CACHE_STATUS || name == X_CACHE
}

/// What an entry keeps of its headers.
#[derive(Clone)]
pub(super) struct Stored {
    layout: Arc<Layout>,
    /// One value per name of the layout, in its order.
    values: Box<[HeaderValue]>,
}

impl Stored {
    /// The headers of `map` (the answers' own dropped), in its order; past
    /// [`MAX_STORED_VALUES`], the rest are not kept.
    pub(super) fn from_map(map: HeaderMap) -> Stored {
        let kept = map.len().min(MAX_STORED_VALUES);
        let mut names = Vec::with_capacity(kept);
        let mut values = Vec::with_capacity(kept);
        let mut current = None;
        for (name, value) in map.into_iter().take(kept) {
            // `HeaderMap`'s owned iterator names each header once, before its first value.
            if let Some(name) = name {
                current = Some(name);
            }
            if let Some(name) = current.as_ref().filter(|n| !is_answers_own(n)) {
                names.push(name.clone());
                values.push(value);
            }
        }
        Stored {
            layout: Layout::of(names),
            values: values.into_boxed_slice(),
        }
    }

    /// Headers in any order (decoded bytes): a name's values are brought together first,
    /// as the layout has them.
    pub(super) fn from_fields(fields: Vec<(HeaderName, HeaderValue)>) -> Stored {
        let mut map = HeaderMap::with_capacity(fields.len());
        for (name, value) in fields {
            map.append(name, value);
        }
        Stored::from_map(map)
    }

    pub(super) fn view(&self) -> StoredHeaders<'_> {
        StoredHeaders {
            names: self.layout.names(),
            values: &self.values,
        }
    }

    /// A full answer's headers: the layout's map with `age`, `cache_status`, the stored
    /// values and, when it is not `HIT`, `x_cache` written into their slots.
    #[inline]
    pub(super) fn answer(
        &self,
        age: HeaderValue,
        cache_status: HeaderValue,
        x_cache: HeaderValue,
    ) -> HeaderMap {
        let mut map = self.layout.template().clone();
        let mut slots = map.iter_mut();
        if let (Some((age_name, age_slot)), Some((status_name, status_slot))) =
            (slots.next(), slots.next())
        {
            debug_assert!(*age_name == AGE && *status_name == CACHE_STATUS);
            *age_slot = age;
            *status_slot = cache_status;
        }
        for ((_, slot), value) in slots.zip(self.values.iter()) {
            *slot = value.clone();
        }
        if x_cache != HIT {
            map.insert(X_CACHE, x_cache);
        }
        map
    }

    /// Heap bytes charged for the headers: the values (the layout only when it is not
    /// shared: see `layout.rs`).
    pub(super) fn weight(&self) -> usize {
        ALLOCATION_BYTES
            + std::mem::size_of_val(&*self.values)
            + self.values.iter().map(HeaderValue::len).sum::<usize>()
            + self.layout.charge()
    }
}

/// The headers an [`Entry`](super::Entry) stored, as the origin sent them: without `Age`,
/// `Cache-Status` and `X-Cache` (each answer sets its own). A view of the entry's names and
/// values; nothing is copied unless [`to_map`](Self::to_map) is asked for.
#[derive(Clone, Copy)]
pub struct StoredHeaders<'a> {
    names: &'a [HeaderName],
    values: &'a [HeaderValue],
}

impl<'a> StoredHeaders<'a> {
    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&'a HeaderValue> {
        let at = self.names.iter().position(|n| n == name)?;
        self.values.get(at)
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        let name = name.clone();
        self.iter()
            .filter(move |(n, _)| **n == name)
            .map(|(_, v)| v)
    }

    /// Whether `name` has a value.
    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every header, in the order stored.
    pub fn iter(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        self.names.iter().zip(self.values.iter())
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no header is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// A copy as a map of its own.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len());
        for (name, value) in self.iter() {
            map.append(name.clone(), value.clone());
        }
        map
    }
}

impl Fields for StoredHeaders<'_> {
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.get(name)
    }
}

impl PartialEq for StoredHeaders<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.to_map() == other.to_map()
    }
}

impl fmt::Debug for StoredHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::header::CONTENT_LENGTH;
    use http::StatusCode;
    use std::time::Duration;

    use crate::entry::Entry;
    use crate::headers::STALE;

    fn stored(headers: &[(&'static str, &'static str)], status: StatusCode) -> Entry {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        Entry::new(
            status,
            map,
            Bytes::from_static(b"body"),
            Duration::from_secs(1),
        )
    }

    /// A plain hit's headers.
    fn hit_headers(entry: &Entry) -> HeaderMap {
        entry.answer_headers(
            HeaderValue::from_static("7"),
            HeaderValue::from_static("hit"),
            HIT,
        )
    }

    #[test]
    fn the_stored_headers_read_as_sent_and_the_answer_has_its_slots() {
        let entry = stored(
            &[
                ("content-type", "text/plain"),
                ("age", "30"),
                ("x-multi", "a"),
                ("cache-status", "upstream; hit"),
                ("x-multi", "b"),
                ("x-cache", "HIT from elsewhere"),
            ],
            StatusCode::OK,
        );
        let headers = entry.headers();
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "x-multi", "x-multi"]);
        assert_eq!(headers.len(), 3);
        let multi: Vec<&HeaderValue> = headers
            .get_all(&HeaderName::from_static("x-multi"))
            .collect();
        assert_eq!(multi, ["a", "b"]);
        for own in [AGE, CACHE_STATUS, X_CACHE, CONTENT_LENGTH] {
            assert!(headers.get(&own).is_none(), "{own}");
            assert_eq!(headers.get_all(&own).count(), 0, "{own}");
        }
        // The answer's map: the two slots first, `X-Cache: HIT` last, no length added (the
        // body's exact size says it).
        let answer = hit_headers(&entry);
        let first: Vec<&str> = answer.keys().take(2).map(HeaderName::as_str).collect();
        assert_eq!(first, ["age", "cache-status"]);
        assert!(!answer.contains_key(CONTENT_LENGTH));
        assert_eq!(answer[X_CACHE], "HIT");
        assert_eq!(answer[AGE], "7");
        assert_eq!(answer[CACHE_STATUS], "hit");
        assert_eq!(answer.len(), 6);
        // An answer that says otherwise replaces the template's `X-Cache`.
        let stale = entry.answer_headers(answer[AGE].clone(), answer[CACHE_STATUS].clone(), STALE);
        let x_cache: Vec<&HeaderValue> = stale.get_all(X_CACHE).iter().collect();
        assert_eq!(x_cache, ["STALE"]);
        assert_eq!(stale.len(), 6);
    }

    #[test]
    fn a_length_the_origin_sent_is_stored_and_none_is_added() {
        let with_length = stored(&[("content-length", "4")], StatusCode::OK);
        assert_eq!(with_length.headers().get(&CONTENT_LENGTH).unwrap(), "4");
        assert_eq!(
            hit_headers(&with_length)
                .get_all(CONTENT_LENGTH)
                .iter()
                .count(),
            1
        );
        for status in [StatusCode::OK, StatusCode::NO_CONTENT] {
            let empty = stored(&[], status);
            assert!(!hit_headers(&empty).contains_key(CONTENT_LENGTH));
            assert!(empty.headers().is_empty());
        }
    }

    #[test]
    fn an_entry_is_charged_its_values_and_shares_its_layout() {
        let headers = [
            ("content-type", "text/plain"),
            ("cache-control", "max-age=60"),
            ("x-stored-headers-test", "\"v1\""),
        ];
        let weight = |n: usize| stored(&headers[..n], StatusCode::OK).weight();
        // Entries of the same names share a layout (kept while one holds it): the third
        // header costs its value and its value's bytes, not a bucket of a map.
        let (two, three) = (weight(2), weight(3));
        assert_eq!(
            three - two,
            std::mem::size_of::<HeaderValue>() + "\"v1\"".len()
        );
        let a = stored(&headers, StatusCode::OK);
        let b = stored(&headers, StatusCode::OK);
        assert!(Arc::ptr_eq(&a.headers.layout, &b.headers.layout));
        assert_eq!(hit_headers(&stored(&[], StatusCode::OK)).len(), 3);
    }

    #[test]
    fn values_are_answered_under_their_names_whatever_order_they_came_in() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = |v: &'static str| HeaderValue::from_static(v);
        // Decoded bytes need not keep a name's values together.
        let scattered = vec![
            (name("x-multi"), value("a")),
            (name("content-type"), value("text/plain")),
            (name("age"), value("9")),
            (name("x-multi"), value("b")),
            (name("etag"), value("\"e\"")),
        ];
        let headers = Stored::from_fields(scattered);
        let view = headers.view();
        assert_eq!(
            view.get_all(&name("x-multi")).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(view.get(&name("etag")).unwrap(), "\"e\"");
        assert_eq!(view.len(), 4);
        let answer = headers.answer(value("1"), value("hit"), HIT);
        assert_eq!(
            answer.get_all("x-multi").iter().collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(answer["content-type"], "text/plain");
        assert_eq!(answer["etag"], "\"e\"");
        assert_eq!(answer[AGE], "1");
        assert_eq!(answer.len(), 7);
    }

    #[test]
    fn an_entry_keeps_at_most_its_limit_of_values_and_answers_without_a_panic() {
        let mut map = HeaderMap::new();
        for i in 0..32_767u32 {
            map.append("x-many", HeaderValue::from(i));
        }
        let entry = Entry::new(
            StatusCode::OK,
            map,
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
        );
        assert_eq!(entry.headers().len(), MAX_STORED_VALUES);
        assert_eq!(hit_headers(&entry).len(), MAX_STORED_VALUES + 3);
    }
}
