//! Wall-clock milliseconds that follow Tokio's clock.
//!
//! Entries carry their storage time as Unix milliseconds (another process reading them from
//! Redis must understand it), yet tests drive TTLs with `tokio::time::pause` and `advance`.
//! So "now" is the wall clock read once, plus the time Tokio's clock has moved since.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static ANCHOR: OnceLock<(u64, std::time::Instant)> = OnceLock::new();

/// Milliseconds since the Unix epoch, advancing with Tokio's (possibly paused) clock.
#[inline]
pub(crate) fn now_millis() -> u64 {
    let (wall_ms, at) = *ANCHOR.get_or_init(|| {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (wall, tokio::time::Instant::now().into_std())
    });
    let now = tokio::time::Instant::now().into_std();
    // Whole milliseconds without `as_millis`'s 128-bit arithmetic.
    let millis = |d: std::time::Duration| d.as_secs() * 1000 + u64::from(d.subsec_millis());
    match now.checked_duration_since(at) {
        Some(since) => wall_ms + millis(since),
        // A paused runtime's clock may start before the anchor was read (another thread
        // read it first): count back, so its instants stay apart.
        None => wall_ms.saturating_sub(millis(at - now)),
    }
}
