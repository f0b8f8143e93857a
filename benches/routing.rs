//! The routing decision on the request path: snapshot load, route resolution, weighted pool
//! pick and P2C replica pick. Target: under 100 ns.

mod support;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use support::{decide, many_models, model, rollout_step};
use switchyard::metrics::Metrics;
use switchyard::routing::{Router, RoutingSpec};

fn router(replicas_per_deployment: u16) -> Router {
    let r = Router::new(Metrics::new());
    let spec = RoutingSpec {
        models: vec![model("llama", "llama.example", replicas_per_deployment)],
    };
    r.apply(&spec).expect("valid spec");
    r
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
    let b = rollout_step(&a);
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
