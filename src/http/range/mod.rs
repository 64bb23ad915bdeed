//! Range requests answered from the cache (RFC 9110 §14, RFC 9111 §3.4 not needed: only
//! complete responses are stored).
//!
//! Why here and not in the origin: a stored `200` holds every byte a `Range` can ask for,
//! so a video seek or a resumed download costs no origin request. The rules:
//!
//! - a `GET` with `Range` is looked up like any `GET`; a fresh stored `200` answers it
//!   with `206` and one slice, `416` when nothing asked for exists, or the whole `200`
//!   for several ranges or an `If-Range` that does not match (see [`spec`]);
//! - anything else (a miss, an expired entry, a stored non-`200`, an entry the RFC 9111
//!   preset's request `max-age` / `min-fresh` refuse, a request `no-cache`) forwards the
//!   request as sent, `If-Range` included; it never
//!   leads a fill, and what comes back (a `206`, or a `200` the origin chose to send) is
//!   passed through, never stored;
//! - the client's own `If-None-Match` / `If-Modified-Since` are evaluated first, as for
//!   any hit (RFC 9110 §13.2.2): a `304` carries no range.

mod spec;

use std::marker::PhantomData;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, AGE, CONTENT_LENGTH, CONTENT_RANGE, DATE, ETAG, LAST_MODIFIED, RANGE,
};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::answer::{answer, Served};
use crate::body::{BoxError, CacheBody};
use crate::cache_control::RequestDirectives;
use crate::clock;
use crate::engine::coalesce::Share;
use crate::engine::fill::Fill;
use crate::engine::Found;
use crate::engine::{self, Fetching, Weighed};
use crate::entry::Entry;
use crate::future::ResponseFuture;
use crate::headers::{self, Forward, Waited, CACHE_STATUS, CACHE_TAG, X_CACHE};
use crate::http::config::Config;
use crate::key::{self, Variant};
use crate::stats::Outcome;
use crate::store::Source;

use self::spec::Selection;

/// Serve a `GET` with `Range` (`keyed`: the request carries a keyed header). `inner` is
/// the readied service.
pub(crate) fn call<S, ReqB, ResB>(
    config: &Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: ReqB,
    keyed: bool,
    directives: Option<RequestDirectives>,
) -> ResponseFuture<S::Future, ResB, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let Some(logical) = config.logical_key(&parts).map(std::borrow::Cow::into_owned) else {
        config.handle.engine().count(Outcome::Bypass);
        let status = headers::forward_status(Forward::Request, Some("range"), false);
        return ResponseFuture::bypass(inner.call(Request::from_parts(parts, body)), status);
    };
    let keyed = config.keying(keyed);
    let variant = key::variant(&parts, keyed);
    let config = config.clone();
    ResponseFuture::cache(Box::pin(async move {
        let handle = &config.handle;
        // The RFC 9111 preset's request directives (`no-cache` went to the origin already).
        let ranging = Ranging {
            parts,
            logical,
            variant,
            directives,
            config: config.clone(),
            _answers: PhantomData,
        };
        // The one lookup loop every read goes through; a range never leads a flight, so
        // a miss comes straight back here to be forwarded as sent.
        let Fetching {
            visit: Ranging { parts, .. },
            forward,
            leader,
        } = match engine::look(handle.engine(), ranging).await {
            ControlFlow::Break(response) => return Ok(response),
            ControlFlow::Continue(fetching) => fetching,
        };
        debug_assert!(leader.is_none(), "a range leads no flight");
        handle.engine().count(Outcome::Miss);
        let fallback = crate::engine::falling_back(handle.engine());
        if directives.is_some_and(|d| d.only_if_cached) {
            // RFC 9111 §5.2.1.7: nothing stored may answer, and the client forbids asking.
            let mut response = Response::new(CacheBody::cached(None, None));
            *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
            response.headers_mut().insert(X_CACHE, headers::MISS);
            let status = headers::forward_status(forward, Some("only-if-cached"), fallback);
            response.headers_mut().insert(CACHE_STATUS, status);
            return Ok(response);
        }
        let response = inner.call(Request::from_parts(parts, body)).await?;
        let (mut parts, body) = response.into_parts();
        parts.headers.remove(CACHE_TAG);
        parts.headers.insert(X_CACHE, headers::MISS);
        parts.headers.insert(
            CACHE_STATUS,
            headers::forward_status(forward, Some("range"), fallback),
        );
        Ok(Response::from_parts(parts, CacheBody::passthrough(body)))
    }))
}

/// A `Range` request in the lookup loop ([`engine::look`]).
struct Ranging<B> {
    parts: http::request::Parts,
    logical: String,
    variant: Variant,
    directives: Option<RequestDirectives>,
    config: Arc<Config>,
    _answers: PhantomData<fn() -> B>,
}

impl<B> engine::Lookup<Response<CacheBody<B>>> for Ranging<B> {
    fn key(&self) -> (&str, &Variant, &HeaderMap) {
        (&self.logical, &self.variant, &self.parts.headers)
    }

    /// A fresh stored `200` the request's directives accept answers with the range; any
    /// other entry, or none, sends the request on as sent.
    fn weigh(self, found: Found, waited: Waited) -> Weighed<Self, Response<CacheBody<B>>> {
        let forward = match found {
            Found::Hit(entry, source)
                if entry.status() == StatusCode::OK
                    && self.directives.is_none_or(|d| acceptable(&entry, &d)) =>
            {
                self.config.handle.engine().count(Outcome::Hit);
                let (served, fallback) = (Served::hit(source, waited), source == Source::Fallback);
                let full = answer(&entry, &self.parts, served, fallback);
                return ControlFlow::Break(ranged(full, &entry, &self.parts.headers));
            }
            Found::Hit(..) => Forward::Request,
            Found::Stale(..) => Forward::Stale,
            Found::UriMiss => Forward::UriMiss,
            Found::VaryMiss(_) => Forward::VaryMiss,
        };
        ControlFlow::Continue((self, forward))
    }

    /// What comes back for a range (a `206`, or a `200` the origin chose) is never stored:
    /// the request goes to the origin alone.
    fn may_lead(&self) -> bool {
        false
    }

    /// Never asked: a request that may not lead goes to the origin before joining a flight.
    fn share(_: &Arc<Fill>, _: &HeaderMap) -> Share {
        Share::OtherVariant
    }
}

/// Whether a fresh entry is young and fresh enough for the request's `max-age` and
/// `min-fresh`.
fn acceptable(entry: &Entry, directives: &RequestDirectives) -> bool {
    let now = clock::now_millis();
    directives
        .max_age
        .is_none_or(|max| entry.age_secs(now) <= max)
        && directives
            .min_fresh
            .is_none_or(|min| entry.remaining_secs(now) >= min)
}

/// The hit point: turn the full answer from a stored `200` into what the request's
/// `Range` and `If-Range` ask for. A `304` (the client's own condition held) stays one.
fn ranged<B>(
    full: Response<CacheBody<B>>,
    entry: &Entry,
    request: &http::HeaderMap,
) -> Response<CacheBody<B>> {
    let received = UNIX_EPOCH + Duration::from_millis(entry.stored_at_millis());
    if full.status() != StatusCode::OK || !spec::if_range_holds(request, &entry.headers(), received)
    {
        return full;
    }
    let len = entry.body().len() as u64;
    match spec::select(request.get_all(RANGE), len) {
        Selection::Full => full,
        Selection::Partial { start, end } => {
            let (mut parts, _) = full.into_parts();
            parts.status = StatusCode::PARTIAL_CONTENT;
            let range = format!("bytes {start}-{}/{len}", end - 1);
            parts.headers.insert(
                CONTENT_RANGE,
                HeaderValue::try_from(range).expect("ASCII header value"),
            );
            parts
                .headers
                .insert(CONTENT_LENGTH, headers::int_value(end - start));
            parts
                .headers
                .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            // Positions are below `len`, a `usize`.
            let slice = entry.body().slice(start as usize..end as usize);
            Response::from_parts(parts, CacheBody::cached(Some(slice), None))
        }
        Selection::Unsatisfiable => {
            let mut response = Response::new(CacheBody::cached(None, None));
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let headers = response.headers_mut();
            let range = format!("bytes */{len}");
            headers.insert(
                CONTENT_RANGE,
                HeaderValue::try_from(range).expect("ASCII header value"),
            );
            headers.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            for name in [AGE, CACHE_STATUS, X_CACHE, DATE, ETAG, LAST_MODIFIED] {
                if let Some(value) = full.headers().get(&name) {
                    headers.insert(name, value.clone());
                }
            }
            response
        }
    }
}
