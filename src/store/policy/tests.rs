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
    Resident {
        key: format!("k{hash}").into(),
        variant: 0,
        hash,
        weight: 1000,
        entry: Arc::downgrade(entry),
    }
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
    assert!(policy.small_target() <= 50 * 1000);
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
