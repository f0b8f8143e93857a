//! The run loop: one pass over every promotion and autoscaled environment each time something
//! may have changed, and sleep otherwise.
//!
//! The controller wakes when a provider's status changes (every provider's change notification
//! is wired to the controller's `wake`, including those registered after start), when a command
//! changed the state, at the earliest deadline a running promotion waits for (stabilization,
//! ready wait, readiness deadline, the end of an analysis interval), and on the autoscaling period while an environment has
//! autoscaling settings. Nothing else polls.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::analysis::{analyze, AnalysisIo};
use super::autoscaling;
use super::effects::apply;
use super::state::{ModelState, State};
use super::Controller;
use crate::replicas::ReplicaProvider;
use crate::rollout::machine::{Effects, Observation};

/// How long stopping waits at most for the last state to be committed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl Controller {
    /// Drives promotions until `stop` fires; the state saved last is committed before it returns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // Registrations not renewed in time leave (alone; etcd expires them when shared).
        let expiry = {
            let me = Arc::downgrade(&self);
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    match me.upgrade() {
                        Some(c) => c.expire_registrations(),
                        None => return,
                    }
                }
            })
        };
        loop {
            let mut next = match self.cluster.get() {
                None => self.tick(),
                Some(c) if c.is_leader() => self.shared_pass().await,
                Some(_) => {
                    self.follower_pass();
                    None
                }
            };
            // The instance that moves promotions tells orchestrators the new targets.
            if self.cluster.get().is_none_or(|c| c.is_leader()) {
                if let Some(at) = self.run_scale_commands() {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            self.passes.send_modify(|n| *n += 1);
            let deadline = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = deadline => {}
                _ = stop.changed() => break,
            }
        }
        expiry.abort();
        if let Some(saver) = self.saver.clone() {
            let _ = tokio::task::spawn_blocking(move || saver.flush(FLUSH_TIMEOUT)).await;
        }
    }

    /// Changes after every pass of the run loop, which follows every provider change, command
    /// and timer: a view read after a change reflects everything that happened before it.
    pub fn changed(&self) -> watch::Receiver<u64> {
        self.passes.subscribe()
    }

    /// One pass: tick every running promotion, apply its effects, autoscale when due, rebuild
    /// routing if it changed and queue the state for saving if it changed. Returns when the
    /// controller must look again even if nothing wakes it.
    pub fn tick(&self) -> Option<Instant> {
        let now = self.clock.now_ms();
        let mut guard = self.lock();
        let st = &mut *guard;
        let io = AnalysisIo {
            router: &self.router,
            events: &self.events,
            runtime: &self.providers.runtime,
            wake: &self.wake,
            cluster: self.cluster.get().map(|c| &**c),
        };
        for m in &mut st.models {
            for ei in 0..m.environments.len() {
                // Judge a due analysis interval before the tick that may act on its verdict,
                // and look again after it: a shift it made starts a new interval now.
                let judged = analyze(&io, m, ei, now);
                let ticked = tick_promotion(&self.events, m, ei, now);
                analyze(&io, m, ei, now);
                if judged || ticked {
                    st.dirty = true;
                }
            }
        }
        let mut next = earliest_deadline(st, now).map(|ms| self.clock.instant_at(ms));
        let autoscaled = st
            .models
            .iter()
            .any(|m| m.environments.iter().any(|e| e.autoscaler.is_some()));
        if autoscaled {
            let mut due = self.autoscale_due.lock().unwrap_or_else(|e| e.into_inner());
            let at = Instant::now();
            let d = match *due {
                Some(d) if at < d => d,
                _ => {
                    self.autoscale(st, now);
                    at + autoscaling::PERIOD
                }
            };
            *due = Some(d);
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        self.reroute(st);
        self.save(st);
        next
    }

    /// Stops every replica (process replicas drain and exit) and waits up to `timeout`.
    pub async fn stop_replicas(&self, timeout: Duration) {
        let providers: Vec<Arc<dyn ReplicaProvider>> = {
            let st = self.lock();
            st.models
                .iter()
                .flat_map(|m| m.deployments.iter().map(|d| d.provider.clone()))
                .collect()
        };
        for p in &providers {
            p.shutdown();
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        loop {
            let left: u32 = providers
                .iter()
                .map(|p| {
                    let s = p.status();
                    s.ready.len() as u32 + s.starting + s.draining
                })
                .sum();
            if left == 0 {
                return;
            }
            // The run loop has stopped: provider changes wake this wait instead.
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = &mut deadline => return,
            }
        }
    }
}

/// How often one pass may tick a promotion again after it changed replica targets.
const RETICKS: usize = 8;

/// Ticks one environment's running promotion, if any. Returns whether saved state changed.
///
/// After a tick that changed replica targets the promotion is observed and ticked again: the
/// observation is capped at the targets it was taken under, and a provider whose target moves
/// back and forth before it acts (down a step, then up again on a cancel) reports no change,
/// so no notification would come to look again.
fn tick_promotion(
    events: &tokio::sync::broadcast::Sender<super::EnvironmentEvent>,
    m: &mut ModelState,
    ei: usize,
    now: u64,
) -> bool {
    let mut changed = false;
    for _ in 0..RETICKS {
        let Some(p) = m.environments[ei].running_promotion() else {
            break;
        };
        let mut obs = observe(m, &p.previous, &p.candidate);
        // Autoscaled extras are not rollout progress.
        obs.candidate_ready = obs.candidate_ready.min(p.machine.candidate_target);
        obs.previous_ready = obs.previous_ready.min(p.machine.previous_target);
        let before = p.machine.clone();
        let Some(p) = m.environments[ei].promotion.as_mut() else {
            break;
        };
        let fx = p.machine.tick(&obs, now);
        let moved = p.machine != before || fx != Effects::default();
        let rescaled = fx.candidate_replicas.is_some() || fx.previous_replicas.is_some();
        apply(events, m, ei, fx);
        changed |= moved;
        if !rescaled {
            break;
        }
    }
    changed
}

fn observe(m: &ModelState, previous: &str, candidate: &str) -> Observation {
    let status = |id: &str| {
        m.deployment(id)
            .map(|d| d.provider.status())
            .unwrap_or_default()
    };
    let (p, c) = (status(previous), status(candidate));
    Observation {
        candidate_ready: c.ready.len() as u32,
        previous_ready: p.ready.len() as u32,
        candidate_failure: c.failure,
    }
}

/// The earliest time (wall-clock ms) after `now` at which a running promotion may move without any
/// observation changing.
fn earliest_deadline(st: &State, now: u64) -> Option<u64> {
    st.models
        .iter()
        .flat_map(|m| m.environments.iter())
        .filter_map(|e| e.running_promotion())
        .filter_map(|p| p.machine.next_deadline_ms(now))
        .min()
}
