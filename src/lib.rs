//! switchyard: a Layer-7 traffic-splitting reverse proxy for model-inference replicas.
//!
//! The data plane (`proxy`) and whatever changes routing (config today, the rollout controller
//! next) meet only through [`routing::Router`]: an immutable [`routing::Snapshot`] behind
//! `arc-swap`. The request path loads it once per request and never takes a lock.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod client;
pub mod config;
pub mod demo;
pub mod metrics;
pub mod proxy;
pub mod replica;
pub mod replicas;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod store;
