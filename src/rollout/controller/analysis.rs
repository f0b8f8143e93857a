//! Canary analysis on the controller side: the interval's window is the difference of the
//! proxy's cumulative per-pool figures at its start and end, judged by the pure
//! [`crate::rollout::analysis::judge`], and the verdict goes to the promotion machine.
//!
//! With BEFORE_SHIFT webhooks, the window is closed when the interval is due, the gates are
//! called in a task (the run loop never waits on the network), and the verdict is recorded
//! when their answers are in: the task wakes the run loop.

use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, Notify};

use super::effects::apply;
use super::events::EnvironmentEvent;
use super::state::ModelState;
use super::webhooks::call_all;
use crate::metrics::window::StatsSnapshot;
use crate::rollout::analysis::{
    judge, judge_gates, GateOutcome, Sample, VerdictResult, WebhookPayload, WebhookWhen,
};
use crate::rollout::machine::Status;
use crate::routing::Router;

/// Both deployments' cumulative figures when an interval began, and the gate calls of the
/// interval once it is due.
pub(crate) struct Baseline {
    started_ms: u64,
    candidate: StatsSnapshot,
    previous: StatsSnapshot,
    gates: Option<GateCall>,
}

/// An interval closed and waiting for its gates' answers.
struct GateCall {
    due_ms: u64,
    candidate: Sample,
    previous: Sample,
    answers: Arc<Mutex<Option<Vec<GateOutcome>>>>,
}

/// What analysis needs from the controller beyond the state.
pub(super) struct AnalysisIo<'a> {
    pub router: &'a Router,
    pub events: &'a broadcast::Sender<EnvironmentEvent>,
    pub runtime: &'a tokio::runtime::Handle,
    pub wake: &'a Arc<Notify>,
    /// On a shared store: the other instances, whose reported figures add to this one's.
    pub cluster: Option<&'a crate::cluster::Cluster>,
}

/// Takes the baseline of a new interval, or judges the interval that is due. Returns whether
/// saved state changed (a verdict was recorded).
pub(super) fn analyze(io: &AnalysisIo<'_>, m: &mut ModelState, ei: usize, now: u64) -> bool {
    let env = &m.environments[ei];
    let Some(p) = env.running_promotion() else {
        m.environments[ei].analysis_baseline = None;
        return false;
    };
    let (Some(start), Some(due)) = (
        p.machine.analysis_interval_start(),
        p.machine.analysis_due_ms(),
    ) else {
        m.environments[ei].analysis_baseline = None;
        return false;
    };
    let measure = |dep: &str| {
        let mut s = io.router.pool_stats(&m.id, &env.name, dep);
        if let Some(c) = io.cluster {
            s.add(&c.others_pool_stats(&m.id, &env.name, dep));
        }
        s
    };
    let (candidate, previous) = (measure(&p.candidate), measure(&p.previous));
    let baseline = match env.analysis_baseline.as_ref() {
        Some(b) if b.started_ms == start => b,
        // A new interval (after a shift, a resume or a restart): it starts being measured now.
        _ => {
            m.environments[ei].analysis_baseline = Some(Box::new(Baseline {
                started_ms: start,
                candidate,
                previous,
                gates: None,
            }));
            return false;
        }
    };
    if now < due {
        return false;
    }
    let settings = &p.machine.config.analysis;
    let gates: Vec<_> = settings.gates().cloned().collect();
    let (window_c, window_p, to_ms, outcomes) = match &baseline.gates {
        _ if gates.is_empty() => (
            Sample::from_window(&candidate.since(&baseline.candidate)),
            Sample::from_window(&previous.since(&baseline.previous)),
            now,
            Vec::new(),
        ),
        None => {
            // Close the window now and ask the gates, with the metrics' verdict so far.
            let c = Sample::from_window(&candidate.since(&baseline.candidate));
            let pr = Sample::from_window(&previous.since(&baseline.previous));
            let payload = WebhookPayload {
                webhook: String::new(),
                when: WebhookWhen::BeforeShift,
                model: m.id.clone(),
                environment: env.name.clone(),
                previous_deployment_id: p.previous.clone(),
                candidate_deployment_id: p.candidate.clone(),
                status: p.machine.status,
                percent_traffic_to_new_version: p.machine.percent,
                verdict: if p.machine.judging_gates_only() {
                    judge_gates(&[], start, now)
                } else {
                    judge(settings, &c, &pr, &[], start, now)
                },
            };
            let answers = Arc::new(Mutex::new(None));
            let (slot, wake) = (answers.clone(), io.wake.clone());
            io.runtime.spawn(async move {
                let got = call_all(gates, payload).await;
                *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(got);
                wake.notify_one();
            });
            if let Some(b) = m.environments[ei].analysis_baseline.as_mut() {
                b.gates = Some(GateCall {
                    due_ms: now,
                    candidate: c,
                    previous: pr,
                    answers,
                });
            }
            return false;
        }
        Some(call) => {
            let answered = call
                .answers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match answered {
                Some(outcomes) => (
                    call.candidate.clone(),
                    call.previous.clone(),
                    call.due_ms,
                    outcomes,
                ),
                None => return false,
            }
        }
    };
    let verdict = if p.machine.judging_gates_only() {
        judge_gates(&outcomes, start, to_ms)
    } else {
        judge(settings, &window_c, &window_p, &outcomes, start, to_ms)
    };
    let result = verdict.result;
    io.router
        .metrics()
        .count_verdict(&m.id, &env.name, result.label());
    let notify: Vec<_> = settings
        .webhooks
        .iter()
        .filter(|w| w.when == WebhookWhen::OnFailure)
        .cloned()
        .collect();
    let env_name = env.name.clone();
    let Some(p) = m.environments[ei].promotion.as_mut() else {
        return false;
    };
    let fx = p.machine.record_verdict(verdict.clone(), now);
    // The failure limit was reached and analysis acted (rolled back, paused or canceled).
    if result == VerdictResult::Fail && p.machine.status != Status::RampingUp && !notify.is_empty()
    {
        let payload = WebhookPayload {
            webhook: String::new(),
            when: WebhookWhen::OnFailure,
            model: m.id.clone(),
            environment: env_name,
            previous_deployment_id: p.previous.clone(),
            candidate_deployment_id: p.candidate.clone(),
            status: p.machine.status,
            percent_traffic_to_new_version: p.machine.percent,
            verdict,
        };
        io.runtime.spawn(async move {
            for o in call_all(notify, payload).await {
                if !o.passed {
                    tracing::warn!(webhook = %o.name, detail = %o.detail, "ON_FAILURE webhook failed");
                }
            }
        });
    }
    let next_start = p.machine.analysis_interval_start();
    m.environments[ei].analysis_baseline = next_start.map(|started_ms| {
        Box::new(Baseline {
            started_ms,
            candidate,
            previous,
            gates: None,
        })
    });
    apply(io.events, m, ei, fx);
    true
}
