//! Every request and response body of the management API, shared by the server (`api`) and
//! the CLI client (`client`). The OpenAPI document is generated from these types.
//!
//! Shapes follow Baseten's management API (`ModelV1`, `DeploymentV1`, `EnvironmentV1`, ...), so
//! Baseten's clients parse them: unset nullable fields are sent as `null`, never left out.
//! Fields marked "switchyard's own" are extensions Baseten's clients ignore.

use serde::{Deserialize, Serialize};

pub use crate::rollout::analysis::{
    AnalysisSettings, Check as AnalysisCheck, Counts as AnalysisCounts, OnFailure, VerdictResult,
    Webhook, WebhookWhen,
};
use utoipa::ToSchema;

/// Schema of a Baseten field switchyard does not support: only `null` is accepted.
pub struct NullOnly;

impl utoipa::PartialSchema for NullOnly {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Null)
            .description(Some("not supported by switchyard: only null"))
            .into()
    }
}
impl ToSchema for NullOnly {}

/// Schema of a Baseten switch switchyard does not support: only `false` or `null`.
pub struct FalseOrNull;

impl utoipa::PartialSchema for FalseOrNull {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{SchemaType, Type};
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
            .enum_values(Some([
                serde_json::Value::Bool(false),
                serde_json::Value::Null,
            ]))
            .description(Some("not supported by switchyard: only false or null"))
            .into()
    }
}
impl ToSchema for FalseOrNull {}

/// Schema of a Baseten settings object switchyard does not support: only `null`, `{}` or an
/// object of nulls and empty lists (what clients send to ask for nothing).
pub struct EmptyOrNull;

impl utoipa::PartialSchema for EmptyOrNull {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, SchemaType, Type};
        let empty = ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .max_items(Some(0));
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .additional_properties(Some(AdditionalProperties::RefOr(empty.into())))
            .description(Some(
                "not supported by switchyard: only null, {} or empty lists",
            ))
            .into()
    }
}
impl ToSchema for EmptyOrNull {}

/// `{"error": "..."}`: what went wrong and, where it helps, what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
}

/// Baseten's `ModelV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Model {
    pub id: String,
    pub name: String,
    /// RFC 3339: when this switchyard started serving the model.
    pub created_at: String,
    pub deployments_count: u32,
    /// The current deployment of the `production` environment.
    pub production_deployment_id: Option<String>,
    /// Always null: switchyard has no development deployments.
    pub development_deployment_id: Option<String>,
    /// The instance type of the production deployment.
    pub instance_type_name: String,
    /// switchyard has no teams: always `default`.
    pub team_name: String,
    /// switchyard's own: the model's environment names.
    pub environments: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Models {
    pub models: Vec<Model>,
}

/// Baseten's `InstanceTypeV1`: the resources of one replica, as configured per deployment
/// (`instance_type` in the config file), else what switchyard knows: a process replica may use
/// the whole host, a static endpoint's resources are unknown (`unspecified`, all zero).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InstanceType {
    pub id: String,
    pub name: String,
    pub memory_limit_mib: u64,
    pub millicpu_limit: u64,
    pub gpu_count: u32,
    pub gpu_type: Option<String>,
    pub gpu_memory_limit_mib: Option<u64>,
}

/// Baseten's `DeploymentStatusV1`, as far as switchyard's providers can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    Deploying,
    LoadingModel,
    Active,
    Unhealthy,
    Inactive,
    ScaledToZero,
}

impl DeploymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentStatus::Deploying => "DEPLOYING",
            DeploymentStatus::LoadingModel => "LOADING_MODEL",
            DeploymentStatus::Active => "ACTIVE",
            DeploymentStatus::Unhealthy => "UNHEALTHY",
            DeploymentStatus::Inactive => "INACTIVE",
            DeploymentStatus::ScaledToZero => "SCALED_TO_ZERO",
        }
    }
}

/// Baseten's `AutoscalingSettingsV1`. An environment without autoscaling reports its fixed
/// replica count as `min_replica` = `max_replica`, as Baseten does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AutoscalingSettings {
    pub min_replica: u32,
    pub max_replica: u32,
    pub autoscaling_window: Option<u32>,
    pub scale_down_delay: Option<u32>,
    pub concurrency_target: u32,
    pub target_utilization_percentage: Option<u32>,
    /// Not supported by switchyard: always null.
    pub target_in_flight_tokens: Option<u32>,
    /// Not supported by switchyard: always null.
    pub max_scale_down_rate: Option<u32>,
    /// switchyard's own: false when the environment runs a fixed replica count.
    pub enabled: bool,
}

/// Baseten's `RequestBackpressureSettingsV1`; switchyard has no backpressure policy (null).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, Default)]
pub struct RequestBackpressureSettings {
    pub policy: Option<String>,
}

/// switchyard's own view of a deployment's replicas, from its provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Replicas {
    /// `process` (switchyard runs them) or `static` (listed endpoints).
    pub provider: String,
    pub desired: u32,
    pub ready: u32,
    pub starting: u32,
    pub draining: u32,
    /// Why the provider cannot reach the desired count (e.g. a crash loop).
    pub failure: Option<String>,
}

/// Baseten's `DeploymentV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployment {
    pub id: String,
    pub created_at: String,
    pub name: String,
    pub model_id: String,
    pub is_production: bool,
    pub is_development: bool,
    pub status: DeploymentStatus,
    pub active_replica_count: u32,
    /// The settings of the environment the deployment serves, if any.
    pub autoscaling_settings: Option<AutoscalingSettings>,
    pub instance_type_name: Option<String>,
    /// The environment the deployment serves (current or candidate), if any.
    pub environment: Option<String>,
    pub request_backpressure_settings: RequestBackpressureSettings,
    /// Not supported by switchyard: always null.
    pub labels: Option<serde_json::Map<String, serde_json::Value>>,
    /// Not supported by switchyard: always null.
    pub region: Option<Region>,
    /// switchyard's own.
    pub replicas: Replicas,
}

/// Baseten's `RegionV1` (switchyard reports none).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Region {
    pub slug: String,
    pub display_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deployments {
    pub deployments: Vec<Deployment>,
}

/// Baseten's promotion statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PromotionStatus {
    Releasing,
    RampingUp,
    Paused,
    RampingDown,
    Succeeded,
    Failed,
    Canceled,
}

impl PromotionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionStatus::Releasing => "RELEASING",
            PromotionStatus::RampingUp => "RAMPING_UP",
            PromotionStatus::Paused => "PAUSED",
            PromotionStatus::RampingDown => "RAMPING_DOWN",
            PromotionStatus::Succeeded => "SUCCEEDED",
            PromotionStatus::Failed => "FAILED",
            PromotionStatus::Canceled => "CANCELED",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PromotionStatus::Succeeded | PromotionStatus::Failed | PromotionStatus::Canceled
        )
    }

    /// The CLI's exit code for a promotion that ended: 0 SUCCEEDED, 1 FAILED, 3 CANCELED.
    pub fn exit_code(self) -> Option<u8> {
        match self {
            PromotionStatus::Succeeded => Some(0),
            PromotionStatus::Failed => Some(1),
            PromotionStatus::Canceled => Some(3),
            _ => None,
        }
    }
}

impl std::fmt::Display for PromotionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<crate::rollout::machine::Status> for PromotionStatus {
    fn from(s: crate::rollout::machine::Status) -> Self {
        use crate::rollout::machine::Status;
        match s {
            Status::Releasing => PromotionStatus::Releasing,
            Status::RampingUp => PromotionStatus::RampingUp,
            Status::Paused => PromotionStatus::Paused,
            Status::RampingDown => PromotionStatus::RampingDown,
            Status::Succeeded => PromotionStatus::Succeeded,
            Status::Failed => PromotionStatus::Failed,
            Status::Canceled => PromotionStatus::Canceled,
        }
    }
}

/// Baseten's `InProgressPromotionV1`: the running promotion, or after it ended the last one
/// with its terminal status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct InProgressPromotion {
    pub status: PromotionStatus,
    pub percent_traffic_to_new_version: u32,
    pub error_message: Option<String>,
    pub rolling_deploy: bool,
    /// switchyard's own.
    pub previous_deployment_id: String,
    /// switchyard's own.
    pub candidate_deployment_id: String,
    /// switchyard's own: canary analysis of this promotion; null when it runs without.
    pub analysis: Option<PromotionAnalysis>,
}

/// Canary analysis of a promotion: where it stands and the last verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PromotionAnalysis {
    /// Intervals judged so far.
    pub verdicts: u32,
    pub consecutive_failures: u32,
    pub consecutive_inconclusive: u32,
    /// A passing verdict came after the last traffic shift, so the next shift may go.
    pub passed_since_shift: bool,
    /// When the interval being measured ends (RFC 3339); null while none is measured (before
    /// the first shift, paused, ramping down, or over).
    pub next_verdict_at: Option<String>,
    pub last_verdict: Option<AnalysisVerdict>,
}

/// The judgement of one interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AnalysisVerdict {
    pub result: VerdictResult,
    /// The interval judged (RFC 3339).
    pub from: String,
    pub to: String,
    pub candidate: AnalysisCounts,
    pub previous: AnalysisCounts,
    /// Every metric compared: the candidate's value, the previous deployment's, the limit.
    pub checks: Vec<AnalysisCheck>,
    pub summary: String,
}

/// What happens to the previous deployment after a promotion succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CleanupStrategy {
    ScaleToZero,
    Keep,
    Deactivate,
}

impl From<crate::rollout::machine::CleanupStrategy> for CleanupStrategy {
    fn from(s: crate::rollout::machine::CleanupStrategy) -> Self {
        use crate::rollout::machine::CleanupStrategy as C;
        match s {
            C::ScaleToZero => CleanupStrategy::ScaleToZero,
            C::Keep => CleanupStrategy::Keep,
            C::Deactivate => CleanupStrategy::Deactivate,
        }
    }
}

impl From<CleanupStrategy> for crate::rollout::machine::CleanupStrategy {
    fn from(s: CleanupStrategy) -> Self {
        use crate::rollout::machine::CleanupStrategy as C;
        match s {
            CleanupStrategy::ScaleToZero => C::ScaleToZero,
            CleanupStrategy::Keep => C::Keep,
            CleanupStrategy::Deactivate => C::Deactivate,
        }
    }
}

/// The only rolling strategy: by replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RollingDeployStrategy {
    Replica,
}

/// Baseten's `RollingDeployConfigV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RollingDeployConfig {
    pub rolling_deploy_strategy: RollingDeployStrategy,
    pub max_surge_percent: u32,
    pub max_unavailable_percent: u32,
    pub stabilization_time_seconds: u32,
    pub replica_overhead_percent: u32,
}

/// Baseten's `PromotionSettingsV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PromotionSettings {
    /// Not supported by switchyard: always false.
    pub redeploy_on_promotion: bool,
    pub rolling_deploy: bool,
    pub promotion_cleanup_strategy: CleanupStrategy,
    pub rolling_deploy_config: RollingDeployConfig,
    /// Not supported by switchyard: always false.
    pub ramp_up_while_promoting: bool,
    /// Not supported by switchyard: always null.
    pub ramp_up_duration_seconds: Option<u32>,
    /// switchyard's own: canary analysis on live traffic.
    pub analysis: AnalysisSettings,
}

/// Baseten's `EnvironmentV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environment {
    pub name: String,
    pub created_at: String,
    pub model_id: String,
    pub current_deployment: Option<Deployment>,
    pub candidate_deployment: Option<Deployment>,
    pub in_progress_promotion: Option<InProgressPromotion>,
    pub autoscaling_settings: AutoscalingSettings,
    pub promotion_settings: PromotionSettings,
    /// The instance type of the current deployment.
    pub instance_type: InstanceType,
    pub request_backpressure_settings: RequestBackpressureSettings,
    /// Not supported by switchyard: always null.
    #[schema(value_type = Option<Object>)]
    pub autoscaling_schedules: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Environments {
    pub environments: Vec<Environment>,
}

/// Baseten's `PromoteToEnvironmentRequestV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The deployment to promote.
    #[schema(min_length = 1)]
    pub deployment_id: String,
    /// Accepted for Baseten's clients; the cleanup strategy decides what happens to the
    /// previous deployment.
    #[serde(default)]
    pub scale_down_previous_deployment: Option<bool>,
    /// Accepted for Baseten's clients; instance types are per deployment in switchyard.
    #[serde(default)]
    pub preserve_env_instance_type: Option<bool>,
    /// Not supported by switchyard: only null.
    #[serde(default)]
    #[schema(value_type = NullOnly)]
    pub environment_settings_update: Option<serde_json::Value>,
    /// Not supported by switchyard: only null (PATCH the environment's settings instead).
    #[serde(default)]
    #[schema(value_type = NullOnly)]
    pub promotion_settings_override: Option<serde_json::Value>,
}

/// Baseten's `UpdateRollingDeployConfigV1`: omitted or null fields keep their value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRollingDeployConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_deploy_strategy: Option<RollingDeployStrategy>,
    /// 0-50. Setting one of the two percents non-zero alone sets the other to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 50)]
    pub max_surge_percent: Option<i64>,
    /// 0-50. Setting one of the two percents non-zero alone sets the other to 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 50)]
    pub max_unavailable_percent: Option<i64>,
    /// 0-3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3600)]
    pub stabilization_time_seconds: Option<i64>,
    /// 0-500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 500)]
    pub replica_overhead_percent: Option<i64>,
}

/// Baseten's `UpdatePromotionSettingsV1`: omitted or null fields keep their value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdatePromotionSettings {
    /// Not supported by switchyard: only false or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = FalseOrNull)]
    pub redeploy_on_promotion: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_deploy: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_cleanup_strategy: Option<CleanupStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_deploy_config: Option<UpdateRollingDeployConfig>,
    /// Not supported by switchyard: only false or null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = FalseOrNull)]
    pub ramp_up_while_promoting: Option<bool>,
    /// Not supported by switchyard: only null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = NullOnly)]
    pub ramp_up_duration_seconds: Option<i64>,
    /// switchyard's own: canary analysis (applies to promotions started after the change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<UpdateAnalysis>,
}

/// A partial update of `promotion_settings.analysis`. Omitted fields keep their value; for
/// the thresholds, `null` turns the check off; `webhooks` replaces the whole list.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAnalysis {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub interval_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000000)]
    pub min_requests: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub failure_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_inconclusive_intervals: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
    /// 0-100, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 100)]
    pub max_error_rate_percent: Option<Option<f64>>,
    /// Above 0, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub max_error_rate_ratio: Option<Option<f64>>,
    /// Above 0, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub max_p99_latency_ratio: Option<Option<f64>>,
    /// Above 0, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub max_p99_latency_ms: Option<Option<f64>>,
    /// Above 0, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub max_p99_ttft_ratio: Option<Option<f64>>,
    /// Above 0, or null to turn the check off.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub max_p99_itl_ratio: Option<Option<f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<Vec<Webhook>>,
}

/// A field that is present (`null` included) becomes `Some`: `null` there means "turn off",
/// while an omitted field keeps its value.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// Baseten's `UpdateAutoscalingSettingsV1`: omitted or null fields keep their value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAutoscalingSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub min_replica: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_replica: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 10, maximum = 3600)]
    pub autoscaling_window: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 3600)]
    pub scale_down_delay: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 256)]
    pub concurrency_target: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 100)]
    pub target_utilization_percentage: Option<i64>,
    /// Not supported by switchyard: only null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = NullOnly)]
    pub target_in_flight_tokens: Option<i64>,
    /// Not supported by switchyard: only null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = NullOnly)]
    pub max_scale_down_rate: Option<i64>,
}

/// Baseten's `UpdateRequestBackpressureSettingsV1`: switchyard supports no policy (only null).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequestBackpressureSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = NullOnly)]
    pub policy: Option<String>,
}

/// Baseten's `UpdateEnvironmentRequestV1`: a partial update; omitted or null fields keep their
/// value, unknown fields are refused, every supplied field is applied or refused by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateEnvironmentRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling_settings: Option<UpdateAutoscalingSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion_settings: Option<UpdatePromotionSettings>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_backpressure_settings: Option<UpdateRequestBackpressureSettings>,
    /// Not supported by switchyard: only null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = EmptyOrNull)]
    pub autoscaling_schedule_settings: Option<serde_json::Value>,
    /// Not supported by switchyard: only null.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = EmptyOrNull)]
    pub traffic_routing_settings: Option<serde_json::Value>,
}

/// `ACCEPTED` when something changed, `UNCHANGED` when the request changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UpdateStatus {
    Accepted,
    Unchanged,
}

/// Baseten's `UpdateEnvironmentResponseV1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateEnvironmentResponse {
    pub environment: Environment,
    pub status: UpdateStatus,
    pub message: String,
}

/// Baseten's answer to pause, resume, force cancel and force roll forward (and to activate and
/// deactivate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalPromotionResponse {
    pub success: bool,
}

/// Baseten's answer to cancel: `CANCELED` at once, or `RAMPING_DOWN` while traffic moves back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelPromotionResponse {
    pub status: PromotionStatus,
    pub message: String,
}

/// A body that must be empty or `{}` (control actions take no fields).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmptyRequest {}

/// One entry of an environment's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// RFC 3339 UTC.
    pub at: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub status: PromotionStatus,
    pub percent_traffic_to_new_version: u32,
    pub candidate_replicas: u32,
    pub previous_replicas: u32,
    pub reason: String,
    /// Whether `status` ends the promotion.
    pub terminal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Events {
    pub events: Vec<Event>,
}

/// A deployment to register without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "provider", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreateDeploymentRequest {
    /// switchyard starts the replicas: `command` is the argv, `{port}` is required,
    /// `{deployment}` and `{model}` are substituted. Only when the server allows it
    /// (`[server] api_process_deployments = true`; else 403).
    Process {
        id: String,
        command: Vec<String>,
        #[serde(default = "default_health_path")]
        health_path: String,
    },
    /// Listed `IP:port` endpoints.
    Static { id: String, endpoints: Vec<String> },
}

fn default_health_path() -> String {
    "/healthz".into()
}

impl CreateDeploymentRequest {
    pub fn id(&self) -> &str {
        match self {
            CreateDeploymentRequest::Process { id, .. }
            | CreateDeploymentRequest::Static { id, .. } => id,
        }
    }
}

/// One window of a deployment's traffic in an environment (switchyard's own, for the
/// dashboard's sparklines). Figures without requests in the window are null.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FigurePoint {
    /// End of the window, RFC 3339 UTC.
    pub at: String,
    /// End of the window, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub requests_per_s: f64,
    /// Answers that were errors (5xx, cut streams), in percent of the window's requests.
    pub error_rate_percent: Option<f64>,
    /// p99 of request received to end of the response body.
    pub p99_latency_ms: Option<f64>,
    /// p99 of request received to the first byte of the body (first token of a stream).
    pub p99_ttfb_ms: Option<f64>,
}

/// The recent windows of one deployment, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentFigures {
    pub deployment_id: String,
    pub points: Vec<FigurePoint>,
}

/// Recent windowed figures of an environment's deployments (those it routes to or did in the
/// last `window_seconds`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EnvironmentFigures {
    /// Length of each window.
    pub interval_seconds: u32,
    /// How far back the points go at most.
    pub window_seconds: u32,
    pub deployments: Vec<DeploymentFigures>,
}

/// One step of a rolling deployment and the state after it (as `switchyard plan` prints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PlanStep {
    /// `pre_provision`, `scale_up`, `shift`, `scale_down` or `stabilize`.
    pub action: String,
    pub candidate_replicas: u32,
    pub previous_replicas: u32,
    pub percent_traffic_to_new_version: u32,
}

/// The steps of the environment's rolling deployment: of the promotion in progress (with the
/// replica count and settings it started with), else of the next promotion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RolloutPlan {
    /// Whether this is the plan of a promotion in progress.
    pub in_progress: bool,
    /// Whether promotions roll (false: they switch at once and this plan is not followed).
    pub rolling_deploy: bool,
    /// N: the previous deployment's replicas before the plan.
    pub previous_replicas: u32,
    pub rolling_deploy_config: RollingDeployConfig,
    /// f: replicas each deployment ends up with.
    pub fleet: u32,
    pub replicas_per_step: u32,
    pub traffic_per_step: u32,
    /// `surge` or `unavailable`.
    pub mode: String,
    pub steps: Vec<PlanStep>,
    /// Index in `steps` of the state the promotion in progress is at, when it matches one.
    pub current_step: Option<u32>,
}

/// `GET /v1/cluster`: the instances sharing this state and which one leads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Cluster {
    /// `embedded` (one instance, local store) or `etcd`.
    pub store: String,
    /// The instance that answered.
    pub instance: String,
    /// The instance whose controller moves promotions; `null` while none leads.
    pub leader: Option<String>,
    pub instances: Vec<ClusterInstance>,
    /// Delays from a leader's commit to this instance's routing swap, over the last applied
    /// records (`null` before any).
    pub apply_lag: Option<ApplyLag>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterInstance {
    pub id: String,
    pub admin_url: String,
    pub proxy_addr: String,
    pub leader: bool,
    /// Milliseconds since its last heartbeat, as this instance saw it.
    pub last_heartbeat_ms_ago: u64,
    /// The store revision its routing reflects.
    pub applied_revision: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplyLag {
    pub count: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
}

/// `POST /v1/models/{model_id}/deployments/{deployment_id}/endpoints`: registers (or renews)
/// a replica's endpoint with a static deployment; it leaves unless renewed within its TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterEndpointRequest {
    /// `IP:PORT` where the replica listens, reachable from every switchyard instance.
    pub address: String,
    /// Seconds the registration lasts without renewal (1-3600) [default: 10]. Renew well
    /// within it (`switchyard replica --register` renews every third of it).
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredEndpoint {
    pub address: String,
    /// Seconds left before it expires unless renewed (`null` on a shared store, where etcd
    /// holds the lease).
    pub expires_in_seconds: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RegisteredEndpoints {
    pub endpoints: Vec<RegisteredEndpoint>,
}
