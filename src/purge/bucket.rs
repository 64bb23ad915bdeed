//! A token bucket: how many purge requests the endpoint takes, whoever sends them.
//!
//! One bucket serves every clone of a [`PurgeLayer`](crate::PurgeLayer) (tower clones a
//! layer's service per connection, so a per-service bucket would limit nothing).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// `capacity` requests at once, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct Bucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    /// `requests` per `per`, all of them available at once.
    pub(crate) fn new(requests: u32, per: Duration) -> Bucket {
        assert!(
            requests > 0,
            "a purge rate limit needs at least one request"
        );
        assert!(!per.is_zero(), "a purge rate limit needs a non-zero period");
        let capacity = f64::from(requests);
        Bucket {
            capacity,
            per_second: capacity / per.as_secs_f64(),
            state: Mutex::new(State {
                tokens: capacity,
                updated: Instant::now(),
            }),
        }
    }

    /// Take one token, or say how long until one is there.
    pub(crate) fn take(&self) -> Result<(), Duration> {
        let now = Instant::now();
        // A poisoned lock only means another request panicked while holding two floats.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.per_second).min(self.capacity);
        state.updated = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            (1.0 - state.tokens) / self.per_second,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_served_then_one_token_per_interval() {
        let bucket = Bucket::new(3, Duration::from_secs(3));
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        let wait = bucket.take().unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(bucket.take().is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(bucket.take().is_ok());
        assert!(bucket.take().is_err());
        // Idle time refills no more than the capacity.
        tokio::time::advance(Duration::from_secs(3600)).await;
        for _ in 0..3 {
            assert!(bucket.take().is_ok());
        }
        assert!(bucket.take().is_err());
    }
}
