//! Fills under slow, stalled and departing readers, and the budget.

use super::*;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::mpsc;

struct Noop(Arc<Mutex<Option<Bytes>>>);

impl Commit for Noop {
    async fn store(self, body: Bytes, _: Option<HeaderMap>) {
        *self.0.lock().unwrap() = Some(body);
    }
    fn abandon(self) {}
    fn release_followers(&mut self) {}
}

fn head() -> Head {
    Head {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        vary: Default::default(),
        size_hint: SizeHint::new(),
    }
}

/// An origin body fed frame by frame from the test.
fn channel_body() -> (
    mpsc::Sender<Bytes>,
    http_body_util::StreamBody<
        impl futures_util::Stream<Item = Result<Frame<Bytes>, std::convert::Infallible>>,
    >,
) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok(Frame::data(b)), rx))
    });
    (tx, http_body_util::StreamBody::new(stream))
}

#[tokio::test]
async fn a_stalled_reader_holds_up_neither_the_origin_nor_other_readers() {
    let budget = Arc::new(Budget::new(1 << 20));
    let fill = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    let stalled = fill.reader().unwrap();
    let mut reading = fill.reader().unwrap();
    let (tx, body) = channel_body();
    let stored = Arc::new(Mutex::new(None));
    let task = tokio::spawn(run(fill.clone(), body, Noop(stored.clone())));
    for i in 0..10u8 {
        tx.send(Bytes::from(vec![i; 100])).await.unwrap();
        let frame = reading.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap()[0], i);
    }
    drop(tx);
    assert!(reading.frame().await.is_none());
    task.await.unwrap();
    assert_eq!(stored.lock().unwrap().as_ref().unwrap().len(), 1000);
    // The stalled reader still gets everything when it reads at last.
    let all = stalled.collect().await.unwrap().to_bytes();
    assert_eq!(all.len(), 1000);
    drop(reading);
    drop(fill);
    assert_eq!(budget.used(), 0, "the budget is given back");
}

#[tokio::test(start_paused = true)]
async fn past_its_limit_a_fill_stops_recording_and_cuts_a_laggard_that_holds_others_up() {
    let budget = Arc::new(Budget::new(1 << 30));
    let fill = Fill::new(head(), budget.clone(), 1000, Duration::from_millis(100));
    let laggard = fill.reader().unwrap();
    let mut reading = fill.reader().unwrap();
    let (tx, body) = channel_body();
    let stored = Arc::new(Mutex::new(None));
    let task = tokio::spawn(run(fill.clone(), body, Noop(stored.clone())));
    let chunk = Bytes::from(vec![7; 64 << 10]);
    let mut read = 0;
    for _ in 0..16 {
        tx.send(chunk.clone()).await.unwrap();
        read += reading
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap()
            .len();
    }
    assert!(!fill.is_recording());
    assert_eq!(read, 16 * (64 << 10));
    drop(tx);
    assert!(reading.frame().await.is_none());
    task.await.unwrap();
    assert!(stored.lock().unwrap().is_none(), "too large to store");
    // The laggard was cut off instead of holding the other reader.
    assert!(laggard.collect().await.is_err());
    assert!(fill.reader().is_none(), "a late joiner fetches alone");
}

#[tokio::test]
async fn with_the_budget_spent_an_unrecorded_fill_runs_no_further_ahead_than_its_reader() {
    // The budget is spent by another fill's recording.
    let budget = Arc::new(Budget::new(1000));
    let hog = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    assert!(hog.push_data(Bytes::from(vec![0; 1000])));
    let fill = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    let mut reader = fill.reader().unwrap();
    let (tx, body) = channel_body();
    let task = tokio::spawn(run(fill.clone(), body, Noop(Arc::new(Mutex::new(None)))));
    for _ in 0..8 {
        let _ = tx.try_send(Bytes::from(vec![1; 10_000]));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The reader has read nothing: the fill took one frame and waits for it.
    assert_eq!(fill.lock().held, 10_000);
    reader.frame().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(fill.lock().held, 10_000, "one frame ahead, not the window");
    drop(reader);
    drop(tx);
    task.await.unwrap();
    drop((hog, fill));
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn the_fill_budget_bounds_what_all_fills_record() {
    let budget = Arc::new(Budget::new(1500));
    let a = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(1));
    let b = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(1));
    assert!(a.push_data(Bytes::from(vec![0; 1000])));
    assert!(!b.push_data(Bytes::from(vec![0; 1000])), "over the budget");
    drop((a, b));
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_reader_that_never_reads_an_ended_fill_holds_none_of_the_budget() {
    let budget = Arc::new(Budget::new(1500));
    let fill = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    let stalled = fill.reader().unwrap();
    let (tx, body) = channel_body();
    let stored = Arc::new(Mutex::new(None));
    let task = tokio::spawn(run(fill.clone(), body, Noop(stored.clone())));
    for i in 0..10u8 {
        tx.send(Bytes::from(vec![i; 100])).await.unwrap();
    }
    drop(tx);
    task.await.unwrap();
    let stored = stored.lock().unwrap().clone().expect("recorded and stored");
    assert_eq!(stored.len(), 1000);
    assert_eq!(budget.used(), 0, "the ended fill gave its bytes back");
    // So another fill records as if the stalled client were not there.
    let next = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    assert!(
        next.push_data(Bytes::from(vec![0; 1500])),
        "the whole budget is free"
    );
    drop(next);
    // The stalled reader reads the stored copy itself, not a second one.
    let range = stored.as_ptr() as usize..stored.as_ptr() as usize + stored.len();
    let mut stalled = stalled;
    let mut read = 0;
    while let Some(frame) = stalled.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        assert!(
            range.contains(&(data.as_ptr() as usize)),
            "a slice of the stored body"
        );
        read += data.len();
    }
    assert_eq!(read, 1000);
    drop(fill);
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_stalled_reader_of_an_unrecorded_fill_never_refuses_another_recording() {
    let budget = Arc::new(Budget::new(1000));
    // Too large to record: the fill only passes its body on, to a reader that never reads.
    let big = Fill::new(head(), budget.clone(), 100, Duration::from_secs(10));
    let stalled = big.reader().unwrap();
    assert!(!big.push_data(Bytes::from(vec![0; 5000])));
    assert_eq!(budget.recording(), 0);
    let next = Fill::new(head(), budget.clone(), 1 << 20, Duration::from_secs(10));
    assert!(
        next.push_data(Bytes::from(vec![0; 1000])),
        "recording still has its budget"
    );
    drop((big, next, stalled));
    assert_eq!(budget.used(), 0);
}

/// A commit that panics (a bug in a store, say).
struct Panics;

impl Commit for Panics {
    async fn store(self, _: Bytes, _: Option<HeaderMap>) {
        panic!("the store failed");
    }
    fn abandon(self) {}
    fn release_followers(&mut self) {}
}

#[tokio::test]
async fn a_commit_that_panics_still_ends_every_readers_body() {
    let fill = Fill::new(
        head(),
        Arc::new(Budget::new(1 << 20)),
        1 << 20,
        Duration::from_secs(10),
    );
    let reader = fill.reader().unwrap();
    let (tx, body) = channel_body();
    let task = tokio::spawn(run(fill.clone(), body, Panics));
    tx.send(Bytes::from_static(b"whole")).await.unwrap();
    drop(tx);
    assert!(task.await.unwrap_err().is_panic());
    let read = tokio::time::timeout(Duration::from_secs(5), reader.collect())
        .await
        .expect("the reader's body ends")
        .unwrap();
    assert_eq!(read.to_bytes(), "whole");
}
