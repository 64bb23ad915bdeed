//! [`ResponseBody`] of the gRPC cache: a hit replayed (message, then trailers), a miss being
//! recorded, or a body passed through.
//!
//! A recorded miss streams every frame to the client as it arrives and keeps a copy of the
//! message on the side, up to the size cap. The entry is stored when the trailers arrive
//! and say `grpc-status: 0` over exactly one message; it is written before the trailers
//! are handed on where the store allows (memory), so a client that calls again after its
//! answer finds it.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::request::{exceeds_one_message, is_one_message};
use crate::coalesce::{Leader, Outcome};
use crate::entry::Entry;
use crate::handle::{CacheHandle, Ticket};
use crate::key::Variant;

pin_project! {
    /// The body of every response [`GrpcCacheService`](super::GrpcCacheService) returns.
    /// See the [module docs](super) for an example.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Passthrough { #[pin] inner: B },
        Recording { #[pin] inner: B, recorder: Option<Recorder> },
    }
}

/// Everything needed to store a miss once its trailers have been seen.
pub(crate) struct Recorder {
    pub(crate) handle: CacheHandle,
    pub(crate) logical: String,
    pub(crate) variant: Variant,
    pub(crate) ticket: Ticket,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) ttl: Duration,
    pub(crate) limit: usize,
    pub(crate) leader: Option<Leader>,
    pub(crate) buffer: BytesMut,
}

impl Recorder {
    /// Keep a copy of `data`; false once the copy would exceed the cap, or holds more than
    /// one message (a stream: its concurrent twins need not wait for its end).
    fn record(&mut self, data: &Bytes) -> bool {
        if self.buffer.len() + data.len() > self.limit {
            return false;
        }
        self.buffer.extend_from_slice(data);
        !exceeds_one_message(&self.buffer)
    }

    /// Not storable: followers go to the origin, and so do the next misses for a while.
    fn give_up(self) {
        self.handle
            .set_hit_for_miss(&self.logical, &self.variant.identity, true);
        if let Some(leader) = self.leader {
            leader.finish(Outcome::Uncacheable);
        }
    }

    /// The trailers arrived: store the call if it succeeded with one message.
    fn finish(self, trailers: &HeaderMap, cx: &mut Context<'_>) {
        let ok = trailers.get(super::GRPC_STATUS).is_some_and(|s| s == "0");
        if !ok || !is_one_message(&self.buffer) {
            return self.give_up();
        }
        self.handle
            .set_hit_for_miss(&self.logical, &self.variant.identity, false);
        let entry = Entry::new(
            self.status,
            self.headers,
            crate::entry::compact(self.buffer),
            self.ttl,
        )
        .with_trailers(trailers.clone())
        .with_identity(self.variant.identity.clone());
        let (handle, logical, variant, ticket, leader) = (
            self.handle,
            self.logical,
            self.variant,
            self.ticket,
            self.leader,
        );
        let mut write = Box::pin(async move {
            let stored = handle.commit(&logical, variant.hash, ticket, entry).await;
            if let Some(leader) = leader {
                leader.finish(if stored {
                    Outcome::Stored
                } else {
                    Outcome::Uncacheable
                });
            }
        });
        // A local store writes on the first poll; a remote one finishes on its own task,
        // off the response path.
        if write.as_mut().poll(cx).is_pending() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(write);
            }
        }
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn cached(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        ResponseBody {
            kind: Kind::Cached {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    pub(crate) fn passthrough(inner: B) -> Self {
        ResponseBody {
            kind: Kind::Passthrough { inner },
        }
    }

    pub(crate) fn recording(inner: B, recorder: Recorder) -> Self {
        ResponseBody {
            kind: Kind::Recording {
                inner,
                recorder: Some(recorder),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Cached { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Recording { inner, recorder } => {
                let frame = ready!(inner.poll_frame(cx));
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            if !recorder.as_mut().is_some_and(|r| r.record(data)) {
                                if let Some(r) = recorder.take() {
                                    r.give_up();
                                }
                            }
                        } else if let (Some(trailers), Some(r)) =
                            (frame.trailers_ref(), recorder.take())
                        {
                            r.finish(trailers, cx);
                        }
                    }
                    // A gRPC answer without trailers is broken: never stored.
                    None => {
                        if let Some(r) = recorder.take() {
                            r.give_up();
                        }
                    }
                    // The leader guard's drop releases followers.
                    Some(Err(_)) => drop(recorder.take()),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passthrough { inner } | Kind::Recording { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Passthrough { inner } | Kind::Recording { inner, .. } => inner.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Cached { .. } => "cached",
            Kind::Passthrough { .. } => "passthrough",
            Kind::Recording { .. } => "recording",
        };
        f.debug_struct("ResponseBody").field("kind", &kind).finish()
    }
}
