//! The API's answers, built from the controller's views.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::types::{AnalysisVerdict, PromotionAnalysis};
use super::types::{
    AutoscalingSettings, Deployment, DeploymentStatus, Environment, Event, InProgressPromotion,
    InstanceType, Model, PlanStep, PromotionSettings, Replicas, RequestBackpressureSettings,
    RollingDeployConfig, RollingDeployStrategy, RolloutPlan,
};
use super::ApiState;
use crate::rollout::analysis::AnalysisState;
use crate::rollout::controller::{ControllerError, DeploymentView, EnvironmentView, ModelSummary};

fn rfc3339_ms(ms: u64) -> String {
    rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn promotion_analysis(a: &AnalysisState, next_ms: Option<u64>) -> PromotionAnalysis {
    PromotionAnalysis {
        verdicts: a.verdicts,
        consecutive_failures: a.consecutive_failures,
        consecutive_inconclusive: a.consecutive_inconclusive,
        passed_since_shift: a.passed_since_shift,
        next_verdict_at: next_ms.map(rfc3339_ms),
        last_verdict: a.last.as_ref().map(|v| AnalysisVerdict {
            result: v.result,
            from: rfc3339_ms(v.from_ms),
            to: rfc3339_ms(v.to_ms),
            candidate: v.candidate,
            previous: v.previous,
            checks: v.checks.clone(),
            summary: v.summary.clone(),
        }),
    }
}

/// RFC 3339 UTC, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One replica's resources: as declared for the deployment, else what switchyard knows.
pub fn instance_type(state: &ApiState, model: &str, id: &str, provider: &str) -> InstanceType {
    state
        .instance_types
        .get(&(model.to_owned(), id.to_owned()))
        .cloned()
        .unwrap_or_else(|| default_instance_type(provider))
}

/// What switchyard knows of a replica's resources when the deployment declares none: a process
/// replica runs on this host with no limit of its own; a static endpoint's are unknown.
pub fn default_instance_type(provider: &str) -> InstanceType {
    if provider == "process" {
        // The host does not change while we run: read it once.
        static HOST: std::sync::OnceLock<InstanceType> = std::sync::OnceLock::new();
        HOST.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
            InstanceType {
                id: "host".into(),
                name: "host (no per-replica limit)".into(),
                memory_limit_mib: host_memory_mib(),
                millicpu_limit: cpus * 1000,
                gpu_count: 0,
                gpu_type: None,
                gpu_memory_limit_mib: None,
            }
        })
        .clone()
    } else {
        InstanceType {
            id: "unspecified".into(),
            name: "unspecified".into(),
            memory_limit_mib: 0,
            millicpu_limit: 0,
            gpu_count: 0,
            gpu_type: None,
            gpu_memory_limit_mib: None,
        }
    }
}

/// `MemTotal` of /proc/meminfo in MiB, 0 where there is none.
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib / 1024)
}

pub fn model(state: &ApiState, m: &ModelSummary) -> Model {
    let production = state
        .controller
        .environment(&m.id, "production")
        .ok()
        .and_then(|e| {
            let id = e.current_deployment.clone()?;
            let d = e.deployments.get(&id)?;
            let name = instance_type(state, &m.id, &id, d.provider).name;
            Some((id, name))
        });
    Model {
        id: m.id.clone(),
        name: m.id.clone(),
        created_at: rfc3339(state.started),
        deployments_count: m.deployments.len() as u32,
        production_deployment_id: production.as_ref().map(|(id, _)| id.clone()),
        development_deployment_id: None,
        instance_type_name: production.map_or_else(|| "unspecified".into(), |(_, name)| name),
        team_name: "default".into(),
        environments: m.environments.clone(),
    }
}

/// Baseten's `DeploymentStatusV1`, from what the provider reports.
fn deployment_status(d: &DeploymentView) -> DeploymentStatus {
    if !d.active {
        DeploymentStatus::Inactive
    } else if d.failure.is_some() {
        DeploymentStatus::Unhealthy
    } else if d.ready_replicas > 0 {
        DeploymentStatus::Active
    } else if d.starting_replicas > 0 {
        DeploymentStatus::LoadingModel
    } else if d.desired_replicas == 0 {
        DeploymentStatus::ScaledToZero
    } else {
        DeploymentStatus::Deploying
    }
}

/// The environment's autoscaling settings; a fixed replica count is `min` = `max`.
pub fn autoscaling(v: &EnvironmentView) -> AutoscalingSettings {
    match &v.autoscaling {
        Some(a) => AutoscalingSettings {
            min_replica: a.min_replica,
            max_replica: a.max_replica,
            autoscaling_window: Some(a.autoscaling_window),
            scale_down_delay: Some(a.scale_down_delay),
            concurrency_target: a.concurrency_target,
            target_utilization_percentage: Some(a.target_utilization_percentage),
            target_in_flight_tokens: None,
            max_scale_down_rate: None,
            enabled: true,
        },
        None => {
            let fixed = fixed_replicas(v);
            let d = crate::rollout::autoscale::AutoscalingSettings::default();
            AutoscalingSettings {
                min_replica: fixed,
                max_replica: fixed,
                autoscaling_window: Some(d.autoscaling_window),
                scale_down_delay: Some(d.scale_down_delay),
                concurrency_target: d.concurrency_target,
                target_utilization_percentage: Some(d.target_utilization_percentage),
                target_in_flight_tokens: None,
                max_scale_down_rate: None,
                enabled: false,
            }
        }
    }
}

/// The replica count of an environment without autoscaling.
pub fn fixed_replicas(v: &EnvironmentView) -> u32 {
    v.replicas.max(1)
}

fn deployment(
    state: &ApiState,
    model: &str,
    id: &str,
    d: &DeploymentView,
    env: Option<&EnvironmentView>,
) -> Deployment {
    Deployment {
        id: id.to_owned(),
        created_at: rfc3339(state.started),
        name: id.to_owned(),
        model_id: model.to_owned(),
        is_production: env
            .is_some_and(|e| e.name == "production" && e.current_deployment.as_deref() == Some(id)),
        is_development: false,
        status: deployment_status(d),
        active_replica_count: d.ready_replicas,
        autoscaling_settings: env.map(autoscaling),
        instance_type_name: Some(instance_type(state, model, id, d.provider).name),
        environment: env.map(|e| e.name.clone()),
        request_backpressure_settings: RequestBackpressureSettings::default(),
        labels: None,
        region: None,
        replicas: Replicas {
            provider: d.provider.to_owned(),
            desired: d.desired_replicas,
            ready: d.ready_replicas,
            starting: d.starting_replicas,
            draining: d.draining_replicas,
            failure: d.failure.clone(),
        },
    }
}

/// Every deployment of a model, each with the environment it serves (current or candidate).
pub fn deployments(state: &ApiState, model: &str) -> Result<Vec<Deployment>, ControllerError> {
    let c = &state.controller;
    let summary = c
        .models()
        .into_iter()
        .find(|m| m.id == model)
        .ok_or_else(|| ControllerError::UnknownModel(model.to_owned()))?;
    let envs: Vec<EnvironmentView> = summary
        .environments
        .iter()
        .filter_map(|e| c.environment(model, e).ok())
        .collect();
    let Some(first) = envs.first() else {
        return Ok(Vec::new());
    };
    Ok(summary
        .deployments
        .iter()
        .filter_map(|id| {
            let view = first.deployments.get(id)?;
            let env = envs.iter().find(|e| {
                e.current_deployment.as_deref() == Some(id.as_str())
                    || e.candidate_deployment.as_deref() == Some(id.as_str())
            });
            Some(deployment(state, model, id, view, env))
        })
        .collect())
}

/// One deployment, or `UnknownDeployment`.
pub fn one_deployment(
    state: &ApiState,
    model: &str,
    id: &str,
) -> Result<Deployment, ControllerError> {
    deployments(state, model)?
        .into_iter()
        .find(|d| d.id == id)
        .ok_or_else(|| ControllerError::UnknownDeployment {
            model: model.to_owned(),
            deployment: id.to_owned(),
        })
}

/// Baseten's `EnvironmentV1`.
pub fn environment(
    state: &ApiState,
    model: &str,
    name: &str,
) -> Result<Environment, ControllerError> {
    let v = state.controller.environment(model, name)?;
    Ok(environment_of(state, &v))
}

pub fn environment_of(state: &ApiState, v: &EnvironmentView) -> Environment {
    let dep = |id: &Option<String>| {
        let id = id.as_deref()?;
        let d = v.deployments.get(id)?;
        Some(deployment(state, &v.model, id, d, Some(v)))
    };
    let s = &v.settings;
    let rc = &s.rolling_config;
    let instance_type = v
        .current_deployment
        .as_deref()
        .and_then(|id| Some((id, v.deployments.get(id)?)))
        .map_or_else(
            || default_instance_type("static"),
            |(id, d)| instance_type(state, &v.model, id, d.provider),
        );
    Environment {
        name: v.name.clone(),
        created_at: rfc3339(state.started),
        model_id: v.model.clone(),
        current_deployment: dep(&v.current_deployment),
        candidate_deployment: dep(&v.candidate_deployment),
        in_progress_promotion: v.promotion.as_ref().map(|p| InProgressPromotion {
            status: p.status.into(),
            percent_traffic_to_new_version: p.percent_traffic_to_new_version,
            error_message: p.error_message.clone(),
            rolling_deploy: p.rolling_deploy,
            previous_deployment_id: p.previous_deployment.clone(),
            candidate_deployment_id: p.candidate_deployment.clone(),
            analysis: p
                .analysis
                .as_ref()
                .map(|a| promotion_analysis(a, p.next_verdict_ms)),
        }),
        autoscaling_settings: autoscaling(v),
        promotion_settings: PromotionSettings {
            redeploy_on_promotion: false,
            rolling_deploy: s.rolling,
            promotion_cleanup_strategy: s.cleanup.into(),
            rolling_deploy_config: RollingDeployConfig {
                rolling_deploy_strategy: RollingDeployStrategy::Replica,
                max_surge_percent: rc.max_surge_percent,
                max_unavailable_percent: rc.max_unavailable_percent,
                stabilization_time_seconds: rc.stabilization_time_seconds,
                replica_overhead_percent: rc.replica_overhead_percent,
            },
            ramp_up_while_promoting: false,
            ramp_up_duration_seconds: None,
            analysis: s.analysis.clone(),
        },
        instance_type,
        request_backpressure_settings: RequestBackpressureSettings::default(),
        autoscaling_schedules: None,
    }
}

/// The plan of the promotion in progress (its starting replica count and settings), else of
/// the next one (the current deployment's replicas and the environment's settings).
pub fn plan(v: &EnvironmentView) -> Result<RolloutPlan, String> {
    use crate::rollout::plan::{Plan, RollingConfig};
    let running = v
        .promotion
        .as_ref()
        .filter(|p| !p.status.is_terminal() && p.rolling_deploy);
    let (n, rc): (u32, RollingConfig) = match running {
        Some(p) => (p.original_previous, p.rolling_config),
        None => {
            let desired = v
                .current_deployment
                .as_deref()
                .and_then(|id| v.deployments.get(id))
                .map_or(0, |d| d.desired_replicas);
            let n = if desired > 0 {
                desired
            } else {
                fixed_replicas(v)
            };
            (n, v.settings.rolling_config)
        }
    };
    let plan = Plan::new(n, &rc).map_err(|e| e.message())?;
    // The last step whose state is where the promotion is now (a `stabilize` step repeats the
    // state of the step before it: the wait after that step).
    let current_step = running.and_then(|p| {
        plan.steps
            .iter()
            .rposition(|s| {
                s.percent_traffic_to_new_version == p.percent_traffic_to_new_version
                    && s.candidate_replicas == p.candidate_target
                    && s.previous_replicas == p.previous_target
            })
            .map(|i| i as u32)
    });
    Ok(RolloutPlan {
        in_progress: running.is_some(),
        rolling_deploy: v.settings.rolling,
        previous_replicas: n,
        rolling_deploy_config: RollingDeployConfig {
            rolling_deploy_strategy: RollingDeployStrategy::Replica,
            max_surge_percent: rc.max_surge_percent,
            max_unavailable_percent: rc.max_unavailable_percent,
            stabilization_time_seconds: rc.stabilization_time_seconds,
            replica_overhead_percent: rc.replica_overhead_percent,
        },
        fleet: plan.fleet,
        replicas_per_step: plan.replicas_per_step,
        traffic_per_step: plan.traffic_per_step,
        mode: plan.mode.as_str().to_owned(),
        steps: plan
            .steps
            .iter()
            .map(|s| PlanStep {
                action: s.action.as_str().to_owned(),
                candidate_replicas: s.candidate_replicas,
                previous_replicas: s.previous_replicas,
                percent_traffic_to_new_version: s.percent_traffic_to_new_version,
            })
            .collect(),
        current_step,
    })
}

pub fn event(e: &crate::rollout::machine::Event) -> Event {
    Event {
        at: rfc3339(UNIX_EPOCH + Duration::from_millis(e.at_ms)),
        at_ms: e.at_ms,
        status: e.status.into(),
        percent_traffic_to_new_version: e.percent_traffic_to_new_version,
        candidate_replicas: e.candidate_replicas,
        previous_replicas: e.previous_replicas,
        reason: e.reason.clone(),
        terminal: e.status.is_terminal(),
    }
}

/// `GET /v1/cluster`.
pub fn cluster(s: &ApiState) -> super::types::Cluster {
    use super::types::{ApplyLag, Cluster, ClusterInstance};
    let Some(c) = s.controller.shared() else {
        let id = format!("{}", s.admin_addr);
        return Cluster {
            store: "embedded".into(),
            instance: id.clone(),
            leader: Some(id.clone()),
            instances: vec![ClusterInstance {
                id,
                admin_url: format!("http://{}", s.admin_addr),
                proxy_addr: s.proxy_addr.to_string(),
                leader: true,
                last_heartbeat_ms_ago: 0,
                applied_revision: 0,
            }],
            apply_lag: None,
        };
    };
    let v = c.view();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let leader = v.leader.as_ref().map(|l| l.id.clone());
    Cluster {
        store: "etcd".into(),
        instance: c.id.clone(),
        leader: leader.clone(),
        instances: v
            .members
            .values()
            .map(|m| ClusterInstance {
                id: m.id.clone(),
                admin_url: m.admin_url.clone(),
                proxy_addr: m.proxy_addr.clone(),
                leader: leader.as_deref() == Some(m.id.as_str()),
                last_heartbeat_ms_ago: now.saturating_sub(m.heartbeat_ms),
                applied_revision: if m.id == c.id {
                    v.applied_revision
                } else {
                    m.applied_revision
                },
            })
            .collect(),
        apply_lag: crate::cluster::lag_summary(&v.apply_lag_ms).map(|(n, p50, p99, max)| {
            ApplyLag {
                count: n as u64,
                p50_ms: p50,
                p99_ms: p99,
                max_ms: max,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }
}
