//! The HTTP layer's rules, one area per module, each shown through a real axum server or by
//! driving the layer as a tower service.

#[path = "../support/mod.rs"]
mod support;

mod ban_flood;
mod compression;
mod gated_store;
mod hostile_input;
mod layer;
mod proxy_rfc9111;
mod purge;
mod semantics;
mod slow_clients;
mod stale;
mod tower;
mod vary;
