//! Promotion events: each environment's bounded log (kept in the state and the store) and
//! the broadcast that streams new events to subscribers as they happen.

use serde::Serialize;
use tokio::sync::broadcast;

use super::state::EnvironmentState;
use super::Controller;
use crate::rollout::machine::Event;

/// Events kept per environment (older ones are dropped first).
const EVENT_LOG_LIMIT: usize = 10_000;

/// Subscribers that fall this far behind lose the oldest events.
pub(super) const BROADCAST_CAPACITY: usize = 1024;

/// An event with the environment it belongs to, as broadcast to subscribers.
#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentEvent {
    pub model: String,
    pub environment: String,
    pub previous_deployment: String,
    pub candidate_deployment: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Controller {
    /// New events of every environment, as they happen.
    pub fn subscribe(&self) -> broadcast::Receiver<EnvironmentEvent> {
        self.events.subscribe()
    }
}

/// Appends to an environment's log, dropping the oldest past the limit. Not broadcast.
pub(super) fn log(env: &mut EnvironmentState, e: Event) {
    if env.events.len() >= EVENT_LOG_LIMIT {
        env.events.remove(0);
    }
    env.events.push(e);
}

/// Logs a promotion event, traces it and broadcasts it.
pub(super) fn publish(
    events: &broadcast::Sender<EnvironmentEvent>,
    model: &str,
    env: &mut EnvironmentState,
    previous: &str,
    candidate: &str,
    e: Event,
) {
    tracing::info!(
        model = %model, environment = %env.name, status = %e.status,
        percent = e.percent_traffic_to_new_version, candidate = e.candidate_replicas,
        previous = e.previous_replicas, "{}", e.reason
    );
    let _ = events.send(EnvironmentEvent {
        model: model.to_owned(),
        environment: env.name.clone(),
        previous_deployment: previous.to_owned(),
        candidate_deployment: candidate.to_owned(),
        event: e.clone(),
    });
    log(env, e);
}
