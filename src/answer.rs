//! Answers built from a stored entry (a hit, a stale entry, or `304 Not Modified`), and a
//! follower's answer read from its flight leader's fill as it arrives.
//!
//! The body is the entry's shared `Bytes` (no copy). A client that already holds the
//! entry's version (`If-None-Match` naming its `ETag`, or `If-Modified-Since` not before its
//! `Last-Modified`) gets `304` and no body.

use http::header::{
    AGE, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES, IF_MODIFIED_SINCE,
    IF_NONE_MATCH, LAST_MODIFIED, VARY,
};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::CacheBody;
use crate::clock;
use crate::engine::fill::FillBody;
use crate::entry::Entry;
use crate::headers::{self, Forward, Waited, CACHE_STATUS, HIT, STALE, X_CACHE};
use crate::store::Source;

/// How an entry came to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Fresh; after waiting for another request's fetch, here or in another process.
    Hit { waited: Waited },
    /// Fresh, from the near cache in front of Redis (`detail=l1`).
    NearHit,
    /// Fresh, said briefly (`tower-response-cache; hit`, see `CacheStatusDetail`): the
    /// layer's answer on the spot when it says little.
    BriefHit,
    /// Expired, within its stale-while-revalidate window; a refresh runs meanwhile.
    StaleWhileRevalidate,
    /// Expired, within its stale-if-error window, instead of a failed origin.
    StaleIfError,
    /// Validated by the origin (a `304`, or a `200` to a `HEAD`) and freshened; forwarded
    /// for this reason (expired, or the request's `no-cache`).
    Revalidated {
        forward: headers::Forward,
        /// The origin's answer.
        status: StatusCode,
        /// Whether the freshened entry was written back.
        stored: bool,
    },
    /// Expired, within what the request's `max-stale` accepts.
    MaxStale,
}

impl Served {
    /// A fresh hit read from `source` (`detail=l1` from the near cache), after waiting
    /// (or not) for another request's fetch.
    pub(crate) fn hit(source: Source, waited: Waited) -> Served {
        match source {
            Source::Near => Served::NearHit,
            _ => Served::Hit { waited },
        }
    }
}

/// Answer `request` (its parts) from `entry`.
pub(crate) fn answer<B>(
    entry: &Entry,
    request: &http::request::Parts,
    served: Served,
    fallback: bool,
) -> Response<CacheBody<B>> {
    let is_head = request.method == http::Method::HEAD;
    answer_to(entry, &request.headers, is_head, served, fallback)
}

/// Answer a request with these headers from `entry`.
pub(crate) fn answer_to<B>(
    entry: &Entry,
    request_headers: &HeaderMap,
    is_head: bool,
    served: Served,
    fallback: bool,
) -> Response<CacheBody<B>> {
    let condition = not_modified(entry, request_headers);
    build(
        entry,
        condition,
        is_head,
        served,
        fallback,
        clock::now_millis(),
    )
}

/// [`answer`] on the hit path: at `now` (the instant the lookup judged freshness at), and
/// with no `304` to weigh when the request rules saw no condition (`conditional` false).
pub(crate) fn answer_at<B>(
    entry: &Entry,
    request: &http::request::Parts,
    served: Served,
    fallback: bool,
    conditional: bool,
    now: u64,
) -> Response<CacheBody<B>> {
    let is_head = request.method == http::Method::HEAD;
    let condition = conditional && not_modified(entry, &request.headers);
    build(entry, condition, is_head, served, fallback, now)
}

/// The answer: `304` when `not_modified`, else the entry's status, headers and body.
///
/// What a plain hit runs is written out here; a `304`, a `HEAD` answer's length and the
/// `Cache-Status` of answers other than hits are out of line (the code a hit runs stays in
/// a few cache lines).
fn build<B>(
    entry: &Entry,
    not_modified: bool,
    is_head: bool,
    served: Served,
    fallback: bool,
    now: u64,
) -> Response<CacheBody<B>> {
    let age = headers::int_value(entry.age_secs(now));
    let (status, x_cache) = match served {
        Served::BriefHit => (headers::BRIEF_HIT, HIT),
        Served::Hit { waited } => (
            headers::hit_status(entry.remaining_secs(now), waited, fallback),
            HIT,
        ),
        _ => cache_headers(entry, served, fallback, now),
    };
    if not_modified {
        return not_modified_answer(entry, age, status, x_cache);
    }
    let (body, trailers) = match is_head {
        true => (None, None),
        false => (Some(entry.body().clone()), entry.trailers().cloned()),
    };
    let mut response = Response::new(CacheBody::cached(body, trailers));
    *response.status_mut() = entry.status();
    let empty = std::mem::replace(
        response.headers_mut(),
        entry.answer_headers(age, status, x_cache),
    );
    // The map `Response::new` made owns no memory: dropping it frees nothing.
    std::mem::forget(empty);
    if is_head {
        say_length(entry, response.headers_mut());
    }
    response
}

/// A `HEAD` answer has no body, so it says the length a full answer's server writes from
/// the body's exact size.
#[cold]
#[inline(never)]
fn say_length(entry: &Entry, headers: &mut HeaderMap) {
    if entry.status() != StatusCode::NO_CONTENT && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(
            CONTENT_LENGTH,
            headers::int_value(entry.body().len() as u64),
        );
    }
}

/// A `304 Not Modified` for a client that holds the entry's version: the headers RFC 9110
/// §15.4.5 lists, and the cache's own.
#[cold]
#[inline(never)]
fn not_modified_answer<B>(
    entry: &Entry,
    age: HeaderValue,
    status: HeaderValue,
    x_cache: HeaderValue,
) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(None, None));
    *response.status_mut() = StatusCode::NOT_MODIFIED;
    let headers = response.headers_mut();
    for name in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        VARY,
        LAST_MODIFIED,
    ] {
        for value in entry.headers().get_all(&name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(AGE, age);
    headers.insert(CACHE_STATUS, status);
    headers.insert(X_CACHE, x_cache);
    response
}

/// What an answer served as `served` says in `Cache-Status` and `X-Cache` (hits aside,
/// which `build` writes out).
#[inline(never)]
fn cache_headers(
    entry: &Entry,
    served: Served,
    fallback: bool,
    now: u64,
) -> (HeaderValue, HeaderValue) {
    match served {
        Served::Hit { waited } => (
            headers::hit_status(entry.remaining_secs(now), waited, fallback),
            HIT,
        ),
        Served::NearHit => (headers::l1_hit_status(entry.remaining_secs(now)), HIT),
        Served::BriefHit => (headers::BRIEF_HIT, HIT),
        Served::StaleWhileRevalidate => (
            headers::stale_status(entry.stale_secs(now), false, fallback),
            STALE,
        ),
        Served::StaleIfError => (
            headers::stale_status(entry.stale_secs(now), true, fallback),
            STALE,
        ),
        Served::Revalidated {
            forward,
            status,
            stored,
        } => (
            headers::revalidated_status(forward, status, stored, fallback),
            HIT,
        ),
        Served::MaxStale => (
            headers::stale_status(entry.stale_secs(now), false, fallback),
            STALE,
        ),
    }
}

/// A follower's answer: the leader's response, read as it arrives (what
/// [`Lookup::read_shared`](crate::engine::Lookup::read_shared) is for the adapters that answer responses).
pub(crate) fn shared_answer<B>(
    reader: FillBody,
    forward: Forward,
    fallback: bool,
) -> Response<CacheBody<B>> {
    let head = reader.head();
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    let headers = response.headers_mut();
    headers.insert(CACHE_STATUS, headers::collapsed_status(forward, fallback));
    headers.insert(X_CACHE, headers::MISS);
    response.map(|()| CacheBody::fill(reader))
}

/// Does the client already hold this entry's version? Only for 200s (RFC 9110 §13.2.1);
/// `If-None-Match` wins over `If-Modified-Since`.
fn not_modified(entry: &Entry, request: &HeaderMap) -> bool {
    if entry.status() != StatusCode::OK {
        return false;
    }
    if let Some(condition) = request.get(IF_NONE_MATCH) {
        let Ok(condition) = condition.to_str() else {
            return false;
        };
        let Some(etag) = entry.headers().get(&ETAG).and_then(|e| e.to_str().ok()) else {
            return false;
        };
        // Weak comparison: `W/"x"` and `"x"` name the same version.
        let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
        return condition.trim() == "*" || condition.split(',').any(|t| opaque(t) == opaque(etag));
    }
    // The request first: most carry no condition, and parsing the entry's date is the cost.
    let Some(since) = headers::date(request, IF_MODIFIED_SINCE) else {
        return false;
    };
    headers::date(&entry.headers(), LAST_MODIFIED).is_some_and(|modified| modified <= since)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn entry(headers: &[(&'static str, &str)]) -> Entry {
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.insert(*n, v.parse().unwrap());
        }
        Entry::new(
            StatusCode::OK,
            map,
            Bytes::from_static(b"x"),
            Duration::from_secs(60),
        )
    }

    fn request(headers: &[(&'static str, &str)]) -> HeaderMap {
        entry(headers).headers().to_map()
    }

    #[test]
    fn if_none_match_compares_weakly() {
        let e = entry(&[("etag", "\"v1\"")]);
        assert!(not_modified(&e, &request(&[("if-none-match", "\"v1\"")])));
        assert!(not_modified(&e, &request(&[("if-none-match", "W/\"v1\"")])));
        assert!(not_modified(
            &e,
            &request(&[("if-none-match", "\"a\", \"v1\"")])
        ));
        assert!(not_modified(&e, &request(&[("if-none-match", "*")])));
        assert!(!not_modified(&e, &request(&[("if-none-match", "\"v2\"")])));
        assert!(!not_modified(
            &entry(&[]),
            &request(&[("if-none-match", "\"v1\"")])
        ));
    }

    #[test]
    fn if_modified_since_against_last_modified() {
        let e = entry(&[("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")]);
        assert!(not_modified(
            &e,
            &request(&[("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT")])
        ));
        assert!(!not_modified(
            &e,
            &request(&[("if-modified-since", "Tue, 20 Oct 2015 07:28:00 GMT")])
        ));
        // If-None-Match wins.
        let both = request(&[
            ("if-modified-since", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("if-none-match", "\"other\""),
        ]);
        assert!(!not_modified(&e, &both));
    }

    #[test]
    fn a_hit_fills_the_template_with_one_age_and_one_cache_status() {
        // The origin's own `Age` and `Cache-Status` never reach the answer.
        let e = entry(&[("age", "99"), ("cache-status", "upstream; hit")]);
        for served in [
            Served::Hit { waited: Waited::No },
            Served::StaleWhileRevalidate,
        ] {
            let r: Response<CacheBody<http_body_util::Empty<Bytes>>> =
                answer_to(&e, &HeaderMap::new(), false, served, false);
            let all = |name| r.headers().get_all(name).iter().count();
            assert_eq!((all(AGE), all(CACHE_STATUS), all(X_CACHE)), (1, 1, 1));
            assert_eq!(r.headers()[AGE], "0");
            assert!(r.headers()[CACHE_STATUS]
                .to_str()
                .unwrap()
                .starts_with("tower-response-cache; "));
        }
    }

    #[test]
    fn a_head_answer_says_the_length_a_full_answer_leaves_to_its_body() {
        let e = entry(&[("content-type", "text/plain")]);
        let hit = Served::Hit { waited: Waited::No };
        let answer = |is_head| -> Response<CacheBody<http_body_util::Empty<Bytes>>> {
            answer_to(&e, &HeaderMap::new(), is_head, hit, false)
        };
        let head = answer(true);
        assert_eq!(head.headers()[CONTENT_LENGTH], "1");
        assert_eq!(http_body::Body::size_hint(head.body()).exact(), Some(0));
        let full = answer(false);
        assert!(full.headers().get(CONTENT_LENGTH).is_none());
        assert_eq!(http_body::Body::size_hint(full.body()).exact(), Some(1));
    }

    #[test]
    fn a_304_has_no_body_and_keeps_validators() {
        let e = entry(&[("etag", "\"v1\""), ("content-type", "text/plain")]);
        let r: Response<CacheBody<http_body_util::Empty<Bytes>>> = answer_to(
            &e,
            &request(&[("if-none-match", "\"v1\"")]),
            false,
            Served::Hit { waited: Waited::No },
            false,
        );
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert!(r.headers().get("content-type").is_none());
        assert_eq!(r.headers()["x-cache"], "HIT");
        assert!(http_body::Body::is_end_stream(r.body()));
    }

    #[test]
    fn the_headers_a_new_response_starts_with_own_no_memory() {
        // `build` forgets them instead of dropping them.
        let response = Response::new(());
        assert_eq!(response.headers().capacity(), 0);
        assert!(response.headers().is_empty());
    }
}
