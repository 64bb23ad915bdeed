//! The headers the cache adds to answers: `Cache-Status` (RFC 9211), `Age`, `X-Cache`.

use http::header::{AGE, CONNECTION, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue};

mod detail;
mod hit_status;

pub(crate) use detail::brief;
pub use detail::CacheStatusDetail;
use hit_status::HitStatuses;

/// `Cache-Status` (RFC 9211).
pub const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
/// `X-Cache: HIT | MISS | BYPASS | STALE`: the one-word answer older tools and dashboards read.
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// Where a response names its invalidation tags; stripped before the client sees it.
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// The cache's name in `Cache-Status`.
const CACHE_NAME: &str = "tower-response-cache";

pub(crate) const HIT: HeaderValue = HeaderValue::from_static("HIT");
pub(crate) const MISS: HeaderValue = HeaderValue::from_static("MISS");
pub(crate) const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");
pub(crate) const STALE: HeaderValue = HeaderValue::from_static("STALE");

/// Why a request was forwarded, as RFC 9211 spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Forward {
    Bypass,
    Method,
    Request,
    UriMiss,
    VaryMiss,
    /// The entry had expired.
    Stale,
}

impl Forward {
    fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::Request => "request",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
        }
    }
}

/// `tower-response-cache; hit; ttl=42`. `detail=` adds `coalesced` after waiting for
/// another request's fetch in this process, `fleet` after waiting for another process's,
/// and `fallback` while Redis is down (joined by `/`).
pub(crate) fn hit_status(ttl_secs: u64, waited: Waited, fallback: bool) -> HeaderValue {
    static PLAIN: HitStatuses = HitStatuses::new(|ttl| format!("{CACHE_NAME}; hit; ttl={ttl}"));
    let waited = match waited {
        Waited::No => None,
        Waited::Here => Some("coalesced"),
        Waited::Fleet => Some("fleet"),
    };
    if waited.is_none() && !fallback {
        return PLAIN.get(ttl_secs);
    }
    let mut value = format!("{CACHE_NAME}; hit; ttl={ttl_secs}");
    push_detail(&mut value, [waited, fallback.then_some("fallback")]);
    HeaderValue::try_from(value).expect("ASCII header value")
}

/// Whether a request waited for another's fetch before its entry answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// It did not.
    No,
    /// For a fetch in this process (its flight).
    Here,
    /// For a fetch in another process (fleet-wide single flight).
    Fleet,
}

/// `tower-response-cache; hit`: a hit said briefly.
pub(crate) const BRIEF_HIT: HeaderValue = HeaderValue::from_static("tower-response-cache; hit");

/// `tower-response-cache; hit; ttl=42; detail=l1`: a hit from the near cache in front of
/// Redis (no Redis call).
pub(crate) fn l1_hit_status(ttl_secs: u64) -> HeaderValue {
    static NEAR: HitStatuses =
        HitStatuses::new(|ttl| format!("{CACHE_NAME}; hit; ttl={ttl}; detail=l1"));
    NEAR.get(ttl_secs)
}

/// `tower-response-cache; fwd=uri-miss; detail=storing` (a storable answer being recorded:
/// whether it is stored is known only when its body ends), or with `detail=` why it is not
/// stored (and `fallback` while Redis is down).
pub(crate) fn forward_status(
    forward: Forward,
    detail: Option<&str>,
    fallback: bool,
) -> HeaderValue {
    let common = match (forward, detail, fallback) {
        (Forward::Method, None, false) => Some("tower-response-cache; fwd=method"),
        (Forward::Request, None, false) => Some("tower-response-cache; fwd=request"),
        (Forward::Bypass, None, false) => Some("tower-response-cache; fwd=bypass"),
        (Forward::UriMiss, Some(STORING), false) => {
            Some("tower-response-cache; fwd=uri-miss; detail=storing")
        }
        _ => None,
    };
    if let Some(common) = common {
        return HeaderValue::from_static(common);
    }
    let mut value = format!("{CACHE_NAME}; fwd={}", forward.as_str());
    push_detail(&mut value, [detail, fallback.then_some("fallback")]);
    HeaderValue::try_from(value).expect("ASCII header value")
}

/// The `detail` of a miss whose answer is being recorded for the store.
pub(crate) const STORING: &str = "storing";

/// An expired entry served: `tower-response-cache; hit; ttl=-3;
/// detail=stale-while-revalidate` or `tower-response-cache; fwd=stale; ttl=-3;
/// detail=stale-if-error`.
pub(crate) fn stale_status(stale_secs: u64, on_error: bool, fallback: bool) -> HeaderValue {
    let (head, detail) = if on_error {
        ("fwd=stale", "stale-if-error")
    } else {
        ("hit", "stale-while-revalidate")
    };
    let mut value = format!("{CACHE_NAME}; {head}; ttl=-{stale_secs}");
    push_detail(&mut value, [Some(detail), fallback.then_some("fallback")]);
    HeaderValue::try_from(value).expect("ASCII header value")
}

/// A small non-negative integer as a header value, without allocating below 100.
#[inline]
pub(crate) fn int_value(n: u64) -> HeaderValue {
    const SMALL: [&str; 100] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63", "64", "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76",
        "77", "78", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91",
        "92", "93", "94", "95", "96", "97", "98", "99",
    ];
    match SMALL.get(n as usize) {
        Some(s) => HeaderValue::from_static(s),
        None => n.into(),
    }
}

/// An entry the origin validated: `tower-response-cache; fwd=stale; fwd-status=304;
/// stored` (`fwd=request` for a request's `no-cache`, `stored` once written back).
pub(crate) fn revalidated_status(
    forward: Forward,
    status: http::StatusCode,
    stored: bool,
    fallback: bool,
) -> HeaderValue {
    let (forward, status) = (forward.as_str(), status.as_u16());
    let mut value = format!("{CACHE_NAME}; fwd={forward}; fwd-status={status}");
    if stored {
        value.push_str("; stored");
    }
    push_detail(&mut value, [None, fallback.then_some("fallback")]);
    HeaderValue::try_from(value).expect("ASCII header value")
}

/// The stored headers updated from a `304`'s (RFC 9111 §3.2): each field the 304 carries
/// replaces the stored one, but for `Content-Length` and the fields that describe one
/// connection or this cache's own answer.
pub(crate) fn updated_from_304(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut updated = stored.clone();
    let mut fresh = not_modified.clone();
    strip_unstorable(&mut fresh);
    for name in fresh.keys() {
        if *name == http::header::CONTENT_LENGTH || *name == CACHE_TAG {
            continue;
        }
        updated.remove(name);
        for value in fresh.get_all(name) {
            updated.append(name.clone(), value.clone());
        }
    }
    updated
}

/// A follower that read another request's fetch as it arrived (RFC 9211 `collapsed`):
/// `tower-response-cache; fwd=uri-miss; collapsed`.
pub(crate) fn collapsed_status(forward: Forward, fallback: bool) -> HeaderValue {
    let mut value = format!("{CACHE_NAME}; fwd={}; collapsed", forward.as_str());
    push_detail(&mut value, [None, fallback.then_some("fallback")]);
    HeaderValue::try_from(value).expect("ASCII header value")
}

fn push_detail(value: &mut String, parts: [Option<&str>; 2]) {
    let mut first = true;
    for part in parts.into_iter().flatten() {
        value.push_str(if first { "; detail=" } else { "/" });
        value.push_str(part);
        first = false;
    }
}

/// Headers that describe one connection or one transfer, never to be replayed from a store:
/// the hop-by-hop ones, and those `Connection` names (RFC 9111 §3.1).
pub(crate) fn strip_unstorable(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TRANSFER_ENCODING, UPGRADE, AGE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(X_CACHE);
    headers.remove(CACHE_STATUS);
}

/// Take the `Cache-Tag` header(s) off a response: comma-separated tags.
///
/// `Err` when a value is not ASCII: the entry would be stored without a tag that
/// `invalidate_tag` must reach, so it must not be stored at all.
pub(crate) fn take_tags(headers: &mut HeaderMap) -> Result<Vec<String>, ()> {
    let mut tags = Vec::new();
    let mut readable = true;
    if let http::header::Entry::Occupied(entry) = headers.entry(CACHE_TAG) {
        for value in entry.remove_entry_mult().1 {
            match value.to_str() {
                Ok(value) => tags.extend(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(str::to_owned),
                ),
                Err(_) => readable = false,
            }
        }
    }
    if readable {
        Ok(tags)
    } else {
        Err(())
    }
}

/// An HTTP-date value (RFC 9110 §5.6.7); `None` when it is not one.
pub(crate) fn parse_date(value: &HeaderValue) -> Option<std::time::SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// Headers a field's first value can be read from: a message's `HeaderMap`, or the
/// headers an entry stored (which are not a map).
pub(crate) trait Fields {
    /// The first value of `name`.
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue>;
}

impl Fields for http::HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.get(name)
    }
}

/// The first `name` field of `headers` as an HTTP-date.
pub(crate) fn date<F: Fields + ?Sized>(
    headers: &F,
    name: HeaderName,
) -> Option<std::time::SystemTime> {
    headers.first(&name).and_then(parse_date)
}
