//! Does a snapshot swap stall the request path? A thread makes routing decisions back to back,
//! as a proxy worker does before each request's first await, timing every one, while the
//! controller rebuilds and swaps the snapshot of 10,000 models x 2 deployments x 10 replicas
//! every 10 ms (one environment changed each time, a rollout step). The same thread is timed
//! once more with no rebuilds, for the baseline in the same run.
//!
//! Also timed: what a request-path thread pays when it lets go of the snapshot it routed
//! with just after a swap. If it held the last reference, it frees that snapshot itself.
//!
//!   cargo bench --bench swap_stall
//!   SECONDS=10 cargo bench --bench swap_stall
//!
//! (The bench links the C library's malloc, not the mimalloc the binary uses.)

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::{decide, many_models, rollout_step};
use switchyard::metrics::Metrics;
use switchyard::routing::{Router, RoutingSpec};

const MODELS: usize = 10_000;
const REPLICAS: u16 = 10;
const REBUILD_EVERY: Duration = Duration::from_millis(10);
/// Decisions slower than these are counted.
const THRESHOLDS: [Duration; 3] = [
    Duration::from_micros(10),
    Duration::from_micros(100),
    Duration::from_millis(1),
];

#[derive(Default)]
struct Timings {
    calls: u64,
    total: Duration,
    max: Duration,
    over: [u64; THRESHOLDS.len()],
}

impl Timings {
    fn record(&mut self, d: Duration) {
        self.calls += 1;
        self.total += d;
        self.max = self.max.max(d);
        for (n, t) in self.over.iter_mut().zip(THRESHOLDS) {
            *n += u64::from(d > t);
        }
    }

    fn row(&self, name: &str) {
        let per_million = |n: u64| n as f64 * 1e6 / self.calls.max(1) as f64;
        println!(
            "{name:<22} {:>10} {:>9.0} {:>9.1} {:>9.2} {:>9.2} {:>10.1}",
            self.calls,
            self.total.as_nanos() as f64 / self.calls.max(1) as f64,
            per_million(self.over[0]),
            per_million(self.over[1]),
            per_million(self.over[2]),
            self.max.as_secs_f64() * 1e6,
        );
    }
}

/// Routes back to back for `secs`, alternating between the first and the last model's Host;
/// with `specs`, the calling thread rebuilds and swaps every `REBUILD_EVERY` meanwhile.
/// Returns the decisions' timings and the rebuilds' durations.
fn run(
    router: &Router,
    specs: Option<(&RoutingSpec, &RoutingSpec)>,
    secs: u64,
) -> (Timings, Vec<Duration>) {
    let hosts = [
        "model-0.example".to_string(),
        format!("model-{}.example", MODELS - 1),
    ];
    let stop = AtomicBool::new(false);
    let mut rebuilds = Vec::new();
    let timings = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut t = Timings::default();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let host = hosts[i & 1].as_str();
                i += 1;
                let start = Instant::now();
                std::hint::black_box(decide(router, Some(host), "/v1/chat/completions"));
                t.record(start.elapsed());
            }
            t
        });
        let end = Instant::now() + Duration::from_secs(secs);
        let mut flip = false;
        while Instant::now() < end {
            if let Some((a, b)) = specs {
                flip = !flip;
                let start = Instant::now();
                if let Err(e) = router.apply(if flip { b } else { a }) {
                    stop.store(true, Ordering::Relaxed);
                    panic!("the bench's spec was refused: {e}");
                }
                rebuilds.push(start.elapsed());
            }
            std::thread::sleep(REBUILD_EVERY);
        }
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap_or_default()
    });
    (timings, rebuilds)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let secs: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(5);
    let a = many_models(MODELS, REPLICAS);
    let b = rollout_step(&a);
    let router = Router::new(Metrics::new());
    router.apply(&a).expect("the bench's spec is valid");

    // Letting go of the snapshot routed with, right after a swap.
    let mut release = Vec::new();
    for i in 0..40 {
        let held = router.load_full();
        router
            .apply(if i % 2 == 0 { &b } else { &a })
            .expect("the bench's spec is valid");
        let start = Instant::now();
        drop(held);
        release.push(start.elapsed());
    }
    let release_max = release.iter().max().copied().unwrap_or_default();
    let release_median = median(&mut release);

    let (quiet, _) = run(&router, None, secs);
    let (busy, mut rebuilds) = run(&router, Some((&a, &b)), secs);
    let rebuild_max = rebuilds.iter().max().copied().unwrap_or_default();
    let rebuild_median = median(&mut rebuilds);

    println!(
        "== snapshot swaps against the request path: {MODELS} models x 2 deployments x {REPLICAS} replicas, {secs} s each =="
    );
    println!(
        "rebuild+swap, one environment changed: median {:.2} ms, max {:.2} ms over {} rebuilds",
        rebuild_median.as_secs_f64() * 1e3,
        rebuild_max.as_secs_f64() * 1e3,
        rebuilds.len()
    );
    println!(
        "letting go of the snapshot routed with, after a swap: median {:.1} µs, max {:.1} µs (40 swaps)",
        release_median.as_secs_f64() * 1e6,
        release_max.as_secs_f64() * 1e6
    );
    println!();
    println!(
        "{:<22} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "routing decisions", "calls", "mean ns", ">10µs/M", ">100µs/M", ">1ms/M", "max µs"
    );
    quiet.row("no rebuilds");
    busy.row("rebuild every 10 ms");
}
