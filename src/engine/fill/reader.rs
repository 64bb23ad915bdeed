//! [`FillBody`]: one request's reader of a fill, at its own pace.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{Fill, FillError, Head, Piece, Reader};

/// A request's view of a fill: the frames from the start, at this request's own pace.
#[derive(Debug)]
pub(crate) struct FillBody {
    pub(super) fill: Arc<Fill>,
    pub(super) id: usize,
    /// Data bytes handed to this reader, for its size hint.
    pub(super) delivered: u64,
}

impl FillBody {
    /// The head of the response this body belongs to.
    pub(crate) fn head(&self) -> &Head {
        &self.fill.head
    }
}

impl Body for FillBody {
    type Data = Bytes;
    type Error = FillError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, FillError>>> {
        let this = self.get_mut();
        let mut state = this.fill.lock();
        let Some(reader) = state.readers[this.id] else {
            return Poll::Ready(None);
        };
        if reader.cut {
            return Poll::Ready(Some(Err(FillError("cut off: read too slowly".into()))));
        }
        let index = reader.next - state.base;
        if let Some(piece) = state.frames.get(index).cloned() {
            state.readers[this.id] = Some(Reader {
                next: reader.next + 1,
                cut: false,
            });
            if let Some(writer) = state.writer.take() {
                writer.wake();
            }
            return Poll::Ready(Some(Ok(match piece {
                Piece::Data(data) => {
                    this.delivered += data.len() as u64;
                    Frame::data(data)
                }
                Piece::Trailers(trailers) => Frame::trailers(trailers),
            })));
        }
        match &state.end {
            Some(Ok(())) => Poll::Ready(None),
            Some(Err(error)) => Poll::Ready(Some(Err(error.clone()))),
            None => {
                state.reader_wakers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.fill.lock();
        match state.readers[self.id] {
            Some(reader) => {
                matches!(state.end, Some(Ok(()))) && reader.next >= state.base + state.frames.len()
            }
            None => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        let hint = self.fill.head.size_hint;
        match hint.exact() {
            Some(total) => SizeHint::with_exact(total.saturating_sub(self.delivered)),
            None => SizeHint::new(),
        }
    }
}

impl Drop for FillBody {
    fn drop(&mut self) {
        let mut state = self.fill.lock();
        state.readers[self.id] = None;
        if let Some(writer) = state.writer.take() {
            writer.wake();
        }
    }
}
