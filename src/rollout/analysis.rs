//! Canary analysis: judging the candidate against the previous deployment over the same
//! interval of live traffic. Pure: figures in, verdict out; the controller measures (from the
//! proxy's own per-pool windows) and the state machine acts on the verdict.
//!
//! Rules where Argo Rollouts and Flagger leave gaps:
//! - relative thresholds compare candidate and previous over the *same* interval, so load that
//!   rises and falls during the day cancels out;
//! - an interval with fewer than `min_requests` per deployment is inconclusive, neither pass
//!   nor fail, and too many of them in a row pause the promotion (it never advances blind);
//! - the outcome of failing can be PAUSE, not only abort;
//! - time to first token and inter-token latency are first-class metrics.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What happens after `failure_limit` failing intervals in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OnFailure {
    /// Ramp traffic back step by step (make-before-break, like a cancel); ends FAILED.
    #[default]
    Rollback,
    /// PAUSED with the reason; resuming judges afresh.
    Pause,
    /// All traffic back on the previous deployment at once; FAILED.
    ForceCancel,
}

/// When a webhook is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookWhen {
    /// A gate: called with each interval's verdict before traffic may shift; a 2xx lets the
    /// shift proceed, anything else (or no answer in time) fails the interval.
    BeforeShift,
    /// A notification when analysis acts on a failure.
    OnFailure,
}

/// A Flagger-style webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub name: String,
    /// `http://` or `https://` URL the promotion JSON is POSTed to.
    pub url: String,
    /// 1-60; default 10.
    #[serde(default = "default_webhook_timeout")]
    #[schema(minimum = 1, maximum = 60)]
    pub timeout_seconds: u32,
    pub when: WebhookWhen,
}

fn default_webhook_timeout() -> u32 {
    10
}

/// `promotion_settings.analysis`: switchyard's extension of Baseten's promotion settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSettings {
    /// Off by default: promotions move on replica readiness and stabilization alone.
    pub enabled: bool,
    /// 1-3600: one verdict per interval.
    #[schema(minimum = 1, maximum = 3600)]
    pub interval_seconds: u32,
    /// 1-1000000: requests each deployment must serve in an interval, else it is inconclusive.
    #[schema(minimum = 1, maximum = 1000000)]
    pub min_requests: u32,
    /// 1-100: failing intervals in a row before `on_failure` acts.
    #[schema(minimum = 1, maximum = 100)]
    pub failure_limit: u32,
    /// 1-1000: inconclusive intervals in a row before the promotion pauses.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_inconclusive_intervals: u32,
    pub on_failure: OnFailure,
    /// The candidate's error rate (5xx, switchyard's 502/503/504, streams cut) may not exceed
    /// this, in percent (0-100). Null: not checked.
    #[serde(deserialize_with = "threshold")]
    pub max_error_rate_percent: Option<f64>,
    /// Candidate error rate / previous error rate (> 0). A previous deployment without errors
    /// counts as one error in its sample. Null: not checked.
    #[serde(deserialize_with = "threshold")]
    pub max_error_rate_ratio: Option<f64>,
    /// Candidate p99 / previous p99 of the full response time (> 0). Null: not checked.
    #[serde(deserialize_with = "threshold")]
    pub max_p99_latency_ratio: Option<f64>,
    /// The candidate's p99 full response time in milliseconds (> 0). Null: not checked.
    #[serde(deserialize_with = "threshold")]
    pub max_p99_latency_ms: Option<f64>,
    /// Candidate p99 / previous p99 of time to first byte (first token of a stream).
    #[serde(deserialize_with = "threshold")]
    pub max_p99_ttft_ratio: Option<f64>,
    /// Candidate p99 / previous p99 of the gaps between stream chunks (inter-token latency).
    #[serde(deserialize_with = "threshold")]
    pub max_p99_itl_ratio: Option<f64>,
    pub webhooks: Vec<Webhook>,
}

/// A threshold: a number, or `null` (JSON) or `false` (TOML has no null) for "not checked".
fn threshold<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Threshold {
        Number(f64),
        Off(bool),
    }
    match Option::<Threshold>::deserialize(d)? {
        Some(Threshold::Number(v)) => Ok(Some(v)),
        Some(Threshold::Off(false)) | None => Ok(None),
        Some(Threshold::Off(true)) => Err(serde::de::Error::custom(
            "expected a number, or false (or null) to turn the check off",
        )),
    }
}

impl Default for AnalysisSettings {
    fn default() -> Self {
        AnalysisSettings {
            enabled: false,
            interval_seconds: 10,
            min_requests: 50,
            failure_limit: 2,
            max_inconclusive_intervals: 6,
            on_failure: OnFailure::Rollback,
            max_error_rate_percent: Some(1.0),
            max_error_rate_ratio: None,
            max_p99_latency_ratio: Some(1.5),
            max_p99_latency_ms: None,
            max_p99_ttft_ratio: Some(1.5),
            max_p99_itl_ratio: Some(1.5),
            webhooks: Vec::new(),
        }
    }
}

/// A setting out of range: the field (relative to `analysis`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SettingError {
    SettingError {
        field: field.into(),
        message: message.into(),
    }
}

impl AnalysisSettings {
    /// Every range, so config files and PATCH refuse the same values with the same words.
    pub fn validate(&self) -> Result<(), SettingError> {
        for (field, v, min, max) in [
            ("interval_seconds", self.interval_seconds, 1, 3600),
            ("min_requests", self.min_requests, 1, 1_000_000),
            ("failure_limit", self.failure_limit, 1, 100),
            (
                "max_inconclusive_intervals",
                self.max_inconclusive_intervals,
                1,
                1000,
            ),
        ] {
            if !(min..=max).contains(&v) {
                return Err(bad(
                    field,
                    format!("must be between {min} and {max}, got {v}"),
                ));
            }
        }
        if let Some(v) = self.max_error_rate_percent {
            if !(v.is_finite() && (0.0..=100.0).contains(&v)) {
                return Err(bad(
                    "max_error_rate_percent",
                    format!("must be between 0 and 100, got {v}"),
                ));
            }
        }
        for (field, v) in [
            ("max_error_rate_ratio", self.max_error_rate_ratio),
            ("max_p99_latency_ratio", self.max_p99_latency_ratio),
            ("max_p99_latency_ms", self.max_p99_latency_ms),
            ("max_p99_ttft_ratio", self.max_p99_ttft_ratio),
            ("max_p99_itl_ratio", self.max_p99_itl_ratio),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && v > 0.0) {
                    return Err(bad(
                        field,
                        format!("must be a number above 0 (or null to skip the check), got {v}"),
                    ));
                }
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, w) in self.webhooks.iter().enumerate() {
            let at = format!("webhooks[{i}]");
            if w.name.trim().is_empty() {
                return Err(bad(format!("{at}.name"), "must not be empty"));
            }
            if !names.insert(w.name.as_str()) {
                return Err(bad(
                    format!("{at}.name"),
                    format!("{:?} is used by another webhook", w.name),
                ));
            }
            check_url(&w.url).map_err(|m| bad(format!("{at}.url"), m))?;
            if !(1..=60).contains(&w.timeout_seconds) {
                return Err(bad(
                    format!("{at}.timeout_seconds"),
                    format!("must be between 1 and 60, got {}", w.timeout_seconds),
                ));
            }
        }
        Ok(())
    }

    /// Whether any check compares with the previous deployment (which then needs samples too).
    fn relative(&self) -> bool {
        self.max_error_rate_ratio.is_some()
            || self.max_p99_latency_ratio.is_some()
            || self.max_p99_ttft_ratio.is_some()
            || self.max_p99_itl_ratio.is_some()
    }

    pub fn interval_ms(&self) -> u64 {
        u64::from(self.interval_seconds) * 1000
    }

    pub fn gates(&self) -> impl Iterator<Item = &Webhook> {
        self.webhooks
            .iter()
            .filter(|w| w.when == WebhookWhen::BeforeShift)
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => {
            return Err(format!(
                "{url:?}: only http:// and https:// URLs are supported"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(())
}

/// One deployment's figures over one interval.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub requests: u64,
    pub errors: u64,
    pub p99_latency: Option<Duration>,
    pub p99_ttft: Option<Duration>,
    pub p99_itl: Option<Duration>,
}

impl Sample {
    pub fn from_window(w: &crate::metrics::window::StatsSnapshot) -> Sample {
        Sample {
            requests: w.requests,
            errors: w.errors,
            p99_latency: w.latency.quantile(0.99),
            p99_ttft: w.ttfb.quantile(0.99),
            p99_itl: w.inter_chunk.quantile(0.99),
        }
    }

    fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.errors as f64 / self.requests as f64).min(1.0)
    }
}

/// What a webhook is POSTed: the promotion, and the interval's verdict on the metrics (before
/// any gate's answer).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookPayload {
    pub webhook: String,
    pub when: WebhookWhen,
    pub model: String,
    pub environment: String,
    pub previous_deployment_id: String,
    pub candidate_deployment_id: String,
    pub status: crate::rollout::machine::Status,
    pub percent_traffic_to_new_version: u32,
    pub verdict: Verdict,
}

/// A BEFORE_SHIFT webhook's answer for an interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateOutcome {
    pub name: String,
    pub passed: bool,
    /// `HTTP 200`, `HTTP 500`, `timed out after 10 s`, ...
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerdictResult {
    Pass,
    Fail,
    Inconclusive,
}

impl VerdictResult {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictResult::Pass => "PASS",
            VerdictResult::Fail => "FAIL",
            VerdictResult::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// The Prometheus label value.
    pub fn label(self) -> &'static str {
        match self {
            VerdictResult::Pass => "pass",
            VerdictResult::Fail => "fail",
            VerdictResult::Inconclusive => "inconclusive",
        }
    }
}

/// One metric compared in a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(as = AnalysisCheck)]
pub struct Check {
    /// The setting it applies: `max_error_rate_percent`, `max_p99_ttft_ratio`, `webhook:NAME`...
    pub metric: String,
    /// The candidate's value (a percent, milliseconds or a ratio, as the limit).
    pub candidate: Option<f64>,
    /// The previous deployment's value for relative checks.
    pub previous: Option<f64>,
    pub limit: Option<f64>,
    pub passed: bool,
    /// The comparison in words, e.g. `error rate 27.5% > 1% (candidate 55/200, previous 0/1800)`.
    pub detail: String,
}

/// Requests and errors of one deployment in the judged interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[schema(as = AnalysisCounts)]
pub struct Counts {
    pub requests: u64,
    pub errors: u64,
}

/// The judgement of one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verdict {
    pub result: VerdictResult,
    /// The interval judged, in ms of the controller's clock.
    pub from_ms: u64,
    pub to_ms: u64,
    pub candidate: Counts,
    pub previous: Counts,
    pub checks: Vec<Check>,
    /// One line: the failed checks, or why it was inconclusive, or the checks passed.
    pub summary: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Judges one interval: the candidate against the absolute limits, and against the previous
/// deployment over the same interval for the relative ones.
pub fn judge(
    s: &AnalysisSettings,
    candidate: &Sample,
    previous: &Sample,
    gates: &[GateOutcome],
    from_ms: u64,
    to_ms: u64,
) -> Verdict {
    let counts = |x: &Sample| Counts {
        requests: x.requests,
        errors: x.errors,
    };
    let mut v = Verdict {
        result: VerdictResult::Pass,
        from_ms,
        to_ms,
        candidate: counts(candidate),
        previous: counts(previous),
        checks: Vec::new(),
        summary: String::new(),
    };
    let min = u64::from(s.min_requests);
    let short_prev = s.relative() && previous.requests < min;
    if candidate.requests < min || short_prev {
        v.result = VerdictResult::Inconclusive;
        v.summary = format!(
            "too few requests: candidate {}, previous {} (min_requests {min} each)",
            candidate.requests, previous.requests
        );
        // Gates still answer: a failing gate is a failing interval whatever the traffic.
        push_gates(&mut v, gates);
        if v.checks.iter().any(|c| !c.passed) {
            v.result = VerdictResult::Fail;
            v.summary = failed_summary(&v);
        }
        return v;
    }
    let pair = format!(
        "candidate {}/{}, previous {}/{}",
        candidate.errors, candidate.requests, previous.errors, previous.requests
    );
    let (cr, pr) = (candidate.error_rate(), previous.error_rate());
    if let Some(limit) = s.max_error_rate_percent {
        let c = cr * 100.0;
        let passed = c <= limit;
        v.checks.push(Check {
            metric: "max_error_rate_percent".into(),
            candidate: Some(round(c)),
            previous: Some(round(pr * 100.0)),
            limit: Some(limit),
            passed,
            detail: format!(
                "error rate {}% {} {limit}% ({pair})",
                round1(c),
                if passed { "≤" } else { ">" }
            ),
        });
    }
    if let Some(limit) = s.max_error_rate_ratio {
        // A previous deployment without errors counts as one, so that a ratio exists and a
        // candidate with a handful of errors is not judged infinitely worse.
        let floor = 1.0 / previous.requests.max(1) as f64;
        let base = pr.max(floor);
        let ratio = cr / base;
        let passed = ratio <= limit;
        v.checks.push(Check {
            metric: "max_error_rate_ratio".into(),
            candidate: Some(round(cr * 100.0)),
            previous: Some(round(pr * 100.0)),
            limit: Some(limit),
            passed,
            detail: format!(
                "error rate ratio {:.2} {} {limit} ({pair}{})",
                ratio,
                if passed { "≤" } else { ">" },
                if previous.errors == 0 {
                    "; previous counted as 1 error"
                } else {
                    ""
                }
            ),
        });
    }
    if let Some(limit) = s.max_p99_latency_ms {
        if let Some(c) = candidate.p99_latency {
            let passed = ms(c) <= limit;
            v.checks.push(Check {
                metric: "max_p99_latency_ms".into(),
                candidate: Some(round(ms(c))),
                previous: previous.p99_latency.map(|p| round(ms(p))),
                limit: Some(limit),
                passed,
                detail: format!(
                    "p99 latency {:.1} ms {} {limit} ms",
                    ms(c),
                    if passed { "≤" } else { ">" }
                ),
            });
        }
    }
    for (metric, name, limit, c, p) in [
        (
            "max_p99_latency_ratio",
            "p99 latency",
            s.max_p99_latency_ratio,
            candidate.p99_latency,
            previous.p99_latency,
        ),
        (
            "max_p99_ttft_ratio",
            "p99 time to first byte",
            s.max_p99_ttft_ratio,
            candidate.p99_ttft,
            previous.p99_ttft,
        ),
        (
            "max_p99_itl_ratio",
            "p99 inter-token latency",
            s.max_p99_itl_ratio,
            candidate.p99_itl,
            previous.p99_itl,
        ),
    ] {
        // Not applicable without samples on both sides (no streams: no inter-token latency).
        let (Some(limit), Some(c), Some(p)) = (limit, c, p) else {
            continue;
        };
        let ratio = ms(c) / ms(p).max(0.001);
        let passed = ratio <= limit;
        v.checks.push(Check {
            metric: metric.into(),
            candidate: Some(round(ms(c))),
            previous: Some(round(ms(p))),
            limit: Some(limit),
            passed,
            detail: format!(
                "{name} ratio {ratio:.2} {} {limit} (candidate {:.1} ms, previous {:.1} ms)",
                if passed { "≤" } else { ">" },
                ms(c),
                ms(p)
            ),
        });
    }
    push_gates(&mut v, gates);
    if v.checks.iter().any(|c| !c.passed) {
        v.result = VerdictResult::Fail;
        v.summary = failed_summary(&v);
    } else {
        v.summary = if v.checks.is_empty() {
            format!("no check configured ({pair})")
        } else {
            v.checks
                .iter()
                .map(|c| c.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
    }
    v
}

/// The verdict before the first shift: the candidate has had no traffic, so only the gates
/// are asked.
pub fn judge_gates(gates: &[GateOutcome], from_ms: u64, to_ms: u64) -> Verdict {
    let mut v = Verdict {
        result: VerdictResult::Pass,
        from_ms,
        to_ms,
        candidate: Counts::default(),
        previous: Counts::default(),
        checks: Vec::new(),
        summary: String::new(),
    };
    push_gates(&mut v, gates);
    if v.checks.iter().any(|c| !c.passed) {
        v.result = VerdictResult::Fail;
        v.summary = failed_summary(&v);
    } else {
        v.summary = format!(
            "before the first shift: {}",
            v.checks
                .iter()
                .map(|c| c.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    v
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn push_gates(v: &mut Verdict, gates: &[GateOutcome]) {
    for g in gates {
        v.checks.push(Check {
            metric: format!("webhook:{}", g.name),
            candidate: None,
            previous: None,
            limit: None,
            passed: g.passed,
            detail: format!("webhook {:?}: {}", g.name, g.detail),
        });
    }
}

fn failed_summary(v: &Verdict) -> String {
    v.checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.detail.as_str())
        .collect::<Vec<_>>()
        .join("; ")
}

/// The analysis part of a running promotion; persisted with it, so a restart neither forgets
/// failures nor re-judges from a clean slate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AnalysisState {
    /// Start of the interval being measured (controller clock, ms); `None` until traffic
    /// first moves to the candidate.
    pub interval_started_ms: Option<u64>,
    pub consecutive_failures: u32,
    pub consecutive_inconclusive: u32,
    /// A passing verdict came after the last traffic shift (and no failure after it).
    pub passed_since_shift: bool,
    pub verdicts: u32,
    pub last: Option<Verdict>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(requests: u64, errors: u64, p99_ms: u64) -> Sample {
        let d = Duration::from_millis(p99_ms);
        Sample {
            requests,
            errors,
            p99_latency: Some(d),
            p99_ttft: Some(d),
            p99_itl: None,
        }
    }

    fn on() -> AnalysisSettings {
        AnalysisSettings {
            enabled: true,
            ..AnalysisSettings::default()
        }
    }

    #[test]
    fn an_error_rate_over_the_limit_fails_and_names_both_sides() {
        let v = judge(
            &on(),
            &sample(200, 55, 20),
            &sample(1800, 0, 20),
            &[],
            0,
            10_000,
        );
        assert_eq!(v.result, VerdictResult::Fail);
        assert_eq!(
            v.summary,
            "error rate 27.5% > 1% (candidate 55/200, previous 0/1800)"
        );
    }

    #[test]
    fn a_healthy_candidate_passes_every_check() {
        let v = judge(&on(), &sample(100, 0, 21), &sample(900, 1, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Pass, "{}", v.summary);
        let metrics: Vec<_> = v.checks.iter().map(|c| c.metric.as_str()).collect();
        assert_eq!(
            metrics,
            [
                "max_error_rate_percent",
                "max_p99_latency_ratio",
                "max_p99_ttft_ratio"
            ]
        );
    }

    #[test]
    fn latency_ratios_compare_the_same_interval() {
        let s = AnalysisSettings {
            max_p99_ttft_ratio: Some(2.0),
            max_p99_latency_ratio: None,
            ..on()
        };
        let v = judge(&s, &sample(100, 0, 80), &sample(100, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Fail);
        assert!(v.summary.contains("p99 time to first byte ratio 4.00 > 2"));
        let v = judge(&s, &sample(100, 0, 30), &sample(100, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Pass);
    }

    #[test]
    fn too_few_requests_is_inconclusive_not_a_pass() {
        let v = judge(&on(), &sample(10, 10, 20), &sample(900, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Inconclusive);
        assert!(v.summary.contains("min_requests 50"), "{}", v.summary);
        // Only absolute checks: the previous deployment's traffic does not matter.
        let abs = AnalysisSettings {
            max_p99_latency_ratio: None,
            max_p99_ttft_ratio: None,
            max_p99_itl_ratio: None,
            ..on()
        };
        let v = judge(&abs, &sample(60, 0, 20), &sample(3, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Pass);
    }

    #[test]
    fn an_error_ratio_against_a_clean_previous_counts_it_as_one_error() {
        let s = AnalysisSettings {
            max_error_rate_percent: None,
            max_error_rate_ratio: Some(2.0),
            ..on()
        };
        // 1/100 = 1% against 1/1000 (floor) = 0.1%: ratio 10.
        let v = judge(&s, &sample(100, 1, 20), &sample(1000, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Fail);
        assert!(v.summary.contains("previous counted as 1 error"));
        let v = judge(&s, &sample(100, 0, 20), &sample(1000, 0, 20), &[], 0, 1);
        assert_eq!(v.result, VerdictResult::Pass);
    }

    #[test]
    fn a_failing_gate_fails_the_interval_even_without_traffic() {
        let gate = GateOutcome {
            name: "qa".into(),
            passed: false,
            detail: "HTTP 500".into(),
        };
        let v = judge(&on(), &sample(0, 0, 0), &sample(0, 0, 0), &[gate], 0, 1);
        assert_eq!(v.result, VerdictResult::Fail);
        assert_eq!(v.summary, "webhook \"qa\": HTTP 500");
    }

    #[test]
    fn settings_out_of_range_name_the_field() {
        type Change = fn(&mut AnalysisSettings);
        let cases: [(Change, &str); 6] = [
            (|s| s.interval_seconds = 0, "interval_seconds"),
            (|s| s.max_p99_ttft_ratio = Some(0.0), "max_p99_ttft_ratio"),
            (
                |s| s.max_error_rate_percent = Some(101.0),
                "max_error_rate_percent",
            ),
            (|s| s.failure_limit = 101, "failure_limit"),
            (
                |s| {
                    s.webhooks.push(Webhook {
                        name: "x".into(),
                        url: "ftp://example.com/".into(),
                        timeout_seconds: 5,
                        when: WebhookWhen::BeforeShift,
                    })
                },
                "webhooks[0].url",
            ),
            (
                |s| {
                    s.webhooks.push(Webhook {
                        name: "x".into(),
                        url: "http://127.0.0.1:9/".into(),
                        timeout_seconds: 0,
                        when: WebhookWhen::OnFailure,
                    })
                },
                "webhooks[0].timeout_seconds",
            ),
        ];
        for (change, field) in cases {
            let mut s = on();
            change(&mut s);
            assert_eq!(s.validate().unwrap_err().field, field);
        }
        assert_eq!(on().validate(), Ok(()));
    }
}
