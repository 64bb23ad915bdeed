//! A web server and a separate sync process sharing one Redis: the sync process (the
//! `invalidate` example, run as its own OS process) invalidates through Redis, and every
//! server instance stops serving what it matched: the one reading Redis, and one serving
//! from its memory fallback, which hears of it by pub/sub.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::redis::RedisServer;
use crate::support::{client, eventually, Answer, HttpClient, Origin};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_response_cache::{Backend, CacheConfig, CacheHandle, CacheLayer, MemoryStore};
use tower_response_cache::{FallbackStore, RedisStore};

const CHANNEL: &str = "tower-response-cache:invalidations";

struct Instance {
    addr: SocketAddr,
    client: HttpClient,
    handle: CacheHandle,
}

impl Instance {
    /// An application instance on `handle`, in front of the shared `origin`.
    async fn start(handle: CacheHandle, origin: &Origin) -> Instance {
        let addr = origin.serve(CacheLayer::new(handle.clone())).await;
        Instance {
            addr,
            client: client(),
            handle,
        }
    }

    async fn read(&self, path: &str) -> Answer {
        let answer = crate::support::get(&self.client, self.addr, path).await;
        assert_eq!(answer.status, 200, "{path}");
        answer
    }

    /// Read until a hit (within 5 s); `fallback` says whether it must come from the memory
    /// fallback.
    async fn warm(&self, path: &str, fallback: bool) -> Answer {
        eventually(Duration::from_secs(5), || async {
            let answer = self.read(path).await;
            let status = answer.header("cache-status");
            (answer.x_cache() == "HIT" && status.contains("fallback") == fallback).then_some(answer)
        })
        .await
        .unwrap_or_else(|| panic!("{path} never became a hit (fallback: {fallback})"))
    }
}

/// A TCP proxy in front of Redis that holds every reply for `delay`, except on connections
/// that subscribed to a channel: through it, a store's calls all miss their deadline (so it
/// falls back to memory) while its pub/sub subscription works. A slow Redis, in short.
pub(crate) async fn slow_proxy(redis_port: u16, delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((downstream, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)).await else {
                continue;
            };
            let (mut down_read, mut down_write) = downstream.into_split();
            let (mut up_read, mut up_write) = upstream.into_split();
            let subscribed = Arc::new(AtomicBool::new(false));
            let seen = subscribed.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = down_read.read(&mut buf).await {
                    if buf[..n]
                        .windows(9)
                        .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                    {
                        seen.store(true, Ordering::SeqCst);
                    }
                    if up_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            // Replies go through a delay line: each is held until `delay` after it arrived.
            let (tx, mut rx) =
                tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = up_read.read(&mut buf).await {
                    let hold = if subscribed.load(Ordering::SeqCst) {
                        Duration::ZERO
                    } else {
                        delay
                    };
                    if tx
                        .send((tokio::time::Instant::now() + hold, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((at, bytes)) = rx.recv().await {
                    tokio::time::sleep_until(at).await;
                    if down_write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn subscribers(server: &RedisServer) -> i64 {
    let (_, count): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(CHANNEL)
        .query(&mut server.connection())
        .unwrap();
    count
}

/// Run `cargo run --example invalidate -- <pattern>` as its own process, with the same
/// features and profile as this test, so it reuses what is built.
async fn invalidate_in_another_process(
    server: &RedisServer,
    namespace: &str,
    pattern: &str,
) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut command = tokio::process::Command::new(cargo);
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["run", "--quiet", "--example", "invalidate", "--features"])
        .arg(if cfg!(feature = "full") {
            "full"
        } else {
            "redis"
        });
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    command
        .arg("--")
        .arg(pattern)
        .env("REDIS_ENABLED", "true")
        .env("REDIS_URL", server.url())
        .env("CACHE_NAMESPACE", namespace)
        .env("CACHE_REDIS_TIMEOUT_MS", "1000")
        .kill_on_drop(true);
    // The first run in a fresh build directory compiles the example.
    let output = tokio::time::timeout(Duration::from_secs(300), command.output())
        .await
        .expect("the invalidate process did not finish within 300 s")
        .expect("start cargo");
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    assert!(
        output.status.success(),
        "the invalidate process failed ({}): {stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_sync_process_invalidates_every_server_instance() {
    let server = RedisServer::start();
    let origin = Origin::default();

    // The server, configured as the portal is: from the environment.
    let url = server.url();
    let vars = [
        ("REDIS_ENABLED", "true"),
        ("REDIS_URL", url.as_str()),
        ("CACHE_NAMESPACE", "portal"),
        ("CACHE_REDIS_TIMEOUT_MS", "500"),
    ];
    let config = CacheConfig::from_lookup(|name| {
        vars.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.to_string())
    })
    .unwrap();
    let a = Instance::start(config.build().await.unwrap(), &origin).await;
    assert_eq!(a.handle.backend(), Backend::Redis);

    // A second instance behind a slow link: every call misses its 50 ms deadline, so it
    // serves from its memory fallback, but its invalidation channel works.
    let proxy = slow_proxy(server.port, Duration::from_millis(200)).await;
    let slow = RedisStore::builder(format!("redis://127.0.0.1:{proxy}/0"))
        .deadline(Duration::from_millis(50))
        .build()
        .unwrap();
    let slow = FallbackStore::builder(slow, MemoryStore::new())
        .fallback_ttl(Duration::from_secs(60))
        .probe_interval(Duration::from_millis(100))
        .build()
        .await;
    let b = Instance::start(
        CacheHandle::builder(slow).namespace("portal").build(),
        &origin,
    )
    .await;
    assert_eq!(b.handle.backend(), Backend::FallingBack);

    let a_abc = a.warm("/api/dashboard/ABC", false).await;
    let a_xyz = a.warm("/api/dashboard/XYZ", false).await;
    assert_eq!(server.keys("portal:k:*").len(), 2);
    let b_abc = b.warm("/api/dashboard/ABC", true).await;
    let b_xyz = b.warm("/api/dashboard/XYZ", true).await;
    // Both instances listen before the other process speaks.
    let listening = async {
        while subscribers(&server) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), listening)
        .await
        .unwrap_or_else(|_| panic!("{} of 2 instances subscribed", subscribers(&server)));

    let removed = invalidate_in_another_process(&server, "portal", "/api/dashboard/ABC*").await;
    assert_eq!(removed, "1", "the other process removed one Redis entry");

    // The instance on Redis: ABC is fetched afresh, XYZ is still a hit.
    let abc = a.read("/api/dashboard/ABC").await;
    assert_eq!(abc.x_cache(), "MISS", "{}", abc.header("cache-status"));
    assert_ne!(abc.body, a_abc.body);
    let xyz = a.read("/api/dashboard/XYZ").await;
    assert_eq!((xyz.x_cache(), &xyz.body), ("HIT", &a_xyz.body));

    // The instance on its fallback hears it by pub/sub (asynchronously: allow it a moment).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let abc = b.read("/api/dashboard/ABC").await;
        if abc.x_cache() == "MISS" {
            assert_ne!(abc.body, b_abc.body);
            break;
        }
        assert_eq!(abc.body, b_abc.body, "only the old entry or a miss");
        assert!(
            Instant::now() < deadline,
            "the falling-back instance still serves ABC from memory: {}",
            abc.header("cache-status")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let xyz = b.read("/api/dashboard/XYZ").await;
    assert_eq!((xyz.x_cache(), &xyz.body), ("HIT", &b_xyz.body));
    assert!(xyz.header("cache-status").contains("fallback"));
}
