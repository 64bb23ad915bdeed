//! Costs below the request path: key building, the memory store, invalidation.
//!
//! - `keys/*`: a memory hit through the layer (`*_hit`) next to the bare service (`*_bare`)
//!   for no query, a short query, a long query (already normal, or unsorted with escapes to
//!   decode) and an over-long path; the growth of `hit - bare` is the cost of normalising
//!   the query and bounding the key (only the public API is reachable from here).
//! - `memory_store/*`: `Store::get` and `Store::put` on a `MemoryStore`.
//! - `invalidate/*`: `CacheHandle::invalidate` of one exact key against globs, with 10 000
//!   keys stored; `exact_distinct_absent` bans a new key each time, so young bans pile up.
//! - `hit_during_glob/*`: a memory hit (`Coordination::read_now`) among 100 000 keys, alone and
//!   while another thread runs glob invalidations over them back to back (a glob must not
//!   hold shards write-locked while it matches, or hits wait for it).
//!
//! Run with `cargo bench --bench store -- --noplot`; see BENCHMARKS.md.

use std::cell::Cell;
use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::runtime::Runtime;
use tower::{Layer, Service, ServiceExt};
use tower_response_cache::coordination::Coordination;
use tower_response_cache::{CacheHandle, CacheLayer, Entry, MemoryStore, Pattern, Store, StoreKey};

const NAMESPACE: &str = "bench";
const KEYS: usize = 10_000;

type Req = Request<Full<Bytes>>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn body() -> Bytes {
    Bytes::from(vec![b'x'; 2048])
}

fn origin(
) -> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send> + Clone + Send
{
    let body = body();
    tower::service_fn(move |_req: Req| {
        let body = body.clone();
        async move {
            let mut response = Response::new(Full::new(body));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            Ok::<_, Infallible>(response)
        }
    })
}

fn get(uri: &str) -> Req {
    Request::get(uri)
        .header(HOST, "portal.example.com")
        .header(ACCEPT, "application/json")
        .body(Full::default())
        .expect("valid request")
}

async fn drive<S>(service: &S, uri: &str) -> (String, Bytes)
where
    S: Service<Req, Response = Response<tower_response_cache::CacheBody<Full<Bytes>>>> + Clone,
    S::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(get(uri)).await.expect("infallible");
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (x_cache, body)
}

fn handle(store: &MemoryStore) -> CacheHandle {
    CacheHandle::builder(store.clone())
        .namespace(NAMESPACE)
        .ttl(Duration::from_secs(3600))
        .build()
}

fn entry() -> Arc<Entry> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Arc::new(Entry::new(
        StatusCode::OK,
        headers,
        body(),
        Duration::from_secs(3600),
    ))
}

fn key(logical: &str) -> StoreKey<'_> {
    key_in(logical, 0)
}

fn key_in(logical: &str, variant: u64) -> StoreKey<'_> {
    StoreKey {
        namespace: NAMESPACE,
        logical,
        variant,
    }
}

/// 40 pairs, about 1 KiB. `messy`: in reverse order, each with escapes of unreserved
/// characters to decode (the slow path: every pair rewritten, sorted, joined). Otherwise
/// already normal (sorted, nothing to decode), which is hashed as it is.
fn long_query(messy: bool) -> String {
    let pairs: Vec<String> = (0..40)
        .map(|i| {
            if messy {
                format!("filter_{:02}=value%2D{i}-%41BCDEFGHIJ", 39 - i)
            } else {
                format!("filter_{i:02}=value-{i}-ABCDEFGHIJ")
            }
        })
        .collect();
    pairs.join("&")
}

/// Put `keys` under `variant`. Keys put back after an invalidation use a new variant each
/// time: the memory store's eviction queue keeps one reference per put, and drops only those
/// whose (key, variant) is gone, so putting back under the same variant would pile up
/// references (see BENCHMARKS.md) and time that instead.
async fn put_all(store: &MemoryStore, entry: &Arc<Entry>, keys: &[&String], variant: u64) {
    for k in keys {
        store
            .put_checked(key_in(k, variant), entry.clone(), store.write_token())
            .await
            .unwrap();
    }
}

fn key_benches(c: &mut Criterion) {
    let rt = runtime();
    let store = MemoryStore::builder().max_bytes(64 << 20).build();
    let cache = handle(&store);
    let bare = origin();
    let service = CacheLayer::new(cache.clone()).layer(origin());
    let long_path = format!("/api/reports/{}", "segment/".repeat(90));
    let uris = [
        ("no_query", "/api/dashboard/ABC".to_owned()),
        ("short_query", "/api/dashboard/ABC?page=1".to_owned()),
        (
            "long_query_normal",
            format!("/api/dashboard/ABC?{}", long_query(false)),
        ),
        (
            "long_query_messy",
            format!("/api/dashboard/ABC?{}", long_query(true)),
        ),
        ("long_path", long_path),
    ];
    let mut group = c.benchmark_group("keys");
    for (name, uri) in &uris {
        rt.block_on(async {
            let stores = cache.stats().stores;
            assert_eq!(drive(&service, uri).await.0, "MISS");
            while cache.stats().stores == stores {
                tokio::task::yield_now().await;
            }
            assert_eq!(drive(&service, uri).await.0, "HIT", "{name}");
        });
        // The same request to the bare service: building and parsing the URI is in both.
        group.bench_function(format!("{name}_bare"), |b| {
            b.to_async(&rt).iter(|| async {
                let response = bare.clone().oneshot(get(uri)).await.expect("infallible");
                black_box(
                    response
                        .into_body()
                        .collect()
                        .await
                        .expect("body")
                        .to_bytes(),
                )
            })
        });
        group.bench_function(format!("{name}_hit"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(drive(&service, uri).await) })
        });
    }
    group.finish();
    assert_eq!(cache.stats().misses, uris.len() as u64);
}

fn store_benches(c: &mut Criterion) {
    let rt = runtime();
    let store = MemoryStore::builder().max_bytes(64 << 20).build();
    let entry = entry();
    rt.block_on(async {
        store
            .put_checked(
                key("/api/dashboard/ABC"),
                entry.clone(),
                store.write_token(),
            )
            .await
            .unwrap()
    });
    let mut group = c.benchmark_group("memory_store");
    group.bench_function("get_hit", |b| {
        b.to_async(&rt).iter(|| async {
            let found = store.get(key("/api/dashboard/ABC")).await.unwrap();
            black_box(found.expect("stored"))
        })
    });
    group.bench_function("get_miss", |b| {
        b.to_async(&rt).iter(|| async {
            let found = store.get(key("/api/dashboard/XYZ")).await.unwrap();
            black_box(found.is_none())
        })
    });
    // A new key per put, 2 KiB entries in a 64 MiB budget: past ~28 000 keys each put evicts.
    let distinct = MemoryStore::builder().max_bytes(64 << 20).build();
    let mut n = 0u64;
    group.bench_function("put_distinct_keys", |b| {
        b.to_async(&rt).iter(|| {
            n += 1;
            let logical = format!("/api/item/{n}");
            let (distinct, entry) = (&distinct, &entry);
            async move {
                distinct
                    .put_checked(key(&logical), entry.clone(), distinct.write_token())
                    .await
                    .unwrap()
            }
        })
    });
    group.finish();
    assert_eq!(store.stats().entries, 1);
    assert!(distinct.stats().bytes <= 64 << 20);

    // Replacing one key n times on a fresh store. The eviction queue gains a reference per
    // put that is not dropped while the key is stored; past 2 × entries + 1 024 references
    // every put scans the whole queue, so the cost per put grows with n (see BENCHMARKS.md).
    let mut group = c.benchmark_group("memory_store_replace");
    group.sampling_mode(SamplingMode::Flat).sample_size(10);
    for n in [1_000u64, 2_000] {
        group.throughput(Throughput::Elements(n));
        group.bench_function(format!("same_key_x{n}"), |b| {
            b.to_async(&rt).iter(|| {
                let entry = &entry;
                async move {
                    let fresh = MemoryStore::builder().max_bytes(64 << 20).build();
                    for _ in 0..n {
                        fresh
                            .put_checked(
                                key("/api/dashboard/ABC"),
                                entry.clone(),
                                fresh.write_token(),
                            )
                            .await
                            .unwrap();
                    }
                    fresh
                }
            })
        });
    }
    group.finish();
}

fn invalidate_benches(c: &mut Criterion) {
    let rt = runtime();
    let store = MemoryStore::builder().max_bytes(256 << 20).build();
    let cache = handle(&store);
    let entry = entry();
    let logical: Vec<String> = (0..KEYS).map(|i| format!("/api/dashboard/{i}")).collect();
    rt.block_on(put_all(
        &store,
        &entry,
        &logical.iter().collect::<Vec<_>>(),
        0,
    ));
    assert_eq!(store.stats().entries, KEYS as u64);
    let variant = Cell::new(0u64);

    let mut group = c.benchmark_group("invalidate_10k_keys");
    // One stored key removed per iteration, then put back (untimed).
    let exact = &logical[KEYS / 2];
    group.bench_function("exact_present", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (cache, store, entry, variant) = (&cache, &store, &entry, &variant);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let removed = cache.invalidate(exact).await.unwrap();
                    total += start.elapsed();
                    assert_eq!(removed, 1);
                    variant.set(variant.get() + 1);
                    put_all(store, entry, &[exact], variant.get()).await;
                }
                total
            }
        })
    });
    group.bench_function("exact_absent", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.invalidate("/api/dashboard/none").await.unwrap()) })
    });
    // A new absent key each time: young exact bans pile up (tens of thousands over a run),
    // as under a flood of unsafe requests; recording one must stay O(1).
    let distinct = Cell::new(0u64);
    group.bench_function("exact_distinct_absent", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (cache, distinct) = (&cache, &distinct);
            async move {
                let keys: Vec<String> = (0..iters)
                    .map(|_| {
                        distinct.set(distinct.get() + 1);
                        format!("/api/flood/{}", distinct.get())
                    })
                    .collect();
                let start = Instant::now();
                for key in &keys {
                    black_box(cache.invalidate(key).await.unwrap());
                }
                start.elapsed()
            }
        })
    });
    group.bench_function("glob_matching_none", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(cache.invalidate("/api/other/*").await.unwrap()) })
    });
    // `/api/dashboard/12*`: 12, 120-129, 1200-1299; put back (untimed) after each removal.
    let some: Vec<&String> = logical
        .iter()
        .filter(|k| k.starts_with("/api/dashboard/12"))
        .collect();
    group.bench_function("glob_matching_111", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (cache, store, entry, some, variant) = (&cache, &store, &entry, &some, &variant);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let removed = cache.invalidate("/api/dashboard/12*").await.unwrap();
                    total += start.elapsed();
                    assert_eq!(removed, some.len() as u64);
                    variant.set(variant.get() + 1);
                    put_all(store, entry, some, variant.get()).await;
                }
                total
            }
        })
    });
    group.finish();
    // Every removed key was put back.
    assert_eq!(store.stats().entries, KEYS as u64);
}

fn hit_during_glob_benches(c: &mut Criterion) {
    const MANY: usize = 100_000;
    let rt = runtime();
    let store = MemoryStore::builder().max_bytes(1 << 30).build();
    let entry = entry();
    let logical: Vec<String> = (0..MANY).map(|i| format!("/api/dashboard/{i}")).collect();
    rt.block_on(put_all(
        &store,
        &entry,
        &logical.iter().collect::<Vec<_>>(),
        0,
    ));
    let mut group = c.benchmark_group("hit_during_glob");
    let hit = |b: &mut criterion::Bencher| {
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 7919) % MANY;
            black_box(store.read_now(key(&logical[i]), &mut |v| {
                black_box(v);
            }))
        })
    };
    group.bench_function("alone", hit);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scanner = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = runtime();
            let none = Pattern::new("/api/other/*");
            let mut scans = 0u64;
            // At least one scan, even when the bench is run once as a test.
            loop {
                rt.block_on(store.invalidate(NAMESPACE, &none)).unwrap();
                scans += 1;
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    return scans;
                }
            }
        })
    };
    group.bench_function("while_globs_scan", hit);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scans = scanner.join().unwrap();
    group.finish();
    assert!(scans > 0, "the scanner never ran");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = key_benches, store_benches, invalidate_benches, hit_during_glob_benches
}
criterion_main!(benches);
