//! Routing state: what the data plane reads on every request.
//!
//! - [`snapshot`]: the immutable tree model → environment → weighted pools → replicas.
//! - [`pick`]: choosing a pool by weight and a replica by power-of-two-choices.
//! - [`router`]: building snapshots from a plain [`RoutingSpec`] and swapping them in,
//!   keeping replica load counters and metric handles alive across swaps.

pub mod pick;
pub mod router;
pub mod snapshot;
pub mod spec;

pub use router::Router;
pub use snapshot::{Environment, Model, Pool, Replica, Route, Snapshot};
pub use spec::{DeploymentSpec, EnvironmentSpec, ModelSpec, RoutingSpec};
