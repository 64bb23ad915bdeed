//! Purge endpoints: `PURGE <path>` and a JSON `POST`, for operators and deploy scripts
//! (see [`PurgeLayer`] for what they answer).
//!
//! `layer` builds the services from the `settings` they share (the cache layer's key
//! function, the token, the limits, one rate-limit `bucket`); `service` sends purge
//! requests to the `endpoint`, which checks them in order and invalidates through the
//! handle; `command` parses the JSON body.

mod bucket;
mod command;
mod endpoint;
mod layer;
mod service;
mod settings;

#[doc(inline)]
pub use self::{layer::PurgeLayer, service::Purge};
