//! Replica providers: where a deployment's replicas come from.
//!
//! One [`ReplicaProvider`] manages the replicas of one deployment. It is told a desired count
//! ([`ReplicaProvider::scale`]) and converges in the background; the controller reads its
//! [`ReplicaSetStatus`] and routes only to replicas that passed readiness. Two kinds:
//!
//! - `process`: spawns local replica processes from a command template with `{port}`.
//! - `static`: admits or retires endpoints from a fixed list.
//!
//! Removal always drains: the replica stops getting new requests at once (the data plane's
//! draining flag) and is stopped only when its in-flight requests and streams reach zero (and
//! it has drained for at least 50 ms, so that a request that chose it in the same instant is
//! counted) or the drain deadline passes. The least-loaded replica goes first; replicas still starting go
//! before any ready one.

mod set;
mod static_set;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use set::ReplicaSet;
pub use static_set::StaticSet;

use crate::routing::Replica;

/// The state of a deployment's replicas, as the controller sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaSetStatus {
    pub desired: u32,
    /// Passed readiness and not draining: these may receive traffic.
    pub ready: Vec<SocketAddr>,
    pub starting: u32,
    pub draining: u32,
    /// Set when replicas keep crashing before becoming ready (crash loop), with why.
    pub failure: Option<String>,
}

/// What manages one deployment's replicas.
pub trait ReplicaProvider: Send + Sync {
    /// Sets the desired number of replicas. Returns at once; the provider converges.
    fn scale(&self, replicas: u32);
    fn status(&self) -> ReplicaSetStatus;
    /// Resolves when the status may have changed.
    fn changed(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Stops every replica (draining first, up to the drain deadline) and the provider.
    fn shutdown(&self);
    /// Replaces the endpoints registered through the API (static sets; others ignore it).
    fn set_registered(&self, _endpoints: Vec<SocketAddr>) {}
    /// The endpoints a set admits from, in admission order (static sets; empty otherwise).
    fn endpoints(&self) -> Vec<SocketAddr> {
        Vec::new()
    }
    /// How many endpoints a set can admit at most (listed and registered), when it is bounded.
    fn endpoint_count(&self) -> Option<usize> {
        None
    }
}

/// How a deployment's replicas are obtained. As JSON (API, store):
/// `{"provider": "process", "command": [...], "health_path": "/healthz"}` or
/// `{"provider": "static", "endpoints": ["127.0.0.1:8001"]}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProviderSpec {
    /// Spawn `command` (argv; `{port}`, `{deployment}` and `{model}` are substituted).
    Process {
        command: Vec<String>,
        health_path: String,
    },
    /// Use these endpoints: scaling admits the first N listed and retires the rest. An admitted
    /// endpoint is ready while its TCP probe connects (`upstream.static_probe_interval_seconds`).
    Static { endpoints: Vec<SocketAddr> },
}

/// Timing of a provider.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderTiming {
    /// A draining replica is stopped when idle or after this long.
    pub drain_timeout: Duration,
    /// SIGTERM → SIGKILL.
    pub stop_grace: Duration,
    /// Restart back-off after a crash: doubles from `restart_backoff_min` to `restart_backoff_max`.
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    /// Consecutive crashes before becoming ready that make the deployment "failing".
    pub crash_loop_threshold: u32,
    pub health_interval: Duration,
    /// How often static endpoints are probed with a TCP connect; `None`: never.
    pub static_probe_interval: Option<Duration>,
}

impl Default for ProviderTiming {
    fn default() -> Self {
        ProviderTiming {
            drain_timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(10),
            restart_backoff_min: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(10),
            crash_loop_threshold: 5,
            health_interval: Duration::from_millis(100),
            static_probe_interval: None,
        }
    }
}

/// How a provider sees the data plane: the live replica object of an endpoint (load, draining).
pub type DataPlaneLookup = Arc<dyn Fn(SocketAddr) -> Option<Arc<Replica>> + Send + Sync>;
