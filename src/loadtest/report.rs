//! What a load test produces: the typed report behind `--json`, the terminal summary and the
//! HTML page. The JSON schema is these types (documented in the README's loadtest section).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub config: RunConfig,
    /// When the measured part began (RFC 3339 UTC).
    pub started_at: String,
    /// Seconds measured (after the warm-up).
    pub duration_s: f64,
    pub summary: Summary,
    /// Rollout steps: spans between two events that changed the percent or the status. Empty
    /// without `--admin-url`.
    pub steps: Vec<Step>,
    /// One entry per second of the measured run.
    pub timeline: Vec<Second>,
    /// The environment's rollout events seen during the run (empty without `--admin-url`).
    pub events: Vec<RolloutEvent>,
    /// End-to-end latency CDF per deployment: (milliseconds, share of requests at or below).
    pub latency_cdf: BTreeMap<String, Vec<(f64, f64)>>,
    /// The deployment being promoted, when known (the candidate of the rollout).
    pub candidate: Option<String>,
    /// Why the run failed its limits, one line each (also the exit code's reason).
    pub violations: Vec<String>,
}

/// The run's settings, as given or defaulted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: String,
    /// `open` (Poisson arrivals at `rate`) or `closed` (`concurrency` clients back to back).
    pub mode: String,
    pub rate: Option<f64>,
    pub burstiness: Option<f64>,
    pub concurrency: Option<u32>,
    pub duration_s: Option<f64>,
    pub requests: Option<u64>,
    pub warmup_s: f64,
    pub seed: u64,
    pub max_in_flight: u32,
    pub timeout_s: f64,
    pub http2: bool,
    /// `chat`, `json` (`--path`/`--body-file`) or `get`.
    pub shape: String,
    /// `true`, `false` or `mix` (chat only).
    pub stream: String,
    pub path: String,
    pub max_tokens: Option<(u32, u32)>,
    pub prompt_words: Option<(u32, u32)>,
    pub slo: Slo,
    pub version_header: String,
    pub admin_url: Option<String>,
    pub model: Option<String>,
    pub environment: Option<String>,
    pub promote: Option<String>,
}

/// Service-level objectives for goodput: a request is good when it succeeded and met each.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Slo {
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub e2el_ms: Option<f64>,
}

/// p50, p90 and p99 in milliseconds (null without samples).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Summary {
    pub overall: DeploymentSummary,
    /// By the deployment that answered (`x-switchyard-deployment`, or `--version-header`);
    /// `"-"` for answers without it (connection failures, timeouts).
    pub deployments: BTreeMap<String, DeploymentSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct DeploymentSummary {
    pub requests: u64,
    pub requests_per_s: f64,
    /// Requests without a 2xx answer: HTTP errors, timeouts and connection failures.
    pub errors: u64,
    pub error_rate_percent: f64,
    /// By status code, or `timeout` / `connect` / `protocol` for requests without one.
    pub errors_by_status: BTreeMap<String, u64>,
    /// 2xx streams that ended without `data: [DONE]` or were reset (not counted in errors).
    pub broken_streams: u64,
    pub output_tokens: u64,
    pub output_tokens_per_s: f64,
    pub bytes: u64,
    pub ttft_ms: Quantiles,
    pub itl_ms: Quantiles,
    pub tpot_ms: Quantiles,
    pub e2el_ms: Quantiles,
    /// Share of requests that succeeded and met every SLO (null without `--slo`).
    pub goodput_percent: Option<f64>,
}

/// One rollout step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Seconds since the measured run began.
    pub start_s: f64,
    pub end_s: f64,
    pub status: String,
    pub configured_percent: u32,
    /// Share of the step's answered requests that the candidate served.
    pub measured_percent: Option<f64>,
    /// 95% Wilson interval of `measured_percent`.
    pub ci95: Option<(f64, f64)>,
    pub requests: u64,
    pub candidate_requests: u64,
    pub errors: u64,
    /// p99 time to first token per deployment during the step.
    pub p99_ttft_ms: BTreeMap<String, f64>,
}

/// One second of the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Second {
    /// Seconds since the measured run began (this entry covers [t_s, t_s + 1)).
    pub t_s: u32,
    pub deployments: BTreeMap<String, SecondFigures>,
    /// The rollout's percent to the candidate at the end of this second.
    pub configured_percent: Option<u32>,
    /// Replica targets at the end of this second, by deployment.
    pub replicas: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SecondFigures {
    pub requests: u64,
    pub errors: u64,
    pub ttft_p50_ms: Option<f64>,
    pub ttft_p99_ms: Option<f64>,
}

/// A rollout event as the run saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutEvent {
    /// Seconds since the measured run began (negative: before it).
    pub t_s: f64,
    pub at: String,
    pub status: String,
    pub percent_traffic_to_new_version: u32,
    pub candidate_replicas: u32,
    pub previous_replicas: u32,
    pub reason: String,
}

impl Report {
    /// A small made-up report, for tests and examples of the rendering.
    pub fn example() -> Report {
        let q = |a: f64| Quantiles {
            p50: Some(a),
            p90: Some(a * 1.5),
            p99: Some(a * 2.0),
        };
        let dep = |requests: u64, errors: u64, ttft: f64| DeploymentSummary {
            requests,
            requests_per_s: requests as f64 / 60.0,
            errors,
            error_rate_percent: 100.0 * errors as f64 / requests.max(1) as f64,
            errors_by_status: if errors > 0 {
                BTreeMap::from([("500".to_string(), errors)])
            } else {
                BTreeMap::new()
            },
            broken_streams: 0,
            output_tokens: requests * 16,
            output_tokens_per_s: requests as f64 * 16.0 / 60.0,
            bytes: requests * 2000,
            ttft_ms: q(ttft),
            itl_ms: q(25.0),
            tpot_ms: q(25.0),
            e2el_ms: q(ttft + 400.0),
            goodput_percent: Some(99.0),
        };
        let timeline = (0..60u32)
            .map(|t| {
                let percent = match t {
                    0..=9 => 0,
                    10..=29 => 34,
                    30..=49 => 68,
                    _ => 100,
                };
                let v2 = u64::from(percent) / 5;
                Second {
                    t_s: t,
                    deployments: BTreeMap::from([
                        (
                            "v1".to_string(),
                            SecondFigures {
                                requests: 20 - v2,
                                errors: 0,
                                ttft_p50_ms: (v2 < 20).then_some(40.0),
                                ttft_p99_ms: (v2 < 20).then_some(80.0),
                            },
                        ),
                        (
                            "v2".to_string(),
                            SecondFigures {
                                requests: v2,
                                errors: u64::from(t % 7 == 0),
                                ttft_p50_ms: (v2 > 0).then_some(45.0),
                                ttft_p99_ms: (v2 > 0).then_some(95.0),
                            },
                        ),
                    ]),
                    configured_percent: Some(percent),
                    replicas: BTreeMap::from([
                        ("v1".to_string(), 3 - percent / 34),
                        ("v2".to_string(), percent.div_ceil(34)),
                    ]),
                }
            })
            .collect();
        let event =
            |t_s: f64, status: &str, percent: u32, c: u32, p: u32, reason: &str| RolloutEvent {
                t_s,
                at: "2026-11-30T12:00:00Z".into(),
                status: status.into(),
                percent_traffic_to_new_version: percent,
                candidate_replicas: c,
                previous_replicas: p,
                reason: reason.into(),
            };
        let step = |a: f64, b: f64, status: &str, c: u32, m: Option<f64>, n: u64| Step {
            start_s: a,
            end_s: b,
            status: status.into(),
            configured_percent: c,
            measured_percent: m,
            ci95: m.map(|m| (m - 3.0, m + 3.0)),
            requests: n,
            candidate_requests: m.map_or(0, |m| (m / 100.0 * n as f64) as u64),
            errors: 0,
            p99_ttft_ms: BTreeMap::from([("v1".to_string(), 80.0), ("v2".to_string(), 95.0)]),
        };
        Report {
            config: RunConfig {
                target: "http://127.0.0.1:8080".into(),
                mode: "open".into(),
                rate: Some(20.0),
                burstiness: None,
                concurrency: None,
                duration_s: None,
                requests: None,
                warmup_s: 2.0,
                seed: 1,
                max_in_flight: 256,
                timeout_s: 30.0,
                http2: false,
                shape: "chat".into(),
                stream: "mix".into(),
                path: "/v1/chat/completions".into(),
                max_tokens: Some((16, 64)),
                prompt_words: Some((8, 64)),
                slo: Slo {
                    ttft_ms: Some(500.0),
                    tpot_ms: Some(50.0),
                    e2el_ms: Some(10_000.0),
                },
                version_header: "x-switchyard-deployment".into(),
                admin_url: Some("http://127.0.0.1:9090".into()),
                model: Some("demo".into()),
                environment: Some("production".into()),
                promote: Some("v2".into()),
            },
            started_at: "2026-11-30T12:00:00Z".into(),
            duration_s: 60.0,
            summary: Summary {
                overall: dep(1200, 8, 42.0),
                deployments: BTreeMap::from([
                    ("v1".to_string(), dep(700, 0, 40.0)),
                    ("v2".to_string(), dep(500, 8, 45.0)),
                ]),
            },
            steps: vec![
                step(0.0, 10.0, "RAMPING_UP", 0, Some(0.0), 200),
                step(10.0, 30.0, "RAMPING_UP", 34, Some(33.5), 400),
                step(30.0, 50.0, "RAMPING_UP", 68, Some(69.0), 400),
                step(50.0, 60.0, "SUCCEEDED", 100, Some(100.0), 200),
            ],
            timeline,
            events: vec![
                event(-0.5, "RELEASING", 0, 0, 3, "promotion started"),
                event(
                    10.0,
                    "RAMPING_UP",
                    34,
                    1,
                    3,
                    "shifted 34% of traffic to the candidate",
                ),
                event(
                    30.0,
                    "RAMPING_UP",
                    68,
                    2,
                    2,
                    "shifted 68% of traffic to the candidate",
                ),
                event(
                    50.0,
                    "SUCCEEDED",
                    100,
                    3,
                    0,
                    "all traffic and replicas on the candidate",
                ),
            ],
            latency_cdf: BTreeMap::from([
                (
                    "v1".to_string(),
                    vec![(300.0, 0.1), (400.0, 0.5), (450.0, 0.9), (500.0, 1.0)],
                ),
                (
                    "v2".to_string(),
                    vec![(320.0, 0.1), (420.0, 0.5), (480.0, 0.9), (600.0, 1.0)],
                ),
            ]),
            candidate: Some("v2".into()),
            violations: Vec::new(),
        }
    }
}
