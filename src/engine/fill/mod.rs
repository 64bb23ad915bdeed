//! A fill: one origin response, read at the origin's pace and shared as it arrives.
//!
//! The leader of a miss hands the origin's body to a task that reads it independently of
//! any client, appending each frame to the fill. The leader's client and every request
//! waiting on the same key read the fill at their own pace: a client that stops reading
//! holds up nobody (Varnish and Bunny stream a fill to waiting clients the same way).
//! When the body ends, the recorded bytes (and trailers, if any) become the stored entry,
//! written before the readers see the end where the store writes at once (memory): a
//! client that asks again the moment its answer ends finds the entry.
//!
//! Recording is bounded twice: by the policy's `max_body_size` for one fill, and by the
//! handle's fill budget for all fills in flight ([`Budget`]). Past either bound the fill
//! stops recording: nobody new joins it, the bytes every reader has read are dropped, and
//! the task reads the origin only as fast as the readers keep within [`WINDOW`] of it (or
//! within one frame, while all fills together hold their budget). A fill gives its bytes
//! back to the budget when the origin's body ends, whoever still reads it: a recorded
//! body's frames then become slices of the stored body (held once, not twice), and a
//! client that never reads holds only its own response, never the cache's budget. If
//! one reader lags while another waits for data for longer than the stall limit, the
//! laggard is cut off (its body ends with an error) rather than holding the other up.
//!
//! ```text
//!  origin body ──► fill task ──► Fill { frames, end } ◄── reader (leader's client)
//!                       │                            ◄── reader (follower) …
//!                       └─ at the end, if still recording: commit the entry
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, SizeHint};

mod budget;
mod reader;

pub(crate) use budget::Budget;
pub(crate) use reader::FillBody;

/// Bytes a fill that stopped recording keeps ahead of its slowest reader.
pub(crate) const WINDOW: usize = 256 << 10;

/// The error a reader of a fill sees when the origin's body failed, or when it was cut off
/// for lagging while others waited.
#[derive(Debug, Clone)]
pub(crate) struct FillError(Arc<str>);

impl std::fmt::Display for FillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FillError {}

/// What the head of a shared response says, for requests that join the fill.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    /// The client-visible headers (tags stripped), without the cache's own.
    pub(crate) headers: HeaderMap,
    pub(crate) vary: crate::entry::Vary,
    pub(crate) size_hint: SizeHint,
}

/// One origin response being read and shared. See the module docs.
#[derive(Debug)]
pub(crate) struct Fill {
    pub(crate) head: Head,
    state: Mutex<State>,
    budget: Arc<Budget>,
    limit: usize,
    stall: Duration,
}

#[derive(Debug)]
struct State {
    frames: VecDeque<Piece>,
    /// Stream index of `frames[0]`.
    base: usize,
    /// Data bytes in `frames`; counted in the budget (as recording while `recording`, as
    /// passing after) until the fill is `settled`.
    held: usize,
    /// The origin's body ended and the budget has its bytes back.
    settled: bool,
    /// Data bytes recorded so far (while recording, every byte of the body).
    recorded: usize,
    recording: bool,
    end: Option<Result<(), FillError>>,
    /// Each reader's next stream index; `None`: the slot is free.
    readers: Vec<Option<Reader>>,
    reader_wakers: Vec<Waker>,
    writer: Option<Waker>,
}

#[derive(Debug, Clone, Copy)]
struct Reader {
    next: usize,
    cut: bool,
}

#[derive(Debug, Clone)]
enum Piece {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Piece {
    fn len(&self) -> usize {
        match self {
            Piece::Data(d) => d.len(),
            Piece::Trailers(_) => 0,
        }
    }
}

impl Fill {
    pub(crate) fn new(head: Head, budget: Arc<Budget>, limit: usize, stall: Duration) -> Arc<Fill> {
        Arc::new(Fill {
            head,
            state: Mutex::new(State {
                frames: VecDeque::new(),
                base: 0,
                held: 0,
                settled: false,
                recorded: 0,
                recording: true,
                end: None,
                readers: Vec::new(),
                reader_wakers: Vec::new(),
                writer: None,
            }),
            budget,
            limit,
            stall,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A body reading the fill from its start; `None` once it dropped bytes (it stopped
    /// recording), so a late joiner fetches alone instead.
    pub(crate) fn reader(self: &Arc<Self>) -> Option<FillBody> {
        let mut state = self.lock();
        if state.base != 0 {
            return None;
        }
        let reader = Reader {
            next: 0,
            cut: false,
        };
        let id = match state.readers.iter().position(Option::is_none) {
            Some(free) => {
                state.readers[free] = Some(reader);
                free
            }
            None => {
                state.readers.push(Some(reader));
                state.readers.len() - 1
            }
        };
        Some(FillBody {
            fill: self.clone(),
            id,
            delivered: 0,
        })
    }

    /// Whether the fill is still recording the whole body for the store.
    #[cfg(test)]
    pub(crate) fn is_recording(&self) -> bool {
        self.lock().recording
    }

    /// Append a data frame; returns whether the fill is still recording.
    fn push_data(&self, data: Bytes) -> bool {
        let mut state = self.lock();
        let len = data.len();
        let fits =
            state.recording && state.recorded + len <= self.limit && self.budget.try_record(len);
        if fits {
            state.recorded += len;
        } else {
            self.stop(&mut state);
            // Unrecorded bytes are counted while held: they pace the fill.
            self.budget.hold_passing(len);
        }
        state.held += len;
        state.frames.push_back(Piece::Data(data));
        wake_readers(&mut state);
        state.recording
    }

    /// Stop recording: what the fill holds now only waits for its readers.
    fn stop(&self, state: &mut State) {
        if state.recording {
            state.recording = false;
            if !state.settled {
                self.budget.release_recorded(state.held);
                self.budget.hold_passing(state.held);
            }
        }
    }

    fn stop_recording(&self) {
        let mut state = self.lock();
        self.stop(&mut state);
    }

    fn push_trailers(&self, trailers: HeaderMap) {
        let mut state = self.lock();
        state.frames.push_back(Piece::Trailers(trailers));
        wake_readers(&mut state);
    }

    fn finish(&self, end: Result<(), FillError>) {
        let mut state = self.lock();
        if end.is_err() {
            self.stop(&mut state);
        }
        settle(&self.budget, &mut state);
        state.end = Some(end);
        wake_readers(&mut state);
    }

    /// The recorded body, when the fill kept all of it (asked once the origin's body ended).
    /// The frames become slices of it, so readers that are behind share the stored copy.
    fn recorded_body(&self) -> Option<Bytes> {
        let mut state = self.lock();
        if !state.recording || state.base != 0 {
            return None;
        }
        let mut body = BytesMut::with_capacity(state.recorded);
        for piece in &state.frames {
            if let Piece::Data(data) = piece {
                body.extend_from_slice(data);
            }
        }
        let body = body.freeze();
        let mut offset = 0;
        for piece in &mut state.frames {
            if let Piece::Data(data) = piece {
                let end = offset + data.len();
                *data = body.slice(offset..end);
                offset = end;
            }
        }
        Some(body)
    }

    /// Drop what every reader has read; whether any reader is left.
    fn prune(&self, state: &mut State) -> bool {
        let lowest = state
            .readers
            .iter()
            .flatten()
            .filter(|r| !r.cut)
            .map(|r| r.next)
            .min();
        let Some(lowest) = lowest else {
            return false;
        };
        while state.base < lowest {
            let Some(piece) = state.frames.pop_front() else {
                break;
            };
            state.base += 1;
            state.held -= piece.len();
            if !state.settled {
                self.budget.release_passing(piece.len());
            }
        }
        true
    }

    /// Wait until the fill may read more of the origin: always while recording; else when
    /// the readers keep within [`WINDOW`]. `false`: no reader is left.
    ///
    /// Everything is decided under the lock in which the writer's waker is registered, so
    /// no reader's progress is missed; the stall timer runs only while someone waits at the
    /// head behind a laggard.
    async fn room(&self) -> bool {
        let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
        std::future::poll_fn(|cx| loop {
            let mut state = self.lock();
            if state.recording {
                return Poll::Ready(true);
            }
            if !self.prune(&mut state) {
                return Poll::Ready(false);
            }
            // Ahead of the slowest reader by at most the window, and by nothing once all
            // fills together hold their budget: then a fill is paced by its reader, as a
            // plain pass-through would be, however many non-reading clients there are.
            let budget_left = self.budget.has_room();
            if state.held == 0 || (state.held <= WINDOW && budget_left) {
                return Poll::Ready(true);
            }
            let head = state.base + state.frames.len();
            let waiting = state
                .readers
                .iter()
                .flatten()
                .any(|r| !r.cut && r.next >= head);
            if !waiting {
                stall = None;
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let timer = stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(self.stall)));
            if timer.as_mut().poll(cx).is_pending() {
                state.writer = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // Someone waited at the head for the whole stall limit behind a laggard.
            stall = None;
            let base = state.base;
            for reader in state.readers.iter_mut().flatten() {
                if reader.next <= base {
                    reader.cut = true;
                }
            }
            tracing::debug!("a reader of a shared fill lagged while others waited; cut off");
            wake_readers(&mut state);
        })
        .await
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        settle(&self.budget, state);
    }
}

/// The origin's body ended (or nobody holds the fill): give the budget back, whoever still
/// reads.
fn settle(budget: &Budget, state: &mut State) {
    if state.settled {
        return;
    }
    state.settled = true;
    if state.recording {
        budget.release_recorded(state.held);
    } else {
        budget.release_passing(state.held);
    }
}

fn wake_readers(state: &mut State) {
    for waker in state.reader_wakers.drain(..) {
        waker.wake();
    }
}

/// What happens to a fill's recorded body at its end.
pub(crate) trait Commit: Send + 'static {
    /// The body ended and was recorded whole (with its trailers, if it had any): store it.
    fn store(
        self,
        body: Bytes,
        trailers: Option<HeaderMap>,
    ) -> impl std::future::Future<Output = ()> + Send;
    /// The fill stopped recording (too large, an origin error, every reader gone).
    fn abandon(self);
    /// The fill stopped recording before its end: new requests need not wait for it.
    fn release_followers(&mut self);
    /// Whether the answer may still be storable after this data frame (a gRPC answer stops
    /// being one at the start of a second message).
    fn record(&mut self, _data: &[u8]) -> bool {
        true
    }
}

/// How the origin's body ended.
enum End {
    /// Its last frame arrived, trailers or not.
    Complete(Option<HeaderMap>),
    Failed(FillError),
    /// Every reader left a fill that no longer records.
    Deserted,
}

/// Read `body` into `fill` at the origin's pace, then commit.
pub(crate) async fn run<B, C>(fill: Arc<Fill>, body: B, mut commit: C)
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    C: Commit,
{
    let mut body = std::pin::pin!(body);
    let mut released = false;
    let end = loop {
        if !fill.room().await {
            tracing::debug!("every reader of an unrecorded fill left; origin body dropped");
            break End::Deserted;
        }
        let frame = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await;
        match frame {
            None => break End::Complete(None),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !commit.record(&data) {
                        fill.stop_recording();
                    }
                    if !fill.push_data(data) && !released {
                        released = true;
                        commit.release_followers();
                    }
                }
                // Trailers are the last frame of a body.
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => break End::Complete(Some(trailers)),
                    Err(_) => continue,
                },
            },
            Some(Err(error)) => {
                let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                tracing::debug!(%error, "origin body failed during a fill");
                break End::Failed(FillError(format!("origin body failed: {error}").into()));
            }
        }
    };
    let trailers = match end {
        End::Complete(trailers) => trailers,
        End::Failed(error) => {
            fill.finish(Err(error));
            return commit.abandon();
        }
        End::Deserted => return commit.abandon(),
    };
    let Some(recorded) = fill.recorded_body() else {
        commit.abandon();
        return fill.end_with(trailers);
    };
    // Ends the readers' streams however the commit goes: should it panic, the task unwinds
    // and the guard's drop still ends them (each has the whole body).
    let mut end = EndGuard {
        fill: &fill,
        trailers: Some(trailers.clone()),
    };
    let mut store = std::pin::pin!(commit.store(recorded, trailers));
    // The first poll writes to a local store; only then do the readers see the end.
    let pending =
        std::future::poll_fn(|cx| Poll::Ready(store.as_mut().poll(cx).is_pending())).await;
    end.end();
    if pending {
        store.await;
    }
}

/// Ends a complete fill's readers once, at [`end`](Self::end) or when dropped.
struct EndGuard<'a> {
    fill: &'a Fill,
    trailers: Option<Option<HeaderMap>>,
}

impl EndGuard<'_> {
    fn end(&mut self) {
        if let Some(trailers) = self.trailers.take() {
            self.fill.end_with(trailers);
        }
    }
}

impl Drop for EndGuard<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

impl Fill {
    /// The body is complete: hand on its trailers, if any, and end every reader's stream.
    fn end_with(&self, trailers: Option<HeaderMap>) {
        if let Some(trailers) = trailers {
            self.push_trailers(trailers);
        }
        self.finish(Ok(()));
    }
}

#[cfg(test)]
mod tests;
