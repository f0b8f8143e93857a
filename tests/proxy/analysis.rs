//! Canary analysis end to end: real replica processes (some answering errors or slowly), the
//! real controller judging from the proxy's own measurements, and continuous client traffic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use switchyard::config::Settings;
use switchyard::rollout::analysis::{AnalysisSettings, OnFailure, Webhook, WebhookWhen};
use switchyard::rollout::machine::{Event, PromotionConfig, Status};
use switchyard::server::RunningProxy;

use crate::rollout::{process, start_load, steps_of_34, two_deployments, wait_for, Load};
use crate::support::*;

/// 40 ms to the first token, 100 tokens/s: whole answers take ~80 ms, streams ~0.4 s.
const V1: &[&str] = &[
    "--latency-ms",
    "40",
    "--tokens-per-second",
    "100",
    "--startup-delay-ms",
    "200",
];

/// Analysis every 2 s with at least 15 requests per deployment; every check off, so each
/// test turns on the ones it is about.
fn analysis() -> AnalysisSettings {
    AnalysisSettings {
        enabled: true,
        interval_seconds: 2,
        min_requests: 15,
        failure_limit: 2,
        max_inconclusive_intervals: 6,
        on_failure: OnFailure::Rollback,
        max_error_rate_percent: None,
        max_error_rate_ratio: None,
        max_p99_latency_ratio: None,
        max_p99_latency_ms: None,
        max_p99_ttft_ratio: None,
        max_p99_itl_ratio: None,
        webhooks: Vec::new(),
    }
}

/// v1 (3 replicas) live, v2 like v1 with `v2_args` replacing or adding flags; surge 34%:
/// steps at 34, 68 and 100%.
fn settings(v2_args: &[&str], analysis: AnalysisSettings) -> Settings {
    let mut v2: Vec<&str> = V1.to_vec();
    for pair in v2_args.chunks(2) {
        match v2.iter().position(|a| *a == pair[0]) {
            Some(i) => v2[i + 1] = pair[1],
            None => v2.extend_from_slice(pair),
        }
    }
    two_deployments(
        process(V1),
        process(&v2),
        PromotionConfig {
            analysis,
            ..steps_of_34()
        },
    )
}

/// Starts the proxy, waits for v1, starts 8 clients (half streaming) and promotes v2.
async fn promote_under_load(
    settings: Settings,
) -> (
    RunningProxy,
    Arc<AtomicBool>,
    Arc<Load>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let proxy = switchyard::server::start(settings).unwrap();
    wait_for(&proxy, "v1 ready", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 3
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let clients = start_load(proxy.listen_addr, 8, stop.clone(), load.clone());
    load.until(Duration::from_secs(10), |l| {
        l.ok.load(Ordering::Relaxed) >= 8
    })
    .await;
    proxy.controller().promote("m", "production", "v2").unwrap();
    (proxy, stop, load, clients)
}

async fn stop_load(stop: Arc<AtomicBool>, clients: Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
    }
}

async fn ended(proxy: &RunningProxy, within: Duration) -> Vec<Event> {
    wait_for(proxy, "the promotion to end", within, |v| {
        v.promotion.as_ref().is_some_and(|p| p.status.is_terminal())
    })
    .await;
    proxy.controller().events("m", "production").unwrap()
}

fn max_percent(events: &[Event]) -> u32 {
    events
        .iter()
        .map(|e| e.percent_traffic_to_new_version)
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_answering_errors_is_rolled_back_before_half_the_traffic() {
    let s = settings(
        &["--error-rate", "0.3"],
        AnalysisSettings {
            max_error_rate_percent: Some(5.0),
            ..analysis()
        },
    );
    let (proxy, stop, load, clients) = promote_under_load(s).await;
    let events = ended(&proxy, Duration::from_secs(60)).await;
    let v = proxy.controller().environment("m", "production").unwrap();
    let p = v.promotion.as_ref().unwrap();
    assert_eq!(p.status, Status::Failed, "{events:#?}");
    assert_eq!(v.current_deployment.as_deref(), Some("v1"));
    assert_eq!(p.percent_traffic_to_new_version, 0);
    assert!(
        max_percent(&events) < 50,
        "traffic reached {}% before the rollback",
        max_percent(&events)
    );
    let msg = p.error_message.as_deref().unwrap();
    assert!(
        msg.starts_with("analysis failed 2 intervals in a row: error rate ")
            && msg.contains("> 5% (candidate "),
        "{msg}"
    );
    // Graceful: it ramped down (RAMPING_DOWN), it did not drop traffic at once.
    assert!(events.iter().any(|e| e.status == Status::RampingDown));
    let a = p.analysis.as_ref().unwrap();
    assert_eq!(a.consecutive_failures, 2);
    let last = a.last.as_ref().unwrap();
    assert!(last.candidate.errors > 0 && last.previous.errors == 0);

    // Traffic is back on v1, and every failed request was one of v2's own 500s: switchyard
    // added no error of its own while moving traffic back and forth.
    let failures_before = load.failures.lock().unwrap().len();
    load.until(Duration::from_secs(10), |l| {
        l.ok.load(Ordering::Relaxed) >= 40
    })
    .await;
    stop_load(stop, clients).await;
    let failures = load.failures.lock().unwrap().clone();
    assert!(failures_before > 0, "v2 answered no error at all?");
    for f in &failures {
        assert!(
            f.starts_with("500 Internal Server Error from \"v2\"")
                && f.contains("simulated failure"),
            "a failure that is not v2's own 500: {f}"
        );
    }
    let (_, metrics) = admin(proxy.admin_addr, "/metrics").await;
    let fails = sample(
        &metrics,
        r#"switchyard_analysis_verdicts_total{environment="production",model="m",result="fail"}"#,
    );
    assert_eq!(fails, Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_four_times_slower_to_the_first_token_is_rolled_back() {
    let s = settings(
        &["--latency-ms", "200"],
        AnalysisSettings {
            max_p99_ttft_ratio: Some(2.0),
            ..analysis()
        },
    );
    let (proxy, stop, load, clients) = promote_under_load(s).await;
    let events = ended(&proxy, Duration::from_secs(60)).await;
    stop_load(stop, clients).await;
    let v = proxy.controller().environment("m", "production").unwrap();
    let p = v.promotion.as_ref().unwrap();
    assert_eq!(p.status, Status::Failed, "{events:#?}");
    assert!(max_percent(&events) < 50);
    let msg = p.error_message.as_deref().unwrap();
    assert!(msg.contains("p99 time to first byte ratio"), "{msg}");
    assert!(
        load.failures.lock().unwrap().is_empty(),
        "a slow candidate fails no request: {:?}",
        load.failures.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_candidate_succeeds_with_a_passing_verdict_before_each_shift() {
    // A gate that approves: asked before every shift, the first one included.
    let gate = named("approved").await;
    let s = settings(
        &[],
        AnalysisSettings {
            max_error_rate_percent: Some(5.0),
            max_p99_latency_ratio: Some(2.0),
            max_p99_ttft_ratio: Some(2.0),
            // A loaded test machine jitters; a single bad interval must not fail it.
            failure_limit: 3,
            webhooks: vec![Webhook {
                name: "qa".into(),
                url: format!("http://{}/approve", gate.addr),
                timeout_seconds: 5,
                when: WebhookWhen::BeforeShift,
            }],
            ..analysis()
        },
    );
    let (proxy, stop, load, clients) = promote_under_load(s).await;
    let events = ended(&proxy, Duration::from_secs(90)).await;
    stop_load(stop, clients).await;
    let v = proxy.controller().environment("m", "production").unwrap();
    assert_eq!(
        v.promotion.as_ref().unwrap().status,
        Status::Succeeded,
        "{events:#?}"
    );
    assert_eq!(v.current_deployment.as_deref(), Some("v2"));
    let mut shifts = 0;
    let mut passed = false;
    for e in &events {
        if e.reason.starts_with("analysis PASS") {
            passed = true;
        } else if e.reason.starts_with("shifted") {
            assert!(
                passed,
                "shift to {}% without a passing verdict after the previous one: {events:#?}",
                e.percent_traffic_to_new_version
            );
            shifts += 1;
            passed = false;
        }
    }
    assert_eq!(shifts, 3, "34, 68 and 100%: {events:#?}");
    assert!(gate.requests.load(Ordering::SeqCst) >= 3);
    assert!(load.failures.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_little_traffic_never_advances_and_pauses_with_the_reason() {
    let proxy = switchyard::server::start(settings(
        &[],
        AnalysisSettings {
            min_requests: 50,
            interval_seconds: 1,
            max_inconclusive_intervals: 3,
            max_error_rate_percent: Some(1.0),
            ..analysis()
        },
    ))
    .unwrap();
    wait_for(&proxy, "v1 ready", Duration::from_secs(20), |v| {
        v.deployments["v1"].ready_replicas == 3
    })
    .await;
    // One request a second.
    let addr = proxy.listen_addr;
    let trickle = tokio::spawn(async move {
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(5), get(addr, "/predict")).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    proxy.controller().promote("m", "production", "v2").unwrap();
    wait_for(&proxy, "PAUSED", Duration::from_secs(40), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Paused)
    })
    .await;
    trickle.abort();
    let events = proxy.controller().events("m", "production").unwrap();
    assert_eq!(
        max_percent(&events),
        34,
        "never advances blind: {events:#?}"
    );
    let last = events.last().unwrap();
    assert!(
        last.reason
            .starts_with("paused by analysis: 3 inconclusive intervals in a row (too few requests"),
        "{}",
        last.reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_pause_holds_the_step_and_waits_for_an_operator() {
    let s = settings(
        &["--error-rate", "0.3"],
        AnalysisSettings {
            max_error_rate_percent: Some(5.0),
            on_failure: OnFailure::Pause,
            ..analysis()
        },
    );
    let (proxy, stop, _load, clients) = promote_under_load(s).await;
    wait_for(&proxy, "PAUSED", Duration::from_secs(60), |v| {
        v.promotion
            .as_ref()
            .is_some_and(|p| p.status == Status::Paused)
    })
    .await;
    let events = proxy.controller().events("m", "production").unwrap();
    let last = events.last().unwrap();
    assert!(
        last.reason
            .starts_with("paused by analysis: analysis failed 2 intervals in a row: error rate"),
        "{}",
        last.reason
    );
    assert_eq!(last.percent_traffic_to_new_version, 34);
    // Paused means no more verdicts: nothing moves until someone acts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        proxy.controller().events("m", "production").unwrap().len(),
        events.len()
    );
    proxy.controller().force_cancel("m", "production").unwrap();
    stop_load(stop, clients).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_failure_force_cancel_returns_all_traffic_at_once_and_fails() {
    let s = settings(
        &["--error-rate", "0.3"],
        AnalysisSettings {
            max_error_rate_percent: Some(5.0),
            on_failure: OnFailure::ForceCancel,
            ..analysis()
        },
    );
    let (proxy, stop, _load, clients) = promote_under_load(s).await;
    let events = ended(&proxy, Duration::from_secs(60)).await;
    stop_load(stop, clients).await;
    let v = proxy.controller().environment("m", "production").unwrap();
    let p = v.promotion.as_ref().unwrap();
    assert_eq!(p.status, Status::Failed, "{events:#?}");
    assert_eq!(v.current_deployment.as_deref(), Some("v1"));
    assert!(
        !events.iter().any(|e| e.status == Status::RampingDown),
        "no ramp-down: all at once"
    );
    assert!(p
        .error_message
        .as_deref()
        .unwrap()
        .starts_with("analysis failed 2 intervals in a row: error rate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_before_shift_webhook_answering_500_blocks_shifts_and_on_failure_is_told() {
    use http_body_util::BodyExt;
    // The gate refuses every shift, the first one included; the notification hook records
    // what it was sent.
    let gate = upstream(|_req| async {
        let mut r = http::Response::new(full("not today"));
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
    .await;
    let told = Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let t = told.clone();
    let notified = upstream(move |req| {
        let t = t.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            t.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap());
            http::Response::new(full("ok"))
        }
    })
    .await;
    let hook = |name: &str, addr: std::net::SocketAddr, when| Webhook {
        name: name.into(),
        url: format!("http://{addr}/hook"),
        timeout_seconds: 5,
        when,
    };
    let s = settings(
        &[],
        AnalysisSettings {
            max_error_rate_percent: Some(5.0),
            webhooks: vec![
                hook("qa-gate", gate.addr, WebhookWhen::BeforeShift),
                hook("pager", notified.addr, WebhookWhen::OnFailure),
            ],
            ..analysis()
        },
    );
    let (proxy, stop, load, clients) = promote_under_load(s).await;
    let events = ended(&proxy, Duration::from_secs(60)).await;
    stop_load(stop, clients).await;
    let v = proxy.controller().environment("m", "production").unwrap();
    let p = v.promotion.as_ref().unwrap();
    assert_eq!(p.status, Status::Failed, "{events:#?}");
    assert_eq!(max_percent(&events), 0, "the gate let a shift through");
    assert_eq!(
        p.error_message.as_deref(),
        Some("analysis failed 2 intervals in a row: webhook \"qa-gate\": HTTP 500")
    );
    assert_eq!(gate.requests.load(Ordering::SeqCst), 2);
    assert!(load.failures.lock().unwrap().is_empty());
    // The notification names the promotion and carries the failing verdict.
    let within = Duration::from_secs(5);
    assert!(eventually(within, || !told.lock().unwrap().is_empty()).await);
    let n = told.lock().unwrap()[0].clone();
    assert_eq!(n["webhook"], "pager");
    assert_eq!(n["when"], "ON_FAILURE");
    assert_eq!(n["candidate_deployment_id"], "v2");
    assert_eq!(n["verdict"]["result"], "FAIL");
}
