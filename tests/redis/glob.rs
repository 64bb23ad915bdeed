//! Memory and Redis must agree on what a pattern matches: random globs over the awkward
//! alphabet `ab*?[]^-\`, run against the memory store and against a real `redis-server`
//! (`SCAN MATCH` does the matching there), over the same logical keys.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::redis::RedisServer;
use tower_response_cache::{CacheHandle, MemoryStore, Pattern, RedisStore};

const ALPHABET: &[u8] = br"ab*?[]^-\";
const NAMESPACE: &str = "g";
const RANDOM_PATTERNS: usize = 400;
const DERIVED_PATTERNS: usize = 200;

/// A small deterministic generator (xorshift64*), so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn word(&mut self, min: usize, max: usize) -> String {
        let len = min + self.below(max - min + 1);
        (0..len)
            .map(|_| ALPHABET[self.below(ALPHABET.len())] as char)
            .collect()
    }
}

/// About 50 logical keys: hand-picked awkward ones, then random words. Never the empty key
/// (Redis quirk: `""` matches no pattern but the empty one, and the key would be `g:k:`).
fn keys(rng: &mut Rng) -> Vec<String> {
    let mut keys: BTreeSet<String> = [
        "a", "b", "ab", "ba", "aa", "*", "?", "[", "]", "^", "-", r"\", "[]", "[a]", "a*", "*a",
        r"a\", r"\a", "a-b", "^a", "]a", "a]", "[^a]", "--", "**", r"\\", "a?b", "[-]",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    while keys.len() < 50 {
        keys.insert(rng.word(1, 4));
    }
    keys.into_iter().collect()
}

/// A pattern made from `key` by swapping some bytes for glob syntax: these match often.
fn derived(rng: &mut Rng, key: &str) -> String {
    let mut out = String::new();
    for c in key.chars() {
        let other = ALPHABET[rng.below(ALPHABET.len())] as char;
        match rng.below(8) {
            0 => out.push('?'),
            1 => out.push('*'),
            2 => out.extend(['[', c, ']']),
            3 => out.extend(['[', '^', other, ']']),
            4 => out.extend(['\\', c]),
            5 => out.extend(['[', other, '-', c, ']']),
            _ => out.push(c),
        }
    }
    out
}

/// Hand-picked patterns at the edges of Redis's `stringmatchlen`, then random ones, then
/// ones derived from the keys.
fn patterns(rng: &mut Rng, keys: &[String]) -> Vec<String> {
    let mut patterns: Vec<String> = [
        "", "*", "**", "?", "??", "a", r"\", r"\\", r"a\", r"\*", r"\?", r"\[", r"\a", "[", "[]",
        "[]]", "[]a]", "[^]", "[^]]", "[^", "[a", "[ab", "[^a", "[a-]", "[a-]]", "[-a]", "[-]",
        "[--]", "[a-b]", "[b-a]", "[^a-b]", "[\\]]", "[\\", "[a\\-b]", "[[]", "[*]", "[?]", "[^*]",
        "*[", "*]", "*\\", "a*b", "*a*", "*?*", "?*?", "[ab]*", "*[^a]", "\\[*", "-*", "^*",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    for _ in 0..RANDOM_PATTERNS {
        patterns.push(rng.word(0, 6));
    }
    for _ in 0..DERIVED_PATTERNS {
        let key = &keys[rng.below(keys.len())];
        patterns.push(derived(rng, key));
    }
    patterns
}

/// Load `key` through the handle; returns whether the loader ran (the key was missing).
/// Either way the key is present afterwards.
async fn load(handle: &CacheHandle, key: &str) -> bool {
    let ran = AtomicUsize::new(0);
    let _: u8 = handle
        .get_or_insert_with(key, async {
            ran.fetch_add(1, Ordering::SeqCst);
            1u8
        })
        .await;
    ran.load(Ordering::SeqCst) == 1
}

fn in_redis(server: &RedisServer) -> BTreeSet<String> {
    let prefix = format!("{NAMESPACE}:k:");
    server
        .keys(&format!("{NAMESPACE}:k:*"))
        .into_iter()
        .map(|k| k.strip_prefix(&prefix).expect("namespaced").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redis_agree_on_random_glob_patterns() {
    let server = RedisServer::start();
    let redis = RedisStore::builder(server.url())
        // Correctness, not speed: a slow CI machine must not turn a read into a miss.
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let redis = CacheHandle::builder(redis).namespace(NAMESPACE).build();
    let memory = CacheHandle::builder(MemoryStore::new())
        .namespace(NAMESPACE)
        .build();

    let mut rng = Rng(0x5eed_0f91_0b5e_ed00);
    let keys = keys(&mut rng);
    let patterns = patterns(&mut rng, &keys);
    let all: BTreeSet<String> = keys.iter().cloned().collect();
    for key in &keys {
        assert!(load(&memory, key).await);
        assert!(load(&redis, key).await);
    }
    assert_eq!(in_redis(&server), all, "every key is stored in Redis");

    let mut disagreements = Vec::new();
    let mut matched_something = 0;
    for (case, pattern) in patterns.iter().enumerate() {
        memory.invalidate(pattern).await.unwrap();
        redis.invalidate(pattern).await.unwrap();

        // What Redis removed, read from Redis itself.
        let by_redis: BTreeSet<String> = all.difference(&in_redis(&server)).cloned().collect();
        // What memory removed; probing puts every key back.
        let mut by_memory = BTreeSet::new();
        for key in &keys {
            if load(&memory, key).await {
                by_memory.insert(key.clone());
            }
        }
        // Put back what Redis removed; the handle must see exactly those missing.
        let mut reloaded = BTreeSet::new();
        for key in &by_redis {
            if load(&redis, key).await {
                reloaded.insert(key.clone());
            }
        }
        assert_eq!(
            reloaded, by_redis,
            "case {case} {pattern:?}: the Redis handle and Redis disagree"
        );
        assert_eq!(in_redis(&server), all, "case {case}: every key is back");

        if !by_redis.is_empty() {
            matched_something += 1;
        }
        if by_memory != by_redis {
            let matcher = Pattern::new(pattern);
            disagreements.push(format!(
                "case {case}: pattern {pattern:?}: only memory removed {:?}, only Redis removed {:?} \
                 (Pattern::matches_str says {:?})",
                by_memory.difference(&by_redis).collect::<Vec<_>>(),
                by_redis.difference(&by_memory).collect::<Vec<_>>(),
                keys.iter()
                    .filter(|k| matcher.matches_str(k))
                    .collect::<Vec<_>>(),
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "memory and Redis disagree on {} of {} patterns:\n{}",
        disagreements.len(),
        patterns.len(),
        disagreements.join("\n")
    );
    eprintln!(
        "{matched_something} of {} patterns matched a key",
        patterns.len()
    );
    // The cases must exercise matching, not only miss everything.
    assert!(
        matched_something >= patterns.len() / 4,
        "only {matched_something} patterns matched any key"
    );
}
