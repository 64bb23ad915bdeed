//! The cache layer in a tonic stack, in front of the gRPC health service.
//!
//! gRPC calls are `POST`s with `content-type: application/grpc`: the layer sends them
//! around the cache untouched (`X-Cache: BYPASS`), streams and trailers included, so one
//! layer can sit in front of a server that mixes gRPC and cacheable HTTP routes.
//!
//! ```text
//! cargo run --example tonic              # serves on 127.0.0.1:50051
//! cargo run --example tonic -- 50052     # another port
//! cargo run --example tonic -- check 127.0.0.1:50051
//! ```
//!
//! `tests/grpc/passthrough.rs` serves this same stack (it includes this file as a module).

use std::net::SocketAddr;
use std::time::Duration;

use tonic::transport::server::Router;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;
use tower::layer::util::{Identity, Stack};
use tower_response_cache::{CacheHandle, CacheLayer, MemoryStore};

/// A service name the example reports on, besides the server-wide `""`.
pub const SERVICE: &str = "portal.Sync";

/// The stack: `CacheLayer` around every gRPC service of the server, here the health service.
/// Returns the reporter that sets the health statuses, and the router to serve.
pub async fn stack(cache: CacheHandle) -> (HealthReporter, Router<Stack<CacheLayer, Identity>>) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let router = Server::builder()
        .layer(CacheLayer::new(cache))
        .add_service(health);
    (reporter, router)
}

/// A small in-memory cache, as a server would build it.
pub fn cache() -> CacheHandle {
    CacheHandle::builder(MemoryStore::builder().max_bytes(64 << 20).build())
        .namespace("grpc-example")
        .ttl(Duration::from_secs(60))
        .build()
}

/// A health client over a plain HTTP/2 connection to `uri` (`http://host:port`).
pub async fn client(uri: &str) -> Result<HealthClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(uri.to_owned())?.connect().await?;
    Ok(HealthClient::new(channel))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("check") => {
            let addr = args.get(1).map_or("127.0.0.1:50051", String::as_str);
            check(addr).await
        }
        port => {
            let port: u16 = port.map_or(Ok(50051), str::parse)?;
            serve(SocketAddr::from(([127, 0, 0, 1], port))).await
        }
    }
}

async fn serve(addr: SocketAddr) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cache = cache();
    let (_reporter, router) = stack(cache.clone()).await;
    println!("gRPC health service on {addr}, behind CacheLayer. Call it with:");
    println!("  cargo run --example tonic -- check {addr}");
    println!("  grpc_health_probe -addr={addr} -service={SERVICE}");
    println!(
        "  grpcurl -plaintext -proto health.proto -d '{{\"service\":\"{SERVICE}\"}}' \
         {addr} grpc.health.v1.Health/Check"
    );
    println!("Every call is a cache bypass; Ctrl-C prints the cache's counters.");
    router
        .serve_with_shutdown(addr, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    println!("{:?}", cache.stats());
    Ok(())
}

/// A client: checks the server-wide status and the example's service, and an unknown one.
async fn check(addr: &str) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut client = client(&format!("http://{addr}")).await?;
    for service in ["", SERVICE, "no.such.Service"] {
        let request = HealthCheckRequest {
            service: service.to_owned(),
        };
        match client.check(request).await {
            Ok(response) => {
                let x_cache = response.metadata().get("x-cache").cloned();
                println!(
                    "{service:?}: {:?} (x-cache: {x_cache:?})",
                    response.into_inner().status()
                );
            }
            Err(status) => println!("{service:?}: {:?}: {}", status.code(), status.message()),
        }
    }
    Ok(())
}
