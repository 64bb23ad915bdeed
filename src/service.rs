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
//!
//! Expired entries get a second life within their stale windows: served at once while one
//! background request refreshes them (stale-while-revalidate), or served instead of an
//! origin that fails (stale-if-error).

use std::borrow::Cow;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{
    CONTENT_LOCATION, ETAG, HOST, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE,
    IF_UNMODIFIED_SINCE, LAST_MODIFIED, LOCATION,
};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use crate::answer::{answer, answer_to, Served};
use crate::body::{BoxError, ResponseBody};
use crate::cache_control::RequestDirectives;
use crate::clock;
use crate::coalesce::{Outcome, Role, Share, Turn};
use crate::entry::Entry;
use crate::fill::{Fill, FillBody};
use crate::future::ResponseFuture;
use crate::handle::{CacheHandle, Found};
use crate::headers::{self, Forward, CACHE_STATUS, X_CACHE};
use crate::key::{self, Variant};
use crate::layer::Config;
use crate::pattern::Pattern;
use crate::policy::{BypassReason, RequestAction};
use crate::record::{self, Miss};
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
    ReqB: Body + Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let counters = &self.config.handle.shared().counters;
        let (parts, body) = request.into_parts();
        let has_body = !body.is_end_stream();
        let (action, keyed) = self.config.policy.classify(&parts, has_body);
        match action {
            RequestAction::Bypass(reason) => {
                bump!(counters, bypasses);
                let forward = match reason {
                    BypassReason::Method => Forward::Method,
                    BypassReason::Request => Forward::Request,
                };
                let status = headers::forward_status(forward, false, None, false);
                let request = Request::from_parts(parts, body);
                ResponseFuture::bypass(take_ready(&mut self.inner).call(request), status)
            }
            RequestAction::Unsafe => {
                let logical = self.config.logical_key(&parts).map(Cow::into_owned);
                let host = request_host(&parts);
                let future = take_ready(&mut self.inner).call(Request::from_parts(parts, body));
                let config = self.config.clone();
                ResponseFuture::cache(Box::pin(invalidate_after(config, logical, host, future)))
            }
            RequestAction::Range => {
                let inner = take_ready(&mut self.inner);
                crate::range::call(&self.config, inner, parts, body, keyed)
            }
            action @ (RequestAction::Lookup | RequestAction::Revalidate) => {
                let revalidate = action == RequestAction::Revalidate;
                let config = &self.config;
                let Some(logical) = config.logical_key(&parts) else {
                    bump!(counters, bypasses);
                    let status = headers::forward_status(Forward::Bypass, false, None, false);
                    let request = Request::from_parts(parts, body);
                    return ResponseFuture::bypass(
                        take_ready(&mut self.inner).call(request),
                        status,
                    );
                };
                // The keyed headers join the identity only when the request carries one.
                let keyed = if keyed {
                    config.policy.keyed_headers()
                } else {
                    &[]
                };
                let handle = &config.handle;
                // Memory hits are answered here: no boxed future, no clone of the inner
                // service (which stays ready, unused), and the identity compared from a
                // reused buffer.
                if !revalidate && !config.has_request_directives(&parts.headers) {
                    let found = key::with_identity(&parts, keyed, |identity, hash| {
                        handle.lookup_now(&logical, hash, identity, &parts.headers)
                    });
                    if let Some(Found::Hit(entry)) = found {
                        bump!(counters, hits);
                        let served = Served::Hit { coalesced: false };
                        let response = answer(&entry, &parts, served, falling_back(handle));
                        return ResponseFuture::ready(response);
                    }
                }
                let variant = key::variant(&parts, keyed);
                let logical = logical.into_owned();
                let config = self.config.clone();
                let inner = take_ready(&mut self.inner);
                ResponseFuture::cache(Box::pin(serve(
                    config, inner, parts, body, logical, variant, revalidate,
                )))
            }
        }
    }
}

/// The ready service goes into the future; the service keeps a fresh clone (tower's rule:
/// what `poll_ready` readied is what `call` uses).
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

impl Config {
    /// Request `Cache-Control` directives the RFC 9111 preset weighs against a hit.
    pub(crate) fn request_directives(
        &self,
        headers: &http::HeaderMap,
    ) -> Option<RequestDirectives> {
        if !self.policy.is_rfc9111() {
            return None;
        }
        RequestDirectives::parse(headers)
    }

    fn has_request_directives(&self, headers: &http::HeaderMap) -> bool {
        self.policy.is_rfc9111()
            && headers.contains_key(http::header::CACHE_CONTROL)
            && self.request_directives(headers).is_some()
    }

    pub(crate) fn logical_key<'a>(&self, parts: &'a http::request::Parts) -> Option<Cow<'a, str>> {
        match &self.key_fn {
            Some(key_fn) => key_fn(parts).map(|k| Cow::Owned(key::bound(k.into()).into_owned())),
            None => Some(key::logical_from_path(parts)),
        }
    }
}

/// An unsafe method: pass it through, then invalidate its key if it succeeded, before the
/// client hears back (so its next read is fresh).
async fn invalidate_after<F, B, E>(
    config: Arc<Config>,
    logical: Option<String>,
    host: Option<String>,
    future: F,
) -> Result<Response<ResponseBody<B>>, E>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    let response = future.await?;
    let status = response.status();
    if status.is_success() || status.is_redirection() {
        let mut keys: Vec<String> = logical.into_iter().collect();
        if config.policy.is_rfc9111() {
            // RFC 9111 §4.4: also the same-origin URIs the response points at.
            for name in [LOCATION, CONTENT_LOCATION] {
                if let Some(key) = response
                    .headers()
                    .get(name)
                    .and_then(|v| same_origin_key(&config, v, host.as_deref()))
                {
                    keys.push(key);
                }
            }
        }
        for key in keys {
            let pattern = Pattern::new(&crate::pattern::escape(&key));
            // A failed invalidation is logged by the handle; the write itself succeeded.
            let _ = config.handle.invalidate_matching(&pattern).await;
        }
    }
    let (mut parts, body) = response.into_parts();
    parts.headers.remove(headers::CACHE_TAG);
    parts.headers.insert(X_CACHE, headers::BYPASS);
    parts.headers.insert(
        CACHE_STATUS,
        headers::forward_status(Forward::Method, false, None, false),
    );
    Ok(Response::from_parts(parts, ResponseBody::passthrough(body)))
}

fn request_host(parts: &http::request::Parts) -> Option<String> {
    parts
        .uri
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
        .or_else(|| {
            parts
                .headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_ascii_lowercase)
        })
}

/// The logical key of a `Location` / `Content-Location` value on the request's origin.
fn same_origin_key(
    config: &Config,
    value: &http::HeaderValue,
    host: Option<&str>,
) -> Option<String> {
    let uri: http::Uri = value.to_str().ok()?.parse().ok()?;
    if let Some(authority) = uri.authority() {
        if Some(authority.as_str().to_ascii_lowercase().as_str()) != host {
            return None;
        }
    }
    let path = uri.path_and_query()?.as_str();
    let mut request = Request::get(path);
    if let Some(host) = host {
        request = request.header(HOST, host);
    }
    let (parts, ()) = request.body(()).ok()?.into_parts();
    config.logical_key(&parts).map(Cow::into_owned)
}

/// A `GET` or `HEAD` the cache may answer; `revalidate` skips the lookup (the client asked
/// for a fresh answer) but still stores what comes back.
async fn serve<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: ReqB,
    logical: String,
    variant: Variant,
    revalidate: bool,
) -> Result<Response<ResponseBody<ResB>>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let handle = &config.handle;
    let counters = &handle.shared().counters;
    let is_head = parts.method == Method::HEAD;
    let mut coalesced = false;
    // An expired entry that may stand in if the origin fails.
    let mut stale = None;
    // An expired entry the origin may validate instead of sending it again.
    let mut expired = None;
    let mut skip_lookup = revalidate;
    // The headers the key's stored variants vary on: part of the flight key.
    let mut vary_names = Vec::new();
    let directives = config.request_directives(&parts.headers);
    let (forward, leader) = loop {
        let found = if std::mem::take(&mut skip_lookup) {
            None
        } else {
            let found = handle.lookup(&logical, &variant, &parts.headers).await;
            Some(match directives {
                Some(directives) => weigh(found, &directives),
                None => found,
            })
        };
        let forward = match found {
            None => Forward::Request,
            Some(Found::Hit(entry)) => {
                bump!(counters, hits);
                let served = Served::Hit { coalesced };
                return Ok(answer(&entry, &parts, served, falling_back(handle)));
            }
            Some(Found::Stale(entry)) if accepts_stale(directives.as_ref(), &entry) => {
                bump!(counters, stale);
                return Ok(answer(
                    &entry,
                    &parts,
                    Served::MaxStale,
                    falling_back(handle),
                ));
            }
            // Never for an entry the request's `max-age` / `min-fresh` refused (RFC 9111
            // §4.2.4: no stale answer against an explicit directive).
            Some(Found::Stale(entry))
                if entry.within_stale_while_revalidate(clock::now_millis())
                    && directives.is_none_or(|d| d.max_age.is_none() && d.min_fresh.is_none()) =>
            {
                bump!(counters, stale);
                let response = answer(
                    &entry,
                    &parts,
                    Served::StaleWhileRevalidate,
                    falling_back(handle),
                );
                // One refresh per key: if a flight is in the air, it is the refresh.
                if !is_head {
                    let flight = flight_key(&variant, &entry.vary().names, &parts.headers);
                    if let Role::Leader(leader) = handle.flights().join(&logical, &flight) {
                        spawn_refresh(config.clone(), inner, parts, body, logical, variant, leader);
                    }
                }
                return Ok(response);
            }
            Some(Found::Stale(entry)) => {
                if entry.within_stale_if_error(clock::now_millis()) {
                    stale = Some(entry.clone());
                }
                expired = Some(entry);
                Forward::Stale
            }
            Some(Found::UriMiss) => Forward::UriMiss,
            Some(Found::VaryMiss(names)) => {
                vary_names = names;
                Forward::VaryMiss
            }
        };
        if is_head || handle.is_hit_for_miss(&logical, &variant.identity) {
            // A HEAD miss is answered by the origin and never stored as a GET entry; a key
            // whose responses are not storable does not queue behind one leader.
            break (forward, None);
        }
        let flight = flight_key(&variant, &vary_names, &parts.headers);
        let share = |fill: &Arc<Fill>| {
            if !record::may_share(fill, &parts.headers) {
                Share::OtherVariant
            } else if has_conditionals(&parts.headers) {
                Share::WaitForEntry
            } else {
                Share::Read
            }
        };
        match handle.take_turn(&logical, &flight, share).await {
            Turn::OtherVariant(names) => vary_names = names,
            Turn::Read(reader) => {
                bump!(counters, misses);
                return Ok(shared_answer(reader, forward, falling_back(handle)));
            }
            Turn::Lead(leader) => break (forward, Some(leader)),
            Turn::LookAgain => coalesced = true,
            Turn::FetchAlone => break (forward, None),
        }
    };
    if directives.is_some_and(|d| d.only_if_cached) {
        // RFC 9111 §5.2.1.7: nothing stored that may answer, and the client forbids asking.
        release(leader);
        bump!(counters, misses);
        let mut response = Response::new(ResponseBody::cached(None));
        *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        response.headers_mut().insert(X_CACHE, headers::MISS);
        response.headers_mut().insert(
            CACHE_STATUS,
            headers::forward_status(forward, false, Some("only-if-cached"), false),
        );
        return Ok(response);
    }
    bump!(counters, misses);
    let ticket = handle.ticket().await;
    let mut parts = parts;
    let request_headers = parts.headers.clone();
    let mut validating = None;
    // With nothing stored to answer it from, a client's own condition goes to the origin
    // as sent (RFC 9111 §4.3.2): its 304 passes through, a 200 is stored.
    let forward_condition = expired.is_none() && has_conditionals(&parts.headers);
    let head_of = if is_head { expired.take() } else { None };
    if !is_head && !forward_condition {
        // Ask for the full response, so it can be stored; the client's own conditions
        // are answered from the stored entry later.
        strip_conditionals(&mut parts.headers);
        // Or ask whether the expired entry still holds (RFC 9111 §4.3.1).
        if let Some(entry) = expired.filter(|e| add_validators(&config, e, &mut parts.headers)) {
            validating = Some(entry);
        }
    }
    let call = inner.call(Request::from_parts(parts, body));
    let response = match stale {
        None => call.await?,
        Some(entry) => {
            let answered = match config.policy.origin_deadline() {
                Some(deadline) => tokio::time::timeout(deadline, call).await.ok(),
                None => Some(call.await),
            };
            match answered {
                Some(Ok(response)) if !is_origin_failure(response.status()) => response,
                failure => {
                    let status = match &failure {
                        Some(Ok(response)) => response.status().as_u16().to_string(),
                        Some(Err(_)) => "error".to_owned(),
                        None => "timeout".to_owned(),
                    };
                    tracing::debug!(key = %logical, origin = %status, "origin failed; serving stale");
                    release(leader);
                    bump!(counters, stale);
                    let served = Served::StaleIfError;
                    return Ok(answer_to(
                        &entry,
                        &request_headers,
                        is_head,
                        served,
                        falling_back(handle),
                    ));
                }
            }
        }
    };
    // RFC 9111 §4.3.5: a 200 to a HEAD freshens the stored GET it describes.
    if let Some(entry) = head_of.filter(|_| response.status() == StatusCode::OK) {
        let head = response.headers();
        let hash = variant.hash;
        if let Some(answer) = crate::head_update::freshen(
            &config,
            &entry,
            head,
            &logical,
            hash,
            ticket,
            &request_headers,
        )
        .await
        {
            return Ok(answer);
        }
    }
    if let Some(entry) = validating.filter(|_| response.status() == StatusCode::NOT_MODIFIED) {
        let (parts, _) = response.into_parts();
        let headers = headers::updated_from_304(entry.headers(), &parts.headers);
        let policy = &config.policy;
        let ttl = policy.storable(entry.status(), &headers, handle.ttl(), &request_headers);
        let fresh = Arc::new(match ttl {
            Ok(ttl) => entry
                .freshened(headers, ttl)
                .with_initial_age(policy.initial_age(&parts.headers)),
            // Not storable any more: this answer only, fresh for nobody after it.
            Err(_) => entry.freshened(headers, std::time::Duration::ZERO),
        });
        let stored = match ttl {
            Ok(_) => {
                handle
                    .commit(&logical, variant.hash, ticket, fresh.clone())
                    .await
            }
            Err(_) => false,
        };
        if let Some(leader) = leader {
            leader.finish(if stored {
                Outcome::Stored
            } else {
                Outcome::Uncacheable
            });
        }
        bump!(counters, hits);
        return Ok(answer_to(
            &fresh,
            &request_headers,
            is_head,
            Served::Revalidated,
            falling_back(handle),
        ));
    }
    let miss = Miss {
        logical,
        variant,
        ticket,
        leader,
        forward,
        is_head,
    };
    Ok(record::response(&config, miss, response, &request_headers))
}

/// Ask the origin to validate `entry`: its `Last-Modified` as `If-Modified-Since`, and its
/// `ETag` as `If-None-Match` unless this cache may have made the tag up (then the origin
/// could not recognise it). Whether any validator was added.
fn add_validators(config: &Config, entry: &Entry, headers: &mut http::HeaderMap) -> bool {
    let mut added = false;
    if !config.policy.etags() {
        if let Some(etag) = entry.headers().get(ETAG) {
            headers.insert(IF_NONE_MATCH, etag.clone());
            added = true;
        }
    }
    if let Some(modified) = entry.headers().get(LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
        added = true;
    }
    added
}

/// A hit the request's `max-age` / `min-fresh` refuse is stale to it.
fn weigh(found: Found, directives: &RequestDirectives) -> Found {
    let Found::Hit(entry) = found else {
        return found;
    };
    let now = clock::now_millis();
    let too_old = directives
        .max_age
        .is_some_and(|max| entry.age_secs(now) > max);
    let too_close = directives
        .min_fresh
        .is_some_and(|min| entry.remaining_secs(now) < min);
    if too_old || too_close {
        Found::Stale(entry)
    } else {
        Found::Hit(entry)
    }
}

/// Whether a request's `max-stale` accepts this expired entry (never one that says
/// `must-revalidate`, nor one a request `max-age`/`min-fresh` refused while fresh).
fn accepts_stale(directives: Option<&RequestDirectives>, entry: &Entry) -> bool {
    let Some(max_stale) = directives.and_then(|d| d.max_stale) else {
        return false;
    };
    let now = clock::now_millis();
    !entry.is_fresh_at(now)
        && entry.stale_secs(now) <= max_stale
        && !crate::cache_control::CacheControl::parse(entry.headers()).must_revalidate()
}

/// A flight's key: the request's identity and its values of the headers the key's stored
/// variants vary on. A request with other values (a junk `User-Agent`) flies alone.
fn flight_key(variant: &Variant, vary: &[http::HeaderName], headers: &http::HeaderMap) -> Vec<u8> {
    let mut flight = variant.identity.to_vec();
    flight.extend_from_slice(&key::vary_values(vary, headers));
    flight
}

/// Statuses for which an expired entry is better than the origin's answer (RFC 5861).
fn is_origin_failure(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}

/// A follower's answer: the leader's response, read as it arrives.
fn shared_answer<B>(
    reader: FillBody,
    forward: Forward,
    fallback: bool,
) -> Response<ResponseBody<B>> {
    let head = reader.head();
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    let headers = response.headers_mut();
    headers.insert(CACHE_STATUS, headers::collapsed_status(forward, fallback));
    headers.insert(X_CACHE, headers::MISS);
    response.map(|()| ResponseBody::fill(reader))
}

/// A conditional request is answered from the stored entry (its validators, a generated
/// `ETag` among them, exist only once it is stored), not from a fill in flight.
fn has_conditionals(headers: &http::HeaderMap) -> bool {
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

fn strip_conditionals(headers: &mut http::HeaderMap) {
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

/// Refresh an entry in the background: the client already has the stale copy. The task
/// runs to completion (the body is drained and stored) even when no client waits.
fn spawn_refresh<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    mut parts: http::request::Parts,
    body: ReqB,
    logical: String,
    variant: Variant,
    leader: crate::coalesce::Leader,
) where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    tokio::spawn(async move {
        let ticket = config.handle.ticket().await;
        let request_headers = parts.headers.clone();
        strip_conditionals(&mut parts.headers);
        let Ok(response) = inner.call(Request::from_parts(parts, body)).await else {
            tracing::debug!(key = %logical, "background refresh failed; the stale entry stays");
            leader.finish(Outcome::Uncacheable);
            return;
        };
        let miss = Miss {
            logical,
            variant,
            ticket,
            leader: Some(leader),
            forward: Forward::Stale,
            is_head: false,
        };
        // The fill reads the body to its end and stores it, with or without a reader.
        drop(record::response(&config, miss, response, &request_headers));
    });
}

fn falling_back(handle: &CacheHandle) -> bool {
    handle.backend() == crate::store::Backend::FallingBack
}

/// Followers of a leader whose response cannot be stored go to the origin at once.
fn release(leader: Option<crate::coalesce::Leader>) {
    if let Some(leader) = leader {
        leader.finish(Outcome::Uncacheable);
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("handle", &self.config.handle)
            .finish()
    }
}
