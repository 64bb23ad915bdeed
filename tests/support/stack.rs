//! The plumbing of the Redis fault tests (`faults`, `bad_data`, `hardening`): a real
//! redis-server, a fallback store on it, an axum server caching through it, an origin that
//! counts its calls, and checks that every answer is right and in time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower_response_cache::{Backend, CacheHandle, CacheLayer, MemoryStore};
use tower_response_cache::{FallbackStore, FallbackStoreBuilder, RedisStore, RedisStoreBuilder};

use super::redis::RedisServer;
use super::{client, eventually, Answer, HttpClient, Origin};

/// The per-call Redis deadline of the timing tests.
pub const DEADLINE: Duration = Duration::from_millis(50);
/// What "not much longer than the deadline" means for one whole HTTP request on a loaded
/// CI machine.
pub const BOUND: Duration = Duration::from_secs(1);
/// A generous deadline for tests about what happens, not how fast: a slow CI machine must
/// not open the circuit behind their back.
pub const RELAXED: Duration = Duration::from_millis(500);

/// A redis-server, a fallback store on it, and an axum server caching through it.
pub struct Stack {
    pub server: RedisServer,
    pub store: FallbackStore,
    pub handle: CacheHandle,
    pub origin: Origin,
    pub addr: SocketAddr,
    pub client: HttpClient,
}

impl Stack {
    /// Deadline [`DEADLINE`], probe every 100 ms, the rest as `configure` says.
    pub async fn start(
        server: RedisServer,
        configure: impl FnOnce(FallbackStoreBuilder) -> FallbackStoreBuilder,
    ) -> Stack {
        let url = server.url();
        Self::start_at(server, &url, DEADLINE, configure).await
    }

    pub async fn start_at(
        server: RedisServer,
        url: &str,
        deadline: Duration,
        configure: impl FnOnce(FallbackStoreBuilder) -> FallbackStoreBuilder,
    ) -> Stack {
        Self::start_with(server, url, deadline, |r| r, configure).await
    }

    /// [`start_at`](Self::start_at), with the Redis store configured by `redis` too.
    pub async fn start_with(
        server: RedisServer,
        url: &str,
        deadline: Duration,
        redis: impl FnOnce(RedisStoreBuilder) -> RedisStoreBuilder,
        configure: impl FnOnce(FallbackStoreBuilder) -> FallbackStoreBuilder,
    ) -> Stack {
        let redis = redis(RedisStore::builder(url).deadline(deadline))
            .build()
            .unwrap();
        let builder = FallbackStore::builder(redis, MemoryStore::new())
            .probe_interval(Duration::from_millis(100));
        let store = configure(builder).build().await;
        let handle = CacheHandle::builder(store.clone())
            .namespace("t")
            .ttl(Duration::from_secs(3600))
            .build();
        let origin = Origin::default();
        let addr = serve_origin(&origin, &handle).await;
        Stack {
            server,
            store,
            handle,
            origin,
            addr,
            client: client(),
        }
    }

    /// One GET, which must answer 200 with the origin's body for `path` within [`BOUND`].
    pub async fn read(&self, path: &str) -> Answer {
        let started = Instant::now();
        let answer = try_get(&self.client, self.addr, path)
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        check(path, &answer, started.elapsed()).unwrap_or_else(|e| panic!("{e}"));
        answer
    }

    /// Read `path` until it is a hit served from Redis (within 5 s); that hit.
    pub async fn warm(&self, path: &str) -> Answer {
        eventually(Duration::from_secs(5), || async {
            let answer = self.read(path).await;
            (answer.x_cache() == "HIT" && !served_by_fallback(&answer)).then_some(answer)
        })
        .await
        .unwrap_or_else(|| panic!("{path} never became a Redis hit"))
    }

    pub fn backend(&self) -> Backend {
        self.handle.backend()
    }

    pub async fn wait_for_backend(&self, backend: Backend, within: Duration, why: &str) {
        let reached = eventually(within, || async { self.backend() == backend }).await;
        assert!(
            reached,
            "{why}: backend still {:?} after {within:?}",
            self.backend()
        );
    }

    /// Wait until Redis holds an entry for `path` (they are written off the response path).
    pub async fn wait_stored_in_redis(&self, path: &str) {
        let key = format!("t:k:{path}");
        let stored = eventually(Duration::from_secs(5), || async {
            !self.server.keys(&key).is_empty()
        })
        .await;
        assert!(stored, "{key} never appeared in Redis");
    }
}

pub async fn serve_origin(origin: &Origin, handle: &CacheHandle) -> SocketAddr {
    origin.serve(CacheLayer::new(handle.clone())).await
}

pub async fn try_get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Answer, String> {
    let request = http::Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let exchange = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
}

/// 200, the origin's body for this path, within [`BOUND`].
pub fn check(path: &str, answer: &Answer, took: Duration) -> Result<(), String> {
    if answer.status != 200 {
        return Err(format!("GET {path}: status {}", answer.status));
    }
    if !answer.text().starts_with(&format!("{path} #")) {
        return Err(format!("GET {path}: unexpected body {:?}", answer.text()));
    }
    if took >= BOUND {
        return Err(format!("GET {path}: took {took:?} (bound {BOUND:?})"));
    }
    Ok(())
}

pub fn served_by_fallback(answer: &Answer) -> bool {
    answer.header("cache-status").contains("fallback")
}

/// Blocking harness calls (kill, restart) off the async workers' backs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

pub async fn get_checked(client: &HttpClient, addr: SocketAddr, path: &str) -> Answer {
    let started = Instant::now();
    let answer = try_get(client, addr, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    check(path, &answer, started.elapsed()).unwrap_or_else(|e| panic!("{e}"));
    answer
}

pub async fn relaxed_stack() -> Stack {
    let server = RedisServer::start();
    let url = server.url();
    Stack::start_at(server, &url, RELAXED, |b| b).await
}
