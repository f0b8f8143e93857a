//! Prometheus text exposition (format 0.0.4) of the series rendered at scrape time: each
//! pool's status-code and error counters and gauges ([`super::pool_series`]) and latency
//! histograms ([`super::latency`]), written straight from the atomics, a part at a time
//! ([`super::scrape`]).
//!
//! Through the client library's collectors every sample became a protobuf `Metric` with its
//! own copies of the label names and values, built, encoded and dropped on each scrape: with
//! 10,000 idle models a scrape took 0.12-0.23 s of CPU. Written directly, a pool's labels are
//! escaped once per scrape and each sample is one line appended to a buffer.

use std::fmt::Write as _;

/// A pool's labels, escaped once per scrape, in the sorted order the client library prints
/// them: `deployment`, `environment`, then the sample's own `kind`, then `model`.
pub(super) struct PoolLabels {
    /// `deployment="…",environment="…"`
    head: String,
    /// `model="…"`
    model: String,
}

impl PoolLabels {
    pub(super) fn new([model, environment, deployment]: &[String; 3]) -> Self {
        let mut head = String::with_capacity(deployment.len() + environment.len() + 30);
        head.push_str("deployment=\"");
        escape_into(&mut head, deployment);
        head.push_str("\",environment=\"");
        escape_into(&mut head, environment);
        head.push('"');
        let mut m = String::with_capacity(model.len() + 8);
        m.push_str("model=\"");
        escape_into(&mut m, model);
        m.push('"');
        PoolLabels { head, model: m }
    }
}

/// A label value as the text format wants it: `\`, `"` and line feeds escaped.
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A family's `# HELP` and `# TYPE` lines.
pub(super) fn header(out: &mut Vec<u8>, (name, help, kind): (&str, &str, &str)) {
    for part in [
        "# HELP ",
        name,
        " ",
        help,
        "\n# TYPE ",
        name,
        " ",
        kind,
        "\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
}

/// A sample's value.
pub(super) enum Value {
    Int(i64),
    Count(u64),
    Float(f64),
}

/// A label a sample has beyond its pool's, each in the place its name sorts to, as the
/// client library prints them; `le` (a histogram bucket's bound) goes last.
pub(super) enum Extra<'a> {
    None,
    /// A status code, before `deployment`.
    Code(u16),
    /// An error kind, between `environment` and `model`. This crate's own identifiers:
    /// nothing to escape.
    Kind(&'a str),
    /// A bucket bound, already formatted.
    Le(&'a str),
}

/// One sample line: `name{labels} value`.
pub(super) fn sample(
    out: &mut Vec<u8>,
    name: &str,
    labels: &PoolLabels,
    extra: Extra,
    value: Value,
) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(name.as_bytes());
    out.push(b'{');
    if let Extra::Code(code) = extra {
        for part in ["code=\"", digits.format(code), "\","] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(labels.head.as_bytes());
    if let Extra::Kind(kind) = extra {
        for part in [",kind=\"", kind, "\""] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.push(b',');
    out.extend_from_slice(labels.model.as_bytes());
    if let Extra::Le(le) = extra {
        for part in [",le=\"", le, "\""] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    out.extend_from_slice(b"} ");
    match value {
        Value::Int(v) => out.extend_from_slice(digits.format(v).as_bytes()),
        Value::Count(v) => out.extend_from_slice(digits.format(v).as_bytes()),
        Value::Float(v) => out.extend_from_slice(float(v).as_bytes()),
    }
    out.push(b'\n');
}

/// A float as the text format spells it: Rust's shortest round-trip form (`0.25`, `1`), as
/// the client library prints it, but `+Inf`, `-Inf` and `NaN` where Rust says `inf`.
pub(super) fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        let mut s = String::new();
        let _ = write!(s, "{v}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(labels: &PoolLabels, extra: Extra, value: Value) -> String {
        let mut out = Vec::new();
        sample(&mut out, "x", labels, extra, value);
        String::from_utf8(out).unwrap_or_default()
    }

    #[test]
    fn label_values_are_escaped_and_labels_sorted_by_name() {
        let l = PoolLabels::new(&[
            "a\"b".to_owned(),
            "prod\\uction".to_owned(),
            "v1\nv2".to_owned(),
        ]);
        assert_eq!(
            line(&l, Extra::None, Value::Int(-2)),
            "x{deployment=\"v1\\nv2\",environment=\"prod\\\\uction\",model=\"a\\\"b\"} -2\n"
        );
        assert_eq!(
            line(&l, Extra::Kind("connect"), Value::Count(7)),
            "x{deployment=\"v1\\nv2\",environment=\"prod\\\\uction\",kind=\"connect\",model=\"a\\\"b\"} 7\n"
        );
        let l = PoolLabels::new(&["m".to_owned(), "e".to_owned(), "d".to_owned()]);
        assert_eq!(
            line(&l, Extra::Le("+Inf"), Value::Float(0.745)),
            "x{deployment=\"d\",environment=\"e\",model=\"m\",le=\"+Inf\"} 0.745\n"
        );
        assert_eq!(
            line(&l, Extra::Code(503), Value::Count(1)),
            "x{code=\"503\",deployment=\"d\",environment=\"e\",model=\"m\"} 1\n"
        );
    }

    #[test]
    fn floats_are_spelled_as_prometheus_reads_them() {
        assert_eq!(float(1.0), "1");
        assert_eq!(float(0.001), "0.001");
        assert_eq!(float(0.25), "0.25");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
    }
}
