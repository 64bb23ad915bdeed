//! A hit by a gzip or br client with tower-http's `CompressionLayer` outside the cache
//! (every hit compressed again) or inside it (the stored bytes are already compressed),
//! next to compressing the bare service's answer on every request.
//!
//! Each iteration sends a `GET` with `Accept-Encoding` through a clone of the stack with
//! `oneshot` and collects the whole (compressed) body, on a current-thread runtime.
//!
//! Run with `cargo bench --bench compression -- --noplot`; see BENCHMARKS.md.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, HOST};
use http::{HeaderValue, Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_response_cache::{CacheHandle, CacheLayer};

/// About 8 KiB of JSON, a dashboard-sized payload.
static BODY: LazyLock<Bytes> = LazyLock::new(|| {
    let rows: Vec<String> = (0..96)
        .map(|i| {
            format!(
                r#"{{"id":{i},"ledger":"Ledger {i:03}","vouchers":{},"amount":{}.{:02}}}"#,
                i * 17,
                i * 1234,
                i % 100
            )
        })
        .collect();
    Bytes::from(format!(
        r#"{{"company":"ABC","rows":[{}]}}"#,
        rows.join(",")
    ))
});

type Req = Request<Full<Bytes>>;

fn origin(
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send
{
    tower::service_fn(|_req: Req| async {
        let mut response = Response::new(Full::new(BODY.clone()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok::<_, Infallible>(response)
    })
}

fn get(coding: &'static str) -> Req {
    Request::get("/api/dashboard/ABC")
        .header(HOST, "portal.example.com")
        .header(ACCEPT_ENCODING, coding)
        .body(Full::default())
        .expect("valid request")
}

/// Send one request; the response's `Content-Encoding`, `X-Cache` and body length.
async fn drive<S, B>(service: &S, request: Req) -> (String, String, usize)
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.expect("answer");
    let header = |name| {
        response
            .headers()
            .get(name)
            .map_or(String::new(), |v: &HeaderValue| {
                v.to_str().unwrap().to_owned()
            })
    };
    let (coding, x_cache) = (header(CONTENT_ENCODING.as_str()), header("x-cache"));
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (coding, x_cache, body.len())
}

fn compression_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let compressed_bare = CompressionLayer::new().layer(origin());
    let cache_outside =
        CacheLayer::new(CacheHandle::in_memory()).layer(CompressionLayer::new().layer(origin()));
    let cache_inside =
        CompressionLayer::new().layer(CacheLayer::new(CacheHandle::in_memory()).layer(origin()));

    let mut group = c.benchmark_group("compression");
    for coding in ["gzip", "br"] {
        rt.block_on(async {
            // Fill both caches for this coding, then check the next answer is a hit.
            for _ in 0..50 {
                let outside = drive(&cache_outside, get(coding)).await;
                let inside = drive(&cache_inside, get(coding)).await;
                if outside.1 == "HIT" && inside.1 == "HIT" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            for stack in [
                drive(&cache_outside, get(coding)).await,
                drive(&cache_inside, get(coding)).await,
            ] {
                assert_eq!((stack.0.as_str(), stack.1.as_str()), (coding, "HIT"));
                assert!(stack.2 < BODY.len() / 2, "{coding}: {} bytes", stack.2);
            }
        });
        group.bench_function(format!("{coding}_no_cache_compressed_each_time"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(drive(&compressed_bare, get(coding)).await) })
        });
        group.bench_function(format!("{coding}_hit_compression_outside_cache"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(drive(&cache_inside, get(coding)).await) })
        });
        group.bench_function(format!("{coding}_hit_compression_inside_cache"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(drive(&cache_outside, get(coding)).await) })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = compression_benches
}
criterion_main!(benches);
