//! The management API over real HTTP: auth, shapes, validation, conflicts, the event stream.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use switchyard::config::{DeploymentConfig, EnvironmentConfig, ModelConfig, Settings, Traffic};
use switchyard::replicas::ProviderSpec;
use switchyard::rollout::machine::PromotionConfig;
use switchyard::rollout::plan::RollingConfig;

use crate::support::*;

const KEY: &str = "api-test-key-0123456789";

async fn api_proxy() -> (switchyard::server::RunningProxy, Vec<Upstream>) {
    api_proxy_with(true).await
}

async fn api_proxy_with(
    process_deployments: bool,
) -> (switchyard::server::RunningProxy, Vec<Upstream>) {
    let ups = vec![
        named("v1").await,
        named("v1").await,
        named("v2").await,
        named("v2").await,
    ];
    let models = vec![ModelConfig {
        id: "m".into(),
        hosts: vec![],
        deployments: vec![
            DeploymentConfig {
                id: "v1".into(),
                provider: ProviderSpec::Static {
                    endpoints: vec![ups[0].addr, ups[1].addr],
                },
                scale_command: None,
            },
            DeploymentConfig {
                id: "v2".into(),
                provider: ProviderSpec::Static {
                    endpoints: vec![ups[2].addr, ups[3].addr],
                },
                scale_command: None,
            },
        ],
        environments: vec![EnvironmentConfig {
            name: "production".into(),
            hosts: vec![],
            traffic: Traffic::Current {
                deployment: "v1".into(),
                replicas: 1,
            },
            promotion: PromotionConfig {
                rolling: true,
                rolling_config: RollingConfig {
                    max_surge_percent: 50,
                    stabilization_time_seconds: 2,
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
    s.api_key = Some(KEY.into());
    s.api_process_deployments = process_deployments;
    s.instance_types.insert(
        ("m".into(), "v1".into()),
        switchyard::api::types::InstanceType {
            id: "L4:4x16".into(),
            name: "L4 4 vCPU 16 GiB".into(),
            memory_limit_mib: 16_384,
            millicpu_limit: 4_000,
            gpu_count: 1,
            gpu_type: Some("L4".into()),
            gpu_memory_limit_mib: Some(24_576),
        },
    );
    (switchyard::server::start(s).unwrap(), ups)
}

async fn call(
    admin: std::net::SocketAddr,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(k) = key {
        req = req.header("authorization", k);
    }
    let got = send(
        admin,
        req.body(body.map_or_else(empty, |b| full(b.to_owned())))
            .unwrap(),
    )
    .await;
    (
        got.status,
        serde_json::from_slice(&got.body).unwrap_or(Value::Null),
    )
}

fn auth() -> Option<&'static str> {
    Some("Api-Key api-test-key-0123456789")
}

#[tokio::test]
async fn every_v1_call_needs_the_key_but_health_and_metrics_do_not() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let (s, v) = call(a, Method::GET, "/v1/models", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(v["error"].as_str().unwrap().contains("Api-Key"));
    assert_eq!(
        call(a, Method::GET, "/v1/models", Some("Api-Key nope"), None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(
            a,
            Method::GET,
            "/v1/models",
            Some("Bearer api-test-key-0123456789"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/environments/production/promote",
            None,
            Some(r#"{"deployment_id":"v2"}"#)
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        proxy
            .controller()
            .environment("m", "production")
            .unwrap()
            .promotion
            .is_none(),
        "an unauthorized promote changed state"
    );
    assert_eq!(admin(a, "/metrics").await.0, 200);
    assert_eq!(admin(a, "/readyz").await.0, 200);
    proxy.shutdown().await;
}

#[tokio::test]
async fn shapes_follow_baseten() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let (s, v) = call(
        a,
        Method::GET,
        "/v1/models/m/environments/production",
        auth(),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for key in [
        "name",
        "created_at",
        "model_id",
        "current_deployment",
        "candidate_deployment",
        "in_progress_promotion",
        "autoscaling_settings",
        "promotion_settings",
        "instance_type",
        "request_backpressure_settings",
        "autoscaling_schedules",
    ] {
        assert!(v.get(key).is_some(), "EnvironmentV1 lacks {key}: {v}");
    }
    assert!(
        v["candidate_deployment"].is_null() && v["in_progress_promotion"].is_null(),
        "unset nullable fields are null"
    );
    assert_eq!(v["current_deployment"]["id"], "v1");
    assert_eq!(v["current_deployment"]["status"], "ACTIVE");
    assert_eq!(v["current_deployment"]["active_replica_count"], 2);
    assert_eq!(
        v["promotion_settings"]["rolling_deploy_config"]["rolling_deploy_strategy"],
        "REPLICA"
    );
    assert_eq!(
        v["promotion_settings"]["rolling_deploy_config"]["max_surge_percent"],
        50
    );
    assert_eq!(
        v["promotion_settings"]["promotion_cleanup_strategy"],
        "SCALE_TO_ZERO"
    );
    // What Baseten's SDK requires: an instance type object, autoscaling settings as an object
    // (a fixed count is min = max), and the model's team and instance type names.
    assert_eq!(v["instance_type"]["id"], "L4:4x16", "declared for v1: {v}");
    assert_eq!(v["instance_type"]["gpu_count"], 1);
    assert_eq!(
        v["current_deployment"]["instance_type_name"],
        "L4 4 vCPU 16 GiB"
    );
    assert_eq!(
        (
            &v["autoscaling_settings"]["min_replica"],
            &v["autoscaling_settings"]["max_replica"],
            &v["autoscaling_settings"]["enabled"]
        ),
        (&json!(1), &json!(1), &json!(false))
    );
    let (_, model) = call(a, Method::GET, "/v1/models/m", auth(), None).await;
    assert_eq!(model["instance_type_name"], "L4 4 vCPU 16 GiB");
    assert_eq!(model["team_name"], "default");
    assert!(model
        .get("development_deployment_id")
        .is_some_and(Value::is_null));
    let (_, d) = call(a, Method::GET, "/v1/models/m/deployments", auth(), None).await;
    assert_eq!(d["deployments"].as_array().unwrap().len(), 2);
    assert_eq!(
        d["deployments"][1]["instance_type_name"], "unspecified",
        "a static deployment with none declared: {d}"
    );
    let (_, d) = call(a, Method::GET, "/v1/models/m/deployments/v2", auth(), None).await;
    assert_eq!(d["environment"], Value::Null);
    let (_, envs) = call(a, Method::GET, "/v1/models/m/environments", auth(), None).await;
    assert_eq!(envs["environments"][0]["name"], "production");
    proxy.shutdown().await;
}

#[tokio::test]
async fn errors_are_404_409_400_and_a_rejected_request_changes_nothing() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let (s, v) = call(a, Method::GET, "/v1/models/nope", auth(), None).await;
    assert_eq!(
        (s, v["error"].as_str().unwrap()),
        (StatusCode::NOT_FOUND, "model \"nope\" not found")
    );
    assert_eq!(
        call(
            a,
            Method::GET,
            "/v1/models/m/environments/dev",
            auth(),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(a, Method::GET, "/v1/models/m/deployments/v9", auth(), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/promote",
        auth(),
        Some(r#"{"deployment_id":"v9"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    for bad in [
        r#"{}"#,
        r#"{"deployment_id": 2}"#,
        r#"{"deployment_id":"v2","surprise":true}"#,
        "not json",
    ] {
        let (s, v) = call(
            a,
            Method::POST,
            "/v1/models/m/environments/production/promote",
            auth(),
            Some(bad),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(v["error"].is_string());
    }
    assert!(proxy
        .controller()
        .environment("m", "production")
        .unwrap()
        .promotion
        .is_none());
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/pause_promotion",
        auth(),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/environments/production/promote",
            auth(),
            Some(r#"{"deployment_id":"v1"}"#)
        )
        .await
        .0,
        StatusCode::CONFLICT
    );

    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/promote",
        auth(),
        Some(r#"{"deployment_id":"v2"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["id"], "v2",
        "promote answers with the promoted DeploymentV1"
    );
    let (s, _) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/promote",
        auth(),
        Some(r#"{"deployment_id":"v2"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "a second promotion while one runs");
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/pause_promotion",
        auth(),
        Some("{}"),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/environments/production/resume_promotion",
            auth(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/cancel_promotion",
        auth(),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        matches!(v["status"].as_str(), Some("RAMPING_DOWN" | "CANCELED")),
        "{v}"
    );
    assert!(v["message"].is_string());
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/environments/production/frobnicate",
            auth(),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    proxy.shutdown().await;
}

#[tokio::test]
async fn events_are_a_log_and_a_live_stream() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let mut c = h1(a).await;
    let req = Request::get("/v1/models/m/environments/production/events")
        .header("host", "admin")
        .header("accept", "text/event-stream")
        .header("authorization", "Api-Key api-test-key-0123456789")
        .body(empty())
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/promote",
        auth(),
        Some(r#"{"deployment_id":"v2"}"#),
    )
    .await;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("\"SUCCEEDED\"") {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .expect("no SUCCEEDED event on the stream");
        let data: Bytes = frame.unwrap().unwrap().into_data().unwrap();
        text.push_str(&String::from_utf8_lossy(&data));
    }
    assert!(text.contains("data: {"), "{text}");
    assert!(text.contains("shifted 50% of traffic"), "{text}");
    let (s, log) = call(
        a,
        Method::GET,
        "/v1/models/m/environments/production/events",
        auth(),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let events = log["events"].as_array().unwrap();
    assert_eq!(events.first().unwrap()["reason"], "promotion started");
    assert_eq!(events.last().unwrap()["status"], "SUCCEEDED");
    proxy.shutdown().await;
}

#[tokio::test]
async fn patch_is_a_validated_partial_update() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let path = "/v1/models/m/environments/production";
    let before = call(a, Method::GET, path, auth(), None).await.1;

    // Rejected requests name the field and change nothing.
    for (body, field) in [
        (
            r#"{"promotion_settings": {"rolling_deploy_config": {"max_unavailable_percent": 10, "max_surge_percent": 10}}}"#,
            "max_unavailable_percent",
        ),
        (
            r#"{"promotion_settings": {"rolling_deploy_config": {"stabilization_time_seconds": 4000}}}"#,
            "stabilization_time_seconds",
        ),
        (
            r#"{"promotion_settings": {"rolling_deploy_config": {"max_surge_percent": 0}}}"#,
            "max_surge_percent",
        ),
        (
            r#"{"promotion_settings": {"promotion_cleanup_strategy": "SHRED"}}"#,
            "promotion_cleanup_strategy",
        ),
        (
            r#"{"promotion_settings": {"rolling": true}}"#,
            "promotion_settings.rolling",
        ),
        (
            r#"{"autoscaling_settings": {"min_replica": 5, "max_replica": 2}}"#,
            "min_replica",
        ),
        (
            r#"{"autoscaling_settings": {"autoscaling_window": 5}}"#,
            "autoscaling_window",
        ),
        (
            r#"{"autoscaling_settings": {"max_replicas": 3}}"#,
            "max_replicas",
        ),
        (r#"{"surprise": {}}"#, "surprise"),
    ] {
        let (s, v) = call(a, Method::PATCH, path, auth(), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    assert_eq!(
        call(a, Method::GET, path, auth(), None).await.1,
        before,
        "a rejected PATCH changed state"
    );

    // A partial update keeps everything it does not name.
    let (s, v) = call(
        a,
        Method::PATCH,
        path,
        auth(),
        Some(r#"{"promotion_settings": {"promotion_cleanup_strategy": "KEEP", "rolling_deploy_config": {"stabilization_time_seconds": 7, "max_surge_percent": null}}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "ACCEPTED");
    let ps = &v["environment"]["promotion_settings"];
    assert_eq!(ps["promotion_cleanup_strategy"], "KEEP");
    assert_eq!(ps["rolling_deploy"], true);
    assert_eq!(ps["rolling_deploy_config"]["stabilization_time_seconds"], 7);
    assert_eq!(ps["rolling_deploy_config"]["max_surge_percent"], 50);
    // Switching mode with only the unavailable percent.
    let (s, v) = call(
        a,
        Method::PATCH,
        path,
        auth(),
        Some(
            r#"{"promotion_settings": {"rolling_deploy_config": {"max_unavailable_percent": 25}}}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let rc = &v["environment"]["promotion_settings"]["rolling_deploy_config"];
    assert_eq!(
        (
            rc["max_surge_percent"].clone(),
            rc["max_unavailable_percent"].clone()
        ),
        (json!(0), json!(25))
    );
    let (s, v) = call(
        a,
        Method::PATCH,
        path,
        auth(),
        Some(r#"{"autoscaling_settings": {"min_replica": 2, "max_replica": 2}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["environment"]["autoscaling_settings"]["max_replica"], 2);
    let (_, v) = call(a, Method::PATCH, path, auth(), Some("{}")).await;
    assert_eq!(v["status"], "UNCHANGED");
    proxy.shutdown().await;
}

#[tokio::test]
async fn analysis_settings_are_patched_by_name_and_bad_ones_refused() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let path = "/v1/models/m/environments/production";
    let (_, v) = call(a, Method::GET, path, auth(), None).await;
    let an = &v["promotion_settings"]["analysis"];
    assert_eq!(an["enabled"], false, "off by default: {an}");
    assert_eq!(an["interval_seconds"], 10);
    assert_eq!(an["max_p99_ttft_ratio"], 1.5);
    let before = v;

    for (body, field) in [
        (
            r#"{"interval_seconds": 0}"#,
            "promotion_settings.analysis.interval_seconds",
        ),
        (
            r#"{"max_p99_latency_ratio": 0}"#,
            "promotion_settings.analysis.max_p99_latency_ratio",
        ),
        (
            r#"{"max_error_rate_ratio": -1.5}"#,
            "promotion_settings.analysis.max_error_rate_ratio",
        ),
        (
            r#"{"on_failure": "EXPLODE"}"#,
            "promotion_settings.analysis.on_failure",
        ),
        (
            r#"{"min_requests": 0}"#,
            "promotion_settings.analysis.min_requests",
        ),
        (
            r#"{"webhooks": [{"name": "qa", "url": "ftp://qa.example/", "when": "BEFORE_SHIFT"}]}"#,
            "promotion_settings.analysis.webhooks[0].url",
        ),
        (r#"{"thresholds": {}}"#, "thresholds"),
    ] {
        let body = format!(r#"{{"promotion_settings": {{"analysis": {body}}}}}"#);
        let (s, v) = call(a, Method::PATCH, path, auth(), Some(&body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    assert_eq!(
        call(a, Method::GET, path, auth(), None).await.1,
        before,
        "a rejected PATCH changed state"
    );

    // Named fields change, null turns a check off, the rest stays.
    let (s, v) = call(
        a,
        Method::PATCH,
        path,
        auth(),
        Some(r#"{"promotion_settings": {"analysis": {"enabled": true, "interval_seconds": 5, "on_failure": "PAUSE", "max_p99_itl_ratio": null, "max_error_rate_ratio": 2}}}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let an = &v["environment"]["promotion_settings"]["analysis"];
    assert_eq!(an["enabled"], true);
    assert_eq!(an["interval_seconds"], 5);
    assert_eq!(an["on_failure"], "PAUSE");
    assert_eq!(an["max_p99_itl_ratio"], Value::Null);
    assert_eq!(an["max_error_rate_ratio"], 2.0);
    assert_eq!(an["max_p99_ttft_ratio"], 1.5);
    assert_eq!(an["min_requests"], 50);
    proxy.shutdown().await;
}

#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let (s, doc) = call(a, Method::GET, "/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK, "served without a key");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 13);
    let mut operations = 0;
    for (template, ops) in paths {
        let path = template
            .replace("{model_id}", "m")
            .replace("{env_name}", "production")
            .replace("{deployment_id}", "v1");
        for (method, _) in ops.as_object().unwrap() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method != Method::GET).then_some("{}");
            let (s, v) = call(a, method.clone(), &path, auth(), body).await;
            let unrouted = v["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("no API route"))
                || s == StatusCode::METHOD_NOT_ALLOWED;
            assert!(
                !unrouted,
                "documented {method} {template} is not served: {s} {v}"
            );
            operations += 1;
        }
    }
    // 17, the dashboard's figures and plan, the cluster view, and listing, registering and
    // withdrawing endpoints.
    assert_eq!(operations, 23);
    // And nothing undocumented is served: a made-up path is refused.
    let (s, v) = call(a, Method::GET, "/v1/models/m/secrets", auth(), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert!(v["error"].as_str().unwrap().contains("/openapi.json"));
    proxy.shutdown().await;
}

#[tokio::test]
async fn deployments_can_be_registered_activated_and_deactivated_without_a_restart() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let (v3a, v3b) = (named("v3").await, named("v3").await);
    let body = format!(
        r#"{{"id": "v3", "provider": "static", "endpoints": ["{}", "{}"]}}"#,
        v3a.addr, v3b.addr
    );
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/deployments",
        auth(),
        Some(&body),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], "v3");
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/deployments",
            auth(),
            Some(&body)
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    for bad in [
        r#"{"provider": "static", "endpoints": []}"#,
        r#"{"id": "x", "provider": "process", "command": ["srv"]}"#,
        r#"{"id": "x", "provider": "ftp"}"#,
    ] {
        assert_eq!(
            call(
                a,
                Method::POST,
                "/v1/models/m/deployments",
                auth(),
                Some(bad)
            )
            .await
            .0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    assert_eq!(
        get(proxy.listen_addr, "/deployment/v3/x").await.text(),
        "v3",
        "pinned routes reach it at once"
    );
    // Promote to it, as to any deployment.
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/environments/production/promote",
        auth(),
        Some(r#"{"deployment_id": "v3"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        eventually(Duration::from_secs(20), || {
            proxy
                .controller()
                .environment("m", "production")
                .unwrap()
                .current_deployment
                .as_deref()
                == Some("v3")
        })
        .await
    );
    assert_eq!(get(proxy.listen_addr, "/").await.text(), "v3");
    // The current deployment cannot be deactivated; an idle one can, and comes back.
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/deployments/v3/deactivate",
            auth(),
            None
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    let (s, v) = call(
        a,
        Method::POST,
        "/v1/models/m/deployments/v2/deactivate",
        auth(),
        None,
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({"success": true})));
    assert_eq!(get(proxy.listen_addr, "/deployment/v2/x").await.status, 404);
    let (_, d) = call(a, Method::GET, "/v1/models/m/deployments/v2", auth(), None).await;
    assert_eq!(d["status"], "INACTIVE");
    assert_eq!(
        call(
            a,
            Method::POST,
            "/v1/models/m/deployments/v2/activate",
            auth(),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
    let (_, d) = call(a, Method::GET, "/v1/models/m/deployments/v2", auth(), None).await;
    assert_ne!(d["status"], "INACTIVE");
    proxy.shutdown().await;
}

/// Every field is applied or refused by name, never dropped; what hardening found refused.
#[tokio::test]
async fn input_is_applied_or_refused_by_name_never_dropped() {
    let (proxy, _ups) = api_proxy().await;
    let a = proxy.admin_addr;
    let env = "/v1/models/m/environments/production";
    let before = call(a, Method::GET, env, auth(), None).await.1;
    for (body, names) in [
        (
            r#"{"promotion_settings": {"ramp_up_duration_seconds": 30}}"#,
            "promotion_settings.ramp_up_duration_seconds",
        ),
        (
            r#"{"promotion_settings": {"ramp_up_duration_seconds": 1e12}}"#,
            "promotion_settings.ramp_up_duration_seconds",
        ),
        (
            r#"{"request_backpressure_settings": 7}"#,
            "request_backpressure_settings",
        ),
        (
            r#"{"request_backpressure_settings": {"x": 1}}"#,
            "request_backpressure_settings.x",
        ),
        (
            r#"{"promotion_settings": {"rolling_deploy_config": [null, 10]}}"#,
            "promotion_settings.rolling_deploy_config",
        ),
        (
            r#"{"traffic_routing_settings": {"rules": [{"x": 1}]}}"#,
            "traffic_routing_settings",
        ),
    ] {
        let (s, v) = call(a, Method::PATCH, env, auth(), Some(body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap().starts_with(names),
            "{body}: {v}"
        );
    }
    assert_eq!(call(a, Method::GET, env, auth(), None).await.1, before);

    // What Baseten's clients send to ask for nothing is accepted as nothing.
    let (s, v) = call(
        a,
        Method::PATCH,
        env,
        auth(),
        Some(r#"{"traffic_routing_settings": {"rules": []}, "request_backpressure_settings": {"policy": null}}"#),
    )
    .await;
    assert_eq!(
        (s, &v["status"]),
        (StatusCode::OK, &json!("UNCHANGED")),
        "{v}"
    );

    // The two modes switch the same way in both directions.
    for (body, surge, unavailable) in [
        (r#"{"max_unavailable_percent": 25}"#, 0, 25),
        (r#"{"max_surge_percent": 10}"#, 10, 0),
    ] {
        let body = format!(r#"{{"promotion_settings": {{"rolling_deploy_config": {body}}}}}"#);
        let (s, v) = call(a, Method::PATCH, env, auth(), Some(&body)).await;
        assert_eq!(s, StatusCode::OK, "{body}: {v}");
        let rc = &v["environment"]["promotion_settings"]["rolling_deploy_config"];
        assert_eq!(
            (&rc["max_surge_percent"], &rc["max_unavailable_percent"]),
            (&json!(surge), &json!(unavailable)),
            "{body}"
        );
    }

    // An empty deployment id is named as such.
    let (s, v) = call(
        a,
        Method::POST,
        &format!("{env}/promote"),
        auth(),
        Some(r#"{"deployment_id": ""}"#),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().contains("must not be empty"),
        "{v}"
    );

    // Path segments are percent-decoded once.
    let (s, v) = call(a, Method::GET, "/v1/models/%6D", auth(), None).await;
    assert_eq!((s, &v["id"]), (StatusCode::OK, &json!("m")), "{v}");

    // Ids that are path tricks, and endpoints nothing can connect to, are refused.
    for body in [
        r#"{"id": "..", "provider": "static", "endpoints": ["127.0.0.1:9"]}"#,
        r#"{"id": "v4", "provider": "static", "endpoints": ["127.0.0.1:0"]}"#,
        r#"{"id": "v4", "provider": "static", "endpoints": ["0.0.0.0:80"]}"#,
    ] {
        let (s, v) = call(
            a,
            Method::POST,
            "/v1/models/m/deployments",
            auth(),
            Some(body),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
    }

    // A wrong method gets 405 with the methods that work.
    let got = send(
        a,
        Request::builder()
            .method(Method::DELETE)
            .uri(env)
            .header("host", "admin")
            .header("authorization", auth().unwrap())
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(got.status, StatusCode::METHOD_NOT_ALLOWED);
    let allow = got.headers["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("PATCH"), "{allow}");

    // Accept is read as media ranges: case-insensitive, and q=0 means "not this".
    for (accept, streams) in [
        ("TEXT/EVENT-STREAM", true),
        ("text/event-stream;q=0", false),
        ("application/json, text/event-stream;q=0.1", true),
    ] {
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            let mut c = h1(a).await;
            let resp = c
                .send_request(
                    Request::get(format!("{env}/events"))
                        .header("host", "admin")
                        .header("authorization", auth().unwrap())
                        .header("accept", accept)
                        .body(empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            resp.headers()["content-type"].to_str().unwrap().to_owned()
        })
        .await
        .unwrap();
        assert_eq!(got == "text/event-stream", streams, "{accept}: {got}");
    }
    proxy.shutdown().await;
}

/// A leaked key must not run code: registering a process deployment is opt-in.
#[tokio::test]
async fn process_deployments_through_the_api_are_off_unless_allowed() {
    let (proxy, _ups) = api_proxy_with(false).await;
    let body = r#"{"id": "v9", "provider": "process", "command": ["sh", "-c", "touch /tmp/pwned", "{port}"]}"#;
    let (s, v) = call(
        proxy.admin_addr,
        Method::POST,
        "/v1/models/m/deployments",
        auth(),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("api_process_deployments"),
        "{v}"
    );
    assert!(proxy.controller().models()[0]
        .deployments
        .iter()
        .all(|d| d != "v9"));
    proxy.shutdown().await;
}
