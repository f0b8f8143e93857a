//! Applying what the promotion machine asks for: replica targets to the providers (plus what
//! autoscaling added), the new current deployment and the cleanup of the previous one on
//! success, and the events.

use tokio::sync::broadcast;

use super::events::{publish, EnvironmentEvent};
use super::state::ModelState;
use crate::rollout::machine::{CleanupStrategy, Effects, Status};

pub(super) fn apply(
    events: &broadcast::Sender<EnvironmentEvent>,
    m: &mut ModelState,
    ei: usize,
    fx: Effects,
) {
    let Some(p) = m.environments[ei].promotion.as_ref() else {
        return;
    };
    let (previous, candidate) = (p.previous.clone(), p.candidate.clone());
    let status = p.machine.status;
    let succeeded_replicas = p.machine.candidate_target.max(1);
    if status.is_terminal() {
        m.environments[ei].extra = (0, 0);
    }
    let (extra_prev, extra_cand) = m.environments[ei].extra;
    if let Some(n) = fx.candidate_replicas {
        if let Some(d) = m.deployment(&candidate) {
            d.provider.scale(n + extra_cand);
        }
    }
    if let Some(n) = fx.previous_replicas {
        if let Some(d) = m.deployment(&previous) {
            d.provider.scale(n + extra_prev);
        }
    }
    let env = &mut m.environments[ei];
    if status == Status::Succeeded {
        env.current = Some(candidate.clone());
        env.replicas = succeeded_replicas;
        if fx.cleanup == Some(CleanupStrategy::Deactivate) {
            if let Some(d) = m.deployments.iter_mut().find(|d| d.id == previous) {
                d.active = false;
                d.provider.scale(0);
            }
        }
    }
    for e in fx.events {
        publish(events, &m.id, env, &previous, &candidate, e);
    }
}
