//! What both adapters (HTTP and gRPC) share from a miss to its stored entry: the ready
//! inner service, the flight's turn, and the fill that reads the origin's answer and hands
//! it to the committer at its end.
//!
//! An adapter decides what a request's key is, whether an answer may be stored and how a
//! recorded answer becomes an [`Entry`](crate::Entry) (its [`Commit`]); everything else —
//! lookup, single flight, the bans checked at commit, the fill budget, hit-for-miss —
//! happens here and in the [`CacheHandle`].

use std::sync::Arc;

use bytes::Bytes;
use http_body::Body;

use crate::body::BoxError;
use crate::coalesce::{Leader, Outcome};
use crate::fill::{self, Commit, Fill, FillBody, Head};
use crate::handle::{CacheHandle, Ticket};
use crate::headers::Forward;
use crate::key::Variant;
use crate::store::Backend;

/// `handle`, `get_ref`, `get_mut` and `into_inner` for a service over `inner` and a
/// `config` holding the handle (tower-http's accessor set).
macro_rules! inner_service_accessors {
    () => {
        /// The handle this service caches into.
        pub fn handle(&self) -> &crate::CacheHandle {
            &self.config.handle
        }

        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// The wrapped service, unwrapped.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
pub(crate) use inner_service_accessors;

/// The associated types and `poll_ready` every cache service shares: the inner service's
/// readiness and error, the answer's body wrapped in [`CacheBody`](crate::CacheBody).
macro_rules! cache_service_types {
    ($body:ty) => {
        type Response = http::Response<crate::CacheBody<$body>>;
        type Error = S::Error;
        type Future = crate::ResponseFuture<S::Future, $body, S::Error>;

        fn poll_ready(
            &mut self,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            self.inner.poll_ready(cx)
        }
    };
}
pub(crate) use cache_service_types;

/// The ready service goes into the future; the service keeps a fresh clone (tower's rule:
/// what `poll_ready` readied is what `call` uses).
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// Whether answers are served from the memory fallback (`Cache-Status` says so).
pub(crate) fn falling_back(handle: &CacheHandle) -> bool {
    handle.backend() == Backend::FallingBack
}

/// A miss on its way to the origin: what its answer will be stored under.
pub(crate) struct Miss {
    pub(crate) logical: String,
    pub(crate) variant: Variant,
    pub(crate) ticket: Ticket,
    pub(crate) leader: Option<Leader>,
    pub(crate) forward: Forward,
}

impl Miss {
    /// The answer cannot be stored: followers go to the origin at once, and when
    /// `remember`, so do the key's next misses for a while (hit-for-miss).
    pub(crate) fn give_up(self, handle: &CacheHandle, remember: bool) {
        if remember {
            handle.set_hit_for_miss(&self.logical, &self.variant.identity, true);
        }
        release(self.leader);
    }
}

/// Followers of a leader whose answer will not be stored go to the origin at once.
pub(crate) fn release(leader: Option<Leader>) {
    if let Some(leader) = leader {
        leader.finish(Outcome::Uncacheable);
    }
}

/// Tell the flight's followers whether the entry is stored.
pub(crate) fn finish(leader: Option<Leader>, stored: bool) {
    if let Some(leader) = leader {
        leader.finish(if stored {
            Outcome::Stored
        } else {
            Outcome::Uncacheable
        });
    }
}

/// A fill for the origin's answer, recorded within `limit` bytes, shared with the followers
/// of `leader`'s flight. Without a runtime to read it on, `None`.
pub(crate) fn new_fill(
    handle: &CacheHandle,
    head: Head,
    limit: usize,
    leader: Option<&Leader>,
) -> Option<Arc<Fill>> {
    tokio::runtime::Handle::try_current().ok()?;
    let fill = Fill::new(head, handle.fill_budget(), limit, handle.coalesce_timeout());
    if let Some(leader) = leader {
        leader.share(fill.clone());
    }
    Some(fill)
}

/// Read `body` into `fill` on a task of its own and hand the recording to `commit` at its
/// end; the leader's client reads the returned body.
pub(crate) fn run_fill<B, C>(fill: Arc<Fill>, body: B, commit: C) -> FillBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    C: Commit,
{
    let reader = fill.reader().expect("a new fill has dropped nothing");
    tokio::spawn(fill::run(fill, body, commit));
    reader
}
