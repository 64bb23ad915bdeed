//! Generations and write tokens: every invalidation raises a generation counter first, and
//! a write carries the token (epoch and generation) its request saw when it began; the write
//! script refuses it when an invalidation that may cover it happened since (see the
//! [`RedisStore`] docs).

// The store's own vocabulary (its imports, scripts and helpers).
use super::*;
use secret::Secret;

/// Bits of a write token that hold the generation; the 24 above hold the epoch.
pub(super) const GENERATION_BITS: u32 = 40;
pub(super) const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
pub(super) const EPOCH_MASK: u64 = (1 << 24) - 1;

/// A write token: the epoch of the data set (one Redis; 0 in a cluster) and the generation.
pub(super) fn token(epoch: u64, generation: u64) -> u64 {
    ((epoch & EPOCH_MASK) << GENERATION_BITS) | generation.min(GENERATION_MASK)
}

pub(super) fn token_generation(token: u64) -> u64 {
    token & GENERATION_MASK
}

pub(super) fn token_epoch(token: u64) -> u64 {
    token >> GENERATION_BITS
}

/// Tries to raise a counter chosen with the bucket secret Redis holds: a secret that is
/// not known yet costs one more; one that changes between two tries (Redis emptied twice
/// within a round trip) is an error.
const SECRET_ATTEMPTS: usize = 3;

fn secret_kept_changing() -> StoreError {
    StoreError::unavailable(
        "the bucket secret in Redis kept changing",
        "Redis was emptied while the invalidation ran",
    )
}

/// A counter or an epoch as the crate writes it (what the scripts' `own_number` reads):
/// up to 15 decimal digits; `None` when missing or foreign.
fn own_number(value: Option<&str>) -> Option<u64> {
    let value = value?;
    if value.is_empty() || value.len() > 15 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// A fresh epoch: random, never 0 (0 is "none").
pub(super) fn new_epoch() -> u64 {
    (rand_u64() % EPOCH_MASK) + 1
}

impl RedisStore {
    /// After Redis restarted (its counters may have gone back), raise its invalidation
    /// counters to at least what this process has seen, so a write fetched before the
    /// restart can never pass the check again.
    pub(crate) async fn restore_generation(&self) -> Result<(), StoreError> {
        let floor = token_generation(self.inner.generation.load(Ordering::Relaxed));
        match self.inner.layout {
            Layout::Single => {
                let mut invocation = self.inner.restore_single_script.prepare_invoke();
                invocation
                    .key(CENTRAL_GENERATION)
                    .key(WIDE_GENERATION)
                    .key(EPOCH)
                    .arg(floor);
                let asked = self.asking();
                let (epoch, generation) = self
                    .invoke::<(u64, u64)>(invocation, self.inner.scan_deadline)
                    .await?;
                self.set_token(asked, epoch, generation);
            }
            Layout::Cluster => {
                let mut keys = vec![CENTRAL_GENERATION.to_owned()];
                keys.extend(self.inner.layout.bucket_generation_keys());
                let raised = try_join_all(keys.iter().map(|key| {
                    let mut invocation = self.inner.raise_script.prepare_invoke();
                    invocation.key(key).arg(floor);
                    self.invoke::<u64>(invocation, self.inner.scan_deadline)
                }))
                .await?;
                self.adopt(raised.into_iter().max().unwrap_or(floor));
            }
        }
        Ok(())
    }

    /// Learn the current generation (when the channel (re)connects), so this process's
    /// writes are not refused for carrying an old one.
    pub(crate) async fn catch_up_generation(&self) {
        self.learn_generation(self.inner.scan_deadline).await;
    }

    /// Read the generation counter (and, on one Redis, the epoch) and adopt it (also before
    /// each miss fetches, see [`Store::current_write_token`]); on failure this process keeps
    /// what it knows, and the error counts toward opening a fallback's circuit. A successful read also settles what a message claimed before it was
    /// sent (see [`heard`](Self::heard)).
    pub(super) async fn learn_generation(&self, deadline: Duration) {
        let claimed = self.inner.heard_floor.load(Ordering::Acquire);
        let learned = match self.inner.layout {
            Layout::Single => {
                let cmd = redis::cmd("MGET")
                    .arg(EPOCH)
                    .arg(CENTRAL_GENERATION)
                    .arg(layout::SECRET)
                    .clone();
                let asked = self.asking();
                self.query::<(Option<String>, Option<String>, Option<String>)>(cmd, deadline)
                    .await
                    .map(|(epoch, generation, secret)| {
                        // A foreign epoch is no data set's name (the write script removes
                        // it); a foreign counter tells nothing: what this process knows stays.
                        let epoch = own_number(epoch.as_deref()).filter(|e| *e <= EPOCH_MASK);
                        let known = self.inner.generation.load(Ordering::Relaxed);
                        let generation = own_number(generation.as_deref())
                            .unwrap_or_else(|| token_generation(known));
                        // One Redis is the authority, even when it went down (restarted empty).
                        self.set_token(asked, epoch.unwrap_or(0), generation);
                        self.inner.secrets.learn(0, secret.as_deref().unwrap_or(""));
                    })
            }
            Layout::Cluster => {
                let cmd = redis::cmd("GET").arg(CENTRAL_GENERATION).clone();
                self.query::<Option<String>>(cmd, deadline)
                    .await
                    .map(|generation| self.adopt(own_number(generation.as_deref()).unwrap_or(0)))
            }
        };
        match learned {
            Ok(()) => {
                // Redis has answered since the claim: a true one is in the token now, a false
                // one is dropped. A newer claim stays.
                let _ = self.inner.heard_floor.compare_exchange(
                    claimed,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
            }
            // Nobody waits for this answer: the error counts here or nowhere.
            Err(error) => self
                .inner
                .background_failed("could not read the generation", &error),
        }
    }

    /// A question to Redis about its epoch and generation is about to be sent: its number.
    pub(super) fn asking(&self) -> u64 {
        self.inner.asked.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One Redis: adopt the answer to question `asked`, unless the answer to a question
    /// asked later was adopted already. Answers are adopted in the order their tasks run,
    /// not the order Redis answered them: an answer from before an invalidation's bump, or
    /// from before Redis named its data set, adopted after a newer one, would otherwise take
    /// this process back (its next writes then refuse themselves, or its flights look older
    /// than they are). A newer answer's epoch is taken as it is (a new one means Redis
    /// restarted empty); within one epoch the token never goes back.
    pub(super) fn set_token(&self, asked: u64, epoch: u64, generation: u64) {
        let mut adopted = self.inner.adopted.lock().unwrap_or_else(|e| e.into_inner());
        if asked < *adopted {
            return;
        }
        *adopted = asked;
        let told = token(epoch, generation);
        let _ = self
            .inner
            .generation
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                let same_epoch = token_epoch(now) == token_epoch(told);
                Some(if same_epoch { now.max(told) } else { told })
            });
    }

    /// A cluster: never go back.
    pub(super) fn adopt(&self, generation: u64) {
        self.inner
            .generation
            .fetch_max(token(0, generation), Ordering::Relaxed);
    }

    /// Another process says it invalidated at `generation`. Not trusted (anyone who can
    /// `PUBLISH` can say anything): the token stays what Redis said, and until Redis is asked
    /// again (at once, in a task) the writes this process checks against its own knowledge
    /// (the fallback's memory writes) must carry a token past the one it has, which refuses
    /// every fetch in flight here. A message claiming `u64::MAX` asks for one step, not the
    /// end, and Redis's answer settles it.
    pub(crate) fn heard(&self, generation: u64) {
        let now = self.inner.generation.load(Ordering::Relaxed);
        if generation <= token_generation(now) {
            return;
        }
        let next = token(token_epoch(now), token_generation(now) + 1);
        self.inner.heard_floor.fetch_max(next, Ordering::AcqRel);
        let store = self.clone();
        tokio::spawn(async move {
            store.learn_generation(store.inner.deadline).await;
        });
    }

    /// Whether a write carrying `token` must be refused by this process's own knowledge
    /// (the fallback's memory writes): an invalidation was heard of since it was taken, or
    /// it names another data set.
    pub(crate) fn refuses_locally(&self, token: u64) -> bool {
        let now = self.inner.generation.load(Ordering::Relaxed);
        let floor = self.inner.heard_floor.load(Ordering::Acquire);
        token_epoch(token) != token_epoch(now)
            || token_generation(token) < token_generation(now)
            || (token_epoch(floor) == token_epoch(token)
                && token_generation(token) < token_generation(floor))
    }

    /// Whether a fetch that took `token` may have begun before an invalidation that drew
    /// `generation`: its token names an earlier generation (a token read after the
    /// invalidation raised the counter names that one or a later one), or another data set
    /// than the one this process knows now. On one Redis the write script refuses the same
    /// writes to the keys the invalidation covers.
    pub(crate) fn predates(&self, token: u64, generation: u64) -> bool {
        let now = self.inner.generation.load(Ordering::Relaxed);
        token_epoch(token) != token_epoch(now) || token_generation(token) < generation
    }

    /// Raise the generation before removing anything, so a write racing the removal is
    /// dropped: on one Redis the bucket counter of `logical` (the wide counter for `None`),
    /// in a cluster the counters of the buckets `logical` names (every bucket for `None`),
    /// each to a generation above any seen. Returns the generation drawn.
    pub(super) async fn bump_generation(
        &self,
        namespace: &str,
        logical: Option<&str>,
    ) -> Result<u64, StoreError> {
        let layout = self.inner.layout;
        match layout {
            Layout::Single => {
                // An exact invalidation's counter is chosen with the bucket secret; the
                // script checks it is Redis's (creating it the first time) and, when it is
                // not, raises nothing and says which it is: learn it and choose again.
                for _ in 0..SECRET_ATTEMPTS {
                    let secret = logical.and_then(|_| self.inner.secrets.get(0));
                    let counter = match logical {
                        Some(logical) => layout.generation_key(namespace, logical, secret.as_ref()),
                        None => WIDE_GENERATION.to_owned(),
                    };
                    let mut invocation = self.inner.bump_single_script.prepare_invoke();
                    invocation
                        .key(CENTRAL_GENERATION)
                        .key(EPOCH)
                        .key(layout::SECRET)
                        .key(counter)
                        .arg(new_epoch())
                        .arg(secret.as_ref().map_or("", |s| s.as_str()))
                        .arg(Secret::random().as_str())
                        .arg(if logical.is_some() { "1" } else { "0" })
                        .arg(token_generation(self.inner.generation.load(Ordering::Relaxed)) + 1);
                    let asked = self.asking();
                    let (epoch, generation, current) = self
                        .invoke::<(u64, u64, String)>(invocation, self.inner.deadline)
                        .await?;
                    self.inner.secrets.learn(0, &current);
                    if generation == 0 {
                        continue;
                    }
                    self.set_token(asked, epoch, generation);
                    return Ok(generation);
                }
                Err(secret_kept_changing())
            }
            Layout::Cluster => {
                let floor = token_generation(self.inner.generation.load(Ordering::Relaxed)) + 1;
                let drawn = self.bump(CENTRAL_GENERATION.to_owned(), floor).await?;
                // Raised to the drawn generation, never past it: no counter and no token is
                // ever above the central counter, so the next invalidation draws a generation
                // above every token taken before it.
                match logical {
                    Some(logical) => self.raise_keyed(namespace, logical, drawn).await?,
                    None => {
                        try_join_all(layout.bucket_generation_keys().into_iter().map(|k| {
                            let mut invocation = self.inner.raise_script.prepare_invoke();
                            invocation.key(k).arg(drawn);
                            self.invoke::<u64>(invocation, self.inner.deadline)
                        }))
                        .await?;
                    }
                }
                self.adopt(drawn);
                Ok(drawn)
            }
        }
    }

    /// A cluster's exact invalidation: raise the counter the key bucket's secret selects
    /// for `logical` to `drawn` (learning the secret, or creating it, on the way).
    async fn raise_keyed(
        &self,
        namespace: &str,
        logical: &str,
        drawn: u64,
    ) -> Result<(), StoreError> {
        let layout = self.inner.layout;
        let (secret_key, slot) = layout.secret_key(logical);
        for _ in 0..SECRET_ATTEMPTS {
            let secret = self.inner.secrets.get(slot);
            let Some(known) = &secret else {
                // None known: propose one; the script answers with the bucket's.
                let mut invocation = self.inner.raise_keyed_script.prepare_invoke();
                invocation
                    .key(layout.generation_key(namespace, logical, None))
                    .key(&secret_key)
                    .arg(drawn)
                    .arg("")
                    .arg(Secret::random().as_str());
                let (_, current) = self
                    .invoke::<(u64, String)>(invocation, self.inner.deadline)
                    .await?;
                self.inner.secrets.learn(slot, &current);
                continue;
            };
            let mut invocation = self.inner.raise_keyed_script.prepare_invoke();
            invocation
                .key(layout.generation_key(namespace, logical, secret.as_ref()))
                .key(&secret_key)
                .arg(drawn)
                .arg(known.as_str())
                .arg(Secret::random().as_str());
            let (raised, current) = self
                .invoke::<(u64, String)>(invocation, self.inner.deadline)
                .await?;
            self.inner.secrets.learn(slot, &current);
            if raised != 0 {
                return Ok(());
            }
        }
        Err(secret_kept_changing())
    }
    pub(super) async fn bump(&self, key: String, floor: u64) -> Result<u64, StoreError> {
        let mut invocation = self.inner.bump_script.prepare_invoke();
        invocation.key(key).arg(floor);
        self.invoke(invocation, self.inner.deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_older_answer_adopted_late_never_takes_the_token_back() {
        // Never connected: only the token bookkeeping is exercised.
        let store = RedisStore::builder("redis://127.0.0.1:1/").build().unwrap();
        let now = || store.inner.generation.load(Ordering::Relaxed);
        let (first, second, third) = (store.asking(), store.asking(), store.asking());
        store.set_token(second, 7, 5);
        // Asked before: from before the bump, or before Redis named its data set.
        store.set_token(first, 7, 3);
        assert_eq!(now(), token(7, 5));
        store.set_token(first, 0, 0);
        assert_eq!(now(), token(7, 5));
        // Asked later, Redis restarted empty: its new epoch is the truth.
        store.set_token(third, 9, 1);
        assert_eq!(now(), token(9, 1));
    }

    #[tokio::test]
    async fn a_claimed_generation_refuses_local_writes_but_leaves_the_token_alone() {
        let store = RedisStore::builder("redis://127.0.0.1:1/").build().unwrap();
        store.set_token(store.asking(), 7, 5);
        assert!(!store.refuses_locally(token(7, 5)));
        // Redis cannot be asked here: the claim stands until it answers.
        store.heard(u64::MAX);
        assert_eq!(store.inner.generation.load(Ordering::Relaxed), token(7, 5));
        assert!(store.refuses_locally(token(7, 5)), "a fetch in flight");
        assert!(!store.refuses_locally(token(7, 6)));
    }
}
