//! The plain description of routing that a snapshot is built from. Config parsing produces it
//! today; the rollout controller will produce it at every step.

use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Weights are expressed in parts per million of an environment's traffic: finer than the
/// 1/10000 resolution a rollout needs, and exact for whole percentages.
pub const WEIGHT_SCALE: u32 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct RoutingSpec {
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub id: String,
    /// Host names (without port) whose requests go to this model's default environment.
    pub hosts: Vec<String>,
    pub deployments: Vec<DeploymentSpec>,
    pub environments: Vec<EnvironmentSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeploymentSpec {
    pub id: String,
    /// Replicas that passed readiness and may receive traffic.
    pub replicas: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentSpec {
    pub name: String,
    pub hosts: Vec<String>,
    /// Deployment id → weight in parts per [`WEIGHT_SCALE`]. Deployments absent here get no
    /// share of unpinned traffic.
    pub weights: BTreeMap<String, u32>,
}

impl ModelSpec {
    /// The environment unpinned requests for this model go to: `production` when it exists,
    /// otherwise the first declared.
    pub fn default_environment(&self) -> usize {
        self.environments
            .iter()
            .position(|e| e.name == "production")
            .unwrap_or(0)
    }
}

/// Turns relative weights (any non-negative numbers) into parts per million that sum to
/// exactly [`WEIGHT_SCALE`] (largest-remainder rounding), or all zero when every input is zero.
pub fn normalize_weights(weights: &BTreeMap<String, f64>) -> BTreeMap<String, u32> {
    let sum: f64 = weights.values().sum();
    if sum <= 0.0 {
        return weights.keys().map(|k| (k.clone(), 0)).collect();
    }
    let mut parts: Vec<(String, u32, f64)> = weights
        .iter()
        .map(|(k, w)| {
            let exact = w / sum * f64::from(WEIGHT_SCALE);
            (k.clone(), exact.floor() as u32, exact - exact.floor())
        })
        .collect();
    let assigned: u32 = parts.iter().map(|p| p.1).sum();
    let mut missing = WEIGHT_SCALE.saturating_sub(assigned);
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| parts[*b].2.total_cmp(&parts[*a].2));
    for i in order {
        if missing == 0 {
            break;
        }
        parts[i].1 += 1;
        missing -= 1;
    }
    parts.into_iter().map(|(k, v, _)| (k, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalized_weights_sum_to_scale() {
        let w: BTreeMap<String, f64> = [("a".into(), 1.0), ("b".into(), 1.0), ("c".into(), 1.0)]
            .into_iter()
            .collect();
        let n = normalize_weights(&w);
        assert_eq!(n.values().sum::<u32>(), WEIGHT_SCALE);
        let w: BTreeMap<String, f64> = [("v1".into(), 90.0), ("v2".into(), 10.0)]
            .into_iter()
            .collect();
        let n = normalize_weights(&w);
        assert_eq!(n["v1"], 900_000);
        assert_eq!(n["v2"], 100_000);
    }

    #[test]
    fn all_zero_weights_stay_zero() {
        let w: BTreeMap<String, f64> = [("a".into(), 0.0)].into_iter().collect();
        assert_eq!(normalize_weights(&w)["a"], 0);
    }
}
