//! Commands: what the API asks of the controller (promotions and their control actions,
//! settings, deployment registration and activation). Each one changes the state under the
//! lock, reroutes, queues the state for saving and wakes the run loop.

use super::effects::apply;
use super::events;
use super::providers::ProviderKind;
use super::state::{env_index, ActivePromotion, DeploymentState, ModelState};
use super::views::ControllerError;
use super::Controller;
use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::{Autoscaler, AutoscalingSettings};
use crate::rollout::machine::{ControlError, Effects, Event, Promotion, PromotionConfig, Status};

impl Controller {
    /// After a command changed the state: new routing, queued for the store, and the run loop
    /// woken (after the lock is released) to act on it.
    fn commit(&self, mut st: std::sync::MutexGuard<'_, super::state::State>) {
        st.dirty = true;
        self.reroute(&mut st);
        self.save(&mut st);
        drop(st);
        self.wake.notify_one();
    }

    fn with_env<T>(
        &self,
        model: &str,
        environment: &str,
        f: impl FnOnce(&mut ModelState, usize) -> Result<T, ControllerError>,
    ) -> Result<T, ControllerError> {
        let mut st = self.lock();
        let (mi, ei) = env_index(&st, model, environment)?;
        let m = &mut st.models[mi];
        let out = f(m, ei)?;
        self.commit(st);
        Ok(out)
    }

    /// Starts promoting `candidate` in an environment, with the environment's settings.
    pub fn promote(
        &self,
        model: &str,
        environment: &str,
        candidate: &str,
    ) -> Result<(), ControllerError> {
        let now = self.clock.now_ms();
        self.with_env(model, environment, |m, ei| {
            let env = &m.environments[ei];
            if env.fixed.is_some() {
                return Err(ControllerError::FixedSplit(env.name.clone()));
            }
            if let Some(p) = &env.promotion {
                if !p.machine.status.is_terminal() {
                    return Err(ControllerError::PromotionInProgress(p.candidate.clone()));
                }
            }
            let Some(cand) = m.deployment(candidate) else {
                return Err(ControllerError::UnknownDeployment {
                    model: m.id.clone(),
                    deployment: candidate.to_owned(),
                });
            };
            let previous = env.current.clone().unwrap_or_default();
            if previous == candidate {
                return Err(ControllerError::AlreadyCurrent(candidate.to_owned()));
            }
            if let Some(other) = m.environments.iter().find(|e| {
                e.name != env.name
                    && (e.current.as_deref() == Some(candidate)
                        || e.fixed
                            .as_ref()
                            .is_some_and(|w| w.get(candidate).is_some_and(|w| *w > 0)))
            }) {
                return Err(ControllerError::SharedDeployment {
                    deployment: candidate.to_owned(),
                    environment: other.name.clone(),
                });
            }
            let prev_replicas = m
                .deployment(&previous)
                .map_or(1, |d| d.provider.status().desired.max(1));
            let (machine, fx) = Promotion::start(prev_replicas, env.settings.clone(), now)?;
            if let ProviderKind::Static { .. } = cand.kind {
                // Listed and registered endpoints: register more before promoting.
                let listed = cand.provider.endpoint_count().unwrap_or(0);
                if (listed as u32) < machine.fleet {
                    return Err(ControllerError::NotEnoughEndpoints {
                        deployment: candidate.to_owned(),
                        listed,
                        needed: machine.fleet,
                    });
                }
            }
            // A static candidate starts from none admitted; the machine scales it up.
            cand.provider.scale(0);
            if let Some(d) = m.deployments.iter_mut().find(|d| d.id == candidate) {
                d.active = true;
            }
            m.environments[ei].promotion = Some(Box::new(ActivePromotion {
                previous,
                candidate: candidate.to_owned(),
                machine,
            }));
            apply(&self.events, m, ei, fx);
            Ok(())
        })
    }

    fn control(
        &self,
        model: &str,
        environment: &str,
        f: impl FnOnce(&mut Promotion, u64) -> Result<Effects, ControlError>,
    ) -> Result<Status, ControllerError> {
        let now = self.clock.now_ms();
        self.with_env(model, environment, |m, ei| {
            let env = &mut m.environments[ei];
            let Some(p) = env
                .promotion
                .as_mut()
                .filter(|p| !p.machine.status.is_terminal())
            else {
                return Err(ControllerError::NoPromotion(env.name.clone()));
            };
            let fx = f(&mut p.machine, now)?;
            let status = p.machine.status;
            apply(&self.events, m, ei, fx);
            Ok(status)
        })
    }

    pub fn pause(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.pause(now))
    }

    pub fn resume(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.resume(now))
    }

    /// Graceful cancel; answers RAMPING_DOWN or CANCELED.
    pub fn cancel(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.cancel(now))
    }

    pub fn force_cancel(&self, model: &str, environment: &str) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.force_cancel(now))
    }

    pub fn force_roll_forward(
        &self,
        model: &str,
        environment: &str,
    ) -> Result<Status, ControllerError> {
        self.control(model, environment, |p, now| p.force_roll_forward(now))
    }

    /// Replaces an environment's promotion and autoscaling settings (already validated). A
    /// promotion in progress keeps the settings it started with. Returns whether anything changed.
    pub fn set_environment_settings(
        &self,
        model: &str,
        environment: &str,
        settings: PromotionConfig,
        autoscaling: Option<AutoscalingSettings>,
    ) -> Result<bool, ControllerError> {
        let now = self.clock.now_ms();
        self.with_env(model, environment, |m, ei| {
            let env = &mut m.environments[ei];
            let before = (
                env.settings.clone(),
                env.autoscaler.as_ref().map(|a| a.settings),
            );
            if before == (settings.clone(), autoscaling) {
                return Ok(false);
            }
            env.settings = settings;
            if env.autoscaler.as_ref().map(|a| a.settings) != autoscaling {
                env.autoscaler = autoscaling.map(Autoscaler::new);
            }
            let reason = "settings updated".to_string();
            tracing::info!(model = %m.id, environment = %env.name, "{reason}");
            if let Some(p) = &env.promotion {
                let e = Event {
                    at_ms: now,
                    status: p.machine.status,
                    percent_traffic_to_new_version: p.machine.percent,
                    candidate_replicas: p.machine.candidate_target,
                    previous_replicas: p.machine.previous_target,
                    reason,
                };
                events::log(env, e);
            }
            Ok(true)
        })
    }

    /// Adds a deployment to a model without a restart. It starts with no replicas (static: all
    /// listed endpoints admitted) until a promotion scales it.
    pub fn add_deployment(
        &self,
        model: &str,
        id: &str,
        spec: ProviderSpec,
    ) -> Result<(), ControllerError> {
        let mut st = self.lock();
        let m = st.model_mut(model)?;
        if m.deployment(id).is_some() {
            return Err(ControllerError::DeploymentExists(id.to_owned()));
        }
        let (provider, kind) = self.providers.make(model, id, &spec);
        m.deployments.push(DeploymentState {
            id: id.to_owned(),
            registered: Some(spec),
            provider,
            kind,
            active: true,
            scale_command: None,
        });
        tracing::info!(
            model,
            deployment = id,
            provider = kind.name(),
            "deployment registered"
        );
        self.commit(st);
        Ok(())
    }

    /// Activates or deactivates a deployment. A deactivated one has no replicas and gets no
    /// traffic, pinned requests included; a current or promoting deployment cannot be deactivated.
    pub fn set_active(&self, model: &str, id: &str, active: bool) -> Result<(), ControllerError> {
        let mut st = self.lock();
        let m = st.model_mut(model)?;
        if m.deployment(id).is_none() {
            return Err(ControllerError::UnknownDeployment {
                model: model.to_owned(),
                deployment: id.to_owned(),
            });
        }
        if !active {
            if let Some(e) = m.environments.iter().find(|e| {
                e.current.as_deref() == Some(id)
                    || e.fixed
                        .as_ref()
                        .is_some_and(|w| w.get(id).is_some_and(|w| *w > 0))
                    || e.promotion.as_ref().is_some_and(|p| {
                        !p.machine.status.is_terminal() && (p.candidate == id || p.previous == id)
                    })
            }) {
                return Err(ControllerError::SharedDeployment {
                    deployment: id.to_owned(),
                    environment: e.name.clone(),
                });
            }
        }
        if let Some(d) = m.deployments.iter_mut().find(|d| d.id == id) {
            d.active = active;
            if !active {
                d.provider.scale(0);
            }
        }
        self.commit(st);
        Ok(())
    }
}
