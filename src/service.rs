//! [`CacheService`]: look up, coalesce, call the inner service, record.
//!
//! The path of one `GET`:
//!
//! 1. policy: may this request be answered from the cache at all?
//! 2. key: logical key (path or key function) and variant (host, query, keyed headers);
//! 3. lookup: a fresh entry whose `Vary` values match is a hit, answered from its bytes;
//! 4. miss: join the key's flight; a follower waits for the leader's entry, the leader
//!    calls the inner service;
//! 5. policy: may the response be stored? If so, its body is recorded as it streams.

use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{AGE, CONTENT_LENGTH};
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::body::{Recorder, ResponseBody};
use crate::clock;
use crate::coalesce::{follow, Leader, Outcome, Role};
use crate::entry::{Entry, Vary};
use crate::future::ResponseFuture;
use crate::handle::{CacheHandle, Found};
use crate::headers::{self, Forward, CACHE_STATUS, HIT, MISS, X_CACHE};
use crate::key::{self, VarySpec};
use crate::layer::Config;
use crate::pattern::Pattern;
use crate::policy::{BypassReason, NotStorable, RequestAction};
use crate::stats::bump;

/// Caches the responses of `S`. Built by [`CacheLayer`](crate::CacheLayer); see the
/// [crate docs](crate) for an example.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> CacheService<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        CacheService { inner, config }
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for CacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // The ready service goes into the future; this one keeps a fresh clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        let counters = &config.handle.shared().counters;
        match config
            .policy
            .request_action(request.method(), request.headers())
        {
            RequestAction::Bypass(reason) => {
                bump!(counters, bypasses);
                let forward = match reason {
                    BypassReason::Method => Forward::Method,
                    BypassReason::Request => Forward::Request,
                };
                let status = headers::forward_status(forward, false, None, false);
                ResponseFuture::bypass(inner.call(request), status)
            }
            RequestAction::Unsafe => {
                let (parts, body) = request.into_parts();
                let logical = config.logical_key(&parts);
                let future = inner.call(Request::from_parts(parts, body));
                ResponseFuture::cache(Box::pin(invalidate_after(config, logical, future)))
            }
            RequestAction::Lookup => {
                let (parts, body) = request.into_parts();
                match config.logical_key(&parts) {
                    Some(logical) => {
                        ResponseFuture::cache(Box::pin(serve(config, inner, parts, body, logical)))
                    }
                    None => {
                        bump!(counters, bypasses);
                        let status = headers::forward_status(Forward::Bypass, false, None, false);
                        ResponseFuture::bypass(inner.call(Request::from_parts(parts, body)), status)
                    }
                }
            }
        }
    }
}

impl Config {
    fn logical_key(&self, parts: &http::request::Parts) -> Option<String> {
        match &self.key_fn {
            Some(key_fn) => key_fn(parts).map(|k| key::bound(k.into())),
            None => Some(key::logical_from_path(parts)),
        }
    }
}

/// An unsafe method: pass it through, then invalidate its key if it succeeded, before the
/// client hears back (so its next read is fresh).
async fn invalidate_after<F, B, E>(
    config: Arc<Config>,
    logical: Option<String>,
    future: F,
) -> Result<Response<ResponseBody<B>>, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    let response = future.await?;
    let status = response.status();
    if let Some(logical) = logical.filter(|_| status.is_success() || status.is_redirection()) {
        let pattern = Pattern::new(&crate::pattern::escape(&logical));
        // A failed invalidation is logged by the handle; the write itself succeeded.
        let _ = config.handle.invalidate_matching(&pattern).await;
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.insert(X_CACHE, headers::BYPASS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(Forward::Method, false, None, false),
    );
    Ok(Response::from_parts(parts, ResponseBody::passthrough(body)))
}

/// A `GET` or `HEAD` the cache may answer.
async fn serve<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: ReqB,
    logical: String,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body<Data = Bytes>,
{
    let handle = &config.handle;
    let counters = &handle.shared().counters;
    let variant = key::variant(&parts, config.policy.keyed_headers());
    let is_head = parts.method == Method::HEAD;
    let mut coalesced = false;
    let (forward, leader) = loop {
        let forward = match handle.lookup(&logical, variant, &parts.headers).await {
            Found::Hit(entry) => {
                bump!(counters, hits);
                return Ok(hit_response(
                    &entry,
                    is_head,
                    coalesced,
                    falling_back(handle),
                ));
            }
            Found::UriMiss => Forward::UriMiss,
            Found::VaryMiss => Forward::VaryMiss,
        };
        if is_head {
            // A HEAD miss is answered by the origin and never stored as a GET entry.
            break (forward, None);
        }
        match handle.flights().join(&logical, variant) {
            Role::Leader(leader) => break (forward, Some(leader)),
            Role::Follower(outcome) => {
                bump!(counters, coalesced);
                coalesced = true;
                match follow(outcome, handle.coalesce_timeout()).await {
                    // The entry should be there now, or the leader left: look again.
                    Outcome::Stored | Outcome::Abandoned | Outcome::Pending => continue,
                    Outcome::Uncacheable => break (forward, None),
                }
            }
        }
    };
    bump!(counters, misses);
    let ticket = handle.ticket();
    let request = Request::from_parts(parts, body);
    let request_headers = request.headers().clone();
    let response = inner.call(request).await?;

    let (mut parts, body) = response.into_parts();
    let tags = headers::take_tags(&mut parts.headers);
    parts.headers.insert(X_CACHE, MISS);
    let decision = if is_head {
        Err(None)
    } else {
        storable(&config, &parts, &body, &request_headers).map_err(Some)
    };
    match decision {
        Ok((ttl, vary)) => {
            let mut stored_headers = parts.headers.clone();
            headers::strip_unstorable(&mut stored_headers);
            parts.headers.insert(
                CACHE_STATUS,
                headers::forward_status(forward, true, None, falling_back(handle)),
            );
            let recorder = Recorder {
                handle: handle.clone(),
                logical,
                variant,
                ticket,
                status: parts.status,
                headers: stored_headers,
                ttl,
                tags,
                vary,
                limit: config.policy.max_body(),
                leader,
                buffer: bytes::BytesMut::with_capacity(
                    body.size_hint().exact().unwrap_or(0).min(1 << 20) as usize,
                ),
            };
            Ok(Response::from_parts(
                parts,
                ResponseBody::recording(body, recorder),
            ))
        }
        Err(reason) => {
            release(leader);
            parts.headers.insert(
                CACHE_STATUS,
                headers::forward_status(
                    forward,
                    false,
                    reason.map(NotStorable::as_str),
                    falling_back(handle),
                ),
            );
            Ok(Response::from_parts(parts, ResponseBody::passthrough(body)))
        }
    }
}

fn falling_back(handle: &CacheHandle) -> bool {
    handle.backend() == crate::store::Backend::FallingBack
}

/// Followers of a leader whose response cannot be stored go to the origin at once.
fn release(leader: Option<Leader>) {
    if let Some(leader) = leader {
        leader.finish(Outcome::Uncacheable);
    }
}

/// May this response be stored? Returns the TTL and the `Vary` values it was made for.
fn storable<B: Body>(
    config: &Config,
    parts: &http::response::Parts,
    body: &B,
    request_headers: &http::HeaderMap,
) -> Result<(std::time::Duration, Vary), NotStorable> {
    let ttl = config
        .policy
        .storable(parts.status, &parts.headers, config.handle.ttl())?;
    let names = match key::vary_spec(&parts.headers) {
        VarySpec::Any => return Err(NotStorable::VaryAny),
        VarySpec::Headers(names) => names,
    };
    let limit = config.policy.max_body() as u64;
    if body.size_hint().lower() > limit {
        return Err(NotStorable::TooLarge);
    }
    let hash = key::vary_hash(&names, request_headers);
    Ok((ttl, Vary { names, hash }))
}

/// Answer from a stored entry: its bytes, plus `Age`, `Cache-Status` and `X-Cache`.
fn hit_response<B>(
    entry: &Entry,
    is_head: bool,
    coalesced: bool,
    fallback: bool,
) -> Response<ResponseBody<B>> {
    let now = clock::now_millis();
    let body = if is_head {
        None
    } else {
        Some(entry.body().clone())
    };
    let mut response = Response::new(ResponseBody::cached(body));
    *response.status_mut() = entry.status();
    let headers = response.headers_mut();
    *headers = entry.headers().clone();
    if !is_head && !headers.contains_key(CONTENT_LENGTH) {
        headers.insert(CONTENT_LENGTH, entry.body().len().into());
    }
    headers.insert(AGE, entry.age_secs(now).into());
    headers.insert(
        CACHE_STATUS,
        headers::hit_status(entry.remaining_secs(now), coalesced, fallback),
    );
    headers.insert(X_CACHE, HIT);
    response
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("handle", &self.config.handle)
            .finish()
    }
}
