//! PATCH of an environment: a typed partial update applied onto its current settings. Omitted or
//! null fields keep their value; every supplied field is applied or refused with an error that
//! names it. The ranges themselves are decided once, by the settings types the config file uses
//! too ([`RollingConfig::from_options`], [`AutoscalingSettings::validate`]).

use super::types::{
    UpdateAnalysis, UpdateAutoscalingSettings, UpdateEnvironmentRequest, UpdatePromotionSettings,
    UpdateRollingDeployConfig,
};
use crate::rollout::analysis::AnalysisSettings;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::controller::EnvironmentView;
use crate::rollout::machine::PromotionConfig;
use crate::rollout::plan::RollingConfig;

/// The settings after the update, or the message for a 400 (it starts with the field's path).
pub fn apply(
    v: &EnvironmentView,
    req: &UpdateEnvironmentRequest,
) -> Result<(PromotionConfig, Option<AutoscalingSettings>), String> {
    if req
        .autoscaling_schedule_settings
        .as_ref()
        .is_some_and(|v| !is_empty_setting(v))
    {
        return Err(
            "autoscaling_schedule_settings: not supported by switchyard (only null or empty)"
                .into(),
        );
    }
    if req
        .traffic_routing_settings
        .as_ref()
        .is_some_and(|v| !is_empty_setting(v))
    {
        return Err("traffic_routing_settings: not supported by switchyard (only null or empty); traffic follows promotions".into());
    }
    if let Some(b) = &req.request_backpressure_settings {
        if b.policy.is_some() {
            return Err(
                "request_backpressure_settings.policy: not supported by switchyard (only null)"
                    .into(),
            );
        }
    }
    let mut settings = v.settings.clone();
    if let Some(p) = &req.promotion_settings {
        promotion(&mut settings, p)?;
    }
    let autoscaling = match &req.autoscaling_settings {
        Some(a) => Some(autoscaling(v, a)?),
        None => v.autoscaling,
    };
    Ok((settings, autoscaling))
}

fn promotion(settings: &mut PromotionConfig, p: &UpdatePromotionSettings) -> Result<(), String> {
    let at = "promotion_settings";
    if p.redeploy_on_promotion == Some(true) {
        return Err(format!(
            "{at}.redeploy_on_promotion: not supported by switchyard (only false)"
        ));
    }
    if p.ramp_up_while_promoting == Some(true) {
        return Err(format!(
            "{at}.ramp_up_while_promoting: not supported by switchyard (only false)"
        ));
    }
    if let Some(n) = p.ramp_up_duration_seconds {
        return Err(format!(
            "{at}.ramp_up_duration_seconds: {n}: not supported by switchyard (only null; ramping up while promoting is not supported)"
        ));
    }
    if let Some(b) = p.rolling_deploy {
        settings.rolling = b;
    }
    if let Some(c) = p.promotion_cleanup_strategy {
        settings.cleanup = c.into();
    }
    if let Some(r) = &p.rolling_deploy_config {
        settings.rolling_config = rolling(&settings.rolling_config, r)
            .map_err(|e| format!("{at}.rolling_deploy_config.{e}"))?;
    }
    if let Some(a) = &p.analysis {
        settings.analysis =
            analysis(&settings.analysis, a).map_err(|e| format!("{at}.analysis.{e}"))?;
    }
    Ok(())
}

/// The analysis settings with the update applied, checked as a whole.
fn analysis(cur: &AnalysisSettings, a: &UpdateAnalysis) -> Result<AnalysisSettings, String> {
    let mut s = cur.clone();
    if let Some(v) = a.enabled {
        s.enabled = v;
    }
    for (field, given, slot) in [
        (
            "interval_seconds",
            a.interval_seconds,
            &mut s.interval_seconds,
        ),
        ("min_requests", a.min_requests, &mut s.min_requests),
        ("failure_limit", a.failure_limit, &mut s.failure_limit),
        (
            "max_inconclusive_intervals",
            a.max_inconclusive_intervals,
            &mut s.max_inconclusive_intervals,
        ),
    ] {
        if let Some(n) = given {
            *slot = u32::try_from(n).map_err(|_| format!("{field}: {n} is out of range"))?;
        }
    }
    if let Some(v) = a.on_failure {
        s.on_failure = v;
    }
    for (given, slot) in [
        (a.max_error_rate_percent, &mut s.max_error_rate_percent),
        (a.max_error_rate_ratio, &mut s.max_error_rate_ratio),
        (a.max_p99_latency_ratio, &mut s.max_p99_latency_ratio),
        (a.max_p99_latency_ms, &mut s.max_p99_latency_ms),
        (a.max_p99_ttft_ratio, &mut s.max_p99_ttft_ratio),
        (a.max_p99_itl_ratio, &mut s.max_p99_itl_ratio),
    ] {
        if let Some(v) = given {
            *slot = v;
        }
    }
    if let Some(w) = &a.webhooks {
        s.webhooks = w.clone();
    }
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

/// Exactly one of the two percents is non-zero, so setting one of them non-zero alone sets the
/// other to 0, in either direction; setting both is checked as given.
fn rolling(cur: &RollingConfig, r: &UpdateRollingDeployConfig) -> Result<RollingConfig, String> {
    let now = |v: u32| Some(i64::from(v));
    let (surge, unavailable) = match (r.max_surge_percent, r.max_unavailable_percent) {
        (Some(s), None) if s > 0 => (Some(s), Some(0)),
        (None, Some(u)) if u > 0 => (Some(0), Some(u)),
        (s, u) => (
            s.or(now(cur.max_surge_percent)),
            u.or(now(cur.max_unavailable_percent)),
        ),
    };
    RollingConfig::from_options(
        surge,
        unavailable,
        r.stabilization_time_seconds
            .or(now(cur.stabilization_time_seconds)),
        r.replica_overhead_percent
            .or(now(cur.replica_overhead_percent)),
    )
    .map_err(|e| e.to_string())
}

/// Starts from the environment's autoscaling settings, or from its fixed replica count as
/// `min` = `max` when it has none.
fn autoscaling(
    v: &EnvironmentView,
    a: &UpdateAutoscalingSettings,
) -> Result<AutoscalingSettings, String> {
    let at = "autoscaling_settings";
    if a.target_in_flight_tokens.is_some() {
        return Err(format!(
            "{at}.target_in_flight_tokens: not supported by switchyard (only null)"
        ));
    }
    if a.max_scale_down_rate.is_some() {
        return Err(format!(
            "{at}.max_scale_down_rate: not supported by switchyard (only null)"
        ));
    }
    let mut s = v.autoscaling.unwrap_or_else(|| {
        let fixed = super::views::fixed_replicas(v);
        AutoscalingSettings {
            min_replica: fixed,
            max_replica: fixed,
            ..AutoscalingSettings::default()
        }
    });
    for (field, given, slot) in [
        ("min_replica", a.min_replica, &mut s.min_replica),
        ("max_replica", a.max_replica, &mut s.max_replica),
        (
            "autoscaling_window",
            a.autoscaling_window,
            &mut s.autoscaling_window,
        ),
        (
            "scale_down_delay",
            a.scale_down_delay,
            &mut s.scale_down_delay,
        ),
        (
            "concurrency_target",
            a.concurrency_target,
            &mut s.concurrency_target,
        ),
        (
            "target_utilization_percentage",
            a.target_utilization_percentage,
            &mut s.target_utilization_percentage,
        ),
    ] {
        if let Some(n) = given {
            *slot = u32::try_from(n).map_err(|_| format!("{at}.{field}: {n} is out of range"))?;
        }
    }
    s.validate()
        .map_err(|e| format!("{at}.{}: {}", e.field, e.message))?;
    if s.min_replica == 0 {
        return Err(format!(
            "{at}.min_replica: 0 (scale to zero) is not supported yet; use 1 or more"
        ));
    }
    Ok(s)
}

/// `{}`, or an object of nulls and empty lists (`{"rules": []}`): asks for nothing.
fn is_empty_setting(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => m.values().all(|x| match x {
            serde_json::Value::Null => true,
            serde_json::Value::Array(a) => a.is_empty(),
            _ => false,
        }),
        _ => false,
    }
}
