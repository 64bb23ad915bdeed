//! Redis under a small `maxmemory`: with `allkeys-lfu` it evicts and the cache keeps
//! writing; with `noeviction` it refuses writes (requests still succeed) and the store says
//! so in a warning at connect.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::{client, eventually, get, Origin};
use tower_response_cache::{CacheHandle, CacheLayer, RedisStore};

/// Log lines written while the guard lives (this thread's tasks only).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

const WARNING: &str = "maxmemory-policy noeviction";

/// 200 responses of 20 KB (4 MB, twice the 2 MB `maxmemory`) through a Redis-backed layer;
/// returns the handle after checking every answer.
async fn flood(server: &RedisServer) -> CacheHandle {
    let redis = RedisStore::builder(server.url())
        .deadline(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = CacheHandle::builder(redis).namespace("mm").build();
    let origin = Origin::default();
    let addr = origin.serve(CacheLayer::new(handle.clone())).await;
    let client = client();
    for i in 0..200 {
        let answer = get(
            &client,
            addr,
            &format!("/big/{i}?size=20000&cc=max-age=600"),
        )
        .await;
        assert_eq!(answer.status, 200, "request {i}");
        assert_eq!(answer.body.len(), 20_000, "request {i}");
    }
    handle
}

#[tokio::test]
async fn with_allkeys_lfu_writes_past_maxmemory_keep_working() {
    let (logs, _guard) = capture();
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lfu"]);
    let handle = flood(&server).await;
    let stats = handle.stats();
    assert_eq!(stats.store_errors, 0, "{stats:?}");
    assert_eq!(stats.stores, 200, "{stats:?}");
    // Redis evicted to stay within 2 MB: fewer than the 200 entries written are left.
    let left = server.keys("mm:k:*").len();
    assert!(left < 200, "{left} entries left");
    assert!(left > 0);
    assert!(!logs.text().contains(WARNING), "{}", logs.text());
}

#[tokio::test]
async fn with_noeviction_writes_fail_and_the_store_warns_at_connect() {
    let (logs, _guard) = capture();
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]);
    let handle = flood(&server).await;
    // Every request was answered (checked by `flood`), but Redis refused the writes past
    // its limit: the reason for the warning.
    assert!(handle.stats().store_errors > 0, "{:?}", handle.stats());
    let warned = eventually(Duration::from_secs(5), || async {
        logs.text().contains(WARNING)
    })
    .await;
    assert!(warned, "no warning in: {}", logs.text());
}
