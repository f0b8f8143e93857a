//! What the controller starts from: plain descriptions of models, their deployments and
//! environments. The configuration produces these (`config` imports `rollout`, never the
//! other way round).

use std::collections::BTreeMap;

use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::PromotionConfig;

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSetup {
    pub id: String,
    pub hosts: Vec<String>,
    /// (deployment id, where its replicas come from)
    pub deployments: Vec<(String, ProviderSpec)>,
    /// Commands run when a deployment's replica target changes, by deployment id.
    pub scale_commands: BTreeMap<String, Vec<String>>,
    pub environments: Vec<EnvironmentSetup>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentSetup {
    pub name: String,
    pub hosts: Vec<String>,
    pub traffic: TrafficSetup,
    pub promotion: PromotionConfig,
    pub autoscaling: Option<AutoscalingSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TrafficSetup {
    /// A fixed split (parts per million). Promotions are refused.
    Weights(BTreeMap<String, u32>),
    /// All traffic to one deployment, running `replicas` replicas; promotions move it.
    Current { deployment: String, replicas: u32 },
}
