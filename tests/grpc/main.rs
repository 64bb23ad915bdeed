//! gRPC: the HTTP layer passes gRPC through untouched (`passthrough`, with or without the `grpc`
//! feature), and `GrpcCacheLayer` caches the unary methods opted in (`grpc_cache`).

#[path = "../support/mod.rs"]
mod support;

#[cfg(feature = "grpc")]
mod grpc_cache;
mod passthrough;
