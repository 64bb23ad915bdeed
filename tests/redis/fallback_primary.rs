//! `FallbackStore` over a primary that is not Redis: a memory store that can be switched
//! off (every call fails) and "restarted" (a new run_id). The circuit, the queue and the
//! replay are the fallback's own, so they must hold for any `Primary`: the circuit opens
//! when the primary fails, memory serves meanwhile, and an invalidation that returned while
//! the primary was away reaches it before the primary is read again.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::eventually;
use tower_response_cache::coordination::Coordination;
use tower_response_cache::{
    Backend, CacheHandle, FallbackStore, MemoryStore, OutcomeSink, Pattern, Primary, Store,
    StoreError, StoreFuture, StoreKey, Variants,
};

/// A primary kept in process memory that fails every call while switched off, and tells
/// which invalidations reached it.
#[derive(Clone)]
struct Switchable {
    memory: MemoryStore,
    down: Arc<AtomicBool>,
    run_id: Arc<Mutex<String>>,
    heard: Arc<Mutex<Vec<String>>>,
    /// Where the outcomes of its background calls go (the fallback store's circuit).
    outcomes: Arc<Mutex<Option<OutcomeSink>>>,
}

impl Switchable {
    fn new() -> Self {
        Switchable {
            memory: MemoryStore::new(),
            down: Arc::new(AtomicBool::new(false)),
            run_id: Arc::new(Mutex::new("first".to_owned())),
            heard: Arc::new(Mutex::new(Vec::new())),
            outcomes: Arc::new(Mutex::new(None)),
        }
    }

    /// A call no request waits for (a heartbeat, say) ended with `outcome`.
    fn background(&self, outcome: Result<(), &StoreError>) {
        let sink = self.outcomes.lock().unwrap().clone();
        sink.expect("the fallback store set its sink")(outcome);
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn heard(&self) -> Vec<String> {
        self.heard.lock().unwrap().clone()
    }

    fn refused<'a, T: Send + 'a>(&self) -> Option<StoreFuture<'a, T>> {
        self.down.load(Ordering::SeqCst).then(|| {
            let error = StoreError::unavailable("the primary is switched off", "down");
            Box::pin(std::future::ready(Err(error))) as StoreFuture<'a, T>
        })
    }

    fn hear(&self, what: String) {
        self.heard.lock().unwrap().push(what);
    }
}

impl Store for Switchable {
    fn get<'a>(&'a self, key: StoreKey<'a>) -> StoreFuture<'a, Option<Variants>> {
        self.refused().unwrap_or_else(|| self.memory.get(key))
    }

    fn put<'a>(
        &'a self,
        key: StoreKey<'a>,
        entry: Arc<tower_response_cache::Entry>,
    ) -> StoreFuture<'a, ()> {
        self.refused()
            .unwrap_or_else(|| self.memory.put(key, entry))
    }

    fn invalidate<'a>(&'a self, namespace: &'a str, pattern: &'a Pattern) -> StoreFuture<'a, u64> {
        self.refused().unwrap_or_else(|| {
            self.hear(format!("pattern {}", pattern.as_str()));
            self.memory.invalidate(namespace, pattern)
        })
    }

    fn invalidate_tag<'a>(&'a self, namespace: &'a str, tag: &'a str) -> StoreFuture<'a, u64> {
        self.refused().unwrap_or_else(|| {
            self.hear(format!("tag {tag}"));
            self.memory.invalidate_tag(namespace, tag)
        })
    }

    fn invalidate_all<'a>(&'a self, namespace: &'a str) -> StoreFuture<'a, u64> {
        self.refused().unwrap_or_else(|| {
            self.hear("all".to_owned());
            self.memory.invalidate_all(namespace)
        })
    }
}

impl Primary for Switchable {
    fn run_id(&self) -> StoreFuture<'_, String> {
        self.refused().unwrap_or_else(|| {
            let run_id = self.run_id.lock().unwrap().clone();
            Box::pin(std::future::ready(Ok(run_id)))
        })
    }

    fn set_outcome_sink(&self, sink: OutcomeSink) {
        *self.outcomes.lock().unwrap() = Some(sink);
    }
}

async fn fallback_over(primary: &Switchable) -> FallbackStore<Switchable> {
    FallbackStore::builder(primary.clone(), MemoryStore::new())
        .failure_threshold(1)
        .probe_interval(Duration::from_millis(20))
        .build()
        .await
}

async fn wait_for(store: &FallbackStore<Switchable>, falling_back: bool) {
    let reached = eventually(Duration::from_secs(5), || async {
        store.is_falling_back() == falling_back
    })
    .await;
    assert!(reached, "the circuit never became open = {falling_back}");
}

/// Calls no request waits for (a near cache's heartbeats) count towards the circuit like a
/// request's: failures in a row open it, and an answer between them starts the count
/// again. An idle process whose only calls are heartbeats must not gather a timeout now
/// and then, over hours, until three have opened the circuit.
#[tokio::test]
async fn background_calls_open_the_circuit_only_on_failures_in_a_row() {
    let primary = Switchable::new();
    let store = FallbackStore::builder(primary.clone(), MemoryStore::new())
        .failure_threshold(3)
        .build()
        .await;
    let timeout = StoreError::unavailable("a heartbeat ran out of time", "deadline");
    for _ in 0..20 {
        primary.background(Err(&timeout));
        primary.background(Err(&timeout));
        primary.background(Ok(()));
    }
    assert!(!store.is_falling_back(), "scattered failures opened it");
    for _ in 0..3 {
        primary.background(Err(&timeout));
    }
    assert!(store.is_falling_back(), "three in a row did not open it");
}

#[tokio::test]
async fn a_primary_that_is_not_redis_falls_back_and_hears_the_queued_invalidation_first() {
    let primary = Switchable::new();
    let store = fallback_over(&primary).await;
    assert!(!store.is_falling_back());
    // Closed, the fallback store reports what its primary serves from.
    assert_eq!(store.backend(), Backend::Memory);
    let cache = CacheHandle::builder(store.clone()).namespace("t").build();

    let first: u32 = cache.get_or_insert_with("report", async { 1 }).await;
    assert_eq!(first, 1);
    assert_eq!(primary.memory.stats().entries, 1, "written to the primary");

    // The primary fails: the invalidation applies locally, is queued, and opens the circuit.
    primary.set_down(true);
    let error = cache.invalidate("report").await.unwrap_err();
    assert!(error.store_error().is_unavailable(), "{error}");
    assert!(store.is_falling_back());
    assert_eq!(store.backend(), Backend::FallingBack);
    assert_eq!(store.pending_invalidations(), 1);
    assert_eq!(
        primary.memory.stats().entries,
        1,
        "the primary still holds it"
    );

    // Memory serves meanwhile: the second read does not run its loader.
    let loads = AtomicUsize::new(0);
    for _ in 0..2 {
        let value: u32 = cache
            .get_or_insert_with("other", async {
                loads.fetch_add(1, Ordering::SeqCst);
                10
            })
            .await;
        assert_eq!(value, 10);
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "the fallback did not serve"
    );
    assert_eq!(store.stats().circuit_openings, 1);

    // The primary answers again: it hears the invalidation, then the circuit closes.
    primary.set_down(false);
    wait_for(&store, false).await;
    assert_eq!(store.pending_invalidations(), 0);
    assert_eq!(primary.heard(), ["pattern report"]);
    // What the invalidation covered is gone from the primary: no stale answer.
    let again: u32 = cache.get_or_insert_with("report", async { 2 }).await;
    assert_eq!(again, 2, "read an entry the invalidation had removed");
}

#[tokio::test]
async fn a_primary_that_restarts_with_old_entries_hears_recent_invalidations_again() {
    let primary = Switchable::new();
    let store = fallback_over(&primary).await;
    let cache = CacheHandle::builder(store.clone()).namespace("t").build();
    let first: u32 = cache.get_or_insert_with("report", async { 1 }).await;
    assert_eq!(first, 1);
    cache.invalidate("report").await.unwrap();
    assert_eq!(primary.heard(), ["pattern report"]);
    assert_eq!(primary.memory.stats().entries, 0);

    // A restart from a snapshot taken before the invalidation: the entry is back, under a
    // new run_id. The probe must notice and replay before the primary is read again.
    primary.set_down(true);
    wait_for(&store, true).await;
    let snapshot = CacheHandle::builder(primary.memory.clone())
        .namespace("t")
        .build();
    let stale: u32 = snapshot.get_or_insert_with("report", async { 1 }).await;
    assert_eq!(stale, 1);
    assert_eq!(primary.memory.stats().entries, 1);
    *primary.run_id.lock().unwrap() = "second".to_owned();
    primary.set_down(false);
    wait_for(&store, false).await;

    assert_eq!(primary.heard(), ["pattern report", "pattern report"]);
    let again: u32 = cache.get_or_insert_with("report", async { 3 }).await;
    assert_eq!(
        again, 3,
        "read an entry from before a replayed invalidation"
    );
}

#[tokio::test]
async fn a_primary_without_coordination_takes_no_write_token() {
    let primary = Switchable::new();
    let store = fallback_over(&primary).await;
    assert_eq!(store.write_token(), 0);
    assert!(!store.checks_remote_invalidations());
    assert!(store.fetched_before(7, 3));
}
