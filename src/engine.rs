//! What both adapters (HTTP and gRPC) share from a miss to its stored entry: the ready
//! inner service, the flight's turn, and the fill that reads the origin's answer and hands
//! it to the committer at its end.
//!
//! An adapter decides what a request's key is, what a stored entry means to it (its
//! [`Lookup`]), whether an answer may be stored and how a recorded answer becomes an
//! [`Entry`](crate::Entry) (its [`Commit`]); everything else — the lookup loop, single
//! flight, the bans checked at commit, the fill budget, hit-for-miss — happens here
//! ([`look`]) and in the [`CacheHandle`].

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::Body;

use crate::body::{BoxError, CacheBody};
use crate::coalesce::{Leader, Outcome, Role, Share, Turn};
use crate::fill::{self, Commit, Fill, FillBody, Head};
use crate::fleet::Purpose;
use crate::handle::{CacheHandle, Found, Ticket};
use crate::headers::{self, Forward, Waited, CACHE_STATUS, X_CACHE};
use crate::key::{self, Variant};
use crate::stats::bump;
use crate::store::Backend;

/// `handle`, `get_ref`, `get_mut` and `into_inner` for a service over `inner` and a
/// `config` holding the handle (tower-http's accessor set).
macro_rules! inner_service_accessors {
    () => {
        /// The handle this service caches into.
        pub fn handle(&self) -> &crate::CacheHandle {
            &self.config.handle
        }

        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The wrapped service, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_service_accessors;

/// The associated types and `poll_ready` every cache service shares: the inner service's
/// readiness and error, the answer's body wrapped in [`CacheBody`](crate::CacheBody).
macro_rules! cache_service_types {
    ($body:ty) => {
        type Response = http::Response<crate::CacheBody<$body>>;
        type Error = S::Error;
        type Future = crate::ResponseFuture<S::Future, $body, S::Error>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
    };
}
pub(crate) use cache_service_types;

/// `$service::layer(handle)` (documented by `$doc`) and `$layer`'s `Layer` impl, which
/// builds each service from the layer's shared config.
macro_rules! layer_impls {
    ($layer:ident, $service:ident, $doc:literal) => {
        impl<S> $service<S> {
            #[doc = $doc]
            pub fn layer(handle: crate::CacheHandle) -> $layer {
                $layer::new(handle)
            }
        }

        impl<S> tower_layer::Layer<S> for $layer {
            type Service = $service<S>;

            fn layer(&self, inner: S) -> $service<S> {
                $service::from_config(inner, self.config.clone())
            }
        }
    };
}
pub(crate) use layer_impls;

/// `Debug` for a cache service: its inner service and its handle.
macro_rules! debug_service {
    ($service:ident) => {
        impl<S: std::fmt::Debug> std::fmt::Debug for $service<S> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($service))
                    .field("inner", &self.inner)
                    .field("handle", &self.config.handle)
                    .finish()
            }
        }
    };
}
pub(crate) use debug_service;

/// The ready service goes into the future; the service keeps a fresh clone (tower's rule:
/// what `poll_ready` readied is what `call` uses).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Whether answers are served from the memory fallback (`Cache-Status` says so).
pub(crate) fn falling_back(handle: &CacheHandle) -> bool {
    handle.backend() == Backend::FallingBack
}

/// An adapter's part in the lookup loop ([`look`]): what its request is keyed by and what
/// a stored entry means to it. `A` is the answer it gives (a response for HTTP and gRPC,
/// a value for typed reads).
pub(crate) trait Lookup<A>: Sized {
    /// The request's logical key, variant and headers.
    fn key(&self) -> (&str, &Variant, &HeaderMap);

    /// What a lookup's `found` means to this request: an answer (`Break`), or on to the
    /// origin (`Continue`), with what the lookup found to say so (`Cache-Status`'s `fwd`).
    /// `waited`: whether it waited for another request's fetch first.
    fn weigh(self, found: Found, waited: Waited) -> Weighed<Self, A>;

    /// Called with a ticket taken just before each lookup: an entry the lookup finds and
    /// the adapter may write back (validated) is written with it.
    fn looking_up(&mut self, ticket: Ticket) {
        let _ = ticket;
    }

    /// Whether this request may lead a flight (one whose answer is never stored, a HEAD,
    /// goes to the origin alone).
    fn may_lead(&self) -> bool {
        true
    }

    /// What a follower sending `headers` makes of its leader's answer as it arrives.
    fn share(fill: &Arc<Fill>, headers: &HeaderMap) -> Share;

    /// A follower's answer from its leader's response, read as it arrives (`reader`;
    /// `fallback`: the memory fallback serves). Only an adapter whose
    /// [`share`](Self::share) says [`Share::Read`] is asked; one that cannot answer from
    /// a response looks again (`Continue`), as this default does.
    fn read_shared(self, reader: FillBody, forward: Forward, fallback: bool) -> Weighed<Self, A> {
        let _ = (reader, fallback);
        ControlFlow::Continue((self, forward))
    }
}

/// What an adapter makes of one lookup (see [`Lookup::weigh`]).
pub(crate) type Weighed<V, A> = ControlFlow<A, (V, Forward)>;

/// A request the lookup loop sends on to the origin, as its flight's leader or alone.
pub(crate) struct Fetching<V> {
    pub(crate) visit: V,
    pub(crate) forward: Forward,
    pub(crate) leader: Option<Leader>,
}

/// Look up until something answers (`Break`), or this request leads (or flies alone) to
/// the origin (`Continue`): a follower reads its leader's answer as it arrives, or looks
/// again once the leader is done.
pub(crate) async fn look<A, V: Lookup<A>>(
    handle: &CacheHandle,
    mut visit: V,
) -> ControlFlow<A, Fetching<V>> {
    let mut waited = Waited::No;
    // The headers the key's stored variants vary on: part of the flight key.
    let mut vary_names = Vec::new();
    // Whether this request already looked again for an entry a flight stored meanwhile.
    let mut looked_again = false;
    let (visit, forward, leader) = loop {
        let stored_before = handle.flights().stored_count(visit.key().0);
        visit.looking_up(handle.ticket_now());
        let (logical, variant, headers) = visit.key();
        let found = handle.lookup(logical, variant, headers).await;
        if let Found::VaryMiss(names) = &found {
            vary_names.clone_from(names);
        }
        let forward;
        (visit, forward) = match visit.weigh(found, waited) {
            ControlFlow::Break(response) => return ControlFlow::Break(response),
            ControlFlow::Continue(fetch) => fetch,
        };
        let (logical, variant, headers) = visit.key();
        // A key whose answers are not storable does not queue behind one leader.
        if !visit.may_lead() || handle.is_hit_for_miss(logical, &variant.identity) {
            break (visit, forward, None);
        }
        let flight = flight_key(variant, &vary_names, headers);
        let share = |fill: &Arc<Fill>| V::share(fill, headers);
        match handle.take_turn(logical, &flight, share).await {
            Turn::OtherVariant(names) => vary_names = names,
            Turn::Read(reader) => {
                let fallback = falling_back(handle);
                match visit.read_shared(reader, forward, fallback) {
                    ControlFlow::Break(answer) => {
                        bump!(handle.shared().counters, misses);
                        return ControlFlow::Break(answer);
                    }
                    // Not reached today (an adapter that cannot read a response as it
                    // arrives says so in `share`, and is never handed one); should it be,
                    // yield before joining again rather than spin on the shared flight.
                    ControlFlow::Continue((next, _)) => {
                        visit = next;
                        waited = Waited::Here;
                        tokio::task::yield_now().await;
                    }
                }
            }
            // A flight of this key stored its entry between the lookup and the join (its
            // end came just after the lookup): look once more rather than fetch again.
            Turn::Lead(leader) => {
                let moved = handle.flights().stored_count(logical) != stored_before;
                if looked_again || !moved {
                    break (visit, forward, Some(leader));
                }
                looked_again = true;
                // Stepping aside (abandoned): followers look again too, and one leads if
                // the entry is not there after all.
                drop(leader);
            }
            Turn::LookAgain => waited = Waited::Here,
            Turn::FetchAlone => break (visit, forward, None),
        }
    };
    // This process's leader: whose turn is it across the fleet?
    match leader {
        Some(leader) => {
            let (_, variant, headers) = visit.key();
            let flight = flight_key(variant, &vary_names, headers);
            fleet_turn(handle, visit, forward, leader, &flight, Purpose::Miss).await
        }
        None => ControlFlow::Continue(Fetching {
            visit,
            forward,
            leader: None,
        }),
    }
}

/// A background refresh's claim on its key's flight in this process (see
/// [`claim_refresh`]).
pub(crate) struct Claim {
    leader: Leader,
    flight: Vec<u8>,
}

/// Claim the refresh of an entry just served stale (stale-while-revalidate, a soft purge),
/// without waiting: `None` when a flight of the key is in the air, which is the refresh.
/// One refresh per key and process, however many stale hits arrive meanwhile; the claim
/// is then taken through the loop's fleet step by [`refresh`].
pub(crate) fn claim_refresh(
    handle: &CacheHandle,
    logical: &str,
    variant: &Variant,
    vary: &[http::HeaderName],
    headers: &HeaderMap,
) -> Option<Claim> {
    let flight = flight_key(variant, vary, headers);
    match handle.flights().join(logical, &flight) {
        Role::Leader(leader) => Some(Claim { leader, flight }),
        Role::Follower(_) => None,
    }
}

/// The rest of the loop for a claimed refresh: its turn across the fleet, then fetch
/// (`Continue`), or nothing to do (`Break`: another process's refresh is stored, or the
/// entry is fresh again). `visit` weighs what the fleet's leader stored.
pub(crate) async fn refresh<A, V: Lookup<A>>(
    handle: &CacheHandle,
    visit: V,
    claim: Claim,
) -> ControlFlow<A, Fetching<V>> {
    let Claim { leader, flight } = claim;
    fleet_turn(
        handle,
        visit,
        Forward::Stale,
        leader,
        &flight,
        Purpose::Refresh,
    )
    .await
}

/// A leader's turn across the fleet ([`crate::fleet::take_turn`]), as the loop's answer.
async fn fleet_turn<A, V: Lookup<A>>(
    handle: &CacheHandle,
    visit: V,
    forward: Forward,
    leader: Leader,
    flight: &[u8],
    purpose: Purpose,
) -> ControlFlow<A, Fetching<V>> {
    match crate::fleet::take_turn(handle, visit, forward, leader, flight, purpose).await {
        ControlFlow::Break(answer) => ControlFlow::Break(answer),
        ControlFlow::Continue((visit, forward, leader)) => ControlFlow::Continue(Fetching {
            visit,
            forward,
            leader,
        }),
    }
}

/// A flight's key: the request's identity and its values of the headers the key's stored
/// variants vary on. A request with other values (a junk `User-Agent`) flies alone.
pub(crate) fn flight_key(
    variant: &Variant,
    vary: &[http::HeaderName],
    headers: &HeaderMap,
) -> Vec<u8> {
    let mut flight = variant.identity.to_vec();
    flight.extend_from_slice(&key::vary_values(vary, headers));
    flight
}

/// A follower's answer: the leader's response, read as it arrives (what
/// [`Lookup::read_shared`] is for the adapters that answer responses).
pub(crate) fn shared_answer<B>(
    reader: FillBody,
    forward: Forward,
    fallback: bool,
) -> Response<CacheBody<B>> {
    let head = reader.head();
    let mut response = Response::new(());
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers.clone();
    let headers = response.headers_mut();
    headers.insert(CACHE_STATUS, headers::collapsed_status(forward, fallback));
    headers.insert(X_CACHE, headers::MISS);
    response.map(|()| CacheBody::fill(reader))
}

/// A miss on its way to the origin: what its answer will be stored under.
pub(crate) struct Miss {
    pub(crate) logical: String,
    pub(crate) variant: Variant,
    pub(crate) ticket: Ticket,
    pub(crate) leader: Option<Leader>,
    pub(crate) forward: Forward,
}

impl Miss {
    /// The answer cannot be stored: followers go to the origin at once, and when
    /// `remember`, so do the key's next misses for a while (hit-for-miss).
    pub(crate) fn give_up(self, handle: &CacheHandle, remember: bool) {
        if remember {
            handle.set_hit_for_miss(&self.logical, &self.variant.identity, true);
        }
        release(self.leader);
    }
}

/// Followers of a leader whose answer will not be stored go to the origin at once.
pub(crate) fn release(leader: Option<Leader>) {
    if let Some(leader) = leader {
        leader.finish(Outcome::Uncacheable);
    }
}

/// A fill for the origin's answer, recorded within `limit` bytes, shared with the followers
/// of `leader`'s flight. Without a runtime to read it on, `None`.
pub(crate) fn new_fill(
    handle: &CacheHandle,
    head: Head,
    limit: usize,
    leader: Option<&Leader>,
) -> Option<Arc<Fill>> {
    tokio::runtime::Handle::try_current().ok()?;
    let fill = Fill::new(head, handle.fill_budget(), limit, handle.coalesce_timeout());
    if let Some(leader) = leader {
        leader.share(fill.clone());
    }
    Some(fill)
}

/// Read `body` into `fill` on a task of its own and hand the recording to `commit` at its
/// end; the leader's client reads the returned body.
pub(crate) fn run_fill<B, C>(fill: Arc<Fill>, body: B, commit: C) -> FillBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Commit,
{
    let reader = fill.reader().expect("a new fill has dropped nothing");
    tokio::spawn(fill::run(fill, body, commit));
    reader
}
