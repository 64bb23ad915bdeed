//! A fleet of portal *processes* on one Redis, the separate `sync` process syncing one
//! company while readers on every instance read its dashboard: with fleet-wide single
//! flight the database answers each sync's dashboard query once for the whole fleet; with
//! it off, about once per instance.
#![cfg(feature = "redis")]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

// The library's Redis harness: one file, self-contained, shared rather than copied.
#[allow(dead_code)] // only `start` and `url` are needed here
#[path = "../../../tests/support/redis.rs"]
mod redis_support;

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// Syncs per run: each one invalidates the dashboard every instance is reading.
const SYNCS: u64 = 8;
const INSTANCES: usize = 3;

mod common;
use common::TempDb;

/// One `portal` process (the very binary `cargo run -p portal` runs), killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A `GET` of `path` from the instance at `addr`, as a load balancer forwards it: with the
/// fleet's public `Host` (the host is part of the key), whichever instance answers.
async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Option<(StatusCode, Bytes)> {
    let request = hyper::Request::get(format!("http://{addr}{path}"))
        .header(hyper::header::HOST, "portal.example")
        .body(Empty::new())
        .unwrap();
    let response = client.request(request).await.ok()?;
    let status = response.status();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, body))
}

async fn json(client: &HttpClient, addr: SocketAddr, path: &str) -> Value {
    let (status, body) = get(client, addr, path).await.expect("the portal answers");
    assert_eq!(status, StatusCode::OK, "{path}");
    serde_json::from_slice(&body).unwrap()
}

impl Instance {
    async fn start(db: &Path, redis: &str, lease_ms: &str, client: &HttpClient) -> Instance {
        let addr = free_addr();
        let child = Command::new(env!("CARGO_BIN_EXE_portal"))
            .env("PORTAL_DB", db)
            .env("PORTAL_ADDR", addr.to_string())
            .env("PORTAL_SEED_VOUCHERS", "20000")
            .env("PORTAL_SYNC_INTERVAL_SECS", "0")
            .env("PORTAL_CACHE", "on")
            .env("REDIS_ENABLED", "true")
            .env("REDIS_URL", redis)
            // A debug build on a busy machine: no spurious fallback.
            .env("CACHE_REDIS_TIMEOUT_MS", "500")
            .env("CACHE_FLEET_LEASE_MS", lease_ms)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the portal binary");
        let instance = Instance { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((StatusCode::OK, body)) = get(client, addr, "/health").await {
                let health: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(health["cache"]["backend"], "redis", "{health}");
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "the portal on {addr} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stores(&self, client: &HttpClient) -> u64 {
        json(client, self.addr, "/api/cache/stats").await["stores"]
            .as_u64()
            .unwrap()
    }
}

/// Stores summed over `instances` once they reach `at_least` and none lands for 300 ms.
async fn settled_stores(instances: &[Instance], client: &HttpClient, at_least: u64) -> u64 {
    let total = || async {
        let mut total = 0;
        for instance in instances {
            total += instance.stores(client).await;
        }
        total
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = total().await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = total().await;
        if now == last && now >= at_least {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "stores did not settle at {at_least} or more: {now}"
        );
        last = now;
    }
}

/// Run the `sync` binary for `guid`, as an operator would.
async fn sync(db: &Path, redis: &str, guid: &str) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_sync"))
        .arg(guid)
        .env("PORTAL_DB", db)
        .env("PORTAL_CACHE", "on")
        .env("PORTAL_URL", "http://127.0.0.1:9")
        .env("REDIS_ENABLED", "true")
        .env("REDIS_URL", redis)
        .env("CACHE_REDIS_TIMEOUT_MS", "1000")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output()
        .await
        .expect("start the sync binary");
    assert!(
        output.status.success(),
        "the sync process failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Origin fetches of the dashboard per sync, summed over `INSTANCES` portal processes
/// with two readers each, with fleet-wide single flight's lease set to `lease_ms`.
async fn fetches_per_sync(lease_ms: &str) -> (u64, u64) {
    let redis = redis_support::RedisServer::start();
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let db = TempDb::new("fleet");
    // The first instance seeds the database; the others open it.
    let mut instances = vec![Instance::start(&db.0, &redis.url(), lease_ms, &client).await];
    for _ in 1..INSTANCES {
        instances.push(Instance::start(&db.0, &redis.url(), lease_ms, &client).await);
    }
    let companies = json(&client, instances[0].addr, "/api/companies").await;
    let guid = companies["companies"][0]["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/api/dashboard/{guid}");
    for instance in &instances {
        json(&client, instance.addr, &path).await;
    }
    // Let the first store land everywhere before counting.
    let before = settled_stores(&instances, &client, 1).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for instance in &instances {
        for _ in 0..2 {
            let (client, addr, path, stop) =
                (client.clone(), instance.addr, path.clone(), stop.clone());
            readers.push(tokio::spawn(async move {
                let mut failed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match get(&client, addr, &path).await {
                        Some((StatusCode::OK, _)) => {}
                        _ => failed += 1,
                    }
                }
                failed
            }));
        }
    }
    let mut stored = before;
    for _ in 0..SYNCS {
        sync(&db.0, &redis.url(), &guid).await;
        // Every instance's readers miss, and the fleet's fetches land (however long a busy
        // machine takes) before the next sync.
        stored = settled_stores(&instances, &client, stored + 1).await;
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert_eq!(reader.await.unwrap(), 0, "a read failed");
    }
    let after = settled_stores(&instances, &client, stored).await;
    drop(instances);
    (after - before, SYNCS)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_of_portal_processes_queries_the_database_once_per_sync() {
    let (on, syncs) = fetches_per_sync("2000").await;
    eprintln!("fleet single flight on: {on} dashboard fetches for {syncs} syncs");
    assert_eq!(
        on, syncs,
        "one dashboard query per sync for the whole fleet"
    );
    // The control: each instance fetches for itself.
    let (off, syncs) = fetches_per_sync("0").await;
    eprintln!("fleet single flight off: {off} dashboard fetches for {syncs} syncs");
    assert!(
        off > on,
        "with the lease off, {INSTANCES} instances fetched {off} times for {syncs} syncs"
    );
}
