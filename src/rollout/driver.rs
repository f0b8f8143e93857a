//! The controller: the thin, I/O-doing driver around the pure promotion machine.
//!
//! It owns each model's live state (deployments with their replica providers, environments with
//! their current deployment and promotion), feeds the machine observations from the providers,
//! applies the machine's effects (replica targets, traffic percent) and rebuilds the routing
//! snapshot from ready replicas only. A deployment gets traffic weight in the same swap that
//! gives it ready replicas, and weight is never left on a deployment with no ready replica while
//! another weighted one has some.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::autoscale::{split_addition, Autoscaler};
use super::machine::{
    CleanupStrategy, ControlError, Effects, Event, Observation, Promotion, PromotionConfig, Status,
};
use super::plan::PlanError;
use crate::config::{ModelConfig, Traffic};
use crate::replicas::{
    DataPlaneLookup, ProviderSpec, ProviderTiming, ReplicaProvider, ReplicaSet, ReplicaSetStatus,
    StaticSet,
};
use crate::routing::spec::{DeploymentSpec, EnvironmentSpec, ModelSpec, WEIGHT_SCALE};
use crate::routing::{Router, RoutingSpec};
use crate::store::Store;

/// Events kept per environment (older ones are dropped first).
const EVENT_LOG_LIMIT: usize = 10_000;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ControllerError {
    #[error("model {0:?} not found")]
    UnknownModel(String),
    #[error("model {model:?} has no environment {environment:?}")]
    UnknownEnvironment { model: String, environment: String },
    #[error("model {model:?} has no deployment {deployment:?}")]
    UnknownDeployment { model: String, deployment: String },
    #[error("environment {0:?} has a fixed traffic split (`weights`); promotions need `current`")]
    FixedSplit(String),
    #[error("a promotion to {0:?} is already in progress; pause, cancel or finish it first")]
    PromotionInProgress(String),
    #[error("no promotion is in progress in environment {0:?}")]
    NoPromotion(String),
    #[error("deployment {0:?} is already the current deployment")]
    AlreadyCurrent(String),
    #[error("deployment {deployment:?} lists {listed} endpoints, but this promotion needs {needed} replicas")]
    NotEnoughEndpoints {
        deployment: String,
        listed: usize,
        needed: u32,
    },
    #[error("deployment {deployment:?} also serves environment {environment:?}; promote a deployment no other environment uses")]
    SharedDeployment {
        deployment: String,
        environment: String,
    },
    #[error("deployment {0:?} already exists")]
    DeploymentExists(String),
    #[error("{0}")]
    Settings(#[from] PlanError),
    #[error("{0}")]
    Control(#[from] ControlError),
}

/// An event with the environment it belongs to, as broadcast to subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentEvent {
    pub model: String,
    pub environment: String,
    pub previous_deployment: String,
    pub candidate_deployment: String,
    #[serde(flatten)]
    pub event: Event,
}

/// A read-only view of one environment.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentView {
    pub model: String,
    pub name: String,
    pub current_deployment: Option<String>,
    pub candidate_deployment: Option<String>,
    /// The running promotion, or the last one (terminal) when none runs.
    pub promotion: Option<PromotionView>,
    pub settings: PromotionConfig,
    pub autoscaling: Option<super::autoscale::AutoscalingSettings>,
    /// Replicas of the current deployment while no promotion runs (without autoscaling).
    pub replicas: u32,
    /// Replica state of every deployment of the model.
    pub deployments: BTreeMap<String, DeploymentView>,
}

/// A model and the names of its deployments and environments.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSummary {
    pub id: String,
    pub deployments: Vec<String>,
    pub environments: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromotionView {
    pub status: Status,
    pub previous_deployment: String,
    pub candidate_deployment: String,
    pub percent_traffic_to_new_version: u32,
    pub error_message: Option<String>,
    pub rolling_deploy: bool,
    pub candidate_target: u32,
    pub previous_target: u32,
    pub fleet: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentView {
    pub provider: &'static str,
    pub active: bool,
    pub desired_replicas: u32,
    pub ready_replicas: u32,
    pub starting_replicas: u32,
    pub draining_replicas: u32,
    pub failure: Option<String>,
}

struct DeploymentState {
    id: String,
    /// Set for deployments registered through the API (they persist in the store).
    registered: Option<ProviderSpec>,
    provider: Arc<dyn ReplicaProvider>,
    kind: &'static str,
    /// Static endpoints listed (None for process deployments).
    listed: Option<usize>,
    active: bool,
}

struct ActivePromotion {
    previous: String,
    candidate: String,
    machine: Promotion,
}

struct EnvironmentState {
    name: String,
    hosts: Vec<String>,
    fixed: Option<BTreeMap<String, u32>>,
    current: Option<String>,
    settings: PromotionConfig,
    promotion: Option<ActivePromotion>,
    events: Vec<Event>,
    autoscaler: Option<Autoscaler>,
    /// Replicas autoscaling added during the running promotion: (previous, candidate).
    extra: (u32, u32),
    /// Replicas of the current deployment while no promotion runs.
    replicas: u32,
}

struct ModelState {
    id: String,
    hosts: Vec<String>,
    deployments: Vec<DeploymentState>,
    environments: Vec<EnvironmentState>,
}

struct State {
    models: Vec<ModelState>,
    last_spec: Option<RoutingSpec>,
}

pub struct Controller {
    router: Arc<Router>,
    state: Mutex<State>,
    events: broadcast::Sender<EnvironmentEvent>,
    wake: watch::Sender<u64>,
    store: Option<Arc<dyn Store>>,
    /// The bytes last written to the store, to skip saves that change nothing.
    saved: Mutex<Vec<u8>>,
    /// The control runtime: replica actors run there, whoever registers a deployment.
    runtime: tokio::runtime::Handle,
    timing: ProviderTiming,
}

impl Controller {
    /// Builds providers for every deployment and installs the initial routing. Must run inside
    /// the long-lived control runtime (process replicas are tied to its thread).
    /// With a `store`, the state saved by an earlier run (current deployments, promotions in
    /// progress, event logs) is restored before the first routing snapshot is built.
    pub fn start(
        models: &[ModelConfig],
        router: Arc<Router>,
        timing: ProviderTiming,
        store: Option<Arc<dyn Store>>,
    ) -> Result<Arc<Controller>, String> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| "the controller must start inside the control runtime".to_string())?;
        let mut state = State {
            models: Vec::new(),
            last_spec: None,
        };
        for m in models {
            let mut deployments = Vec::new();
            for d in &m.deployments {
                let (provider, kind, listed) =
                    make_provider(&m.id, &d.id, &d.provider, &router, &timing, &runtime);
                deployments.push(DeploymentState {
                    id: d.id.clone(),
                    registered: None,
                    provider,
                    kind,
                    listed,
                    active: true,
                });
            }
            let environments = m
                .environments
                .iter()
                .map(|e| EnvironmentState {
                    name: e.name.clone(),
                    hosts: e.hosts.clone(),
                    fixed: match &e.traffic {
                        Traffic::Weights(w) => Some(w.clone()),
                        Traffic::Current { .. } => None,
                    },
                    current: match &e.traffic {
                        Traffic::Current { deployment, .. } => Some(deployment.clone()),
                        Traffic::Weights(_) => None,
                    },
                    settings: e.promotion.clone(),
                    promotion: None,
                    events: Vec::new(),
                    autoscaler: e.autoscaling.map(Autoscaler::new),
                    extra: (0, 0),
                    replicas: match &e.traffic {
                        Traffic::Current { replicas, .. } => *replicas,
                        Traffic::Weights(_) => 0,
                    },
                })
                .collect();
            state.models.push(ModelState {
                id: m.id.clone(),
                hosts: m.hosts.clone(),
                deployments,
                environments,
            });
        }
        if let Some(store) = &store {
            match store.load().map_err(|e| e.to_string())? {
                Some(bytes) => {
                    let saved: Persisted = serde_json::from_slice(&bytes)
                        .map_err(|e| format!("the saved state cannot be read ({e}); move the data directory aside to start fresh"))?;
                    restore(&mut state, saved, &router, &timing, &runtime);
                }
                None => tracing::info!("no saved state: starting from the configuration"),
            }
        }
        initial_scale(&state);
        let spec = build_spec(&state);
        router.apply(&spec).map_err(|e| e.to_string())?;
        state.last_spec = Some(spec);
        let controller = Arc::new(Controller {
            router,
            state: Mutex::new(state),
            events: broadcast::channel(1024).0,
            wake: watch::channel(0).0,
            store,
            saved: Mutex::new(Vec::new()),
            runtime,
            timing,
        });
        controller.persist(&controller.lock());
        Ok(controller)
    }

    /// Wall-clock milliseconds: promotion timers stay meaningful across a restart.
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    /// Writes the state to the store if it changed since the last write.
    fn persist(&self, st: &State) {
        let Some(store) = &self.store else { return };
        let bytes = match serde_json::to_vec(&Persisted::of(st)) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the state");
                return;
            }
        };
        let mut saved = self.saved.lock().unwrap_or_else(|e| e.into_inner());
        if *saved == bytes {
            return;
        }
        match store.save(&bytes) {
            Ok(()) => *saved = bytes,
            Err(e) => tracing::error!(error = %e, "cannot save the state; it will be retried"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New events of every environment, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<EnvironmentEvent> {
        self.events.subscribe()
    }

    /// Drives promotions until `stop` fires: on a short period and whenever a provider reports
    /// a change.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut changes: Vec<watch::Receiver<u64>> = {
            let st = self.lock();
            st.models
                .iter()
                .flat_map(|m| m.deployments.iter().map(|d| d.provider.changed()))
                .collect()
        };
        let mut wake = self.wake.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            let any_change = async {
                if changes.is_empty() {
                    std::future::pending::<()>().await;
                }
                let futs = changes.iter_mut().map(|c| Box::pin(c.changed()));
                let _ = select_first(futs.collect()).await;
            };
            tokio::select! {
                _ = tick.tick() => {}
                _ = any_change => {}
                _ = wake.changed() => {}
                _ = stop.changed() => break,
            }
            self.tick();
        }
    }

    /// One pass: tick every promotion, apply effects, rebuild routing if it changed.
    pub fn tick(&self) {
        let now = self.now_ms();
        let mut st = self.lock();
        for m in &mut st.models {
            for ei in 0..m.environments.len() {
                let Some(p) = &m.environments[ei].promotion else {
                    continue;
                };
                if p.machine.status.is_terminal() {
                    continue;
                }
                let mut obs = observe(m, &p.previous, &p.candidate);
                // Autoscaled extras are not rollout progress.
                obs.candidate_ready = obs.candidate_ready.min(p.machine.candidate_target);
                obs.previous_ready = obs.previous_ready.min(p.machine.previous_target);
                let fx = match m.environments[ei].promotion.as_mut() {
                    Some(p) => p.machine.tick(&obs, now),
                    None => continue,
                };
                self.apply(m, ei, fx);
            }
            for ei in 0..m.environments.len() {
                if m.environments[ei].autoscaler.is_some() {
                    let in_flight = self.env_in_flight(&m.id, &m.environments[ei].name);
                    autoscale(m, ei, in_flight, now);
                }
            }
        }
        self.reroute(&mut st);
        self.persist(&st);
    }

    /// Requests in flight in an environment's pools, from the data plane's counters.
    fn env_in_flight(&self, model: &str, environment: &str) -> u32 {
        let snap = self.router.load();
        snap.models
            .iter()
            .find(|m| &*m.id == model)
            .and_then(|m| m.environments.iter().find(|e| &*e.name == environment))
            .map_or(0, |e| {
                e.pools
                    .iter()
                    .flat_map(|p| p.replicas.iter())
                    .map(|r| r.outstanding())
                    .sum()
            })
    }

    fn reroute(&self, st: &mut State) {
        let spec = build_spec(st);
        if st.last_spec.as_ref() != Some(&spec) {
            match self.router.apply(&spec) {
                Ok(_) => st.last_spec = Some(spec),
                Err(e) => tracing::error!(error = %e, "routing update rejected"),
            }
        }
    }

    fn apply(&self, m: &mut ModelState, ei: usize, fx: Effects) {
        let Some(p) = m.environments[ei].promotion.as_ref() else {
            return;
        };
        let (previous, candidate) = (p.previous.clone(), p.candidate.clone());
        let status = p.machine.status;
        let succeeded_replicas = p.machine.candidate_target.max(1);
        if status.is_terminal() {
            m.environments[ei].extra = (0, 0);
        }
        let (extra_prev, extra_cand) = m.environments[ei].extra;
        if let Some(n) = fx.candidate_replicas {
            if let Some(d) = m.deployments.iter().find(|d| d.id == candidate) {
                d.provider.scale(n + extra_cand);
            }
        }
        if let Some(n) = fx.previous_replicas {
            if let Some(d) = m.deployments.iter().find(|d| d.id == previous) {
                d.provider.scale(n + extra_prev);
            }
        }
        let env = &mut m.environments[ei];
        if status == Status::Succeeded {
            env.current = Some(candidate.clone());
            env.replicas = succeeded_replicas;
            if fx.cleanup == Some(CleanupStrategy::Deactivate) {
                if let Some(d) = m.deployments.iter_mut().find(|d| d.id == previous) {
                    d.active = false;
                    d.provider.scale(0);
                }
            }
        }
        for e in fx.events {
            tracing::info!(
                model = %m.id, environment = %env.name, status = %e.status,
                percent = e.percent_traffic_to_new_version, candidate = e.candidate_replicas,
                previous = e.previous_replicas, "{}", e.reason
            );
            let _ = self.events.send(EnvironmentEvent {
                model: m.id.clone(),
                environment: env.name.clone(),
                previous_deployment: previous.clone(),
                candidate_deployment: candidate.clone(),
                event: e.clone(),
            });
            if env.events.len() >= EVENT_LOG_LIMIT {
                env.events.remove(0);
            }
            env.events.push(e);
        }
    }

    fn with_env<T>(
        &self,
        model: &str,
        environment: &str,
        f: impl FnOnce(&mut ModelState, usize) -> Result<T, ControllerError>,
    ) -> Result<T, ControllerError> {
        let mut st = self.lock();
        let (mi, ei) = env_index(&st, model, environment)?;
        let m = &mut st.models[mi];
        let out = f(m, ei)?;
        self.reroute(&mut st);
        self.persist(&st);
        drop(st);
        self.wake.send_modify(|n| *n += 1);
        Ok(out)
    }

    /// Starts promoting `candidate` in an environment, with the environment's settings.
    pub fn promote(
        &self,
        model: &str,
        environment: &str,
        candidate: &str,
    ) -> Result<(), ControllerError> {
        let now = self.now_ms();
        self.with_env(model, environment, |m, ei| {
            let env = &m.environments[ei];
            if env.fixed.is_some() {
                return Err(ControllerError::FixedSplit(env.name.clone()));
            }
            if let Some(p) = &env.promotion {
                if !p.machine.status.is_terminal() {
                    return Err(ControllerError::PromotionInProgress(p.candidate.clone()));
                }
            }
            let Some(cand) = m.deployments.iter().find(|d| d.id == candidate) else {
                return Err(ControllerError::UnknownDeployment {
                    model: m.id.clone(),
                    deployment: candidate.to_owned(),
                });
            };
            let previous = env.current.clone().unwrap_or_default();
            if previous == candidate {
                return Err(ControllerError::AlreadyCurrent(candidate.to_owned()));
            }
            if let Some(other) = m.environments.iter().find(|e| {
                e.name != env.name
                    && (e.current.as_deref() == Some(candidate)
                        || e.fixed
                            .as_ref()
                            .is_some_and(|w| w.get(candidate).is_some_and(|w| *w > 0)))
            }) {
                return Err(ControllerError::SharedDeployment {
                    deployment: candidate.to_owned(),
                    environment: other.name.clone(),
                });
            }
            let prev_replicas = m
                .deployments
                .iter()
                .find(|d| d.id == previous)
                .map_or(1, |d| d.provider.status().desired.max(1));
            let (machine, fx) = Promotion::start(prev_replicas, env.settings.clone(), now)?;
            if let Some(listed) = cand.listed {
                if (listed as u32) < machine.fleet {
                    return Err(ControllerError::NotEnoughEndpoints {
                        deployment: candidate.to_owned(),
                        listed,
                        needed: machine.fleet,
                    });
                }
            }
            // A static candidate starts from none admitted; the machine scales it up.
            cand.provider.scale(0);
            if let Some(d) = m.deployments.iter_mut().find(|d| d.id == candidate) {
                d.active = true;
            }
            m.environments[ei].promotion = Some(ActivePromotion {
                previous,
                candidate: candidate.to_owned(),
                machine,
            });
            self.apply(m, ei, fx);
            Ok(())
        })
    }

    fn control(
        &self,
        model: &str,
        environment: &str,
        f: impl FnOnce(&mut Promotion, u64) -> Result<Effects, ControlError>,
    ) -> Result<Status, ControllerError> {
        let now = self.now_ms();
        self.with_env(model, environment, |m, ei| {
            let env = &mut m.environments[ei];
            let Some(p) = env
                .promotion
                .as_mut()
                .filter(|p| !p.machine.status.is_terminal())
            else {
                return Err(ControllerError::NoPromotion(env.name.clone()));
            };
            let fx = f(&mut p.machine, now)?;
            let status = p.machine.status;
            self.apply(m, ei, fx);
            Ok(status)
        })
    }

    pub fn pause(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.pause(now))
    }

    pub fn resume(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.resume(now))
    }

    /// Graceful cancel; answers RAMPING_DOWN or CANCELED.
    pub fn cancel(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.cancel(now))
    }

    pub fn force_cancel(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.force_cancel(now))
    }

    pub fn force_roll_forward(
        &self,
        model: &str,
        environment: &str,
    ) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.force_roll_forward(now))
    }

    pub fn environment(
        &self,
        model: &str,
        environment: &str,
    ) -> Result<EnvironmentView, ControllerError> {
        let st = self.lock();
        let (m, env) = find_env(&st, model, environment)?;
        let promotion = env.promotion.as_ref().map(|p| PromotionView {
            status: p.machine.status,
            previous_deployment: p.previous.clone(),
            candidate_deployment: p.candidate.clone(),
            percent_traffic_to_new_version: p.machine.percent,
            error_message: p.machine.error_message.clone(),
            rolling_deploy: p.machine.config.rolling,
            candidate_target: p.machine.candidate_target,
            previous_target: p.machine.previous_target,
            fleet: p.machine.fleet,
        });
        let candidate_deployment = env
            .promotion
            .as_ref()
            .filter(|p| !p.machine.status.is_terminal())
            .map(|p| p.candidate.clone());
        let deployments = m
            .deployments
            .iter()
            .map(|d| {
                let s: ReplicaSetStatus = d.provider.status();
                (
                    d.id.clone(),
                    DeploymentView {
                        provider: d.kind,
                        active: d.active,
                        desired_replicas: s.desired,
                        ready_replicas: s.ready.len() as u32,
                        starting_replicas: s.starting,
                        draining_replicas: s.draining,
                        failure: s.failure,
                    },
                )
            })
            .collect();
        Ok(EnvironmentView {
            model: m.id.clone(),
            name: env.name.clone(),
            current_deployment: env.current.clone(),
            candidate_deployment,
            promotion,
            settings: env.settings.clone(),
            autoscaling: env.autoscaler.as_ref().map(|a| a.settings),
            replicas: env.replicas,
            deployments,
        })
    }

    /// Replaces an environment's promotion and autoscaling settings (already validated). A
    /// promotion in progress keeps the settings it started with. Returns whether anything changed.
    pub fn set_environment_settings(
        &self,
        model: &str,
        environment: &str,
        settings: PromotionConfig,
        autoscaling: Option<super::autoscale::AutoscalingSettings>,
    ) -> Result<bool, ControllerError> {
        self.with_env(model, environment, |m, ei| {
            let env = &mut m.environments[ei];
            let before = (
                env.settings.clone(),
                env.autoscaler.as_ref().map(|a| a.settings),
            );
            if before == (settings.clone(), autoscaling) {
                return Ok(false);
            }
            env.settings = settings;
            if env.autoscaler.as_ref().map(|a| a.settings) != autoscaling {
                env.autoscaler = autoscaling.map(Autoscaler::new);
            }
            let reason = "settings updated".to_string();
            let at = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            tracing::info!(model = %m.id, environment = %env.name, "{reason}");
            if let Some(p) = &env.promotion {
                env.events.push(Event {
                    at_ms: at,
                    status: p.machine.status,
                    percent_traffic_to_new_version: p.machine.percent,
                    candidate_replicas: p.machine.candidate_target,
                    previous_replicas: p.machine.previous_target,
                    reason,
                });
            }
            Ok(true)
        })
    }

    /// Adds a deployment to a model without a restart. It starts with no replicas (static: all
    /// listed endpoints admitted) until a promotion scales it.
    pub fn add_deployment(
        &self,
        model: &str,
        id: &str,
        spec: ProviderSpec,
    ) -> Result<(), ControllerError> {
        let mut st = self.lock();
        let m = st
            .models
            .iter_mut()
            .find(|m| m.id == model)
            .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))?;
        if m.deployments.iter().any(|d| d.id == id) {
            return Err(ControllerError::DeploymentExists(id.to_owned()));
        }
        let (provider, kind, listed) =
            make_provider(model, id, &spec, &self.router, &self.timing, &self.runtime);
        m.deployments.push(DeploymentState {
            id: id.to_owned(),
            registered: Some(spec),
            provider,
            kind,
            listed,
            active: true,
        });
        tracing::info!(
            model,
            deployment = id,
            provider = kind,
            "deployment registered"
        );
        self.reroute(&mut st);
        self.persist(&st);
        Ok(())
    }

    /// Activates or deactivates a deployment. A deactivated one has no replicas and gets no
    /// traffic, pinned requests included; a current or promoting deployment cannot be deactivated.
    pub fn set_active(&self, model: &str, id: &str, active: bool) -> Result<(), ControllerError> {
        let mut st = self.lock();
        let m = st
            .models
            .iter_mut()
            .find(|m| m.id == model)
            .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))?;
        if !m.deployments.iter().any(|d| d.id == id) {
            return Err(ControllerError::UnknownDeployment {
                model: model.to_owned(),
                deployment: id.to_owned(),
            });
        }
        if !active {
            if let Some(e) = m.environments.iter().find(|e| {
                e.current.as_deref() == Some(id)
                    || e.fixed
                        .as_ref()
                        .is_some_and(|w| w.get(id).is_some_and(|w| *w > 0))
                    || e.promotion.as_ref().is_some_and(|p| {
                        !p.machine.status.is_terminal() && (p.candidate == id || p.previous == id)
                    })
            }) {
                return Err(ControllerError::SharedDeployment {
                    deployment: id.to_owned(),
                    environment: e.name.clone(),
                });
            }
        }
        if let Some(d) = m.deployments.iter_mut().find(|d| d.id == id) {
            d.active = active;
            if !active {
                d.provider.scale(0);
            }
        }
        self.reroute(&mut st);
        self.persist(&st);
        Ok(())
    }

    pub fn models(&self) -> Vec<ModelSummary> {
        self.lock()
            .models
            .iter()
            .map(|m| ModelSummary {
                id: m.id.clone(),
                deployments: m.deployments.iter().map(|d| d.id.clone()).collect(),
                environments: m.environments.iter().map(|e| e.name.clone()).collect(),
            })
            .collect()
    }

    pub fn events(&self, model: &str, environment: &str) -> Result<Vec<Event>, ControllerError> {
        let st = self.lock();
        let (_, env) = find_env(&st, model, environment)?;
        Ok(env.events.clone())
    }

    /// Stops every replica (process replicas drain and exit) and waits up to `timeout`.
    pub async fn stop_replicas(&self, timeout: Duration) {
        let providers: Vec<Arc<dyn ReplicaProvider>> = {
            let st = self.lock();
            st.models
                .iter()
                .flat_map(|m| m.deployments.iter().map(|d| d.provider.clone()))
                .collect()
        };
        for p in &providers {
            p.shutdown();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            let left: u32 = providers
                .iter()
                .map(|p| {
                    let s = p.status();
                    s.ready.len() as u32 + s.starting + s.draining
                })
                .sum();
            if left == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One autoscaling decision for an environment with autoscaling on.
fn autoscale(m: &mut ModelState, ei: usize, in_flight: u32, now: u64) {
    let env = &mut m.environments[ei];
    let Some(a) = env.autoscaler.as_mut() else {
        return;
    };
    a.record(now, in_flight);
    let provider = |id: &str| {
        m.deployments
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.provider.clone())
    };
    match env
        .promotion
        .as_ref()
        .filter(|p| !p.machine.status.is_terminal())
    {
        None => {
            let Some(p) = env.current.as_deref().and_then(provider) else {
                return;
            };
            let s = p.status();
            let capacity = s.ready.len() as u32 + s.starting;
            let desired = a.desired(now, capacity);
            if desired != s.desired {
                tracing::info!(model = %m.id, environment = %env.name, from = s.desired, to = desired, in_flight, "autoscaling");
                p.scale(desired);
            }
        }
        Some(p) => {
            // During a rollout only additions, split by the traffic split.
            let want = a.recommended();
            let (prev, cand) = (
                p.machine.previous_target + env.extra.0,
                p.machine.candidate_target + env.extra.1,
            );
            if want <= prev + cand {
                return;
            }
            let (add_prev, add_cand) = split_addition(
                want - prev - cand,
                p.machine.percent,
                prev,
                cand,
                a.settings.max_replica,
            );
            if add_prev + add_cand == 0 {
                return;
            }
            env.extra.0 += add_prev;
            env.extra.1 += add_cand;
            tracing::info!(model = %m.id, environment = %env.name, add_prev, add_cand, in_flight, "autoscaling during the rollout");
            if let Some(d) = provider(&p.previous) {
                d.scale(p.machine.previous_target + env.extra.0);
            }
            if let Some(d) = provider(&p.candidate) {
                d.scale(p.machine.candidate_target + env.extra.1);
            }
        }
    }
}

/// Indices of a model and one of its environments, or the error naming what is missing.
fn env_index(
    st: &State,
    model: &str,
    environment: &str,
) -> Result<(usize, usize), ControllerError> {
    let mi = st
        .models
        .iter()
        .position(|m| m.id == model)
        .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))?;
    let ei = st.models[mi]
        .environments
        .iter()
        .position(|e| e.name == environment)
        .ok_or_else(|| ControllerError::UnknownEnvironment {
            model: model.to_owned(),
            environment: environment.to_owned(),
        })?;
    Ok((mi, ei))
}

/// The model and environment by name, or the error naming what is missing.
fn find_env<'a>(
    st: &'a State,
    model: &str,
    environment: &str,
) -> Result<(&'a ModelState, &'a EnvironmentState), ControllerError> {
    let (mi, ei) = env_index(st, model, environment)?;
    let m = &st.models[mi];
    Ok((m, &m.environments[ei]))
}

fn make_provider(
    model: &str,
    id: &str,
    spec: &ProviderSpec,
    router: &Arc<Router>,
    timing: &ProviderTiming,
    runtime: &tokio::runtime::Handle,
) -> (Arc<dyn ReplicaProvider>, &'static str, Option<usize>) {
    match spec {
        ProviderSpec::Static { endpoints } => {
            // Listed endpoints are admitted unless a promotion says otherwise.
            let set = StaticSet::new(endpoints.clone(), endpoints.len() as u32);
            (Arc::new(set), "static", Some(endpoints.len()))
        }
        ProviderSpec::Process { .. } => {
            let (m, d) = (model.to_owned(), id.to_owned());
            let r = router.clone();
            let lookup: DataPlaneLookup = Arc::new(move |addr| r.replica(&m, &d, addr));
            let set = ReplicaSet::spawn(
                runtime,
                format!("{model}/{id}"),
                spec.clone(),
                timing.clone(),
                lookup,
            );
            (set as Arc<dyn ReplicaProvider>, "process", None)
        }
    }
}

/// Events kept in the store per environment.
const PERSISTED_EVENTS: usize = 1000;

/// What survives a restart.
#[derive(Serialize, serde::Deserialize)]
struct Persisted {
    version: u32,
    models: Vec<PersistedModel>,
}

#[derive(Serialize, serde::Deserialize)]
struct PersistedModel {
    id: String,
    inactive: Vec<String>,
    #[serde(default)]
    registered: Vec<(String, ProviderSpec)>,
    environments: Vec<PersistedEnvironment>,
}

#[derive(Serialize, serde::Deserialize)]
struct PersistedEnvironment {
    name: String,
    #[serde(default)]
    settings: Option<PromotionConfig>,
    #[serde(default)]
    autoscaling: Option<super::autoscale::AutoscalingSettings>,
    current: Option<String>,
    replicas: u32,
    extra: (u32, u32),
    promotion: Option<PersistedPromotion>,
    events: Vec<Event>,
}

#[derive(Serialize, serde::Deserialize)]
struct PersistedPromotion {
    previous: String,
    candidate: String,
    machine: Promotion,
}

impl Persisted {
    fn of(st: &State) -> Persisted {
        Persisted {
            version: 1,
            models: st
                .models
                .iter()
                .map(|m| PersistedModel {
                    id: m.id.clone(),
                    inactive: m
                        .deployments
                        .iter()
                        .filter(|d| !d.active)
                        .map(|d| d.id.clone())
                        .collect(),
                    registered: m
                        .deployments
                        .iter()
                        .filter_map(|d| d.registered.clone().map(|s| (d.id.clone(), s)))
                        .collect(),
                    environments: m
                        .environments
                        .iter()
                        .filter(|e| e.fixed.is_none())
                        .map(|e| PersistedEnvironment {
                            name: e.name.clone(),
                            settings: Some(e.settings.clone()),
                            autoscaling: e.autoscaler.as_ref().map(|a| a.settings),
                            current: e.current.clone(),
                            replicas: e.replicas,
                            extra: e.extra,
                            promotion: e.promotion.as_ref().map(|p| PersistedPromotion {
                                previous: p.previous.clone(),
                                candidate: p.candidate.clone(),
                                machine: p.machine.clone(),
                            }),
                            events: e.events[e.events.len().saturating_sub(PERSISTED_EVENTS)..]
                                .to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Applies saved state onto the configured models. What the configuration no longer has
/// (models, environments, deployments) is skipped with a warning.
fn restore(
    st: &mut State,
    saved: Persisted,
    router: &Arc<Router>,
    timing: &ProviderTiming,
    runtime: &tokio::runtime::Handle,
) {
    for pm in saved.models {
        let Some(m) = st.models.iter_mut().find(|m| m.id == pm.id) else {
            tracing::warn!(model = %pm.id, "saved state names a model the configuration no longer has");
            continue;
        };
        for (id, spec) in pm.registered {
            if m.deployments.iter().any(|d| d.id == id) {
                continue; // the configuration declares it now
            }
            let (provider, kind, listed) =
                make_provider(&m.id, &id, &spec, router, timing, runtime);
            m.deployments.push(DeploymentState {
                id,
                registered: Some(spec),
                provider,
                kind,
                listed,
                active: true,
            });
        }
        let has = |m: &ModelState, d: &str| m.deployments.iter().any(|x| x.id == d);
        for d in &pm.inactive {
            if let Some(x) = m.deployments.iter_mut().find(|x| &x.id == d) {
                x.active = false;
            }
        }
        for pe in pm.environments {
            let known = pe.current.as_deref().is_none_or(|c| has(m, c))
                && pe
                    .promotion
                    .as_ref()
                    .is_none_or(|p| has(m, &p.previous) && has(m, &p.candidate));
            let Some(env) = m
                .environments
                .iter_mut()
                .find(|e| e.name == pe.name && e.fixed.is_none())
            else {
                tracing::warn!(model = %m.id, environment = %pe.name, "saved state names an environment the configuration no longer manages");
                continue;
            };
            if !known {
                tracing::warn!(model = %m.id, environment = %pe.name, "saved state names deployments the configuration no longer has; using the configuration");
                continue;
            }
            if let Some(p) = &pe.promotion {
                tracing::info!(
                    model = %m.id, environment = %pe.name, status = %p.machine.status,
                    percent = p.machine.percent, "restored the promotion from the saved state"
                );
            }
            if let Some(settings) = pe.settings {
                env.settings = settings;
            }
            if let Some(a) = pe.autoscaling {
                env.autoscaler = Some(Autoscaler::new(a));
            }
            env.current = pe.current;
            env.replicas = pe.replicas;
            env.extra = pe.extra;
            env.events = pe.events;
            env.promotion = pe.promotion.map(|p| ActivePromotion {
                previous: p.previous,
                candidate: p.candidate,
                machine: p.machine,
            });
        }
    }
}

/// Sets every process deployment's replica count from the state: the promotion's targets while
/// one runs, the environment's count for its current deployment, none otherwise. (Static
/// deployments start with every listed endpoint admitted.)
fn initial_scale(st: &State) {
    for m in &st.models {
        for d in m.deployments.iter().filter(|d| d.kind == "process") {
            let mut want = 0;
            for e in &m.environments {
                match e
                    .promotion
                    .as_ref()
                    .filter(|p| !p.machine.status.is_terminal())
                {
                    Some(p) if p.candidate == d.id => {
                        want = want.max(p.machine.candidate_target + e.extra.1)
                    }
                    Some(p) if p.previous == d.id => {
                        want = want.max(p.machine.previous_target + e.extra.0)
                    }
                    Some(_) => {}
                    None if e.current.as_deref() == Some(d.id.as_str()) => {
                        want = want.max(e.replicas)
                    }
                    None => {}
                }
            }
            d.provider.scale(if d.active { want } else { 0 });
        }
        for d in m.deployments.iter().filter(|d| d.kind == "static") {
            for e in &m.environments {
                if let Some(p) = e
                    .promotion
                    .as_ref()
                    .filter(|p| !p.machine.status.is_terminal())
                {
                    if p.candidate == d.id {
                        d.provider.scale(p.machine.candidate_target);
                    } else if p.previous == d.id {
                        d.provider.scale(p.machine.previous_target);
                    }
                }
            }
        }
    }
}

fn observe(m: &ModelState, previous: &str, candidate: &str) -> Observation {
    let status = |id: &str| {
        m.deployments
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.provider.status())
            .unwrap_or_default()
    };
    let (p, c) = (status(previous), status(candidate));
    Observation {
        candidate_ready: c.ready.len() as u32,
        previous_ready: p.ready.len() as u32,
        candidate_failure: c.failure,
    }
}

/// The routing snapshot description for the current state: ready replicas only; weights from
/// fixed splits, current deployments and promotion percents.
fn build_spec(st: &State) -> RoutingSpec {
    let mut spec = RoutingSpec::default();
    for m in &st.models {
        let ready: BTreeMap<&str, Vec<std::net::SocketAddr>> = m
            .deployments
            .iter()
            .filter(|d| d.active)
            .map(|d| (d.id.as_str(), d.provider.status().ready))
            .collect();
        let environments = m
            .environments
            .iter()
            .map(|e| {
                let mut weights: BTreeMap<String, u32> = match (&e.fixed, &e.promotion, &e.current)
                {
                    (Some(w), _, _) => w.clone(),
                    (None, Some(p), _) if !p.machine.status.is_terminal() => {
                        let to_new = p.machine.percent.min(100) * (WEIGHT_SCALE / 100);
                        [
                            (p.previous.clone(), WEIGHT_SCALE - to_new),
                            (p.candidate.clone(), to_new),
                        ]
                        .into_iter()
                        .collect()
                    }
                    (None, _, Some(c)) => [(c.clone(), WEIGHT_SCALE)].into_iter().collect(),
                    (None, _, None) => BTreeMap::new(),
                };
                weights.retain(|d, _| ready.contains_key(d.as_str()));
                shift_off_empty(&mut weights, &ready);
                EnvironmentSpec {
                    name: e.name.clone(),
                    hosts: e.hosts.clone(),
                    weights,
                }
            })
            .collect();
        spec.models.push(ModelSpec {
            id: m.id.clone(),
            hosts: m.hosts.clone(),
            deployments: m
                .deployments
                .iter()
                .filter(|d| d.active)
                .map(|d| DeploymentSpec {
                    id: d.id.clone(),
                    replicas: ready.get(d.id.as_str()).cloned().unwrap_or_default(),
                })
                .collect(),
            environments,
        });
    }
    spec
}

/// Moves weight off deployments with no ready replica onto those that have some, so a split
/// never sends traffic to an empty pool while another pool could serve it.
fn shift_off_empty(
    weights: &mut BTreeMap<String, u32>,
    ready: &BTreeMap<&str, Vec<std::net::SocketAddr>>,
) {
    let empty = |d: &str| ready.get(d).is_none_or(|r| r.is_empty());
    let stranded: u32 = weights
        .iter()
        .filter(|(d, w)| **w > 0 && empty(d))
        .map(|(_, w)| *w)
        .sum();
    if stranded == 0 {
        return;
    }
    let serving: u32 = weights
        .iter()
        .filter(|(d, _)| !empty(d))
        .map(|(_, w)| *w)
        .sum();
    if serving == 0 {
        return; // nothing can serve: leave it, requests get a clear 503
    }
    let total = stranded + serving;
    let mut given = 0;
    let last = weights
        .iter()
        .filter(|(d, w)| !empty(d) && **w > 0)
        .map(|(d, _)| d.clone())
        .next_back();
    for (d, w) in weights.iter_mut() {
        if empty(d) {
            *w = 0;
        } else if Some(d) != last.as_ref() {
            *w = (u64::from(*w) * u64::from(total) / u64::from(serving)) as u32;
            given += *w;
        }
    }
    if let Some(d) = last {
        if let Some(w) = weights.get_mut(&d) {
            *w = total - given;
        }
    }
}

/// Resolves when the first of the futures does.
async fn select_first<F: std::future::Future + Unpin>(futs: Vec<F>) -> F::Output {
    let mut futs = futs;
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if let std::task::Poll::Ready(v) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready(v);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(list: &[(&'static str, usize)]) -> BTreeMap<&'static str, Vec<std::net::SocketAddr>> {
        list.iter()
            .map(|(d, n)| {
                (
                    *d,
                    (0..*n)
                        .map(|i| std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)))
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn weight_on_an_empty_pool_moves_to_a_serving_one() {
        let mut w: BTreeMap<String, u32> = [("v1".into(), 600_000), ("v2".into(), 400_000)]
            .into_iter()
            .collect();
        shift_off_empty(&mut w, &ready(&[("v1", 2), ("v2", 0)]));
        assert_eq!(w["v1"], WEIGHT_SCALE);
        assert_eq!(w["v2"], 0);
        let mut w: BTreeMap<String, u32> = [
            ("a".into(), 500_000),
            ("b".into(), 250_000),
            ("c".into(), 250_000),
        ]
        .into_iter()
        .collect();
        shift_off_empty(&mut w, &ready(&[("a", 1), ("b", 1), ("c", 0)]));
        assert_eq!(w.values().sum::<u32>(), WEIGHT_SCALE);
        assert_eq!(w["c"], 0);
        assert!(w["a"] > w["b"]);
        let mut w: BTreeMap<String, u32> = [("v1".into(), WEIGHT_SCALE)].into_iter().collect();
        shift_off_empty(&mut w, &ready(&[("v1", 0)]));
        assert_eq!(w["v1"], WEIGHT_SCALE, "nothing can serve: left as is");
    }
}
