//! A `/metrics` scrape over N models with one pool each (as `serve --config` builds them),
//! idle, and after each has served on two threads (a status code, and latency and first-byte
//! histograms): the exposition written whole (`Metrics::encode`) and as `/metrics` streams it,
//! part by part from a `ScrapeBody`. Prints each exposition's size and parts first.
//!
//!   cargo bench --bench scrape

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http_body::Body;
use switchyard::metrics::{Metrics, PoolMetrics, ScrapeBody};

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
        let (parts, largest) = streamed(&m);
        println!(
            "scrape of {models} {state} models: {} bytes, {} lines, {parts} parts of at most {largest} bytes",
            text.len(),
            text.iter().filter(|b| **b == b'\n').count()
        );
        g.bench_function(format!("{models} {state} models, whole"), |b| {
            b.iter(|| m.encode())
        });
        g.bench_function(format!("{models} {state} models, streamed"), |b| {
            b.iter(|| streamed(&m))
        });
    }
    g.finish();
}

/// Reads a scrape's body to its end as a connection would: (parts, largest part).
fn streamed(m: &Metrics) -> (usize, usize) {
    let mut body = ScrapeBody::new(m.scrape());
    let mut cx = Context::from_waker(Waker::noop());
    let (mut parts, mut largest) = (0, 0);
    while let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(&mut cx) {
        let n = frame.data_ref().map_or(0, |d| d.len());
        parts += 1;
        largest = largest.max(n);
    }
    (parts, largest)
}

criterion_group!(benches, scrape);
criterion_main!(benches);
