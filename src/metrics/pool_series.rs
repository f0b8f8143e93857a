//! A pool's gauges and error counters: plain atomics in [`super::PoolMetrics`], written as
//! Prometheus series at scrape time with its status-code counts (kept in the worker shards of
//! [`super::window`]), as the latency histograms are ([`super::latency`]).
//!
//! Labelled children of the client library's families cost about 5.5 kB per pool (each
//! keeps its own copy of the descriptor and the label values), a third of what an idle model
//! held. The atomics take 184 bytes (`in_flight` with a 128-byte block to itself), and the
//! request path touches the same atomics it did.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::exposition::{sample, Extra, PoolLabels, Value};
use super::{PoolMetrics, UpstreamErrorKind};

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

/// What a family shows of each pool.
#[derive(Clone, Copy)]
pub(super) enum Series {
    Codes,
    InFlight,
    Errors,
    Weight,
    Ready,
}

/// The families, in the order they are written: name, help and type.
pub(super) const FAMILIES: [(Series, &str, &str, &str); 5] = [
    (
        Series::Codes,
        "switchyard_requests_total",
        "Proxied requests by response status code (switchyard's own 502/503/504 included).",
        "counter",
    ),
    (
        Series::InFlight,
        "switchyard_in_flight_requests",
        "Requests sent upstream whose response body has not ended yet.",
        "gauge",
    ),
    (
        Series::Errors,
        "switchyard_upstream_errors_total",
        "Failed upstream exchanges by kind (connect, header_timeout, body_idle_timeout, protocol, client_body_timeout).",
        "counter",
    ),
    (
        Series::Weight,
        "switchyard_traffic_weight",
        "Share of the environment's unpinned traffic sent to the deployment, 0 to 1.",
        "gauge",
    ),
    (
        Series::Ready,
        "switchyard_ready_replicas",
        "Replicas of the deployment that may receive traffic.",
        "gauge",
    ),
];

/// Writes one pool's samples of the family `name` shows. Every pool has its gauges and error
/// counters from the moment it exists, zero or not: a scraper expects to see each pool. A
/// status code's series appears with its first response.
pub(super) fn write_pool(
    series: Series,
    name: &str,
    p: &PoolMetrics,
    l: &PoolLabels,
    out: &mut Vec<u8>,
) {
    match series {
        Series::Codes => {
            for (code, n) in p.stats.codes() {
                sample(out, name, l, Extra::Code(code), Value::Count(n));
            }
        }
        Series::InFlight => sample(out, name, l, Extra::None, Value::Int(p.in_flight.get())),
        Series::Errors => {
            for k in UpstreamErrorKind::ALL {
                let v = Value::Count(p.errors.get(k));
                sample(out, name, l, Extra::Kind(k.as_str()), v);
            }
        }
        Series::Weight => sample(out, name, l, Extra::None, Value::Float(p.weight.get())),
        Series::Ready => sample(
            out,
            name,
            l,
            Extra::None,
            Value::Int(p.ready_replicas.get()),
        ),
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
