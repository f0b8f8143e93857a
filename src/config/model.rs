//! What the controller is told about models: deployments with their replica provider, and
//! environments with either a fixed split or a current deployment that promotions move.

use std::collections::BTreeMap;

use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::controller::{EnvironmentSetup, ModelSetup, TrafficSetup};
use crate::rollout::machine::PromotionConfig;
use crate::routing::spec::{DeploymentSpec, EnvironmentSpec, ModelSpec, WEIGHT_SCALE};
use crate::routing::RoutingSpec;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub id: String,
    pub hosts: Vec<String>,
    pub deployments: Vec<DeploymentConfig>,
    pub environments: Vec<EnvironmentConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentConfig {
    pub id: String,
    pub provider: ProviderSpec,
    /// Static deployments: run this when the deployment's replica target changes (an
    /// orchestrator starts or stops replicas, which register or are listed).
    pub scale_command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Traffic {
    /// A fixed split (parts per million). Promotions are refused.
    Weights(BTreeMap<String, u32>),
    /// All traffic to one deployment, running `replicas` replicas; promotions move it.
    Current { deployment: String, replicas: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentConfig {
    pub name: String,
    pub hosts: Vec<String>,
    pub traffic: Traffic,
    pub promotion: PromotionConfig,
    /// With `current`: scale the deployment(s) on load (process deployments).
    pub autoscaling: Option<AutoscalingSettings>,
}

impl ModelConfig {
    pub fn deployment(&self, id: &str) -> Option<&DeploymentConfig> {
        self.deployments.iter().find(|d| d.id == id)
    }
}

/// The routing a set of models starts with, before any process replica is ready: static
/// endpoints as listed, process deployments with no replica yet.
pub fn initial_routing(models: &[ModelConfig]) -> RoutingSpec {
    RoutingSpec {
        models: models
            .iter()
            .map(|m| ModelSpec {
                id: m.id.clone(),
                hosts: m.hosts.clone(),
                deployments: m
                    .deployments
                    .iter()
                    .map(|d| DeploymentSpec {
                        id: d.id.clone(),
                        replicas: match &d.provider {
                            ProviderSpec::Static { endpoints } => endpoints.clone(),
                            ProviderSpec::Process { .. } => Vec::new(),
                        },
                    })
                    .collect(),
                environments: m
                    .environments
                    .iter()
                    .map(|e| EnvironmentSpec {
                        name: e.name.clone(),
                        hosts: e.hosts.clone(),
                        weights: match &e.traffic {
                            Traffic::Weights(w) => w.clone(),
                            Traffic::Current { deployment, .. } => {
                                [(deployment.clone(), WEIGHT_SCALE)].into_iter().collect()
                            }
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Static deployments and fixed splits, as the data plane alone would serve them.
pub fn models_from_routing(spec: &RoutingSpec) -> Vec<ModelConfig> {
    spec.models
        .iter()
        .map(|m| ModelConfig {
            id: m.id.clone(),
            hosts: m.hosts.clone(),
            deployments: m
                .deployments
                .iter()
                .map(|d| DeploymentConfig {
                    id: d.id.clone(),
                    provider: ProviderSpec::Static {
                        endpoints: d.replicas.clone(),
                    },
                    scale_command: None,
                })
                .collect(),
            environments: m
                .environments
                .iter()
                .map(|e| EnvironmentConfig {
                    name: e.name.clone(),
                    hosts: e.hosts.clone(),
                    traffic: Traffic::Weights(e.weights.clone()),
                    promotion: PromotionConfig::default(),
                    autoscaling: None,
                })
                .collect(),
        })
        .collect()
}

impl From<&ModelConfig> for ModelSetup {
    /// What the controller is told about a configured model.
    fn from(m: &ModelConfig) -> ModelSetup {
        ModelSetup {
            id: m.id.clone(),
            hosts: m.hosts.clone(),
            deployments: m
                .deployments
                .iter()
                .map(|d| (d.id.clone(), d.provider.clone()))
                .collect(),
            scale_commands: m
                .deployments
                .iter()
                .filter_map(|d| d.scale_command.clone().map(|c| (d.id.clone(), c)))
                .collect(),
            environments: m
                .environments
                .iter()
                .map(|e| EnvironmentSetup {
                    name: e.name.clone(),
                    hosts: e.hosts.clone(),
                    traffic: match &e.traffic {
                        Traffic::Weights(w) => TrafficSetup::Weights(w.clone()),
                        Traffic::Current {
                            deployment,
                            replicas,
                        } => TrafficSetup::Current {
                            deployment: deployment.clone(),
                            replicas: *replicas,
                        },
                    },
                    promotion: e.promotion.clone(),
                    autoscaling: e.autoscaling,
                })
                .collect(),
        }
    }
}
