//! The latency histogram families, written at scrape time from the pools' own windowed
//! histograms ([`super::window`]) instead of being observed a second time on the request path:
//! one set of per-worker atomics serves both canary analysis and Prometheus.

use super::exposition::{float, sample, Extra, PoolLabels, Value};
use super::window::{Counts, Which};
use super::PoolMetrics;

/// Bucket bounds in seconds, out to ten minutes: inference streams last minutes.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

/// The families, in the order they are written: name and help, and the histogram each shows.
pub(super) const FAMILIES: [(&str, &str, Which); 3] = [
    (
        "switchyard_request_duration_seconds",
        "Time from request received to the end of the response body.",
        Which::Latency,
    ),
    (
        "switchyard_time_to_first_byte_seconds",
        "Time from request received to the first byte of the response body (the first token of a stream); to the end of the response when it has no body.",
        Which::FirstByte,
    ),
    (
        "switchyard_inter_chunk_seconds",
        "Gaps between body chunks of streamed responses (SSE or chunked): inter-token latency.",
        Which::InterChunk,
    ),
];

/// The bucket bounds as `le` label values, and in microseconds to count against.
pub(super) struct Bounds {
    le: Vec<String>,
    us: Vec<u64>,
}

impl Bounds {
    pub(super) fn new() -> Self {
        Bounds {
            le: LATENCY_BUCKETS.iter().map(|s| float(*s)).collect(),
            us: LATENCY_BUCKETS
                .iter()
                .map(|s| (s * 1_000_000.0) as u64)
                .collect(),
        }
    }
}

/// A histogram family's sample names, made once per scrape.
pub(super) struct Names {
    bucket: String,
    sum: String,
    count: String,
}

impl Names {
    pub(super) fn new(name: &str) -> Self {
        Names {
            bucket: format!("{name}_bucket"),
            sum: format!("{name}_sum"),
            count: format!("{name}_count"),
        }
    }
}

/// Writes one pool's histogram `which`, if it has recorded a sample. A series appears with
/// its first sample, as a labelled child of a client library's histogram does: with 10,000
/// idle models, empty histograms were 630,000 of a scrape's 710,000 lines.
pub(super) fn write_pool(
    which: Which,
    names: &Names,
    p: &PoolMetrics,
    l: &PoolLabels,
    bounds: &Bounds,
    out: &mut Vec<u8>,
) {
    if p.stats.mark().is_none() {
        return; // nothing recorded yet: no copy either
    }
    let counts = p.stats.histogram(which);
    if counts.count() > 0 {
        histogram(out, names, l, bounds, &counts);
    }
}

fn histogram(out: &mut Vec<u8>, names: &Names, l: &PoolLabels, bounds: &Bounds, counts: &Counts) {
    for (n, le) in counts.cumulative(&bounds.us).into_iter().zip(&bounds.le) {
        sample(out, &names.bucket, l, Extra::Le(le), Value::Count(n));
    }
    let count = counts.count();
    sample(
        out,
        &names.bucket,
        l,
        Extra::Le("+Inf"),
        Value::Count(count),
    );
    let sum = Value::Float(counts.sum_us as f64 / 1_000_000.0);
    sample(out, &names.sum, l, Extra::None, sum);
    sample(out, &names.count, l, Extra::None, Value::Count(count));
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
