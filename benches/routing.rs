//! The routing decision on the request path: snapshot load, route resolution, weighted pool
//! pick and P2C replica pick. Target: under 100 ns.

use std::net::SocketAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchyard::metrics::Metrics;
use switchyard::routing::spec::WEIGHT_SCALE;
use switchyard::routing::{DeploymentSpec, EnvironmentSpec, ModelSpec, Route, Router, RoutingSpec};

fn replicas(base: u16, n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], base + i)))
        .collect()
}

fn router(replicas_per_deployment: u16) -> Router {
    let r = Router::new(Metrics::new());
    let spec = RoutingSpec {
        models: vec![ModelSpec {
            id: "llama".into(),
            hosts: vec!["llama.example".into()],
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
        }],
    };
    r.apply(&spec).expect("valid spec");
    r
}

/// Exactly what `proxy::forward` does before its first await.
fn decide(router: &Router, host: Option<&str>, path: &str) -> u64 {
    let snapshot = router.load();
    let resolved = snapshot.resolve(host, path).expect("routable");
    let mut rng = rand::rng();
    let pool = match resolved.route {
        Route::Pinned(p) => p,
        Route::Split(env) => env.pick_pool(&mut rng).expect("weighted"),
    };
    pool.pick_replica(&mut rng, &[]).map_or(0, |r| r.id)
}

fn bench(c: &mut Criterion) {
    for n in [2u16, 16] {
        let r = router(n);
        c.bench_function(&format!("route+pick, {n} replicas per deployment"), |b| {
            b.iter(|| decide(&r, black_box(None), black_box("/v1/chat/completions")))
        });
    }
    let r = router(4);
    c.bench_function("route+pick by Host header", |b| {
        b.iter(|| {
            decide(
                &r,
                black_box(Some("llama.example:8080")),
                black_box("/v1/chat/completions"),
            )
        })
    });
    c.bench_function("route+pick pinned /deployment/v2", |b| {
        b.iter(|| {
            decide(
                &r,
                black_box(None),
                black_box("/deployment/v2/v1/chat/completions"),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
