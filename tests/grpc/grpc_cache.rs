//! `GrpcCacheLayer` between a real tonic client and server on a loopback port, in front of
//! the gRPC health service (`Check` is unary, `Watch` streams).
//!
//! Between the cache layer and the service sits an origin counter: every assertion on what
//! the cache did is an assertion on how many calls reached the service, so a rule that
//! breaks fails a count, whatever the headers say. The counter can also hold calls (to
//! race them with invalidations) and answer like a failing service (a message, then
//! trailers with a non-zero `grpc-status`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use http_body_util::StreamBody;
use tonic::body::Body;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::{Layer, Service};
use tower_response_cache::{CacheHandle, GrpcCacheLayer, MemoryStore};

use crate::support::eventually;

const CHECK: &str = "/grpc.health.v1.Health/Check";
const WATCH: &str = "/grpc.health.v1.Health/Watch";
const SERVICE: &str = "portal.Sync";
const WAIT: Duration = Duration::from_secs(5);

/// The gRPC counterpart of the support module's HTTP origin: a layer in front of the
/// health service that counts the calls reaching it, per method path.
#[derive(Clone, Default)]
struct Origin {
    calls: Arc<Mutex<HashMap<String, usize>>>,
    /// Answer every call with a message and then `grpc-status: 14` (UNAVAILABLE).
    fail_after_message: Arc<AtomicBool>,
    /// Calls wait for a read lock before reaching the service: a test holding the write
    /// lock holds them.
    gate: Arc<tokio::sync::RwLock<()>>,
}

impl Origin {
    fn calls(&self, path: &str) -> usize {
        self.calls.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    async fn wait_for_calls(&self, path: &str, n: usize) {
        let reached = eventually(WAIT, || async { self.calls(path) >= n }).await;
        assert!(reached, "{n} calls of {path} reached the origin in time");
    }
}

impl<S> Layer<S> for Origin {
    type Service = Counted<S>;

    fn layer(&self, inner: S) -> Counted<S> {
        Counted {
            inner,
            origin: self.clone(),
        }
    }
}

#[derive(Clone)]
struct Counted<S> {
    inner: S,
    origin: Origin,
}

type BoxFuture<T, E> = Pin<Box<dyn std::future::Future<Output = Result<T, E>> + Send>>;

impl<S> Service<http::Request<Body>> for Counted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        *self
            .origin
            .calls
            .lock()
            .unwrap()
            .entry(request.uri().path().to_owned())
            .or_default() += 1;
        let origin = self.origin.clone();
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _pass = origin.gate.read().await;
            if origin.fail_after_message.load(Ordering::SeqCst) {
                return Ok(failing_answer());
            }
            inner.call(request).await
        })
    }
}

/// A `HealthCheckResponse { status: SERVING }` message, then `grpc-status: 14`.
fn failing_answer() -> http::Response<Body> {
    let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("14"));
    trailers.insert("grpc-message", HeaderValue::from_static("try%20later"));
    let frames = vec![
        Ok::<_, Infallible>(Frame::data(message)),
        Ok(Frame::trailers(trailers)),
    ];
    http::Response::builder()
        .header("content-type", "application/grpc")
        .body(Body::new(StreamBody::new(stream::iter(frames))))
        .unwrap()
}

struct Running {
    addr: SocketAddr,
    cache: CacheHandle,
    reporter: HealthReporter,
    origin: Origin,
}

fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::new())
        .namespace("grpc-test")
        .ttl(Duration::from_secs(60))
        .build()
}

/// The health service behind `layer(cache)` and the origin counter, on a free port.
async fn start(layer: impl FnOnce(GrpcCacheLayer) -> GrpcCacheLayer) -> Running {
    start_on(cache(), layer).await
}

async fn start_on(
    cache: CacheHandle,
    layer: impl FnOnce(GrpcCacheLayer) -> GrpcCacheLayer,
) -> Running {
    let origin = Origin::default();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let router = Server::builder()
        .layer(layer(
            GrpcCacheLayer::new(cache.clone())
                .cache_status_detail(tower_response_cache::CacheStatusDetail::Full),
        ))
        .layer(origin.clone())
        .add_service(health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));
    Running {
        addr,
        cache,
        reporter,
        origin,
    }
}

/// Check and Watch opted in.
fn both(layer: GrpcCacheLayer) -> GrpcCacheLayer {
    layer.method(CHECK).method(WATCH)
}

impl Running {
    async fn client(&self) -> HealthClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
    }
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

fn meta(metadata: &MetadataMap, name: &str) -> String {
    metadata
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// A unary check: its status, `x-cache`, `cache-status` and `grpc-status` (from the
/// trailers, which tonic merges into a unary response's metadata).
#[derive(Debug)]
struct Checked {
    status: Wire,
    x_cache: String,
    cache_status: String,
    grpc_status: String,
}

async fn check(client: &mut HealthClient<Channel>, service: &str) -> Checked {
    let response = client.check(request(service)).await.expect("check");
    let metadata = response.metadata().clone();
    Checked {
        status: response.into_inner().status(),
        x_cache: meta(&metadata, "x-cache"),
        cache_status: meta(&metadata, "cache-status"),
        grpc_status: meta(&metadata, "grpc-status"),
    }
}

#[tokio::test]
async fn a_second_identical_call_is_served_from_the_cache_with_its_trailers() {
    let server = start(both).await;
    let mut client = server.client().await;

    let first = check(&mut client, SERVICE).await;
    assert_eq!(first.status, Wire::Serving);
    assert_eq!(first.x_cache, "MISS");
    assert_eq!(
        first.cache_status,
        "tower-response-cache; fwd=uri-miss; detail=storing"
    );
    assert_eq!(first.grpc_status, "0");
    assert_eq!(server.origin.calls(CHECK), 1);

    let second = check(&mut client, SERVICE).await;
    assert_eq!(server.origin.calls(CHECK), 1, "the hit reached the origin");
    assert_eq!(second.status, Wire::Serving);
    assert_eq!(second.x_cache, "HIT");
    assert!(
        second
            .cache_status
            .starts_with("tower-response-cache; hit; ttl="),
        "{second:?}"
    );
    // The client accepted the call: the stored trailers were delivered.
    assert_eq!(second.grpc_status, "0", "trailers lost on a hit");

    // The origin changes; the cache keeps answering with what it stored.
    server
        .reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    let third = check(&mut client, SERVICE).await;
    assert_eq!(third.status, Wire::Serving);
    assert_eq!(server.origin.calls(CHECK), 1);

    // Another connection, another client: the same entry.
    let mut other = server.client().await;
    assert_eq!(check(&mut other, SERVICE).await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 1);

    let stats = server.cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores),
        (3, 1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.entries, 1, "{stats:?}");
}

#[tokio::test]
async fn a_different_request_message_is_a_different_entry() {
    let server = start(both).await;
    let mut client = server.client().await;
    server
        .reporter
        .set_service_status("portal.Other", ServingStatus::NotServing)
        .await;

    assert_eq!(check(&mut client, SERVICE).await.status, Wire::Serving);
    assert_eq!(
        check(&mut client, "portal.Other").await.status,
        Wire::NotServing
    );
    assert_eq!(server.origin.calls(CHECK), 2, "one entry answered both");

    let again = check(&mut client, "portal.Other").await;
    assert_eq!(
        (again.status, again.x_cache.as_str()),
        (Wire::NotServing, "HIT")
    );
    let again = check(&mut client, SERVICE).await;
    assert_eq!(
        (again.status, again.x_cache.as_str()),
        (Wire::Serving, "HIT")
    );
    assert_eq!(server.origin.calls(CHECK), 2);
    assert_eq!(server.cache.stats().entries, 2);
}

#[tokio::test]
async fn a_trailers_only_error_is_never_cached() {
    let server = start(both).await;
    let mut client = server.client().await;

    for n in 1..=3 {
        let status = client
            .check(request("no.such.Service"))
            .await
            .expect_err("unknown service must fail");
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
        assert_eq!(meta(status.metadata(), "x-cache"), "MISS");
        assert_eq!(
            meta(status.metadata(), "cache-status"),
            "tower-response-cache; fwd=uri-miss; detail=trailers-only"
        );
        assert_eq!(
            server.origin.calls(CHECK),
            n,
            "an error was answered from the cache"
        );
    }
    assert_eq!(server.cache.stats().stores, 0);

    // Once the service exists, its answer is cached as any other.
    server
        .reporter
        .set_service_status("no.such.Service", ServingStatus::Serving)
        .await;
    assert_eq!(check(&mut client, "no.such.Service").await.x_cache, "MISS");
    assert_eq!(check(&mut client, "no.such.Service").await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 4);
}

#[tokio::test]
async fn a_non_zero_status_after_a_message_is_never_cached() {
    let server = start(both).await;
    let mut client = server.client().await;
    server
        .origin
        .fail_after_message
        .store(true, Ordering::SeqCst);

    for n in 1..=3 {
        let status = client
            .check(request(SERVICE))
            .await
            .expect_err("grpc-status 14 must fail the call");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(
            server.origin.calls(CHECK),
            n,
            "a failed call was answered from the cache"
        );
    }
    let stats = server.cache.stats();
    assert_eq!((stats.stores, stats.entries), (0, 0), "{stats:?}");

    // The origin recovers: its next answer is stored and served.
    server
        .origin
        .fail_after_message
        .store(false, Ordering::SeqCst);
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "MISS");
    let hit = check(&mut client, SERVICE).await;
    assert_eq!((hit.status, hit.x_cache.as_str()), (Wire::Serving, "HIT"));
    assert_eq!(server.origin.calls(CHECK), 4);
}

#[tokio::test]
async fn methods_not_opted_in_are_never_cached() {
    let server = start(|layer| layer.method("/grpc.health.v1.Health/Other")).await;
    let mut client = server.client().await;

    for n in 1..=3 {
        let checked = check(&mut client, SERVICE).await;
        assert_eq!(checked.status, Wire::Serving);
        // Left untouched: not even cache metadata.
        assert_eq!(checked.x_cache, "");
        assert_eq!(checked.grpc_status, "0");
        assert_eq!(server.origin.calls(CHECK), n);
    }
    let stats = server.cache.stats();
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.bypasses),
        (0, 0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn invalidating_the_method_path_sends_the_next_call_to_the_origin() {
    let server = start(both).await;
    let mut client = server.client().await;

    check(&mut client, SERVICE).await;
    check(&mut client, "").await;
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 2);

    server
        .reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    // Other methods' keys are left alone.
    assert_eq!(server.cache.invalidate(WATCH).await.unwrap(), 0);
    // Every message of the method at once.
    let removed = server
        .cache
        .invalidate("/grpc.health.v1.Health/*")
        .await
        .unwrap();
    assert_eq!(removed, 2);

    let fresh = check(&mut client, SERVICE).await;
    assert_eq!(
        (fresh.status, fresh.x_cache.as_str()),
        (Wire::NotServing, "MISS")
    );
    assert_eq!(server.origin.calls(CHECK), 3);
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 3);
}

#[tokio::test]
async fn an_answer_fetched_before_an_invalidation_is_not_stored_after_it() {
    let server = start(both).await;
    let mut client = server.client().await;

    // The call reaches the origin and is held there while the invalidation runs.
    let hold = server.origin.gate.write().await;
    let in_flight = {
        let mut client = client.clone();
        tokio::spawn(async move { check(&mut client, SERVICE).await })
    };
    server.origin.wait_for_calls(CHECK, 1).await;
    server.cache.invalidate(CHECK).await.unwrap();
    drop(hold);
    let old = in_flight.await.unwrap();
    assert_eq!((old.status, old.x_cache.as_str()), (Wire::Serving, "MISS"));

    // Not stored: the next call goes to the origin.
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "MISS");
    assert_eq!(server.origin.calls(CHECK), 2);
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 2);
}

#[tokio::test]
async fn concurrent_identical_calls_reach_the_origin_once() {
    let server = start(both).await;
    let client = server.client().await;

    let hold = server.origin.gate.write().await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { check(&mut client, SERVICE).await })
        })
        .collect();
    server.origin.wait_for_calls(CHECK, 1).await;
    // Give the others time to join the flight (and to reach the origin, were they to).
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(hold);
    for call in calls {
        let checked = call.await.unwrap();
        assert_eq!(
            (checked.status, checked.grpc_status.as_str()),
            (Wire::Serving, "0")
        );
    }
    assert_eq!(server.origin.calls(CHECK), 1);
    assert_eq!(server.cache.stats().coalesced, 7);
}

#[tokio::test]
async fn a_watch_stream_passes_through_even_when_opted_in() {
    let server = start(both).await;
    let mut client = server.client().await;

    let response = tokio::time::timeout(WAIT, client.watch(request(SERVICE)))
        .await
        .expect("watch answered")
        .expect("watch");
    let mut stream = response.into_inner();
    // The first message arrives while the stream is open: nothing waits for its end.
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first status in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(first.status(), Wire::Serving);
    server
        .reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("update in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(update.status(), Wire::NotServing);
    drop(stream);

    // Nothing was stored: a second watch reaches the origin and sees the current status.
    let mut stream = tokio::time::timeout(WAIT, client.watch(request(SERVICE)))
        .await
        .expect("second watch answered")
        .expect("watch")
        .into_inner();
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first status in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(first.status(), Wire::NotServing);
    assert_eq!(server.origin.calls(WATCH), 2);
    let stats = server.cache.stats();
    assert_eq!(
        (stats.stores, stats.entries, stats.hits),
        (0, 0, 0),
        "{stats:?}"
    );
}

#[tokio::test]
async fn an_oversize_request_is_forwarded_intact_and_not_cached() {
    let server = start(|layer| both(layer).max_request_size(64)).await;
    let mut client = server.client().await;
    let long = format!("portal.{}", "x".repeat(200));
    server
        .reporter
        .set_service_status(&long, ServingStatus::NotServing)
        .await;

    for n in 1..=2 {
        let checked = check(&mut client, &long).await;
        // The service read the whole name: a cut message would not find the service.
        assert_eq!(checked.status, Wire::NotServing);
        assert_eq!(checked.x_cache, "BYPASS");
        assert_eq!(
            checked.cache_status,
            "tower-response-cache; fwd=request; detail=request-too-large"
        );
        assert_eq!(server.origin.calls(CHECK), n);
    }
    // Small messages on the same server are still cached.
    check(&mut client, SERVICE).await;
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "HIT");
    assert_eq!(server.origin.calls(CHECK), 3);
    assert_eq!(server.cache.stats().entries, 1);
}

#[tokio::test]
async fn calls_with_credentials_bypass_unless_keyed_on() {
    fn authorized(service: &str, token: &'static str) -> tonic::Request<HealthCheckRequest> {
        let mut request = tonic::Request::new(self::request(service));
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        request
    }

    let server = start(both).await;
    let mut client = server.client().await;
    for n in 1..=2 {
        let response = client
            .check(authorized(SERVICE, "Bearer alice"))
            .await
            .unwrap();
        assert_eq!(meta(response.metadata(), "x-cache"), "BYPASS");
        assert_eq!(server.origin.calls(CHECK), n);
    }
    assert_eq!(server.cache.stats().entries, 0);

    // Keyed on: one entry per credential.
    let server = start(|layer| both(layer).key_on_metadata(http::header::AUTHORIZATION)).await;
    let mut client = server.client().await;
    for token in ["Bearer alice", "Bearer alice", "Bearer bob", "Bearer bob"] {
        client.check(authorized(SERVICE, token)).await.unwrap();
    }
    assert_eq!(server.origin.calls(CHECK), 2);
    // No credential is a third key.
    check(&mut client, SERVICE).await;
    assert_eq!(server.origin.calls(CHECK), 3);
}

/// Through Redis: one instance stores, another (its own handle on the same Redis) answers
/// from the entry, trailers included (they survive the byte format).
#[cfg(feature = "redis")]
#[tokio::test]
async fn instances_sharing_redis_share_entries_with_their_trailers() {
    let redis = crate::support::redis::RedisServer::start();
    let handle = || {
        let store = tower_response_cache::RedisStore::builder(redis.url())
            .deadline(Duration::from_millis(500))
            .build()
            .unwrap();
        CacheHandle::builder(store).namespace("grpc-redis").build()
    };
    let a = start_on(handle(), both).await;
    let b = start_on(handle(), both).await;

    assert_eq!(check(&mut a.client().await, SERVICE).await.x_cache, "MISS");
    // The Redis write finishes off the response path: wait for it.
    let mut client = b.client().await;
    let hit = eventually(WAIT, || {
        let mut client = client.clone();
        async move {
            let checked = check(&mut client, SERVICE).await;
            (checked.x_cache == "HIT").then_some(checked)
        }
    })
    .await
    .expect("instance b answered from the Redis entry");
    assert_eq!((hit.status, hit.grpc_status.as_str()), (Wire::Serving, "0"));
    let before = b.origin.calls(CHECK);
    check(&mut client, SERVICE).await;
    assert_eq!(
        b.origin.calls(CHECK),
        before,
        "a Redis hit reached the origin"
    );

    // An invalidation through instance a reaches instance b's answers.
    a.cache
        .invalidate("/grpc.health.v1.Health/*")
        .await
        .unwrap();
    assert_eq!(check(&mut client, SERVICE).await.x_cache, "MISS");
    assert_eq!(b.origin.calls(CHECK), before + 1);
}
