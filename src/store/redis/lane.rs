//! [`Lane`]: which of a store's two connections a call uses. Its own file because both
//! ways of reaching Redis need it: the connection (one Redis, a cluster) and the Sentinel
//! link, which keeps one connection per lane to the primary it found.

/// Which connection a call uses: invalidations have their own, so that their `WAIT` for
/// replicas (see `durable.rs`), which blocks the connection it is sent on, never holds up
/// a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Requests, the channel's catch-up, heartbeats.
    Data,
    /// Invalidations and their `WAIT`.
    Invalidations,
}
