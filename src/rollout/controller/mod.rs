//! The controller: the thin, I/O-doing driver around the pure promotion machine.
//!
//! It owns each model's live state (deployments with their replica providers, environments with
//! their current deployment and promotion), feeds the machine observations from the providers,
//! applies the machine's effects (replica targets, traffic percent) and rebuilds the routing
//! snapshot from ready replicas only. A deployment gets traffic weight in the same swap that
//! gives it ready replicas, and weight is never left on a deployment with no ready replica while
//! another weighted one has some.
//!
//! One file per concern:
//! - [`setup`]: the plain model descriptions the controller starts from;
//! - `state`: the live state and lookups by name;
//! - `views`: the error type and the read-only views the API serves;
//! - `events`: the per-environment event log and its broadcast;
//! - `persist`: the saved shape, restoring it, and the writer thread that commits it;
//! - `providers`: provider kinds, building providers, their starting replica counts;
//! - `effects`: applying the machine's effects;
//! - `autoscaling`: sampling load and applying autoscaling decisions;
//! - `analysis`: measuring analysis intervals from the proxy's windows and handing verdicts
//!   to the machine; `webhooks`: calling its gates and notifications;
//! - `routes`: building the routing spec from the state;
//! - `commands`: what the API asks (promote, pause, ..., register, activate);
//! - `shared`: the controller on a shared store (commit before routing, follower commands,
//!   applying committed records), and what the cluster asks of it ([`crate::cluster::Member`]);
//! - `registry`: endpoints registered through the API with a TTL;
//! - `scale_commands`: telling an orchestrator new replica targets, draining first;
//! - `run`: the event-driven run loop and shutdown;
//! - [`clock`]: the one clock (tokio's, anchored to the wall clock at start).

mod analysis;
mod autoscaling;
pub mod clock;
mod commands;
mod effects;
mod events;
mod persist;
mod providers;
pub mod registry;
mod routes;
mod run;
mod scale_commands;
pub mod setup;
mod shared;
mod state;
mod views;
mod webhooks;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, watch, Notify};

pub use clock::Clock;
pub use events::EnvironmentEvent;
pub use setup::{EnvironmentSetup, ModelSetup, TrafficSetup};
pub use shared::{Command, Outcome};
pub use views::{ControllerError, DeploymentView, EnvironmentView, ModelSummary, PromotionView};

use crate::replicas::ProviderTiming;
use crate::routing::Router;
use crate::store::Store;
use persist::{Persisted, Saver};
use providers::Providers;
use state::State;

pub struct Controller {
    router: Arc<Router>,
    state: Mutex<State>,
    events: broadcast::Sender<EnvironmentEvent>,
    /// Wakes the run loop: provider changes and commands notify it.
    wake: Arc<Notify>,
    saver: Option<Arc<Saver>>,
    /// The number of the newest state queued for the saver.
    queued: std::sync::atomic::AtomicU64,
    providers: Providers,
    clock: Clock,
    /// When autoscaled environments are sampled next (tokio time).
    autoscale_due: Mutex<Option<tokio::time::Instant>>,
    /// Counts the run loop's passes: views may have changed after each.
    passes: watch::Sender<u64>,
    /// Set when the state is shared with other instances through etcd.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// On a shared store, one change at a time: change, commit, then route (or roll back).
    gate: tokio::sync::Mutex<()>,
    /// On a shared store, each model's record as last committed (encoded).
    committed: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    /// Endpoints registered through the API.
    registrations: Mutex<registry::Registrations>,
    /// The `scale_command` of each deployment that has one: what it last asked for.
    scale_commands: scale_commands::ScaleCommands,
}

impl Controller {
    /// Builds providers for every deployment and installs the initial routing. Must run inside
    /// the long-lived control runtime (process replicas are tied to its thread).
    /// With a `store`, the state saved by an earlier run (current deployments, promotions in
    /// progress, event logs) is restored before the first routing snapshot is built.
    pub fn start(
        models: &[ModelSetup],
        router: Arc<Router>,
        timing: ProviderTiming,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Arc<Controller>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the controller must start inside the control runtime".to_string())?;
        let providers = Providers {
            router: router.clone(),
            timing,
            runtime,
            wake: Arc::new(Notify::new()),
        };
        let mut state = State::from_setup(models, |m, d, spec| providers.make(m, d, spec));
        if let Some(store) = &store {
            match store.load().map_err(|e| e.to_string())? {
                Some(bytes) => {
                    let saved: Persisted = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("the saved state cannot be read ({e}); move the data directory aside to start fresh"))?;
                    persist::restore(&mut state, saved, &providers);
                }
                None => tracing::info!("no saved state: starting from the configuration"),
            }
        }
        providers::initial_scale(&state);
        let spec = routes::build_spec(&state);
        router.apply(&spec).map_err(|e| e.to_string())?;
        state.last_spec = Some(spec);
        let saver = match store {
            Some(store) => {
                Some(Arc::new(Saver::start(store).map_err(|e| {
                    format!("cannot start the state writer: {e}")
                })?))
            }
            None => None,
        };
        let controller = Arc::new(Controller {
            router,
            state: Mutex::new(state),
            events: broadcast::channel(events::BROADCAST_CAPACITY).0,
            wake: providers.wake.clone(),
            saver,
            queued: std::sync::atomic::AtomicU64::new(0),
            providers,
            clock: Clock::start(),
            autoscale_due: Mutex::new(None),
            passes: watch::channel(0).0,
            cluster: std::sync::OnceLock::new(),
            gate: tokio::sync::Mutex::new(()),
            committed: Mutex::new(std::collections::HashMap::new()),
            registrations: Mutex::new(Default::default()),
            scale_commands: Default::default(),
        });
        controller.save(&mut controller.lock());
        Ok(controller)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues the state for the writer if something saved changed since the last call.
    fn save(&self, st: &mut State) {
        if !st.dirty {
            return;
        }
        st.dirty = false;
        let Some(saver) = &self.saver else { return };
        match serde_json::to_vec(&Persisted::of(st)) {
            Ok(bytes) => {
                let n = saver.save(bytes);
                self.queued
                    .fetch_max(n, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode the state"),
        }
    }

    /// Resolves once every change made so far is committed to the store (at once without
    /// one), so an API call answers only after what it changed would survive a crash. False
    /// when the store did not commit within `timeout`.
    pub async fn saved(&self, timeout: std::time::Duration) -> bool {
        let Some(saver) = &self.saver else {
            return true;
        };
        let n = self.queued.load(std::sync::atomic::Ordering::Relaxed);
        n == 0 || saver.committed(n, timeout).await
    }
}
