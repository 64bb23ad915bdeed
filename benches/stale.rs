//! What a client waits for when an entry is stale and the origin is slow: a
//! stale-while-revalidate hit should cost what a fresh hit costs, not the origin's delay.
//!
//! `cargo bench --bench stale -- --noplot`

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

type Req = Request<Full<Bytes>>;

/// The origin takes 20 ms per answer (a slow dashboard query, scaled down).
const ORIGIN_DELAY: Duration = Duration::from_millis(20);

fn slow_origin(
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send
{
    tower::service_fn(|_req: Req| async {
        tokio::time::sleep(ORIGIN_DELAY).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(vec![b'x'; 2048]))))
    })
}

fn get() -> Req {
    Request::get("/api/dashboard/ABC")
        .header("host", "portal.example.com")
        .body(Full::default())
        .unwrap()
}

async fn drive<S>(service: &S) -> String
where
    S: Service<Req, Response = Response<tower_response_cache::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(get()).await.unwrap();
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    response.into_body().collect().await.unwrap();
    x_cache
}

fn stale_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("stale_vs_fresh");
    group.measurement_time(Duration::from_secs(4));

    // Fresh: a one-hour TTL, warmed once.
    let fresh = CacheLayer::new(CacheHandle::in_memory()).layer(slow_origin());
    rt.block_on(async {
        drive(&fresh).await;
        while drive(&fresh).await != "HIT" {
            tokio::task::yield_now().await;
        }
    });
    group.bench_function("fresh_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { assert_eq!(drive(&fresh).await, "HIT") })
    });

    // Stale: TTL zero with a long stale-while-revalidate window, so every read finds the
    // entry stale and (at most one at a time) a background refresh runs against the origin.
    let handle = CacheHandle::builder(MemoryStore::new())
        .ttl(Duration::ZERO)
        .stale_while_revalidate(Duration::from_secs(3600))
        .build();
    let stale = CacheLayer::new(handle.clone()).layer(slow_origin());
    rt.block_on(async {
        drive(&stale).await;
        while drive(&stale).await != "STALE" {
            tokio::task::yield_now().await;
        }
    });
    group.bench_function("stale_while_revalidate_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { assert_eq!(drive(&stale).await, "STALE") })
    });

    // The alternative without a stale window: every expired read waits for the origin.
    let expired = CacheLayer::new(
        CacheHandle::builder(MemoryStore::new())
            .ttl(Duration::ZERO)
            .build(),
    )
    .layer(slow_origin());
    group.sample_size(20);
    group.bench_function("expired_miss_waits_for_origin", |b| {
        b.to_async(&rt)
            .iter(|| async { assert_eq!(drive(&expired).await, "MISS") })
    });
    group.finish();
    let stats = handle.stats();
    println!(
        "stale bench: {} stale answers, {} refreshes stored",
        stats.stale, stats.stores
    );
}

criterion_group!(benches, stale_benches);
criterion_main!(benches);
