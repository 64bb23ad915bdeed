//! A unary gRPC call answered from the cache, next to the same call answered by the
//! service: tonic-health's `Check` (a real tonic server, no network), its request message
//! framed as a client sends it, the whole answer collected (message and trailers).
//!
//! - `grpc/bare`: the health service alone;
//! - `grpc/hit`: the same service behind `GrpcCacheLayer` with `Check` opted in, warm.
//!
//! `Check` itself is cheap (a map lookup behind a lock), so the difference is what a hit
//! costs over a trivial method; a real method that is worth caching costs far more.
//!
//! Run with `cargo bench --features grpc --bench grpc -- --noplot`; see BENCHMARKS.md.

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{CONTENT_TYPE, HOST};
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, GrpcCacheLayer};

const CHECK: &str = "/grpc.health.v1.Health/Check";

/// `Check` of the server's overall health: an empty `HealthCheckRequest`, length-prefixed.
fn check() -> Request<tonic::body::Body> {
    Request::builder()
        .method(Method::POST)
        .uri(CHECK)
        .header(HOST, "127.0.0.1:50051")
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(Full::new(Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ]))))
        .expect("valid request")
}

/// Send one call and collect the answer; returns the trailers' `grpc-status`, and the
/// `x-cache` header when there is one.
async fn call<S, B>(service: S) -> (String, String)
where
    S: Service<Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.oneshot(check()).await.expect("call");
    let x_cache = response
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let collected = response.into_body().collect().await.expect("body");
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, x_cache)
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let health = rt.block_on(async { tonic_health::server::health_reporter().1 });
    let cache = CacheHandle::in_memory();
    let cached = GrpcCacheLayer::new(cache)
        .method(CHECK)
        .layer(health.clone());
    rt.block_on(async {
        assert_eq!(call(health.clone()).await.0, "0");
        call(cached.clone()).await;
        assert_eq!(
            call(cached.clone()).await,
            ("0".to_owned(), "HIT".to_owned())
        );
    });
    let mut group = c.benchmark_group("grpc");
    group.bench_function("bare", |b| b.to_async(&rt).iter(|| call(health.clone())));
    group.bench_function("hit", |b| b.to_async(&rt).iter(|| call(cached.clone())));
    group.finish();
}

criterion_group! {
    name = grpc;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(grpc);
