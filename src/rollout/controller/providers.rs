//! Replica providers as the controller sees them: which kind a deployment has, building its
//! provider (and wiring the provider's change notifications to the controller's wakeup), and
//! the replica counts providers start with.

use std::sync::Arc;

use tokio::sync::Notify;

use super::state::State;
use crate::replicas::{
    DataPlaneLookup, ProviderSpec, ProviderTiming, ReplicaProvider, ReplicaSet, StaticSet,
};
use crate::routing::Router;

/// The kind of a deployment's provider, with what the controller needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProviderKind {
    /// A fixed list of `listed` endpoints: a promotion cannot ask for more replicas.
    Static { listed: usize },
    /// Local replica processes.
    Process,
}

impl ProviderKind {
    /// The name the API shows.
    pub fn name(self) -> &'static str {
        match self {
            ProviderKind::Static { .. } => "static",
            ProviderKind::Process => "process",
        }
    }
}

/// Builds providers on the control runtime.
pub(super) struct Providers {
    pub router: Arc<Router>,
    pub timing: ProviderTiming,
    /// The control runtime: replica actors run there, whoever registers a deployment.
    pub runtime: tokio::runtime::Handle,
    /// Notified whenever any provider's status may have changed.
    pub wake: Arc<Notify>,
}

impl Providers {
    pub fn make(
        &self,
        model: &str,
        id: &str,
        spec: &ProviderSpec,
    ) -> (Arc<dyn ReplicaProvider>, ProviderKind) {
        let (provider, kind): (Arc<dyn ReplicaProvider>, _) = match spec {
            ProviderSpec::Static { endpoints } => {
                // Listed endpoints are admitted unless a promotion says otherwise.
                let desired = endpoints.len() as u32;
                let set: Arc<dyn ReplicaProvider> = match self.timing.static_probe_interval {
                    Some(every) => {
                        StaticSet::probed(&self.runtime, endpoints.clone(), desired, every)
                    }
                    None => Arc::new(StaticSet::new(endpoints.clone(), desired)),
                };
                (
                    set,
                    ProviderKind::Static {
                        listed: endpoints.len(),
                    },
                )
            }
            ProviderSpec::Process { .. } => {
                let (m, d) = (model.to_owned(), id.to_owned());
                let r = self.router.clone();
                let lookup: DataPlaneLookup = Arc::new(move |addr| r.replica(&m, &d, addr));
                let set = ReplicaSet::spawn(
                    &self.runtime,
                    format!("{model}/{id}"),
                    spec.clone(),
                    self.timing.clone(),
                    lookup,
                );
                (set, ProviderKind::Process)
            }
        };
        // Every provider wakes the controller when it changes, including those registered
        // after the controller started. The task ends when the provider is gone.
        let mut changed = provider.changed();
        let wake = self.wake.clone();
        self.runtime.spawn(async move {
            while changed.changed().await.is_ok() {
                wake.notify_one();
            }
        });
        (provider, kind)
    }
}

/// Sets every process deployment's replica count from the state: the promotion's targets while
/// one runs, the environment's count for its current deployment, none otherwise. (Static
/// deployments start with every listed endpoint admitted; a running promotion sets its own.)
pub(super) fn initial_scale(st: &State) {
    for m in &st.models {
        for d in m
            .deployments
            .iter()
            .filter(|d| d.kind == ProviderKind::Process)
        {
            let mut want = 0;
            for e in &m.environments {
                match e.running_promotion() {
                    Some(p) if p.candidate == d.id => {
                        want = want.max(p.machine.candidate_target + e.extra.1)
                    }
                    Some(p) if p.previous == d.id => {
                        want = want.max(p.machine.previous_target + e.extra.0)
                    }
                    Some(_) => {}
                    None if e.current.as_deref() == Some(d.id.as_str()) => {
                        want = want.max(e.replicas)
                    }
                    None => {}
                }
            }
            d.provider.scale(if d.active { want } else { 0 });
        }
        for d in m
            .deployments
            .iter()
            .filter(|d| matches!(d.kind, ProviderKind::Static { .. }))
        {
            for e in &m.environments {
                match e.running_promotion() {
                    Some(p) if p.candidate == d.id => d.provider.scale(p.machine.candidate_target),
                    Some(p) if p.previous == d.id => d.provider.scale(p.machine.previous_target),
                    // Endpoints that register later: admit as many as the environment runs.
                    None if e.current.as_deref() == Some(d.id.as_str())
                        && matches!(d.kind, ProviderKind::Static { listed: 0 }) =>
                    {
                        d.provider.scale(e.replicas)
                    }
                    _ => {}
                }
            }
        }
    }
}
