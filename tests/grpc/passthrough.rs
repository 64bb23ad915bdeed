//! The cache layer in a tonic stack (the one `examples/tonic.rs` serves): gRPC calls go
//! around the cache with their messages, streams and trailers intact.
//!
//! gRPC carries a call's status in HTTP/2 trailers after the messages (`grpc-status: 0`),
//! or, for an error before any message, in a trailers-only response. A layer that cached,
//! buffered or dropped trailers would fail these tests: the control test at the end shows
//! that the client does notice lost trailers.

#[path = "../../examples/tonic.rs"]
#[allow(dead_code)]
mod example;

use std::future::ready;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use http_body_util::{BodyStream, StreamBody};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Response};
use tonic_health::pb::health_check_response::ServingStatus as Wire;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower_response_cache::CacheHandle;

/// A server running the example's stack on a free loopback port.
struct Running {
    addr: SocketAddr,
    cache: CacheHandle,
    reporter: HealthReporter,
}

async fn incoming() -> (SocketAddr, TcpIncoming) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (addr, TcpIncoming::from(listener))
}

async fn start() -> Running {
    let cache = example::cache();
    let (reporter, router) = example::stack(cache.clone()).await;
    let (addr, incoming) = incoming().await;
    tokio::spawn(router.serve_with_incoming(incoming));
    Running {
        addr,
        cache,
        reporter,
    }
}

impl Running {
    async fn client(&self) -> HealthClient<tonic::transport::Channel> {
        example::client(&format!("http://{}", self.addr))
            .await
            .expect("connect")
    }
}

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

fn header<T>(response: &Response<T>, name: &str) -> String {
    response
        .metadata()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_unary_check_arrives_unchanged_with_its_trailers() {
    let server = start().await;
    let mut client = server.client().await;

    let response = client.check(request("")).await.expect("check");
    // The layer was on the path and left the call alone.
    assert_eq!(header(&response, "x-cache"), "BYPASS");
    // tonic merges the trailers into the metadata of a unary response.
    assert_eq!(header(&response, "grpc-status"), "0", "trailers lost");
    assert_eq!(response.into_inner().status(), Wire::Serving);

    let response = client.check(request(example::SERVICE)).await.unwrap();
    assert_eq!(response.into_inner().status(), Wire::Serving);

    // A change is seen at once: nothing was cached.
    server
        .reporter
        .set_service_status(example::SERVICE, ServingStatus::NotServing)
        .await;
    let response = client.check(request(example::SERVICE)).await.unwrap();
    assert_eq!(response.into_inner().status(), Wire::NotServing);
}

#[tokio::test]
async fn an_unknown_service_fails_with_not_found() {
    let server = start().await;
    let mut client = server.client().await;

    let status = client
        .check(request("no.such.Service"))
        .await
        .expect_err("unknown service must fail");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(status.message(), "service not registered");
    assert_eq!(
        status
            .metadata()
            .get("x-cache")
            .map(|v| v.to_str().unwrap()),
        Some("BYPASS")
    );

    // The failure is not remembered either: once registered, the service answers.
    server
        .reporter
        .set_service_status("no.such.Service", ServingStatus::Serving)
        .await;
    let response = client.check(request("no.such.Service")).await.unwrap();
    assert_eq!(response.into_inner().status(), Wire::Serving);
}

#[tokio::test]
async fn a_watch_stream_delivers_the_first_status_then_updates() {
    let server = start().await;
    let mut client = server.client().await;

    let response = tokio::time::timeout(WAIT, client.watch(request(example::SERVICE)))
        .await
        .expect("watch answered")
        .expect("watch");
    assert_eq!(header(&response, "x-cache"), "BYPASS");
    let mut stream = response.into_inner();

    // The first message arrives while the stream is still open: nothing buffers it.
    let first = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("first status in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(first.status(), Wire::Serving);

    server
        .reporter
        .set_service_status(example::SERVICE, ServingStatus::NotServing)
        .await;
    let update = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("update in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(update.status(), Wire::NotServing);

    server
        .reporter
        .set_service_status(example::SERVICE, ServingStatus::Serving)
        .await;
    let again = tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("second update in time")
        .expect("no error")
        .expect("a message");
    assert_eq!(again.status(), Wire::Serving);
}

#[tokio::test]
async fn grpc_calls_count_as_bypasses_never_hits_or_stores() {
    let server = start().await;
    let mut client = server.client().await;

    for _ in 0..2 {
        client.check(request("")).await.unwrap();
    }
    client.check(request("no.such.Service")).await.unwrap_err();
    let mut stream = client
        .watch(request(example::SERVICE))
        .await
        .unwrap()
        .into_inner();
    tokio::time::timeout(WAIT, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let stats = server.cache.stats();
    assert_eq!(stats.bypasses, 4, "{stats:?}");
    assert_eq!(
        (stats.hits, stats.misses, stats.stores, stats.coalesced),
        (0, 0, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.entries, 0, "{stats:?}");
    // gRPC POSTs are not writes to a path: they invalidate nothing.
    assert_eq!(stats.invalidations, 0, "{stats:?}");
}

/// Control: a layer that drops trailers makes the unary check above fail, so that test
/// would catch a cache layer that lost them.
#[tokio::test]
async fn a_layer_that_drops_trailers_breaks_grpc_calls() {
    fn drop_trailers(
        response: http::Response<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        response.map(|body| {
            let frames = BodyStream::new(body)
                .filter(|frame| ready(!matches!(frame, Ok(frame) if frame.is_trailers())));
            tonic::body::Body::new(StreamBody::new(frames))
        })
    }

    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder()
        .layer(tower::util::MapResponseLayer::new(drop_trailers))
        .add_service(health);
    let (addr, incoming) = incoming().await;
    tokio::spawn(router.serve_with_incoming(incoming));
    let mut client = example::client(&format!("http://{addr}")).await.unwrap();

    let error = client
        .check(request(""))
        .await
        .expect_err("a unary call without trailers must fail");
    assert_ne!(error.code(), Code::Ok);
    drop(reporter);
}
