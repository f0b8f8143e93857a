//! Folding outcomes into figures with bounded memory: log-bucket histograms per deployment
//! (the proxy's own, [`crate::metrics::window::Counts`]), per-second counters, and 16 bytes per
//! request to cut the run into rollout steps at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::generator::Outcome;
use super::report::{
    DeploymentSummary, Quantiles, Report, RolloutEvent, RunConfig, Second, SecondFigures, Slo,
    Step, Summary,
};
use crate::metrics::window::Counts;

/// Answers without the version header.
pub const UNKNOWN: &str = "-";

#[derive(Default)]
struct Figures {
    requests: u64,
    errors: u64,
    errors_by_status: BTreeMap<String, u64>,
    broken: u64,
    tokens: u64,
    bytes: u64,
    good: u64,
    ttft: Counts,
    itl: Counts,
    tpot: Counts,
    e2el: Counts,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Figures {
    fn add(&mut self, o: &Outcome, good: bool) {
        self.requests += 1;
        match o.status {
            Ok(s) if (200..300).contains(&s) => {}
            Ok(s) => {
                self.errors += 1;
                *self.errors_by_status.entry(s.to_string()).or_default() += 1;
            }
            Err(f) => {
                self.errors += 1;
                *self
                    .errors_by_status
                    .entry(f.as_str().to_owned())
                    .or_default() += 1;
            }
        }
        self.broken += u64::from(o.broken);
        self.tokens += u64::from(o.tokens);
        self.bytes += o.bytes;
        self.good += u64::from(good);
        if o.status.is_ok() {
            if let Some(t) = o.ttft {
                self.ttft.record(t);
            }
            for gap in &o.itl_us {
                self.itl.record(Duration::from_micros(u64::from(*gap)));
            }
            if let Some(t) = tpot(o) {
                self.tpot.record(t);
            }
            self.e2el.record(o.e2el);
        }
    }

    fn summary(&self, seconds: f64, slo: bool) -> DeploymentSummary {
        let q = |c: &Counts| Quantiles {
            p50: c.quantile(0.5).map(ms),
            p90: c.quantile(0.9).map(ms),
            p99: c.quantile(0.99).map(ms),
        };
        let per_s = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        DeploymentSummary {
            requests: self.requests,
            requests_per_s: per_s(self.requests),
            errors: self.errors,
            error_rate_percent: percent(self.errors, self.requests),
            errors_by_status: self.errors_by_status.clone(),
            broken_streams: self.broken,
            output_tokens: self.tokens,
            output_tokens_per_s: per_s(self.tokens),
            bytes: self.bytes,
            ttft_ms: q(&self.ttft),
            itl_ms: q(&self.itl),
            tpot_ms: q(&self.tpot),
            e2el_ms: q(&self.e2el),
            goodput_percent: slo.then(|| percent(self.good, self.requests)),
        }
    }
}

fn percent(n: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

/// Time per output token after the first: (E2EL − TTFT) / (tokens − 1), for streams (a whole
/// answer arrives at once: its tokens have no times of their own).
fn tpot(o: &Outcome) -> Option<Duration> {
    if !o.streamed {
        return None;
    }
    let ttft = o.ttft?;
    (o.tokens > 1).then(|| o.e2el.saturating_sub(ttft) / (o.tokens - 1))
}

fn meets(o: &Outcome, slo: &Slo) -> bool {
    if !o.ok() {
        return false;
    }
    let within = |limit: Option<f64>, v: Option<Duration>| match (limit, v) {
        (Some(l), Some(v)) => ms(v) <= l,
        (Some(_), None) => false,
        (None, _) => true,
    };
    within(slo.ttft_ms, o.ttft)
        && (o.tokens < 2 || within(slo.tpot_ms, tpot(o)))
        && within(slo.e2el_ms, Some(o.e2el))
}

/// Per request, what step cutting needs.
struct Compact {
    sent_ms: u32,
    deployment: u16,
    ok: bool,
    ttft_us: u32,
}

#[derive(Default)]
struct SecondAgg {
    by: BTreeMap<u16, (u64, u64, Counts)>,
}

pub struct Collector {
    start: Instant,
    slo: Slo,
    overall: Figures,
    by: Vec<Figures>,
    names: Vec<String>,
    seconds: Vec<SecondAgg>,
    compact: Vec<Compact>,
    events: Vec<RolloutEvent>,
}

impl Collector {
    /// Measures requests sent from `start` on.
    pub fn new(start: Instant, slo: Slo) -> Collector {
        Collector {
            start,
            slo,
            overall: Figures::default(),
            by: Vec::new(),
            names: Vec::new(),
            seconds: Vec::new(),
            compact: Vec::new(),
            events: Vec::new(),
        }
    }

    fn index(&mut self, o: &Outcome) -> u16 {
        let name = o
            .deployment
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or(UNKNOWN);
        if let Some(i) = self.names.iter().position(|n| n == name) {
            return i as u16;
        }
        self.names.push(name.to_owned());
        self.by.push(Figures::default());
        (self.names.len() - 1) as u16
    }

    /// Counts one outcome; outcomes of requests sent before the start (warm-up) are ignored.
    /// Returns whether it was counted.
    pub fn add(&mut self, o: &Outcome) -> bool {
        let Some(since) = o.sent.checked_duration_since(self.start) else {
            return false;
        };
        let good = meets(o, &self.slo);
        let i = self.index(o);
        self.overall.add(o, good);
        self.by[i as usize].add(o, good);
        let sec = since.as_secs() as usize;
        if self.seconds.len() <= sec {
            self.seconds.resize_with(sec + 1, SecondAgg::default);
        }
        let e = self.seconds[sec].by.entry(i).or_default();
        e.0 += 1;
        e.1 += u64::from(!o.ok());
        if let (Ok(_), Some(t)) = (o.status, o.ttft) {
            e.2.record(t);
        }
        self.compact.push(Compact {
            sent_ms: u32::try_from(since.as_millis()).unwrap_or(u32::MAX),
            deployment: i,
            ok: o.ok(),
            ttft_us: o.ttft.map_or(u32::MAX, |t| {
                u32::try_from(t.as_micros()).unwrap_or(u32::MAX)
            }),
        });
        true
    }

    pub fn event(&mut self, e: RolloutEvent) {
        self.events.push(e);
    }

    pub fn requests(&self) -> u64 {
        self.overall.requests
    }

    pub fn errors(&self) -> u64 {
        self.overall.errors
    }

    pub fn broken(&self) -> u64 {
        self.overall.broken
    }

    /// The report, for a run measured for `duration`.
    pub fn report(
        &self,
        config: RunConfig,
        started_at: String,
        duration: Duration,
        previous: Option<&str>,
        candidate: Option<&str>,
    ) -> Report {
        let secs = duration.as_secs_f64();
        let slo =
            self.slo.ttft_ms.is_some() || self.slo.tpot_ms.is_some() || self.slo.e2el_ms.is_some();
        let summary = Summary {
            overall: self.overall.summary(secs, slo),
            deployments: self
                .names
                .iter()
                .zip(&self.by)
                .map(|(n, f)| (n.clone(), f.summary(secs, slo)))
                .collect(),
        };
        let mut events = self.events.clone();
        events.sort_by(|a, b| a.t_s.total_cmp(&b.t_s));
        let timeline = self.timeline(&events, secs, previous, candidate);
        let steps = self.steps(&events, secs, candidate);
        let latency_cdf = self
            .names
            .iter()
            .zip(&self.by)
            .filter(|(_, f)| f.e2el.count() > 0)
            .map(|(n, f)| (n.clone(), cdf(&f.e2el)))
            .collect();
        Report {
            config,
            started_at,
            duration_s: secs,
            summary,
            steps,
            timeline,
            events,
            latency_cdf,
            candidate: candidate.map(str::to_owned),
            violations: Vec::new(),
        }
    }

    fn timeline(
        &self,
        events: &[RolloutEvent],
        secs: f64,
        previous: Option<&str>,
        candidate: Option<&str>,
    ) -> Vec<Second> {
        let n = (secs.ceil() as usize).max(self.seconds.len());
        (0..n)
            .map(|t| {
                let end = (t + 1) as f64;
                let state = events.iter().rev().find(|e| e.t_s < end);
                let mut replicas = BTreeMap::new();
                if let Some(e) = state {
                    if let Some(p) = previous {
                        replicas.insert(p.to_owned(), e.previous_replicas);
                    }
                    if let Some(c) = candidate {
                        replicas.insert(c.to_owned(), e.candidate_replicas);
                    }
                }
                let deployments = self
                    .seconds
                    .get(t)
                    .map(|s| {
                        s.by.iter()
                            .map(|(i, (req, err, ttft))| {
                                (
                                    self.names[*i as usize].clone(),
                                    SecondFigures {
                                        requests: *req,
                                        errors: *err,
                                        ttft_p50_ms: ttft.quantile(0.5).map(ms),
                                        ttft_p99_ms: ttft.quantile(0.99).map(ms),
                                    },
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Second {
                    t_s: t as u32,
                    deployments,
                    configured_percent: state.map(|e| e.percent_traffic_to_new_version),
                    replicas,
                }
            })
            .collect()
    }

    /// Steps: spans between events that changed the percent or the status.
    fn steps(&self, events: &[RolloutEvent], secs: f64, candidate: Option<&str>) -> Vec<Step> {
        let mut bounds: Vec<&RolloutEvent> = Vec::new();
        for e in events {
            let changed = bounds.last().is_none_or(|l| {
                l.status != e.status
                    || l.percent_traffic_to_new_version != e.percent_traffic_to_new_version
            });
            if changed {
                bounds.push(e);
            }
        }
        let cand = candidate.and_then(|c| self.names.iter().position(|n| n == c));
        let unknown = self.names.iter().position(|n| n == UNKNOWN);
        let mut steps = Vec::new();
        for (k, e) in bounds.iter().enumerate() {
            let start = e.t_s.max(0.0);
            let end = bounds.get(k + 1).map_or(secs, |n| n.t_s.min(secs));
            // A state that lasted no time (replaced within the same instant) is no step.
            if end - start < 0.01 {
                continue;
            }
            let (a, b) = ((start * 1000.0) as u32, (end * 1000.0) as u32);
            let mut requests = 0;
            let mut answered = 0;
            let mut cand_n = 0;
            let mut errors = 0;
            let mut ttft: BTreeMap<u16, Counts> = BTreeMap::new();
            for c in self
                .compact
                .iter()
                .filter(|c| c.sent_ms >= a && c.sent_ms < b)
            {
                requests += 1;
                errors += u64::from(!c.ok);
                if Some(c.deployment as usize) != unknown {
                    answered += 1;
                }
                if Some(c.deployment as usize) == cand {
                    cand_n += 1;
                }
                if c.ok && c.ttft_us != u32::MAX {
                    ttft.entry(c.deployment)
                        .or_default()
                        .record(Duration::from_micros(u64::from(c.ttft_us)));
                }
            }
            let measured = (answered > 0).then(|| percent(cand_n, answered));
            steps.push(Step {
                start_s: start,
                end_s: end,
                status: e.status.clone(),
                configured_percent: e.percent_traffic_to_new_version,
                measured_percent: measured,
                ci95: (answered > 0).then(|| wilson(cand_n, answered)),
                requests,
                candidate_requests: cand_n,
                errors,
                p99_ttft_ms: ttft
                    .iter()
                    .filter_map(|(i, c)| {
                        c.quantile(0.99)
                            .map(|q| (self.names[*i as usize].clone(), ms(q)))
                    })
                    .collect(),
            });
        }
        steps
    }
}

/// The 95% Wilson score interval of a share `k / n`, in percent.
pub fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 100.0);
    }
    let z = 1.959_964;
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt()) / denom;
    (
        100.0 * (centre - half).max(0.0),
        100.0 * (centre + half).min(1.0),
    )
}

/// At most 100 points of (milliseconds, share at or below), from the histogram's quantiles.
fn cdf(c: &Counts) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    for i in 1..=100 {
        let q = f64::from(i) / 100.0;
        if let Some(v) = c.quantile(q) {
            let v = ms(v);
            match out.last_mut() {
                Some(last) if last.0 == v => last.1 = q,
                _ => out.push((v, q)),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::generator::Failure;

    fn outcome(start: Instant, at_ms: u64, dep: &str, status: u16, ttft_ms: u64) -> Outcome {
        Outcome {
            sent: start + Duration::from_millis(at_ms),
            status: Ok(status),
            deployment: Some(http::HeaderValue::from_str(dep).unwrap()),
            ttft: Some(Duration::from_millis(ttft_ms)),
            itl_us: vec![20_000, 20_000],
            e2el: Duration::from_millis(ttft_ms + 40),
            tokens: 3,
            bytes: 100,
            broken: false,
            streamed: true,
        }
    }

    fn event(t_s: f64, status: &str, percent: u32) -> RolloutEvent {
        RolloutEvent {
            t_s,
            at: String::new(),
            status: status.into(),
            percent_traffic_to_new_version: percent,
            candidate_replicas: percent / 10,
            previous_replicas: 10 - percent / 10,
            reason: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn steps_cut_the_run_at_events_and_measure_the_share() {
        let start = Instant::now() + Duration::from_secs(2);
        let mut c = Collector::new(start, Slo::default());
        // Warm-up requests are not counted.
        assert!(!c.add(&outcome(Instant::now(), 0, "v1", 200, 10)));
        for i in 0..1000u64 {
            let dep = if i < 500 {
                "v1"
            } else if i % 2 == 0 {
                "v2"
            } else {
                "v1"
            };
            c.add(&outcome(start, i * 10, dep, 200, 10));
        }
        let mut failed = outcome(start, 9_000, "v1", 200, 10);
        failed.status = Err(Failure::Timeout);
        failed.deployment = None;
        c.add(&failed);
        c.event(event(-1.0, "RELEASING", 0));
        c.event(event(5.0, "RAMPING_UP", 50));
        c.event(event(5.5, "RAMPING_UP", 50)); // replicas only: no new step
        let r = c.report(
            Report::example().config,
            String::new(),
            Duration::from_secs(10),
            Some("v1"),
            Some("v2"),
        );
        assert_eq!(r.steps.len(), 2);
        let (s0, s1) = (&r.steps[0], &r.steps[1]);
        assert_eq!((s0.start_s, s0.end_s, s0.requests), (0.0, 5.0, 500));
        assert_eq!(s0.measured_percent, Some(0.0));
        assert_eq!((s1.configured_percent, s1.requests), (50, 501));
        assert_eq!(s1.measured_percent, Some(50.0));
        let (lo, hi) = s1.ci95.unwrap();
        assert!(lo < 50.0 && hi > 50.0 && hi - lo < 10.0, "{lo} {hi}");
        assert_eq!(s1.errors, 1);
        let v1 = &r.summary.deployments["v1"];
        assert_eq!(v1.requests, 750);
        assert_eq!(r.summary.overall.errors_by_status["timeout"], 1);
        assert_eq!(r.summary.deployments[UNKNOWN].errors, 1);
        let tpot = r.summary.overall.tpot_ms.p50.unwrap();
        assert!((tpot - 20.0).abs() < 1.5, "{tpot}");
        assert_eq!(r.timeline.len(), 10);
        assert_eq!(r.timeline[7].configured_percent, Some(50));
        assert_eq!(r.timeline[7].replicas["v2"], 5);
        assert!(!r.latency_cdf["v1"].is_empty());
    }

    #[test]
    fn wilson_intervals_cover_the_share() {
        let (lo, hi) = wilson(340, 1000);
        assert!(
            (31.0..34.0).contains(&lo) && (34.0..37.0).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(wilson(0, 0), (0.0, 100.0));
        let (lo, _) = wilson(0, 50);
        assert_eq!(lo, 0.0);
    }
}
