//! The controller on a shared store (several instances on etcd).
//!
//! Every change goes through one path: the leader changes its state (a tick, or a command),
//! commits the changed model records in one conditional transaction, and only then reroutes;
//! when the commit fails the changed models are put back as last committed, so no step is
//! taken without a committed write. Followers apply committed records as the watch delivers
//! them, and send API writes to the leader as [`Command`]s.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::persist::{model_record, restore_model, PersistedModel};
use super::views::ControllerError;
use super::{Controller, EnvironmentEvent};
use crate::cluster::{Cluster, CommandEnvelope, CommandFailure, Reply, SubmitError};
use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::{PromotionConfig, Status};

/// Events kept per environment in a shared record (each step rewrites the record).
const SHARED_EVENTS: usize = 300;

/// An API write, runnable here or by the leader on a follower's behalf.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    Promote {
        model: String,
        environment: String,
        candidate: String,
    },
    Pause {
        model: String,
        environment: String,
    },
    Resume {
        model: String,
        environment: String,
    },
    Cancel {
        model: String,
        environment: String,
    },
    ForceCancel {
        model: String,
        environment: String,
    },
    ForceRollForward {
        model: String,
        environment: String,
    },
    SetEnvironmentSettings {
        model: String,
        environment: String,
        settings: Box<PromotionConfig>,
        autoscaling: Option<AutoscalingSettings>,
    },
    AddDeployment {
        model: String,
        id: String,
        spec: ProviderSpec,
    },
    SetActive {
        model: String,
        id: String,
        active: bool,
    },
}

/// What a command answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Done,
    Status(Status),
    Changed(bool),
}

impl From<&ControllerError> for CommandFailure {
    fn from(e: &ControllerError) -> Self {
        CommandFailure {
            status: e.http_status(),
            message: e.to_string(),
        }
    }
}

/// A model record as stored: the encoded model with when and by whom it was committed.
#[derive(Deserialize)]
struct StoredModel<'a> {
    committed_at_ms: u64,
    #[serde(borrow)]
    model: &'a serde_json::value::RawValue,
}

impl Controller {
    /// Puts the controller on a shared store; before [`Cluster::start`] reads it.
    pub fn attach_cluster(&self, cluster: Arc<Cluster>) {
        let _ = self.cluster.set(cluster);
    }

    /// The cluster this instance belongs to, if it runs on a shared store.
    pub fn shared(&self) -> Option<Arc<Cluster>> {
        self.cluster.get().cloned()
    }

    /// This instance's cumulative figures of every pool a running promotion's analysis judges.
    pub(crate) fn analysis_pool_stats(&self) -> Vec<crate::cluster::PoolStatsReport> {
        let pools: Vec<(String, String, String)> = {
            let st = self.lock();
            st.models
                .iter()
                .flat_map(|m| {
                    m.environments.iter().filter_map(move |e| {
                        let p = e.running_promotion()?;
                        p.machine.config.analysis.enabled.then(|| {
                            [&p.previous, &p.candidate]
                                .map(|d| (m.id.clone(), e.name.clone(), d.clone()))
                        })
                    })
                })
                .flatten()
                .collect()
        };
        pools
            .into_iter()
            .map(
                |(model, environment, deployment)| crate::cluster::PoolStatsReport {
                    stats: self.router.pool_stats(&model, &environment, &deployment),
                    model,
                    environment,
                    deployment,
                },
            )
            .collect()
    }

    /// Runs an API write: here (alone, or as the leader), or through the leader.
    pub async fn execute(&self, command: Command) -> Result<Outcome, ControllerError> {
        let Some(cluster) = self.cluster.get().cloned() else {
            return self.run_command(&command);
        };
        if !cluster.is_leader() {
            let raw = serde_json::value::to_raw_value(&command).map_err(|e| {
                ControllerError::Unavailable(format!("cannot encode the change: {e}"))
            })?;
            return match cluster.submit(raw).await {
                Ok(answer) => serde_json::from_str(answer.get()).map_err(|e| {
                    ControllerError::Unavailable(format!("the leader's answer does not parse: {e}"))
                }),
                Err(SubmitError::Refused(f)) => Err(ControllerError::Remote {
                    status: f.status,
                    message: f.message,
                }),
                Err(SubmitError::Unavailable(m)) => Err(ControllerError::Unavailable(m)),
            };
        }
        let _gate = self.gate.lock().await;
        let out = self.run_command(&command);
        self.commit_shared(None).await?;
        out
    }

    fn run_command(&self, command: &Command) -> Result<Outcome, ControllerError> {
        use Command::*;
        match command {
            Promote {
                model,
                environment,
                candidate,
            } => self
                .promote(model, environment, candidate)
                .map(|_| Outcome::Done),
            Pause { model, environment } => self.pause(model, environment).map(Outcome::Status),
            Resume { model, environment } => self.resume(model, environment).map(Outcome::Status),
            Cancel { model, environment } => self.cancel(model, environment).map(Outcome::Status),
            ForceCancel { model, environment } => {
                self.force_cancel(model, environment).map(Outcome::Status)
            }
            ForceRollForward { model, environment } => self
                .force_roll_forward(model, environment)
                .map(Outcome::Status),
            SetEnvironmentSettings {
                model,
                environment,
                settings,
                autoscaling,
            } => self
                .set_environment_settings(model, environment, (**settings).clone(), *autoscaling)
                .map(Outcome::Changed),
            AddDeployment { model, id, spec } => {
                if matches!(spec, ProviderSpec::Process { .. }) {
                    return Err(ControllerError::Remote {
                        status: 400,
                        message: "provider: process deployments cannot run with a shared store (each instance would start its own); register a static deployment".into(),
                    });
                }
                self.add_deployment(model, id, spec.clone())
                    .map(|_| Outcome::Done)
            }
            SetActive { model, id, active } => {
                self.set_active(model, id, *active).map(|_| Outcome::Done)
            }
        }
    }

    /// The leader runs a follower's command and commits its answer with the state it changed.
    pub(crate) async fn run_remote(&self, envelope: CommandEnvelope) {
        let _gate = self.gate.lock().await;
        let Some(cluster) = self.cluster.get() else {
            return;
        };
        if !cluster.is_leader() {
            return;
        }
        let result = match serde_json::from_str::<Command>(envelope.command.get()) {
            Ok(command) => self
                .run_command(&command)
                .map_err(|e| CommandFailure::from(&e))
                .and_then(|outcome| {
                    serde_json::value::to_raw_value(&outcome).map_err(|e| CommandFailure {
                        status: 500,
                        message: e.to_string(),
                    })
                }),
            // A newer follower's command this leader does not know.
            Err(e) => Err(CommandFailure {
                status: 400,
                message: format!("the leader cannot read this change: {e}"),
            }),
        };
        let reply = Reply {
            id: envelope.id.clone(),
            lease: envelope.lease,
            result,
        };
        if let Err(e) = self.commit_shared(Some(&reply)).await {
            tracing::warn!(command = %envelope.id, from = %envelope.from, error = %e, "a follower's command was not committed");
        }
    }

    /// The leader's pass: tick, commit what changed, then route. Holds the current step when
    /// the commit fails.
    pub(super) async fn shared_pass(&self) -> Option<tokio::time::Instant> {
        let _gate = self.gate.lock().await;
        let next = self.tick();
        match self.commit_shared(None).await {
            Ok(()) => next,
            Err(e) => {
                tracing::warn!(error = %e, "holding the current step: the change was not committed");
                Some(tokio::time::Instant::now() + std::time::Duration::from_secs(1))
            }
        }
    }

    /// A follower's pass: readiness may have changed.
    pub(super) fn follower_pass(&self) {
        let mut st = self.lock();
        self.route_now(&mut st);
    }

    /// Commits every model whose record changed since the last commit (with a command's
    /// answer), then reroutes; puts the changed models back as committed when it fails.
    async fn commit_shared(&self, reply: Option<&Reply>) -> Result<(), ControllerError> {
        let Some(cluster) = self.cluster.get() else {
            return Ok(());
        };
        let changes: Vec<(String, Vec<u8>)> = {
            let st = self.lock();
            let committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            st.models
                .iter()
                .filter_map(|m| {
                    let bytes = serde_json::to_vec(&model_record(m, SHARED_EVENTS)).ok()?;
                    (committed.get(&m.id) != Some(&bytes)).then(|| (m.id.clone(), bytes))
                })
                .collect()
        };
        if changes.is_empty() && reply.is_none() {
            let mut st = self.lock();
            self.route_now(&mut st);
            return Ok(());
        }
        match cluster.commit(&changes, reply).await {
            Ok(()) => {
                let mut committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
                for (id, bytes) in changes {
                    committed.insert(id, bytes);
                }
                drop(committed);
                let mut st = self.lock();
                self.route_now(&mut st);
                Ok(())
            }
            Err(e) => {
                self.roll_back(changes.iter().map(|(id, _)| id.as_str()));
                Err(ControllerError::Unavailable(e))
            }
        }
    }

    /// Puts models back as last committed (their uncommitted changes are dropped).
    fn roll_back<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.lock();
        for id in ids {
            let Some(bytes) = committed.get(id) else {
                continue;
            };
            let Ok(pm) = serde_json::from_slice::<PersistedModel>(bytes) else {
                continue;
            };
            if let Some(m) = st.models.iter_mut().find(|m| m.id == id) {
                restore_model(m, pm, &self.providers, true);
            }
        }
        self.route_now(&mut st);
    }

    /// Applies a committed model record from the store. Returns when it was committed (wall
    /// ms) if it changed this instance's state, `None` for one it already had.
    pub(crate) async fn apply_shared(&self, value: &[u8]) -> Result<Option<u64>, String> {
        let stored: StoredModel = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let bytes = stored.model.get().as_bytes();
        let pm: PersistedModel = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let _gate = self.gate.lock().await;
        {
            let committed = self.committed.lock().unwrap_or_else(|e| e.into_inner());
            if committed.get(&pm.id).map(Vec::as_slice) == Some(bytes) {
                return Ok(None);
            }
        }
        let id = pm.id.clone();
        let fresh = {
            let mut st = self.lock();
            let Some(m) = st.models.iter_mut().find(|m| m.id == id) else {
                return Err(format!(
                    "model {id:?} is in the shared state but not in this instance's configuration"
                ));
            };
            let fresh = restore_model(m, pm, &self.providers, true);
            self.route_now(&mut st);
            fresh
        };
        self.committed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), bytes.to_vec());
        for (environment, pair, event) in fresh {
            let (previous, candidate) = pair.unwrap_or_default();
            let _ = self.events.send(EnvironmentEvent {
                model: id.clone(),
                environment,
                previous_deployment: previous,
                candidate_deployment: candidate,
                event,
            });
        }
        self.passes.send_modify(|n| *n += 1);
        self.wake.notify_one();
        Ok(Some(stored.committed_at_ms))
    }
}

/// What the cluster asks of this instance.
impl crate::cluster::Member for Controller {
    fn apply_record<'a>(
        &'a self,
        value: &'a [u8],
    ) -> futures_util::future::BoxFuture<'a, Result<Option<u64>, String>> {
        Box::pin(self.apply_shared(value))
    }

    /// The run loop starts or stops ticking.
    fn leadership_changed(&self) {
        self.wake.notify_one();
    }

    fn retired_in_flight(&self) -> Vec<crate::cluster::RetiredInFlight> {
        self.router
            .retired_in_flight()
            .into_iter()
            .map(
                |(model, deployment, address, in_flight)| crate::cluster::RetiredInFlight {
                    model,
                    deployment,
                    address,
                    in_flight,
                },
            )
            .collect()
    }

    fn analysis_figures(&self) -> Vec<crate::cluster::PoolStatsReport> {
        self.analysis_pool_stats()
    }

    fn run_command(&self, envelope: CommandEnvelope) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.run_remote(envelope))
    }

    fn registration_seen(
        &self,
        model: &str,
        deployment: &str,
        address: std::net::SocketAddr,
        present: bool,
    ) {
        self.set_registration(model, deployment, address, present);
    }

    fn registrations_read(&self, all: Vec<(String, String, std::net::SocketAddr)>) {
        self.replace_registrations(all);
    }
}
