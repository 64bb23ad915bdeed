//! [`Lane`]: which of a store's three connections a call uses. Its own file because both
//! ways of reaching Redis need it: the connection (one Redis, a cluster) and the Sentinel
//! link, which keeps one connection per lane to the primary it found.

/// Which connection a call uses: invalidations have their own, so that their `WAIT` for
/// replicas (see `durable.rs`), which blocks the connection it is sent on, never holds up
/// a request; so do the store's own tasks, which run on its thread
/// (`store/background.rs`): a connection's driver runs on the runtime of the call that
/// opens it, and requests answered through a connection driven from another thread would
/// wait for two hops between threads each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Requests.
    Data,
    /// Invalidations and their `WAIT`.
    Invalidations,
    /// The store's own tasks: the channel's catch-up and acknowledgements, the near
    /// cache's heartbeat, the `maxmemory` check, the withdrawal of a dropped store's lease.
    Background,
}

impl Lane {
    /// Its place in a table of one value per lane.
    pub(crate) fn index(self) -> usize {
        match self {
            Lane::Data => 0,
            Lane::Invalidations => 1,
            Lane::Background => 2,
        }
    }
}
