//! [`CacheBody`]: a hit's stored bytes (and trailers), a shared fill, or a body passed
//! through.
//!
//! A storable miss is read by a fill task at the origin's pace (see the `fill` module);
//! the leader's client and every request waiting on the same key read that fill, each at
//! its own pace. Responses that cannot be stored pass through untouched, frame by frame.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::engine::fill::FillBody;

/// The error of a [`CacheBody`]: the inner body's, or that of a shared fill (the
/// origin's body failed, or this client read so slowly that it held others up).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project! {
    /// The body of every response the cache layers return.
    /// See the [crate docs](crate) for an example.
    pub struct CacheBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Passthrough { #[pin] inner: B },
        Fill { #[pin] fill: FillBody },
    }
}

impl<B> CacheBody<B> {
    /// A stored body; `None` (or empty) sends no data frame, as for `HEAD` and `304`.
    pub(crate) fn cached(data: Option<Bytes>, trailers: Option<HeaderMap>) -> Self {
        CacheBody {
            kind: Kind::Cached {
                data: data.filter(|d| !d.is_empty()),
                trailers,
            },
        }
    }

    pub(crate) fn passthrough(inner: B) -> Self {
        CacheBody {
            kind: Kind::Passthrough { inner },
        }
    }

    pub(crate) fn fill(fill: FillBody) -> Self {
        CacheBody {
            kind: Kind::Fill { fill },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Cached { data, trailers } => Poll::Ready(match data.take() {
                Some(data) => Some(Ok(Frame::data(data))),
                None => trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            KindProj::Passthrough { inner } => inner.poll_frame(cx).map_err(Into::into),
            KindProj::Fill { fill } => fill.poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Passthrough { inner } => inner.is_end_stream(),
            Kind::Fill { fill } => fill.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Passthrough { inner } => inner.size_hint(),
            Kind::Fill { fill } => fill.size_hint(),
        }
    }
}

impl<B> std::fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Cached { .. } => "cached",
            Kind::Passthrough { .. } => "passthrough",
            Kind::Fill { .. } => "fill",
        };
        f.debug_struct("CacheBody").field("kind", &kind).finish()
    }
}
