//! What the API sees: the controller's error type, read-only views of models, environments
//! and deployments, and the queries that build them from the state.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::rollout::analysis::AnalysisState;

use super::state::{find_env, State};
use super::Controller;
use crate::replicas::ReplicaSetStatus;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::{ControlError, Event, PromotionConfig, Status};
use crate::rollout::plan::PlanError;

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
    #[error("deployment {deployment:?} has {listed} endpoints (listed and registered), but this promotion needs {needed} replicas")]
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
    /// The shared store could not commit the change (or no leader took it): nothing changed.
    #[error("{0}")]
    Unavailable(String),
    /// The leader refused a command sent on this instance's behalf.
    #[error("{message}")]
    Remote { status: u16, message: String },
}

impl ControllerError {
    /// The HTTP status the API answers it with.
    pub fn http_status(&self) -> u16 {
        match self {
            ControllerError::UnknownModel(_)
            | ControllerError::UnknownEnvironment { .. }
            | ControllerError::UnknownDeployment { .. } => 404,
            ControllerError::PromotionInProgress(_)
            | ControllerError::NoPromotion(_)
            | ControllerError::FixedSplit(_)
            | ControllerError::SharedDeployment { .. }
            | ControllerError::AlreadyCurrent(_)
            | ControllerError::DeploymentExists(_)
            | ControllerError::Control(_) => 409,
            ControllerError::NotEnoughEndpoints { .. } | ControllerError::Settings(_) => 400,
            ControllerError::Unavailable(_) => 503,
            ControllerError::Remote { status, .. } => *status,
        }
    }
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
    pub autoscaling: Option<AutoscalingSettings>,
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
    /// The previous deployment's replicas when the promotion started (the plan's N).
    pub original_previous: u32,
    /// The rolling settings the promotion started with (later changes do not apply to it).
    pub rolling_config: crate::rollout::plan::RollingConfig,
    /// Canary analysis state, when the promotion runs with it.
    pub analysis: Option<AnalysisState>,
    /// When the interval being measured ends (wall-clock ms).
    pub next_verdict_ms: Option<u64>,
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

impl Controller {
    pub fn environment(
        &self,
        model: &str,
        environment: &str,
    ) -> Result<EnvironmentView, ControllerError> {
        let st = self.lock();
        environment_view(&st, model, environment)
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
}

fn environment_view(
    st: &State,
    model: &str,
    environment: &str,
) -> Result<EnvironmentView, ControllerError> {
    let (m, env) = find_env(st, model, environment)?;
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
        original_previous: p.machine.original_previous,
        rolling_config: p.machine.config.rolling_config,
        analysis: p
            .machine
            .config
            .analysis
            .enabled
            .then(|| p.machine.analysis.clone()),
        next_verdict_ms: p.machine.analysis_due_ms(),
    });
    let candidate_deployment = env.running_promotion().map(|p| p.candidate.clone());
    let deployments = m
        .deployments
        .iter()
        .map(|d| {
            let s: ReplicaSetStatus = d.provider.status();
            (
                d.id.clone(),
                DeploymentView {
                    provider: d.kind.name(),
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
