//! What fleet-wide single flight adds to a plain miss: the time of the one call it makes
//! (`fleet_turn`, a `SET NX PX` in a script) next to the two a miss makes anyway (the
//! write token's `MGET` and the lookup), on the Redis at `REDIS_URL`, 2 000 fresh keys a
//! round, three rounds.
//!
//! ```sh
//! redis-server --port 6390 --save '' &
//! REDIS_URL=redis://127.0.0.1:6390 cargo run --release --features redis --example fleet_turn_cost
//! ```

use std::time::Instant;

use tower_response_cache::{RedisStore, Store, StoreKey};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let store = RedisStore::builder(url).build()?;
    store.ping().await?;
    let coordination = store.coordination().ok_or("a Redis store coordinates")?;
    for round in 0..3 {
        let (mut turn, mut token, mut get) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..2000u64 {
            let logical = format!("/fleet-cost/{round}/{i}");
            let started = Instant::now();
            coordination.current_write_token().await?;
            token.push(started.elapsed().as_micros());
            let key = StoreKey {
                namespace: "fleet-cost",
                logical: &logical,
                variant: i,
            };
            let started = Instant::now();
            store.get(key).await?;
            get.push(started.elapsed().as_micros());
            let started = Instant::now();
            coordination.fleet_turn("fleet-cost", &logical, b"").await?;
            turn.push(started.elapsed().as_micros());
        }
        for times in [&mut turn, &mut token, &mut get] {
            times.sort_unstable();
        }
        let (p50, p99) = (1000, 1980);
        println!(
            "round {round}: fleet_turn p50 {} µs p99 {} µs | write token p50 {} µs p99 {} µs | lookup p50 {} µs p99 {} µs",
            turn[p50], turn[p99], token[p50], token[p99], get[p50], get[p99]
        );
    }
    Ok(())
}
