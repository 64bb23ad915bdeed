//! The policy alone: what it admits, what it evicts, in what order.

use super::*;
use http::{HeaderMap, StatusCode};

fn entry() -> Arc<Entry> {
    Arc::new(Entry::new(
        StatusCode::OK,
        HeaderMap::new(),
        bytes::Bytes::new(),
        std::time::Duration::from_secs(60),
    ))
}

fn resident(hash: u64, entry: &Arc<Entry>) -> Resident {
    Resident::new(format!("k{hash}").into(), 0, hash, 1000, entry)
}

/// Admit `hash` into a policy whose budget holds `capacity` entries of 1000 bytes, as a store
/// does: `held` is how many it holds before this one.
fn admit(policy: &mut Policy, held: &mut Vec<Arc<Entry>>, hash: u64, capacity: u64) -> bool {
    let new = entry();
    let over = ((held.len() as u64 + 1) * 1000).saturating_sub(capacity * 1000);
    match policy.admit(resident(hash, &new), over, true, held.len()) {
        Admission::Admitted(victims) => {
            for v in victims {
                held.retain(|e| !Arc::ptr_eq(e, &v.entry));
            }
            held.push(new);
            true
        }
        Admission::Refused => false,
    }
}

/// Store `keys`, drop them (say invalidated) and store them again: missed twice, never read.
fn missed_twice(policy: &mut Policy, held: &mut Vec<Arc<Entry>>, keys: std::ops::Range<u64>) {
    let before = held.len();
    for k in keys.clone() {
        admit(policy, held, k, 100);
    }
    held.truncate(before);
    for k in keys {
        admit(policy, held, k, 100);
    }
}

fn in_main(policy: &Policy, hash: u64) -> bool {
    policy.main.iter().any(|r| r.hash == hash)
}

#[test]
fn a_scan_does_not_displace_entries_stored_more_often() {
    let mut policy = Policy::new(100 * 1000);
    let mut held = Vec::new();
    missed_twice(&mut policy, &mut held, 0..10);
    let popular: Vec<Arc<Entry>> = held.clone();
    // A scan of 500 unique keys (five times the cache, within the sketch's memory).
    for k in 1000..1500 {
        admit(&mut policy, &mut held, k, 100);
    }
    assert!(held.len() <= 100);
    for entry in &popular {
        assert!(
            held.iter().any(|e| Arc::ptr_eq(e, entry)),
            "a popular key was evicted"
        );
    }
    // Unread, they left the small queue for the main one, which had room: a page that
    // comes back less often than the small queue turns over is kept all the same.
    assert!((0..10).all(|k| in_main(&policy, k)));
}

#[test]
fn an_entry_read_in_the_small_queue_moves_to_main_and_survives_a_flood() {
    let mut policy = Policy::new(100 * 1000);
    let mut held: Vec<Arc<Entry>> = Vec::new();
    admit(&mut policy, &mut held, 1, 100);
    let hot = held[0].clone();
    hot.usage().count_use();
    for k in 2..5_000 {
        admit(&mut policy, &mut held, k, 100);
        if k % 50 == 0 {
            hot.usage().count_use();
        }
    }
    assert!(
        held.iter().any(|e| Arc::ptr_eq(e, &hot)),
        "the read entry was evicted"
    );
}

/// Store `keys` in order, reading each `reads` times right after it is stored.
fn store_all(
    policy: &mut Policy,
    held: &mut Vec<Arc<Entry>>,
    keys: std::ops::Range<u64>,
    reads: usize,
) {
    for k in keys {
        if admit(policy, held, k, 100) {
            let stored = held.last().unwrap().clone();
            for _ in 0..reads {
                stored.usage().count_use();
            }
        }
    }
}

#[test]
fn keys_back_soon_after_the_small_queue_dropped_them_grow_it() {
    let mut policy = Policy::new(100 * 1000);
    let mut held = Vec::new();
    let initial = policy.small_target();
    // Twice the cache of keys nobody reads: most leave through the small queue.
    store_all(&mut policy, &mut held, 0..200, 0);
    assert_eq!(policy.small_target(), initial, "no key came back yet");
    // Some that left come back soon: a popular set that moved.
    store_all(&mut policy, &mut held, 50..100, 0);
    assert!(
        policy.small_target() > initial,
        "{} after keys came back from the small queue's ghost (started at {initial})",
        policy.small_target()
    );
    assert!(policy.small_target() <= 30 * 1000);
}

/// Keys back from the small queue's ghost grow it either way; whether they are then read
/// decides whether newcomers are still contested. Returns `(grown, refused)`: whether the
/// small queue grew, and how many newcomers of a scan that follows were refused.
fn returns_then_scan(reads: usize) -> (bool, usize) {
    let mut policy = Policy::new(100 * 1000);
    let mut held = Vec::new();
    let initial = policy.small_target();
    store_all(&mut policy, &mut held, 0..200, 0);
    // Keys back soon after the small queue dropped them, twice over: the first ones reach
    // the main queue's head (and are judged) while the others come back.
    store_all(&mut policy, &mut held, 120..190, reads);
    store_all(&mut policy, &mut held, 300..400, 0);
    store_all(&mut policy, &mut held, 420..490, 0);
    store_all(&mut policy, &mut held, 420..490, reads);
    let grown = policy.small_target() > initial;
    // One-off keys, each weighed against what it would push out (stored twice).
    let refused = (1000..1100)
        .filter(|&k| !admit(&mut policy, &mut held, k, 100))
        .count();
    (grown, refused)
}

#[test]
fn returns_nobody_reads_do_not_lift_the_admission_contest() {
    // Junk requested twice each: back from the ghost, never read. The small queue grows,
    // but newcomers are still weighed against the keys stored twice.
    let (grown, refused) = returns_then_scan(0);
    assert!(grown);
    assert!(refused > 0, "no newcomer was refused");
    // A popular set that moved: its keys are read once back, and newcomers are let in.
    let (grown, refused) = returns_then_scan(1);
    assert!(grown);
    assert_eq!(refused, 0);
}

#[test]
fn keys_back_after_the_main_queue_dropped_them_shrink_the_small_queue() {
    let mut policy = Policy::new(100 * 1000);
    let mut held = Vec::new();
    // Read once each: they move to the main queue as the small queue fills.
    store_all(&mut policy, &mut held, 0..100, 1);
    // New keys, unread, then back (from the small queue's ghost, straight into main):
    // they push the first ones out of the main queue.
    store_all(&mut policy, &mut held, 100..300, 0);
    store_all(&mut policy, &mut held, 100..300, 0);
    let grown = policy.small_target();
    // The first keys come back, from the main queue's ghost.
    store_all(&mut policy, &mut held, 0..100, 0);
    assert!(
        policy.small_target() < grown,
        "{} after keys came back from the main queue's ghost (was {grown})",
        policy.small_target()
    );
    assert!(policy.small_target() >= 1000);
}

/// Queue a new entry (stamped as a store takes it) at the end of the small queue.
fn queue_small(policy: &mut Policy, hash: u64) -> Arc<Entry> {
    let entry = entry();
    entry.usage().stamp_write();
    policy.small_bytes += 1000;
    policy.small.push_back(resident(hash, &entry));
    entry
}

/// Queue a new entry with `uses` at the end of the main queue.
fn queue_main(policy: &mut Policy, hash: u64, uses: usize) -> Arc<Entry> {
    let entry = entry();
    entry.usage().stamp_write();
    for _ in 0..uses {
        entry.usage().count_use();
    }
    policy.main_bytes += 1000;
    policy.main.push_back(resident(hash, &entry));
    entry
}

/// A policy whose main queue holds `old` (stored and read before: the first half three
/// times each, the rest once) and whose small queue holds `fresh` (stored after them,
/// unread), with the small queue at its share of a 100-entry budget of `small_percent`.
fn old_main_and_fresh_small(
    small_percent: u64,
    old: std::ops::Range<u64>,
    fresh: std::ops::Range<u64>,
) -> (Policy, Vec<Arc<Entry>>) {
    let mut policy = Policy::new(100 * 1000);
    policy.small_target = small_percent * 1000;
    let mut held = Vec::new();
    let half = old.start + (old.end - old.start) / 2;
    for hash in old {
        held.push(queue_main(
            &mut policy,
            hash,
            if hash < half { 3 } else { 1 },
        ));
    }
    for hash in fresh {
        held.push(queue_small(&mut policy, hash));
    }
    (policy, held)
}

fn victims_of_one_newcomer(policy: &mut Policy) -> Vec<u64> {
    let new = entry();
    new.usage().stamp_write();
    match policy.admit(resident(999, &new), 1000, false, 100) {
        Admission::Admitted(victims) => victims.iter().map(|v| v.resident.hash).collect(),
        Admission::Refused => panic!("not contested"),
    }
}

#[test]
fn while_recency_pays_the_main_queue_gives_up_what_was_read_before_the_small_queue_came() {
    // The popular set moved (the small queue grew to 30 %): seventy entries read often
    // before it moved, none since, and thirty newer ones in the small queue.
    let (mut policy, held) = old_main_and_fresh_small(30, 0..70, 100..130);
    assert!(policy.recency_pays());
    // The main queue's oldest goes, not the small queue's.
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![0]);
    assert!((100..130).all(|k| policy.small.iter().any(|r| r.hash == k)));
    drop(held);
}

#[test]
fn while_recency_pays_a_pass_through_the_main_queue_spends_every_use() {
    // A 2 000-entry budget, the small queue grown to 30 % but holding 100 entries: victims
    // come from the main queue, whose 1 000 entries were all read since (half of them
    // three times, half once).
    let mut policy = Policy::new(2000 * 1000);
    policy.small_target = 600 * 1000;
    let mut held = Vec::new();
    for hash in 5000..5100 {
        held.push(queue_small(&mut policy, hash));
    }
    for hash in 0..1000 {
        held.push(queue_main(
            &mut policy,
            hash,
            if hash < 500 { 3 } else { 1 },
        ));
    }
    let new = entry();
    new.usage().stamp_write();
    for read in &held[100..] {
        read.usage().stamp_read();
    }
    let victims = match policy.admit(resident(9999, &new), 1000, false, 1100) {
        Admission::Admitted(victims) => victims,
        Admission::Refused => panic!("not contested"),
    };
    // One pass spent every use (a CLOCK), so the first in line goes: counts from before
    // the popular set moved do not keep an entry read three times past those read once.
    assert_eq!(victims.len(), 1);
    assert_eq!(victims[0].resident.hash, 0);
    assert!(held[101..].iter().all(|e| e.usage().uses() == 0));
}

#[test]
fn while_recency_pays_a_main_queue_under_a_third_of_its_share_keeps_its_entries() {
    // Twenty-three entries read before the move (under a third of the main queue's 70 %
    // share) and newer ones in the small queue: the small queue's oldest goes.
    let (mut policy, held) = old_main_and_fresh_small(30, 0..23, 100..177);
    assert!(policy.recency_pays());
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![100]);
    assert!(held[..23].iter().all(|e| e.usage().uses() > 0));
    // Twenty-four (a third of it): the main queue's oldest goes.
    let (mut policy, held) = old_main_and_fresh_small(30, 0..24, 100..176);
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![0]);
    drop(held);
}

#[test]
fn while_frequency_pays_the_main_queue_keeps_what_was_read_often() {
    // The same queues with the small queue at its starting 10 %: the uses count.
    let (mut policy, held) = old_main_and_fresh_small(10, 0..70, 100..130);
    assert!(!policy.recency_pays());
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![100]);
    assert!(held[..35].iter().all(|e| e.usage().uses() == 3));
    assert!(held[35..70].iter().all(|e| e.usage().uses() == 1));
}

#[test]
fn while_recency_pays_an_entry_unread_for_half_the_queues_stores_leaves_with_its_uses() {
    let mut policy = Policy::new(100 * 1000);
    policy.small_target = 30 * 1000;
    let forgotten = queue_main(&mut policy, 0, 3);
    // Two hundred stores later (other tests' stores, elsewhere, change nothing)...
    for _ in 0..200 {
        entry().usage().stamp_write();
        policy.note_store();
    }
    // ...sixty entries read once since, and twenty in the small queue, below its share.
    let mut held = vec![forgotten.clone()];
    for hash in 1..61 {
        let read = queue_main(&mut policy, hash, 1);
        read.usage().stamp_read();
        held.push(read);
    }
    for hash in 100..120 {
        held.push(queue_small(&mut policy, hash));
    }
    assert!(policy.recency_pays());
    // It leaves at once with the uses it kept: the entries read since are not passed
    // over (which would spend their uses) to find one with none.
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![0]);
    assert_eq!(forgotten.usage().uses(), 3);
    assert!(held[1..61].iter().all(|e| e.usage().uses() == 1));
}

#[test]
fn stores_taken_by_other_stores_of_the_process_do_not_shorten_an_entrys_life() {
    // An entry read three times, then two hundred stores taken by other stores of the
    // process (a near cache, a fallback), then one stored here, unread.
    let mut policy = Policy::new(100 * 1000);
    policy.small_target = 30 * 1000;
    let old = queue_main(&mut policy, 0, 3);
    for _ in 0..200 {
        entry().usage().stamp_write();
    }
    let fresh = queue_main(&mut policy, 1, 0);
    assert!(policy.recency_pays());
    // This store took no store since the first entry was read: it is not forgotten, a
    // pass spends its uses, and the one with none leaves.
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![1]);
    assert_eq!(old.usage().uses(), 0);
    drop(fresh);
}

#[test]
fn a_dead_reference_at_the_main_queues_head_does_not_hide_the_colder_entry_behind_it() {
    // As above, but the main queue's oldest entry is gone from the store (replaced or
    // invalidated): the colder rule weighs the live entry behind it.
    let (mut policy, mut held) = old_main_and_fresh_small(30, 0..70, 100..130);
    held.remove(0);
    assert_eq!(victims_of_one_newcomer(&mut policy), vec![1]);
    assert!((100..130).all(|k| policy.small.iter().any(|r| r.hash == k)));
}

/// The store charges 48 bytes per queued reference (`SLOT_BYTES` in `memory/eviction.rs`).
#[test]
fn a_queued_reference_takes_48_bytes() {
    assert_eq!(std::mem::size_of::<Resident>(), 48);
}

/// Feed the gate one read return in `every`, long enough to forget where it started, and
/// say whether it stays open (`Some(true)`), shut (`Some(false)`) or flips (`None`) over
/// the next returns.
fn gate_under(every: usize) -> Option<bool> {
    let mut policy = Policy::new(100 * 1000);
    for i in 0..5_000 {
        policy.count_return(i % every == 0);
    }
    let mut states = (0..10 * every).map(|i| {
        policy.count_return(i % every == 0);
        policy.returns_are_read()
    });
    let first = states.next()?;
    states.all(|s| s == first).then_some(first)
}

#[test]
fn the_gate_opens_at_its_share_of_returns_read() {
    // The threshold is one in 16: one in 12 keeps it open, one in 20 shut, at every step.
    assert_eq!(gate_under(12), Some(true));
    assert_eq!(gate_under(20), Some(false));
    assert_eq!(gate_under(4), Some(true));
    assert_eq!(gate_under(1_000), Some(false));
}
