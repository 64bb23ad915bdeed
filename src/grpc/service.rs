//! [`GrpcCacheService`]: read the message, go through the shared lookup loop
//! (`engine::look`; only a fresh entry this layer wrote answers), call the inner service,
//! record.

use std::borrow::Cow;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Request, Response};
use tonic::body::Body;
use tower_service::Service;

use super::config::Config;
use super::request::{self, is_grpc_call};
use super::{record, GRPC_STATUS};
use crate::answer::{answer_to, Served};
use crate::body::{BoxError, CacheBody};
use crate::engine::coalesce::Share;
use crate::engine::fill::Fill;
use crate::engine::Found;
use crate::engine::{self, falling_back, Fetching, Miss, Weighed};
use crate::entry::Entry;
use crate::future::ResponseFuture;
use crate::handle::CacheHandle;
use crate::headers::{self, CacheStatusDetail, Forward, Waited, BYPASS, CACHE_STATUS, X_CACHE};
use crate::key::Variant;
use crate::service_macros::take_ready;
use crate::stats::Outcome;
use crate::store::Source;

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

    crate::service_macros::inner_service_accessors!();
}

impl<S, ResB> Service<Request<Body>> for GrpcCacheService<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    crate::service_macros::cache_service_types!(ResB);

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let brief = self.config.cache_status_detail == CacheStatusDetail::Brief;
        self.route(request).brief_status(brief)
    }
}

impl<S> GrpcCacheService<S> {
    /// Leave a call this layer does not cache alone, or send it through the cache.
    fn route<ResB>(&mut self, request: Request<Body>) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResB: http_body::Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
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
            config.handle.engine().count(Outcome::Bypass);
            let status = headers::forward_status(Forward::Request, None, false);
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
    let (parts, body) = request.into_parts();
    let message = match request::read_message(body, config.max_request_size).await {
        Ok(message) => message,
        Err((body, reason)) => {
            handle.engine().count(Outcome::Bypass);
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let status = headers::forward_status(
                Forward::Request,
                Some(reason.as_str()),
                falling_back(handle.engine()),
            );
            return Ok(mark(response, BYPASS, status));
        }
    };
    let logical = crate::key::bound(Cow::Borrowed(parts.uri.path())).into_owned();
    let variant = request::variant(&parts, &message, &config.keyed_metadata);
    let call = Call {
        handle: handle.clone(),
        parts,
        logical,
        variant,
    };
    let fetching = match engine::look(handle.engine(), call).await {
        ControlFlow::Break(response) => return Ok(response),
        ControlFlow::Continue(fetching) => fetching,
    };
    handle.engine().count(Outcome::Miss);
    let Fetching {
        visit: call,
        forward,
        leader,
    } = fetching;
    let ticket = handle.engine().ticket(leader.as_ref()).await;
    let response = inner
        .call(Request::from_parts(call.parts, request::whole(message)))
        .await?;
    let miss = Miss {
        logical: call.logical,
        variant: call.variant,
        ticket,
        leader,
        forward,
    };
    Ok(record::response(&config, miss, ttl, response))
}

/// An opted-in call, read and keyed, in the lookup loop.
struct Call {
    handle: CacheHandle,
    parts: Parts,
    logical: String,
    variant: Variant,
}

impl<B> engine::Lookup<Response<CacheBody<B>>> for Call {
    fn key(&self) -> (&str, &Variant, &HeaderMap) {
        (&self.logical, &self.variant, &self.parts.headers)
    }

    /// Only a fresh entry this layer wrote answers.
    fn weigh(self, found: Found, waited: Waited) -> Weighed<Self, Response<CacheBody<B>>> {
        let forward = match found {
            Found::Hit(entry, source) if is_grpc_entry(&entry) => {
                self.handle.engine().count(Outcome::Hit);
                let served = Served::hit(source, waited);
                let fallback = source == Source::Fallback;
                let headers = &self.parts.headers;
                return ControlFlow::Break(answer_to(&entry, headers, false, served, fallback));
            }
            // Something else under this key (not a gRPC answer), or expired: fetch anew.
            Found::Hit(..) | Found::UriMiss | Found::VaryMiss(_) => Forward::UriMiss,
            Found::Stale(..) => Forward::Stale,
        };
        ControlFlow::Continue((self, forward))
    }

    /// Followers wait for the entry: it is written before the leader's trailers go out.
    fn share(_: &Arc<Fill>, _: &HeaderMap) -> Share {
        Share::WaitForEntry
    }
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

crate::service_macros::debug_service!(GrpcCacheService);
