//! How long `invalidate` takes with near caches holding leases, against the lease: one
//! store with a near cache of each lease holds it (and acknowledges every invalidation),
//! another (no near cache, as a sync process) invalidates one key again and again; then a
//! process that advertises a 200 ms lease and never answers (as a stopped one) is planted
//! in the lease set. Prints p50/p99 per row as JSON lines.
//!
//! ```sh
//! cargo run --release --features redis --example near_latency -- redis://127.0.0.1:6379/0
//! ```

use std::time::{Duration, Instant};

use tower_response_cache::RedisStore;
use tower_response_cache::{Pattern, Store};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned());
    let rounds: usize = std::env::var("NEAR_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let invalidator = RedisStore::builder(url.as_str()).build()?;
    let pattern = Pattern::new("/near-latency");
    // A round trip, for scale.
    let started = Instant::now();
    for _ in 0..100 {
        invalidator.ping().await?;
    }
    let rtt = started.elapsed() / 100;
    let measure = |label: String| {
        let invalidator = &invalidator;
        let pattern = &pattern;
        async move {
            let mut took = Vec::with_capacity(rounds);
            for _ in 0..rounds {
                let started = Instant::now();
                invalidator.invalidate("near", pattern).await?;
                took.push(started.elapsed());
            }
            took.sort_unstable();
            let at =
                |q: usize| took[(took.len() * q / 100).min(took.len() - 1)].as_secs_f64() * 1e3;
            println!(
                "{{\"holder\":\"{label}\",\"rounds\":{rounds},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2},\"rtt_ms\":{:.3}}}",
                at(50),
                at(99),
                took.last().unwrap().as_secs_f64() * 1e3,
                rtt.as_secs_f64() * 1e3
            );
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };
    for lease_ms in [0u64, 50, 200] {
        let holder = (lease_ms > 0)
            .then(|| {
                RedisStore::builder(url.as_str())
                    .near_cache(Duration::from_millis(lease_ms), 1 << 20)
                    .build()
            })
            .transpose()?;
        // Let the holder subscribe and advertise.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let label = match lease_ms {
            0 => "none".to_owned(),
            ms => format!("lease {ms} ms, acknowledging"),
        };
        measure(label).await?;
        // A dropped store withdraws its advertisement.
        drop(holder);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A process that advertises a lease and never acknowledges: waited out every time.
    let mut admin = redis::Client::open(url.as_str())?
        .get_multiplexed_async_connection()
        .await?;
    let expires = u64::MAX / 4;
    let _: () = redis::cmd("ZADD")
        .arg("tower-response-cache:near:leases")
        .arg(expires)
        .arg("200:00000000deadbeef")
        .query_async(&mut admin)
        .await?;
    measure("lease 200 ms, silent".to_owned()).await?;
    let _: () = redis::cmd("DEL")
        .arg("tower-response-cache:near:leases")
        .query_async(&mut admin)
        .await?;
    Ok(())
}
