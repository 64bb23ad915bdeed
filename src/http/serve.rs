//! The path of a `GET` or `HEAD` the cache may answer, once the fast path found no fresh
//! memory hit:
//!
//! 1. lookup: a fresh entry whose identity and `Vary` values match is a hit;
//! 2. miss: join the key's flight; a follower reads the leader's fill as it arrives (or
//!    waits for its entry), the leader calls the inner service;
//! 3. the answer is recorded as it streams when it may be stored (`record`).
//!
//! Expired entries get a second life within their stale windows: served at once while one
//! background request refreshes them (stale-while-revalidate), served instead of an origin
//! that fails (stale-if-error), or validated upstream and freshened by a `304`.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::config::Config;
use super::record;
use super::revalidate::{add_validators, has_conditionals, strip_conditionals};
use crate::answer::{answer, answer_to, Served};
use crate::body::{BoxError, CacheBody};
use crate::cache_control::RequestDirectives;
use crate::clock;
use crate::coalesce::Outcome;
use crate::coalesce::{Role, Share, Turn};
use crate::engine::{self, falling_back, release, Miss};
use crate::entry::Entry;
use crate::fill::{Fill, FillBody};
use crate::handle::Found;
use crate::headers::{self, Forward, CACHE_STATUS, X_CACHE};
use crate::key::{self, Variant};
use crate::stats::bump;

/// A `GET` or `HEAD` the cache may answer; `revalidate` skips the lookup (the client asked
/// for a fresh answer) but still stores what comes back.
pub(super) async fn serve<S, ReqB, ResB>(
    config: Arc<Config>,
    mut inner: S,
    parts: http::request::Parts,
    body: ReqB,
    logical: String,
    variant: Variant,
    revalidate: bool,
) -> Result<Response<CacheBody<ResB>>, S::Error>
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
        let mut response = Response::new(CacheBody::cached(None, None));
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
        if let Some(answer) = super::head_update::freshen(
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
        engine::finish(leader, stored);
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
    };
    Ok(record::response(
        &config,
        miss,
        is_head,
        response,
        &request_headers,
    ))
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
fn shared_answer<B>(reader: FillBody, forward: Forward, fallback: bool) -> Response<CacheBody<B>> {
    let head = reader.head();
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    let headers = response.headers_mut();
    headers.insert(CACHE_STATUS, headers::collapsed_status(forward, fallback));
    headers.insert(X_CACHE, headers::MISS);
    response.map(|()| CacheBody::fill(reader))
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
        };
        // The fill reads the body to its end and stores it, with or without a reader.
        drop(record::response(
            &config,
            miss,
            false,
            response,
            &request_headers,
        ));
    });
}
