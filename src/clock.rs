//! Wall-clock milliseconds that follow Tokio's clock.
//!
//! Entries carry their storage time as Unix milliseconds (another process reading them from
//! Redis must understand it), yet tests drive TTLs with `tokio::time::pause` and `advance`.
//! So "now" is the wall clock read once, plus the time Tokio's clock has moved since.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(u64, std::time::Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch, advancing with Tokio's (possibly paused) clock.
pub(crate) fn now_millis() -> u64 {
    let (wall_ms, at) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (wall, tokio::time::Instant::now().into_std())
    });
    let since = tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(at);
    // Whole milliseconds without `as_millis`'s 128-bit arithmetic.
    wall_ms + since.as_secs() * 1000 + u64::from(since.subsec_millis())
}
