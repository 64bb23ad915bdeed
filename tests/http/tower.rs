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
    let svc = CacheLayer::new(handle.clone())
        .cache_status_detail(tower_response_cache::CacheStatusDetail::Full)
        .layer_service(origin.router());

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

/// A stored response keeps the headers the origin sent and no `Content-Length` it did not:
/// the body of a full answer has an exact size, which a server writes the length from (one
/// header fewer held per entry, one fewer copied per hit).
#[tokio::test(start_paused = true)]
async fn an_entry_holds_no_length_the_origin_did_not_send() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(60))
        .build();
    let origin = service_fn(|_: Req| async {
        let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; 4096])));
        response
            .headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        Ok::<_, Infallible>(response)
    });
    let svc = CacheLayer::new(handle.clone()).layer_service(origin);
    let miss = svc.clone().oneshot(req("/n")).await.unwrap();
    assert_eq!(miss.headers()["x-cache"], "MISS");
    body_text(miss.into_body()).await;
    settle().await;
    let hit = svc.clone().oneshot(req("/n")).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert!(
        hit.headers().get("content-length").is_none(),
        "{:?}",
        hit.headers()
    );
    assert_eq!(hit.headers()["content-type"], "text/plain");
    assert_eq!(hit.body().size_hint().exact(), Some(4096));
    assert_eq!(body_text(hit.into_body()).await.len(), 4096);
    let head = Request::head("/n").body(Full::default()).unwrap();
    let head = svc.clone().oneshot(head).await.unwrap();
    assert_eq!(head.headers()["x-cache"], "HIT");
    assert_eq!(head.headers()["content-length"], "4096");
}

/// The key function runs once per request, whatever the request comes to: a miss, a
/// request it declines (a bypass), a hit. A key function may count, log or look up a
/// tenant: running it twice would do that twice.
#[tokio::test(start_paused = true)]
async fn the_key_fn_runs_once_per_request() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(60))
        .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = service_fn(|_: Req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
    });
    let svc = CacheLayer::new(handle.clone())
        .key_fn(move |parts| {
            counted.fetch_add(1, Ordering::SeqCst);
            parts.uri.path().strip_prefix("/k/").map(str::to_owned)
        })
        .layer_service(origin);
    let mut seen = Vec::new();
    for path in ["/k/a", "/elsewhere", "/k/a"] {
        let before = calls.load(Ordering::SeqCst);
        let response = svc.clone().oneshot(req(path)).await.unwrap();
        let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
        body_text(response.into_body()).await;
        settle().await;
        seen.push((path, x_cache, calls.load(Ordering::SeqCst) - before));
    }
    assert_eq!(
        seen,
        [
            ("/k/a", "MISS".to_owned(), 1),
            ("/elsewhere", "BYPASS".to_owned(), 1),
            ("/k/a", "HIT".to_owned(), 1),
        ]
    );
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

/// The answers one request's shape earns (a `HEAD`'s empty `200`, a `304` to a client's own
/// condition, a `204` to a request that asked for no content) race plain `GET`s of a cold
/// key: none is stored, and no plain `GET` is answered with another request's empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_one_request_earned_is_never_stored_or_shared_in_a_race() {
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let calls = calls.clone();
        service_fn(move |request: Req| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let headers = request.headers();
                let mut response = Response::new(Full::new(Bytes::from(format!("full #{n}"))));
                if request.method() == http::Method::HEAD {
                    *response.body_mut() = Full::default();
                } else if headers.get("if-none-match").is_some_and(|v| v == "\"v1\"") {
                    *response.status_mut() = http::StatusCode::NOT_MODIFIED;
                    *response.body_mut() = Full::default();
                } else if headers.get("prefer").is_some_and(|v| v == "return=minimal") {
                    *response.status_mut() = http::StatusCode::NO_CONTENT;
                    *response.body_mut() = Full::default();
                }
                let h = response.headers_mut();
                h.insert("etag", http::HeaderValue::from_static("\"v1\""));
                h.insert(
                    "cache-control",
                    http::HeaderValue::from_static("max-age=60"),
                );
                Ok::<_, Infallible>(response)
            }
        })
    };
    let handle = CacheHandle::in_memory();
    let svc = CacheLayer::new(handle.clone()).layer_service(origin);
    for round in 0..30 {
        let path = format!("/race/{round}");
        let shapes: Vec<Req> = (0..12)
            .map(|i| {
                // The request with an empty answer goes first in some rounds, in the
                // middle in others, so it is the leader of the flight or a follower.
                let odd = (i + round) % 4;
                let mut request = req(&path);
                match odd {
                    0 => *request.method_mut() = http::Method::HEAD,
                    1 => {
                        let v1 = http::HeaderValue::from_static("\"v1\"");
                        request.headers_mut().insert("if-none-match", v1);
                    }
                    _ => {}
                }
                request
            })
            .collect();
        let mut plain = Vec::new();
        for request in shapes {
            let is_plain = request.method() == http::Method::GET
                && !request.headers().contains_key("if-none-match");
            let svc = svc.clone();
            let answer = tokio::spawn(async move {
                let response = svc.oneshot(request).await.unwrap();
                let status = response.status();
                (status, body_text(response.into_body()).await)
            });
            if is_plain {
                plain.push(answer);
            }
        }
        for answer in plain {
            let (status, body) = answer.await.unwrap();
            assert_eq!(status, http::StatusCode::OK, "{path}");
            assert!(
                body.starts_with("full #"),
                "{path}: a plain GET got {body:?}"
            );
        }
        // What is stored is the full answer.
        let hit = svc.clone().oneshot(req(&path)).await.unwrap();
        assert_eq!(hit.headers()["x-cache"], "HIT", "{path}");
        assert!(body_text(hit.into_body()).await.starts_with("full #"));
    }
    // A `204` one request asked for (RFC 7240 `Prefer: return=minimal`, which the origin
    // honours without saying `Vary: Prefer`) on a cold URL is that request's own: the next
    // plain GET of the same URL gets the whole answer, and the 204 is not what it hits.
    for round in 0..10 {
        let path = format!("/prefer/{round}");
        let mut minimal = req(&path);
        let prefer = http::HeaderValue::from_static("return=minimal");
        minimal.headers_mut().insert("prefer", prefer);
        let empty = svc.clone().oneshot(minimal).await.unwrap();
        assert_eq!(empty.status(), http::StatusCode::NO_CONTENT);
        body_text(empty.into_body()).await;
        settle().await;
        let plain = svc.clone().oneshot(req(&path)).await.unwrap();
        assert_eq!(plain.status(), http::StatusCode::OK, "{path}");
        assert!(body_text(plain.into_body()).await.starts_with("full #"));
        settle().await;
        // The positive control: the plain answer is stored and hit.
        let hit = svc.clone().oneshot(req(&path)).await.unwrap();
        assert_eq!(hit.headers()["x-cache"], "HIT", "{path}");
        assert!(body_text(hit.into_body()).await.starts_with("full #"));
    }
    assert!(calls.load(Ordering::SeqCst) >= 30, "the origin was asked");
}

/// A client that hangs up while its `POST`'s invalidations run (RFC 9111 §4.4: the
/// request's own URI, then its answer's `Location` and `Content-Location`) cancels none of
/// them: every one of the three entries is gone afterwards.
#[tokio::test]
async fn a_client_that_hangs_up_cancels_none_of_an_unsafe_requests_invalidations() {
    let origin = service_fn(|request: Req| async move {
        let mut response = Response::new(Full::new(Bytes::from(request.uri().to_string())));
        let h = response.headers_mut();
        if request.method() == http::Method::POST {
            h.insert("location", http::HeaderValue::from_static("/items/1"));
            h.insert(
                "content-location",
                http::HeaderValue::from_static("/items/2"),
            );
        } else {
            h.insert(
                "cache-control",
                http::HeaderValue::from_static("max-age=60"),
            );
        }
        Ok::<_, Infallible>(response)
    });
    let store = crate::gated_store::GatedStore {
        inner: MemoryStore::new(),
        gate: Arc::new(tokio::sync::Semaphore::new(1)),
        first: Default::default(),
        failing: Default::default(),
        invalidate_delay: Duration::from_millis(100),
    };
    let handle = CacheHandle::builder(store).build();
    let policy = tower_response_cache::CachePolicy::rfc9111();
    let svc = CacheLayer::new(handle.clone())
        .policy(policy)
        .layer_service(origin);
    let with_host = |method: http::Method, path: &str| {
        let mut request = req(path);
        *request.method_mut() = method;
        let host = http::HeaderValue::from_static("test");
        request.headers_mut().insert(http::header::HOST, host);
        request
    };
    let paths = ["/items", "/items/1", "/items/2"];
    let x_cache = |path: &'static str| {
        let svc = svc.clone();
        async move {
            let answer = svc
                .oneshot(with_host(http::Method::GET, path))
                .await
                .unwrap();
            answer.headers()["x-cache"].to_str().unwrap().to_owned()
        }
    };
    for path in paths {
        x_cache(path).await;
        settle().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(x_cache(path).await, "HIT", "{path} was not stored");
    }
    // The client gives up while the first of the three invalidations runs.
    let post = svc.clone().oneshot(with_host(http::Method::POST, "/items"));
    let hung_up = tokio::time::timeout(Duration::from_millis(30), post).await;
    assert!(
        hung_up.is_err(),
        "the POST answered before the client hung up"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    for path in paths {
        assert_eq!(x_cache(path).await, "MISS", "{path} outlived the POST");
    }
}

/// By default `Cache-Status` tells a client whether the cache answered and why not, never
/// when the entry expires or what the cache is going through; `Full` tells everything.
#[tokio::test]
async fn cache_status_says_only_hit_or_why_not_unless_full_detail_is_asked_for() {
    use tower_response_cache::CacheStatusDetail;
    for (detail, miss, hit_prefix) in [
        (
            None,
            "tower-response-cache; fwd=uri-miss",
            "tower-response-cache; hit",
        ),
        (
            Some(CacheStatusDetail::Full),
            "tower-response-cache; fwd=uri-miss; detail=storing",
            "tower-response-cache; hit; ttl=",
        ),
    ] {
        let origin = Origin::default();
        let mut layer = CacheLayer::new(CacheHandle::in_memory());
        if let Some(detail) = detail {
            layer = layer.cache_status_detail(detail);
        }
        let svc = layer.layer_service(origin.router());
        let first = svc.clone().oneshot(req("/s")).await.unwrap();
        assert_eq!(first.headers()["cache-status"], miss, "{detail:?}");
        body_text(first.into_body()).await;
        settle().await;
        let hit = svc.clone().oneshot(req("/s")).await.unwrap();
        let status = hit.headers()["cache-status"].to_str().unwrap();
        assert!(status.starts_with(hit_prefix), "{detail:?}: {status}");
        if detail.is_none() {
            assert_eq!(status, "tower-response-cache; hit");
        }
        assert_eq!(hit.headers()["x-cache"], "HIT");
    }
}

/// An origin answering `body` with `count` values of the header `name`.
fn with_headers(
    name: &'static str,
    count: u32,
    body: &'static str,
    calls: Arc<AtomicUsize>,
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send
{
    service_fn(move |_: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        for i in 0..count {
            response
                .headers_mut()
                .append(name, http::HeaderValue::from(i));
        }
        async { Ok::<_, Infallible>(response) }
    })
}

/// A response with more header values than the cache stores (1 024, what the byte format
/// reads back) passes through whole and is not stored; a `HeaderMap` holds at most 32 768,
/// so one near that limit once made the entry's answer map overflow (a panic in the fill's
/// task, and a client left waiting: the timeout turns such a wait into a failure).
#[tokio::test(start_paused = true)]
async fn a_response_with_too_many_headers_passes_through_unstored() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(60))
        .build();
    let within = |read| tokio::time::timeout(Duration::from_secs(30), read);
    let calls = Arc::new(AtomicUsize::new(0));
    let many = with_headers("x-many", 32_767, "many", calls.clone());
    let svc = CacheLayer::new(handle.clone())
        .cache_status_detail(tower_response_cache::CacheStatusDetail::Full)
        .layer_service(many);
    for round in 0..2 {
        let response = svc.clone().oneshot(req("/many")).await.unwrap();
        assert_eq!(response.headers().get_all("x-many").iter().count(), 32_767);
        if round == 0 {
            // (The second is a hit-for-miss pass: the reason was given once.)
            assert_eq!(
                response.headers()["cache-status"],
                "tower-response-cache; fwd=uri-miss; detail=headers"
            );
        }
        let body = within(body_text(response.into_body()))
            .await
            .expect("the body ends");
        assert_eq!(body, "many");
        settle().await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "not stored");
    // Just within the limit: stored, and answered whole.
    let some = with_headers("x-some", 1_024, "some", Arc::default());
    let svc = CacheLayer::new(handle).layer_service(some);
    let first = svc.clone().oneshot(req("/some")).await.unwrap();
    within(body_text(first.into_body()))
        .await
        .expect("the body ends");
    settle().await;
    let hit = svc.oneshot(req("/some")).await.unwrap();
    assert_eq!(hit.headers()["x-cache"], "HIT");
    assert_eq!(hit.headers().get_all("x-some").iter().count(), 1_024);
}
