//! [`GrpcCacheService`]: read the message, look up, coalesce, call the inner service, record.

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{AGE, SET_COOKIE};
use http::{HeaderMap, Request, Response, StatusCode};
use tonic::body::Body;
use tower_service::Service;

use super::body::{Recorder, ResponseBody};
use super::future::ResponseFuture;
use super::layer::Config;
use super::request::{self, is_grpc, is_grpc_call};
use super::GRPC_STATUS;
use crate::clock;
use crate::coalesce::{Leader, Outcome, Turn};
use crate::entry::Entry;
use crate::handle::{CacheHandle, Found, Ticket};
use crate::headers::{self, Forward, BYPASS, CACHE_STATUS, HIT, MISS, X_CACHE};
use crate::key::Variant;
use crate::stats::bump;
use crate::store::Backend;

/// Caches the opted-in unary methods of `S`. Built by
/// [`GrpcCacheLayer`](super::GrpcCacheLayer); see the [module docs](super) for an example.
#[derive(Clone)]
pub struct GrpcCacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> GrpcCacheService<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        GrpcCacheService { inner, config }
    }

    /// The handle this service caches into.
    pub fn handle(&self) -> &CacheHandle {
        &self.config.handle
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ResB> Service<Request<Body>> for GrpcCacheService<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let config = &self.config;
        let ttl = match config.methods.get(request.uri().path()) {
            Some(ttl) if is_grpc_call(request.method(), request.headers()) => {
                ttl.unwrap_or_else(|| config.handle.ttl())
            }
            // Not ours: no cache headers either, so this layer can share a stack with the
            // HTTP `CacheLayer`.
            _ => return ResponseFuture::untouched(take_ready(&mut self.inner).call(request)),
        };
        if request::has_credentials(request.headers(), &config.keyed_metadata) {
            bump!(config.handle.shared().counters, bypasses);
            let status = headers::forward_status(Forward::Request, false, None, false);
            return ResponseFuture::bypass(take_ready(&mut self.inner).call(request), status);
        }
        let inner = take_ready(&mut self.inner);
        ResponseFuture::cache(Box::pin(serve(config.clone(), inner, request, ttl)))
    }
}

/// The ready service goes into the future; the service keeps a fresh clone (tower's rule:
/// what `poll_ready` readied is what `call` uses).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// An opted-in call: answered from the cache, or forwarded and recorded.
async fn serve<S, ResB>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<Body>,
    ttl: Duration,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
{
    let handle = &config.handle;
    let counters = &handle.shared().counters;
    let (parts, body) = request.into_parts();
    let message = match request::read_message(body, config.max_request_size).await {
        Ok(message) => message,
        Err((body, reason)) => {
            bump!(counters, bypasses);
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let status = headers::forward_status(
                Forward::Request,
                false,
                Some(reason.as_str()),
                falling_back(handle),
            );
            return Ok(mark(response, BYPASS, status));
        }
    };
    let logical = crate::key::bound(Cow::Borrowed(parts.uri.path())).into_owned();
    let variant = request::variant(&parts, &message, &config.keyed_metadata);
    let mut coalesced = false;
    let (forward, leader) = loop {
        let forward = match handle.lookup(&logical, &variant, &parts.headers).await {
            Found::Hit(entry) if is_grpc_entry(&entry) => {
                bump!(counters, hits);
                return Ok(answer(&entry, coalesced, falling_back(handle)));
            }
            // Something else under this key (not a gRPC answer), or expired: fetch anew.
            Found::Hit(_) | Found::UriMiss | Found::VaryMiss(_) => Forward::UriMiss,
            Found::Stale(_) => Forward::Stale,
        };
        if handle.is_hit_for_miss(&logical, &variant.identity) {
            break (forward, None);
        }
        let wait = |_: &_| crate::coalesce::Share::WaitForEntry;
        match handle.take_turn(&logical, &variant.identity, wait).await {
            Turn::Lead(leader) => break (forward, Some(leader)),
            Turn::LookAgain | Turn::Read(_) | Turn::OtherVariant(_) => coalesced = true,
            Turn::FetchAlone => break (forward, None),
        }
    };
    bump!(counters, misses);
    let ticket = handle.ticket().await;
    let response = inner
        .call(Request::from_parts(parts, request::whole(message)))
        .await?;
    let miss = Miss {
        logical,
        variant,
        ticket,
        leader,
        forward,
        ttl,
    };
    Ok(record(&config, miss, response))
}

/// Only entries this layer wrote: a successful call with its trailers.
fn is_grpc_entry(entry: &Entry) -> bool {
    entry
        .trailers()
        .and_then(|t| t.get(GRPC_STATUS))
        .is_some_and(|s| s == "0")
}

/// A hit: the stored headers, message and trailers, without calling the inner service.
fn answer<B>(entry: &Entry, coalesced: bool, fallback: bool) -> Response<ResponseBody<B>> {
    let now = clock::now_millis();
    let body = ResponseBody::cached(entry.body().clone(), entry.trailers().cloned());
    let mut response = Response::new(body);
    *response.status_mut() = entry.status();
    let headers = response.headers_mut();
    *headers = entry.headers().clone();
    headers.insert(AGE, headers::int_value(entry.age_secs(now)));
    headers.insert(
        CACHE_STATUS,
        headers::hit_status(entry.remaining_secs(now), coalesced, fallback),
    );
    headers.insert(X_CACHE, HIT);
    response
}

fn mark<B>(
    response: Response<B>,
    x_cache: http::HeaderValue,
    cache_status: http::HeaderValue,
) -> Response<ResponseBody<B>> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(X_CACHE, x_cache);
    parts.headers.insert(CACHE_STATUS, cache_status);
    Response::from_parts(parts, ResponseBody::passthrough(body))
}

/// A miss on its way to the origin: what its answer will be stored under.
struct Miss {
    logical: String,
    variant: Variant,
    ticket: Ticket,
    leader: Option<Leader>,
    forward: Forward,
    ttl: Duration,
}

/// The origin's answer: recorded when it may be stored, else passed through. Whether it
/// is stored is known only at its trailers, so `Cache-Status` never says `stored` here.
fn record<B: http_body::Body<Data = Bytes>>(
    config: &Config,
    miss: Miss,
    response: Response<B>,
) -> Response<ResponseBody<B>> {
    let handle = &config.handle;
    let (mut parts, body) = response.into_parts();
    let decision = storable(&parts, &body, config.max_response_size);
    let detail = decision.err();
    parts.headers.insert(X_CACHE, MISS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(miss.forward, false, detail, falling_back(handle)),
    );
    if detail.is_some() {
        handle.set_hit_for_miss(&miss.logical, &miss.variant.identity, true);
        if let Some(leader) = miss.leader {
            leader.finish(Outcome::Uncacheable);
        }
        return Response::from_parts(parts, ResponseBody::passthrough(body));
    }
    let mut stored_headers = parts.headers.clone();
    headers::strip_unstorable(&mut stored_headers);
    let recorder = Recorder {
        handle: handle.clone(),
        logical: miss.logical,
        variant: miss.variant,
        ticket: miss.ticket,
        status: parts.status,
        headers: stored_headers,
        ttl: miss.ttl,
        limit: config.max_response_size,
        leader: miss.leader,
        buffer: bytes::BytesMut::new(),
    };
    Response::from_parts(parts, ResponseBody::recording(body, recorder))
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

fn falling_back(handle: &CacheHandle) -> bool {
    handle.backend() == Backend::FallingBack
}

impl<S: std::fmt::Debug> std::fmt::Debug for GrpcCacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCacheService")
            .field("inner", &self.inner)
            .field("handle", &self.config.handle)
            .finish()
    }
}
