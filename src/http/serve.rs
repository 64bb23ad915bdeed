//! The path of a `GET` or `HEAD` the cache may answer, once the fast path found no fresh
//! memory hit:
//!
//! 1. lookup: a fresh entry whose identity and `Vary` values match is a hit;
//! 2. miss: join the key's flight; a follower reads the leader's fill as it arrives (or
//!    waits for its entry), the leader calls the inner service;
//! 3. the answer is recorded as it streams when it may be stored (`record`).
//!
//! Steps 1 and 2 are the shared loop (`engine::look`); this file says what a stored entry
//! means to an HTTP request (its request directives, stale windows, `HEAD`).
//!
//! Expired entries get a second life within their stale windows: served at once while one
//! background request refreshes them (stale-while-revalidate), served instead of an origin
//! that fails (stale-if-error), or validated upstream and freshened by a `304`.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::config::Config;
use super::record;
use super::revalidate::{add_validators, has_conditionals, strip_conditionals};
use super::visit::Visit;
use crate::answer::{answer, answer_to, Served};
use crate::body::{BoxError, CacheBody};
use crate::cache_control::RequestDirectives;
use crate::clock;
use crate::engine::coalesce::{Leader, Share};
use crate::engine::fill::{Fill, FillBody};
use crate::engine::{self, falling_back, release, Fetching, Miss, Weighed};
use crate::engine::{Found, Ticket};
use crate::entry::Entry;
use crate::headers::{self, Forward, Waited, CACHE_STATUS, X_CACHE};
use crate::key::Variant;
use crate::stats::Outcome;
use crate::store::Source;

/// A stored entry the origin may validate instead of sending it again (an expired one,
/// or any, for a request's `no-cache`).
#[derive(Clone)]
struct Validatable {
    entry: Arc<Entry>,
    /// Taken before the lookup that found it: written back (freshened), it is refused for
    /// an invalidation since then, as a response fetched before one would be.
    looked_up: Ticket,
}

/// What a lookup leaves for the origin.
struct Fetch {
    forward: Forward,
    leader: Option<Leader>,
    expired: Option<Validatable>,
    /// An expired entry that may stand in if the origin fails.
    stale_if_error: Option<Arc<Entry>>,
}

/// A visit in the lookup loop, with what its lookups found for the origin to use.
struct Looking<S, ReqB> {
    visit: Visit<S, ReqB>,
    directives: Option<RequestDirectives>,
    expired: Option<Validatable>,
    stale_if_error: Option<Arc<Entry>>,
    /// Taken before the latest lookup.
    looked_up: Ticket,
}

impl<S, ReqB, ResB> Visit<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    /// Answer from the cache, from a flight in the air, or from the origin.
    pub(super) async fn serve(self) -> Result<Response<CacheBody<ResB>>, S::Error> {
        let config = self.config.clone();
        let directives = self.directives;
        let only_if_cached = directives.as_ref().is_some_and(|d| d.only_if_cached);
        let looking = Looking {
            looked_up: config.handle.engine().ticket_now(),
            visit: self,
            directives,
            expired: None,
            stale_if_error: None,
        };
        let Fetching {
            visit: looking,
            forward,
            leader,
        } = match engine::look(config.handle.engine(), looking).await {
            ControlFlow::Break(response) => return Ok(response),
            ControlFlow::Continue(fetching) => fetching,
        };
        if only_if_cached {
            // RFC 9111 §5.2.1.7: nothing stored may answer, and the client forbids asking.
            release(leader);
            config.handle.engine().count(Outcome::Miss);
            return Ok(gateway_timeout(forward));
        }
        let fetch = Fetch {
            forward,
            leader,
            expired: looking.expired,
            stale_if_error: looking.stale_if_error,
        };
        looking.visit.fetch(fetch).await
    }

    /// Ask the origin: for the full answer (recorded when storable), or whether the expired
    /// entry still holds; fall back on a stale entry if the origin fails.
    async fn fetch(self, fetch: Fetch) -> Result<Response<CacheBody<ResB>>, S::Error> {
        let Visit {
            config,
            mut inner,
            mut parts,
            body,
            logical,
            variant,
            ..
        } = self;
        let handle = &config.handle;
        handle.engine().count(Outcome::Miss);
        let ticket = handle.engine().ticket(fetch.leader.as_ref()).await;
        let is_head = parts.method == Method::HEAD;
        let request_headers = parts.headers.clone();
        let mut validating = None;
        // With nothing stored to answer it from, a client's own condition goes to the
        // origin as sent (RFC 9111 §4.3.2): its 304 passes through, a 200 is stored.
        let forward_condition = fetch.expired.is_none() && has_conditionals(&parts.headers);
        let head_of = if is_head { fetch.expired.clone() } else { None };
        if !is_head && !forward_condition {
            // Ask for the full response, so it can be stored; the client's own conditions
            // are answered from the stored entry later.
            strip_conditionals(&mut parts.headers);
            // Or ask whether the expired entry still holds (RFC 9111 §4.3.1).
            validating = fetch
                .expired
                .filter(|e| add_validators(&config, &e.entry, &mut parts.headers));
        }
        let call = inner.call(Request::from_parts(parts, body));
        let response = match fetch.stale_if_error {
            None => call.await?,
            Some(entry) => match origin_or_failure(&config, call).await {
                Ok(response) => response,
                Err(failure) => {
                    tracing::debug!(key = %logical, origin = %failure, "origin failed; serving stale");
                    release(fetch.leader);
                    handle.engine().count(Outcome::Stale);
                    let served = Served::StaleIfError;
                    let fallback = falling_back(handle.engine());
                    return Ok(answer_to(
                        &entry,
                        &request_headers,
                        is_head,
                        served,
                        fallback,
                    ));
                }
            },
        };
        // RFC 9111 §4.3.5: a 200 to a HEAD freshens the stored GET it describes.
        if let Some(stored) = head_of.filter(|_| response.status() == StatusCode::OK) {
            let (entry, ticket) = (&stored.entry, stored.looked_up);
            let head = response.headers();
            let (hash, headers) = (variant.hash, &request_headers);
            let freshened =
                super::head_update::freshen(&config, entry, head, &logical, hash, ticket, headers);
            if let Some(answer) = freshened.await {
                return Ok(answer);
            }
        }
        if let Some(stored) = validating.filter(|_| response.status() == StatusCode::NOT_MODIFIED) {
            let (parts, _) = response.into_parts();
            let fresh = freshen(&config, &stored.entry, &parts.headers, &request_headers);
            // The body is the one the lookup found: no newer than its ticket.
            let ticket = stored.looked_up;
            let written = match &fresh {
                Ok(fresh) => {
                    let (entry, leader) = (fresh.clone(), fetch.leader);
                    handle
                        .engine()
                        .commit(&logical, variant.hash, ticket, entry, leader)
                        .await
                }
                Err(_) => {
                    release(fetch.leader);
                    false
                }
            };
            let fresh = fresh.unwrap_or_else(|answer_only| answer_only);
            let fallback = falling_back(handle.engine());
            let served = Served::Revalidated {
                forward: fetch.forward,
                status: StatusCode::NOT_MODIFIED,
                stored: written,
            };
            return Ok(answer_to(
                &fresh,
                &request_headers,
                is_head,
                served,
                fallback,
            ));
        }
        let miss = Miss {
            logical,
            variant,
            ticket,
            leader: fetch.leader,
            forward: fetch.forward,
        };
        Ok(record::response(
            &config,
            miss,
            is_head,
            response,
            &request_headers,
        ))
    }
}

impl<S, ReqB, ResB> engine::Lookup<Response<CacheBody<ResB>>> for Looking<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    ReqB: Send + 'static,
    ResB: Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    fn key(&self) -> (&str, &Variant, &HeaderMap) {
        let visit = &self.visit;
        (&visit.logical, &visit.variant, &visit.parts.headers)
    }

    /// A fresh hit answers, and so does an expired entry a request's `max-stale` accepts
    /// or one within its stale-while-revalidate window (while one background request
    /// refreshes it); any other expired entry goes along to the origin, to be validated
    /// or to stand in for a failing origin.
    fn weigh(mut self, found: Found, waited: Waited) -> Weighed<Self, Response<CacheBody<ResB>>> {
        // A request's `no-cache` (RFC 9111 §5.2.1.4): nothing stored answers it without the
        // origin's word, but what its lookup found, fresh or stale, is validated rather
        // than fetched again. Not for a `HEAD`: its `200` would rewrite the stored `GET` on
        // every such request. After waiting for another request's fetch (just made), that
        // fetch answers it like any follower.
        if self.visit.revalidate && waited == Waited::No {
            if self.visit.parts.method != Method::HEAD {
                if let Found::Hit(entry, _) | Found::Stale(entry, _) = found {
                    let looked_up = self.looked_up;
                    self.expired = Some(Validatable { entry, looked_up });
                }
            }
            return ControlFlow::Continue((self, Forward::Request));
        }
        let directives = self.directives.as_ref();
        let found = match directives {
            Some(directives) => weigh(found, directives),
            None => found,
        };
        let visit = &self.visit;
        let handle = &visit.config.handle;
        // The lookup says where the entry was read: the store is not asked again.
        let served = |entry: &Entry, served, source| {
            let fallback = source == Source::Fallback;
            ControlFlow::Break(answer(entry, &visit.parts, served, fallback))
        };
        let forward = match found {
            Found::Hit(entry, source) => {
                handle.engine().count(Outcome::Hit);
                return served(&entry, Served::hit(source, waited), source);
            }
            Found::Stale(entry, source) if accepts_stale(directives, &entry) => {
                handle.engine().count(Outcome::Stale);
                return served(&entry, Served::MaxStale, source);
            }
            // Never for an entry the request's `max-age` / `min-fresh` refused (RFC 9111
            // §4.2.4: no stale answer against an explicit directive).
            Found::Stale(entry, source)
                if entry.within_stale_while_revalidate(clock::now_millis())
                    && directives.is_none_or(|d| d.max_age.is_none() && d.min_fresh.is_none()) =>
            {
                handle.engine().count(Outcome::Stale);
                let response = served(&entry, Served::StaleWhileRevalidate, source);
                // One refresh per key: if a flight is in the air, it is the refresh.
                if visit.parts.method != Method::HEAD {
                    let (names, headers) = (&entry.vary().names, &visit.parts.headers);
                    let claim = engine::claim_refresh(
                        handle.engine(),
                        &visit.logical,
                        &visit.variant,
                        names,
                        headers,
                    );
                    if let Some(claim) = claim {
                        super::refresh::spawn(self.visit, claim);
                    }
                }
                return response;
            }
            Found::Stale(entry, _) => {
                if entry.within_stale_if_error(clock::now_millis()) {
                    self.stale_if_error = Some(entry.clone());
                }
                let looked_up = self.looked_up;
                self.expired = Some(Validatable { entry, looked_up });
                Forward::Stale
            }
            Found::UriMiss => Forward::UriMiss,
            Found::VaryMiss(_) => Forward::VaryMiss,
        };
        ControlFlow::Continue((self, forward))
    }

    fn looking_up(&mut self, ticket: Ticket) {
        self.looked_up = ticket;
    }

    /// A HEAD miss is answered by the origin and never stored as a GET entry.
    fn may_lead(&self) -> bool {
        self.visit.parts.method != Method::HEAD
    }

    fn share(fill: &Arc<Fill>, headers: &HeaderMap) -> Share {
        if !record::may_share(fill, headers) {
            Share::OtherVariant
        } else if has_conditionals(headers) {
            Share::WaitForEntry
        } else {
            Share::Read
        }
    }

    fn read_shared(
        self,
        reader: FillBody,
        forward: Forward,
        fallback: bool,
    ) -> Weighed<Self, Response<CacheBody<ResB>>> {
        ControlFlow::Break(crate::answer::shared_answer(reader, forward, fallback))
    }
}

/// The origin's answer, or why it does not count (a 5xx, an error, past the deadline):
/// then a stale entry answers instead (RFC 5861 stale-if-error).
async fn origin_or_failure<F, B, E>(config: &Config, call: F) -> Result<Response<B>, String>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    let answered = match config.policy.origin_deadline() {
        Some(deadline) => tokio::time::timeout(deadline, call).await.ok(),
        None => Some(call.await),
    };
    match answered {
        Some(Ok(response)) if !is_origin_failure(response.status()) => Ok(response),
        Some(Ok(response)) => Err(response.status().as_u16().to_string()),
        Some(Err(_)) => Err("error".to_owned()),
        None => Err("timeout".to_owned()),
    }
}

/// The expired `entry` freshened by the origin's `304` (RFC 9111 §3.2, §4.3.4): `Ok` to
/// store, `Err` when the new headers make it unstorable (it then answers this request only,
/// fresh for nobody after it).
fn freshen(
    config: &Config,
    entry: &Entry,
    not_modified: &HeaderMap,
    request_headers: &HeaderMap,
) -> Result<Arc<Entry>, Arc<Entry>> {
    let headers = headers::updated_from_304(&entry.headers().to_map(), not_modified);
    let policy = &config.policy;
    match policy.storable(
        entry.status(),
        &headers,
        config.handle.ttl(),
        request_headers,
    ) {
        Ok(ttl) => Ok(Arc::new(
            entry
                .freshened(headers, ttl)
                .with_initial_age(policy.initial_age(not_modified)),
        )),
        Err(_) => Err(Arc::new(entry.freshened(headers, Duration::ZERO))),
    }
}

/// `504` for a request whose `only-if-cached` nothing stored could answer.
fn gateway_timeout<B>(forward: Forward) -> Response<CacheBody<B>> {
    let mut response = Response::new(CacheBody::cached(None, None));
    *response.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    response.headers_mut().insert(X_CACHE, headers::MISS);
    response.headers_mut().insert(
        CACHE_STATUS,
        headers::forward_status(forward, Some("only-if-cached"), false),
    );
    response
}

/// A hit the request's `max-age` / `min-fresh` refuse is stale to it.
fn weigh(found: Found, directives: &RequestDirectives) -> Found {
    let Found::Hit(entry, source) = found else {
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
        Found::Stale(entry, source)
    } else {
        Found::Hit(entry, source)
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
        && !crate::cache_control::CacheControl::from_fields(
            entry.headers().get_all(&http::header::CACHE_CONTROL),
        )
        .must_revalidate()
}

/// Statuses for which an expired entry is better than the origin's answer (RFC 5861).
fn is_origin_failure(status: http::StatusCode) -> bool {
    matches!(status.as_u16(), 500 | 502 | 503 | 504)
}
