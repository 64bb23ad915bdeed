//! What a gRPC miss's answer becomes: stored when its trailers say `grpc-status: 0` over
//! exactly one message, else passed on untouched.
//!
//! The answer streams to the client frame by frame as it arrives (through the shared fill
//! engine), with a copy kept up to the size cap. Whether it may be stored is known only at
//! its trailers, so a miss's `cache-status` never says `stored`.

use std::time::Duration;

use bytes::Bytes;
use http::header::SET_COOKIE;
use http::{HeaderMap, Response, StatusCode};

use super::config::Config;
use super::request::{is_grpc, is_one_message};
use super::GRPC_STATUS;
use crate::body::{BoxError, CacheBody};
use crate::engine::fill::{Commit, Head};
use crate::engine::{self, Miss};
use crate::entry::Entry;
use crate::handle::CacheHandle;
use crate::headers::{self, CACHE_STATUS, MISS, X_CACHE};

/// Record the origin's answer when it may be stored, else pass it through.
pub(super) fn response<B>(
    config: &Config,
    miss: Miss,
    ttl: Duration,
    response: Response<B>,
) -> Response<CacheBody<B>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let handle = &config.handle;
    let (mut parts, body) = response.into_parts();
    let detail = storable(&parts, &body, config.max_response_size).err();
    let mut stored_headers = parts.headers.clone();
    headers::strip_unstorable(&mut stored_headers);
    parts.headers.insert(X_CACHE, MISS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(
            miss.forward,
            Some(detail.unwrap_or(headers::STORING)),
            engine::falling_back(handle.engine()),
        ),
    );
    if detail.is_some() {
        miss.give_up(handle.engine(), true);
        return Response::from_parts(parts, CacheBody::passthrough(body));
    }
    let head = Head {
        status: parts.status,
        headers: parts.headers.clone(),
        vary: Default::default(),
        size_hint: body.size_hint(),
    };
    let Some(fill) = engine::new_fill(
        handle.engine(),
        head,
        config.max_response_size,
        miss.leader.as_ref(),
    ) else {
        miss.give_up(handle.engine(), false);
        return Response::from_parts(parts, CacheBody::passthrough(body));
    };
    let commit = Committer {
        handle: handle.clone(),
        status: parts.status,
        headers: stored_headers,
        ttl,
        miss,
        message: MessageTracker::default(),
    };
    let reader = engine::run_fill(fill, body, commit);
    Response::from_parts(parts, CacheBody::fill(reader))
}

/// Stores a call that succeeded with one message, trailers included.
struct Committer {
    handle: CacheHandle,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    miss: Miss,
    message: MessageTracker,
}

/// Follows the length prefixes of an answer's body to tell when a second message begins.
#[derive(Default)]
struct MessageTracker {
    prefix: [u8; 5],
    seen: usize,
}

impl MessageTracker {
    /// Take in `data`; false once the body holds more than one message.
    fn push(&mut self, data: &[u8]) -> bool {
        for (i, byte) in data
            .iter()
            .take(5usize.saturating_sub(self.seen))
            .enumerate()
        {
            self.prefix[self.seen + i] = *byte;
        }
        self.seen += data.len();
        if self.seen < 5 {
            return true;
        }
        let [_, a, b, c, d] = self.prefix;
        self.seen - 5 <= u32::from_be_bytes([a, b, c, d]) as usize
    }
}

impl Commit for Committer {
    async fn store(self, body: Bytes, trailers: Option<HeaderMap>) {
        let ok = trailers
            .as_ref()
            .and_then(|t| t.get(GRPC_STATUS))
            .is_some_and(|s| s == "0");
        let (Some(trailers), true) = (trailers, ok && is_one_message(&body)) else {
            // A failed call, a stream, or an answer without trailers (broken).
            return self.abandon();
        };
        let handle = self.handle;
        let miss = self.miss;
        handle
            .engine()
            .set_hit_for_miss(&miss.logical, &miss.variant.identity, false);
        let entry = Entry::new(self.status, self.headers, body, self.ttl)
            .with_trailers(trailers)
            .with_identity(miss.variant.identity.clone());
        let (logical, hash) = (&miss.logical, miss.variant.hash);
        handle
            .engine()
            .commit(logical, hash, miss.ticket, entry, miss.leader)
            .await;
    }

    fn abandon(self) {
        self.miss.give_up(self.handle.engine(), true);
    }

    fn release_followers(&mut self) {
        engine::release(self.miss.leader.take());
    }

    fn record(&mut self, data: &[u8]) -> bool {
        self.message.push(data)
    }
}

/// May this answer be recorded? The final word is the trailers' `grpc-status`.
fn storable<B: http_body::Body>(
    parts: &http::response::Parts,
    body: &B,
    limit: usize,
) -> Result<(), &'static str> {
    if parts.status != StatusCode::OK || !is_grpc(&parts.headers) {
        return Err("status");
    }
    // Trailers-only: the call failed (or ended) before any message.
    if parts.headers.contains_key(GRPC_STATUS) {
        return Err("trailers-only");
    }
    if parts.headers.contains_key(SET_COOKIE) || says_private(&parts.headers) {
        return Err("private");
    }
    if parts.headers.len() > crate::entry::MAX_STORED_VALUES {
        return Err("headers");
    }
    if body.size_hint().lower() > limit as u64 {
        return Err("too-large");
    }
    Ok(())
}

/// `cache-control: no-store | private | no-cache` metadata keeps an answer out, as it does
/// for HTTP responses; so does metadata the cache cannot parse, or `max-age=0`.
fn says_private(headers: &HeaderMap) -> bool {
    let cc = crate::cache_control::CacheControl::parse(headers);
    cc.is_unparseable()
        || cc.no_store()
        || cc.private()
        || cc.no_cache()
        || cc.max_age().get() == Ok(Some(0))
}

#[cfg(test)]
mod tests {
    use super::{storable, MessageTracker};

    #[test]
    fn metadata_with_more_values_than_an_entry_keeps_is_not_recorded() {
        let answer = |values: usize| {
            let mut response = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            let headers = response.headers_mut();
            headers.insert("content-type", "application/grpc".parse().unwrap());
            for i in 1..values {
                headers.append("x-many", http::HeaderValue::from(i));
            }
            response.into_parts()
        };
        let (parts, body) = answer(crate::entry::MAX_STORED_VALUES);
        assert_eq!(storable(&parts, &body, 1 << 20), Ok(()));
        let (parts, body) = answer(crate::entry::MAX_STORED_VALUES + 1);
        assert_eq!(storable(&parts, &body, 1 << 20), Err("headers"));
    }

    #[test]
    fn a_second_message_is_noticed_across_frames() {
        let mut one = MessageTracker::default();
        assert!(one.push(&[0, 0, 0]));
        assert!(one.push(&[0, 3, b'a']));
        assert!(one.push(b"bc"));
        assert!(!one.push(&[0]), "the start of a second message");

        let mut whole = MessageTracker::default();
        assert!(whole.push(&[0, 0, 0, 0, 1, b'x']));
        assert!(!whole.push(&[0, 0, 0, 0, 0]));
    }
}
