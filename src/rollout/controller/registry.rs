//! Endpoint registration: a replica (or its orchestrator) announces `deployment → host:port`
//! with a TTL and renews it; an endpoint not renewed in time leaves the deployment. Registered
//! endpoints join a static deployment after its listed ones and are admitted by readiness (the
//! TCP probe) like them.
//!
//! Alone, this instance keeps the registrations with their expiry. On a shared store each
//! registration is an etcd key on a lease of its TTL, and every instance applies what its watch
//! sees; etcd expires them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::providers::ProviderKind;
use super::views::ControllerError;
use super::Controller;

/// Registrations by (model, deployment): each endpoint with when it expires (`None`: etcd
/// expires it).
pub(super) type Registrations = BTreeMap<(String, String), BTreeMap<SocketAddr, Option<Instant>>>;

/// The TTL range a registration may ask for.
pub const TTL_RANGE: std::ops::RangeInclusive<u32> = 1..=3600;

/// A registered endpoint as the API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredEndpoint {
    pub address: SocketAddr,
    /// Until it expires unless renewed (`None` on a shared store, where etcd keeps the lease).
    pub expires_in: Option<Duration>,
}

impl Controller {
    /// Checks that the deployment exists and takes endpoints (a static one).
    fn registrable(&self, model: &str, deployment: &str) -> Result<(), ControllerError> {
        let st = self.lock();
        let m = st
            .models
            .iter()
            .find(|m| m.id == model)
            .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))?;
        let d = m
            .deployment(deployment)
            .ok_or_else(|| ControllerError::UnknownDeployment {
                model: model.to_owned(),
                deployment: deployment.to_owned(),
            })?;
        if !matches!(d.kind, ProviderKind::Static { .. }) {
            return Err(ControllerError::Remote {
                status: 409,
                message: format!(
                    "deployment {deployment:?} runs process replicas; endpoints register with static deployments"
                ),
            });
        }
        Ok(())
    }

    /// Registers (or renews) an endpoint for `ttl`.
    pub async fn register_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: SocketAddr,
        ttl: Duration,
    ) -> Result<(), ControllerError> {
        self.registrable(model, deployment)?;
        if let Some(c) = self.cluster.get() {
            return c
                .register_endpoint(model, deployment, address, ttl)
                .await
                .map_err(ControllerError::Unavailable);
        }
        let fresh = {
            let mut r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            r.entry((model.to_owned(), deployment.to_owned()))
                .or_default()
                .insert(address, Some(Instant::now() + ttl))
                .is_none()
        };
        if fresh {
            tracing::info!(model, deployment, %address, ttl = ?ttl, "endpoint registered");
            self.apply_registrations(model, deployment);
        }
        Ok(())
    }

    /// Removes a registration at once. False when there was none.
    pub async fn deregister_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: SocketAddr,
    ) -> Result<bool, ControllerError> {
        self.registrable(model, deployment)?;
        if let Some(c) = self.cluster.get() {
            return c
                .deregister_endpoint(model, deployment, address)
                .await
                .map_err(ControllerError::Unavailable);
        }
        let removed = self.set_registration(model, deployment, address, false);
        Ok(removed)
    }

    /// The deployment's registered endpoints.
    pub fn registered_endpoints(
        &self,
        model: &str,
        deployment: &str,
    ) -> Result<Vec<RegisteredEndpoint>, ControllerError> {
        // Any deployment may be asked (a process deployment simply has none).
        if let Err(
            e @ (ControllerError::UnknownModel(_) | ControllerError::UnknownDeployment { .. }),
        ) = self.registrable(model, deployment)
        {
            return Err(e);
        }
        let now = Instant::now();
        let r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
        Ok(r.get(&(model.to_owned(), deployment.to_owned()))
            .map(|eps| {
                eps.iter()
                    .map(|(a, exp)| RegisteredEndpoint {
                        address: *a,
                        expires_in: exp.map(|t| t.saturating_duration_since(now)),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A registration seen on the shared store (or removed there). Returns whether it changed.
    pub(crate) fn set_registration(
        &self,
        model: &str,
        deployment: &str,
        address: SocketAddr,
        present: bool,
    ) -> bool {
        let changed = {
            let mut r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            let key = (model.to_owned(), deployment.to_owned());
            if present {
                r.entry(key).or_default().insert(address, None).is_none()
            } else {
                let gone = r
                    .get_mut(&key)
                    .is_some_and(|m| m.remove(&address).is_some());
                if r.get(&key).is_some_and(|m| m.is_empty()) {
                    r.remove(&key);
                }
                gone
            }
        };
        if changed {
            tracing::info!(model, deployment, %address, present, "endpoint registration changed");
            self.apply_registrations(model, deployment);
        }
        changed
    }

    /// Replaces every registration with a full read of the shared store.
    pub(crate) fn replace_registrations(&self, all: Vec<(String, String, SocketAddr)>) {
        let mut next: Registrations = BTreeMap::new();
        for (m, d, a) in all {
            next.entry((m, d)).or_default().insert(a, None);
        }
        let touched: Vec<(String, String)> = {
            let mut r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            let mut keys: Vec<_> = r.keys().chain(next.keys()).cloned().collect();
            keys.dedup();
            *r = next;
            keys
        };
        for (m, d) in touched {
            self.apply_registrations(&m, &d);
        }
    }

    /// Drops registrations past their expiry (alone; etcd expires them on a shared store).
    pub(super) fn expire_registrations(&self) {
        let now = Instant::now();
        let expired: Vec<(String, String, SocketAddr)> = {
            let r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            r.iter()
                .flat_map(|((m, d), eps)| {
                    eps.iter()
                        .filter(|(_, exp)| exp.is_some_and(|t| t <= now))
                        .map(|(a, _)| (m.clone(), d.clone(), *a))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for (m, d, a) in expired {
            tracing::warn!(model = %m, deployment = %d, address = %a, "registration expired (not renewed)");
            self.set_registration(&m, &d, a, false);
        }
    }

    /// Hands the deployment's registered endpoints to its provider.
    fn apply_registrations(&self, model: &str, deployment: &str) {
        let list: Vec<SocketAddr> = {
            let r = self.registrations.lock().unwrap_or_else(|e| e.into_inner());
            r.get(&(model.to_owned(), deployment.to_owned()))
                .map(|m| m.keys().copied().collect())
                .unwrap_or_default()
        };
        let st = self.lock();
        if let Some(d) = st
            .models
            .iter()
            .find(|m| m.id == model)
            .and_then(|m| m.deployment(deployment))
        {
            d.provider.set_registered(list);
        }
        drop(st);
        self.wake.notify_one();
    }
}
