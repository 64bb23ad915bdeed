//! The memory store's rules: budget, eviction, variants, sweeping, invalidation.

use super::*;
use crate::store::policy::compaction_threshold;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

fn entry(body_len: usize, ttl_secs: u64) -> Arc<Entry> {
    Arc::new(Entry::new(
        StatusCode::OK,
        HeaderMap::new(),
        Bytes::from(vec![b'x'; body_len]),
        Duration::from_secs(ttl_secs),
    ))
}

fn key(logical: &str) -> StoreKey<'_> {
    StoreKey {
        namespace: "ns",
        logical,
        variant: 1,
    }
}

#[test]
fn a_flood_of_unique_keys_stays_within_the_budget() {
    let store = MemoryStore::builder().max_bytes(1 << 20).build();
    for i in 0..100_000 {
        let logical = format!("/flood/{i}/{}", "k".repeat(i % 300));
        store.put_now(key(&logical), entry(i % 2000, 60));
        assert!(store.stats().bytes <= 1 << 20, "over budget after {i}");
    }
    let stats = store.stats();
    assert!(stats.evictions > 90_000, "{stats:?}");
    assert!(stats.entries > 100, "{stats:?}");
    // The eviction queue does not grow without bound either.
    let queue = store.inner.policy.lock().unwrap().len() as u64;
    assert!(
        queue as usize <= compaction_threshold(stats.entries as usize) + 1,
        "{queue} refs for {stats:?}"
    );
}

#[test]
fn dead_references_stay_under_half_a_live_entry() {
    // Many live entries, each replaced again and again (or removed and stored again, as
    // an unsafe request's invalidation does): every replaced entry leaves a dead
    // reference, which keeps its allocation until the queue is compacted.
    let store = MemoryStore::new();
    let live = 10_000;
    let started = std::time::Instant::now();
    for round in 0..10 {
        for i in 0..live {
            let logical = format!("/live/{i}");
            if round % 2 == 1 {
                store.remove_key(&map_key("ns", &logical));
            }
            store.put_now(key(&logical), entry(10, 60));
            let queue = store.inner.policy.lock().unwrap().len();
            let entries = store.stats().entries as usize;
            assert!(
                queue <= entries + entries / 2 + 1025,
                "{queue} refs for {entries} entries"
            );
        }
    }
    assert_eq!(store.stats().entries, live as u64);
    let dead = store.inner.policy.lock().unwrap().dead();
    assert!(dead <= live / 2 + 1025, "{dead} dead refs");
    // Amortised O(1): 100 000 puts in well under a second in a release build, a few
    // seconds in a debug build on a busy machine; compacting on every put (10 000 references
    // each time) takes minutes.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn replacing_one_key_again_and_again_keeps_the_queue_small() {
    let store = MemoryStore::new();
    let started = std::time::Instant::now();
    for _ in 0..20_000 {
        store.put_now(key("/hot"), entry(10, 60));
    }
    let queue = store.inner.policy.lock().unwrap().len();
    assert!(queue <= 1025 + 2, "{queue} queue references for one entry");
    // Quadratic behaviour took seconds here; linear takes milliseconds.
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn recently_read_entries_survive_eviction() {
    let store = MemoryStore::builder().max_bytes(64 * 1024).build();
    store.put_now(key("/hot"), entry(1000, 60));
    for i in 0..500 {
        // The hot key is read between puts, all in the same instant.
        assert!(
            store.get_now(key("/hot")).is_some(),
            "evicted before put {i}"
        );
        store.put_now(key(&format!("/cold/{i}")), entry(1000, 60));
    }
    assert!(store.get_now(key("/hot")).is_some());
    assert!(store.get_now(key("/cold/0")).is_none());
}

#[test]
fn entries_too_big_for_the_budget_are_refused() {
    let store = MemoryStore::builder().max_bytes(10_000).build();
    assert!(!store.put_now(key("/big"), entry(5000, 60)));
    assert!(store.put_now(key("/small"), entry(100, 60)));
    assert_eq!(store.stats().entries, 1);
}

#[test]
fn replacing_an_entry_keeps_the_accounting_exact() {
    let store = MemoryStore::builder().build();
    store.put_now(key("/a"), entry(100, 60));
    let once = store.stats();
    for _ in 0..10 {
        store.put_now(key("/a"), entry(100, 60));
    }
    assert_eq!(store.stats().bytes, once.bytes);
    assert_eq!(store.stats().entries, 1);
    store.remove_key("ns:/a");
    assert_eq!(
        store.stats(),
        StoreStats {
            entries: 0,
            bytes: 0,
            evictions: 0,
            invalidated: 1,
            ..StoreStats::default()
        }
    );
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_swept_in_the_background() {
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_secs(5))
        .build();
    store.put_now(key("/short"), entry(10, 2));
    store.put_now(key("/long"), entry(10, 600));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(store.stats().entries, 1);
    assert!(store.get_now(key("/short")).is_none());
    assert!(store.get_now(key("/long")).is_some());
}

/// The sweeper runs on the runtime of the first write; when that runtime goes (a
/// `#[tokio::test]` that built a store others share, a startup `block_on`), the next write
/// from another runtime starts it again there, instead of leaving expired entries held
/// until capacity pushes them out.
#[test]
fn a_sweeper_whose_runtime_went_is_started_again_by_the_next_write() {
    let store = write_on_two_runtimes(false);
    assert_eq!(
        store.stats().entries,
        0,
        "an expired entry was left unswept: the sweeper died with the first runtime"
    );
    assert_eq!(store.stats().expirations, 2);
}

/// A store with a 20 ms sweep interval, written an entry that expires in 10 ms from one
/// runtime (paused when `paused`: it auto-advances a minute), which is then dropped, and
/// another such entry 100 ms later from a second runtime on the real clock, which runs
/// 200 ms. The first runtime's sweeper must have swept its entry.
fn write_on_two_runtimes(paused: bool) -> MemoryStore {
    let store = MemoryStore::builder()
        .sweep_interval(Duration::from_millis(20))
        .build();
    let short = || {
        Arc::new(Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"x"),
            Duration::from_millis(10),
        ))
    };
    let runtime = |paused: bool| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .unwrap()
    };
    let first = runtime(paused);
    first.block_on(async {
        store.put_now(key("/first"), short());
        // Paused, it auto-advances: the sweeper ticks 3 000 times, its last beat a minute
        // ahead of the real clock.
        let wait = if paused { 60_000 } else { 200 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
    });
    assert_eq!(store.stats().entries, 0, "premise: the first runtime swept");
    drop(first);
    // Long enough for the sweeper to have missed a few beats.
    std::thread::sleep(Duration::from_millis(100));
    runtime(false).block_on(async {
        store.put_now(key("/second"), short());
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    store
}

/// A sweep interval near the top of what milliseconds in a `u64` hold (a way to say
/// "never sweep") neither breaks writes nor starts a sweeper per write: three missed beats
/// of it saturate, they do not wrap.
#[tokio::test]
async fn a_huge_sweep_interval_neither_panics_nor_piles_up_sweepers() {
    for interval in [
        Duration::from_millis(u64::MAX),
        Duration::from_millis(u64::MAX / 3 + 1),
    ] {
        let store = MemoryStore::builder().sweep_interval(interval).build();
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        for i in 0..5 {
            let logical = format!("/huge/{i}");
            let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                store.put_now(key(&logical), entry(1, 60));
            }));
            assert!(written.is_ok(), "a write panicked (interval {interval:?})");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let sweepers = metrics.num_alive_tasks() - before;
        assert!(
            sweepers <= 1,
            "{sweepers} sweeper tasks for one store (interval {interval:?})"
        );
    }
}

/// The sweeper's beat is read on the clock of the runtime it runs on, which follows a
/// paused Tokio clock (`crate::clock`). A store shared between a `start_paused` test that
/// moved its clock an hour ahead and a later test on a real clock: the first test's
/// sweeper beat "an hour from now", so when its runtime goes, the next writes see a fresh
/// beat and start no sweeper for that hour: expired entries are held.
#[test]
fn a_sweeper_whose_paused_runtime_ran_ahead_and_went_is_started_again() {
    let store = write_on_two_runtimes(true);
    assert_eq!(
        store.stats().entries,
        0,
        "an expired entry was left unswept: the gone sweeper's beat lies in the future"
    );
}

#[tokio::test]
async fn namespaces_are_kept_apart() {
    let store = MemoryStore::new();
    let a = StoreKey {
        namespace: "a",
        logical: "/x",
        variant: 1,
    };
    let b = StoreKey {
        namespace: "b",
        logical: "/x",
        variant: 1,
    };
    store.put_now(a, entry(1, 60));
    store.put_now(b, entry(1, 60));
    assert_eq!(store.invalidate("a", &Pattern::new("*")).await.unwrap(), 1);
    assert_eq!(store.invalidate_all("a").await.unwrap(), 0);
    assert!(store.get_now(b).is_some());
    assert_eq!(store.invalidate("b", &Pattern::new("/x")).await.unwrap(), 1);
}

fn variant_entry(hash: u64) -> Arc<Entry> {
    Arc::new(
        Entry::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"v"),
            Duration::from_secs(60),
        )
        .with_vary(crate::entry::Vary {
            names: vec![http::header::USER_AGENT],
            values: Bytes::copy_from_slice(&hash.to_be_bytes()),
        }),
    )
}

/// A hit on the variant with this vary hash, as the handle records it.
fn read_variant(store: &MemoryStore, hash: u64) -> bool {
    let Some(variants) = store.get_now(key("/v")) else {
        return false;
    };
    let Some(entry) = variants
        .iter()
        .find(|e| e.vary().values[..] == hash.to_be_bytes())
    else {
        return false;
    };
    entry.usage().stamp_read();
    true
}

#[tokio::test(start_paused = true)]
async fn a_hot_variant_outlives_a_flood_of_junk_variants() {
    let store = MemoryStore::new();
    store.put_now(key("/v"), variant_entry(0));
    // Junk writes a few a second, the hot variant read between them.
    for junk in 1..=40 {
        tokio::time::advance(Duration::from_millis(300)).await;
        assert!(
            read_variant(&store, 0),
            "hot variant evicted before junk {junk}"
        );
        store.put_now(key("/v"), variant_entry(junk));
    }
    // Then many in the very second of its last read: the tie goes against the junk.
    tokio::time::advance(Duration::from_secs(1)).await;
    for junk in 100..140 {
        assert!(
            read_variant(&store, 0),
            "hot variant evicted before junk {junk}"
        );
        store.put_now(key("/v"), variant_entry(junk));
    }
    assert!(read_variant(&store, 0));
    let variants = store.get_now(key("/v")).unwrap();
    assert_eq!(variants.len(), MAX_VARY_VARIANTS);
    // The newest junk is kept, the oldest went; the accounting followed.
    assert!(variants
        .iter()
        .any(|e| e.vary().values[..] == 139u64.to_be_bytes()));
    assert!(!variants
        .iter()
        .any(|e| e.vary().values[..] == 1u64.to_be_bytes()));
    assert_eq!(store.stats().entries, MAX_VARY_VARIANTS as u64);
    let weight: u64 = variants.iter().map(|e| weight_of("ns:/v", e) as u64).sum();
    assert_eq!(store.stats().bytes, weight);
}

#[tokio::test(start_paused = true)]
async fn unread_variants_go_oldest_first() {
    let store = MemoryStore::new();
    for hash in 0..MAX_VARY_VARIANTS as u64 + 3 {
        store.put_now(key("/v"), variant_entry(hash));
        tokio::time::advance(Duration::from_millis(400)).await;
    }
    let variants = store.get_now(key("/v")).unwrap();
    let kept: Vec<u64> = variants
        .iter()
        .map(|e| u64::from_be_bytes(e.vary().values[..].try_into().unwrap()))
        .collect();
    assert_eq!(kept, (3..MAX_VARY_VARIANTS as u64 + 3).collect::<Vec<_>>());
}

#[test]
fn the_variant_cap_drops_the_least_recently_read_variant_at_any_rate() {
    // No time passes at all: only the order of reads and writes can decide.
    let store = MemoryStore::new();
    let full = MAX_VARY_VARIANTS as u64;
    for hash in 0..full {
        store.put_now(key("/v"), variant_entry(hash));
    }
    // Every variant read, in an order unrelated to the order they were stored in, with
    // other keys stored in between (what orders reads is the writes between them).
    let order: Vec<u64> = (0..full).map(|i| (i * 7 + 3) % full).collect();
    for &hash in &order {
        assert!(read_variant(&store, hash));
        store.put_now(key(&format!("/other/{hash}")), entry(1, 60));
    }
    // Each new variant (read by its client at once) drops the least recently read of
    // those left.
    for (n, &expected) in order.iter().take(4).enumerate() {
        store.put_now(key("/v"), variant_entry(100 + n as u64));
        assert!(read_variant(&store, 100 + n as u64));
        let variants = store.get_now(key("/v")).unwrap();
        assert_eq!(variants.len(), MAX_VARY_VARIANTS);
        assert!(
            !variants
                .iter()
                .any(|e| e.vary().values[..] == expected.to_be_bytes()),
            "variant {expected} (least recently read) should have gone for new variant {n}"
        );
    }
    // A new variant never read goes before any variant read since it was stored.
    let hot = order[order.len() - 1];
    for junk in 200..300 {
        store.put_now(key("/v"), variant_entry(junk));
    }
    assert!(
        read_variant(&store, hot),
        "the most recently read variant was dropped"
    );
    assert_eq!(store.stats().evictions, 4 + 100);
}

#[tokio::test(start_paused = true)]
async fn removals_are_counted_by_cause() {
    let store = MemoryStore::builder().max_bytes(64 * 1024).build();
    // Refused: too large for the budget.
    assert!(!store.put_now(key("/huge"), entry(32 * 1024, 60)));
    // Expiry: swept once dead.
    store.put_now(key("/short"), entry(10, 1));
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(store.sweep_expired(), 1);
    // Invalidation: a literal key, a glob, a tag's worth (all), a clear.
    store.put_now(key("/a"), entry(10, 60));
    store.put_now(key("/b/1"), entry(10, 60));
    store.put_now(key("/b/2"), entry(10, 60));
    store.put_now(key("/c"), entry(10, 60));
    assert_eq!(
        store.invalidate("ns", &Pattern::new("/a")).await.unwrap(),
        1
    );
    assert_eq!(
        store.invalidate("ns", &Pattern::new("/b/*")).await.unwrap(),
        2
    );
    assert_eq!(store.clear(), 1);
    // Capacity: a flood of unique keys over the budget.
    for i in 0..200 {
        store.put_now(key(&format!("/flood/{i}")), entry(1000, 60));
    }
    let stats = store.stats();
    assert_eq!(stats.expirations, 1, "{stats:?}");
    assert_eq!(stats.invalidated, 4, "{stats:?}");
    assert!(stats.evictions > 100, "{stats:?}");
    assert!(stats.admissions_refused >= 1, "{stats:?}");
    // Every put is held, evicted or refused.
    assert_eq!(
        stats.entries + stats.evictions + stats.admissions_refused,
        200 + 1,
        "{stats:?}"
    );
}

#[tokio::test]
async fn namespaces_never_alias_through_a_colon() {
    let store = MemoryStore::new();
    let entry = || {
        Arc::new(Entry::new(
            http::StatusCode::OK,
            http::HeaderMap::new(),
            bytes::Bytes::from_static(b"a"),
            Duration::from_secs(60),
        ))
    };
    let key = |namespace, logical| StoreKey {
        namespace,
        logical,
        variant: 1,
    };
    assert!(store.put_now(key("a", "b:c"), entry()));
    // The positive control: the same pair reads its entry.
    assert!(store.with_variants(key("a", "b:c"), |v| v.is_some()));
    assert!(
        store.with_variants(key("a:b", "c"), |v| v.is_none()),
        "a + b:c read as a:b + c"
    );
    assert!(store.with_variants(key("a%3Ab", "c"), |v| v.is_none()));
    // Invalidations of the other namespace leave it alone.
    let all = Pattern::new("*");
    assert_eq!(store.invalidate_all("a:b").await.unwrap(), 0);
    assert_eq!(store.invalidate("a:b", &all).await.unwrap(), 0);
    assert_eq!(
        store.invalidate("a:b", &Pattern::new("c")).await.unwrap(),
        0
    );
    assert!(store.with_variants(key("a", "b:c"), |v| v.is_some()));
    // A namespace with a colon works in its own right.
    assert!(store.put_now(key("x:y", "z"), entry()));
    assert!(store.with_variants(key("x:y", "z"), |v| v.is_some()));
    assert_eq!(
        store.invalidate("x:y", &Pattern::new("z")).await.unwrap(),
        1
    );
    assert!(store.put_now(key("x:y", "z"), entry()));
    assert_eq!(store.invalidate("x:y", &all).await.unwrap(), 1);
}

#[test]
fn a_zero_sweep_interval_builds_a_store_that_sweeps_every_millisecond() {
    let store = MemoryStore::builder()
        .sweep_interval(std::time::Duration::ZERO)
        .build();
    assert_eq!(
        store.inner.sweep_interval,
        std::time::Duration::from_millis(1)
    );
}

#[test]
fn the_hit_path_escapes_a_namespace_as_every_other_path_does() {
    for namespace in ["plain", "a:b", "50%:x", "%%::"] {
        let mut buffer = String::new();
        push_escaped(&mut buffer, namespace);
        assert_eq!(buffer, escaped(namespace), "{namespace}");
    }
}

/// What the layer stores for a typical page: its eight headers (the cache's `ETag` among
/// them) and a 4 KiB body.
fn page(path: &str) -> Entry {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "text/html; charset=utf-8"),
        ("cache-control", "public, max-age=600"),
        ("etag", "\"2c4f1a7e9b3d5f60\""),
        ("last-modified", "Wed, 21 Oct 2026 07:28:00 GMT"),
        ("date", "Wed, 21 Oct 2026 07:30:00 GMT"),
        ("content-encoding", "gzip"),
        ("server", "portal"),
    ] {
        headers.insert(name, http::HeaderValue::from_static(value));
    }
    headers.insert(
        "x-request-id",
        http::HeaderValue::from_str(&format!("req-{path}")).unwrap(),
    );
    Entry::new(
        StatusCode::OK,
        headers,
        Bytes::from(vec![b'x'; 4096]),
        Duration::from_secs(600),
    )
}

/// What a page costs above its body: its eight values (40 bytes each and their text), the
/// entry (152), the store's slot, queue reference and ghost (312), its key once: 1 019
/// bytes, within the kibibyte the issue allows; the layout its names share is charged to no
/// entry.
#[test]
fn a_page_with_eight_headers_is_charged_about_a_kib_above_its_body() {
    let path = "/dashboard/acme/2026-10";
    let charged = weight_of(&format!("default:{path}"), &page(path));
    assert!(charged <= 4096 + 1024, "{charged}");
    // A second page of the same names costs the same: nothing of the layout is charged.
    let other = "/dashboard/acme/2026-11";
    assert_eq!(
        weight_of(&format!("default:{other}"), &page(other)),
        charged
    );
}
