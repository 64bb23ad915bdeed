//! The engine's side of fleet-wide single flight: a request that leads its key's flight in
//! this process asks the store whose turn it is across the fleet, and either fetches
//! (holding the flight's lease until its flight ends) or waits for the fetching process's
//! entry and answers from it. The store's side, and why it never serves what an
//! invalidation removed, is in `store/redis/fleet.rs`.

use std::ops::ControlFlow;
use std::time::Duration;

use super::Lookup;
use crate::engine::coalesce::release;
use crate::engine::coalesce::{Leader, Outcome};
use crate::engine::state::Engine;
use crate::engine::Found;
use crate::headers::{Forward, Waited};
use crate::stats::bump;
use crate::store::{Coordination, FleetEnd, FleetLease, FleetTurn};

/// The longest pause between two looks for another process's entry.
const MAX_PAUSE: Duration = Duration::from_millis(10);
/// The same for a background refresh waiting for another process's: nobody waits for it
/// (the stale copy answers), so it asks Redis less often.
const MAX_REFRESH_PAUSE: Duration = Duration::from_millis(50);

/// Why this process's leader takes its turn in the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A miss: a client waits for the answer.
    Miss,
    /// A background refresh of an entry served stale (stale-while-revalidate, a soft
    /// purge): nobody waits for it.
    Refresh,
}

/// What a leader of this process's flight does next: answer (another process's entry came),
/// or fetch, leading (with the fleet's lease when it holds it) or alone.
pub(crate) type Next<V, A> = ControlFlow<A, (V, Forward, Option<Leader>)>;

/// Take this process's leader's turn in the fleet: fetch when no other process is fetching
/// the key; otherwise wait (at most the coalesce timeout) for its entry, taking over when
/// that process's lease runs out first. This process's flight stays up meanwhile, so its
/// own misses (and stale hits) follow this leader.
pub(crate) async fn take_turn<A, V: Lookup<A>>(
    engine: &Engine,
    visit: V,
    forward: Forward,
    mut leader: Leader,
    flight: &[u8],
    purpose: Purpose,
) -> Next<V, A> {
    let store = &engine.shared().store;
    let Some(coordination) = store.coordination() else {
        return ControlFlow::Continue((visit, forward, Some(leader)));
    };
    let counters = &engine.shared().counters;
    let started = tokio::time::Instant::now();
    let max_pause = match purpose {
        Purpose::Miss => MAX_PAUSE,
        Purpose::Refresh => MAX_REFRESH_PAUSE,
    };
    let mut pause = Duration::from_millis(1);
    let mut followed = false;
    loop {
        let (logical, variant, headers) = visit.key();
        match ask(engine, coordination, &mut leader, logical, flight).await {
            // A refresh read its stale copy before any other process's refresh could have
            // landed and let go (the lease goes back when the leader's flight ends, stored:
            // `hold`): it looks before it fetches, as a leader that followed does.
            Asked::Lead if !followed && purpose == Purpose::Miss => {
                return ControlFlow::Continue((visit, forward, Some(leader)));
            }
            Asked::Lead => {
                if followed {
                    bump!(counters, fleet_takeovers);
                }
                // The last leader may have stored its entry just before it let go.
                let found = engine.lookup(logical, variant, headers).await;
                return answer_or_lead(visit, forward, leader, found);
            }
            // Another process's answer could not be stored: so would this one's be, most
            // likely; this process's followers fetch alone too.
            Asked::Pass => {
                release(Some(leader));
                return ControlFlow::Continue((visit, forward, None));
            }
            Asked::Follow => {}
        }
        if !followed {
            followed = true;
            bump!(counters, fleet_followers);
        }
        let waited = started.elapsed();
        if waited >= engine.coalesce_timeout() {
            bump!(counters, fleet_timeouts);
            return ControlFlow::Continue((visit, forward, Some(leader)));
        }
        tokio::time::sleep(pause.min(engine.coalesce_timeout() - waited)).await;
        pause = (pause * 2).min(max_pause);
        let (logical, variant, headers) = visit.key();
        let found = engine.lookup(logical, variant, headers).await;
        if matches!(found, Found::Hit(..)) {
            return answer_or_lead(visit, forward, leader, found);
        }
    }
}

/// A fresh entry answers (and this process's followers look it up); anything else is
/// fetched by this leader.
fn answer_or_lead<A, V: Lookup<A>>(
    visit: V,
    forward: Forward,
    leader: Leader,
    found: Found,
) -> Next<V, A> {
    if !matches!(found, Found::Hit(..)) {
        return ControlFlow::Continue((visit, forward, Some(leader)));
    }
    match visit.weigh(found, Waited::Fleet) {
        ControlFlow::Break(response) => {
            leader.finish(Outcome::Stored);
            ControlFlow::Break(response)
        }
        // The request wants more than a hit gives (its own directives): it fetches.
        ControlFlow::Continue((visit, forward)) => {
            ControlFlow::Continue((visit, forward, Some(leader)))
        }
    }
}

/// What the store said of this process's turn (see [`ask`]).
enum Asked {
    /// Fetch (holding the lease, when the store gave one).
    Lead,
    /// Another process's answer could not be stored.
    Pass,
    /// Another process is fetching.
    Follow,
}

/// Ask the store whose turn `flight` is across the fleet; a lease this process takes is
/// handed back when `leader`'s flight ends or is forgotten ([`hold`]). A store that does
/// not answer reads as a lead without a lease: each process fetches alone rather than wait
/// on an unanswered Redis.
async fn ask(
    engine: &Engine,
    coordination: &dyn Coordination,
    leader: &mut Leader,
    logical: &str,
    flight: &[u8],
) -> Asked {
    let turn = coordination
        .fleet_turn(engine.namespace(), logical, flight)
        .await
        .unwrap_or(FleetTurn::Lead(None));
    match turn {
        FleetTurn::Lead(lease) => {
            if let Some(lease) = lease {
                hold(engine, leader, lease);
            }
            Asked::Lead
        }
        FleetTurn::Pass => Asked::Pass,
        FleetTurn::Follow => Asked::Follow,
    }
}

/// Hand the fleet's lease back when `leader`'s flight ends (stored, unstorable, or given up)
/// or an invalidation forgets it.
fn hold(engine: &Engine, leader: &mut Leader, lease: FleetLease) {
    // An invalidation that forgets the flight dooms its fetch (the write is refused): the
    // lease goes back then, so no process waits for that fetch. The end's hand-back that
    // follows finds another token, or none, and changes nothing.
    let store = engine.shared().store.clone();
    let forgotten = lease.clone();
    leader.on_forget(move || {
        if let Some(coordination) = store.coordination() {
            coordination.end_fleet_turn(forgotten, FleetEnd::Abandoned);
        }
    });
    let store = engine.shared().store.clone();
    leader.on_end(move |outcome| {
        let end = match outcome {
            Outcome::Stored => FleetEnd::Stored,
            Outcome::Uncacheable => FleetEnd::Unstorable,
            _ => FleetEnd::Abandoned,
        };
        if let Some(coordination) = store.coordination() {
            coordination.end_fleet_turn(lease, end);
        }
    });
}
