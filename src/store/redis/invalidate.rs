//! Invalidation in Redis: remove (or mark, for a soft invalidation) what matches —
//! `SCAN MATCH` on every primary and `UNLINK` in batches, an index for tags — after raising
//! the generation, then tell other processes.

// The store's own vocabulary (its imports, scripts and helpers).
use super::*;

/// One invalidation, owned (it runs in a task of its own).
pub(super) enum Removal {
    Pattern(Pattern),
    Soft(Pattern),
    Tag(String),
    All,
}

impl Removal {
    /// What the channel and the near caches hear of it.
    fn invalidation(&self) -> Invalidation {
        match self {
            Removal::Pattern(p) | Removal::Soft(p) => Invalidation::Pattern(p.as_str().to_owned()),
            Removal::Tag(t) => Invalidation::Tag(t.clone()),
            Removal::All => Invalidation::All,
        }
    }
}

/// Variants a soft invalidation marks per script call (`HSCAN`'s `COUNT`: a hint, about
/// this many): each call copies at most this many values, whatever the key holds.
const SOFT_BATCH: usize = 128;

impl RedisStore {
    /// Run `removal` in a task of its own, on the invalidation connection, which the
    /// returned future only waits for (with its `WAIT` for replicas): a caller that stops waiting (a timeout, a client gone) does not stop it halfway, after
    /// the entries are gone from Redis and before other processes and the near caches hear
    /// of it. When it fails (it may have stopped before its publish, which applies it to
    /// this process's near cache), it is applied to the near cache anyway.
    pub(super) fn detached(&self, namespace: &str, removal: Removal) -> StoreFuture<'static, u64> {
        let store = self.invalidating();
        let namespace = namespace.to_owned();
        let task = tokio::spawn(async move {
            let result = match &removal {
                Removal::Pattern(p) => store.invalidate_pattern(&namespace, p).await,
                Removal::Soft(p) => store.invalidate_pattern_soft(&namespace, p).await,
                Removal::Tag(t) => store.invalidate_by_tag(&namespace, t).await,
                Removal::All => store.invalidate_namespace(&namespace).await,
            };
            // Done on the primary and heard of: now on a replica too (see `durable.rs`).
            let result = match result {
                Ok(removed) if store.waits => store.reach_replicas().await.map(|()| removed),
                done => done,
            };
            if result.is_err() {
                if let Some(near) = &store.inner.near {
                    near.apply(&namespace, &removal.invalidation());
                }
            }
            result
        });
        Box::pin(async move {
            task.await
                .unwrap_or_else(|e| Err(StoreError::new("the invalidation task failed", e)))
        })
    }

    /// Tell other processes, after the entries are gone from Redis: this process's near
    /// cache first, then the channel, then wait for other processes' near-cache leases or
    /// their acknowledgements (see `near.rs`).
    pub(super) async fn publish(
        &self,
        namespace: &str,
        generation: u64,
        invalidation: Invalidation,
    ) -> Result<(), StoreError> {
        if let Some(near) = &self.inner.near {
            near.apply(namespace, &invalidation);
        }
        // Listening for acknowledgements before the publish: they may beat its reply.
        let awaiting = self.inner.leases.acks.expect();
        let cmd = (self.inner.channel).publish(namespace, generation, invalidation, awaiting.seq());
        let published = self.query::<i64>(cmd, self.inner.calls.deadline).await;
        self.await_leases(published.err(), std::time::Instant::now(), &awaiting)
            .await
    }

    /// `SCAN MATCH` + `UNLINK` of entry keys of `namespace` (and their expiry sets) in
    /// batches on every primary; returns how many entries were removed.
    pub(super) async fn unlink_matching(
        &self,
        namespace: &str,
        pattern: &str,
    ) -> Result<u64, StoreError> {
        self.on_matching(namespace, pattern, None).await
    }

    /// `UNLINK` entry keys of `namespace` and their expiry sets; returns how many entries
    /// were removed.
    pub(super) async fn unlink_entries(
        &self,
        namespace: &str,
        keys: &[Vec<u8>],
    ) -> Result<u64, StoreError> {
        let removed = self.unlink(keys).await?;
        let layout = self.layout();
        let expiry: Vec<Vec<u8>> = keys
            .iter()
            .filter_map(|k| layout.expiry_of(namespace, k))
            .collect();
        if !expiry.is_empty() {
            self.unlink(&expiry).await?;
        }
        Ok(removed)
    }

    /// `UNLINK` one batch of keys (a cluster connection splits it by slot).
    pub(super) async fn unlink(&self, keys: &[Vec<u8>]) -> Result<u64, StoreError> {
        let cmd = redis::cmd("UNLINK").arg(keys).clone();
        self.query::<u64>(cmd, self.inner.calls.scan_deadline).await
    }

    /// Mark each of `keys` soft-invalidated with `mark`, the keys together, each in
    /// batches of [`SOFT_BATCH`] variants per script call (a script may only touch one
    /// slot, and one call over a flood of variants would stall Redis); returns how many
    /// keys were still there.
    pub(super) async fn mark_soft(&self, keys: &[Vec<u8>], mark: &[u8]) -> Result<u64, StoreError> {
        let marked = try_join_all(keys.iter().map(|key| async move {
            let mut cursor = "0".to_owned();
            let mut existed = 0;
            loop {
                let mut invocation = self.inner.entries.soft.prepare_invoke();
                invocation
                    .key(key.as_slice())
                    .arg(mark)
                    .arg(&cursor)
                    .arg(SOFT_BATCH);
                let (next, there) = self
                    .invoke::<(String, u64)>(invocation, self.inner.calls.scan_deadline)
                    .await?;
                existed = existed.max(there);
                if next == "0" {
                    return Ok::<u64, StoreError>(existed);
                }
                cursor = next;
            }
        }))
        .await?;
        Ok(marked.into_iter().sum())
    }

    /// Walk the entry keys of `namespace` matching `pattern` on every primary, batch by
    /// batch: `UNLINK` them (and their expiry sets), or with `soft`, mark them
    /// soft-invalidated. Returns how many were removed or marked.
    pub(super) async fn on_matching(
        &self,
        namespace: &str,
        pattern: &str,
        soft: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        self.on_matching_keys(pattern, |keys| async move {
            match soft {
                None => self.unlink_entries(namespace, &keys).await,
                Some(mark) => self.mark_soft(&keys, mark).await,
            }
        })
        .await
    }

    /// Walk the keys matching `pattern` on every primary, handing each batch to `each`;
    /// returns the sum of what it returned.
    pub(super) async fn on_matching_keys<F, Fut>(
        &self,
        pattern: &str,
        each: F,
    ) -> Result<u64, StoreError>
    where
        F: Fn(Vec<Vec<u8>>) -> Fut,
        Fut: std::future::Future<Output = Result<u64, StoreError>>,
    {
        let deadline = self.inner.calls.scan_deadline;
        let mut removed = 0u64;
        for node in self.primaries(deadline).await? {
            let mut cursor: u64 = 0;
            loop {
                let cmd = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .clone();
                let (next, keys): (u64, Vec<Vec<u8>>) =
                    self.query_node(&node, cmd, deadline).await?;
                if !keys.is_empty() {
                    removed += each(keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(removed)
    }

    pub(super) async fn invalidate_pattern(
        &self,
        namespace: &str,
        pattern: &Pattern,
    ) -> Result<u64, StoreError> {
        let layout = self.layout();
        let removed = match pattern.literal() {
            Some(literal) => {
                let generation = self.bump_generation(namespace, Some(literal)).await?;
                let cmd = redis::cmd("UNLINK")
                    .arg(layout.entry_key(namespace, literal))
                    .clone();
                let removed = self.query(cmd, self.inner.calls.deadline).await?;
                let cmd = redis::cmd("UNLINK")
                    .arg(layout.expiry_key(namespace, literal))
                    .clone();
                let _: u64 = self.query(cmd, self.inner.calls.deadline).await?;
                (generation, removed)
            }
            None => {
                let generation = self.bump_generation(namespace, None).await?;
                let scan = layout.entry_scan(namespace, pattern.as_str());
                (generation, self.unlink_matching(namespace, &scan).await?)
            }
        };
        let (generation, removed) = removed;
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await?;
        Ok(removed)
    }

    /// Mark the matching entries stale instead of removing them: a read compares the mark's
    /// generation with the one each value was fetched under (see `soft.rs`).
    pub(super) async fn invalidate_pattern_soft(
        &self,
        namespace: &str,
        pattern: &Pattern,
    ) -> Result<u64, StoreError> {
        let layout = self.layout();
        let generation = self.bump_generation(namespace, pattern.literal()).await?;
        let mark = soft::mark(generation, crate::clock::now_millis());
        let marked = match pattern.literal() {
            Some(literal) => {
                let key = layout.entry_key(namespace, literal).into_bytes();
                self.mark_soft(&[key], &mark).await?
            }
            None => {
                let scan = layout.entry_scan(namespace, pattern.as_str());
                self.on_matching(namespace, &scan, Some(&mark)).await?
            }
        };
        // Other processes drop their local copies (hard: the safe side) and ban fetches.
        self.publish(
            namespace,
            generation,
            Invalidation::Pattern(pattern.as_str().to_owned()),
        )
        .await?;
        Ok(marked)
    }

    pub(super) async fn invalidate_by_tag(
        &self,
        namespace: &str,
        tag: &str,
    ) -> Result<u64, StoreError> {
        let generation = self.bump_generation(namespace, None).await?;
        let deadline = self.inner.calls.scan_deadline;
        let mut removed = 0;
        for tag_key in self.layout().tag_keys(namespace, tag) {
            // In batches (`SSCAN`), never the whole set in one reply: `SMEMBERS` of a tag on
            // 200 000 entries holds Redis about 70 ms, for every process. Each batch leaves
            // the set as its entries go (`SREM`), so an entry tagged while the scan runs
            // (fetched after the generation bump, so not what this invalidation removes)
            // keeps its membership for the next one.
            let mut cursor: u64 = 0;
            loop {
                let cmd = redis::cmd("SSCAN")
                    .arg(&tag_key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .clone();
                let (next, members): (u64, Vec<Vec<u8>>) = self.query(cmd, deadline).await?;
                if !members.is_empty() {
                    removed += self.unlink_entries(namespace, &members).await?;
                    let cmd = redis::cmd("SREM").arg(&tag_key).arg(&members).clone();
                    let _: u64 = self.query(cmd, self.inner.calls.deadline).await?;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        self.publish(namespace, generation, Invalidation::Tag(tag.to_owned()))
            .await?;
        Ok(removed)
    }

    pub(super) async fn invalidate_namespace(&self, namespace: &str) -> Result<u64, StoreError> {
        let generation = self.bump_generation(namespace, None).await?;
        let layout = self.layout();
        let removed = self
            .unlink_matching(namespace, &layout.entry_scan(namespace, "*"))
            .await?;
        self.on_matching_keys(&layout.tag_scan(namespace), |keys| async move {
            self.unlink(&keys).await
        })
        .await?;
        self.publish(namespace, generation, Invalidation::All)
            .await?;
        Ok(removed)
    }
}
