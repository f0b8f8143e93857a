//! The controller on paused tokio time with static providers: timers fire exactly at their
//! deadlines, events and provider changes wake it at once, and nothing else does.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::metrics::Metrics;
use crate::replicas::ProviderSpec;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::{PromotionConfig, Status};
use crate::rollout::plan::RollingConfig;
use crate::store::StoreError;

fn endpoints(first_port: u16, n: u16) -> Vec<SocketAddr> {
    (0..n)
        .map(|i| SocketAddr::from(([127, 0, 0, 1], first_port + i)))
        .collect()
}

fn static_spec(first_port: u16, n: u16) -> ProviderSpec {
    ProviderSpec::Static {
        endpoints: endpoints(first_port, n),
    }
}

/// Model `m`: v1 (2 endpoints, current in `production`) and v2 (2 endpoints).
fn model(stabilization_time_seconds: u32) -> ModelSetup {
    ModelSetup {
        id: "m".into(),
        hosts: vec![],
        deployments: vec![
            ("v1".into(), static_spec(1000, 2)),
            ("v2".into(), static_spec(2000, 2)),
        ],
        scale_commands: Default::default(),
        environments: vec![EnvironmentSetup {
            name: "production".into(),
            hosts: vec![],
            traffic: TrafficSetup::Current {
                deployment: "v1".into(),
                replicas: 2,
            },
            promotion: PromotionConfig {
                rolling: true,
                rolling_config: RollingConfig {
                    max_surge_percent: 50,
                    stabilization_time_seconds,
                    ..RollingConfig::default()
                },
                ..PromotionConfig::default()
            },
            autoscaling: None,
        }],
    }
}

struct Running {
    ctl: Arc<Controller>,
    router: Arc<Router>,
    stop: watch::Sender<bool>,
    run: JoinHandle<()>,
}

impl Running {
    fn start(models: &[ModelSetup], store: Option<Arc<dyn Store>>) -> Running {
        let router = Arc::new(Router::new(Metrics::new()));
        let ctl = Controller::start(models, router.clone(), Default::default(), store).unwrap();
        let (stop, stop_rx) = watch::channel(false);
        let run = tokio::spawn(ctl.clone().run(stop_rx));
        Running {
            ctl,
            router,
            stop,
            run,
        }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        self.run.await.unwrap();
    }

    /// Ready replicas of a deployment in the installed routing.
    fn routed(&self, deployment: &str) -> usize {
        let snap = self.router.load();
        snap.models[0]
            .environments
            .iter()
            .flat_map(|e| e.pools.iter())
            .chain(snap.models[0].unassigned.iter())
            .find(|p| &*p.deployment == deployment)
            .map_or(0, |p| p.replicas.len())
    }
}

/// Events until (and with) the first with `status`, each with the tokio time it arrived.
async fn events_until(
    rx: &mut broadcast::Receiver<EnvironmentEvent>,
    status: Status,
) -> Vec<(Instant, EnvironmentEvent)> {
    let mut out = Vec::new();
    loop {
        let e = rx.recv().await.unwrap();
        let done = e.event.status == status;
        out.push((Instant::now(), e));
        if done {
            return out;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn stabilization_waits_exactly_its_time_and_nothing_else_takes_time() {
    let r = Running::start(&[model(7)], None);
    let mut rx = r.ctl.subscribe();
    let t0 = Instant::now();
    r.ctl.promote("m", "production", "v2").unwrap();
    let events = events_until(&mut rx, Status::Succeeded).await;
    let stabilizing: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, (_, e))| e.event.reason.starts_with("stabilizing for 7 s"))
        .map(|(i, _)| i)
        .collect();
    assert!(!stabilizing.is_empty(), "{events:#?}");
    for i in &stabilizing {
        let (at, e) = &events[*i];
        let (next_at, next) = &events[i + 1];
        assert_eq!(*next_at - *at, Duration::from_secs(7), "{next:?}");
        assert_eq!(next.event.at_ms - e.event.at_ms, 7000);
    }
    // Static replicas are ready at once: the only time that passes is stabilization.
    let (end, _) = events.last().unwrap();
    assert_eq!(*end - t0, Duration::from_secs(7) * stabilizing.len() as u32);
    let v = r.ctl.environment("m", "production").unwrap();
    assert_eq!(v.current_deployment.as_deref(), Some("v2"));
    assert_eq!((r.routed("v1"), r.routed("v2")), (0, 2));
    r.stop().await;
}

/// A stabilization wait is no replica change: force roll forward and cancel end it at once.
#[tokio::test(start_paused = true)]
async fn force_roll_forward_during_an_hour_of_stabilization_succeeds_at_once() {
    let r = Running::start(&[model(3600)], None);
    let mut rx = r.ctl.subscribe();
    r.ctl.promote("m", "production", "v2").unwrap();
    loop {
        let e = rx.recv().await.unwrap();
        if e.event.reason.starts_with("stabilizing") {
            break;
        }
    }
    let t0 = Instant::now();
    r.ctl.force_roll_forward("m", "production").unwrap();
    let events = events_until(&mut rx, Status::Succeeded).await;
    let (end, _) = events.last().unwrap();
    assert_eq!(*end - t0, Duration::ZERO, "{events:#?}");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_controller_sets_no_timer_and_a_command_wakes_it_at_once() {
    let r = Running::start(&[model(0)], None);
    let passes = r.ctl.changed();
    tokio::time::sleep(Duration::from_millis(1)).await; // the first pass
    let before = *passes.borrow();
    // An hour with nothing to do: the run loop makes no pass at all (a poller would make one
    // per period, and paused time would fast-forward through each of them).
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(*passes.borrow(), before);
    let mut rx = r.ctl.subscribe();
    let t1 = Instant::now();
    r.ctl.promote("m", "production", "v2").unwrap();
    events_until(&mut rx, Status::Succeeded).await;
    assert_eq!(Instant::now(), t1, "no stabilization: no time passes");
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_provider_registered_after_start_wakes_the_controller_when_it_changes() {
    let r = Running::start(&[model(0)], None);
    r.ctl
        .add_deployment("m", "v3", static_spec(3000, 2))
        .unwrap();
    assert_eq!(r.routed("v3"), 2, "registered with every endpoint admitted");
    // Let the controller handle the registration and go idle (the clock only moves then).
    tokio::time::sleep(Duration::from_millis(1)).await;
    let t0 = Instant::now();
    // The provider changes on its own (as a process provider does when a replica dies); only
    // its change notification can tell the controller.
    let provider = r.ctl.lock().models[0]
        .deployment("v3")
        .unwrap()
        .provider
        .clone();
    provider.scale(1);
    for _ in 0..100 {
        if r.routed("v3") == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(r.routed("v3"), 1, "the change did not reach the routing");
    assert_eq!(Instant::now(), t0);
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn autoscaling_samples_on_its_period_and_scales_down_after_the_delay() {
    let mut m = model(0);
    m.deployments[0].1 = static_spec(1000, 3);
    m.environments[0].traffic = TrafficSetup::Current {
        deployment: "v1".into(),
        replicas: 3,
    };
    m.environments[0].autoscaling = Some(AutoscalingSettings {
        min_replica: 1,
        max_replica: 3,
        autoscaling_window: 10,
        scale_down_delay: 5,
        concurrency_target: 1,
        target_utilization_percentage: 100,
    });
    let r = Running::start(&[m], None);
    let mut changed = r.ctl.lock().models[0]
        .deployment("v1")
        .unwrap()
        .provider
        .changed();
    let t0 = Instant::now();
    changed.changed().await.unwrap();
    // No load: down to min_replica once the delay passed, on the first sample after it.
    assert_eq!(Instant::now() - t0, Duration::from_secs(5));
    let v = r.ctl.environment("m", "production").unwrap();
    assert_eq!(v.deployments["v1"].desired_replicas, 1);
    r.stop().await;
}

/// A store in memory, shared between controller runs.
#[derive(Default)]
struct MemStore(Mutex<Option<Vec<u8>>>);

impl Store for MemStore {
    fn load(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn save(&self, state: &[u8]) -> Result<(), StoreError> {
        *self.0.lock().unwrap() = Some(state.to_vec());
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn state_is_saved_on_change_and_restored_by_the_next_run() {
    let store = Arc::new(MemStore::default());
    let r = Running::start(&[model(0)], Some(store.clone()));
    let mut rx = r.ctl.subscribe();
    r.ctl
        .add_deployment("m", "v3", static_spec(3000, 2))
        .unwrap();
    r.ctl.promote("m", "production", "v3").unwrap();
    events_until(&mut rx, Status::Succeeded).await;
    r.stop().await; // commits what is queued
    let saved: serde_json::Value =
        serde_json::from_slice(&store.0.lock().unwrap().clone().unwrap()).unwrap();
    assert_eq!(saved["models"][0]["environments"][0]["current"], "v3");

    let r = Running::start(&[model(0)], Some(store.clone()));
    let v = r.ctl.environment("m", "production").unwrap();
    assert_eq!(v.current_deployment.as_deref(), Some("v3"));
    assert_eq!(v.deployments["v3"].provider, "static");
    assert_eq!(v.promotion.unwrap().status, Status::Succeeded);
    assert!(!r.ctl.events("m", "production").unwrap().is_empty());
    r.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_state_file_of_the_first_format_still_loads() {
    // The shape written before the controller was split (no `registered`, `settings` or
    // `autoscaling` fields yet).
    let old = br#"{"version":1,"models":[{"id":"m","inactive":["v1"],"environments":[
        {"name":"production","current":"v2","replicas":2,"extra":[0,0],"promotion":null,
         "events":[{"at_ms":5,"status":"SUCCEEDED","percent_traffic_to_new_version":100,
                    "candidate_replicas":2,"previous_replicas":0,"reason":"done"}]}]}]}"#;
    let store = Arc::new(MemStore(Mutex::new(Some(old.to_vec()))));
    let r = Running::start(&[model(0)], Some(store));
    let v = r.ctl.environment("m", "production").unwrap();
    assert_eq!(v.current_deployment.as_deref(), Some("v2"));
    assert!(!v.deployments["v1"].active);
    assert_eq!(r.ctl.events("m", "production").unwrap()[0].reason, "done");
    assert_eq!((r.routed("v1"), r.routed("v2")), (0, 2));
    r.stop().await;
}
