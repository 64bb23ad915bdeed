//! Fleet-wide single flight: one process fetches a key that misses in several at once.
//!
//! Inside one process concurrent misses of a key already reach the origin once (the
//! handle's flights). Across processes sharing a Redis, the process whose local flight
//! leads first takes a lease on the flight in Redis (`SET NX PX`, a random token); the
//! others' leaders find the lease taken and wait for the entry, looking it up every few
//! milliseconds, and answer from it (their own followers with them). Why it stays right:
//!
//! - **Bounded.** A follower waits at most the handle's coalesce timeout, then fetches
//!   itself. A leader that dies or stalls keeps its lease only for the lease's time: a
//!   follower that finds no lease takes it (a takeover) and fetches.
//! - **No stale read.** Followers read the entry from the store, through the same lookup
//!   as any request, so an entry is what the write script let in: a leader whose fetch
//!   began before an `invalidate` carries a token the script refuses, and an entry written
//!   before it is removed by it. A follower never reads the leader's response directly.
//! - **Unstorable answers do not queue.** A leader whose answer cannot be stored leaves a
//!   short-lived `pass` mark instead of its token: followers fetch alone rather than one
//!   after another.
//! - **Only the holder hands back.** Release and the `pass` mark are applied only while the
//!   lease still holds the leader's token (a script), so a leader that lost its lease to a
//!   takeover never ends the new holder's turn.
//! - **Redis failing is a local flight.** An error (or the circuit open) reads as "lead":
//!   each process falls back to its own single flight.
//!
//! Cost on a plain miss: one round trip (the `SET NX PX`) before the fetch; the release is
//! sent off the request path.
//!
//! [`Fleet`] owns the lease a leader takes (none: the feature is off) and the two scripts;
//! taking and handing back a turn compose it with the store's calls.

use std::time::Duration;

use redis::Script;

use super::{rand_u64, RedisStore};
use crate::store::{FleetEnd, FleetLease, FleetTurn, StoreError};

/// What a lease says once its answer was found unstorable.
const PASS: &str = "pass";

/// Take the lease `KEYS[1]` as `ARGV[1]` for `ARGV[2]` ms when nobody holds it; returns `lead`,
/// `pass` (another process's answer was unstorable) or `follow`. A value no process writes
/// (not a 16-hex-digit token or `pass`, another type, no expiry or one past a minute, the
/// longest lease) is no lease: it is taken over, so a foreign value never holds a key's
/// misses at the coalesce timeout.
const TURN_SCRIPT: &str = r#"
local held = false
local kind = redis.call('TYPE', KEYS[1])['ok']
if kind == 'string' then
  held = redis.call('GET', KEYS[1])
  local ttl = redis.call('PTTL', KEYS[1])
  local token = #held == 16 and not string.find(held, '[^0-9a-f]')
  if ttl < 0 or ttl > 60000 or not (token or held == 'pass') then held = false end
end
if not held then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 'lead'
end
if held == 'pass' then return 'pass' end
return 'follow'
"#;

/// Hand back the lease `KEYS[1]` if it still holds `ARGV[1]`: delete it, or (`ARGV[2]` > 0) mark
/// it `pass` for `ARGV[2]` ms.
const END_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local pass = tonumber(ARGV[2])
if pass and pass > 0 then
  redis.call('SET', KEYS[1], 'pass', 'PX', pass)
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// The fleet-wide flights of a Redis store: the lease a leader takes (none: off) and the
/// scripts that take and hand back a turn.
pub(crate) struct Fleet {
    /// How long a leader holds a flight's lease unless it hands it back first.
    lease: Option<Duration>,
    turn: Script,
    end: Script,
}

impl Fleet {
    pub(crate) fn new(lease: Option<Duration>) -> Self {
        Fleet {
            lease,
            turn: Script::new(TURN_SCRIPT),
            end: Script::new(END_SCRIPT),
        }
    }

    /// The lease a leader takes, when fleet-wide flights are on.
    pub(crate) fn lease(&self) -> Option<Duration> {
        self.lease
    }

    /// Take `lease` (a fresh token, on the flight's key) for `time`, when nobody holds it.
    fn take(&self, lease: &FleetLease, time: Duration) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.turn.prepare_invoke();
        invocation
            .key(&lease.key)
            .arg(&lease.token)
            .arg(time.as_millis().max(1) as u64);
        invocation
    }

    /// Hand `lease` back, leaving a `pass` mark for `pass_ms` (0: none).
    fn end(&self, lease: &FleetLease, pass_ms: u64) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.end.prepare_invoke();
        invocation.key(&lease.key).arg(&lease.token).arg(pass_ms);
        invocation
    }
}

/// How long a turn handed back as `end` leaves its `pass` mark (ms; 0: none, deleted).
fn pass_ms(end: FleetEnd, pass: Duration) -> u64 {
    match end {
        FleetEnd::Unstorable => pass.as_millis().max(1) as u64,
        FleetEnd::Stored | FleetEnd::Abandoned => 0,
    }
}

/// The stable hash of a flight's identity: every process names the lease alike.
fn flight_hash(flight: &[u8]) -> u64 {
    super::secret::siphash24((0x7472_632d_666c_6565, 0x742d_6c65_6173_6521), flight)
}

impl RedisStore {
    pub(crate) async fn take_fleet_turn(
        &self,
        namespace: &str,
        logical: &str,
        flight: &[u8],
    ) -> Result<FleetTurn, StoreError> {
        let Some(lease_time) = self.inner.fleet.lease() else {
            return Ok(FleetTurn::Lead(None));
        };
        let key = self
            .layout()
            .fleet_key(namespace, logical, flight_hash(flight));
        let token = format!("{:016x}", rand_u64());
        let lease = FleetLease { key, token };
        let invocation = self.inner.fleet.take(&lease, lease_time);
        let turn: String = match self.invoke(invocation, self.inner.calls.deadline).await {
            Ok(turn) => turn,
            Err(error) => {
                // A call that missed its deadline may still run (a paused Redis runs it when
                // it resumes): the lease it may have taken is handed back, so it holds no
                // other process's miss for the lease's time.
                self.hand_back_fleet_turn(lease, FleetEnd::Abandoned, lease_time);
                return Err(error);
            }
        };
        Ok(match turn.as_str() {
            "lead" => FleetTurn::Lead(Some(lease)),
            PASS => FleetTurn::Pass,
            _ => FleetTurn::Follow,
        })
    }

    pub(crate) fn hand_back_fleet_turn(&self, lease: FleetLease, end: FleetEnd, pass: Duration) {
        let store = self.clone();
        let pass_ms = pass_ms(end, pass);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let lease_time = self.inner.fleet.lease().unwrap_or(pass);
        runtime.spawn(async move {
            // Retried until the lease would have run out anyway: a lease left behind by a
            // Redis hiccup would hold this key's next misses, fleet-wide, for its rest.
            let started = tokio::time::Instant::now();
            let mut pause = Duration::from_millis(20);
            loop {
                let invocation = store.inner.fleet.end(&lease, pass_ms);
                let ended: Result<i64, StoreError> =
                    store.invoke(invocation, store.inner.calls.deadline).await;
                let Err(error) = ended else { return };
                store
                    .inner
                    .calls
                    .background_failed("could not hand back a fleet flight's lease", &error);
                if started.elapsed() + pause >= lease_time {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unstorable_answer_leaves_a_pass_mark() {
        let pass = Duration::from_millis(1500);
        assert_eq!(pass_ms(FleetEnd::Unstorable, pass), 1500);
        assert_eq!(
            pass_ms(FleetEnd::Unstorable, Duration::ZERO),
            1,
            "never a 0 ms expiry"
        );
        assert_eq!(pass_ms(FleetEnd::Stored, pass), 0);
        assert_eq!(pass_ms(FleetEnd::Abandoned, pass), 0);
    }

    #[test]
    fn the_flight_hash_is_the_same_in_every_process() {
        // Fixed keys: a change here splits a fleet running two versions into two flights.
        // Pinned: every build, on every architecture, names this flight's lease alike.
        assert_eq!(flight_hash(b"/api/dashboard/1"), 16_804_248_693_850_608_854);
        assert_ne!(flight_hash(b"a"), flight_hash(b"b"));
    }
}
