//! Recent windowed figures per routing pool, for the dashboard's sparklines: a sampler reads
//! each pool's cumulative counters every [`INTERVAL`] and keeps the differences of the last
//! [`WINDOW`] in a ring per pool, so memory stays bounded whatever the uptime.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::types::{DeploymentFigures, EnvironmentFigures, FigurePoint};
use crate::metrics::window::StatsSnapshot;
use crate::rollout::controller::Controller;
use crate::routing::Router;

/// Length of one window.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How far back the figures go.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Points kept per pool.
const POINTS: usize = (WINDOW.as_secs() / INTERVAL.as_secs()) as usize;

type PoolKey = (String, String, String);

struct Pool {
    last: StatsSnapshot,
    last_ms: u64,
    points: VecDeque<FigurePoint>,
}

/// The sampler's rings, shared with the API handlers.
pub struct Figures {
    router: Arc<Router>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
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
fn restarts(pool: &Pool, snap: &StatsSnapshot, at_ms: u64) -> bool {
    at_ms.saturating_sub(pool.last_ms) > 2 * INTERVAL.as_millis() as u64
        || snap.requests < pool.last.requests
}

/// Appends a point, dropping the oldest once [`POINTS`] are kept.
fn push_bounded(points: &mut VecDeque<FigurePoint>, p: FigurePoint) {
    while points.len() >= POINTS {
        points.pop_front();
    }
    points.push_back(p);
}

impl Figures {
    pub fn new(router: Arc<Router>) -> Arc<Figures> {
        Arc::new(Figures {
            router,
            pools: Mutex::new(HashMap::new()),
        })
    }

    /// Samples every pool an environment routes to now (current, candidate, and the previous
    /// deployment of a promotion). A pool no environment routes to any more keeps its points
    /// until they are older than [`WINDOW`], then goes.
    pub fn sample(&self, controller: &Controller) {
        let at_ms = now_ms();
        let mut keys = Vec::new();
        for m in controller.models() {
            for e in &m.environments {
                let Ok(v) = controller.environment(&m.id, e) else {
                    continue;
                };
                let mut ids: Vec<String> = v
                    .current_deployment
                    .iter()
                    .chain(v.candidate_deployment.iter())
                    .cloned()
                    .collect();
                if let Some(p) = &v.promotion {
                    ids.push(p.previous_deployment.clone());
                    ids.push(p.candidate_deployment.clone());
                }
                ids.sort();
                ids.dedup();
                for d in ids {
                    keys.push((m.id.clone(), e.clone(), d));
                }
            }
        }
        let snapshots: Vec<(PoolKey, StatsSnapshot)> = keys
            .into_iter()
            .map(|k| {
                let s = self.router.pool_stats(&k.0, &k.1, &k.2);
                (k, s)
            })
            .collect();
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for (key, snap) in snapshots {
            match pools.get_mut(&key) {
                // The first sample of a pool is only the baseline of its first window.
                None => {
                    pools.insert(
                        key,
                        Pool {
                            last: snap,
                            last_ms: at_ms,
                            points: VecDeque::with_capacity(POINTS),
                        },
                    );
                }
                Some(pool) if restarts(pool, &snap, at_ms) => {
                    pool.last = snap;
                    pool.last_ms = at_ms;
                }
                Some(pool) => {
                    let secs = at_ms.saturating_sub(pool.last_ms) as f64 / 1000.0;
                    push_bounded(&mut pool.points, point(&snap, &pool.last, at_ms, secs));
                    pool.last = snap;
                    pool.last_ms = at_ms;
                }
            }
        }
        let oldest = at_ms.saturating_sub(u64::try_from(WINDOW.as_millis()).unwrap_or(0));
        pools.retain(|_, p| p.last_ms >= oldest);
    }

    /// Samples every [`INTERVAL`] for as long as the runtime it is spawned on lives.
    pub async fn run(self: Arc<Self>, controller: Arc<Controller>) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.sample(&controller);
        }
    }

    /// The points of an environment's deployments, by deployment id.
    pub fn environment(&self, model: &str, environment: &str) -> EnvironmentFigures {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        let by_id: BTreeMap<&str, &Pool> = pools
            .iter()
            .filter(|((m, e, _), _)| m == model && e == environment)
            .map(|((_, _, d), p)| (d.as_str(), p))
            .collect();
        EnvironmentFigures {
            interval_seconds: INTERVAL.as_secs() as u32,
            window_seconds: WINDOW.as_secs() as u32,
            deployments: by_id
                .into_iter()
                .map(|(d, p)| DeploymentFigures {
                    deployment_id: d.to_owned(),
                    points: p.points.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_and_resets_start_a_new_baseline() {
        let pool = Pool {
            last: StatsSnapshot {
                requests: 100,
                ..Default::default()
            },
            last_ms: 10_000,
            points: VecDeque::new(),
        };
        let more = StatsSnapshot {
            requests: 150,
            ..Default::default()
        };
        assert!(
            !restarts(&pool, &more, 15_000),
            "the next tick closes a window"
        );
        assert!(restarts(&pool, &more, 60_000), "a gap starts over");
        assert!(
            restarts(&pool, &StatsSnapshot::default(), 15_000),
            "a reset starts over"
        );
    }

    #[test]
    fn a_pool_keeps_the_last_five_minutes_only() {
        let mut points = VecDeque::new();
        let s = StatsSnapshot::default();
        for i in 0..(POINTS as u64 * 3) {
            push_bounded(&mut points, point(&s, &s, i, 5.0));
        }
        assert_eq!(points.len(), POINTS);
        assert_eq!(POINTS, 60);
        assert_eq!(points.front().map(|p| p.at_ms), Some(POINTS as u64 * 2));
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
        assert_eq!(idle.requests_per_s, 0.0);
        assert_eq!(idle.error_rate_percent, None);
        assert_eq!(idle.p99_latency_ms, None);
    }
}
