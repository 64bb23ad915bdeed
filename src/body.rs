//! [`ResponseBody`]: a hit's stored bytes, a miss being recorded, or a body passed through.
//!
//! A recorded miss streams every frame to the client as it arrives and keeps a copy on the
//! side, up to the size cap; nothing is buffered ahead of the client. Past the cap, or when
//! trailers appear, the copy is dropped and the body carries on as a plain pass-through.
//! At the end of the stream the entry is handed to the store on a spawned task, so the
//! write never delays or fails the response.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::coalesce::{Leader, Outcome};
use crate::entry::{Entry, Vary};
use crate::handle::{CacheHandle, Ticket};

pin_project! {
    /// The body of every response the cache layer returns.
    /// See the [crate docs](crate) for an example.
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Cached { data: Option<Bytes> },
        Passthrough { #[pin] inner: B },
        Recording { #[pin] inner: B, recorder: Option<Recorder> },
    }
}

/// Everything needed to store a miss once its body has been seen in full.
pub(crate) struct Recorder {
    pub(crate) handle: CacheHandle,
    pub(crate) logical: String,
    pub(crate) variant: crate::key::Variant,
    pub(crate) ticket: Ticket,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) ttl: std::time::Duration,
    /// Stale-while-revalidate and stale-if-error windows.
    pub(crate) stale: (std::time::Duration, std::time::Duration),
    /// Give the entry a strong `ETag` (hash of the body) when it has none.
    pub(crate) etag: bool,
    pub(crate) tags: Vec<String>,
    pub(crate) vary: Vary,
    pub(crate) limit: usize,
    pub(crate) leader: Option<Leader>,
    pub(crate) buffer: BytesMut,
}

impl Recorder {
    /// Keep a copy of `data`; false once the copy would exceed the cap.
    fn record(&mut self, data: &Bytes) -> bool {
        if self.buffer.len() + data.len() > self.limit {
            return false;
        }
        self.buffer.extend_from_slice(data);
        true
    }

    fn give_up(self) {
        if let Some(leader) = self.leader {
            leader.finish(Outcome::Uncacheable);
        }
    }

    /// The body ended: store the entry off the response path.
    fn finish(self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let body = crate::entry::compact(self.buffer);
        let mut headers = self.headers;
        // Stored once, so hits need not format it.
        if self.status != StatusCode::NO_CONTENT
            && !headers.contains_key(http::header::CONTENT_LENGTH)
        {
            headers.insert(http::header::CONTENT_LENGTH, body.len().into());
        }
        if self.etag && !headers.contains_key(http::header::ETAG) {
            let tag = format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(&body));
            headers.insert(
                http::header::ETAG,
                http::HeaderValue::try_from(tag).expect("hex is a valid header value"),
            );
        }
        let entry = Entry::new(self.status, headers, body, self.ttl)
            .with_stale(self.stale.0, self.stale.1)
            .with_tags(self.tags)
            .with_vary(self.vary)
            .with_identity(self.variant.identity.clone());
        let (handle, logical, variant, ticket, leader) = (
            self.handle,
            self.logical,
            self.variant,
            self.ticket,
            self.leader,
        );
        runtime.spawn(async move {
            let stored = handle.commit(&logical, variant.hash, ticket, entry).await;
            if let Some(leader) = leader {
                leader.finish(if stored {
                    Outcome::Stored
                } else {
                    Outcome::Uncacheable
                });
            }
        });
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn cached(data: Option<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Cached { data },
        }
    }

    pub(crate) fn passthrough(inner: B) -> Self {
        ResponseBody {
            kind: Kind::Passthrough { inner },
        }
    }

    pub(crate) fn recording(inner: B, recorder: Recorder) -> Self
    where
        B: Body,
    {
        // An empty body may never be polled: store it now.
        if inner.is_end_stream() {
            recorder.finish();
            return Self::passthrough(inner);
        }
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
            KindProj::Cached { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Passthrough { inner } => inner.poll_frame(cx),
            KindProj::Recording {
                mut inner,
                recorder,
            } => {
                let frame = ready!(inner.as_mut().poll_frame(cx));
                match &frame {
                    None => {
                        if let Some(r) = recorder.take() {
                            r.finish();
                        }
                    }
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let fits = recorder.as_mut().is_some_and(|r| r.record(data));
                            if !fits {
                                if let Some(r) = recorder.take() {
                                    r.give_up();
                                }
                            } else if inner.is_end_stream() {
                                // Servers stop polling once the body says it is done.
                                if let Some(r) = recorder.take() {
                                    r.finish();
                                }
                            }
                        } else if let Some(r) = recorder.take() {
                            // Trailers are not stored: such responses pass through.
                            r.give_up();
                        }
                    }
                    // An error ends the stream: the leader guard's drop releases followers.
                    Some(Err(_)) => drop(recorder.take()),
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Cached { data } => data.is_none(),
            Kind::Passthrough { inner } | Kind::Recording { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Cached { data } => {
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
