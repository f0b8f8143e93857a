//! Prometheus metrics. Families are registered once; each routing pool resolves its label
//! children when a snapshot is built ([`PoolMetrics`]), so the request path only touches atomics.

pub mod latency;
pub mod pool_series;
pub mod window;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus::{proto, Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

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
    registry: Registry,
    requests_total: IntCounterVec,
    /// Live pools, for the series rendered at scrape time.
    pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>,
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
        for c in [
            Box::new(requests_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency::LatencyCollector::new(pools.clone())),
            Box::new(pool_series::PoolSeriesCollector::new(pools.clone())),
            Box::new(analysis_verdicts.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            registry,
            requests_total,
            pools,
            analysis_verdicts,
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
            codes: std::array::from_fn(|_| OnceLock::new()),
            overflow_codes: Mutex::new(Vec::new()),
            stats: window::PoolStats::default(),
            removed: AtomicBool::new(false),
            in_flight: OwnLine::default(),
            errors: ErrorCounts::default(),
            weight: ShareGauge::default(),
            ready_replicas: CountGauge::default(),
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

/// The pools not dropped by the router nor removed from their environment; the others are
/// forgotten.
fn live_pools(pools: &Mutex<Vec<Weak<PoolMetrics>>>) -> Vec<Arc<PoolMetrics>> {
    let mut pools = pools.lock().unwrap_or_else(|e| e.into_inner());
    pools.retain(|p| p.upgrade().is_some_and(|p| !p.is_removed()));
    pools.iter().filter_map(Weak::upgrade).collect()
}

/// A pool's labels, and one more, sorted by name as the client library's families print them.
fn label_pairs(labels: &[String; 3], extra: Option<(&str, &str)>) -> Vec<proto::LabelPair> {
    let mut pairs: Vec<proto::LabelPair> = POOL_LABELS
        .iter()
        .zip(labels)
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra)
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name(k.to_owned());
            l.set_value(v.to_owned());
            l
        })
        .collect();
    pairs.sort_by(|a, b| a.name().cmp(b.name()));
    pairs
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
    pub in_flight: OwnLine<CountGauge>,
    errors: ErrorCounts,
    pub weight: ShareGauge,
    pub ready_replicas: CountGauge,
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
        self.errors.inc(kind);
    }

    pub fn labels(&self) -> &[String; 3] {
        &self.labels
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Removes every series of this pool: its deployment left the environment. The series
    /// rendered at scrape time go with the flag; the status-code counters are children.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Relaxed);
        let [m, e, d] = &self.labels;
        let l = [m.as_str(), e.as_str(), d.as_str()];
        let f = &self.families;
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
