//! Canary analysis on the controller side: the interval's window is the difference of the
//! proxy's cumulative per-pool figures at its start and end, judged by the pure
//! [`crate::rollout::analysis::judge`], and the verdict goes to the promotion machine.

use tokio::sync::broadcast;

use super::effects::apply;
use super::events::EnvironmentEvent;
use super::state::ModelState;
use crate::metrics::window::StatsSnapshot;
use crate::rollout::analysis::{judge, Sample};
use crate::routing::Router;

/// Both deployments' cumulative figures when an interval began.
pub(crate) struct Baseline {
    started_ms: u64,
    candidate: StatsSnapshot,
    previous: StatsSnapshot,
}

/// Takes the baseline of a new interval, or judges the interval that is due. Returns whether
/// saved state changed (a verdict was recorded).
pub(super) fn analyze(
    router: &Router,
    events: &broadcast::Sender<EnvironmentEvent>,
    m: &mut ModelState,
    ei: usize,
    now: u64,
) -> bool {
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
    let measure = |dep: &str| router.pool_stats(&m.id, &env.name, dep);
    let (candidate, previous) = (measure(&p.candidate), measure(&p.previous));
    let fresh = Baseline {
        started_ms: start,
        candidate,
        previous,
    };
    let baseline = match env.analysis_baseline.as_ref() {
        Some(b) if b.started_ms == start => b,
        // A new interval (after a shift, a resume or a restart): it starts being measured now.
        _ => {
            m.environments[ei].analysis_baseline = Some(fresh);
            return false;
        }
    };
    if now < due {
        return false;
    }
    let settings = &p.machine.config.analysis;
    let verdict = judge(
        settings,
        &Sample::from_window(&fresh.candidate.since(&baseline.candidate)),
        &Sample::from_window(&fresh.previous.since(&baseline.previous)),
        &[],
        start,
        now,
    );
    router
        .metrics()
        .count_verdict(&m.id, &env.name, verdict.result.label());
    let Some(p) = m.environments[ei].promotion.as_mut() else {
        return false;
    };
    let fx = p.machine.record_verdict(verdict, now);
    let next_start = p.machine.analysis_interval_start();
    m.environments[ei].analysis_baseline = next_start.map(|started_ms| Baseline {
        started_ms,
        ..fresh
    });
    apply(events, m, ei, fx);
    true
}
