//! Conditional requests: the validators the cache sends upstream for an expired entry, and
//! the client's own conditions, which are answered from a stored entry or forwarded as sent
//! when nothing is stored (RFC 9111 §4.3).

use http::header::{
    ETAG, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
};

use super::config::Config;
use crate::entry::Entry;

/// Ask the origin to validate `entry`: its `Last-Modified` as `If-Modified-Since`, and its
/// `ETag` as `If-None-Match` unless this cache may have made the tag up (then the origin
/// could not recognise it). Whether any validator was added.
pub(super) fn add_validators(
    config: &Config,
    entry: &Entry,
    headers: &mut http::HeaderMap,
) -> bool {
    let mut added = false;
    if !config.policy.etags() {
        if let Some(etag) = entry.headers().get(&ETAG) {
            headers.insert(IF_NONE_MATCH, etag.clone());
            added = true;
        }
    }
    if let Some(modified) = entry.headers().get(&LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
        added = true;
    }
    added
}

/// A conditional request is answered from the stored entry (its validators, a generated
/// `ETag` among them, exist only once it is stored), not from a fill in flight.
pub(super) fn has_conditionals(headers: &http::HeaderMap) -> bool {
    [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

pub(super) fn strip_conditionals(headers: &mut http::HeaderMap) {
    for name in [
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_MATCH,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ] {
        headers.remove(name);
    }
}
