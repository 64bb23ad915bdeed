//! A store of one's own for the layer tests: a memory store whose first lookup can wait at
//! a gate, whose invalidations can fail or take their time.

use tower_response_cache::MemoryStore;

/// A store of one's own (no answers without waiting) whose first lookup, once it has read
/// the store, waits for the test to open a gate: a request whose lookup missed just
/// before another request's flight stored the entry and ended. While `failing` is set,
/// its invalidations fail; each takes `invalidate_delay` (long enough for a client to hang
/// up between the keys one unsafe request invalidates).
pub(crate) struct GatedStore {
    pub(crate) inner: MemoryStore,
    pub(crate) gate: std::sync::Arc<tokio::sync::Semaphore>,
    pub(crate) first: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub(crate) invalidate_delay: std::time::Duration,
}

impl tower_response_cache::Store for GatedStore {
    fn get<'a>(
        &'a self,
        key: tower_response_cache::StoreKey<'a>,
    ) -> tower_response_cache::StoreFuture<'a, Option<tower_response_cache::Variants>> {
        Box::pin(async move {
            let found = self.inner.get(key).await;
            if self.first.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let _ = self.gate.acquire().await;
            }
            found
        })
    }
    fn put<'a>(
        &'a self,
        key: tower_response_cache::StoreKey<'a>,
        entry: std::sync::Arc<tower_response_cache::Entry>,
    ) -> tower_response_cache::StoreFuture<'a, ()> {
        self.inner.put(key, entry)
    }
    fn invalidate<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a tower_response_cache::Pattern,
    ) -> tower_response_cache::StoreFuture<'a, u64> {
        Box::pin(async move {
            tokio::time::sleep(self.invalidate_delay).await;
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                let error = tower_response_cache::StoreError::new("refused", "the test says so");
                return Err(error);
            }
            self.inner.invalidate(namespace, pattern).await
        })
    }
    fn invalidate_soft<'a>(
        &'a self,
        namespace: &'a str,
        pattern: &'a tower_response_cache::Pattern,
    ) -> tower_response_cache::StoreFuture<'a, u64> {
        self.inner.invalidate_soft(namespace, pattern)
    }
    fn invalidate_tag<'a>(
        &'a self,
        namespace: &'a str,
        tag: &'a str,
    ) -> tower_response_cache::StoreFuture<'a, u64> {
        self.inner.invalidate_tag(namespace, tag)
    }
    fn invalidate_all<'a>(
        &'a self,
        namespace: &'a str,
    ) -> tower_response_cache::StoreFuture<'a, u64> {
        self.inner.invalidate_all(namespace)
    }
}
