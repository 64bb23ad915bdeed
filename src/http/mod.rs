//! The HTTP adapter: [`CacheLayer`] and [`CacheService`] over the shared engine.
//!
//! `layer` and `config` hold what a layer's services share; `service` decides what a
//! request is to the cache and answers fresh memory hits; `serve` runs lookups, flights,
//! stale answers and revalidation; `record` decides whether an answer is stored;
//! `unsafe_method` invalidates after writes; `range` answers `Range` requests from stored
//! `200`s; `head_update` freshens a stored `GET` from a `200` to a `HEAD`.

mod config;
mod head_update;
mod layer;
mod range;
mod record;
mod refresh;
mod revalidate;
mod serve;
mod service;
mod unsafe_method;
mod visit;

pub(crate) use config::Config;
pub use layer::CacheLayer;
pub use service::CacheService;
