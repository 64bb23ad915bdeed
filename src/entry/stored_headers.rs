//! One header map per entry: the stored headers laid out as every full answer starts.
//!
//! A hit clones the map and writes two values into it ([`Entry::answer_headers`](super::Entry::answer_headers)
//! asks for it, this module alone knows where they go); it never hashes a name or grows
//! the copy. The same map is what the entry stored: [`StoredHeaders`] reads it with the
//! cache's own headers hidden, so the stored headers are not kept a second time.
//!
//! The layout ([`Template`]):
//!
//! 1. `Age` and `Cache-Status`, empty: slots that every answer fills (an answer finds both
//!    after two steps of a walk in order);
//! 2. the stored headers as the origin sent them, but its `Age`, `Cache-Status` and
//!    `X-Cache` (each answer sets its own);
//! 3. `X-Cache: HIT`, what most answers say.
//!
//! A `Content-Length` the origin did not send is not added: the body of a full answer has
//! an exact size, from which the server writes it, and a `HEAD` answer, which has no body,
//! gets it from `answer.rs`. (One header fewer per entry, and one shared value fewer that
//! a hit's clone counts a reference of.)
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

use http::header::AGE;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::{CACHE_STATUS, HIT, X_CACHE};

/// Headers set by the cache on every answer: never stored, hidden when read.
fn is_answers_own(name: &HeaderName) -> bool {
    name == AGE || name == CACHE_STATUS || name == X_CACHE
}

/// The map of an entry being built, in the layout of the module docs.
pub(super) struct Template {
    map: HeaderMap,
}

impl Template {
    /// A template with room for `stored` headers and the cache's three.
    pub(super) fn with_capacity(stored: usize) -> Template {
        let mut map = HeaderMap::with_capacity(stored + 3);
        for name in [AGE, CACHE_STATUS] {
            map.insert(name, HeaderValue::from_static(""));
        }
        Template { map }
    }

    /// Add a stored header (one the answers set themselves is dropped).
    pub(super) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        if !is_answers_own(&name) {
            self.map.append(name, value);
        }
    }

    /// Add the headers of a map, in its order.
    pub(super) fn extend(&mut self, headers: HeaderMap) {
        let mut current = None;
        for (name, value) in headers {
            // `HeaderMap`'s owned iterator names each header once, before its first value.
            if let Some(name) = name {
                current = Some(name);
            }
            if let Some(name) = &current {
                self.push(name.clone(), value);
            }
        }
    }

    /// The stored headers so far (the slots aside, which hold nothing).
    pub(super) fn stored(&self) -> StoredHeaders<'_> {
        StoredHeaders::new(&self.map)
    }

    /// The finished map.
    ///
    /// A copy of the map built: a `HeaderMap` keeps room for a quarter more than it was
    /// made for, rounded up to a power of two (room for twelve when seven are asked for),
    /// and its copy holds exactly what it has. A hit's clone of it is exact as well, and
    /// fills slots without adding a header, so the room is never wanted.
    pub(super) fn finish(mut self) -> HeaderMap {
        self.map.insert(X_CACHE, HIT);
        self.map.clone()
    }
}

/// Write one answer's own headers into a copy of a finished template: `Age` and
/// `Cache-Status` into the two slots it starts with, `X-Cache` only when it is not the
/// `HIT` the template already says (no name is hashed for the slots).
#[inline]
pub(super) fn fill_slots(
    map: &mut HeaderMap,
    age: HeaderValue,
    cache_status: HeaderValue,
    x_cache: HeaderValue,
) {
    // Every entry's map is a finished template (the field is private to `entry`).
    let mut slots = map.iter_mut();
    if let (Some((age_name, age_slot)), Some((status_name, status_slot))) =
        (slots.next(), slots.next())
    {
        debug_assert!(*age_name == AGE && *status_name == CACHE_STATUS);
        *age_slot = age;
        *status_slot = cache_status;
    }
    if x_cache != HIT {
        map.insert(X_CACHE, x_cache);
    }
}

/// The headers an [`Entry`](super::Entry) stored, as the origin sent them: without `Age`,
/// `Cache-Status` and `X-Cache` (each answer sets its own). A view of the entry's one map (see the module docs); nothing is copied
/// unless [`to_map`](Self::to_map) is asked for.
#[derive(Clone, Copy)]
pub struct StoredHeaders<'a> {
    map: &'a HeaderMap,
}

impl<'a> StoredHeaders<'a> {
    pub(super) fn new(map: &'a HeaderMap) -> StoredHeaders<'a> {
        StoredHeaders { map }
    }

    fn hides(&self, name: &HeaderName) -> bool {
        is_answers_own(name)
    }

    /// The first value of `name`.
    pub fn get(&self, name: &HeaderName) -> Option<&'a HeaderValue> {
        if self.hides(name) {
            return None;
        }
        self.map.get(name)
    }

    /// Every value of `name`, in order.
    pub fn get_all(&self, name: &HeaderName) -> impl Iterator<Item = &'a HeaderValue> {
        let hidden = self.hides(name);
        self.map.get_all(name).iter().filter(move |_| !hidden)
    }

    /// Whether `name` has a value.
    pub fn contains_key(&self, name: &HeaderName) -> bool {
        self.get(name).is_some()
    }

    /// Every header, in the order stored.
    pub fn iter(&self) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> {
        let view = *self;
        self.map.iter().filter(move |(name, _)| !view.hides(name))
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether no header is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy as a map of its own.
    pub fn to_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.map.len());
        for (name, value) in self.iter() {
            map.append(name.clone(), value.clone());
        }
        map
    }

    /// The entry's whole map, the cache's own headers included: for reading a header the
    /// cache never sets (`ETag`, `Last-Modified`, `Date`, `Cache-Control`) with a function
    /// that takes a map.
    pub(crate) fn as_map(&self) -> &'a HeaderMap {
        self.map
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
    fn one_map_is_charged_for_the_headers_it_holds_not_for_its_room() {
        let weight = |n: usize| {
            let headers = [
                ("content-type", "text/plain"),
                ("cache-control", "max-age=60"),
                ("etag", "\"v1\""),
                ("x-a", "1"),
            ];
            stored(&headers[..n], StatusCode::OK).weight()
        };
        // Two stored headers and room for the cache's three ask for a table with room for
        // six; so do three and three. The entry keeps (and is charged for) only what it
        // holds: the third header costs one bucket and its bytes.
        assert_eq!(
            weight(3) - weight(2),
            crate::entry::BUCKET_BYTES + "etag".len() + "\"v1\"".len()
        );
        assert_eq!(hit_headers(&stored(&[], StatusCode::OK)).len(), 3);
    }
}
