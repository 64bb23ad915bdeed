//! Per-request cost of the cache layer, next to the bare service it wraps.
//!
//! Every benchmark builds the same kind of request, drives one clone of the service with
//! `oneshot` on a current-thread runtime and collects the whole body, so the numbers hold
//! the work a server does per request. The difference `hit - baseline` is the layer's cost
//! on a memory hit (design target: under 1 µs).
//!
//! Run with `cargo bench --bench layer -- --noplot`; see BENCHMARKS.md.

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

/// About 2 KiB of JSON, like a small dashboard payload.
static BODY: LazyLock<Bytes> = LazyLock::new(|| {
    let rows: Vec<String> = (0..24)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"Company {i:02}","balance":{}.{:02}}}"#,
                i * 1234,
                i
            )
        })
        .collect();
    let json = format!(
        r#"{{"company":"ABC","currency":"EUR","rows":[{}]}}"#,
        rows.join(",")
    );
    Bytes::from(json)
});

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// The inner service: a static body and a content type, nothing else.
fn origin() -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + Send {
    tower::service_fn(|_req: Req| async {
        let mut response = Response::new(Full::new(BODY.clone()));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Ok::<_, Infallible>(response)
    })
}

/// A GET as a server hands it over: path-only URI, `Host`, a few usual headers.
fn get(uri: &str) -> Req {
    Request::get(uri)
        .header(HOST, "portal.example.com")
        .header(ACCEPT, "application/json")
        .header(USER_AGENT, "bench/1.0")
        .body(Full::default())
        .expect("valid request")
}

fn grpc_post() -> Req {
    Request::builder()
        .method(Method::POST)
        .uri("/grpc.health.v1.Health/Check")
        .header(HOST, "portal.example.com")
        .header(CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("valid request")
}

fn authorized_get() -> Req {
    let mut request = get("/api/dashboard/ABC");
    request.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer 0123456789abcdef"),
    );
    request
}

/// One request through a clone of `service`, body collected.
async fn drive<S, B>(service: &S, request: Req) -> Bytes
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.expect("infallible");
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// Like [`drive`], returning the `X-Cache` header too (used to check set-ups).
async fn x_cache<S, B>(service: &S, request: Req) -> String
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.expect("infallible");
    let value = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let _ = response.into_body().collect().await.expect("body");
    value
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn handle() -> CacheHandle {
    CacheHandle::builder(MemoryStore::builder().max_bytes(64 << 20).build())
        .namespace("bench")
        .ttl(Duration::from_secs(3600))
        .build()
}

/// Wait until the spawned store task of a miss has run.
async fn until_stored(handle: &CacheHandle, stores: u64) {
    while handle.stats().stores < stores {
        tokio::task::yield_now().await;
    }
}

fn layer_benches(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("layer");

    // (a) The bare service.
    let bare = origin();
    group.bench_function("baseline", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&bare, get("/api/dashboard/ABC")).await) })
    });

    // (b) A memory hit: warmed once, then every request is answered from the entry.
    let cache = handle();
    let cached = CacheLayer::new(cache.clone()).layer(origin());
    rt.block_on(async {
        assert_eq!(x_cache(&cached, get("/api/dashboard/ABC")).await, "MISS");
        until_stored(&cache, 1).await;
        assert_eq!(x_cache(&cached, get("/api/dashboard/ABC")).await, "HIT");
    });
    group.bench_function("hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&cached, get("/api/dashboard/ABC")).await) })
    });
    let stats = cache.stats();
    assert_eq!((stats.misses, stats.stores), (1, 1), "the hit bench missed");

    // (c) A miss: the key function gives every request a key never seen before, so each one
    // looks up, leads a flight, calls the origin, records the body and stores it. The store
    // runs on a spawned task; the iteration yields once so that task runs inside the
    // measurement. At steady state each store also evicts (64 MiB budget).
    let miss_cache = handle();
    let counter = Arc::new(AtomicU64::new(0));
    let keys = counter.clone();
    let missing = CacheLayer::new(miss_cache.clone())
        .key_fn(move |_| Some(format!("miss:{}", keys.fetch_add(1, Ordering::Relaxed))))
        .layer(origin());
    rt.block_on(async {
        assert_eq!(x_cache(&missing, get("/api/dashboard/ABC")).await, "MISS");
        until_stored(&miss_cache, 1).await;
    });
    group.bench_function("miss_unique_key", |b| {
        b.to_async(&rt).iter(|| async {
            let body = drive(&missing, get("/api/dashboard/ABC")).await;
            tokio::task::yield_now().await;
            black_box(body)
        })
    });
    let stats = miss_cache.stats();
    assert_eq!(stats.hits, 0, "the miss bench hit");
    assert!(
        stats.stores + 2 >= stats.misses,
        "stores lag misses: {stats:?}"
    );
    // The same yield with the bare service, to subtract from the miss.
    group.bench_function("baseline_with_yield", |b| {
        b.to_async(&rt).iter(|| async {
            let body = drive(&bare, get("/api/dashboard/ABC")).await;
            tokio::task::yield_now().await;
            black_box(body)
        })
    });

    // (d) Requests the policy sends around the cache.
    let bypass_cache = handle();
    let bypassed = CacheLayer::new(bypass_cache.clone()).layer(origin());
    rt.block_on(async {
        assert_eq!(x_cache(&bypassed, grpc_post()).await, "BYPASS");
        assert_eq!(x_cache(&bypassed, authorized_get()).await, "BYPASS");
    });
    group.bench_function("baseline_grpc_post", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&bare, grpc_post()).await) })
    });
    group.bench_function("bypass_grpc_post", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&bypassed, grpc_post()).await) })
    });
    group.bench_function("baseline_authorized_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&bare, authorized_get()).await) })
    });
    group.bench_function("bypass_authorized_get", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(drive(&bypassed, authorized_get()).await) })
    });
    group.finish();
    let stats = bypass_cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores),
        (0, 0, 0),
        "bypasses touched the cache"
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    targets = layer_benches
}
criterion_main!(benches);
