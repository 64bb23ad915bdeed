//! The HTTP adapter: [`CacheLayer`] and [`CacheService`] over the shared engine.
//!
//! `layer` and `config` hold what a layer's services share; `service` decides what a
//! request is to the cache and answers fresh memory hits; `serve` runs lookups, flights,
//! stale answers and revalidation; `record` decides whether an answer is stored;
//! `unsafe_method` invalidates after writes.

mod config;
mod layer;
mod record;
mod revalidate;
mod serve;
mod service;
mod unsafe_method;

pub use layer::CacheLayer;
pub use service::CacheService;
