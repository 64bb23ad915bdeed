//! Serving at the edges: stale-while-revalidate, stale-if-error, soft invalidation,
//! conditional requests and hit-for-miss — each through a real HTTP server with an origin
//! that counts its calls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::*;
use axum::http::StatusCode;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, CachePolicy, MemoryStore};

/// How long a background store or refresh may take on a loaded machine.
const WAIT: Duration = Duration::from_secs(10);

async fn start(layer: CacheLayer) -> (Origin, std::net::SocketAddr, HttpClient) {
    let origin = Origin::default();
    let addr = origin.serve(layer).await;
    (origin, addr, client())
}

#[tokio::test]
async fn stale_while_revalidate_serves_at_once_and_refreshes_once() {
    let handle = CacheHandle::in_memory();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    let path = "/swr?cc=max-age%3D1,%20stale-while-revalidate%3D60&delay_ms=400";
    assert_eq!(get(&client, addr, path).await.text(), "/swr #1");
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 1 }).await,
        "timed out waiting for the first store"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Ten clients find the entry stale: all answered at once, one refresh.
    let started = Instant::now();
    let answers: Vec<Answer> = futures_join_all((0..10).map(|_| {
        let client = client.clone();
        async move { get(&client, addr, path).await }
    }))
    .await;
    let elapsed = started.elapsed();
    for a in &answers {
        assert_eq!(a.x_cache(), "STALE");
        assert_eq!(a.text(), "/swr #1");
        assert!(a
            .header("cache-status")
            .contains("detail=stale-while-revalidate"));
    }
    assert!(
        elapsed < Duration::from_millis(350),
        "stale answers waited for the origin ({elapsed:?}; origin takes 400 ms)"
    );
    // The clients are gone; the refresh still completes, exactly once.
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 2 }).await,
        "timed out waiting for the refresh to be stored"
    );
    assert_eq!(origin.calls(), 2);
    let fresh = get(&client, addr, path).await;
    assert_eq!((fresh.x_cache(), fresh.text().as_str()), ("HIT", "/swr #2"));
    assert_eq!(handle.stats().stale, 10);
}

async fn futures_join_all<F: std::future::Future<Output = Answer> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Answer> {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_handle_default_window_applies_when_the_response_names_none() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(1))
        .stale_while_revalidate(Duration::from_secs(60))
        .build();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    get(&client, addr, "/d").await;
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 1 }).await,
        "timed out waiting for store"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&client, addr, "/d").await.x_cache(), "STALE");
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 2 }).await,
        "timed out waiting for refresh"
    );
    assert_eq!(origin.calls(), 2);
    // must-revalidate forbids it.
    let strict = "/strict?cc=max-age%3D1,%20must-revalidate";
    get(&client, addr, strict).await;
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 3 }).await,
        "timed out waiting for store"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&client, addr, strict).await.x_cache(), "MISS");
}

#[tokio::test]
async fn stale_if_error_stands_in_for_a_failing_origin() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(60))
        .build();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    get(&client, addr, "/e").await;
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 1 }).await,
        "timed out waiting for store"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    origin.failing.store(true, Ordering::SeqCst);
    let stale = get(&client, addr, "/e").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!((stale.x_cache(), stale.text().as_str()), ("STALE", "/e #1"));
    assert!(stale
        .header("cache-status")
        .starts_with("tower-response-cache; fwd=stale; ttl=-"));
    assert!(stale
        .header("cache-status")
        .ends_with("detail=stale-if-error"));
    // Once the origin recovers, its answer replaces the stale entry.
    origin.failing.store(false, Ordering::SeqCst);
    assert_eq!(get(&client, addr, "/e").await.text(), "/e #3");
    // Without a stale entry, the origin's error reaches the client unchanged.
    origin.failing.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&client, addr, "/never-cached").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn inner_errors_and_timeouts_fall_back_to_stale() {
    // Driven as a tower service: axum handlers cannot return a service error.
    let mode = Arc::new(AtomicUsize::new(0)); // 0 ok, 1 error, 2 hang
    let inner = {
        let mode = mode.clone();
        service_fn(move |_req: http::Request<Full<Bytes>>| {
            let mode = mode.load(Ordering::SeqCst);
            async move {
                match mode {
                    1 => Err("origin down"),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        Ok(http::Response::new(Full::new(Bytes::from_static(b"late"))))
                    }
                    _ => Ok(http::Response::new(Full::new(Bytes::from_static(b"good")))),
                }
            }
        })
    };
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::from_secs(1))
        .stale_if_error(Duration::from_secs(60))
        .build();
    let svc = CacheLayer::new(handle.clone())
        .policy(CachePolicy::default().origin_timeout(Duration::from_millis(100)))
        .layer(inner);
    let req = || http::Request::get("/x").body(Full::default()).unwrap();
    let first = svc.clone().oneshot(req()).await.unwrap();
    first.into_body().collect().await.unwrap();
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 1 }).await,
        "timed out waiting for store"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    mode.store(1, Ordering::SeqCst);
    let on_error = svc
        .clone()
        .oneshot(req())
        .await
        .expect("stale instead of the error");
    assert_eq!(on_error.headers()["x-cache"], "STALE");
    assert_eq!(
        on_error.into_body().collect().await.unwrap().to_bytes(),
        "good"
    );

    mode.store(2, Ordering::SeqCst);
    let started = Instant::now();
    let on_timeout = svc.clone().oneshot(req()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "waited for a hanging origin"
    );
    assert_eq!(on_timeout.headers()["x-cache"], "STALE");

    // Without a stale entry the error is the caller's.
    mode.store(1, Ordering::SeqCst);
    let other = http::Request::get("/other").body(Full::default()).unwrap();
    assert!(svc.clone().oneshot(other).await.is_err());
}

#[tokio::test]
async fn soft_invalidation_serves_stale_then_fresh_and_hard_beats_it() {
    let handle = CacheHandle::builder(MemoryStore::new())
        .stale_while_revalidate(Duration::from_secs(60))
        .build();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    get(&client, addr, "/api/dashboard/ABC").await;
    get(&client, addr, "/api/dashboard/XYZ").await;
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 2 }).await,
        "timed out waiting for store"
    );
    assert_eq!(
        handle.invalidate_soft("/api/dashboard/A*").await.unwrap(),
        1
    );
    let soft = get(&client, addr, "/api/dashboard/ABC").await;
    assert_eq!(
        (soft.x_cache(), soft.text().as_str()),
        ("STALE", "/api/dashboard/ABC #1")
    );
    assert_eq!(
        get(&client, addr, "/api/dashboard/XYZ").await.x_cache(),
        "HIT"
    );
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 3 }).await,
        "timed out waiting for refresh"
    );
    let fresh = get(&client, addr, "/api/dashboard/ABC").await;
    assert_eq!(
        (fresh.x_cache(), fresh.text().as_str()),
        ("HIT", "/api/dashboard/ABC #3")
    );

    handle.invalidate_soft("/api/dashboard/*").await.unwrap();
    handle.invalidate("/api/dashboard/*").await.unwrap();
    assert_eq!(
        get(&client, addr, "/api/dashboard/XYZ").await.x_cache(),
        "MISS"
    );
    assert_eq!(origin.calls(), 4);
}

#[tokio::test]
async fn conditional_requests_are_answered_from_the_cache() {
    let handle = CacheHandle::in_memory();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    get(&client, addr, "/c?lm=1").await;
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 1 }).await,
        "timed out waiting for store"
    );
    let hit = get(&client, addr, "/c?lm=1").await;
    let etag = hit.header("etag").to_owned();
    assert!(
        etag.starts_with('"') && etag.len() > 10,
        "generated ETag: {etag}"
    );

    let revalidated = get_with(&client, addr, "/c?lm=1", &[("if-none-match", &etag)]).await;
    assert_eq!(revalidated.status, StatusCode::NOT_MODIFIED);
    assert!(revalidated.body.is_empty());
    assert_eq!(revalidated.header("etag"), etag);
    let changed = get_with(&client, addr, "/c?lm=1", &[("if-none-match", "\"old\"")]).await;
    assert_eq!(
        (changed.status, changed.text().as_str()),
        (StatusCode::OK, "/c #1")
    );
    let since = get_with(
        &client,
        addr,
        "/c?lm=1",
        &[("if-modified-since", "Thu, 22 Oct 2015 07:28:00 GMT")],
    )
    .await;
    assert_eq!(since.status, StatusCode::NOT_MODIFIED);
    assert_eq!(origin.calls(), 1, "304s came from the cache");

    // A conditional miss still fetches (and stores) the full response.
    let first = get_with(&client, addr, "/c2", &[("if-none-match", "\"x\"")]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(
        eventually(WAIT, || async { handle.stats().stores == 2 }).await,
        "timed out waiting for store"
    );
}

#[tokio::test]
async fn hit_for_miss_stops_queueing_on_uncacheable_keys() {
    let handle = CacheHandle::in_memory();
    let (origin, addr, client) = start(CacheLayer::new(handle.clone())).await;
    let path = "/private?cc=private&delay_ms=200";
    let burst = || {
        futures_join_all((0..8).map(|_| {
            let client = client.clone();
            async move { get(&client, addr, path).await }
        }))
    };
    burst().await;
    let coalesced_after_first = handle.stats().coalesced;
    assert!(
        coalesced_after_first > 0,
        "the first burst coalesced behind one leader"
    );
    burst().await;
    assert_eq!(
        handle.stats().coalesced,
        coalesced_after_first,
        "the second burst waited for a leader although the key is known uncacheable"
    );
    assert_eq!(origin.calls(), 16);
    // Nothing private was stored.
    assert_eq!(handle.stats().stores, 0);
}
