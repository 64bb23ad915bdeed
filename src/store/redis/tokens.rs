//! Write tokens: what this process knows of Redis's invalidation state, as the token a
//! fetch carries to its write.
//!
//! A token is the epoch of the data set (one Redis; 0 in a cluster) and the generation, in
//! one `u64`. [`Tokens`] owns the token this process holds and the bookkeeping that keeps
//! it honest: only what Redis said is adopted, answers are adopted in the order they were
//! asked, within one epoch it never goes back, and a generation another process merely
//! claims (in a channel message) raises a separate floor instead of the token. It is its
//! own part because these rules are pure arithmetic on atomics: they are tested here
//! without a Redis, and the store's Redis calls (`generation.rs`) only feed it answers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

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

/// The write token of one store and what settles it.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    /// The write token this process has: on one Redis the epoch and the generation as
    /// Redis last told it, in a cluster the highest generation Redis told. Only what Redis
    /// said: never above the counter an invalidation draws from.
    current: AtomicU64,
    /// A token one step past `current`, set when another process's message claims a
    /// higher generation and cleared when Redis answers: writes the fallback checks locally
    /// (see [`Tokens::refuses_locally`]) must carry at least this. 0 when none.
    heard_floor: AtomicU64,
    /// Questions asked of one Redis about its epoch and generation, and the latest whose
    /// answer was adopted (see [`Tokens::set`]).
    asked: AtomicU64,
    adopted: Mutex<u64>,
}

impl Tokens {
    /// The token a write fetched from now on carries.
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }

    /// A question to Redis about its epoch and generation is about to be sent: its number.
    pub(crate) fn asking(&self) -> u64 {
        self.asked.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// One Redis: adopt the answer to question `asked`, unless the answer to a question
    /// asked later was adopted already. Answers are adopted in the order their tasks run,
    /// not the order Redis answered them: an answer from before an invalidation's bump, or
    /// from before Redis named its data set, adopted after a newer one, would otherwise take
    /// this process back (its next writes then refuse themselves, or its flights look older
    /// than they are). A newer answer's epoch is taken as it is (a new one means Redis
    /// restarted empty); within one epoch the token never goes back.
    pub(crate) fn set(&self, asked: u64, epoch: u64, generation: u64) {
        let mut adopted = self.adopted.lock().unwrap_or_else(|e| e.into_inner());
        if asked < *adopted {
            return;
        }
        *adopted = asked;
        let told = token(epoch, generation);
        let _ = self
            .current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                let same_epoch = token_epoch(now) == token_epoch(told);
                Some(if same_epoch { now.max(told) } else { told })
            });
    }

    /// A cluster: never go back.
    pub(crate) fn adopt(&self, generation: u64) {
        self.current
            .fetch_max(token(0, generation), Ordering::Relaxed);
    }

    /// Another process says it invalidated at `generation`. Not trusted (anyone who can
    /// `PUBLISH` can say anything): the token stays what Redis said, and until Redis is
    /// asked again the writes this process checks against its own knowledge must carry a
    /// token past the one it has. A claim of `u64::MAX` asks for one step, not the end.
    /// Returns whether the claim is news (then Redis should be asked).
    pub(crate) fn claim(&self, generation: u64) -> bool {
        let now = self.current();
        if generation <= token_generation(now) {
            return false;
        }
        let next = token(token_epoch(now), token_generation(now) + 1);
        self.heard_floor.fetch_max(next, Ordering::AcqRel);
        true
    }

    /// The floor claimed so far (to [`settle`](Self::settle) once Redis answered).
    pub(crate) fn claimed(&self) -> u64 {
        self.heard_floor.load(Ordering::Acquire)
    }

    /// Redis has answered since `claimed` was read: a true claim is in the token now, a
    /// false one is dropped. A newer claim stays.
    pub(crate) fn settle(&self, claimed: u64) {
        let _ = self
            .heard_floor
            .compare_exchange(claimed, 0, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Whether a write carrying `token` must be refused by this process's own knowledge
    /// (the fallback's memory writes): an invalidation was heard of since it was taken, or
    /// it names another data set.
    pub(crate) fn refuses_locally(&self, token: u64) -> bool {
        let now = self.current();
        let floor = self.claimed();
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
        let now = self.current();
        token_epoch(token) != token_epoch(now) || token_generation(token) < generation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_answer_adopted_late_never_takes_the_token_back() {
        let tokens = Tokens::default();
        let (first, second, third) = (tokens.asking(), tokens.asking(), tokens.asking());
        tokens.set(second, 7, 5);
        // Asked before: from before the bump, or before Redis named its data set.
        tokens.set(first, 7, 3);
        assert_eq!(tokens.current(), token(7, 5));
        tokens.set(first, 0, 0);
        assert_eq!(tokens.current(), token(7, 5));
        // Asked later, Redis restarted empty: its new epoch is the truth.
        tokens.set(third, 9, 1);
        assert_eq!(tokens.current(), token(9, 1));
    }

    #[test]
    fn within_one_epoch_a_later_answer_never_lowers_the_token() {
        let tokens = Tokens::default();
        tokens.set(tokens.asking(), 7, 9);
        tokens.set(tokens.asking(), 7, 4);
        assert_eq!(tokens.current(), token(7, 9));
    }

    #[test]
    fn a_cluster_token_only_rises() {
        let tokens = Tokens::default();
        tokens.adopt(8);
        tokens.adopt(3);
        assert_eq!(tokens.current(), token(0, 8));
    }

    #[test]
    fn a_claimed_generation_refuses_local_writes_but_leaves_the_token_alone() {
        let tokens = Tokens::default();
        tokens.set(tokens.asking(), 7, 5);
        assert!(!tokens.refuses_locally(token(7, 5)));
        assert!(!tokens.claim(5), "not news: Redis said as much");
        assert!(tokens.claim(u64::MAX));
        assert_eq!(tokens.current(), token(7, 5));
        assert!(tokens.refuses_locally(token(7, 5)), "a fetch in flight");
        assert!(!tokens.refuses_locally(token(7, 6)));
        // Redis answered: the claim is settled (dropped, here), a newer claim would stay.
        let claimed = tokens.claimed();
        tokens.settle(claimed);
        assert!(!tokens.refuses_locally(token(7, 5)));
        // Another data set's token is refused whatever its generation.
        assert!(tokens.refuses_locally(token(8, 99)));
    }

    #[test]
    fn a_claim_made_while_redis_was_asked_survives_the_answer() {
        let tokens = Tokens::default();
        tokens.set(tokens.asking(), 1, 1);
        tokens.claim(3);
        // Redis is asked; meanwhile another answer and a newer claim arrive.
        let claimed = tokens.claimed();
        tokens.set(tokens.asking(), 1, 5);
        assert!(tokens.claim(9));
        tokens.settle(claimed);
        assert!(tokens.refuses_locally(token(1, 5)), "the newer claim stays");
    }

    #[test]
    fn a_fetch_predates_an_invalidation_of_a_later_generation_or_another_data_set() {
        let tokens = Tokens::default();
        tokens.set(tokens.asking(), 3, 10);
        assert!(tokens.predates(token(3, 9), 10));
        assert!(!tokens.predates(token(3, 10), 10));
        assert!(!tokens.predates(token(3, 12), 10));
        assert!(tokens.predates(token(4, 12), 10));
    }

    #[test]
    fn a_token_keeps_epoch_and_generation_apart() {
        let t = token(0x00ab_cdef, 42);
        assert_eq!(token_epoch(t), 0x00ab_cdef);
        assert_eq!(token_generation(t), 42);
        // A generation past 40 bits saturates instead of spilling into the epoch.
        assert_eq!(token_epoch(token(1, u64::MAX)), 1);
    }
}
