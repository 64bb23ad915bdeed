//! The miss protocol every adapter shares (HTTP, gRPC, `Range`, typed reads, the
//! background refresh), and its state.
//!
//! An adapter decides what a request's key is, what a stored entry means to it (its
//! [`Lookup`], `visit.rs`), whether an answer may be stored and how a recorded answer
//! becomes an [`Entry`](crate::Entry) (its [`Commit`]); everything else happens here:
//!
//! - the lookup loop ([`look`]) and a stale hit's claim on its refresh, here;
//! - a lookup, and the one commit that checks a ticket, writes and tells the flight
//!   (`lookup.rs`);
//! - a miss's ticket, its turn in the key's flight and hit-for-miss (`flight.rs`), the
//!   flights themselves (`coalesce.rs`) and the fleet's turn (`fleet.rs`);
//! - the invalidation protocol (`invalidate.rs`) and the ban log it leaves for fetches in
//!   the air (`ban.rs`);
//! - the fill that records the origin's answer as it streams and hands it to the commit at
//!   its end, within the fill budget (`fill/`);
//! - the state all of it shares, one per handle: the `Engine` (`state.rs`), which
//!   [`CacheHandle`](crate::CacheHandle) is the application's façade over.
//!
//! The Tower plumbing the adapters' services share is in `service_macros.rs`, not here.

use std::ops::ControlFlow;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;

pub(crate) mod ban;
pub(crate) mod coalesce;
pub(crate) mod fill;
mod fleet;
mod flight;
pub(crate) mod invalidate;
mod lookup;
pub(crate) mod state;
mod visit;

pub(crate) use flight::Ticket;
pub(crate) use lookup::Found;

pub(crate) use crate::engine::coalesce::release;
use crate::engine::coalesce::{Leader, Role, Turn};
use crate::headers::{Forward, Waited};
use crate::key::{self, Variant};
use crate::stats::Outcome;
use crate::store::Backend;
use fill::{Commit, Fill, FillBody, Head};
use fleet::Purpose;
use state::Engine;

/// Whether answers are served from the memory fallback (`Cache-Status` says so).
pub(crate) fn falling_back(engine: &Engine) -> bool {
    engine.backend() == Backend::FallingBack
}

pub(crate) use visit::{Lookup, Weighed};

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
    engine: &Engine,
    mut visit: V,
) -> ControlFlow<A, Fetching<V>> {
    let mut waited = Waited::No;
    // The headers the key's stored variants vary on: part of the flight key.
    let mut vary_names = Vec::new();
    // Whether this request already looked again for an entry a flight stored meanwhile.
    let mut looked_again = false;
    let (visit, forward, leader) = loop {
        let stored_before = engine.flights().stored_count(visit.key().0);
        visit.looking_up(engine.ticket_now());
        let (logical, variant, headers) = visit.key();
        let found = engine.lookup(logical, variant, headers).await;
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
        if !visit.may_lead() || engine.is_hit_for_miss(logical, &variant.identity) {
            break (visit, forward, None);
        }
        let flight = flight_key(variant, &vary_names, headers);
        let share = |fill: &Arc<Fill>| V::share(fill, headers);
        match engine.take_turn(logical, &flight, share).await {
            Turn::OtherVariant(names) => vary_names = names,
            Turn::Read(reader) => {
                let fallback = falling_back(engine);
                match visit.read_shared(reader, forward, fallback) {
                    ControlFlow::Break(answer) => {
                        engine.count(Outcome::Miss);
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
                let moved = engine.flights().stored_count(logical) != stored_before;
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
            fleet_turn(engine, visit, forward, leader, &flight, Purpose::Miss).await
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
    engine: &Engine,
    logical: &str,
    variant: &Variant,
    vary: &[http::HeaderName],
    headers: &HeaderMap,
) -> Option<Claim> {
    let flight = flight_key(variant, vary, headers);
    match engine.flights().join(logical, &flight) {
        Role::Leader(leader) => Some(Claim { leader, flight }),
        Role::Follower(_) => None,
    }
}

/// The rest of the loop for a claimed refresh: its turn across the fleet, then fetch
/// (`Continue`), or nothing to do (`Break`: another process's refresh is stored, or the
/// entry is fresh again). `visit` weighs what the fleet's leader stored.
pub(crate) async fn refresh<A, V: Lookup<A>>(
    engine: &Engine,
    visit: V,
    claim: Claim,
) -> ControlFlow<A, Fetching<V>> {
    let Claim { leader, flight } = claim;
    fleet_turn(
        engine,
        visit,
        Forward::Stale,
        leader,
        &flight,
        Purpose::Refresh,
    )
    .await
}

/// A leader's turn across the fleet ([`fleet::take_turn`]), as the loop's answer.
async fn fleet_turn<A, V: Lookup<A>>(
    engine: &Engine,
    visit: V,
    forward: Forward,
    leader: Leader,
    flight: &[u8],
    purpose: Purpose,
) -> ControlFlow<A, Fetching<V>> {
    match fleet::take_turn(engine, visit, forward, leader, flight, purpose).await {
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
    pub(crate) fn give_up(self, engine: &Engine, remember: bool) {
        if remember {
            engine.set_hit_for_miss(&self.logical, &self.variant.identity, true);
        }
        release(self.leader);
    }
}

/// A fill for the origin's answer, recorded within `limit` bytes, shared with the followers
/// of `leader`'s flight. Without a runtime to read it on, `None`.
pub(crate) fn new_fill(
    engine: &Engine,
    head: Head,
    limit: usize,
    leader: Option<&Leader>,
) -> Option<Arc<Fill>> {
    tokio::runtime::Handle::try_current().ok()?;
    let fill = Fill::new(head, engine.fill_budget(), limit, engine.coalesce_timeout());
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
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Commit,
{
    let reader = fill.reader().expect("a new fill has dropped nothing");
    tokio::spawn(fill::run(fill, body, commit));
    reader
}
