//! Opt-in caching of unary gRPC methods (feature `grpc`).

mod config;
mod layer;
mod record;
mod request;
mod service;

pub use layer::GrpcCacheLayer;
pub use service::GrpcCacheService;

/// Where gRPC puts a call's status: the trailers, or the headers of a trailers-only answer.
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
