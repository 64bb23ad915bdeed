//! Generations: every invalidation raises a generation counter first, and a write carries
//! the token (epoch and generation, see `tokens.rs`) its request saw when it began; the
//! write script refuses it when an invalidation that may cover it happened since (see the
//! [`RedisStore`] docs).
//!
//! [`Generations`] owns the scripts that raise and restore the counters in Redis and the
//! bucket secrets that choose an exact invalidation's counter: what it takes to move the
//! counters, apart from the token this process holds ([`Tokens`]),
//! which only ever hears answers. It knows how each script is called (which counter, which
//! secret, which keys and arguments), so that choice is tested without a Redis; the
//! `RedisStore` methods here send the calls and hand the answers to the tokens.

// The store's own vocabulary (its imports, scripts and helpers).
use super::*;
use secret::{Secret, Secrets};
use tokens::EPOCH_MASK;

/// The scripts that move the invalidation counters, and the bucket secrets learnt from
/// Redis (see `secret.rs`).
pub(crate) struct Generations {
    /// Names the counters and the secrets' keys.
    layout: Layout,
    bump: Script,
    raise: Script,
    bump_single: Script,
    restore_single: Script,
    raise_keyed: Script,
    pub(crate) secrets: Secrets,
}

impl Generations {
    /// For a Redis laid out as `layout` (one secret per slot group).
    pub(crate) fn new(layout: Layout) -> Generations {
        Generations {
            layout,
            bump: Script::new(BUMP_SCRIPT),
            raise: Script::new(RAISE_SCRIPT),
            bump_single: Script::new(BUMP_SINGLE_SCRIPT),
            restore_single: Script::new(RESTORE_SINGLE_SCRIPT),
            raise_keyed: Script::new(RAISE_KEYED_SCRIPT),
            secrets: Secrets::new(layout.secret_slots()),
        }
    }

    /// One Redis: the counter an invalidation of `logical` raises (`None`, a glob, a tag or
    /// a namespace: the wide one), and the secret it was chosen with (the one known, which
    /// the script checks against Redis's).
    pub(crate) fn single_counter(
        &self,
        namespace: &str,
        logical: Option<&str>,
    ) -> (String, Option<Secret>) {
        match logical {
            Some(logical) => {
                let secret = self.secrets.get(0);
                let counter = self
                    .layout
                    .generation_key(namespace, logical, secret.as_ref());
                (counter, secret)
            }
            None => (WIDE_GENERATION.to_owned(), None),
        }
    }

    /// One Redis: draw a generation above `floor` and raise `counter` (chosen with
    /// `secret`, for an `exact` invalidation) to it, naming the data set when it has no
    /// epoch yet. Answers the epoch, the generation (0: the secret was not Redis's) and
    /// Redis's secret.
    pub(crate) fn bump_single(
        &self,
        counter: String,
        secret: Option<&Secret>,
        exact: bool,
        floor: u64,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.bump_single.prepare_invoke();
        invocation
            .key(CENTRAL_GENERATION)
            .key(EPOCH)
            .key(layout::SECRET)
            .key(counter)
            .arg(new_epoch())
            .arg(secret.map_or("", |s| s.as_str()))
            .arg(Secret::random().as_str())
            .arg(if exact { "1" } else { "0" })
            .arg(floor);
        invocation
    }

    /// One Redis after a restart: raise the central and wide counters to at least `floor`.
    /// Answers the epoch and the central generation.
    pub(crate) fn restore_single(&self, floor: u64) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.restore_single.prepare_invoke();
        invocation
            .key(CENTRAL_GENERATION)
            .key(WIDE_GENERATION)
            .key(EPOCH)
            .arg(floor);
        invocation
    }

    /// Raise the counter `key` to at least `to`; answers where it stands.
    pub(crate) fn raise(&self, key: &str, to: u64) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.raise.prepare_invoke();
        invocation.key(key).arg(to);
        invocation
    }

    /// Draw a generation from the counter `key`, at least `floor`.
    pub(crate) fn bump(&self, key: &str, floor: u64) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.bump.prepare_invoke();
        invocation.key(key).arg(floor);
        invocation
    }

    /// A cluster: raise the counter of `logical` chosen with `secret` (none known: the
    /// script proposes a new one and raises nothing) to `drawn`. Answers whether it raised
    /// and the key bucket's secret.
    pub(crate) fn raise_keyed(
        &self,
        namespace: &str,
        logical: &str,
        drawn: u64,
        secret: Option<&Secret>,
    ) -> redis::ScriptInvocation<'_> {
        let (secret_key, _) = self.layout.secret_key(logical);
        let mut invocation = self.raise_keyed.prepare_invoke();
        invocation
            .key(self.layout.generation_key(namespace, logical, secret))
            .key(secret_key)
            .arg(drawn)
            .arg(secret.map_or("", |s| s.as_str()))
            .arg(Secret::random().as_str());
        invocation
    }
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
        let floor = token_generation(self.inner.tokens.current());
        match self.layout() {
            Layout::Single => {
                let invocation = self.inner.generations.restore_single(floor);
                let asked = self.inner.tokens.asking();
                let (epoch, generation) = self
                    .invoke::<(u64, u64)>(invocation, self.inner.calls.scan_deadline)
                    .await?;
                self.inner.tokens.set(asked, epoch, generation);
            }
            Layout::Cluster => {
                let mut keys = vec![CENTRAL_GENERATION.to_owned()];
                keys.extend(self.layout().bucket_generation_keys());
                let raised = try_join_all(keys.iter().map(|key| {
                    let invocation = self.inner.generations.raise(key, floor);
                    self.invoke::<u64>(invocation, self.inner.calls.scan_deadline)
                }))
                .await?;
                self.inner
                    .tokens
                    .adopt(raised.into_iter().max().unwrap_or(floor));
            }
        }
        Ok(())
    }

    /// Learn the current generation (when the channel (re)connects), so this process's
    /// writes are not refused for carrying an old one.
    pub(crate) async fn catch_up_generation(&self) {
        self.learn_generation(self.inner.calls.scan_deadline).await;
    }

    /// Read the generation counter (and, on one Redis, the epoch) and adopt it (also before
    /// each miss fetches, see [`Coordination::current_write_token`]); on failure this
    /// process keeps what it knows, and the error counts toward opening a fallback's
    /// circuit. A successful read also settles what a message claimed before it was sent
    /// (see [`heard`](Self::heard)).
    pub(super) async fn learn_generation(&self, deadline: Duration) {
        let claimed = self.inner.tokens.claimed();
        let learned = match self.layout() {
            Layout::Single => {
                let cmd = redis::cmd("MGET")
                    .arg(EPOCH)
                    .arg(CENTRAL_GENERATION)
                    .arg(layout::SECRET)
                    .clone();
                let asked = self.inner.tokens.asking();
                self.query::<(Option<String>, Option<String>, Option<String>)>(cmd, deadline)
                    .await
                    .map(|(epoch, generation, secret)| {
                        // A foreign epoch is no data set's name (the write script removes
                        // it); a foreign counter tells nothing: what this process knows stays.
                        let epoch = own_number(epoch.as_deref()).filter(|e| *e <= EPOCH_MASK);
                        let known = self.inner.tokens.current();
                        let generation = own_number(generation.as_deref())
                            .unwrap_or_else(|| token_generation(known));
                        // One Redis is the authority, even when it went down (restarted empty).
                        self.inner.tokens.set(asked, epoch.unwrap_or(0), generation);
                        self.inner
                            .generations
                            .secrets
                            .learn(0, secret.as_deref().unwrap_or(""));
                    })
            }
            Layout::Cluster => {
                let cmd = redis::cmd("GET").arg(CENTRAL_GENERATION).clone();
                self.query::<Option<String>>(cmd, deadline)
                    .await
                    .map(|generation| {
                        self.inner
                            .tokens
                            .adopt(own_number(generation.as_deref()).unwrap_or(0))
                    })
            }
        };
        match learned {
            // Redis has answered since the claim: a true one is in the token now.
            Ok(()) => self.inner.tokens.settle(claimed),
            // Nobody waits for this answer: the error counts here or nowhere.
            Err(error) => {
                (self.inner.calls).background_failed("could not read the generation", &error)
            }
        }
    }

    /// Another process says it invalidated at `generation`. Not trusted (see
    /// [`Tokens::claim`](super::tokens::Tokens::claim)): Redis is asked at once, in a task,
    /// and its answer settles the claim.
    pub(crate) fn heard(&self, generation: u64) {
        if !self.inner.tokens.claim(generation) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            store.learn_generation(store.inner.calls.deadline).await;
        });
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
        let layout = self.layout();
        match layout {
            Layout::Single => {
                // An exact invalidation's counter is chosen with the bucket secret; the
                // script checks it is Redis's (creating it the first time) and, when it is
                // not, raises nothing and says which it is: learn it and choose again.
                for _ in 0..SECRET_ATTEMPTS {
                    let generations = &self.inner.generations;
                    let (counter, secret) = generations.single_counter(namespace, logical);
                    let floor = token_generation(self.inner.tokens.current()) + 1;
                    let invocation =
                        generations.bump_single(counter, secret.as_ref(), logical.is_some(), floor);
                    let asked = self.inner.tokens.asking();
                    let (epoch, generation, current) = self
                        .invoke::<(u64, u64, String)>(invocation, self.inner.calls.deadline)
                        .await?;
                    self.inner.generations.secrets.learn(0, &current);
                    if generation == 0 {
                        continue;
                    }
                    self.inner.tokens.set(asked, epoch, generation);
                    return Ok(generation);
                }
                Err(secret_kept_changing())
            }
            Layout::Cluster => {
                let floor = token_generation(self.inner.tokens.current()) + 1;
                let drawn = self.bump(CENTRAL_GENERATION, floor).await?;
                // Raised to the drawn generation, never past it: no counter and no token is
                // ever above the central counter, so the next invalidation draws a generation
                // above every token taken before it.
                match logical {
                    Some(logical) => self.raise_keyed(namespace, logical, drawn).await?,
                    None => {
                        try_join_all(layout.bucket_generation_keys().iter().map(|k| {
                            let invocation = self.inner.generations.raise(k, drawn);
                            self.invoke::<u64>(invocation, self.inner.calls.deadline)
                        }))
                        .await?;
                    }
                }
                self.inner.tokens.adopt(drawn);
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
        let generations = &self.inner.generations;
        let (_, slot) = self.layout().secret_key(logical);
        for _ in 0..SECRET_ATTEMPTS {
            let secret = generations.secrets.get(slot);
            let invocation = generations.raise_keyed(namespace, logical, drawn, secret.as_ref());
            let (raised, current) = self
                .invoke::<(u64, String)>(invocation, self.inner.calls.deadline)
                .await?;
            generations.secrets.learn(slot, &current);
            // None known: the script proposed one and raised nothing; try again with it.
            if secret.is_some() && raised != 0 {
                return Ok(());
            }
        }
        Err(secret_kept_changing())
    }

    /// Draw a generation from the counter `key`, at least `floor`.
    pub(super) async fn bump(&self, key: &str, floor: u64) -> Result<u64, StoreError> {
        let invocation = self.inner.generations.bump(key, floor);
        self.invoke(invocation, self.inner.calls.deadline).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_invalidation_raises_the_counter_its_known_secret_chooses() {
        let generations = Generations::new(Layout::Single);
        let layout = Layout::Single;
        // A glob, a tag, a namespace: the wide counter, no secret.
        assert_eq!(
            generations.single_counter("ns", None),
            (WIDE_GENERATION.to_owned(), None)
        );
        // No secret learnt yet: the unkeyed name (the script then says which is Redis's).
        let (unkeyed, none) = generations.single_counter("ns", Some("/a"));
        assert_eq!(none, None);
        assert_eq!(unkeyed, layout.generation_key("ns", "/a", None));
        // Learnt: the counter is the one that secret selects.
        let secret = Secret::random();
        generations.secrets.learn(0, secret.as_str());
        let (keyed, known) = generations.single_counter("ns", Some("/a"));
        assert_eq!(known.as_ref().map(Secret::as_str), Some(secret.as_str()));
        assert_eq!(keyed, layout.generation_key("ns", "/a", Some(&secret)));
    }

    #[test]
    fn a_fresh_epoch_is_never_none_and_fits_a_token() {
        for _ in 0..1000 {
            let epoch = new_epoch();
            assert!(epoch != 0 && epoch <= EPOCH_MASK, "{epoch}");
        }
    }

    #[test]
    fn only_numbers_this_crate_writes_are_read() {
        assert_eq!(own_number(Some("42")), Some(42));
        assert_eq!(own_number(Some("")), None);
        assert_eq!(own_number(Some("-1")), None);
        assert_eq!(own_number(Some("1234567890123456")), None, "16 digits");
        assert_eq!(own_number(None), None);
    }
}
