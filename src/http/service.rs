//! [`CacheService`]: decide what a request is to the cache, and answer a fresh memory hit
//! on the spot.
//!
//! A request the cache may not answer goes to the inner service as it is (no clone of the
//! service, no allocation); an unsafe method invalidates its key after it succeeds; a
//! fresh memory hit is answered here, without a boxed future; everything else runs
//! [`serve`](super::serve) as one boxed future.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::config::Config;
use super::unsafe_method::{invalidate_after, request_host};
use super::visit::Visit;
use crate::answer::{answer_at, Served};
use crate::body::BoxError;
use crate::future::ResponseFuture;
use crate::handle::CacheHandle;
use crate::headers::{self, CacheStatusDetail, Forward, Waited};
use crate::key;
use crate::policy::{BypassReason, Classified, RequestAction};
use crate::service_macros::take_ready;
use crate::stats::Outcome;
use crate::store::Source;
use std::borrow::Cow;
use std::sync::Arc;

/// Caches the responses of `S`. Usually built by [`CacheLayer`](crate::CacheLayer); see the
/// [crate docs](crate) for an example.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> CacheService<S> {
    /// Cache `inner`'s responses into `handle`'s store with the default
    /// [`CachePolicy`](crate::CachePolicy).
    pub fn new(inner: S, handle: CacheHandle) -> Self {
        CacheService::from_config(inner, Arc::new(Config::new(handle)))
    }

    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        CacheService { inner, config }
    }

    crate::service_macros::inner_service_accessors!();
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
    crate::service_macros::cache_service_types!(ResB);

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let brief = self.config.cache_status_detail == CacheStatusDetail::Brief;
        self.route(request).brief_status(brief)
    }
}

impl<S> CacheService<S> {
    /// Answer a fresh memory hit here, or send the request on its way through the cache.
    ///
    /// Only the hit is written out in this function: every other way (a bypass, an unsafe
    /// method, a range, a miss) is a call to [`forward`](Self::forward), kept out of line
    /// so that the code a hit runs stays in a few cache lines.
    fn route<ReqB, ResB>(
        &mut self,
        request: Request<ReqB>,
    ) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Body + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let (parts, body) = request.into_parts();
        let has_body = !body.is_end_stream();
        let classified = self.config.policy.classify_request(&parts, has_body);
        if classified.action != RequestAction::Lookup || classified.directives.is_some() {
            return self.forward(parts, body, classified, Key::NotYet);
        }
        let config = &self.config;
        let Some(logical) = config.logical_key(&parts) else {
            return self.forward(parts, body, classified, Key::Declined);
        };
        // The keyed headers join the identity only when the request carries one.
        let keyed = config.keying(classified.keyed);
        let handle = &config.handle;
        // Memory hits are answered here: no boxed future, no clone of the inner service
        // (which stays ready, unused), and the identity compared from a reused buffer. One
        // clock read for the lookup's freshness and the answer's `Age`.
        let now = crate::clock::now_millis();
        let hit = key::with_identity(&parts, keyed, |identity, hash| {
            handle
                .engine()
                .hit_now(&logical, hash, identity, &parts.headers, now)
        });
        let Some((entry, source)) = hit else {
            let logical = logical.into_owned();
            return self.forward(parts, body, classified, Key::Known(logical));
        };
        handle.engine().count(Outcome::Hit);
        let fallback = source == Source::Fallback;
        let served = match config.cache_status_detail {
            // Said as it will be sent: the answer is not cut down later.
            CacheStatusDetail::Brief => Served::BriefHit,
            _ => Served::hit(source, Waited::No),
        };
        let response = answer_at(
            &entry,
            &parts,
            served,
            fallback,
            classified.conditional,
            now,
        );
        ResponseFuture::ready(response)
    }

    /// Everything but a memory hit: around the cache, through it to the origin, or to the
    /// range, unsafe-method and lookup protocols. `key` is the logical key when `route`
    /// asked for it already: a key function runs once per request.
    #[inline(never)]
    fn forward<ReqB, ResB>(
        &mut self,
        parts: http::request::Parts,
        body: ReqB,
        classified: Classified,
        key: Key,
    ) -> ResponseFuture<S::Future, ResB, S::Error>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ReqB: Body + Send + 'static,
        ResB: Body<Data = Bytes> + Send + 'static,
        ResB::Error: Into<BoxError>,
    {
        let Classified {
            action,
            keyed,
            conditional: _,
            directives,
        } = classified;
        match action {
            RequestAction::Bypass(reason) => {
                self.config.handle.engine().count(Outcome::Bypass);
                let forward = match reason {
                    BypassReason::Method => Forward::Method,
                    BypassReason::Request => Forward::Request,
                };
                let status = headers::forward_status(forward, None, false);
                let request = Request::from_parts(parts, body);
                ResponseFuture::bypass(self.inner.call(request), status)
            }
            RequestAction::Unsafe => {
                let logical = key.or_from(&self.config, &parts);
                let host = request_host(&parts);
                let future = self.inner.call(Request::from_parts(parts, body));
                let config = self.config.clone();
                ResponseFuture::cache(Box::pin(invalidate_after(config, logical, host, future)))
            }
            RequestAction::Range => {
                let inner = take_ready(&mut self.inner);
                super::range::call(&self.config, inner, parts, body, keyed, directives)
            }
            action @ (RequestAction::Lookup | RequestAction::Revalidate) => {
                let revalidate = action == RequestAction::Revalidate;
                let config = &self.config;
                let Some(logical) = key.or_from(config, &parts) else {
                    self.config.handle.engine().count(Outcome::Bypass);
                    let status = headers::forward_status(Forward::Bypass, None, false);
                    let request = Request::from_parts(parts, body);
                    return ResponseFuture::bypass(self.inner.call(request), status);
                };
                // The keyed headers join the identity only when the request carries one.
                let keyed = config.keying(keyed);
                let variant = key::variant(&parts, keyed);
                let config = self.config.clone();
                let inner = take_ready(&mut self.inner);
                let visit = Visit {
                    config,
                    inner,
                    parts,
                    body,
                    logical,
                    variant,
                    revalidate,
                    directives,
                };
                ResponseFuture::cache(Box::pin(visit.serve()))
            }
        }
    }
}

/// The logical key as far as [`CacheService::route`] got with it.
enum Key {
    /// Not asked for.
    NotYet,
    /// The key function (or the path) gave none: the request goes around the cache.
    Declined,
    /// This one.
    Known(String),
}

impl Key {
    /// The key, asking `config` only if nobody has.
    fn or_from(self, config: &Config, parts: &http::request::Parts) -> Option<String> {
        match self {
            Key::NotYet => config.logical_key(parts).map(Cow::into_owned),
            Key::Declined => None,
            Key::Known(key) => Some(key),
        }
    }
}

crate::service_macros::debug_service!(CacheService);
