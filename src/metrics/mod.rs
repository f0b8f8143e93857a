//! Prometheus metrics. Each routing pool gets its [`PoolMetrics`] when a snapshot first holds
//! it, so the request path only touches atomics: its status-code and error counters, gauges
//! and histograms, written out as text at scrape time ([`exposition`]). Only the canary
//! verdicts, counted off the request path, are a client-library family.

mod exposition;
pub mod latency;
pub mod pool_series;
mod scrape;
pub mod window;

pub use scrape::{Scrape, ScrapeBody};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use pool_series::{CountGauge, ErrorCounts, OwnLine, ShareGauge};

/// Why an upstream exchange failed, the `kind` label of `switchyard_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// TCP connect refused, unreachable or timed out; the request was not sent.
    Connect,
    /// No response headers within the response-header timeout.
    HeaderTimeout,
    /// No body chunk within the idle timeout; the stream was cut.
    BodyIdleTimeout,
    /// The upstream closed or broke the connection after the request was sent.
    Protocol,
    /// The client sent no request body bytes within the request-body idle timeout; the request
    /// was cut and its replica connection closed.
    ClientBodyTimeout,
}

impl UpstreamErrorKind {
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::HeaderTimeout,
        UpstreamErrorKind::BodyIdleTimeout,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::ClientBodyTimeout,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::HeaderTimeout => "header_timeout",
            UpstreamErrorKind::BodyIdleTimeout => "body_idle_timeout",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::ClientBodyTimeout => "client_body_timeout",
        }
    }
}

/// The registered metric families. Cheap to clone (each family is reference counted).
#[derive(Clone)]
pub struct Metrics {
    /// The families the client library keeps: canary verdicts.
    registry: Registry,
    /// Live pools, for the series written at scrape time.
    pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>,
    analysis_verdicts: IntCounterVec,
    worker_connections: IntGaugeVec,
    bounds: Arc<latency::Bounds>,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let pools = Arc::new(Mutex::new(Vec::new()));
        let analysis_verdicts = IntCounterVec::new(
            Opts::new(
                "switchyard_analysis_verdicts_total",
                "Canary analysis verdicts by result (pass, fail, inconclusive).",
            ),
            &["model", "environment", "result"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(analysis_verdicts.clone()))
            .expect("metric names are unique");
        let worker_connections = IntGaugeVec::new(
            Opts::new(
                "switchyard_worker_client_connections",
                "Client connections open on each data-plane worker. A worker keeps the connections \
                 the kernel hands its listener, so an uneven split here stays uneven.",
            ),
            &["worker"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(worker_connections.clone()))
            .expect("metric names are unique");
        Metrics {
            registry,
            pools,
            analysis_verdicts,
            worker_connections,
            bounds: Arc::new(latency::Bounds::new()),
        }
    }

    /// The metrics of one (model, environment, deployment), shown from now on.
    pub fn pool(&self, model: &str, environment: &str, deployment: &str) -> Arc<PoolMetrics> {
        let pool = Arc::new(PoolMetrics {
            labels: [
                model.to_owned(),
                environment.to_owned(),
                deployment.to_owned(),
            ],
            stats: window::PoolStats::default(),
            removed: AtomicBool::new(false),
            in_flight: OwnLine::default(),
            errors: ErrorCounts::default(),
            weight: ShareGauge::default(),
            ready_replicas: CountGauge::default(),
        });
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&pool));
        pool
    }

    /// Starts a Prometheus text exposition of every family: the client library's (verdicts),
    /// then the pools' status-code counters, gauges, error counters and latency histograms,
    /// written straight from their atomics a part at a time ([`Scrape`]).
    pub fn scrape(&self) -> Scrape {
        let mut head = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut head);
        Scrape::new(head, live_pools(&self.pools), self.bounds.clone())
    }

    /// The whole exposition at once, for tests and benches: `/metrics` streams [`Self::scrape`].
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.scrape().write(&mut out, usize::MAX);
        out
    }

    /// The open-connection gauge of data-plane worker `worker` (shown from now on, at 0).
    pub fn worker_connections(&self, worker: usize) -> IntGauge {
        self.worker_connections
            .with_label_values(&[&worker.to_string()])
    }

    /// Counts one canary analysis verdict of an environment.
    pub fn count_verdict(&self, model: &str, environment: &str, result: &str) {
        self.analysis_verdicts
            .with_label_values(&[model, environment, result])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The pools not dropped by the router nor removed from their environment; the others are
/// forgotten.
fn live_pools(pools: &Mutex<Vec<Weak<PoolMetrics>>>) -> Vec<Arc<PoolMetrics>> {
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    pools.retain(|p| p.upgrade().is_some_and(|p| !p.is_removed()));
    pools.iter().filter_map(Weak::upgrade).collect()
}

/// The counters, gauges and histograms of one pool, made when the pool first appears in a
/// snapshot and reused by every later snapshot that keeps it.
pub struct PoolMetrics {
    labels: [String; 3],
    /// Counters by status code and latency histograms: canary analysis windows, live views
    /// and the Prometheus families all read them.
    pub stats: window::PoolStats,
    /// Set when the pool left its environment: its series are gone.
    removed: AtomicBool,
    pub in_flight: OwnLine<CountGauge>,
    errors: ErrorCounts,
    pub weight: ShareGauge,
    pub ready_replicas: CountGauge,
}

impl PoolMetrics {
    /// Counts one response with this status code.
    pub fn count_response(&self, status: http::StatusCode) {
        self.stats.response(status.as_u16());
    }

    pub fn count_error(&self, kind: UpstreamErrorKind) {
        self.errors.inc(kind);
    }

    pub fn labels(&self) -> &[String; 3] {
        &self.labels
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Removes every series of this pool: its deployment left the environment. A request of
    /// the pool that is still ending counts where no scrape looks.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use window::CODE_SLOTS;

    fn series(m: &Metrics, code: u16) -> Option<f64> {
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        let name = format!(
            "switchyard_requests_total{{code=\"{code}\",deployment=\"v1\",environment=\"production\",model=\"m\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(name.as_str()))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_status_code_is_counted_and_removed_with_its_pool_beyond_the_slots() {
        let m = Metrics::new();
        let pool = m.pool("m", "production", "v1");
        // More distinct codes than slots, from several threads, each code i+1 times.
        let codes: Vec<u16> = (0..CODE_SLOTS as u16 + 8).map(|i| 200 + i).collect();
        std::thread::scope(|s| {
            for chunk in codes.chunks(5) {
                let pool = &pool;
                s.spawn(move || {
                    for &c in chunk {
                        for _ in 0..=(c - 200) {
                            pool.count_response(http::StatusCode::from_u16(c).unwrap_or_default());
                        }
                    }
                });
            }
        });
        for &c in &codes {
            assert_eq!(series(&m, c), Some(f64::from(c - 199)), "code {c}");
        }
        assert_eq!(
            pool.stats.snapshot().requests,
            codes.iter().map(|c| u64::from(c - 199)).sum::<u64>()
        );
        pool.remove();
        for &c in &codes {
            assert_eq!(series(&m, c), None, "code {c} outlived its pool");
        }
    }

    #[test]
    fn a_family_without_samples_is_left_out() {
        let m = Metrics::new();
        let _idle = m.pool("m", "production", "v1");
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        assert!(
            text.contains("# TYPE switchyard_ready_replicas gauge\n"),
            "{text}"
        );
        for family in [
            "switchyard_requests_total",
            "switchyard_request_duration_seconds",
            "switchyard_analysis_verdicts_total",
        ] {
            assert!(
                !text.contains(&format!(" {family} ")),
                "{family} in\n{text}"
            );
        }
    }

    /// What Prometheus insists on: every sample follows its own family's `# TYPE` line, no
    /// family appears twice, and each line is `name{labels} value` with a number for value.
    #[test]
    fn the_exposition_groups_every_sample_under_its_family_once() {
        let m = Metrics::new();
        let pools: Vec<_> = ["v1", "v2", "v\"3"]
            .iter()
            .map(|d| m.pool("m", "production", d))
            .collect();
        for p in &pools[..2] {
            p.count_response(http::StatusCode::OK);
            p.count_response(http::StatusCode::BAD_GATEWAY);
            p.stats.latency(std::time::Duration::from_millis(3));
            p.stats.first_byte(std::time::Duration::from_millis(1));
            p.stats.inter_chunk(std::time::Duration::from_millis(1));
            p.count_error(UpstreamErrorKind::Protocol);
        }
        m.count_verdict("m", "production", "pass");
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        let mut current: Option<(String, String)> = None;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                let (name, kind) = t.split_once(' ').unwrap_or((t, ""));
                assert!(
                    seen.insert(name.to_owned()),
                    "{name} appears twice:\n{text}"
                );
                current = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name, rest) = line.split_once('{').unwrap_or_else(|| panic!("{line}"));
            let (_, value) = rest.rsplit_once("} ").unwrap_or_else(|| panic!("{line}"));
            assert!(value.parse::<f64>().is_ok(), "{line}");
            let Some((family, kind)) = &current else {
                panic!("{line} comes before any family");
            };
            let base = match kind.as_str() {
                "histogram" => ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(name),
                _ => name,
            };
            assert_eq!(base, family, "{line} is not under its family's header");
            samples += 1;
        }
        // 2 status codes x 2 pools, 1 verdict, 8 gauge/error series x 3 pools, and 3
        // histograms of 21 lines x 2 pools.
        assert_eq!(samples, 4 + 1 + 8 * 3 + 3 * 21 * 2, "{text}");
        assert!(
            text.contains(r#"switchyard_ready_replicas{deployment="v\"3",environment="production",model="m"} 0"#),
            "{text}"
        );
    }
}
