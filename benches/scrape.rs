//! A `/metrics` scrape: `Metrics::encode` over N models with one pool each (as `serve
//! --config` builds them), idle, and after each has served on two threads (a status code,
//! and latency and first-byte histograms). Prints each exposition's size first.
//!
//!   cargo bench --bench scrape

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use switchyard::metrics::{Metrics, PoolMetrics};

fn metrics(models: usize, served: bool) -> (Metrics, Vec<Arc<PoolMetrics>>) {
    let m = Metrics::new();
    let pools: Vec<_> = (0..models)
        .map(|i| m.pool(&format!("model-{i}"), "production", "v1"))
        .collect();
    if served {
        // From two threads, as two workers record: each has shards of its own.
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for p in &pools {
                        p.count_response(http::StatusCode::OK);
                        p.stats.latency(Duration::from_millis(40));
                        p.stats.first_byte(Duration::from_millis(12));
                    }
                });
            }
        });
    }
    (m, pools)
}

fn scrape(c: &mut Criterion) {
    let mut g = c.benchmark_group("scrape");
    g.sample_size(10);
    for (models, served) in [(100, false), (10_000, false), (10_000, true)] {
        let (m, _pools) = metrics(models, served);
        let text = m.encode();
        let state = if served { "served" } else { "idle" };
        println!(
            "scrape of {models} {state} models: {} bytes, {} lines",
            text.len(),
            text.iter().filter(|b| **b == b'\n').count()
        );
        g.bench_function(format!("{models} {state} models"), |b| {
            b.iter(|| m.encode())
        });
    }
    g.finish();
}

criterion_group!(benches, scrape);
criterion_main!(benches);
