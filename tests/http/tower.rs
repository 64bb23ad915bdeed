//! The layer driven directly as a tower service: readiness, time, streaming and trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::{service_fn, Service, ServiceExt};

use crate::support::Origin;
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

type Req = Request<Full<Bytes>>;

fn req(path: &str) -> Req {
    Request::get(path).body(Full::default()).unwrap()
}

async fn body_text<B: Body<Data = Bytes>>(body: B) -> String
where
    B::Error: std::fmt::Debug,
{
    String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

/// Let spawned store writes run (time is paused, so this does not wait for real).
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn entries_expire_after_the_ttl_and_age_counts_up() {
    let origin = Origin::default();
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(60))
        .build();
    let svc = CacheLayer::new(handle.clone()).layer_service(origin.router());

    let first = svc.clone().oneshot(req("/a")).await.unwrap();
    assert_eq!(body_text(first.into_body()).await, "/a #1");
    settle().await;
    tokio::time::advance(Duration::from_secs(59)).await;
    let hit = svc.clone().oneshot(req("/a")).await.unwrap();
    assert_eq!(hit.headers()["age"], "59");
    assert_eq!(
        hit.headers()["cache-status"],
        "tower-response-cache; hit; ttl=1"
    );
    assert_eq!(body_text(hit.into_body()).await, "/a #1");
    tokio::time::advance(Duration::from_secs(2)).await;
    let expired = svc.clone().oneshot(req("/a")).await.unwrap();
    assert_eq!(expired.headers()["x-cache"], "MISS");
    assert_eq!(body_text(expired.into_body()).await, "/a #2");

    // max-age overrides the handle's TTL.
    let short = svc.clone().oneshot(req("/b?cc=max-age%3D5")).await.unwrap();
    body_text(short.into_body()).await;
    settle().await;
    tokio::time::advance(Duration::from_secs(4)).await;
    let hit = svc.clone().oneshot(req("/b?cc=max-age%3D5")).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    tokio::time::advance(Duration::from_secs(2)).await;
    let gone = svc.clone().oneshot(req("/b?cc=max-age%3D5")).await.unwrap();
    assert_eq!(gone.headers()["x-cache"], "MISS");
    assert_eq!(origin.calls(), 4);
}

trait LayerService {
    fn layer_service<S>(&self, inner: S) -> tower_response_cache::CacheService<S>;
}

impl LayerService for CacheLayer {
    fn layer_service<S>(&self, inner: S) -> tower_response_cache::CacheService<S> {
        tower::Layer::layer(self, inner)
    }
}

#[tokio::test]
async fn poll_ready_forwards_to_the_inner_service() {
    let (inner, mut handle) = tower_test::mock::pair::<Req, Response<Full<Bytes>>>();
    let mut svc = CacheLayer::new(CacheHandle::in_memory()).layer_service(inner);
    let mut task = tokio_test_task(&mut svc);
    handle.allow(0);
    assert!(
        task.poll_ready().is_pending(),
        "ready although the inner service is not"
    );
    handle.allow(1);
    assert!(task.poll_ready().is_ready());
    // The inner call happens inside the response future (after the cache lookup).
    let call = tokio::spawn(task.svc.call(req("/x")));
    let (request, send) = handle.next_request().await.unwrap();
    assert_eq!(request.uri().path(), "/x");
    send.send_response(Response::new(Full::new(Bytes::from_static(b"ok"))));
    let response = call.await.unwrap().unwrap();
    assert_eq!(body_text(response.into_body()).await, "ok");
}

struct ReadyProbe<'a, S> {
    svc: &'a mut S,
}

impl<S: Service<Req>> ReadyProbe<'_, S> {
    fn poll_ready(&mut self) -> Poll<Result<(), S::Error>> {
        let waker = futures_noop_waker();
        let mut cx = Context::from_waker(&waker);
        self.svc.poll_ready(&mut cx)
    }
}

fn tokio_test_task<S>(svc: &mut S) -> ReadyProbe<'_, S> {
    ReadyProbe { svc }
}

fn futures_noop_waker() -> std::task::Waker {
    std::task::Waker::noop().clone()
}

/// A body fed frame by frame from a channel, with trailers at the end.
struct ChannelBody {
    frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.frames.poll_recv(cx).map(|f| f.map(Ok))
    }
}

#[tokio::test]
async fn miss_bodies_stream_before_they_end_and_trailers_pass_through() {
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = Arc::new(std::sync::Mutex::new(Some(rx)));
    let origin = service_fn(move |_r: Req| {
        let frames = rx.lock().unwrap().take().expect("called once");
        async move { Ok::<_, Infallible>(Response::new(ChannelBody { frames })) }
    });
    let handle = CacheHandle::in_memory();
    let svc = CacheLayer::new(handle.clone()).layer_service(origin);
    let response = svc.clone().oneshot(req("/stream")).await.unwrap();
    let mut body = response.into_body();

    // The first chunk reaches the client while the origin is still producing.
    tx.send(Frame::data(Bytes::from_static(b"first"))).unwrap();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "first");

    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().unwrap());
    tx.send(Frame::trailers(trailers)).unwrap();
    drop(tx);
    let last = body.frame().await.unwrap().unwrap();
    assert_eq!(last.trailers_ref().unwrap()["grpc-status"], "0");
    assert!(body.frame().await.is_none());
    settle().await;
    // A response with trailers is not stored: a replay would lose them.
    assert_eq!(handle.stats().stores, 0);
}

#[tokio::test]
async fn a_vanished_leader_releases_its_followers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let origin = {
        let (calls, gate) = (calls.clone(), gate.clone());
        service_fn(move |_r: Req| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = gate.clone();
            async move {
                if n == 1 {
                    // The first request hangs until its client gives up.
                    gate.notified().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("#{n}")))))
            }
        })
    };
    let handle = CacheHandle::builder(MemoryStore::new())
        .coalesce_timeout(Duration::from_secs(30))
        .build();
    let svc = CacheLayer::new(handle).layer_service(origin);
    let leader = tokio::spawn(svc.clone().oneshot(req("/k")));
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // Each follower reads its body as a client would; the next leader's entry is stored
    // only once its own client has read the body.
    let followers: Vec<_> = (0..5)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                body_text(svc.oneshot(req("/k")).await.unwrap().into_body()).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The leader's client disconnects: its future is dropped.
    leader.abort();
    let all = async {
        let mut bodies = Vec::new();
        for f in followers {
            bodies.push(f.await.unwrap());
        }
        bodies
    };
    let bodies = tokio::time::timeout(Duration::from_secs(5), all)
        .await
        .expect("followers hung after the leader vanished");
    // One follower led the next flight; the rest were served its entry.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(bodies.iter().all(|b| b == "#2"), "{bodies:?}");
}
