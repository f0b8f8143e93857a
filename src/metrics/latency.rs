//! The latency histogram families, rendered at scrape time from the pools' own windowed
//! histograms ([`super::window`]) instead of being observed a second time on the request path:
//! one set of per-worker atomics serves both canary analysis and Prometheus.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto;

use super::window::Counts;
use super::PoolMetrics;

/// Bucket bounds in seconds, out to ten minutes: inference streams last minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

const FAMILIES: [(&str, &str); 3] = [
    (
        "switchyard_request_duration_seconds",
        "Time from request received to the end of the response body.",
    ),
    (
        "switchyard_time_to_first_byte_seconds",
        "Time from request received to the first byte of the response body (the first token of a stream); to the end of the response when it has no body.",
    ),
    (
        "switchyard_inter_chunk_seconds",
        "Gaps between body chunks of streamed responses (SSE or chunked): inter-token latency.",
    ),
];

/// Every live pool, weakly: a pool dropped by the router, or removed from its environment,
/// has no series.
pub struct LatencyCollector {
    descs: Vec<Desc>,
    pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>,
    bounds_us: Vec<u64>,
}

impl LatencyCollector {
    pub fn new(pools: Arc<Mutex<Vec<Weak<PoolMetrics>>>>) -> Self {
        let labels: Vec<String> = super::POOL_LABELS.iter().map(|s| s.to_string()).collect();
        let descs = FAMILIES
            .iter()
            .map(|(name, help)| {
                Desc::new(
                    (*name).to_owned(),
                    (*help).to_owned(),
                    labels.clone(),
                    HashMap::new(),
                )
                .expect("static metric definition")
            })
            .collect();
        LatencyCollector {
            descs,
            pools,
            bounds_us: LATENCY_BUCKETS
                .iter()
                .map(|s| (s * 1_000_000.0) as u64)
                .collect(),
        }
    }

    fn histogram(&self, labels: &[String; 3], counts: &Counts) -> proto::Metric {
        let pairs = super::label_pairs(labels, None);
        let mut h = proto::Histogram::default();
        h.set_sample_count(counts.count());
        h.set_sample_sum(counts.sum_us as f64 / 1_000_000.0);
        let buckets = counts
            .cumulative(&self.bounds_us)
            .into_iter()
            .zip(LATENCY_BUCKETS)
            .map(|(n, le)| {
                let mut b = proto::Bucket::default();
                b.set_cumulative_count(n);
                b.set_upper_bound(*le);
                b
            })
            .collect();
        h.set_bucket(buckets);
        let mut m = proto::Metric::from_label(pairs);
        m.set_histogram(h);
        m
    }
}

impl Collector for LatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let live = super::live_pools(&self.pools);
        let mut families: Vec<Vec<proto::Metric>> = vec![Vec::new(); FAMILIES.len()];
        for p in &live {
            // A series appears with its first sample, as a labelled child of a client
            // library's histogram does: with 10,000 idle models, empty histograms were 630,000
            // of a scrape's 710,000 lines.
            if p.stats.mark().is_none() {
                continue; // nothing recorded yet: no copy either
            }
            let s = p.stats.snapshot();
            let labels = p.labels();
            for (family, counts) in families
                .iter_mut()
                .zip([&s.latency, &s.ttfb, &s.inter_chunk])
            {
                if counts.count() > 0 {
                    family.push(self.histogram(labels, counts));
                }
            }
        }
        FAMILIES
            .iter()
            .zip(families)
            .map(|((name, help), metrics)| {
                let mut f = proto::MetricFamily::default();
                f.set_name((*name).to_owned());
                f.set_help((*help).to_owned());
                f.set_field_type(proto::MetricType::HISTOGRAM);
                f.set_metric(metrics);
                f
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::metrics::Metrics;

    #[test]
    fn latency_families_render_the_pools_histograms_and_forget_removed_pools() {
        let metrics = Metrics::new();
        let pool = metrics.pool("m", "production", "v1");
        for ms in [2u64, 3, 40, 700] {
            pool.stats.latency(Duration::from_millis(ms));
        }
        pool.stats.first_byte(Duration::from_millis(1));
        let text = String::from_utf8(metrics.encode()).unwrap();
        let l = r#"deployment="v1",environment="production",model="m""#;
        for line in [
            format!(r#"switchyard_request_duration_seconds_bucket{{{l},le="0.001"}} 0"#),
            format!(r#"switchyard_request_duration_seconds_bucket{{{l},le="0.005"}} 2"#),
            format!(r#"switchyard_request_duration_seconds_bucket{{{l},le="0.05"}} 3"#),
            format!(r#"switchyard_request_duration_seconds_bucket{{{l},le="1"}} 4"#),
            format!(r#"switchyard_request_duration_seconds_bucket{{{l},le="+Inf"}} 4"#),
            format!(r#"switchyard_request_duration_seconds_sum{{{l}}} 0.745"#),
            format!(r#"switchyard_request_duration_seconds_count{{{l}}} 4"#),
            format!(r#"switchyard_time_to_first_byte_seconds_count{{{l}}} 1"#),
        ] {
            assert!(text.lines().any(|x| x == line), "no {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE switchyard_request_duration_seconds histogram"));
        assert!(
            !text.contains("switchyard_inter_chunk_seconds_count"),
            "a histogram without samples has no series: {text}"
        );
        let idle = metrics.pool("m", "production", "v2");
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(
            !text.contains(r#"_seconds_count{deployment="v2""#),
            "a pool that served nothing has no latency series: {text}"
        );
        drop(idle);
        pool.remove();
        let text = String::from_utf8(metrics.encode()).unwrap();
        assert!(!text.contains(r#"deployment="v1""#), "{text}");
    }
}
