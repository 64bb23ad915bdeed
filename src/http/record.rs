//! What happens to an origin response on a miss: shared and stored as it streams, or
//! passed through.
//!
//! A storable response becomes a fill (see the `fill` module): a task reads the origin's
//! body at its own pace, the leader's client and the flight's followers read the fill, and
//! at its end the recorded body is committed as an entry. An unstorable one releases the
//! flight's followers at once and marks the key hit-for-miss, so later misses do not queue.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::ETAG;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body;

use super::config::Config;
use crate::body::{BoxError, CacheBody};
use crate::engine::fill::{Commit, Fill, Head};
use crate::engine::{self, Miss};
use crate::entry::{Entry, Vary};
use crate::handle::CacheHandle;
use crate::headers::{self, Forward, CACHE_STATUS, MISS, X_CACHE};
use crate::key::{self, VarySpec};
use crate::policy::{NotStorable, StaleWindows};

/// Wrap the origin's response: a fill when it may be stored, else a pass-through. A
/// `HEAD` is never stored as a `GET` entry.
pub(crate) fn response<B>(
    config: &Config,
    miss: Miss,
    is_head: bool,
    response: Response<B>,
    request_headers: &HeaderMap,
) -> Response<CacheBody<B>>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let handle = &config.handle;
    let fallback = engine::falling_back(handle.engine());
    let (mut parts, body) = response.into_parts();
    let tags = headers::take_tags(&mut parts.headers);
    let decision = if is_head {
        Err(None)
    } else {
        storable(config, &parts, &body, request_headers).map_err(Some)
    };
    let (decision, tags) = match tags {
        Ok(tags) => (decision, tags),
        Err(()) => (decision.and(Err(Some(NotStorable::Tag))), Vec::new()),
    };
    let forward = miss.forward;
    let reason = match decision {
        Ok((ttl, windows, vary)) => {
            handle
                .engine()
                .set_hit_for_miss(&miss.logical, &miss.variant.identity, false);
            let mut stored_headers = parts.headers.clone();
            headers::strip_unstorable(&mut stored_headers);
            let (while_revalidate, if_error) = handle.engine().default_stale();
            let head = Head {
                status: parts.status,
                headers: parts.headers.clone(),
                vary: vary.clone(),
                size_hint: body.size_hint(),
            };
            let Some(fill) = engine::new_fill(
                handle.engine(),
                head,
                config.policy.max_body(),
                miss.leader.as_ref(),
            ) else {
                miss.give_up(handle.engine(), false);
                return passthrough(parts, body, forward, None, fallback);
            };
            let commit = Committer {
                keep_expired: config.policy.is_rfc9111(),
                initial_age: config.policy.initial_age(&parts.headers),
                handle: handle.clone(),
                status: parts.status,
                headers: stored_headers,
                ttl,
                stale: (
                    windows.while_revalidate.unwrap_or(while_revalidate),
                    windows.if_error.unwrap_or(if_error),
                ),
                etag: config.policy.etags(),
                tags,
                vary,
                miss,
            };
            parts.headers.insert(X_CACHE, MISS);
            parts.headers.insert(
                CACHE_STATUS,
                headers::forward_status(forward, Some(headers::STORING), fallback),
            );
            let reader = engine::run_fill(fill, body, commit);
            return Response::from_parts(parts, CacheBody::fill(reader));
        }
        Err(reason) => {
            // A 304 answers one client's condition: it says nothing about the key.
            let remember = reason.is_some() && parts.status != StatusCode::NOT_MODIFIED;
            miss.give_up(handle.engine(), remember);
            reason
        }
    };
    passthrough(parts, body, forward, reason, fallback)
}

/// The origin's answer as it is, marked as a miss that was not stored (and why).
fn passthrough<B>(
    mut parts: http::response::Parts,
    body: B,
    forward: Forward,
    reason: Option<NotStorable>,
    fallback: bool,
) -> Response<CacheBody<B>> {
    parts.headers.insert(X_CACHE, MISS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(forward, reason.map(NotStorable::as_str), fallback),
    );
    Response::from_parts(parts, CacheBody::passthrough(body))
}

/// What a fill's recorded body is stored as, and who hears about it.
struct Committer {
    /// Keep expired entries for a while even without a validator: the RFC 9111 preset
    /// serves them to requests whose `max-stale` accepts them.
    keep_expired: bool,
    initial_age: Duration,
    handle: CacheHandle,
    status: StatusCode,
    headers: HeaderMap,
    ttl: Duration,
    stale: (Duration, Duration),
    etag: bool,
    tags: Vec<String>,
    vary: Vary,
    miss: Miss,
}

impl Commit for Committer {
    async fn store(mut self, body: Bytes, trailers: Option<HeaderMap>) {
        if trailers.is_some() {
            // The layer stores bodies only; trailers are passed through, never replayed.
            return self.abandon();
        }
        let mut headers = std::mem::take(&mut self.headers);
        // A validator the origin can check: its own ETag (one this cache makes up means
        // nothing upstream) or a Last-Modified. Then an expired entry is kept to be validated.
        let validatable = self.keep_expired
            || (!self.etag && headers.contains_key(ETAG))
            || headers.contains_key(http::header::LAST_MODIFIED);
        if self.etag && !headers.contains_key(ETAG) {
            let tag = format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(&body));
            headers.insert(
                ETAG,
                HeaderValue::try_from(tag).expect("hex is a valid header value"),
            );
        }
        let entry = Entry::new(self.status, headers, body, self.ttl)
            .with_stale(self.stale.0, self.stale.1)
            .with_tags(std::mem::take(&mut self.tags))
            .with_vary(std::mem::take(&mut self.vary))
            .with_identity(self.miss.variant.identity.clone())
            .with_initial_age(self.initial_age);
        let entry = if validatable {
            entry.with_validation_window(crate::entry::validation_window(self.ttl))
        } else {
            entry
        };
        let miss = self.miss;
        let (logical, hash) = (&miss.logical, miss.variant.hash);
        self.handle
            .engine()
            .commit(logical, hash, miss.ticket, entry, miss.leader)
            .await;
    }

    fn abandon(self) {
        engine::release(self.miss.leader);
    }

    fn release_followers(&mut self) {
        engine::release(self.miss.leader.take());
    }
}

/// Whether a follower may read `fill`: it sends the values the response varies on.
pub(crate) fn may_share(fill: &Arc<Fill>, request_headers: &HeaderMap) -> bool {
    key::vary_matches(&fill.head.vary, request_headers)
}

/// May the answer be stored: its TTL, stale windows and `Vary`, from one reading of its
/// `Cache-Control`.
fn storable<B: Body>(
    config: &Config,
    parts: &http::response::Parts,
    body: &B,
    request_headers: &HeaderMap,
) -> Result<(std::time::Duration, StaleWindows, Vary), NotStorable> {
    let (ttl, windows) = config.policy.storing(
        parts.status,
        &parts.headers,
        config.handle.ttl(),
        request_headers,
    )?;
    let names = match key::vary_spec(&parts.headers) {
        VarySpec::Any => return Err(NotStorable::VaryAny),
        VarySpec::Headers(names) => names,
    };
    if body.size_hint().lower() > config.policy.max_body() as u64 {
        return Err(NotStorable::TooLarge);
    }
    let values = key::vary_values(&names, request_headers);
    Ok((ttl, windows, Vary { names, values }))
}
