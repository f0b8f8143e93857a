//! `switchyard demo`: a complete setup with no configuration. A model `demo` whose production
//! environment runs `v1` on built-in replica processes, with `v2` ready to promote (and `v3`, a
//! bad candidate answering 30% errors, for canary analysis to roll back); rolling
//! deployments and autoscaling on, with settings that make a promotion take about 20 seconds.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{DeploymentConfig, EnvironmentConfig, ModelConfig, Settings, Traffic};
use crate::replicas::ProviderSpec;
use crate::rollout::analysis::AnalysisSettings;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::{CleanupStrategy, PromotionConfig};
use crate::rollout::plan::RollingConfig;

/// The demo's settings. `exe` is the switchyard binary (replicas are its `replica` mode).
pub fn settings(
    exe: &str,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    data_dir: PathBuf,
) -> Settings {
    let replica = |version: &str, extra: &[&str]| ProviderSpec::Process {
        command: [
            exe,
            "replica",
            "--port",
            "{port}",
            "--version",
            version,
            "--startup-delay-ms",
            "400",
            "--latency-ms",
            "30",
            "--tokens-per-second",
            "40",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect(),
        health_path: "/healthz".into(),
    };
    let models = vec![ModelConfig {
        id: "demo".into(),
        hosts: vec![],
        deployments: vec![
            DeploymentConfig {
                id: "v1".into(),
                provider: replica("v1", &[]),
                scale_command: None,
            },
            DeploymentConfig {
                id: "v2".into(),
                provider: replica("v2", &[]),
                scale_command: None,
            },
            // A bad candidate for canary analysis to catch: 30% of its answers are 500s.
            DeploymentConfig {
                id: "v3".into(),
                provider: replica("v3", &["--error-rate", "0.3"]),
                scale_command: None,
            },
        ],
        environments: vec![EnvironmentConfig {
            name: "production".into(),
            hosts: vec![],
            traffic: Traffic::Current {
                deployment: "v1".into(),
                replicas: 2,
            },
            promotion: PromotionConfig {
                rolling: true,
                rolling_config: RollingConfig {
                    max_surge_percent: 34,
                    max_unavailable_percent: 0,
                    stabilization_time_seconds: 4,
                    replica_overhead_percent: 0,
                },
                cleanup: CleanupStrategy::ScaleToZero,
                ready_wait_ms: 15_000,
                ready_deadline_ms: 60_000,
                analysis: AnalysisSettings::default(),
            },
            autoscaling: Some(AutoscalingSettings {
                min_replica: 2,
                max_replica: 4,
                autoscaling_window: 10,
                scale_down_delay: 30,
                concurrency_target: 8,
                target_utilization_percentage: 70,
            }),
        }],
    }];
    let mut s = Settings::with_models(models);
    s.listen = listen;
    s.admin_listen = admin_listen;
    s.data_dir = Some(data_dir);
    s.shutdown_grace = std::time::Duration::from_secs(10);
    s
}

/// What to do next, printed once the demo serves.
pub fn instructions(exe: &str, proxy: SocketAddr, admin: SocketAddr, key: &str) -> String {
    format!(
        r#"
switchyard demo is running: model "demo", environment "production", deployment v1 live, v2 ready to promote.

  proxy      http://{proxy}
  admin/API  http://{admin}    metrics: http://{admin}/metrics
  API key    {key}

Send a request (and a streamed one):
  curl -s http://{proxy}/v1/chat/completions -d '{{"max_tokens": 8}}'
  curl -sN http://{proxy}/v1/chat/completions -d '{{"stream": true}}'

In another terminal, promote v2 and watch it roll out:
  export SWITCHYARD_ADMIN_URL=http://{admin} SWITCHYARD_API_KEY={key}
  {exe} promote v2 --watch
  {exe} status      (also: pause, resume, cancel, events, settings, deployments)

Canary analysis: v3 answers 30% errors. Turn analysis on, send steady traffic, promote v3,
and watch switchyard roll it back on its own (it ends FAILED, naming the error rate):
  {exe} settings --analysis true --analysis-interval-seconds 5 --analysis-min-requests 20
  while :; do curl -s http://{proxy}/v1/chat/completions -d '{{"max_tokens": 4}}' >/dev/null; done &
  {exe} promote v3 --watch
  kill %1

Ctrl-C stops everything (replicas included).
"#
    )
}
