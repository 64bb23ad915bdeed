//! A flood of exact invalidations (each unsafe request on a path is one) must cost amortised
//! O(1) per ban: the ban log's write lock is also taken by every miss's store write.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, Mutex};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

type Req = Request<Full<Bytes>>;

fn req(path: &str) -> Req {
    Request::get(path).body(Full::default()).unwrap()
}

/// `count` exact invalidations of distinct keys; how long they took.
async fn flood(handle: &CacheHandle, prefix: &str, count: usize) -> Duration {
    let started = Instant::now();
    for i in 0..count {
        handle.invalidate(&format!("/{prefix}/{i}")).await.unwrap();
    }
    started.elapsed()
}

#[tokio::test]
async fn exact_invalidations_are_amortised_constant_time() {
    let handle = CacheHandle::builder(MemoryStore::new()).build();
    // Warm up, then the small run: past the old 1 024-ban threshold already.
    flood(&handle, "warm", 2_000).await;
    let small = flood(&handle, "small", 5_000).await;
    let large = flood(&handle, "large", 50_000).await;
    eprintln!("5 000 invalidations: {small:?}; 50 000: {large:?}");
    // Debug build on a shared machine: linear takes tens of milliseconds, the old O(n)
    // prune per ban took many seconds.
    assert!(
        large < Duration::from_secs(2),
        "50 000 invalidations took {large:?}"
    );
    // Ten times the bans: about ten times the time, not a hundred (with slack for noise).
    assert!(
        large < small * 30 + Duration::from_millis(100),
        "5 000 took {small:?}, 50 000 took {large:?}: growth is not linear"
    );
}

#[tokio::test]
async fn a_ban_among_a_flood_still_refuses_an_older_fetch() {
    let calls = Arc::new(AtomicUsize::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel::<()>();
    let (release_tx, release) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Mutex::new(release));
    let origin = {
        let calls = calls.clone();
        service_fn(move |_r: Req| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let entered_tx = entered_tx.clone();
            let release = release.clone();
            async move {
                if n == 1 {
                    entered_tx.send(()).unwrap();
                    release.lock().await.recv().await;
                }
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("#{n}")))))
            }
        })
    };
    let handle = CacheHandle::builder(MemoryStore::new()).build();
    let service = CacheLayer::new(handle.clone()).layer(origin);

    let slow = {
        let service = service.clone();
        tokio::spawn(async move {
            let response = service.oneshot(req("/hot")).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        })
    };
    entered.recv().await.unwrap();
    // The in-flight fetch's key is banned in the middle of 50 000 others.
    flood(&handle, "before", 25_000).await;
    handle.invalidate("/hot").await.unwrap();
    flood(&handle, "after", 25_000).await;
    release_tx.send(()).unwrap();
    assert_eq!(slow.await.unwrap(), Bytes::from_static(b"#1"));

    let again = service.clone().oneshot(req("/hot")).await.unwrap();
    assert_eq!(
        again.headers()["x-cache"],
        "MISS",
        "the banned fetch was stored"
    );
    let body = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"#2"));
    // A fetch that began after the bans is stored as usual.
    let third = service.clone().oneshot(req("/hot")).await.unwrap();
    assert_eq!(third.headers()["x-cache"], "HIT");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
