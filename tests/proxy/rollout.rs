//! Rolling deployments end to end: real replica processes (the binary's own `replica` mode),
//! the real controller and continuous client traffic, streaming included.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::BodyExt;

use switchyard::config::{DeploymentConfig, EnvironmentConfig, ModelConfig, Settings, Traffic};
use switchyard::replicas::ProviderSpec;
use switchyard::rollout::machine::{PromotionConfig, Status};
use switchyard::rollout::plan::RollingConfig;
use switchyard::server::RunningProxy;

use crate::support::*;

pub(crate) fn replica_command(extra: &[&str]) -> Vec<String> {
    let mut c: Vec<String> = [
        env!("CARGO_BIN_EXE_switchyard"),
        "replica",
        "--port",
        "{port}",
        "--version",
        "{deployment}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    c.extend(extra.iter().map(|s| s.to_string()));
    c
}

pub(crate) fn process(extra: &[&str]) -> ProviderSpec {
    ProviderSpec::Process {
        command: replica_command(extra),
        health_path: "/healthz".into(),
    }
}

pub(crate) fn rolling_settings(v2: ProviderSpec) -> Settings {
    let fast = [
        "--latency-ms",
        "5",
        "--tokens-per-second",
        "40",
        "--startup-delay-ms",
        "200",
    ];
    two_deployments(process(&fast), v2, steps_of_34())
}

/// Rolling, surge 34%: with 3 replicas, steps at 34, 68 and 100%, 1 s stabilization.
pub(crate) fn steps_of_34() -> PromotionConfig {
    PromotionConfig {
        rolling: true,
        rolling_config: RollingConfig {
            max_surge_percent: 34,
            max_unavailable_percent: 0,
            stabilization_time_seconds: 1,
            replica_overhead_percent: 0,
        },
        ready_wait_ms: 5_000,
        ready_deadline_ms: 20_000,
        ..PromotionConfig::default()
    }
}

/// Model `m` with deployments v1 (3 replicas, current in `production`) and v2.
pub(crate) fn two_deployments(
    v1: ProviderSpec,
    v2: ProviderSpec,
    promotion: PromotionConfig,
) -> Settings {
    let models = vec![ModelConfig {
        id: "m".into(),
        hosts: vec![],
        deployments: vec![
            DeploymentConfig {
                id: "v1".into(),
                provider: v1,
                scale_command: None,
            },
            DeploymentConfig {
                id: "v2".into(),
                provider: v2,
                scale_command: None,
            },
        ],
        environments: vec![EnvironmentConfig {
            name: "production".into(),
            hosts: vec![],
            traffic: Traffic::Current {
                deployment: "v1".into(),
                replicas: 3,
            },
            promotion,
            autoscaling: None,
        }],
    }];
    let mut s = Settings::with_models(models);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.workers = 2;
    s
}

pub(crate) async fn wait_for(
    proxy: &RunningProxy,
    what: &str,
    within: Duration,
    f: impl Fn(&switchyard::rollout::controller::EnvironmentView) -> bool,
) {
    // The controller makes a pass after every provider change, command and timer; a view
    // read after a pass has everything before it. So: check, then wait for the next pass.
    let mut passes = proxy.controller().changed();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        passes.borrow_and_update();
        let v = proxy.controller().environment("m", "production").unwrap();
        if f(&v) {
            return;
        }
        if tokio::time::timeout_at(deadline, passes.changed())
            .await
            .is_err()
        {
            let v = proxy.controller().environment("m", "production").unwrap();
            panic!("timed out waiting for {what}: {v:#?}");
        }
    }
}

#[derive(Default)]
pub(crate) struct Load {
    pub(crate) ok: AtomicUsize,
    streams_completed: AtomicUsize,
    pub(crate) failures: Mutex<Vec<String>>,
    /// Requests that started in the current epoch and succeeded, by deployment.
    served: Mutex<std::collections::BTreeMap<String, usize>>,
    /// Bumped by the test to count only requests that start from then on in `served`.
    epoch: AtomicUsize,
    /// Notified after every successful request.
    progress: tokio::sync::Notify,
}

impl Load {
    /// Waits until `f` holds, re-checking after each successful request.
    pub(crate) async fn until(&self, within: Duration, f: impl Fn(&Load) -> bool) {
        let wait = async {
            loop {
                let next = self.progress.notified();
                if f(self) {
                    return;
                }
                next.await;
            }
        };
        if tokio::time::timeout(within, wait).await.is_err() {
            panic!(
                "the load made no such progress: {} ok, failures {:?}",
                self.ok.load(Ordering::Relaxed),
                self.failures.lock().unwrap()
            );
        }
    }

    /// Successful requests that started in the current epoch.
    fn served_total(&self) -> usize {
        self.served.lock().unwrap().values().sum()
    }
}

/// Clients that send requests until `stop`: half of them stream 40-token completions (about a
/// second each, so streams span scale-downs), half ask for whole answers.
pub(crate) fn start_load(
    addr: std::net::SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    load: Arc<Load>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (stop, load) = (stop.clone(), load.clone());
            let streaming = i % 2 == 0;
            tokio::spawn(async move {
                let mut c = h1(addr).await;
                while !stop.load(Ordering::Relaxed) {
                    let epoch = load.epoch.load(Ordering::SeqCst);
                    let body = if streaming {
                        r#"{"stream": true, "max_tokens": 40}"#
                    } else {
                        r#"{"max_tokens": 4}"#
                    };
                    let req = http::Request::post("/v1/chat/completions")
                        .header("host", "m")
                        .header("content-type", "application/json")
                        .body(full(body))
                        .unwrap();
                    let resp = match c.send_request(req).await {
                        Ok(r) => r,
                        Err(e) => {
                            // hyper's Display leaves out the cause ("connection was not
                            // ready", ...), which is what tells one failure from another.
                            load.failures
                                .lock()
                                .unwrap()
                                .push(format!("send: {e} ({e:?})"));
                            c = h1(addr).await;
                            continue;
                        }
                    };
                    let status = resp.status();
                    let dep = resp
                        .headers()
                        .get("x-switchyard-deployment")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    match resp.into_body().collect().await {
                        Ok(b) if status == 200 => {
                            let text = String::from_utf8_lossy(&b.to_bytes()).into_owned();
                            if streaming && !text.ends_with("data: [DONE]\n\n") {
                                load.failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("stream from {dep} ended without [DONE]"));
                            } else {
                                if streaming {
                                    load.streams_completed.fetch_add(1, Ordering::Relaxed);
                                }
                                load.ok.fetch_add(1, Ordering::Relaxed);
                                if epoch == load.epoch.load(Ordering::SeqCst) {
                                    *load.served.lock().unwrap().entry(dep).or_default() += 1;
                                }
                                load.progress.notify_waiters();
                            }
                        }
                        Ok(b) => load.failures.lock().unwrap().push(format!(
                            "{status} from {dep:?}: {}",
                            String::from_utf8_lossy(&b.to_bytes())
                        )),
                        Err(e) => {
                            load.failures
                                .lock()
                                .unwrap()
                                .push(format!("body from {dep}: {e} ({e:?})"));
                            c = h1(addr).await;
                        }
                    }
                }
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_promotion_under_load_loses_no_request_and_cancel_ramps_back() {
    let fast = [
        "--latency-ms",
        "5",
        "--tokens-per-second",
        "40",
        "--startup-delay-ms",
        "200",
    ];
    let proxy = switchyard::server::start(rolling_settings(process(&fast))).unwrap();
    wait_for(&proxy, "v1 ready", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 3
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let clients = start_load(proxy.listen_addr, 8, stop.clone(), load.clone());
    // Every client has requests in flight before the promotion starts.
    load.until(Duration::from_secs(10), |l| {
        l.ok.load(Ordering::Relaxed) >= 8
    })
    .await;

    // Forward: v1 → v2, three steps of one replica and 34% (capped at 100).
    proxy.controller().promote("m", "production", "v2").unwrap();
    assert!(
        proxy.controller().promote("m", "production", "v2").is_err(),
        "a second promotion must be refused"
    );
    wait_for(&proxy, "SUCCEEDED", Duration::from_secs(60), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Succeeded)
    })
    .await;
    let v = proxy.controller().environment("m", "production").unwrap();
    assert_eq!(v.current_deployment.as_deref(), Some("v2"));
    let events = proxy.controller().events("m", "production").unwrap();
    let percents: Vec<u32> = events
        .iter()
        .map(|e| e.percent_traffic_to_new_version)
        .collect();
    assert!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "traffic went backwards: {percents:?}"
    );
    for want in [34, 68, 100] {
        assert!(percents.contains(&want), "no step at {want}%: {percents:?}");
    }
    // v1 is scaled to zero (the default cleanup) once its streams drained.
    wait_for(&proxy, "v1 scaled to zero", Duration::from_secs(20), |v| {
        let d = &v.deployments["v1"];
        d.ready_replicas == 0 && d.draining_replicas == 0 && d.starting_replicas == 0
    })
    .await;

    // Back: v2 → v1, cancelled halfway.
    proxy.controller().promote("m", "production", "v1").unwrap();
    wait_for(
        &proxy,
        "a third of traffic on v1",
        Duration::from_secs(30),
        |v| {
            v.promotion
                .as_ref()
                .is_some_and(|p| p.percent_traffic_to_new_version >= 34)
        },
    )
    .await;
    let status = proxy.controller().cancel("m", "production").unwrap();
    assert_eq!(status, Status::RampingDown);
    wait_for(&proxy, "CANCELED", Duration::from_secs(30), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Canceled)
    })
    .await;
    let v = proxy.controller().environment("m", "production").unwrap();
    assert_eq!(v.current_deployment.as_deref(), Some("v2"));
    assert_eq!(
        v.promotion.as_ref().unwrap().percent_traffic_to_new_version,
        0
    );
    let back: Vec<u32> = proxy
        .controller()
        .events("m", "production")
        .unwrap()
        .iter()
        .skip_while(|e| e.status != Status::RampingDown)
        .map(|e| e.percent_traffic_to_new_version)
        .collect();
    assert!(
        back.windows(2).all(|w| w[0] >= w[1]),
        "cancel did not ramp monotonically: {back:?}"
    );

    // After the cancel every request lands on v2: count only requests that start from now
    // on (streams that started before it may still end on v1), until each client finished
    // a few (four streams of about a second each among them).
    load.epoch.fetch_add(1, Ordering::SeqCst);
    load.served.lock().unwrap().clear();
    let streams_before = load.streams_completed.load(Ordering::Relaxed);
    load.until(Duration::from_secs(30), |l| {
        l.served_total() >= 16 && l.streams_completed.load(Ordering::Relaxed) >= streams_before + 8
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let served = load.served.lock().unwrap().clone();
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "after the cancel: {served:?}"
    );
    assert!(load.streams_completed.load(Ordering::Relaxed) > 20);
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_crash_looping_candidate_fails_and_traffic_stays_on_the_previous() {
    let crash = ProviderSpec::Process {
        command: vec![
            "sh".into(),
            "-c".into(),
            "echo model weights missing >&2; exit 3 # {port}".into(),
        ],
        health_path: "/healthz".into(),
    };
    let proxy = switchyard::server::start(rolling_settings(crash)).unwrap();
    wait_for(&proxy, "v1 ready", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 3
    })
    .await;
    proxy.controller().promote("m", "production", "v2").unwrap();
    wait_for(&proxy, "FAILED", Duration::from_secs(30), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Failed)
    })
    .await;
    let v = proxy.controller().environment("m", "production").unwrap();
    let msg = v.promotion.unwrap().error_message.unwrap();
    assert!(
        msg.contains("exit status: 3") && msg.contains("model weights missing"),
        "{msg}"
    );
    assert_eq!(v.current_deployment.as_deref(), Some("v1"));
    for _ in 0..10 {
        let got = send(
            proxy.listen_addr,
            http::Request::post("/predict")
                .header("host", "m")
                .body(full("{}"))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.deployment(), Some("v1"));
    }
    proxy.shutdown().await;
}

/// v1 on one process replica, autoscaled 1..=3 at one request per replica, 10 s window, 2 s
/// scale-down delay; started and with its replica ready.
async fn autoscaled_v1(v2: ProviderSpec) -> RunningProxy {
    let mut s = rolling_settings(v2);
    let env = &mut s.models[0].environments[0];
    env.traffic = Traffic::Current {
        deployment: "v1".into(),
        replicas: 1,
    };
    env.autoscaling = Some(switchyard::rollout::autoscale::AutoscalingSettings {
        min_replica: 1,
        max_replica: 3,
        autoscaling_window: 10,
        scale_down_delay: 2,
        concurrency_target: 1,
        target_utilization_percentage: 100,
    });
    let proxy = switchyard::server::start(s).unwrap();
    wait_for(&proxy, "one replica", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 1
    })
    .await;
    proxy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autoscaling_adds_replicas_under_load_and_removes_them_after_the_delay() {
    let proxy = autoscaled_v1(process(&["--tokens-per-second", "40"])).await;

    // Six clients, each always holding a one-second stream open: 6 in flight against a
    // target of 1 per replica, capped at max_replica 3.
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let clients: Vec<_> = start_load(proxy.listen_addr, 12, stop.clone(), load.clone())
        .into_iter()
        .collect();
    wait_for(&proxy, "three replicas", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 3
    })
    .await;
    // Still under load for another second (an autoscaling period): never above max_replica.
    let above = tokio::time::timeout(
        Duration::from_secs(1),
        wait_for(&proxy, "more than three", Duration::from_secs(2), |v| {
            v.deployments["v1"].desired_replicas != 3
        }),
    )
    .await;
    assert!(above.is_err(), "never above max_replica");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let failures = load.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{failures:?}");
    // Idle: back to min_replica once the window's average fell and the delay passed.
    wait_for(
        &proxy,
        "back to one replica",
        Duration::from_secs(30),
        |v| {
            let d = &v.deployments["v1"];
            d.desired_replicas == 1 && d.ready_replicas == 1 && d.draining_replicas == 0
        },
    )
    .await;
    proxy.shutdown().await;
}

/// Clients that stall their request bodies hold no load a replica works on: autoscaling adds
/// nothing for them (before, 40 such connections scaled a deployment from 2 to 4 in 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_do_not_make_autoscaling_add_replicas() {
    use tokio::io::AsyncWriteExt;
    let proxy = autoscaled_v1(process(&[])).await;
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut c = tokio::net::TcpStream::connect(proxy.listen_addr)
            .await
            .unwrap();
        c.write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await
        .unwrap();
        stalled.push(c);
    }
    // Four autoscaling periods with 40 requests in flight, every one of them uploading.
    let scaled = tokio::time::timeout(
        Duration::from_secs(4),
        wait_for(&proxy, "a scale-up", Duration::from_secs(5), |v| {
            v.deployments["v1"].desired_replicas != 1
        }),
    )
    .await;
    assert!(scaled.is_err(), "stalled uploads scaled the deployment");
    drop(stalled);
    proxy.shutdown().await;
}

fn static_models(
    v1: Vec<std::net::SocketAddr>,
    v2: Vec<std::net::SocketAddr>,
    surge: u32,
) -> Settings {
    let models = vec![ModelConfig {
        id: "m".into(),
        hosts: vec![],
        deployments: vec![
            DeploymentConfig {
                id: "v1".into(),
                provider: ProviderSpec::Static {
                    endpoints: v1.clone(),
                },
                scale_command: None,
            },
            DeploymentConfig {
                id: "v2".into(),
                provider: ProviderSpec::Static { endpoints: v2 },
                scale_command: None,
            },
        ],
        environments: vec![EnvironmentConfig {
            name: "production".into(),
            hosts: vec![],
            traffic: Traffic::Current {
                deployment: "v1".into(),
                replicas: v1.len() as u32,
            },
            promotion: PromotionConfig {
                rolling: true,
                rolling_config: RollingConfig {
                    max_surge_percent: surge,
                    ..RollingConfig::default()
                },
                ..PromotionConfig::default()
            },
            autoscaling: None,
        }],
    }];
    let mut s = Settings::with_models(models);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s
}

#[tokio::test]
async fn static_endpoints_are_admitted_and_retired_by_the_rollout() {
    let (a, b) = (named("v1").await, named("v1").await);
    let (c, d) = (named("v2").await, named("v2").await);
    let proxy = switchyard::server::start(static_models(
        vec![a.addr, b.addr],
        vec![c.addr, d.addr],
        50,
    ))
    .unwrap();
    // Before the promotion, unpinned traffic goes to v1 only.
    assert_eq!(get(proxy.listen_addr, "/").await.text(), "v1");
    proxy.controller().promote("m", "production", "v2").unwrap();
    wait_for(&proxy, "SUCCEEDED", Duration::from_secs(10), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Succeeded)
    })
    .await;
    let v = proxy.controller().environment("m", "production").unwrap();
    assert_eq!(v.deployments["v2"].ready_replicas, 2);
    assert_eq!(
        v.deployments["v1"].ready_replicas, 0,
        "retired after SCALE_TO_ZERO"
    );
    for _ in 0..10 {
        assert_eq!(get(proxy.listen_addr, "/").await.text(), "v2");
    }
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_promotion_needing_more_endpoints_than_listed_is_refused() {
    let (a, b) = (named("v1").await, named("v1").await);
    let c = named("v2").await;
    let proxy =
        switchyard::server::start(static_models(vec![a.addr, b.addr], vec![c.addr], 50)).unwrap();
    let err = proxy
        .controller()
        .promote("m", "production", "v2")
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("has 1 endpoints (listed and registered), but this promotion needs 2"),
        "{err}"
    );
    assert!(proxy
        .controller()
        .environment("m", "production")
        .unwrap()
        .promotion
        .is_none());
    assert_eq!(get(proxy.listen_addr, "/").await.text(), "v1");
    proxy.shutdown().await;
}

#[tokio::test]
async fn a_replica_that_crashes_after_becoming_ready_is_restarted() {
    let mut s = rolling_settings(process(&[]));
    s.models[0].environments[0].traffic = Traffic::Current {
        deployment: "v1".into(),
        replicas: 2,
    };
    let proxy = switchyard::server::start(s).unwrap();
    wait_for(&proxy, "two replicas", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 2
    })
    .await;
    // Kill one replica process from outside, as a crash would.
    let snapshot = proxy.router().load_full();
    let victim = snapshot.models[0].environments[0].pools[0].replicas[0].addr;
    let pid = replica_pid(victim.port()).expect("no process serves the replica's port");
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(&proxy, "the crash noticed", Duration::from_secs(5), |v| {
        v.deployments["v1"].ready_replicas < 2
    })
    .await;
    wait_for(
        &proxy,
        "a replacement ready",
        Duration::from_secs(20),
        |v| v.deployments["v1"].ready_replicas == 2,
    )
    .await;
    // Requests keep working.
    for _ in 0..5 {
        let got = send(
            proxy.listen_addr,
            http::Request::post("/predict")
                .header("host", "m")
                .body(full("{}"))
                .unwrap(),
        )
        .await;
        assert_eq!(got.status, 200);
    }
    proxy.shutdown().await;
}

/// The pid of the replica process started with `--port PORT`, from /proc.
fn replica_pid(port: u16) -> Option<String> {
    let want = format!("--port\0{port}\0");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.parse::<u32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline)
            .contains(&want)
            .then_some(name)
    })
}
