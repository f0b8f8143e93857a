//! Persistence: what survives a restart (the `Persisted` shape, unchanged since the first
//! saved state), restoring it onto the configured models, and the writer that commits it.
//!
//! The controller marks its state dirty when something saved changes and hands the encoded
//! state to a [`Saver`]. The saver's thread commits to the [`Store`] off the async workers,
//! coalescing to the latest state: a state replaced before it was written is never written,
//! and a commit that fails is retried with the latest state.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::providers::Providers;
use super::state::{ActivePromotion, DeploymentState, ModelState, State};
use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::{Autoscaler, AutoscalingSettings};
use crate::rollout::machine::{Event, Promotion, PromotionConfig};
use crate::store::Store;

/// Events kept in the store per environment.
const PERSISTED_EVENTS: usize = 1000;

/// What survives a restart.
#[derive(Serialize, serde::Deserialize)]
pub(super) struct Persisted {
    version: u32,
    models: Vec<PersistedModel>,
}

#[derive(Serialize, serde::Deserialize, Clone)]
pub(super) struct PersistedModel {
    pub id: String,
    inactive: Vec<String>,
    #[serde(default)]
    registered: Vec<(String, ProviderSpec)>,
    environments: Vec<PersistedEnvironment>,
    /// Each deployment's replica target as the controller last set it. Instances that mirror
    /// a shared store scale their providers to it; a restart on the embedded store ignores it
    /// (the promotion's targets are restored instead).
    #[serde(default)]
    desired: BTreeMap<String, u32>,
}

#[derive(Serialize, serde::Deserialize, Clone)]
struct PersistedEnvironment {
    name: String,
    #[serde(default)]
    settings: Option<PromotionConfig>,
    #[serde(default)]
    autoscaling: Option<AutoscalingSettings>,
    current: Option<String>,
    replicas: u32,
    extra: (u32, u32),
    promotion: Option<PersistedPromotion>,
    events: Vec<Event>,
}

#[derive(Serialize, serde::Deserialize, Clone)]
struct PersistedPromotion {
    previous: String,
    candidate: String,
    machine: Promotion,
}

impl Persisted {
    pub(super) fn of(st: &State) -> Persisted {
        Persisted {
            version: 1,
            models: st
                .models
                .iter()
                .map(|m| model_record(m, PERSISTED_EVENTS))
                .collect(),
        }
    }
}

/// One model's saved shape, with at most `events_kept` events per environment.
pub(super) fn model_record(m: &ModelState, events_kept: usize) -> PersistedModel {
    PersistedModel {
        id: m.id.clone(),
        inactive: m
            .deployments
            .iter()
            .filter(|d| !d.active)
            .map(|d| d.id.clone())
            .collect(),
        registered: m
            .deployments
            .iter()
            .filter_map(|d| d.registered.clone().map(|s| (d.id.clone(), s)))
            .collect(),
        environments: m
            .environments
            .iter()
            .filter(|e| e.fixed.is_none())
            .map(|e| PersistedEnvironment {
                name: e.name.clone(),
                settings: Some(e.settings.clone()),
                autoscaling: e.autoscaler.as_ref().map(|a| a.settings),
                current: e.current.clone(),
                replicas: e.replicas,
                extra: e.extra,
                promotion: e.promotion.as_ref().map(|p| PersistedPromotion {
                    previous: p.previous.clone(),
                    candidate: p.candidate.clone(),
                    machine: p.machine.clone(),
                }),
                events: e.events[e.events.len().saturating_sub(events_kept)..].to_vec(),
            })
            .collect(),
        desired: m
            .deployments
            .iter()
            .map(|d| (d.id.clone(), d.provider.status().desired))
            .collect(),
    }
}

/// Applies saved state onto the configured models. What the configuration no longer has
/// (models, environments, deployments) is skipped with a warning.
pub(super) fn restore(st: &mut State, saved: Persisted, providers: &Providers) {
    for pm in saved.models {
        let Some(m) = st.models.iter_mut().find(|m| m.id == pm.id) else {
            tracing::warn!(model = %pm.id, "saved state names a model the configuration no longer has");
            continue;
        };
        restore_model(m, pm, providers, false);
    }
}

/// An event new to a mirrored state: its environment, the promotion's (previous, candidate).
pub(super) type FreshEvent = (String, Option<(String, String)>, Event);

/// Applies one model's saved shape onto its configured state. With `mirror` (an instance
/// following a shared store) the saved shape is the whole truth: deployments are (de)activated
/// both ways, a missing promotion clears the running one, and providers are scaled to the saved
/// targets. Returns the events that are new to this state, oldest first.
pub(super) fn restore_model(
    m: &mut ModelState,
    pm: PersistedModel,
    providers: &Providers,
    mirror: bool,
) -> Vec<FreshEvent> {
    let mut fresh = Vec::new();
    for (id, spec) in pm.registered {
        if m.deployments.iter().any(|d| d.id == id) {
            continue; // the configuration declares it now
        }
        let (provider, kind) = providers.make(&m.id, &id, &spec);
        m.deployments.push(DeploymentState {
            id,
            registered: Some(spec),
            provider,
            kind,
            active: true,
            scale_command: None,
        });
    }
    let has = |m: &ModelState, d: &str| m.deployments.iter().any(|x| x.id == d);
    for x in m.deployments.iter_mut() {
        if pm.inactive.contains(&x.id) {
            x.active = false;
        } else if mirror {
            x.active = true;
        }
    }
    for pe in pm.environments {
        let known = pe.current.as_deref().is_none_or(|c| has(m, c))
            && pe
                .promotion
                .as_ref()
                .is_none_or(|p| has(m, &p.previous) && has(m, &p.candidate));
        let Some(env) = m
            .environments
            .iter_mut()
            .find(|e| e.name == pe.name && e.fixed.is_none())
        else {
            tracing::warn!(model = %m.id, environment = %pe.name, "saved state names an environment the configuration no longer manages");
            continue;
        };
        if !known {
            tracing::warn!(model = %m.id, environment = %pe.name, "saved state names deployments the configuration no longer has; using the configuration");
            continue;
        }
        if !mirror {
            if let Some(p) = &pe.promotion {
                tracing::info!(
                    model = %m.id, environment = %pe.name, status = %p.machine.status,
                    percent = p.machine.percent, "restored the promotion from the saved state"
                );
            }
        }
        if let Some(settings) = pe.settings {
            env.settings = settings;
        }
        if env.autoscaler.as_ref().map(|a| a.settings) != pe.autoscaling {
            env.autoscaler = pe.autoscaling.map(Autoscaler::new);
        }
        env.current = pe.current;
        env.replicas = pe.replicas;
        env.extra = pe.extra;
        // Events after the last one this state already had are new to it.
        let seen = env
            .events
            .last()
            .and_then(|last| pe.events.iter().rposition(|e| e == last))
            .map_or(0, |i| i + 1);
        let pair = pe
            .promotion
            .as_ref()
            .map(|p| (p.previous.clone(), p.candidate.clone()));
        for e in &pe.events[seen.min(pe.events.len())..] {
            fresh.push((env.name.clone(), pair.clone(), e.clone()));
        }
        env.events = pe.events;
        env.promotion = pe.promotion.map(|p| {
            Box::new(ActivePromotion {
                previous: p.previous,
                candidate: p.candidate,
                machine: p.machine,
            })
        });
    }
    if mirror {
        for (id, n) in &pm.desired {
            if let Some(d) = m.deployments.iter().find(|d| &d.id == id) {
                d.provider.scale(*n);
            }
        }
    }
    fresh
}

/// How long a failed commit waits before it is tried again.
#[cfg(not(test))]
const RETRY_AFTER: Duration = Duration::from_secs(1);
#[cfg(test)]
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Commits states to a store from a thread of its own, latest first.
pub(super) struct Saver {
    shared: Arc<Shared>,
    /// The number of the newest state committed (states are numbered as queued, from 1).
    committed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

#[derive(Default)]
struct Slot {
    /// The newest state not committed yet, with its number.
    pending: Option<(u64, Vec<u8>)>,
    /// The number the next queued state gets.
    next: u64,
    /// The writer holds a state it is committing.
    writing: bool,
    /// No more states come: write what is pending and stop.
    closed: bool,
}

impl Saver {
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<Saver> {
        let shared = Arc::new(Shared::default());
        let committed = tokio::sync::watch::Sender::new(0);
        let (s, c) = (shared.clone(), committed.clone());
        std::thread::Builder::new()
            .name("switchyard-store".into())
            .spawn(move || write_loop(&s, &*store, &c))?;
        Ok(Saver { shared, committed })
    }

    /// Queues a state for writing, replacing any queued one. Returns at once, with the state's
    /// number for [`Saver::committed`].
    pub fn save(&self, bytes: Vec<u8>) -> u64 {
        let mut slot = self.shared.lock();
        slot.next += 1;
        let n = slot.next;
        slot.pending = Some((n, bytes));
        self.shared.changed.notify_all();
        n
    }

    /// Resolves once state `n` (or a newer one) is committed, or after `timeout` (false).
    pub async fn committed(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.committed.subscribe();
        let done = tokio::time::timeout(timeout, rx.wait_for(|c| *c >= n))
            .await
            .is_ok_and(|r| r.is_ok());
        done
    }

    /// Blocks until every queued state is committed (or up to `timeout` when the store fails).
    pub fn flush(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut slot = self.shared.lock();
        while slot.pending.is_some() || slot.writing {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::error!("the state could not be saved before stopping");
                return;
            }
            slot = match self.shared.changed.wait_timeout(slot, left) {
                Ok((s, _)) => s,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

impl Drop for Saver {
    /// The writer commits what is queued, then stops.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, slot: std::sync::MutexGuard<'a, Slot>) -> std::sync::MutexGuard<'a, Slot> {
        self.changed.wait(slot).unwrap_or_else(|e| e.into_inner())
    }
}

fn write_loop(shared: &Shared, store: &dyn Store, committed: &tokio::sync::watch::Sender<u64>) {
    // The bytes last committed, to skip writes that change nothing.
    let mut saved: Vec<u8> = Vec::new();
    let mut slot = shared.lock();
    loop {
        let Some((n, bytes)) = slot.pending.take() else {
            if slot.closed {
                return;
            }
            slot = shared.wait(slot);
            continue;
        };
        slot.writing = true;
        drop(slot);
        let failed = bytes != saved && {
            match store.save(&bytes) {
                Ok(()) => {
                    saved = bytes;
                    false
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot save the state; it will be retried");
                    let mut slot = shared.lock();
                    slot.pending.get_or_insert((n, bytes));
                    true
                }
            }
        };
        if !failed {
            committed.send_if_modified(|c| {
                let newer = n > *c;
                *c = (*c).max(n);
                newer
            });
        }
        slot = shared.lock();
        slot.writing = false;
        shared.changed.notify_all();
        if failed {
            let closed = slot.closed;
            drop(slot);
            if closed {
                return;
            }
            std::thread::sleep(RETRY_AFTER);
            slot = shared.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// A store that records commits and can be made to fail or to stall.
    #[derive(Default)]
    struct Recording {
        saves: Mutex<Vec<Vec<u8>>>,
        fail: std::sync::atomic::AtomicBool,
        gate: Mutex<()>,
    }

    impl Store for Recording {
        fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn save(&self, state: &[u8]) -> Result<(), StoreError> {
            let _held = self.gate.lock().unwrap();
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::Io("disk full".into()));
            }
            self.saves.lock().unwrap().push(state.to_vec());
            Ok(())
        }
    }

    #[test]
    fn states_queued_while_a_commit_runs_coalesce_to_the_latest() {
        let store = Arc::new(Recording::default());
        let saver = Saver::start(store.clone()).unwrap();
        let gate = store.gate.lock().unwrap();
        saver.save(b"one".to_vec());
        // Wait until the writer holds "one" (blocked on the gate), then queue two more.
        while !saver.shared.lock().writing {
            std::thread::yield_now();
        }
        saver.save(b"two".to_vec());
        saver.save(b"three".to_vec());
        drop(gate);
        saver.flush(Duration::from_secs(10));
        assert_eq!(
            *store.saves.lock().unwrap(),
            vec![b"one".to_vec(), b"three".to_vec()]
        );
        saver.save(b"three".to_vec());
        saver.flush(Duration::from_secs(10));
        assert_eq!(
            store.saves.lock().unwrap().len(),
            2,
            "an unchanged state is not rewritten"
        );
    }

    #[test]
    fn a_failed_commit_is_retried_and_drop_writes_what_is_queued() {
        let store = Arc::new(Recording::default());
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let saver = Saver::start(store.clone()).unwrap();
        saver.save(b"one".to_vec());
        saver.flush(Duration::from_millis(50));
        assert!(store.saves.lock().unwrap().is_empty());
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        saver.flush(Duration::from_secs(10));
        assert_eq!(*store.saves.lock().unwrap(), vec![b"one".to_vec()]);
        saver.save(b"two".to_vec());
        drop(saver);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.saves.lock().unwrap().len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the queued state was lost"
            );
            std::thread::yield_now();
        }
    }

    /// What lets the API answer only once a change would survive a crash.
    // The held gate stalls the writer's OS thread, not this task's runtime.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn committed_resolves_only_after_the_store_commits() {
        let store = Arc::new(Recording::default());
        let saver = Saver::start(store.clone()).unwrap();
        let gate = store.gate.lock().unwrap();
        let n = saver.save(b"one".to_vec());
        assert!(
            !saver.committed(n, Duration::from_millis(100)).await,
            "reported committed while the store still held it"
        );
        drop(gate);
        assert!(saver.committed(n, Duration::from_secs(10)).await);
        assert_eq!(store.saves.lock().unwrap().len(), 1);
        // A failing store never reports a commit.
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let n = saver.save(b"two".to_vec());
        assert!(!saver.committed(n, Duration::from_millis(100)).await);
        store.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(saver.committed(n, Duration::from_secs(10)).await);
    }
}
