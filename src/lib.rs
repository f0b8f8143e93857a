//! switchyard: a Layer-7 traffic-splitting reverse proxy for model-inference replicas.
//!
//! The data plane (`proxy`) and what changes routing (the configuration at start, then the
//! rollout controller) meet only through [`routing::Router`]: an immutable
//! [`routing::Snapshot`] behind `arc-swap`. The request path loads it once per request and
//! never takes a lock. The admin listener (`admin`) serves the management API (`api`), whose
//! types the CLI's client (`client`) shares.
// Denied rather than forbidden: `sched` alone makes one system call libc does not wrap.
#![deny(unsafe_code)]

pub mod admin;
pub mod api;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod loadtest;
pub mod metrics;
pub mod placement;
pub mod proxy;
pub mod replica;
pub mod replicas;
pub mod rollout;
pub mod routing;
pub mod sched;
pub mod server;
pub mod store;
