//! What the routing benches share: specs of one or many models, and the routing decision as
//! the request path makes it.
#![allow(dead_code)] // each bench uses part of it

use std::net::SocketAddr;

use switchyard::routing::spec::WEIGHT_SCALE;
use switchyard::routing::{DeploymentSpec, EnvironmentSpec, ModelSpec, Route, Router, RoutingSpec};

pub fn replicas(base: u16, n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect()
}

/// A model with one Host and two deployments (v1 90%, v2 10%) of `replicas` each.
pub fn model(id: &str, host: &str, replicas_per_deployment: u16) -> ModelSpec {
    ModelSpec {
        id: id.into(),
        hosts: vec![host.into()],
        deployments: vec![
            DeploymentSpec {
                id: "v1".into(),
                replicas: replicas(10_000, replicas_per_deployment),
            },
            DeploymentSpec {
                id: "v2".into(),
                replicas: replicas(20_000, replicas_per_deployment),
            },
        ],
        environments: vec![EnvironmentSpec {
            name: "production".into(),
            hosts: vec![],
            weights: [
                ("v1".to_string(), WEIGHT_SCALE / 10 * 9),
                ("v2".to_string(), WEIGHT_SCALE / 10),
            ]
            .into_iter()
            .collect(),
        }],
    }
}

/// Exactly what `proxy::forward` does before its first await.
pub fn decide(router: &Router, host: Option<&str>, path: &str) -> u64 {
    let snapshot = router.load();
    let resolved = snapshot.resolve(host, path).expect("routable");
    let mut rng = rand::rng();
    let pool = match resolved.route {
        Route::Pinned(p) => p,
        Route::Split(env) => env.pick_pool(&mut rng).expect("weighted"),
    };
    pool.pick_replica(&mut rng, &[]).map_or(0, |r| r.id)
}

/// `models` models, one Host each, `replicas` per deployment (two deployments, 90/10).
pub fn many_models(models: usize, replicas_per_deployment: u16) -> RoutingSpec {
    RoutingSpec {
        models: (0..models)
            .map(|i| {
                model(
                    &format!("model-{i}"),
                    &format!("model-{i}.example"),
                    replicas_per_deployment,
                )
            })
            .collect(),
    }
}

/// `spec` after a rollout step: the first model's environment splits 50/50.
pub fn rollout_step(spec: &RoutingSpec) -> RoutingSpec {
    let mut b = spec.clone();
    for dep in ["v1", "v2"] {
        b.models[0].environments[0]
            .weights
            .insert(dep.into(), WEIGHT_SCALE / 2);
    }
    b
}
