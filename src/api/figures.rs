//! Recent windowed figures per routing pool, for the dashboard's sparklines: a sampler reads
//! each pool's cumulative counters every [`INTERVAL`] and keeps the differences of the last
//! [`WINDOW`] per pool, so memory stays bounded whatever the uptime.
//!
//! The sampler visits every pool of every environment, so its cost follows the size of the
//! configuration: with 10,000 models, most of them idle at any moment, it must not copy
//! histograms or store points for pools where nothing happened. An idle pool costs a few
//! atomic loads per sample and one bit per window; only windows with traffic are stored.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::types::{DeploymentFigures, EnvironmentFigures, FigurePoint};
use crate::metrics::window::{PoolStats, StatsSnapshot};
use crate::routing::Router;

/// Length of one window.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How far back the figures go.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Points kept per pool: one bit each in [`Pool::sampled`].
const POINTS: usize = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize;
const _: () = assert!(POINTS <= 64);
const POINTS_MASK: u64 = if POINTS == 64 {
    u64::MAX
} else {
    (1u64 << POINTS) - 1
};

struct Pool {
    /// Cumulative figures at the last sample; `None` while the pool had recorded nothing.
    last: Option<StatsSnapshot>,
    /// The pool's [`mark`](crate::metrics::window::PoolStats::mark) at the last sample.
    mark: Option<[u64; 4]>,
    last_ms: u64,
    /// Bit `i` set: the pool has a point for the `i`-th most recent sample (bit 0 the newest).
    sampled: u64,
    /// The points of windows with something in them, oldest first; every other sampled
    /// window was empty (no requests, no samples).
    busy: VecDeque<FigurePoint>,
}

/// Pools by model, environment, then deployment (sorted by id): looked up by name without
/// allocating. An environment has a few deployments, so a sorted `Vec` rather than a
/// `BTreeMap`, whose first node alone is 2 kB with this `Pool`.
type Pools = HashMap<String, HashMap<String, Vec<(String, Pool)>>>;

struct Rings {
    /// Times of the last [`POINTS`] samples, oldest first.
    times: VecDeque<u64>,
    pools: Pools,
}

/// The sampler's rings, shared with the API handlers.
pub struct Figures {
    router: Arc<Router>,
    rings: Mutex<Rings>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Option<Duration>) -> Option<f64> {
    // Microsecond resolution is plenty for a chart; round to 0.1 ms to keep the JSON short.
    d.map(|d| (d.as_secs_f64() * 10_000.0).round() / 10.0)
}

/// The point of a window in which nothing happened.
fn empty_point(at_ms: u64) -> FigurePoint {
    FigurePoint {
        at: super::views::rfc3339(UNIX_EPOCH + Duration::from_millis(at_ms)),
        at_ms,
        requests_per_s: 0.0,
        error_rate_percent: None,
        p99_latency_ms: None,
        p99_ttfb_ms: None,
    }
}

fn is_empty(p: &FigurePoint) -> bool {
    p.requests_per_s == 0.0
        && p.error_rate_percent.is_none()
        && p.p99_latency_ms.is_none()
        && p.p99_ttfb_ms.is_none()
}

/// The figures of the window between two cumulative snapshots `secs` apart.
fn point(now: &StatsSnapshot, earlier: &StatsSnapshot, at_ms: u64, secs: f64) -> FigurePoint {
    let w = now.since(earlier);
    let error_rate_percent = (w.requests > 0).then(|| {
        let p = w.errors as f64 * 100.0 / w.requests as f64;
        (p * 100.0).round() / 100.0
    });
    FigurePoint {
        at: super::views::rfc3339(UNIX_EPOCH + Duration::from_millis(at_ms)),
        at_ms,
        requests_per_s: if secs > 0.0 {
            ((w.requests as f64 / secs) * 100.0).round() / 100.0
        } else {
            0.0
        },
        error_rate_percent,
        p99_latency_ms: ms(w.latency.quantile(0.99)),
        p99_ttfb_ms: ms(w.ttfb.quantile(0.99)),
    }
}

/// Whether a sample starts a new baseline instead of closing a window: after a gap (the pool was
/// not routed to for a while) the difference would lump minutes into one point, and after a
/// reset (the pool was rebuilt) it would be wrong.
fn restarts(pool: &Pool, requests: u64, at_ms: u64) -> bool {
    is_gap(pool.last_ms, at_ms) || requests < pool.last.as_ref().map_or(0, |l| l.requests)
}

/// Whether two samples are too far apart to make one window (the sampler missed some).
fn is_gap(last_ms: u64, at_ms: u64) -> bool {
    at_ms.saturating_sub(last_ms) > 2 * INTERVAL.as_millis() as u64
}

impl Pool {
    /// A pool first seen at `at_ms`: the baseline of its first window, no point yet.
    fn baseline(stats: &PoolStats, at_ms: u64) -> Pool {
        let mark = stats.mark();
        Pool {
            last: mark.map(|_| stats.snapshot()),
            mark,
            last_ms: at_ms,
            sampled: 0,
            busy: VecDeque::new(),
        }
    }

    /// One sample of this pool's stats, taken at `at_ms`; the sampled bits were already moved
    /// on by one.
    fn sample(&mut self, stats: &PoolStats, at_ms: u64) {
        let mark = stats.mark();
        if mark == self.mark && !is_gap(self.last_ms, at_ms) {
            // Nothing recorded since the last sample: an empty window, nothing copied.
            self.sampled |= 1;
            self.last_ms = at_ms;
            return;
        }
        let snap = mark.map(|_| stats.snapshot());
        let requests = snap.as_ref().map_or(0, |s| s.requests);
        if !restarts(self, requests, at_ms) {
            let p = match &snap {
                Some(now) => {
                    let secs = at_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
                    let zero;
                    let earlier = match &self.last {
                        Some(e) => e,
                        None => {
                            zero = StatsSnapshot::default();
                            &zero
                        }
                    };
                    point(now, earlier, at_ms, secs)
                }
                None => empty_point(at_ms),
            };
            self.sampled |= 1;
            if !is_empty(&p) {
                self.busy.push_back(p);
            }
        }
        self.last = snap;
        self.mark = mark;
        self.last_ms = at_ms;
    }

    /// Its points, oldest first, against the sample times (oldest first).
    fn points(&self, times: &VecDeque<u64>) -> Vec<FigurePoint> {
        let mut busy = self.busy.iter().peekable();
        let n = times.len();
        let mut out = Vec::with_capacity(self.sampled.count_ones() as usize);
        for (i, &t) in times.iter().enumerate() {
            if self.sampled >> (n - 1 - i) & 1 == 0 {
                continue;
            }
            while busy.next_if(|p| p.at_ms < t).is_some() {}
            match busy.next_if(|p| p.at_ms == t) {
                Some(p) => out.push(p.clone()),
                None => out.push(empty_point(t)),
            }
        }
        out
    }
}

impl Figures {
    pub fn new(router: Arc<Router>) -> Arc<Figures> {
        Arc::new(Figures {
            router,
            rings: Mutex::new(Rings {
                times: VecDeque::with_capacity(POINTS + 1),
                pools: HashMap::new(),
            }),
        })
    }

    /// Samples every pool an environment routes to now (current, candidate, and the previous
    /// deployment of a promotion while it still has traffic). A pool no environment routes to
    /// any more keeps its points until they are older than [`WINDOW`], then goes.
    pub fn sample(&self) {
        self.sample_at(now_ms());
    }

    fn sample_at(&self, at_ms: u64) {
        let routed = self.router.environment_pools();
        let mut guard = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let rings = &mut *guard;
        rings.times.push_back(at_ms);
        while rings.times.len() > POINTS {
            rings.times.pop_front();
        }
        for envs in rings.pools.values_mut() {
            for deps in envs.values_mut() {
                for (_, pool) in deps.iter_mut() {
                    pool.sampled = (pool.sampled << 1) & POINTS_MASK;
                }
            }
        }
        for metrics in routed {
            let [m, e, d] = metrics.labels();
            let deps = match rings.pools.get_mut(m.as_str()) {
                Some(envs) => match envs.get_mut(e.as_str()) {
                    Some(deps) => deps,
                    None => envs.entry(e.clone()).or_default(),
                },
                None => rings
                    .pools
                    .entry(m.clone())
                    .or_default()
                    .entry(e.clone())
                    .or_default(),
            };
            match deps.iter_mut().find(|(id, _)| id == d) {
                Some((_, pool)) => pool.sample(&metrics.stats, at_ms),
                // The first sample of a pool is only the baseline of its first window.
                None => {
                    deps.reserve_exact(1); // a first push would make room for four
                    deps.push((d.clone(), Pool::baseline(&metrics.stats, at_ms)));
                    deps.sort_by(|a, b| a.0.cmp(&b.0));
                }
            }
        }
        let oldest_point = rings.times.front().copied().unwrap_or(at_ms);
        let oldest = at_ms.saturating_sub(u64::try_from(WINDOW.as_millis()).unwrap_or(0));
        rings.pools.retain(|_, envs| {
            envs.retain(|_, deps| {
                deps.retain_mut(|(_, p)| {
                    while p.busy.front().is_some_and(|b| b.at_ms < oldest_point) {
                        p.busy.pop_front();
                    }
                    p.last_ms >= oldest
                });
                !deps.is_empty()
            });
            !envs.is_empty()
        });
    }

    /// Samples every [`INTERVAL`] for as long as the runtime it is spawned on lives.
    pub async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample();
        }
    }

    /// The points of an environment's deployments, by deployment id.
    pub fn environment(&self, model: &str, environment: &str) -> EnvironmentFigures {
        let rings = self.rings.lock().unwrap_or_else(|e| e.into_inner());
        let deps = rings
            .pools
            .get(model)
            .and_then(|envs| envs.get(environment));
        EnvironmentFigures {
            interval_seconds: INTERVAL.as_secs() as u32,
            window_seconds: WINDOW.as_secs() as u32,
            deployments: deps
                .into_iter()
                .flatten()
                .map(|(d, p)| DeploymentFigures {
                    deployment_id: d.clone(),
                    points: p.points(&rings.times),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::routing::spec::{
        DeploymentSpec, EnvironmentSpec, ModelSpec, RoutingSpec, WEIGHT_SCALE,
    };

    const T0: u64 = 1_800_000_000_000;
    const STEP: u64 = INTERVAL.as_millis() as u64;

    /// `models` models with one deployment each, routed to by their production environment.
    fn router(models: usize) -> Arc<Router> {
        let r = Arc::new(Router::new(Metrics::new()));
        let spec = RoutingSpec {
            models: (0..models)
                .map(|i| ModelSpec {
                    id: format!("m{i}"),
                    hosts: vec![],
                    deployments: vec![DeploymentSpec {
                        id: "v1".into(),
                        replicas: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 1001))],
                    }],
                    environments: vec![EnvironmentSpec {
                        name: "production".into(),
                        hosts: vec![],
                        weights: [("v1".to_string(), WEIGHT_SCALE)].into_iter().collect(),
                    }],
                })
                .collect(),
        };
        if let Err(e) = r.apply(&spec) {
            panic!("spec: {e}");
        }
        r
    }

    /// Records `n` answers of 40 ms (10 ms to first byte) on a model's production pool.
    fn traffic(r: &Router, model: &str, n: usize) {
        let pools = r.environment_pools();
        let Some(p) = pools.iter().find(|p| p.labels()[0] == model) else {
            panic!("no pool for {model}");
        };
        for _ in 0..n {
            p.stats.response(200);
            p.stats.first_byte(Duration::from_millis(10));
            p.stats.latency(Duration::from_millis(40));
        }
    }

    fn points(f: &Figures, model: &str) -> Vec<FigurePoint> {
        let figs = f.environment(model, "production");
        assert_eq!(figs.deployments.len(), 1, "{figs:?}");
        figs.deployments[0].points.clone()
    }

    #[test]
    fn an_idle_pool_shows_empty_windows_and_stores_nothing_for_them() {
        let f = Figures::new(router(3));
        for i in 0..4 {
            f.sample_at(T0 + i * STEP);
        }
        let p = points(&f, "m1");
        assert_eq!(
            p.iter().map(|p| p.at_ms).collect::<Vec<_>>(),
            [T0 + STEP, T0 + 2 * STEP, T0 + 3 * STEP],
            "the first sample is the baseline; then one point per window"
        );
        assert!(p.iter().all(|p| *p == empty_point(p.at_ms)), "{p:?}");
        let rings = f.rings.lock().unwrap_or_else(|e| e.into_inner());
        for deps in rings.pools.values().flat_map(|envs| envs.values()) {
            for (_, pool) in deps {
                assert!(pool.busy.is_empty() && pool.last.is_none());
            }
        }
    }

    #[test]
    fn traffic_shows_in_its_own_window_between_empty_ones() {
        let r = router(2);
        let f = Figures::new(r.clone());
        f.sample_at(T0);
        f.sample_at(T0 + STEP);
        traffic(&r, "m0", 100);
        f.sample_at(T0 + 2 * STEP);
        f.sample_at(T0 + 3 * STEP);
        traffic(&r, "m0", 50);
        f.sample_at(T0 + 4 * STEP);
        let p = points(&f, "m0");
        let rates: Vec<f64> = p.iter().map(|p| p.requests_per_s).collect();
        assert_eq!(rates, [0.0, 20.0, 0.0, 10.0]);
        let lat = p[1].p99_latency_ms.unwrap_or_default();
        assert!((37.0..43.0).contains(&lat), "p99 {lat}");
        assert_eq!(p[2], empty_point(T0 + 3 * STEP));
        assert_eq!(p[3].error_rate_percent, Some(0.0));
        let other = points(&f, "m1");
        assert!(other.iter().all(|p| p.requests_per_s == 0.0));
    }

    #[test]
    fn a_pool_keeps_the_last_five_minutes_only() {
        let r = router(1);
        let f = Figures::new(r.clone());
        for i in 0..(POINTS as u64 * 3) {
            traffic(&r, "m0", 5);
            f.sample_at(T0 + i * STEP);
        }
        let p = points(&f, "m0");
        assert_eq!(p.len(), POINTS);
        assert_eq!(POINTS, 60);
        assert_eq!(
            p.first().map(|p| p.at_ms),
            Some(T0 + 2 * POINTS as u64 * STEP)
        );
        assert!(p.iter().all(|p| p.requests_per_s == 1.0), "{p:?}");
        let rings = f.rings.lock().unwrap_or_else(|e| e.into_inner());
        let busy: usize = rings
            .pools
            .values()
            .flat_map(|envs| envs.values())
            .flatten()
            .map(|(_, pool)| pool.busy.len())
            .sum();
        assert_eq!(busy, POINTS, "points older than the window are dropped");
    }

    #[test]
    fn gaps_and_resets_start_a_new_baseline() {
        let r = router(1);
        let f = Figures::new(r.clone());
        f.sample_at(T0);
        traffic(&r, "m0", 10);
        f.sample_at(T0 + STEP);
        // The sampler missed a minute: that sample is a baseline, not a one-minute window.
        traffic(&r, "m0", 600);
        f.sample_at(T0 + 13 * STEP);
        traffic(&r, "m0", 5);
        f.sample_at(T0 + 14 * STEP);
        let p = points(&f, "m0");
        assert_eq!(
            p.iter()
                .map(|p| (p.at_ms, p.requests_per_s))
                .collect::<Vec<_>>(),
            [(T0 + STEP, 2.0), (T0 + 14 * STEP, 1.0)]
        );
        let pool = Pool {
            last: Some(StatsSnapshot {
                requests: 100,
                ..Default::default()
            }),
            mark: None,
            last_ms: 10_000,
            sampled: 0,
            busy: VecDeque::new(),
        };
        assert!(
            !restarts(&pool, 150, 15_000),
            "the next tick closes a window"
        );
        assert!(restarts(&pool, 150, 60_000), "a gap starts over");
        assert!(restarts(&pool, 0, 15_000), "a reset starts over");
    }

    #[test]
    fn a_pool_no_environment_routes_to_goes_after_the_window() {
        let r = router(2);
        let f = Figures::new(r.clone());
        f.sample_at(T0);
        f.sample_at(T0 + STEP);
        if let Err(e) = r.apply(&RoutingSpec { models: vec![] }) {
            panic!("spec: {e}");
        }
        f.sample_at(T0 + 2 * STEP);
        assert_eq!(
            points(&f, "m0").len(),
            1,
            "kept while its points are recent"
        );
        f.sample_at(T0 + 2 * STEP + WINDOW.as_millis() as u64);
        assert!(f.environment("m0", "production").deployments.is_empty());
    }

    #[test]
    fn a_window_is_the_difference_of_two_snapshots() {
        let mut earlier = StatsSnapshot {
            requests: 10,
            errors: 1,
            ..Default::default()
        };
        earlier.latency.record(Duration::from_millis(5));
        let mut now = earlier.clone();
        now.requests += 100;
        now.errors += 5;
        for _ in 0..100 {
            now.latency.record(Duration::from_millis(40));
            now.ttfb.record(Duration::from_millis(10));
        }
        let p = point(&now, &earlier, 5_000, 5.0);
        assert_eq!(p.requests_per_s, 20.0);
        assert_eq!(p.error_rate_percent, Some(5.0));
        let lat = p.p99_latency_ms.unwrap_or_default();
        assert!((37.0..43.0).contains(&lat), "p99 {lat}");
        let ttfb = p.p99_ttfb_ms.unwrap_or_default();
        assert!((9.0..11.0).contains(&ttfb), "ttfb {ttfb}");
        let idle = point(&now, &now, 5_000, 5.0);
        assert_eq!(idle, empty_point(5_000));
        assert!(is_empty(&idle));
    }
}
