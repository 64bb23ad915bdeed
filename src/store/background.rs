//! [`Background`]: a thread of a store's own, with a single-threaded Tokio runtime, that
//! runs the tasks keeping the store alive for as long as it lives (a Redis store's
//! invalidation listener, near-cache heartbeat, `maxmemory` check and Sentinel watch; a
//! fallback store's probe).
//!
//! Tasks spawned on the runtime that builds the store die or stall with it, and that
//! runtime may go long before the store: an application builds the store in a short
//! `block_on` at startup and serves from another runtime, a test suite shares one store
//! between `#[tokio::test]`s (each with a runtime of its own). Without a word, the process
//! would stop hearing other processes' invalidations, its near cache's lease would no
//! longer be renewed, and a fallback store would never replay what it queued. On a thread
//! of its own they run whatever the application's runtimes do, and a store can be built
//! outside any runtime.
//!
//! One thread per store, not one for the whole process: dropping the runtime is what ends
//! a store's tasks (a listener waiting for a message that never comes would otherwise
//! hold its subscription open), and one store's slow listener never holds up another's.
//! The thread ends when the store is dropped: the store's drop signals it (without waiting
//! for it, since the last reference may go on that very thread), it runs the store's last
//! words for at most [`LAST_WORDS`], and drops its runtime, which cancels every task left.
//! A hit from memory or the near cache never touches it, and a request's Redis call does
//! not either: the tasks here call Redis on a connection of their own
//! (`Lane::Background` in `redis/lane.rs`), so the one requests use is opened, and
//! driven, on a request's runtime.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::instrument::WithSubscriber;

/// The longest the last words of a dropped store may take (a best-effort clean-up call).
pub(crate) const LAST_WORDS: Duration = Duration::from_secs(1);

/// What a dropped store still asks its thread to do before it ends.
type LastWords = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A store's own thread and runtime (see the module docs). Dropping it ends the thread.
pub(crate) struct Background {
    runtime: tokio::runtime::Handle,
    /// Told once: stop (after these last words, if any).
    stop: Option<oneshot::Sender<Option<LastWords>>>,
    /// The thread, for the tests that check it ends.
    #[cfg(test)]
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Background {
    /// Start a thread named `name` with a runtime of its own (timers and I/O enabled).
    pub(crate) fn start(name: &str) -> std::io::Result<Background> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<Option<LastWords>>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // The tasks run while this waits; a store dropped without a word (the
                // sender gone) stops it too.
                let last = runtime.block_on(async { stopped.await.ok().flatten() });
                if let Some(last) = last {
                    runtime.block_on(async {
                        let _ = tokio::time::timeout(LAST_WORDS, last).await;
                    });
                }
                // Dropping the runtime cancels every task still on it, and their
                // connections with them.
                drop(runtime);
            })?;
        #[cfg(not(test))]
        drop(thread);
        Ok(Background {
            runtime: handle,
            stop: Some(stop),
            #[cfg(test)]
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }

    /// This thread's runtime: what the store starts while it is built is started there
    /// (entered), whichever runtime builds it, if any.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Run `task` on this thread until it ends or the store is dropped, logging where the
    /// caller logs (a subscriber set for the caller's thread only, too).
    pub(crate) fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        drop(self.runtime.spawn(task.with_current_subscriber()));
    }

    /// Stop the thread once `last` has run (at most [`LAST_WORDS`]).
    pub(crate) fn stop_after(&mut self, last: impl Future<Output = ()> + Send + 'static) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(Some(Box::pin(last.with_current_subscriber())));
        }
    }

    /// The thread, once (for the tests that check it ends).
    #[cfg(test)]
    pub(crate) fn take_thread(&self) -> std::thread::JoinHandle<()> {
        let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        thread.take().expect("the thread was taken before")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(None);
        }
    }
}

/// Wait up to `within` for `thread` to end; whether it did.
#[cfg(test)]
pub(crate) fn ends_within(thread: &std::thread::JoinHandle<()>, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while !thread.is_finished() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Sets its flag when dropped: a task's future is dropped when its runtime is.
    struct Dropped(Arc<AtomicBool>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[test]
    fn tasks_run_without_any_runtime_of_the_caller_and_end_with_the_thread() {
        let background = Background::start("trc-test").unwrap();
        let (ran, heard) = std::sync::mpsc::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = Dropped(dropped.clone());
        background.spawn(async move {
            let _guard = guard;
            ran.send(()).unwrap();
            std::future::pending::<()>().await;
        });
        heard
            .recv_timeout(Duration::from_secs(5))
            .expect("the task ran on the store's own thread");
        let thread = background.take_thread();
        drop(background);
        assert!(
            ends_within(&thread, Duration::from_secs(5)),
            "the thread outlived its store"
        );
        assert!(dropped.load(Ordering::SeqCst), "a task outlived its store");
    }

    #[test]
    fn last_words_run_before_the_thread_ends_and_no_longer_than_allowed() {
        let mut background = Background::start("trc-test").unwrap();
        let (said, heard) = std::sync::mpsc::channel();
        let thread = background.take_thread();
        background.stop_after(async move {
            said.send(()).unwrap();
            // Cut off at `LAST_WORDS`.
            std::future::pending::<()>().await;
        });
        drop(background);
        heard
            .recv_timeout(Duration::from_secs(5))
            .expect("the last words were said");
        assert!(
            ends_within(&thread, LAST_WORDS + Duration::from_secs(5)),
            "last words held the thread past their limit"
        );
    }
}
