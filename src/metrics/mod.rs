//! Prometheus metrics. Families are registered once; each routing pool resolves its label
//! children when a snapshot is built ([`PoolMetrics`]), so the request path only touches atomics.

pub mod window;

use std::sync::{Arc, OnceLock};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets in seconds, out to ten minutes: inference streams last minutes.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

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
    request_duration: HistogramVec,
    first_byte: HistogramVec,
    inter_chunk: HistogramVec,
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
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_request_duration_seconds",
                "Time from request received to the end of the response body.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            POOL_LABELS,
        )
        .expect("static metric definition");
        let first_byte = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_time_to_first_byte_seconds",
                "Time from request received to the first byte of the response body (the first token of a stream); to the end of the response when it has no body.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            POOL_LABELS,
        )
        .expect("static metric definition");
        let inter_chunk = HistogramVec::new(
            HistogramOpts::new(
                "switchyard_inter_chunk_seconds",
                "Gaps between body chunks of streamed responses (SSE or chunked): inter-token latency.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            POOL_LABELS,
        )
        .expect("static metric definition");
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
            Box::new(request_duration.clone()),
            Box::new(first_byte.clone()),
            Box::new(inter_chunk.clone()),
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
            request_duration,
            first_byte,
            inter_chunk,
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
        Arc::new(PoolMetrics {
            labels: [
                model.to_owned(),
                environment.to_owned(),
                deployment.to_owned(),
            ],
            codes: (0..CODE_SLOTS).map(|_| OnceLock::new()).collect(),
            duration: self.request_duration.with_label_values(&l),
            first_byte: self.first_byte.with_label_values(&l),
            inter_chunk: self.inter_chunk.with_label_values(&l),
            stats: window::PoolStats::default(),
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
        })
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

/// Status codes 100..=599 each get a slot, resolved on first use.
const CODE_SLOTS: usize = 500;

/// The metric children of one pool, resolved when the pool first appears in a snapshot and
/// reused by every later snapshot that keeps it.
pub struct PoolMetrics {
    labels: [String; 3],
    codes: Box<[OnceLock<IntCounter>]>,
    pub duration: Histogram,
    pub first_byte: Histogram,
    pub inter_chunk: Histogram,
    /// Windowed figures for canary analysis and live views.
    pub stats: window::PoolStats,
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
        let slot = usize::from(code).wrapping_sub(100);
        match self.codes.get(slot) {
            Some(cell) => cell
                .get_or_init(|| self.code_counter(status.as_str()))
                .inc(),
            None => self.code_counter(status.as_str()).inc(),
        }
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

    /// Removes every series of this pool: its deployment left the environment.
    pub fn remove(&self) {
        let [m, e, d] = &self.labels;
        let l = [m.as_str(), e.as_str(), d.as_str()];
        let f = &self.families;
        let _ = f.request_duration.remove_label_values(&l);
        let _ = f.first_byte.remove_label_values(&l);
        let _ = f.inter_chunk.remove_label_values(&l);
        let _ = f.in_flight.remove_label_values(&l);
        let _ = f.traffic_weight.remove_label_values(&l);
        let _ = f.ready_replicas.remove_label_values(&l);
        for k in UpstreamErrorKind::ALL {
            let _ = f
                .upstream_errors
                .remove_label_values(&[l[0], l[1], l[2], k.as_str()]);
        }
        for (slot, cell) in self.codes.iter().enumerate() {
            if cell.get().is_some() {
                let code = (slot + 100).to_string();
                let _ = f
                    .requests_total
                    .remove_label_values(&[l[0], l[1], l[2], code.as_str()]);
            }
        }
    }
}
