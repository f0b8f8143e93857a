//! Baseten's JSON shapes, built from the controller's views.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::ApiState;
use crate::rollout::controller::{ControllerError, DeploymentView, EnvironmentView, ModelSummary};
use crate::rollout::machine::Event;

/// RFC 3339 UTC, seconds precision (civil-from-days, no calendar crate needed for this).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn model(state: &ApiState, m: &ModelSummary) -> Value {
    json!({
        "id": m.id,
        "name": m.id,
        "created_at": rfc3339(state.started),
        "deployments_count": m.deployments.len(),
        "environments": m.environments,
        "production_deployment_id": production_deployment(state, &m.id),
    })
}

fn production_deployment(state: &ApiState, model: &str) -> Value {
    state
        .controller
        .environment(model, "production")
        .ok()
        .and_then(|e| e.current_deployment)
        .map_or(Value::Null, Value::String)
}

/// Baseten's `DeploymentStatusV1`, from what the provider reports.
fn deployment_status(d: &DeploymentView) -> &'static str {
    if !d.active {
        "INACTIVE"
    } else if d.failure.is_some() {
        "UNHEALTHY"
    } else if d.ready_replicas > 0 {
        "ACTIVE"
    } else if d.starting_replicas > 0 {
        "LOADING_MODEL"
    } else if d.desired_replicas == 0 {
        "SCALED_TO_ZERO"
    } else {
        "DEPLOYING"
    }
}

fn autoscaling(v: &EnvironmentView) -> Value {
    match &v.autoscaling {
        Some(a) => json!({
            "min_replica": a.min_replica,
            "max_replica": a.max_replica,
            "autoscaling_window": a.autoscaling_window,
            "scale_down_delay": a.scale_down_delay,
            "concurrency_target": a.concurrency_target,
            "target_utilization_percentage": a.target_utilization_percentage,
            "target_in_flight_tokens": null,
            "max_scale_down_rate": null,
        }),
        None => Value::Null,
    }
}

fn deployment(
    state: &ApiState,
    model: &str,
    id: &str,
    d: &DeploymentView,
    env: Option<&EnvironmentView>,
) -> Value {
    json!({
        "id": id,
        "created_at": rfc3339(state.started),
        "name": id,
        "model_id": model,
        "is_production": env.is_some_and(|e| e.name == "production" && e.current_deployment.as_deref() == Some(id)),
        "is_development": false,
        "status": deployment_status(d),
        "active_replica_count": d.ready_replicas,
        "autoscaling_settings": env.map_or(Value::Null, autoscaling),
        "instance_type_name": null,
        "environment": env.map_or(Value::Null, |e| Value::String(e.name.clone())),
        "request_backpressure_settings": { "policy": null },
        "labels": null,
        "region": null,
        // switchyard's own: the replica provider's view.
        "replicas": {
            "provider": d.provider,
            "desired": d.desired_replicas,
            "ready": d.ready_replicas,
            "starting": d.starting_replicas,
            "draining": d.draining_replicas,
            "failure": d.failure,
        },
    })
}

/// Every deployment of a model, each with the environment it serves (current or candidate).
pub fn deployments(state: &ApiState, model: &str) -> Result<Vec<Value>, ControllerError> {
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

/// Baseten's `EnvironmentV1`.
pub fn environment(state: &ApiState, model: &str, name: &str) -> Result<Value, ControllerError> {
    let v = state.controller.environment(model, name)?;
    let dep = |id: &Option<String>| match id
        .as_deref()
        .and_then(|i| v.deployments.get(i).map(|d| (i, d)))
    {
        Some((i, d)) => deployment(state, model, i, d, Some(&v)),
        None => Value::Null,
    };
    let s = &v.settings;
    let rc = &s.rolling_config;
    Ok(json!({
        "name": v.name,
        "created_at": rfc3339(state.started),
        "model_id": model,
        "current_deployment": dep(&v.current_deployment),
        "candidate_deployment": dep(&v.candidate_deployment),
        // The running promotion; after it ends, the last one with its terminal status.
        "in_progress_promotion": v.promotion.as_ref().map_or(Value::Null, |p| json!({
            "status": p.status.as_str(),
            "percent_traffic_to_new_version": p.percent_traffic_to_new_version,
            "error_message": p.error_message,
            "rolling_deploy": p.rolling_deploy,
            "previous_deployment_id": p.previous_deployment,
            "candidate_deployment_id": p.candidate_deployment,
        })),
        "autoscaling_settings": autoscaling(&v),
        "promotion_settings": {
            "redeploy_on_promotion": false,
            "rolling_deploy": s.rolling,
            "promotion_cleanup_strategy": s.cleanup,
            "rolling_deploy_config": {
                "rolling_deploy_strategy": "REPLICA",
                "max_surge_percent": rc.max_surge_percent,
                "max_unavailable_percent": rc.max_unavailable_percent,
                "stabilization_time_seconds": rc.stabilization_time_seconds,
                "replica_overhead_percent": rc.replica_overhead_percent,
            },
            "ramp_up_while_promoting": false,
            "ramp_up_duration_seconds": null,
        },
        "instance_type": null,
        "request_backpressure_settings": { "policy": null },
        "autoscaling_schedules": null,
    }))
}

pub fn event(e: &Event) -> Value {
    json!({
        "at": rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms)),
        "at_ms": e.at_ms,
        "status": e.status.as_str(),
        "percent_traffic_to_new_version": e.percent_traffic_to_new_version,
        "candidate_replicas": e.candidate_replicas,
        "previous_replicas": e.previous_replicas,
        "reason": e.reason,
        "terminal": e.status.is_terminal(),
    })
}

fn object(body: &[u8]) -> Result<Map<String, Value>, String> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("the body must be a JSON object".into()),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    }
}

/// `PromoteToEnvironmentRequestV1`: `deployment_id` (required) plus Baseten's optional flags.
pub fn promote_request(body: &[u8]) -> Result<String, String> {
    let m = object(body)?;
    for (k, v) in &m {
        match k.as_str() {
            "deployment_id" => {}
            "scale_down_previous_deployment" | "preserve_env_instance_type" => {
                if !v.is_boolean() && !v.is_null() {
                    return Err(format!("{k}: must be true or false, got {v}"));
                }
            }
            other => return Err(format!("{other}: unknown field (known: deployment_id, scale_down_previous_deployment, preserve_env_instance_type)")),
        }
    }
    match m.get("deployment_id") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(v) if !v.is_null() => Err(format!("deployment_id: must be a string, got {v}")),
        _ => Err("deployment_id: required (the id of the deployment to promote)".into()),
    }
}

/// A deployment to register: `{"id": "v3", "provider": "process", "command": [..., "{port}"],
/// "health_path": "/healthz"}` or `{"id": "v3", "provider": "static", "endpoints": ["host:port"]}`.
pub fn register_request(body: &[u8]) -> Result<(String, crate::replicas::ProviderSpec), String> {
    use crate::replicas::ProviderSpec;
    let mut m = object(body)?;
    let id = match m.remove("id") {
        Some(Value::String(s)) => s,
        Some(v) => return Err(format!("id: must be a string, got {v}")),
        None => return Err("id: required (the new deployment's id)".into()),
    };
    let ok_id = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok_id {
        return Err(format!(
            "id: {id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"
        ));
    }
    if let Some(Value::String(kind)) = m.get("provider") {
        if kind == "process" && !m.contains_key("health_path") {
            m.insert("health_path".into(), Value::String("/healthz".into()));
        }
    }
    let spec: ProviderSpec =
        serde_json::from_value(Value::Object(m)).map_err(|e| format!("provider: {e}"))?;
    match &spec {
        ProviderSpec::Process {
            command,
            health_path,
        } => {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err("command: must name a program".into());
            }
            if !command.iter().any(|a| a.contains("{port}")) {
                return Err("command: must pass {port} to the replica somewhere".into());
            }
            if !health_path.starts_with('/') {
                return Err(format!("health_path: {health_path:?} must start with '/'"));
            }
        }
        ProviderSpec::Static { endpoints } if endpoints.is_empty() => {
            return Err("endpoints: list at least one HOST:PORT".into());
        }
        ProviderSpec::Static { .. } => {}
    }
    Ok((id, spec))
}

/// Control actions take no fields (Baseten's clients send `{}` or nothing).
pub fn empty_object(body: &[u8]) -> Result<(), String> {
    let m = object(body)?;
    match m.keys().next() {
        Some(k) => Err(format!("{k}: unknown field (this action takes no fields)")),
        None => Ok(()),
    }
}

/// Applies a PATCH body (`UpdateEnvironmentRequestV1`) to an environment's settings: omitted or
/// null keys keep their value, unknown keys are refused, every rule is checked. The error names
/// the field.
pub fn patch_environment(
    v: &EnvironmentView,
    body: &[u8],
) -> Result<
    (
        crate::rollout::machine::PromotionConfig,
        Option<crate::rollout::autoscale::AutoscalingSettings>,
    ),
    String,
> {
    use crate::rollout::autoscale::AutoscalingSettings;
    use crate::rollout::plan::RollingConfig;
    let m = object(body)?;
    let mut settings = v.settings.clone();
    let mut autoscaling = v.autoscaling;
    let known = |at: &str, obj: &Map<String, Value>, keys: &[&str]| -> Result<(), String> {
        match obj.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(k) => Err(format!(
                "{at}{k}: unknown field (known: {})",
                keys.join(", ")
            )),
            None => Ok(()),
        }
    };
    known(
        "",
        &m,
        &[
            "autoscaling_settings",
            "promotion_settings",
            "request_backpressure_settings",
            "autoscaling_schedule_settings",
        ],
    )?;
    let int = |at: &str, v: &Value| -> Result<Option<i64>, String> {
        match v {
            Value::Null => Ok(None),
            Value::Number(n) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| format!("{at}: {n} is not a whole number")),
            other => Err(format!("{at}: must be a whole number, got {other}")),
        }
    };
    let uint = |at: &str, v: &Value| -> Result<Option<u32>, String> {
        match int(at, v)? {
            None => Ok(None),
            Some(n) => u32::try_from(n)
                .map(Some)
                .map_err(|_| format!("{at}: {n} is out of range")),
        }
    };
    for (k, val) in &m {
        if val.is_null() {
            continue;
        }
        match k.as_str() {
            "request_backpressure_settings" if val.get("policy").is_some_and(|p| !p.is_null()) => {
                return Err(
                    "request_backpressure_settings.policy: not supported by switchyard (only null)"
                        .into(),
                );
            }
            "autoscaling_schedule_settings" => {
                return Err("autoscaling_schedule_settings: not supported by switchyard".into());
            }
            "autoscaling_settings" => {
                let Value::Object(a) = val else {
                    return Err("autoscaling_settings: must be an object".into());
                };
                known(
                    "autoscaling_settings.",
                    a,
                    &[
                        "min_replica",
                        "max_replica",
                        "autoscaling_window",
                        "scale_down_delay",
                        "concurrency_target",
                        "target_utilization_percentage",
                        "target_in_flight_tokens",
                        "max_scale_down_rate",
                    ],
                )?;
                let mut s = autoscaling.unwrap_or_default();
                if autoscaling.is_none() {
                    s.min_replica = 1;
                }
                for (f, x) in a {
                    let at = format!("autoscaling_settings.{f}");
                    let Some(n) = uint(&at, x)? else { continue };
                    match f.as_str() {
                        "min_replica" => s.min_replica = n,
                        "max_replica" => s.max_replica = n,
                        "autoscaling_window" => s.autoscaling_window = n,
                        "scale_down_delay" => s.scale_down_delay = n,
                        "concurrency_target" => s.concurrency_target = n,
                        "target_utilization_percentage" => s.target_utilization_percentage = n,
                        _ => return Err(format!("{at}: not supported by switchyard (only null)")),
                    }
                }
                s.validate()
                    .map_err(|e| format!("autoscaling_settings.{}: {}", e.field, e.message))?;
                if s.min_replica == 0 {
                    return Err("autoscaling_settings.min_replica: 0 (scale to zero) is not supported yet; use 1 or more".into());
                }
                let _: AutoscalingSettings = s;
                autoscaling = Some(s);
            }
            "promotion_settings" => {
                let Value::Object(p) = val else {
                    return Err("promotion_settings: must be an object".into());
                };
                known(
                    "promotion_settings.",
                    p,
                    &[
                        "redeploy_on_promotion",
                        "rolling_deploy",
                        "promotion_cleanup_strategy",
                        "rolling_deploy_config",
                        "ramp_up_while_promoting",
                        "ramp_up_duration_seconds",
                    ],
                )?;
                for (f, x) in p {
                    let at = format!("promotion_settings.{f}");
                    match (f.as_str(), x) {
                        (_, Value::Null) => {}
                        ("rolling_deploy", Value::Bool(b)) => settings.rolling = *b,
                        ("promotion_cleanup_strategy", x) => {
                            settings.cleanup = serde_json::from_value(x.clone()).map_err(|_| {
                                format!("{at}: {x} is not one of SCALE_TO_ZERO, KEEP, DEACTIVATE")
                            })?;
                        }
                        (
                            "redeploy_on_promotion" | "ramp_up_while_promoting",
                            Value::Bool(false),
                        ) => {}
                        (
                            "redeploy_on_promotion" | "ramp_up_while_promoting",
                            Value::Bool(true),
                        ) => return Err(format!("{at}: not supported by switchyard (only false)")),
                        ("ramp_up_duration_seconds", x) => {
                            int(&at, x)?;
                        }
                        ("rolling_deploy_config", Value::Object(r)) => {
                            let base = "promotion_settings.rolling_deploy_config.";
                            known(
                                base,
                                r,
                                &[
                                    "rolling_deploy_strategy",
                                    "max_surge_percent",
                                    "max_unavailable_percent",
                                    "stabilization_time_seconds",
                                    "replica_overhead_percent",
                                ],
                            )?;
                            let cur = settings.rolling_config;
                            let get = |k: &str, now: u32| -> Result<i64, String> {
                                match r.get(k) {
                                    Some(x) => {
                                        Ok(int(&format!("{base}{k}"), x)?.unwrap_or(i64::from(now)))
                                    }
                                    None => Ok(i64::from(now)),
                                }
                            };
                            if let Some(st) =
                                r.get("rolling_deploy_strategy").filter(|x| !x.is_null())
                            {
                                if st != "REPLICA" {
                                    return Err(format!("{base}rolling_deploy_strategy: {st} is not supported (only \"REPLICA\")"));
                                }
                            }
                            let surge_given =
                                r.get("max_surge_percent").is_some_and(|x| !x.is_null());
                            let unavailable =
                                get("max_unavailable_percent", cur.max_unavailable_percent)?;
                            // Switching to unavailable mode alone implies surge 0.
                            let surge = if !surge_given
                                && unavailable > 0
                                && r.contains_key("max_unavailable_percent")
                            {
                                0
                            } else {
                                get("max_surge_percent", cur.max_surge_percent)?
                            };
                            let rc = RollingConfig::from_options(
                                Some(surge),
                                Some(unavailable),
                                Some(get(
                                    "stabilization_time_seconds",
                                    cur.stabilization_time_seconds,
                                )?),
                                Some(get(
                                    "replica_overhead_percent",
                                    cur.replica_overhead_percent,
                                )?),
                            )
                            .map_err(|e| format!("{base}{}", e))?;
                            settings.rolling_config = rc;
                        }
                        (_, other) => return Err(format!("{at}: unexpected value {other}")),
                    }
                }
            }
            _ => {}
        }
    }
    Ok((settings, autoscaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn promote_bodies_are_checked_field_by_field() {
        assert_eq!(
            promote_request(br#"{"deployment_id": "v2"}"#).unwrap(),
            "v2"
        );
        assert_eq!(
            promote_request(br#"{"deployment_id": "v2", "preserve_env_instance_type": true, "scale_down_previous_deployment": null}"#).unwrap(),
            "v2"
        );
        assert!(promote_request(b"{}")
            .unwrap_err()
            .starts_with("deployment_id: required"));
        assert!(promote_request(br#"{"deployment_id": 3}"#)
            .unwrap_err()
            .starts_with("deployment_id"));
        assert!(promote_request(br#"{"deployment_id": "v2", "extra": 1}"#)
            .unwrap_err()
            .starts_with("extra: unknown field"));
        assert!(promote_request(b"[1]").is_err());
        assert!(promote_request(b"{")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(empty_object(b"").is_ok());
        assert!(empty_object(b"{}").is_ok());
        assert!(empty_object(br#"{"x": 1}"#).is_err());
    }
}
