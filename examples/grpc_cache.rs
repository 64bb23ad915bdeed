//! `GrpcCacheLayer` in front of the gRPC health service, with `Check` opted in: a miss, a
//! hit served with its trailers (the origin's change is not seen), then an invalidation of
//! the method path and a fresh answer.
//!
//! ```text
//! cargo run --example grpc_cache --features grpc
//! ```

use std::time::Duration;

use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;
use tower_response_cache::{CacheHandle, GrpcCacheLayer, MemoryStore};

const CHECK: &str = "/grpc.health.v1.Health/Check";
const SERVICE: &str = "portal.Sync";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let cache = CacheHandle::builder(MemoryStore::new())
        .namespace("grpc-example")
        .ttl(Duration::from_secs(60))
        .build();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE, ServingStatus::Serving)
        .await;
    let router = Server::builder()
        .layer(GrpcCacheLayer::new(cache.clone()).method(CHECK))
        .add_service(health);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(router.serve_with_incoming(TcpIncoming::from(listener)));

    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = HealthClient::new(channel);
    let mut check = async |label: &str| -> Result<(), tonic::Status> {
        let request = HealthCheckRequest {
            service: SERVICE.to_owned(),
        };
        let response = client.check(request).await?;
        let meta = |name| {
            response
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned()
        };
        let (x_cache, grpc_status) = (meta("x-cache"), meta("grpc-status"));
        println!(
            "{label:<28} {:?}  x-cache: {x_cache:<4}  grpc-status: {grpc_status}",
            response.get_ref().status()
        );
        Ok(())
    };

    check("first call").await?;
    reporter
        .set_service_status(SERVICE, ServingStatus::NotServing)
        .await;
    check("after the origin changed").await?;
    let removed = cache.invalidate("/grpc.health.v1.Health/*").await?;
    println!("invalidated {removed} entry");
    check("after the invalidation").await?;
    println!("{:?}", cache.stats());
    Ok(())
}
