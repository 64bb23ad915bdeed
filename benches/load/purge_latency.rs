//! How much an exact purge over HTTP (`PURGE <path>` through `PurgeLayer`) costs over
//! calling the handle's `invalidate` directly: p50 and p99 of each, one existing entry
//! removed per call, on a memory store, over a kept-alive loopback connection. A cached
//! `GET` over the same connection is the HTTP round trip's own cost.
//!
//! ```sh
//! cargo run --release --example purge_latency            # 5 000 of each, in rounds
//! PURGE_LATENCY_N=20000 cargo run --release --example purge_latency
//! ```

use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_response_cache::{CacheHandle, CacheLayer, PurgeLayer};

const TOKEN: &str = "purge-latency-token-0123456789";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("PURGE_LATENCY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let handle = CacheHandle::in_memory();
    let cache = CacheLayer::new(handle.clone());
    // No practical rate limit: the figure is the endpoint's cost, not the limiter's.
    let purge = PurgeLayer::new(&cache, TOKEN).rate_limit(u32::MAX, Duration::from_secs(1));
    let app = Router::new()
        .route("/k/{i}", get(|| async { "value" }))
        .layer(cache)
        .layer(purge);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |method: &'static str, path: String| {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        // Only on the purge: a `GET` with credentials goes around the cache.
        if method == "PURGE" {
            request = request.header("authorization", format!("Bearer {TOKEN}"));
        }
        let request = request.body(Full::default()).unwrap();
        let client = client.clone();
        async move {
            let response = client.request(request).await.unwrap();
            assert!(response.status().is_success(), "{method} {path}");
            let x_cache = response.headers().get("x-cache").cloned();
            response.into_body().collect().await.unwrap();
            x_cache
        }
    };
    // One key per call, stored before it is purged, so every call removes one entry.
    let store = |key: String| {
        let handle = handle.clone();
        async move {
            handle
                .get_or_insert_with(&key, async { "value".to_owned() })
                .await;
        }
    };
    let (mut direct, mut over_http, mut hit) = (Vec::new(), Vec::new(), Vec::new());
    // Warm the connection and the hit.
    send("GET", "/k/warm".into()).await;
    for _ in 0..100 {
        if send("GET", "/k/warm".into())
            .await
            .is_some_and(|v| v == "HIT")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rounds = 10;
    for round in 0..rounds {
        for i in 0..n / rounds {
            let key = format!("/k/{round}-{i}");
            store(key.clone()).await;
            let started = Instant::now();
            let removed = handle.invalidate(&key).await.unwrap();
            direct.push(started.elapsed());
            assert_eq!(removed, 1);

            store(key.clone()).await;
            let started = Instant::now();
            send("PURGE", key).await;
            over_http.push(started.elapsed());

            let started = Instant::now();
            send("GET", "/k/warm".into()).await;
            hit.push(started.elapsed());
        }
    }
    println!("{n} calls each, memory store, one entry removed per purge");
    println!("| | p50 µs | p99 µs |");
    println!("|---|---:|---:|");
    for (name, samples) in [
        ("`handle.invalidate(key)` directly", &mut direct),
        ("`PURGE <path>` over HTTP", &mut over_http),
        ("cached `GET` over HTTP (the round trip alone)", &mut hit),
    ] {
        samples.sort();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
        println!("| {name} | {:.1} | {:.1} |", at(0.5), at(0.99));
    }
    let p99 = |s: &[Duration]| s[((s.len() - 1) as f64 * 0.99) as usize];
    let extra = p99(&over_http).saturating_sub(p99(&direct));
    println!(
        "p99 of a purge over HTTP exceeds the direct call's by {:.3} ms (target: within 2 ms)",
        extra.as_secs_f64() * 1e3
    );
}
