//! One fill read by several clients, against clients that misbehave: one that stops
//! reading holds up nobody, a junk variant never makes a real one wait, and a fill from
//! before an invalidation is never shared after it.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

type Req = Request<Full<Bytes>>;

/// A streamed origin body: `frames`, one every `pause`, as most dynamic pages arrive.
type Trickle = http_body_util::StreamBody<
    futures_util::stream::BoxStream<'static, Result<http_body::Frame<Bytes>, Infallible>>,
>;

fn trickle(frames: Vec<Bytes>, pause: std::time::Duration) -> Response<Trickle> {
    use futures_util::StreamExt;
    let frames = futures_util::stream::iter(frames).then(move |frame| async move {
        tokio::time::sleep(pause).await;
        Ok(http_body::Frame::data(frame))
    });
    Response::new(http_body_util::StreamBody::new(frames.boxed()))
}

/// Send a GET of `path` through `service` and read the whole answer.
async fn body_of<S>(service: S, path: &'static str) -> Bytes
where
    S: Service<Req, Response = Response<tower_response_cache::CacheBody<Trickle>>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(path).body(Full::default()).unwrap();
    let response = service.oneshot(request).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

/// A fill is read at the origin's pace: a first client that never reads its body makes no
/// follower wait for it.
#[tokio::test]
async fn a_client_that_stops_reading_holds_up_no_follower() {
    use std::time::Duration;
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let origin = service_fn(|_request: Req| async {
        CALLS.fetch_add(1, Ordering::SeqCst);
        // Eight frames over 80 ms.
        let frames = (0..8u8)
            .map(|i| Bytes::from(vec![b'a' + i; 1000]))
            .collect();
        Ok::<_, Infallible>(trickle(frames, Duration::from_millis(10)))
    });
    let handle = CacheHandle::builder(MemoryStore::new())
        .coalesce_timeout(Duration::from_secs(30))
        .build();
    let service = CacheLayer::new(handle.clone()).layer(origin);
    // The first client gets its response head and never reads the body.
    let stalled = service
        .clone()
        .oneshot(Request::get("/p").body(Full::default()).unwrap());
    let stalled = stalled.await.unwrap();
    let started = std::time::Instant::now();
    let followers = (0..5).map(|_| body_of(service.clone(), "/p"));
    let bodies = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::future::join_all(followers),
    )
    .await
    .expect("a follower waited on the stalled client");
    for body in bodies {
        assert_eq!(body.len(), 8000);
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(CALLS.load(Ordering::SeqCst), 1, "one origin call for all");
    // The fill was stored at the origin's pace, the stalled client notwithstanding.
    let again = service
        .clone()
        .oneshot(Request::get("/p").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(again.headers()["x-cache"], "HIT");
    // And the stalled client still gets its whole body when it reads at last.
    let late = stalled.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(late.len(), 8000);
}

/// A request of another `Vary` variant does not wait for a slow fill of the first.
#[tokio::test]
async fn a_junk_variant_never_makes_a_real_one_wait() {
    use std::time::Duration;
    let origin = service_fn(|request: Req| async move {
        let language = request.headers()["accept-language"]
            .to_str()
            .unwrap()
            .to_owned();
        // The junk variant's body trickles for seconds; the real one's is quick.
        let pause = if language == "junk" { 500 } else { 1 };
        let frames = vec![Bytes::from(language); 4];
        let mut response = trickle(frames, Duration::from_millis(pause));
        response
            .headers_mut()
            .insert("vary", "accept-language".parse().unwrap());
        Ok::<_, Infallible>(response)
    });
    let handle = CacheHandle::builder(MemoryStore::new())
        .coalesce_timeout(Duration::from_secs(30))
        .build();
    let service = CacheLayer::new(handle).layer(origin);
    let get = |language: &'static str| {
        let service = service.clone();
        async move {
            let request = Request::get("/p")
                .header("accept-language", language)
                .body(Full::default())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        }
    };
    let junk = get("junk");
    let real = async {
        // Join the junk fill's flight once its head is out.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let body = get("en").await;
        (body, started.elapsed())
    };
    let (junk, (real, waited)) = tokio::join!(junk, real);
    assert_eq!(junk, "junkjunkjunkjunk");
    assert_eq!(real, "enenenen");
    assert!(
        waited < Duration::from_millis(1000),
        "waited {waited:?} for the junk fill"
    );
}

/// A request that starts after `invalidate` returned never reads a fetch from before it,
/// not even one still streaming.
#[tokio::test]
async fn a_fill_from_before_an_invalidation_is_never_shared_after_it() {
    use std::time::Duration;
    static VERSION: AtomicUsize = AtomicUsize::new(0);
    let origin = service_fn(|_request: Req| async {
        let version = VERSION.fetch_add(1, Ordering::SeqCst) + 1;
        let frames = vec![Bytes::from(format!("v{version};")); 3];
        Ok::<_, Infallible>(trickle(frames, Duration::from_millis(100)))
    });
    let handle = CacheHandle::builder(MemoryStore::new()).build();
    let service = CacheLayer::new(handle.clone()).layer(origin);
    let get = || body_of(service.clone(), "/p");
    let before = get();
    let after = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle.invalidate("/p").await.unwrap();
        get().await
    };
    let (before, after) = tokio::join!(before, after);
    assert_eq!(before, "v1;v1;v1;");
    assert_eq!(after, "v2;v2;v2;");
    // Nor is the old fill stored: the next read is the new version.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get().await, "v2;v2;v2;");
}

/// Clients that hold their responses without reading cannot stop the cache from storing:
/// a fill gives its bytes back to the fill budget when the origin's body ends.
#[tokio::test]
async fn clients_that_never_read_their_answers_keep_no_later_miss_from_being_stored() {
    use std::time::Duration;
    let origin = service_fn(|_request: Req| async {
        let frames = (0..4).map(|_| Bytes::from(vec![b'x'; 64 << 10])).collect();
        Ok::<_, Infallible>(trickle(frames, Duration::from_millis(1)))
    });
    // Room for four such answers being recorded at once.
    let handle = CacheHandle::builder(MemoryStore::new())
        .fill_budget(1 << 20)
        .build();
    let service = CacheLayer::new(handle.clone()).layer(origin);
    let mut stalled = Vec::new();
    for i in 0..8 {
        let path = format!("/stalled/{i}");
        let request = Request::get(path.as_str()).body(Full::default()).unwrap();
        stalled.push(service.clone().oneshot(request).await.unwrap());
        // Its fill ends (and is stored) at the origin's pace, unread.
        let stored = handle.stats().stores;
        tokio::time::timeout(Duration::from_secs(5), async {
            while handle.stats().stores == stored {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("an unread fill is stored at the origin's pace");
    }
    // Eight unread answers of 256 KiB: twice the budget, if they still held it.
    let fresh = body_of(service.clone(), "/later").await;
    assert_eq!(fresh.len(), 4 * (64 << 10));
    let again = service
        .clone()
        .oneshot(Request::get("/later").body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        again.headers()["x-cache"],
        "HIT",
        "the later miss was stored"
    );
    assert_eq!(handle.stats().stores, 9);
    drop(stalled);
}
