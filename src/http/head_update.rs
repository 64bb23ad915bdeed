//! A `200` to a `HEAD` freshens the stored `GET` response it describes (RFC 9111 §4.3.5).
//!
//! Why: a stale entry asked about with `HEAD` goes to the origin; the origin's answer
//! carries the same fields a `GET` would, so it can update the stored headers and
//! freshness just as a `304` does (never the body, never `Content-Length`), and the next
//! `GET` is a hit instead of a second trip. A `HEAD` answer whose `ETag`, `Last-Modified`
//! or `Content-Length` differ from the stored ones describes another representation: it
//! passes through and the entry stays stale, to be validated or replaced by the next `GET`.
//! An entry a soft invalidation made stale may have changed although its length did not:
//! only an answer that repeats one of its validators vouches for its body, and an answer
//! with none leaves it stale (RFC 9111 lets a cache invalidate instead of update).

use std::sync::Arc;

use http::header::{CONTENT_LENGTH, ETAG, LAST_MODIFIED};
use http::{HeaderMap, Response, StatusCode};

use crate::answer::{answer_to, Served};
use crate::body::CacheBody;
use crate::engine::Ticket;
use crate::entry::Entry;
use crate::headers;
use crate::http::config::Config;

/// Freshen `entry` from the headers of a `200` answering a `HEAD`, store it, and answer
/// the `HEAD` from it; `None` when the answer describes another representation or makes
/// the response unstorable (then it passes through as it came).
pub(crate) async fn freshen<B>(
    config: &Config,
    entry: &Entry,
    head: &HeaderMap,
    logical: &str,
    variant: u64,
    ticket: Ticket,
    request_headers: &HeaderMap,
) -> Option<Response<CacheBody<B>>> {
    if entry.status() != StatusCode::OK || !same_representation(entry, head) {
        return None;
    }
    let handle = &config.handle;
    let policy = &config.policy;
    let headers = headers::updated_from_304(&entry.headers().to_map(), head);
    let ttl = policy
        .storable(entry.status(), &headers, handle.ttl(), request_headers)
        .ok()?;
    let fresh = Arc::new(
        entry
            .freshened(headers, ttl)
            .with_initial_age(policy.initial_age(head)),
    );
    // A HEAD leads no flight (`Lookup::may_lead`).
    let stored = handle
        .engine()
        .commit(logical, variant, ticket, fresh.clone(), None)
        .await;
    let fallback = handle.backend() == crate::store::Backend::FallingBack;
    let served = Served::Revalidated {
        forward: crate::headers::Forward::Stale,
        status: StatusCode::OK,
        stored,
    };
    Some(answer_to(&fresh, request_headers, true, served, fallback))
}

/// Whether a `HEAD` answer's validators and length agree with the stored response (and,
/// for an invalidated entry, whether one validator is repeated to vouch for its body).
fn same_representation(entry: &Entry, head: &HeaderMap) -> bool {
    let mut repeated = false;
    for name in [ETAG, LAST_MODIFIED] {
        match (entry.headers().get(&name), head.get(&name)) {
            (Some(stored), Some(fresh)) if stored != fresh => return false,
            (Some(_), Some(_)) => repeated = true,
            _ => {}
        }
    }
    let length = head
        .get(CONTENT_LENGTH)
        .is_none_or(|l| l.as_bytes() == entry.body().len().to_string().as_bytes());
    length && (repeated || !entry.is_invalidated())
}
