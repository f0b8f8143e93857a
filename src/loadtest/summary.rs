//! The report as text on the terminal: per deployment and overall, then per rollout step.

use std::fmt::Write;

use super::report::{DeploymentSummary, Quantiles, Report};

fn q(v: &Quantiles) -> String {
    let f = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    format!("{}/{}/{}", f(v.p50), f(v.p90), f(v.p99))
}

fn row(out: &mut String, name: &str, d: &DeploymentSummary) {
    let errors = if d.errors_by_status.is_empty() {
        "-".to_owned()
    } else {
        d.errors_by_status
            .iter()
            .map(|(k, n)| format!("{k}:{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        "{name:<14} {:>8} {:>8.1} {:>7.2}% {:>6} {:>17} {:>17} {:>17} {:>20} {:>9.1} {:>8}  {errors}",
        d.requests,
        d.requests_per_s,
        d.error_rate_percent,
        d.broken_streams,
        q(&d.ttft_ms),
        q(&d.itl_ms),
        q(&d.tpot_ms),
        q(&d.e2el_ms),
        d.output_tokens_per_s,
        d.goodput_percent
            .map_or_else(|| "-".to_owned(), |g| format!("{g:.1}%")),
    );
}

/// The summary table and the steps table.
pub fn text(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.config;
    let load = match (c.rate, c.concurrency) {
        (Some(rate), _) => format!("open loop at {rate}/s"),
        (_, Some(n)) => format!("closed loop, {n} clients"),
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{} for {:.1} s ({load}, {} requests), from {}",
        c.target, r.duration_s, c.shape, r.started_at
    );
    let _ = writeln!(
        out,
        "{:<14} {:>8} {:>8} {:>8} {:>6} {:>17} {:>17} {:>17} {:>20} {:>9} {:>8}  errors",
        "deployment",
        "requests",
        "req/s",
        "errors",
        "broken",
        "TTFT p50/90/99 ms",
        "ITL p50/90/99 ms",
        "TPOT p50/90/99 ms",
        "E2EL p50/90/99 ms",
        "tokens/s",
        "goodput",
    );
    for (name, d) in &r.summary.deployments {
        row(&mut out, name, d);
    }
    row(&mut out, "all", &r.summary.overall);
    if !r.steps.is_empty() {
        let cand = r.candidate.as_deref().unwrap_or("candidate");
        let _ = writeln!(
            out,
            "\nrollout steps (share to {cand}: configured vs measured, 95% interval)"
        );
        for s in &r.steps {
            let measured = match (s.measured_percent, s.ci95) {
                (Some(m), Some((lo, hi))) => format!("{m:5.1}% [{lo:.1}, {hi:.1}]"),
                _ => "-".to_owned(),
            };
            let ttft = s
                .p99_ttft_ms
                .iter()
                .map(|(d, v)| format!("{d} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                out,
                "{:>7.1}-{:<7.1} s  {:<12} {:>3}% → {measured:<22} {:>6} requests {:>5} errors  p99 TTFT ms: {}",
                s.start_s,
                s.end_s,
                s.status,
                s.configured_percent,
                s.requests,
                s.errors,
                if ttft.is_empty() { "-".to_owned() } else { ttft },
            );
        }
    }
    for v in &r.violations {
        let _ = writeln!(out, "FAILED: {v}");
    }
    out
}
