//! [`GrpcCacheService`]: read the message, look up, coalesce, call the inner service, record.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use tonic::body::Body;
use tower_service::Service;

use super::config::Config;
use super::request::{self, is_grpc_call};
use super::{record, GRPC_STATUS};
use crate::answer::{answer_to, Served};
use crate::body::{BoxError, CacheBody};
use crate::coalesce::{Share, Turn};
use crate::engine::{self, falling_back, take_ready, Miss};
use crate::entry::Entry;
use crate::future::ResponseFuture;
use crate::handle::Found;
use crate::headers::{self, Forward, BYPASS, CACHE_STATUS, X_CACHE};
use crate::stats::bump;

/// Caches the opted-in unary methods of `S`. Built by
/// [`GrpcCacheLayer`](super::GrpcCacheLayer), whose docs have an example.
#[derive(Clone)]
pub struct GrpcCacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> GrpcCacheService<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        GrpcCacheService { inner, config }
    }

    engine::inner_service_accessors!();
}

impl<S, ResB> Service<Request<Body>> for GrpcCacheService<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    engine::cache_service_types!(ResB);

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let config = &self.config;
        let ttl = match config.methods.get(request.uri().path()) {
            Some(ttl) if is_grpc_call(request.method(), request.headers()) => {
                ttl.unwrap_or_else(|| config.handle.ttl())
            }
            // Not ours: no cache headers either, so this layer can share a stack with the
            // HTTP `CacheLayer`.
            _ => return ResponseFuture::untouched(self.inner.call(request)),
        };
        if request::has_credentials(request.headers(), &config.keyed_metadata) {
            bump!(config.handle.shared().counters, bypasses);
            let status = headers::forward_status(Forward::Request, false, None, false);
            return ResponseFuture::bypass(self.inner.call(request), status);
        }
        let inner = take_ready(&mut self.inner);
        ResponseFuture::cache(Box::pin(serve(config.clone(), inner, request, ttl)))
    }
}

/// An opted-in call: answered from the cache, or forwarded and recorded.
async fn serve<S, ResB>(
    config: Arc<Config>,
    mut inner: S,
    request: Request<Body>,
    ttl: Duration,
) -> Result<Response<CacheBody<ResB>>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
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
                let served = Served::Hit { coalesced };
                let fallback = falling_back(handle);
                return Ok(answer_to(&entry, &parts.headers, false, served, fallback));
            }
            // Something else under this key (not a gRPC answer), or expired: fetch anew.
            Found::Hit(_) | Found::UriMiss | Found::VaryMiss(_) => Forward::UriMiss,
            Found::Stale(_) => Forward::Stale,
        };
        if handle.is_hit_for_miss(&logical, &variant.identity) {
            break (forward, None);
        }
        // Followers wait for the entry: it is written before the leader's trailers go out.
        let wait = |_: &_| Share::WaitForEntry;
        match handle.take_turn(&logical, &variant.identity, wait).await {
            Turn::Lead(leader) => break (forward, Some(leader)),
            Turn::LookAgain | Turn::Read(_) | Turn::OtherVariant(_) => coalesced = true,
            Turn::FetchAlone => break (forward, None),
        }
    };
    bump!(counters, misses);
    let ticket = handle.ticket(leader.as_ref()).await;
    let response = inner
        .call(Request::from_parts(parts, request::whole(message)))
        .await?;
    let miss = Miss {
        logical,
        variant,
        ticket,
        leader,
        forward,
    };
    Ok(record::response(&config, miss, ttl, response))
}

/// Only entries this layer wrote: a successful call with its trailers.
fn is_grpc_entry(entry: &Entry) -> bool {
    entry
        .trailers()
        .and_then(|t| t.get(GRPC_STATUS))
        .is_some_and(|s| s == "0")
}

fn mark<B>(
    response: Response<B>,
    x_cache: http::HeaderValue,
    cache_status: http::HeaderValue,
) -> Response<CacheBody<B>> {
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(X_CACHE, x_cache);
    parts.headers.insert(CACHE_STATUS, cache_status);
    Response::from_parts(parts, CacheBody::passthrough(body))
}

impl<S: std::fmt::Debug> std::fmt::Debug for GrpcCacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcCacheService")
            .field("inner", &self.inner)
            .field("handle", &self.config.handle)
            .finish()
    }
}
