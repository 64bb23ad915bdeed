//! The cache on real `redis-server` processes (started on free loopback ports, killed,
//! paused and restarted by the tests; a three-primary cluster built with `redis-cli`). These
//! tests never skip: without `redis-server` they fail and say how to get it.
#![cfg(feature = "redis")]

#[path = "../support/mod.rs"]
mod support;

mod bad_data;
mod buckets;
mod cluster;
mod fallback_mode;
mod fallback_primary;
mod faults;
mod fleet;
mod glob;
mod hardening;
mod layout;
mod maxmemory;
mod near;
mod near_processes;
mod near_store;
mod runtimes;
mod sentinel;
mod soft;
mod store;
mod two_process;
