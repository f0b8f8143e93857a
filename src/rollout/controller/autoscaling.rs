//! Autoscaling applied: samples each autoscaled environment's in-flight requests from the
//! data plane on a fixed period and scales its deployment(s) by the [`Autoscaler`]'s decision.
//!
//! [`Autoscaler`]: crate::rollout::autoscale::Autoscaler

use std::time::Duration;

use super::state::{ModelState, State};
use super::Controller;
use crate::rollout::autoscale::split_addition;

/// How often load is sampled and decided on. The autoscaling window is at least 10 s and the
/// scale-down delay counts in seconds, so a 1 s sample period keeps 10 or more samples per
/// window and reacts to a burst within a second.
pub(super) const PERIOD: Duration = Duration::from_secs(1);

impl Controller {
    /// One sample and decision for every environment with autoscaling settings.
    pub(super) fn autoscale(&self, st: &mut State, now: u64) {
        for m in &mut st.models {
            for ei in 0..m.environments.len() {
                if m.environments[ei].autoscaler.is_some() {
                    let in_flight = self.env_in_flight(&m.id, &m.environments[ei].name);
                    st.dirty |= autoscale(m, ei, in_flight, now);
                }
            }
        }
    }

    /// Requests in flight in an environment's pools, from the data plane's counters.
    fn env_in_flight(&self, model: &str, environment: &str) -> u32 {
        let snap = self.router.load();
        snap.models
            .iter()
            .find(|m| &*m.id == model)
            .and_then(|m| m.environments.iter().find(|e| &*e.name == environment))
            .map_or(0, |e| {
                e.pools
                    .iter()
                    .flat_map(|p| p.replicas.iter())
                    .map(|r| r.working())
                    .sum()
            })
    }
}

/// One autoscaling decision for an environment with autoscaling on. Returns whether state
/// that is saved changed (replicas added during a rollout).
fn autoscale(m: &mut ModelState, ei: usize, in_flight: u32, now: u64) -> bool {
    let env = &mut m.environments[ei];
    let Some(a) = env.autoscaler.as_mut() else {
        return false;
    };
    a.record(now, in_flight);
    let provider = |id: &str| {
        m.deployments
            .iter()
            .find(|d| d.id == id)
            .map(|d| d.provider.clone())
    };
    match env
        .promotion
        .as_ref()
        .filter(|p| !p.machine.status.is_terminal())
    {
        None => {
            let Some(p) = env.current.as_deref().and_then(provider) else {
                return false;
            };
            let s = p.status();
            let capacity = s.ready.len() as u32 + s.starting;
            let desired = a.desired(now, capacity);
            if desired != s.desired {
                tracing::info!(model = %m.id, environment = %env.name, from = s.desired, to = desired, in_flight, "autoscaling");
                p.scale(desired);
            }
            false
        }
        Some(p) => {
            // During a rollout only additions, split by the traffic split.
            let want = a.recommended();
            let (prev, cand) = (
                p.machine.previous_target + env.extra.0,
                p.machine.candidate_target + env.extra.1,
            );
            if want <= prev + cand {
                return false;
            }
            let (add_prev, add_cand) = split_addition(
                want - prev - cand,
                p.machine.percent,
                prev,
                cand,
                a.settings.max_replica,
            );
            if add_prev + add_cand == 0 {
                return false;
            }
            env.extra.0 += add_prev;
            env.extra.1 += add_cand;
            tracing::info!(model = %m.id, environment = %env.name, add_prev, add_cand, in_flight, "autoscaling during the rollout");
            if let Some(d) = provider(&p.previous) {
                d.scale(p.machine.previous_target + env.extra.0);
            }
            if let Some(d) = provider(&p.candidate) {
                d.scale(p.machine.candidate_target + env.extra.1);
            }
            true
        }
    }
}
