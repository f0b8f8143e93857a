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
        models: vec![model("llama", "llama.example", replicas_per_deployment)],
    };
    r.apply(&spec).expect("valid spec");
    r
}

/// A model with one Host and two deployments (v1 90%, v2 10%) of `replicas` each.
fn model(id: &str, host: &str, replicas_per_deployment: u16) -> ModelSpec {
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

/// `models` models, one Host each, `replicas` per deployment (two deployments, 90/10).
fn many_models(models: usize, replicas_per_deployment: u16) -> RoutingSpec {
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

/// The cost of a request must not grow with the configuration: Host routing to the first and
/// the last of 1, 100 and 10,000 models.
fn host_lookup(c: &mut Criterion) {
    for n in [1usize, 100, 10_000] {
        let r = Router::new(Metrics::new());
        r.apply(&many_models(n, 1)).expect("valid spec");
        for (which, i) in [("first", 0), ("last", n - 1)] {
            let host = format!("model-{i}.example");
            c.bench_function(&format!("route+pick by Host, {n} models, {which}"), |b| {
                b.iter(|| decide(&r, black_box(Some(host.as_str())), black_box("/v1/x")))
            });
        }
    }
}

/// Rebuilding and swapping the snapshot of 10,000 models × 2 deployments × 10 replicas; the
/// target is under 50 ms. What the controller does on a rollout step (one environment's weights
/// change), and building every model anew (a new router, as at start).
fn rebuild(c: &mut Criterion) {
    let a = many_models(10_000, 10);
    let mut b = a.clone();
    for dep in ["v1", "v2"] {
        b.models[0].environments[0]
            .weights
            .insert(dep.into(), WEIGHT_SCALE / 2);
    }
    let r = Router::new(Metrics::new());
    r.apply(&a).expect("valid spec");
    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    let mut flip = false;
    g.bench_function(
        "rebuild+swap, 10,000 models, one environment changed",
        |bench| {
            bench.iter(|| {
                flip = !flip;
                r.apply(black_box(if flip { &b } else { &a }))
                    .expect("valid spec")
            })
        },
    );
    g.bench_function("build+swap, 10,000 models, all new", |bench| {
        bench.iter(|| {
            let fresh = Router::new(Metrics::new());
            fresh.apply(black_box(&a)).expect("valid spec");
            fresh
        })
    });
    g.finish();
}

criterion_group!(benches, bench, host_lookup, rebuild);
criterion_main!(benches);
