//! What happens to an origin response on a miss: stored as it streams, or passed through.
//!
//! A storable response is wrapped in a recording body that tees it into an entry; the
//! entry is written at end of stream (see [`ResponseBody`]). An unstorable one releases the
//! flight's followers at once and marks the key hit-for-miss, so later misses do not queue.

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;

use crate::body::{Recorder, ResponseBody};
use crate::coalesce::{Leader, Outcome};
use crate::entry::Vary;
use crate::handle::Ticket;
use crate::headers::{self, Forward, CACHE_STATUS, MISS, X_CACHE};
use crate::key::{self, Variant, VarySpec};
use crate::layer::Config;
use crate::policy::NotStorable;
use crate::store::Backend;

/// A miss on its way to the origin: what its response will be stored under.
pub(crate) struct Miss {
    pub(crate) logical: String,
    pub(crate) variant: Variant,
    pub(crate) ticket: Ticket,
    pub(crate) leader: Option<Leader>,
    pub(crate) forward: Forward,
    pub(crate) is_head: bool,
}

/// Turn the origin's response into the client's: recorded if storable, else passed through.
pub(crate) fn response<B: Body<Data = Bytes>>(
    config: &Config,
    miss: Miss,
    response: Response<B>,
    request_headers: &HeaderMap,
) -> Response<ResponseBody<B>> {
    let handle = &config.handle;
    let fallback = handle.backend() == Backend::FallingBack;
    let (mut parts, body) = response.into_parts();
    let tags = headers::take_tags(&mut parts.headers);
    parts.headers.insert(X_CACHE, MISS);
    let decision = if miss.is_head {
        Err(None)
    } else {
        storable(config, &parts, &body, request_headers).map_err(Some)
    };
    match decision {
        Ok((ttl, vary)) => {
            handle.set_hit_for_miss(&miss.logical, &miss.variant.identity, false);
            let mut stored_headers = parts.headers.clone();
            headers::strip_unstorable(&mut stored_headers);
            let windows = config.policy.stale_windows(&parts.headers);
            let (while_revalidate, if_error) = handle.default_stale();
            parts.headers.insert(
                CACHE_STATUS,
                headers::forward_status(miss.forward, true, None, fallback),
            );
            let recorder = Recorder {
                handle: handle.clone(),
                logical: miss.logical,
                variant: miss.variant,
                ticket: miss.ticket,
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
                limit: config.policy.max_body(),
                leader: miss.leader,
                buffer: bytes::BytesMut::with_capacity(
                    body.size_hint().exact().unwrap_or(0).min(1 << 20) as usize,
                ),
            };
            Response::from_parts(parts, ResponseBody::recording(body, recorder))
        }
        Err(reason) => {
            if reason.is_some() {
                handle.set_hit_for_miss(&miss.logical, &miss.variant.identity, true);
            }
            if let Some(leader) = miss.leader {
                leader.finish(Outcome::Uncacheable);
            }
            parts.headers.insert(
                CACHE_STATUS,
                headers::forward_status(
                    miss.forward,
                    false,
                    reason.map(NotStorable::as_str),
                    fallback,
                ),
            );
            Response::from_parts(parts, ResponseBody::passthrough(body))
        }
    }
}

/// May this response be stored? Returns the TTL and the `Vary` values it was made for.
fn storable<B: Body>(
    config: &Config,
    parts: &http::response::Parts,
    body: &B,
    request_headers: &HeaderMap,
) -> Result<(std::time::Duration, Vary), NotStorable> {
    let ttl = config.policy.storable(
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
    Ok((ttl, Vary { names, values }))
}
