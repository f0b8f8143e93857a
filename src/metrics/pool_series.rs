//! A pool's gauges and error counters: plain atomics in [`super::PoolMetrics`], rendered as
//! Prometheus series at scrape time, as the latency histograms are ([`super::latency`]).
//!
//! Labelled children of the client library's families cost about 5.5 kB per pool (each
//! keeps its own copy of the descriptor and the label values), a third of what an idle model
//! held. The atomics take 184 bytes (`in_flight` with a 128-byte block to itself), and the
//! request path touches the same atomics it did.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use super::{live_pools, PoolMetrics, UpstreamErrorKind};

/// An integer gauge of one pool (`in_flight_requests`, `ready_replicas`).
#[derive(Debug, Default)]
pub struct CountGauge(AtomicI64);

impl CountGauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value every worker writes on every request, on cache lines of its own. Inline among
/// the pool's read-mostly fields, `in_flight` shared a line with the pointer to the pool's
/// windowed counters, which every request reads: each worker's write took that line from the
/// other worker's cache. (As a client-library child it lived in an allocation of its own.)
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct OwnLine<T>(T);

impl<T> std::ops::Deref for OwnLine<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A fractional gauge of one pool (`traffic_weight`), stored as the bits of an `f64`.
#[derive(Debug, Default)]
pub struct ShareGauge(AtomicU64);

impl ShareGauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A pool's failed upstream exchanges, one counter per [`UpstreamErrorKind`].
#[derive(Debug, Default)]
pub struct ErrorCounts([AtomicU64; UpstreamErrorKind::ALL.len()]);

impl ErrorCounts {
    pub fn inc(&self, kind: UpstreamErrorKind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self, kind: UpstreamErrorKind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }
}

enum Kind {
    Gauge,
    Counter,
}

/// The families, in the order [`PoolSeriesCollector::collect`] fills them.
const FAMILIES: [(&str, &str, Kind); 4] = [
    (
        "switchyard_in_flight_requests",
        "Requests sent upstream whose response body has not ended yet.",
        Kind::Gauge,
    ),
    (
        "switchyard_upstream_errors_total",
        "Failed upstream exchanges by kind (connect, header_timeout, body_idle_timeout, protocol, client_body_timeout).",
        Kind::Counter,
    ),
    (
        "switchyard_traffic_weight",
        "Share of the environment's unpinned traffic sent to the deployment, 0 to 1.",
        Kind::Gauge,
    ),
    (
        "switchyard_ready_replicas",
        "Replicas of the deployment that may receive traffic.",
        Kind::Gauge,
    ),
];

/// Every live pool's gauges and error counters. Every pool has these series from the moment
/// it exists, zero or not: a scraper expects to see each pool.
pub struct PoolSeriesCollector {
    descs: Vec<Desc>,
    pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>,
}

impl PoolSeriesCollector {
    pub fn new(pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>) -> Self {
        let descs = FAMILIES
            .iter()
            .map(|(name, help, kind)| {
                let mut labels: Vec<String> =
                    super::POOL_LABELS.iter().map(|s| s.to_string()).collect();
                if matches!(kind, Kind::Counter) {
                    labels.push("kind".to_owned());
                }
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels,
                    HashMap::new(),
                )
                .expect("static metric definition")
            })
            .collect();
        PoolSeriesCollector { descs, pools }
    }
}

fn gauge(labels: Vec<proto::LabelPair>, v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels);
    m.set_gauge(g);
    m
}

fn counter(labels: Vec<proto::LabelPair>, v: u64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v as f64);
    let mut m = proto::Metric::from_label(labels);
    m.set_counter(c);
    m
}

impl Collector for PoolSeriesCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let live = live_pools(&self.pools);
        let mut in_flight = Vec::with_capacity(live.len());
        let mut errors = Vec::with_capacity(live.len() * UpstreamErrorKind::ALL.len());
        let mut weight = Vec::with_capacity(live.len());
        let mut ready = Vec::with_capacity(live.len());
        for p in &live {
            let labels = p.labels();
            in_flight.push(gauge(
                super::label_pairs(labels, None),
                p.in_flight.get() as f64,
            ));
            for k in UpstreamErrorKind::ALL {
                errors.push(counter(
                    super::label_pairs(labels, Some(("kind", k.as_str()))),
                    p.errors.get(k),
                ));
            }
            weight.push(gauge(super::label_pairs(labels, None), p.weight.get()));
            ready.push(gauge(
                super::label_pairs(labels, None),
                p.ready_replicas.get() as f64,
            ));
        }
        FAMILIES
            .iter()
            .zip([in_flight, errors, weight, ready])
            .map(|((name, help, kind), metrics)| {
                let mut f = proto::MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(match kind {
                    Kind::Gauge => proto::MetricType::GAUGE,
                    Kind::Counter => proto::MetricType::COUNTER,
                });
                f.set_metric(metrics);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::metrics::{Metrics, UpstreamErrorKind};

    fn sample(m: &Metrics, series: &str) -> Option<f64> {
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn every_error_kind_has_its_own_counter() {
        for (i, k) in UpstreamErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "{k:?} is counted in another kind's slot");
        }
    }

    #[test]
    fn a_pool_shows_its_gauges_and_errors_from_the_start_until_it_is_removed() {
        let m = Metrics::new();
        let l = r#"deployment="v1",environment="production",model="m""#;
        let in_flight = format!("switchyard_in_flight_requests{{{l}}}");
        let weight = format!("switchyard_traffic_weight{{{l}}}");
        let ready = format!("switchyard_ready_replicas{{{l}}}");
        let errors = |kind: &str| {
            format!(
                r#"switchyard_upstream_errors_total{{deployment="v1",environment="production",kind="{kind}",model="m"}}"#
            )
        };
        let pool = m.pool("m", "production", "v1");
        for s in [&in_flight, &weight, &ready] {
            assert_eq!(sample(&m, s), Some(0.0), "{s}");
        }
        for k in UpstreamErrorKind::ALL {
            assert_eq!(sample(&m, &errors(k.as_str())), Some(0.0), "{k:?}");
        }

        pool.in_flight.inc();
        pool.in_flight.inc();
        pool.in_flight.dec();
        pool.weight.set(0.25);
        pool.ready_replicas.set(3);
        pool.count_error(UpstreamErrorKind::HeaderTimeout);
        pool.count_error(UpstreamErrorKind::HeaderTimeout);
        pool.count_error(UpstreamErrorKind::ClientBodyTimeout);
        assert_eq!(sample(&m, &in_flight), Some(1.0));
        assert_eq!(sample(&m, &weight), Some(0.25));
        assert_eq!(sample(&m, &ready), Some(3.0));
        assert_eq!(sample(&m, &errors("header_timeout")), Some(2.0));
        assert_eq!(sample(&m, &errors("client_body_timeout")), Some(1.0));
        assert_eq!(sample(&m, &errors("connect")), Some(0.0));
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        assert!(text.contains("# TYPE switchyard_upstream_errors_total counter"));
        assert!(text.contains("# TYPE switchyard_traffic_weight gauge"));

        pool.remove();
        let text = String::from_utf8(m.encode()).unwrap_or_default();
        assert!(!text.contains(r#"deployment="v1""#), "{text}");

        // The deployment comes back: a new pool, counted from zero.
        let again = m.pool("m", "production", "v1");
        assert_eq!(sample(&m, &errors("header_timeout")), Some(0.0));
        again.in_flight.inc();
        pool.in_flight.inc(); // a request of the removed pool still ending
        assert_eq!(sample(&m, &in_flight), Some(1.0));
    }
}
