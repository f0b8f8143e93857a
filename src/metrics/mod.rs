//! Prometheus metrics. Families are registered once; each routing pool resolves its label
//! children when a snapshot is built ([`PoolMetrics`]), so the request path only touches atomics.

pub mod latency;
pub mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus::{
    Encoder, Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

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
    registry: Registry,
    requests_total: IntCounterVec,
    /// Live pools, for the latency histograms rendered at scrape time.
    pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>,
    in_flight: IntGaugeVec,
    upstream_errors: IntCounterVec,
    traffic_weight: GaugeVec,
    ready_replicas: IntGaugeVec,
    analysis_verdicts: IntCounterVec,
}

const POOL_LABELS: &[&str] = &["model", "environment", "deployment"];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_total = IntCounterVec::new(
            Opts::new(
                "switchyard_requests_total",
                "Proxied requests by response status code (switchyard's own 502/503/504 included).",
            ),
            &["model", "environment", "deployment", "code"],
        )
        .expect("static metric definition");
        let pools = Arc::new(Mutex::new(Vec::new()));
        let analysis_verdicts = IntCounterVec::new(
            Opts::new(
                "switchyard_analysis_verdicts_total",
                "Canary analysis verdicts by result (pass, fail, inconclusive).",
            ),
            &["model", "environment", "result"],
        )
        .expect("static metric definition");
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "switchyard_in_flight_requests",
                "Requests sent upstream whose response body has not ended yet.",
            ),
            POOL_LABELS,
        )
        .expect("static metric definition");
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "switchyard_upstream_errors_total",
                "Failed upstream exchanges by kind (connect, header_timeout, body_idle_timeout, protocol).",
            ),
            &["model", "environment", "deployment", "kind"],
        )
        .expect("static metric definition");
        let traffic_weight = GaugeVec::new(
            Opts::new(
                "switchyard_traffic_weight",
                "Share of the environment's unpinned traffic sent to the deployment, 0 to 1.",
            ),
            POOL_LABELS,
        )
        .expect("static metric definition");
        let ready_replicas = IntGaugeVec::new(
            Opts::new(
                "switchyard_ready_replicas",
                "Replicas of the deployment that may receive traffic.",
            ),
            POOL_LABELS,
        )
        .expect("static metric definition");
        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency::LatencyCollector::new(pools.clone())),
            Box::new(in_flight.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(traffic_weight.clone()),
            Box::new(ready_replicas.clone()),
            Box::new(analysis_verdicts.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests_total,
            pools,
            in_flight,
            upstream_errors,
            traffic_weight,
            ready_replicas,
            analysis_verdicts,
        }
    }

    /// Resolves every label child of one (model, environment, deployment) once.
    pub fn pool(&self, model: &str, environment: &str, deployment: &str) -> Arc<PoolMetrics> {
        let l = [model, environment, deployment];
        let pool = Arc::new(PoolMetrics {
            labels: [
                model.to_owned(),
                environment.to_owned(),
                deployment.to_owned(),
            ],
            codes: std::array::from_fn(|_| OnceLock::new()),
            overflow_codes: Mutex::new(Vec::new()),
            stats: window::PoolStats::default(),
            removed: AtomicBool::new(false),
            in_flight: self.in_flight.with_label_values(&l),
            errors: UpstreamErrorKind::ALL.map(|k| {
                self.upstream_errors.with_label_values(&[
                    model,
                    environment,
                    deployment,
                    k.as_str(),
                ])
            }),
            weight: self.traffic_weight.with_label_values(&l),
            ready_replicas: self.ready_replicas.with_label_values(&l),
            families: self.clone(),
        });
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::downgrade(&pool));
        pool
    }

    /// Prometheus text exposition of every family.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for the text format.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }

    /// Counts one canary analysis verdict of an environment.
    pub fn count_verdict(&self, model: &str, environment: &str, result: &str) {
        self.analysis_verdicts
            .with_label_values(&[model, environment, result])
            .inc();
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status codes a pool resolves its counter for once, in the order they first appear. A
/// deployment answers with a handful of codes; a slot per possible code (500 of them) made
/// this table 8 kB per pool, a third of what an idle model cost.
const CODE_SLOTS: usize = 16;

/// The metric children of one pool, resolved when the pool first appears in a snapshot and
/// reused by every later snapshot that keeps it.
pub struct PoolMetrics {
    labels: [String; 3],
    codes: [OnceLock<(u16, IntCounter)>; CODE_SLOTS],
    /// Codes seen after every slot was taken: counted through the family's own lookup, and
    /// remembered so that [`PoolMetrics::remove`] removes their series too.
    overflow_codes: Mutex<Vec<u16>>,
    /// Counters and latency histograms: canary analysis windows, live views and the
    /// Prometheus latency families all read them.
    pub stats: window::PoolStats,
    /// Set when the pool left its environment: its series are gone.
    removed: AtomicBool,
    pub in_flight: IntGauge,
    errors: [IntCounter; 5],
    pub weight: Gauge,
    pub ready_replicas: IntGauge,
    families: Metrics,
}

impl PoolMetrics {
    /// Counts one response with this status code.
    pub fn count_response(&self, status: http::StatusCode) {
        let code = status.as_u16();
        self.stats.response(code);
        for cell in &self.codes {
            // Slots fill in order and each is set once, so a code is in the first slot that
            // is empty or holds it; two threads racing for a slot both see the winner's code.
            let (c, counter) = cell.get_or_init(|| (code, self.code_counter(status.as_str())));
            if *c == code {
                counter.inc();
                return;
            }
        }
        {
            let mut seen = self
                .overflow_codes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if !seen.contains(&code) {
                seen.push(code);
            }
        }
        self.code_counter(status.as_str()).inc();
    }

    fn code_counter(&self, code: &str) -> IntCounter {
        let [m, e, d] = &self.labels;
        self.families
            .requests_total
            .with_label_values(&[m.as_str(), e.as_str(), d.as_str(), code])
    }

    pub fn count_error(&self, kind: UpstreamErrorKind) {
        let i = UpstreamErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or(0);
        self.errors[i].inc();
    }

    pub fn labels(&self) -> &[String; 3] {
        &self.labels
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Removes every series of this pool: its deployment left the environment.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        let [m, e, d] = &self.labels;
        let l = [m.as_str(), e.as_str(), d.as_str()];
        let f = &self.families;
        let _ = f.in_flight.remove_label_values(&l);
        let _ = f.traffic_weight.remove_label_values(&l);
        let _ = f.ready_replicas.remove_label_values(&l);
        for k in UpstreamErrorKind::ALL {
            let _ = f
                .upstream_errors
                .remove_label_values(&[l[0], l[1], l[2], k.as_str()]);
        }
        let overflow = self
            .overflow_codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let codes = self
            .codes
            .iter()
            .filter_map(|c| c.get().map(|(code, _)| *code));
        for code in codes.chain(overflow) {
            let code = code.to_string();
            let _ = f
                .requests_total
                .remove_label_values(&[l[0], l[1], l[2], code.as_str()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
