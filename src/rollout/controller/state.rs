//! The controller's live state: models with their deployments (each with its replica
//! provider) and environments (current deployment, promotion, event log, autoscaler), and the
//! lookups by name that commands and views share.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::providers::ProviderKind;
use super::setup::{ModelSetup, TrafficSetup};
use super::views::ControllerError;
use crate::replicas::{ProviderSpec, ReplicaProvider};
use crate::rollout::autoscale::Autoscaler;
use crate::rollout::machine::{Event, Promotion, PromotionConfig};
use crate::routing::RoutingSpec;

pub(super) struct DeploymentState {
    pub id: String,
    /// Set for deployments registered through the API (they persist in the store).
    pub registered: Option<ProviderSpec>,
    pub provider: Arc<dyn ReplicaProvider>,
    pub kind: ProviderKind,
    pub active: bool,
    /// Run when the replica target changes (static deployments of the configuration).
    pub scale_command: Option<Vec<String>>,
}

pub(super) struct ActivePromotion {
    pub previous: String,
    pub candidate: String,
    pub machine: Promotion,
}

pub(super) struct EnvironmentState {
    pub name: String,
    pub hosts: Vec<String>,
    pub fixed: Option<BTreeMap<String, u32>>,
    pub current: Option<String>,
    pub settings: PromotionConfig,
    /// Boxed, as is the baseline: most environments have neither, and inline they were two
    /// thirds of an idle environment's 1.2 kB.
    pub promotion: Option<Box<ActivePromotion>>,
    pub events: Vec<Event>,
    pub autoscaler: Option<Autoscaler>,
    /// Replicas autoscaling added during the running promotion: (previous, candidate).
    pub extra: (u32, u32),
    /// Replicas of the current deployment while no promotion runs.
    pub replicas: u32,
    /// Both deployments' cumulative figures when the analysis interval being measured began.
    pub analysis_baseline: Option<Box<super::analysis::Baseline>>,
}

impl EnvironmentState {
    /// The promotion in progress, if one is (not a terminal one).
    pub fn running_promotion(&self) -> Option<&ActivePromotion> {
        self.promotion
            .as_deref()
            .filter(|p| !p.machine.status.is_terminal())
    }
}

pub(super) struct ModelState {
    pub id: String,
    pub hosts: Vec<String>,
    pub deployments: Vec<DeploymentState>,
    pub environments: Vec<EnvironmentState>,
}

impl ModelState {
    pub fn deployment(&self, id: &str) -> Option<&DeploymentState> {
        self.deployments.iter().find(|d| d.id == id)
    }
}

pub(super) struct State {
    pub models: Vec<ModelState>,
    /// The routing last installed, to skip swaps that change nothing.
    pub last_spec: Option<RoutingSpec>,
    /// Set when something that survives a restart changed and is not saved yet.
    pub dirty: bool,
}

impl State {
    /// The state a setup describes, with each deployment's provider from `provider`.
    pub fn from_setup(
        models: &[ModelSetup],
        mut provider: impl FnMut(&str, &str, &ProviderSpec) -> (Arc<dyn ReplicaProvider>, ProviderKind),
    ) -> State {
        let models = models
            .iter()
            .map(|m| ModelState {
                id: m.id.clone(),
                hosts: m.hosts.clone(),
                deployments: m
                    .deployments
                    .iter()
                    .map(|(id, spec)| {
                        let (provider, kind) = provider(&m.id, id, spec);
                        DeploymentState {
                            id: id.clone(),
                            registered: None,
                            provider,
                            kind,
                            active: true,
                            scale_command: m.scale_commands.get(id).cloned(),
                        }
                    })
                    .collect(),
                environments: m
                    .environments
                    .iter()
                    .map(|e| EnvironmentState {
                        name: e.name.clone(),
                        hosts: e.hosts.clone(),
                        fixed: match &e.traffic {
                            TrafficSetup::Weights(w) => Some(w.clone()),
                            TrafficSetup::Current { .. } => None,
                        },
                        current: match &e.traffic {
                            TrafficSetup::Current { deployment, .. } => Some(deployment.clone()),
                            TrafficSetup::Weights(_) => None,
                        },
                        settings: e.promotion.clone(),
                        promotion: None,
                        events: Vec::new(),
                        autoscaler: e.autoscaling.map(Autoscaler::new),
                        extra: (0, 0),
                        replicas: match &e.traffic {
                            TrafficSetup::Current { replicas, .. } => *replicas,
                            TrafficSetup::Weights(_) => 0,
                        },
                        analysis_baseline: None,
                    })
                    .collect(),
            })
            .collect();
        State {
            models,
            last_spec: None,
            dirty: true,
        }
    }

    pub fn model_mut(&mut self, model: &str) -> Result<&mut ModelState, ControllerError> {
        self.models
            .iter_mut()
            .find(|m| m.id == model)
            .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))
    }
}

/// Indices of a model and one of its environments, or the error naming what is missing.
pub(super) fn env_index(
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
pub(super) fn find_env<'a>(
    st: &'a State,
    model: &str,
    environment: &str,
) -> Result<(&'a ModelState, &'a EnvironmentState), ControllerError> {
    let (mi, ei) = env_index(st, model, environment)?;
    let m = &st.models[mi];
    Ok((m, &m.environments[ei]))
}
