//! What a Redis hit costs next to one raw Redis call of the same bytes, in one run: a
//! `CacheLayer` on a `RedisStore` answering `GET /page` (a hit: one `HMGET` of the index
//! and the value) against a raw `GET` of the same body on its own connection. Sequential
//! requests, alternating rounds; prints the mean µs of each and their ratio, and the Redis
//! commands per hit from `INFO commandstats`.
//!
//! ```sh
//! cargo run --release --features redis --example redis_hit_cost -- redis://127.0.0.1:6379/0
//! ```

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};
use tower_response_cache::{CacheHandle, CacheLayer, RedisStore};

const BODY: usize = 16 * 1024;
const HITS: u32 = 5_000;

fn commands(url: &str) -> Vec<(String, u64)> {
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut connection)
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            Some((name.to_owned(), rest.split(',').next()?.parse().ok()?))
        })
        .collect()
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let body = Bytes::from(vec![b'x'; BODY]);
    let store = RedisStore::builder(url.as_str()).build().unwrap();
    let handle = CacheHandle::builder(store)
        .namespace("hitcost")
        .ttl(Duration::from_secs(600))
        .build();
    let origin_body = body.clone();
    let service =
        CacheLayer::new(handle.clone()).layer(service_fn(move |_: Request<Full<Bytes>>| {
            let body = origin_body.clone();
            async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
        }));
    let get = || {
        let service = service.clone();
        async move {
            let request = Request::get("/page").body(Full::default()).unwrap();
            let response = service.oneshot(request).await.unwrap();
            let hit = response.headers()["x-cache"] == "HIT";
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.len(), BODY);
            hit
        }
    };
    // Warm: the first answer is a miss, stored off the response path.
    get().await;
    while !get().await {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg("hitcost:raw")
        .arg(body.as_ref())
        .query_async(&mut raw)
        .await
        .unwrap();

    let (mut cached, mut direct) = (Duration::MAX, Duration::MAX);
    let before = commands(&url);
    for _ in 0..3 {
        let started = Instant::now();
        for _ in 0..HITS {
            assert!(get().await, "not a hit");
        }
        cached = cached.min(started.elapsed());
        let started = Instant::now();
        for _ in 0..HITS {
            let bytes: Vec<u8> = redis::cmd("GET")
                .arg("hitcost:raw")
                .query_async(&mut raw)
                .await
                .unwrap();
            assert_eq!(bytes.len(), BODY);
        }
        direct = direct.min(started.elapsed());
    }
    let after = commands(&url);
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(HITS);
    println!(
        "redis hit {:.1} µs, raw GET {:.1} µs, ratio {:.2} (best of 3 rounds of {HITS}, {BODY} B body)",
        per(cached),
        per(direct),
        cached.as_secs_f64() / direct.as_secs_f64()
    );
    let hits = f64::from(3 * HITS);
    for (name, calls) in &after {
        let was = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, c)| *c);
        let delta = calls - was;
        if delta > 0 && name != "info" {
            println!("  {name}: {:.3} per hit", delta as f64 / hits);
        }
    }
}
