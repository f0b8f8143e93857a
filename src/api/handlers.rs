//! One handler per operation. Each `#[utoipa::path]` is the route's only declaration: the
//! router ([`serving_routes`]) and the OpenAPI document ([`routes`]) are both built from it.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tokio::sync::broadcast::error::RecvError;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::types::{
    CancelPromotionResponse, Cluster as ClusterBody, CreateDeploymentRequest, Deployment,
    Deployments, EmptyRequest, Environment, EnvironmentFigures, Environments, ErrorBody, Events,
    Model, Models, PromoteRequest, PromotionStatus, RegisterEndpointRequest, RegisteredEndpoint,
    RegisteredEndpoints, RolloutPlan, SignalPromotionResponse, UpdateEnvironmentRequest,
    UpdateEnvironmentResponse, UpdateStatus,
};
use super::{accepts_event_stream, json_response, views, ApiError, ApiPath, ApiState, JsonBody};
use crate::replicas::ProviderSpec;
use crate::rollout::controller::{Command, ControllerError, Outcome};

type ApiResult<T> = Result<axum::Json<T>, ApiError>;

/// A change answers only once the store committed it, so what a 200 reported survives a crash.
async fn saved(s: &ApiState) -> Result<(), ApiError> {
    if s.controller.saved(Duration::from_secs(5)).await {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the change is applied but the store did not commit it within 5 s; see the log",
        ))
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "switchyard management API",
        description = "Baseten-shaped management API of switchyard, on the admin listener. Every /v1 call needs `Authorization: Api-Key <key>` (or `Bearer <key>`)."
    ),
    security(("ApiKey" = [])),
    modifiers(&ApiKeyScheme),
    components(schemas(ErrorBody))
)]
struct ApiDoc;

struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ApiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Api-Key <key>` or `Bearer <key>`",
            ))),
        );
    }
}

/// Any route answers a method it does not serve with 405 and `Allow`: documented on every
/// operation once the routes are in the document.
pub fn document_405(doc: &mut utoipa::openapi::OpenApi) {
    let not_allowed = utoipa::openapi::ResponseBuilder::new()
        .description("the method is not served on this path; `Allow` lists those that are")
        .content(
            "application/json",
            utoipa::openapi::ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build();
    for item in doc.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.patch,
            &mut item.put,
            &mut item.delete,
        ]
        .into_iter()
        .flatten()
        {
            op.responses
                .responses
                .entry("405".into())
                .or_insert_with(|| not_allowed.clone().into());
        }
    }
}

/// A model in the path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct ModelPath {
    model_id: String,
}

/// A deployment of a model in the path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct DeploymentPath {
    model_id: String,
    deployment_id: String,
}

/// An environment of a model in the path.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct EnvPath {
    model_id: String,
    env_name: String,
}

/// The errors a read can answer.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the answers are built by `ApiError`
enum ReadErrors {
    /// No or a wrong API key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such model, deployment or environment.
    #[response(status = 404)]
    NotFound(ErrorBody),
}

/// The errors a change can answer; nothing changed unless it is a 503.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // documentation only: the answers are built by `ApiError`
enum WriteErrors {
    /// The body does not fit the request type; the error names the field.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// No or a wrong API key.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// No such model, deployment or environment.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Not possible in the current state (e.g. no promotion in progress, or one already is).
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// The body is over 64 KiB.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Applied, but the store did not commit it within 5 s.
    #[response(status = 503)]
    NotSaved(ErrorBody),
}

/// Every handler of the API, once: the served router ([`serving_routes`]) and the OpenAPI
/// document ([`routes`]) are both made from this list.
macro_rules! with_every_handler {
    ($then:ident) => {
        $then!(
            list_models,
            get_model,
            list_deployments,
            create_deployment,
            get_deployment,
            activate_deployment,
            deactivate_deployment,
            list_environments,
            get_environment,
            update_environment,
            promote,
            pause_promotion,
            resume_promotion,
            cancel_promotion,
            force_cancel_promotion,
            force_roll_forward_promotion,
            events,
            figures,
            plan,
            cluster,
            list_endpoints,
            register_endpoint,
            deregister_endpoint
        )
    };
}

/// Every route with its handler and its documentation: what `/openapi.json` is made from.
pub fn routes() -> OpenApiRouter<ApiState> {
    macro_rules! documented {
        ($($handler:ident),*) => {
            OpenApiRouter::with_openapi(ApiDoc::openapi()) $(.routes(routes!($handler)))*
        };
    }
    with_every_handler!(documented)
}

/// Every route with its handler, without the documentation: the path and methods come from
/// the same `#[utoipa::path]` attributes, but none of the schemas is built. Building them (330
/// kB of code) at start-up kept those pages resident in every idle proxy.
pub fn serving_routes() -> axum::Router<ApiState> {
    use utoipa::Path as _;
    use utoipa_axum::PathItemExt as _;
    macro_rules! served {
        ($($handler:ident),*) => {{
            let router = axum::Router::new();
            $(
                let path = utoipa_axum::paste! { [<__path_ $handler>]::path() };
                let methods = utoipa_axum::paste! { [<__path_ $handler>]::methods() };
                let router = methods.iter().fold(router, |router, method| {
                    router.route(&path, axum::routing::on(method.to_method_filter(), $handler))
                });
            )*
            router
        }};
    }
    with_every_handler!(served)
}

/// The deployment's registered endpoints.
#[utoipa::path(get, path = "/v1/models/{model_id}/deployments/{deployment_id}/endpoints",
    operation_id = "listEndpoints", tag = "deployments",
    params(DeploymentPath),
    responses(
        (status = 200, body = RegisteredEndpoints),
        ReadErrors,
    ))]
async fn list_endpoints(
    State(s): State<ApiState>,
    ApiPath(DeploymentPath {
        model_id: m,
        deployment_id: d,
    }): ApiPath<DeploymentPath>,
) -> ApiResult<RegisteredEndpoints> {
    let endpoints = s
        .controller
        .registered_endpoints(&m, &d)?
        .into_iter()
        .map(|e| RegisteredEndpoint {
            address: e.address.to_string(),
            expires_in_seconds: e.expires_in.map(|t| t.as_secs_f64()),
        })
        .collect();
    Ok(axum::Json(RegisteredEndpoints { endpoints }))
}

/// Registers (or renews) a replica's endpoint with a static deployment. It is admitted like a
/// listed endpoint (after the listed ones, once its TCP probe connects) and leaves when not
/// renewed within `ttl_seconds`.
#[utoipa::path(post, path = "/v1/models/{model_id}/deployments/{deployment_id}/endpoints",
    operation_id = "registerEndpoint", tag = "deployments",
    params(DeploymentPath),
    request_body = RegisterEndpointRequest,
    responses(
        (status = 200, body = RegisteredEndpoint),
        WriteErrors,
    ))]
async fn register_endpoint(
    State(s): State<ApiState>,
    ApiPath(DeploymentPath {
        model_id: m,
        deployment_id: d,
    }): ApiPath<DeploymentPath>,
    JsonBody(req): JsonBody<RegisterEndpointRequest>,
) -> ApiResult<RegisteredEndpoint> {
    let address = endpoint_address(&req.address).map_err(ApiError::bad_request)?;
    let ttl = req.ttl_seconds.unwrap_or(10);
    if !crate::rollout::controller::registry::TTL_RANGE.contains(&ttl) {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds: {ttl} is out of range 1..=3600"
        )));
    }
    s.controller
        .register_endpoint(&m, &d, address, Duration::from_secs(ttl.into()))
        .await?;
    Ok(axum::Json(RegisteredEndpoint {
        address: address.to_string(),
        expires_in_seconds: Some(f64::from(ttl)),
    }))
}

/// Removes a registered endpoint at once (it stops getting new requests; in-flight ones
/// finish).
#[utoipa::path(delete, path = "/v1/models/{model_id}/deployments/{deployment_id}/endpoints/{address}",
    operation_id = "deregisterEndpoint", tag = "deployments",
    params(DeploymentPath, ("address" = String, Path, description = "IP:PORT as registered")),
    responses(
        (status = 200, body = SignalPromotionResponse),
        WriteErrors,
    ))]
async fn deregister_endpoint(
    State(s): State<ApiState>,
    ApiPath(EndpointPath {
        model_id: m,
        deployment_id: d,
        address,
    }): ApiPath<EndpointPath>,
) -> ApiResult<SignalPromotionResponse> {
    // Whatever is not an endpoint address is no registered endpoint either: 404, like any
    // other address not registered.
    let address = endpoint_address(&address).map_err(|e| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such registered endpoint: {e}"),
        )
    })?;
    let removed = s.controller.deregister_endpoint(&m, &d, address).await?;
    if !removed {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("{address} is not registered with deployment {d:?}"),
        ));
    }
    Ok(axum::Json(SignalPromotionResponse { success: true }))
}

#[derive(serde::Deserialize)]
struct EndpointPath {
    model_id: String,
    deployment_id: String,
    address: String,
}

/// An endpoint as registered: `IP:PORT`, a real port on a specific address.
fn endpoint_address(s: &str) -> Result<std::net::SocketAddr, String> {
    let a: std::net::SocketAddr = s
        .trim()
        .parse()
        .map_err(|_| format!("address: {s:?} is not IP:PORT (e.g. 10.0.0.5:8000 or [::1]:8000)"))?;
    if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
        return Err(format!(
            "address: {s:?} is not an address a replica listens on (port 0, unspecified or multicast)"
        ));
    }
    Ok(a)
}

/// The instances sharing this state (on etcd), which one leads and the store revision each
/// has applied; on the embedded store, this instance alone.
#[utoipa::path(get, path = "/v1/cluster", operation_id = "getCluster", tag = "cluster",
    responses(
        (status = 200, body = ClusterBody),
        (status = 401, body = ErrorBody, description = "missing or wrong API key"),
    ))]
async fn cluster(State(s): State<ApiState>) -> ApiResult<ClusterBody> {
    Ok(axum::Json(views::cluster(&s)))
}

#[utoipa::path(get, path = "/v1/models", operation_id = "listModels", tag = "models",
    responses(
        (status = 200, body = Models),
        (status = 401, body = ErrorBody, description = "no or a wrong API key"),
    ))]
async fn list_models(State(s): State<ApiState>) -> ApiResult<Models> {
    let models = s
        .controller
        .models()
        .iter()
        .map(|m| views::model(&s, m))
        .collect();
    Ok(axum::Json(Models { models }))
}

#[utoipa::path(get, path = "/v1/models/{model_id}", operation_id = "getModel", tag = "models",
    params(ModelPath),
    responses(
        (status = 200, body = Model),
        ReadErrors,
    ))]
async fn get_model(
    State(s): State<ApiState>,
    ApiPath(ModelPath { model_id: m }): ApiPath<ModelPath>,
) -> ApiResult<Model> {
    match s.controller.models().into_iter().find(|x| x.id == m) {
        Some(model) => Ok(axum::Json(views::model(&s, &model))),
        None => Err(ControllerError::UnknownModel(m).into()),
    }
}

#[utoipa::path(get, path = "/v1/models/{model_id}/deployments", operation_id = "listDeployments",
    tag = "deployments",
    params(ModelPath),
    responses(
        (status = 200, body = Deployments),
        ReadErrors,
    ))]
async fn list_deployments(
    State(s): State<ApiState>,
    ApiPath(ModelPath { model_id: m }): ApiPath<ModelPath>,
) -> ApiResult<Deployments> {
    Ok(axum::Json(Deployments {
        deployments: views::deployments(&s, &m)?,
    }))
}

/// Registers a deployment without a restart. It starts with no replicas (static: every listed
/// endpoint admitted) until a promotion scales it.
#[utoipa::path(post, path = "/v1/models/{model_id}/deployments", operation_id = "createDeployment",
    tag = "deployments",
    params(ModelPath),
    request_body = CreateDeploymentRequest,
    responses(
        (status = 200, body = Deployment),
        (status = 403, body = ErrorBody, description = "a `process` deployment while the server does not allow them"),
        WriteErrors,
    ))]
async fn create_deployment(
    State(s): State<ApiState>,
    ApiPath(ModelPath { model_id: m }): ApiPath<ModelPath>,
    JsonBody(req): JsonBody<CreateDeploymentRequest>,
) -> ApiResult<Deployment> {
    if matches!(req, CreateDeploymentRequest::Process { .. }) && !s.process_deployments {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "provider: process deployments through the API are off, since they run a command of the caller's choosing; set [server] api_process_deployments = true to allow them, or register a static deployment",
        ));
    }
    let (id, spec) = provider_spec(req).map_err(ApiError::bad_request)?;
    s.controller
        .execute(Command::AddDeployment {
            model: m.clone(),
            id: id.clone(),
            spec,
        })
        .await?;
    saved(&s).await?;
    Ok(axum::Json(views::one_deployment(&s, &m, &id)?))
}

/// Checks a registration and turns it into a provider spec; the error names the field.
fn provider_spec(req: CreateDeploymentRequest) -> Result<(String, ProviderSpec), String> {
    let id = req.id().to_owned();
    let ok_id = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok_id {
        return Err(format!(
            "id: {id:?} must be 1-128 characters of letters, digits, '-', '_' or '.' (not \".\" or \"..\")"
        ));
    }
    let spec = match req {
        CreateDeploymentRequest::Process {
            command,
            health_path,
            ..
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
            ProviderSpec::Process {
                command,
                health_path,
            }
        }
        CreateDeploymentRequest::Static { endpoints, .. } => {
            if endpoints.is_empty() {
                return Err("endpoints: list at least one IP:PORT".into());
            }
            let mut addrs = Vec::with_capacity(endpoints.len());
            for (i, e) in endpoints.iter().enumerate() {
                let addr: std::net::SocketAddr = e
                    .parse()
                    .map_err(|_| format!("endpoints[{i}]: {e:?} is not an IP:PORT address"))?;
                if addr.port() == 0 || addr.ip().is_unspecified() {
                    return Err(format!(
                        "endpoints[{i}]: {e:?} cannot be connected to (port 0 or an unspecified address)"
                    ));
                }
                addrs.push(addr);
            }
            ProviderSpec::Static { endpoints: addrs }
        }
    };
    Ok((id, spec))
}

#[utoipa::path(get, path = "/v1/models/{model_id}/deployments/{deployment_id}",
    operation_id = "getDeployment", tag = "deployments",
    params(DeploymentPath),
    responses(
        (status = 200, body = Deployment),
        ReadErrors,
    ))]
async fn get_deployment(
    State(s): State<ApiState>,
    ApiPath(DeploymentPath {
        model_id: m,
        deployment_id: d,
    }): ApiPath<DeploymentPath>,
) -> ApiResult<Deployment> {
    Ok(axum::Json(views::one_deployment(&s, &m, &d)?))
}

async fn set_active(
    s: &ApiState,
    m: &str,
    d: &str,
    active: bool,
) -> ApiResult<SignalPromotionResponse> {
    s.controller
        .execute(Command::SetActive {
            model: m.to_owned(),
            id: d.to_owned(),
            active,
        })
        .await?;
    saved(s).await?;
    Ok(axum::Json(SignalPromotionResponse { success: true }))
}

/// Activates a deployment.
#[utoipa::path(post, path = "/v1/models/{model_id}/deployments/{deployment_id}/activate",
    operation_id = "activateDeployment", tag = "deployments",
    params(DeploymentPath),
    request_body(content = Option<EmptyRequest>, description = "empty, or `{}`"),
    responses(
        (status = 200, body = SignalPromotionResponse),
        WriteErrors,
    ))]
async fn activate_deployment(
    State(s): State<ApiState>,
    ApiPath(DeploymentPath {
        model_id: m,
        deployment_id: d,
    }): ApiPath<DeploymentPath>,
    JsonBody(_): JsonBody<EmptyRequest>,
) -> ApiResult<SignalPromotionResponse> {
    set_active(&s, &m, &d, true).await
}

/// Deactivates a deployment: no replicas, no traffic (pinned requests included). A current or
/// promoting deployment cannot be deactivated (409).
#[utoipa::path(post, path = "/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
    operation_id = "deactivateDeployment", tag = "deployments",
    params(DeploymentPath),
    request_body(content = Option<EmptyRequest>, description = "empty, or `{}`"),
    responses(
        (status = 200, body = SignalPromotionResponse),
        WriteErrors,
    ))]
async fn deactivate_deployment(
    State(s): State<ApiState>,
    ApiPath(DeploymentPath {
        model_id: m,
        deployment_id: d,
    }): ApiPath<DeploymentPath>,
    JsonBody(_): JsonBody<EmptyRequest>,
) -> ApiResult<SignalPromotionResponse> {
    set_active(&s, &m, &d, false).await
}

#[utoipa::path(get, path = "/v1/models/{model_id}/environments", operation_id = "listEnvironments",
    tag = "environments",
    params(ModelPath),
    responses(
        (status = 200, body = Environments),
        ReadErrors,
    ))]
async fn list_environments(
    State(s): State<ApiState>,
    ApiPath(ModelPath { model_id: m }): ApiPath<ModelPath>,
) -> ApiResult<Environments> {
    let model = s
        .controller
        .models()
        .into_iter()
        .find(|x| x.id == m)
        .ok_or_else(|| ControllerError::UnknownModel(m.clone()))?;
    let environments = model
        .environments
        .iter()
        .map(|e| views::environment(&s, &m, e))
        .collect::<Result<_, _>>()?;
    Ok(axum::Json(Environments { environments }))
}

#[utoipa::path(get, path = "/v1/models/{model_id}/environments/{env_name}",
    operation_id = "getEnvironment", tag = "environments",
    params(EnvPath),
    responses(
        (status = 200, body = Environment),
        ReadErrors,
    ))]
async fn get_environment(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
) -> ApiResult<Environment> {
    let view = views::environment(&s, &m, &e)?;
    // What a status shows survives a crash: the controller saves its steps in the background,
    // so a step can be visible a few milliseconds before the store has it, and a process
    // killed in that window resumes from the step before. Reads wait for that commit (at once
    // when nothing is pending) and answer anyway if the store is down, which the log reports.
    if !s.controller.saved(Duration::from_secs(5)).await {
        tracing::warn!(model = %m, environment = %e, "status answered before the store committed it");
    }
    Ok(axum::Json(view))
}

/// Partial update of the environment's promotion and autoscaling settings. Omitted or null
/// fields keep their value; a promotion in progress keeps the settings it started with.
#[utoipa::path(patch, path = "/v1/models/{model_id}/environments/{env_name}",
    operation_id = "updateEnvironment", tag = "environments",
    params(EnvPath),
    request_body(content = Option<UpdateEnvironmentRequest>, description = "the fields to change; an empty body changes nothing"),
    responses(
        (status = 200, body = UpdateEnvironmentResponse),
        WriteErrors,
    ))]
async fn update_environment(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
    JsonBody(req): JsonBody<UpdateEnvironmentRequest>,
) -> ApiResult<UpdateEnvironmentResponse> {
    let view = s.controller.environment(&m, &e)?;
    let (settings, autoscaling) =
        super::update::apply(&view, &req).map_err(ApiError::bad_request)?;
    let changed = matches!(
        s.controller
            .execute(Command::SetEnvironmentSettings {
                model: m.clone(),
                environment: e.clone(),
                settings: Box::new(settings),
                autoscaling,
            })
            .await?,
        Outcome::Changed(true)
    );
    saved(&s).await?;
    Ok(axum::Json(UpdateEnvironmentResponse {
        environment: views::environment(&s, &m, &e)?,
        status: if changed {
            UpdateStatus::Accepted
        } else {
            UpdateStatus::Unchanged
        },
        message: if changed {
            "Settings updated; a promotion in progress keeps the settings it started with."
        } else {
            "Nothing to change."
        }
        .into(),
    }))
}

/// Starts promoting a deployment to the environment with the environment's settings; answers
/// the promoted deployment.
#[utoipa::path(post, path = "/v1/models/{model_id}/environments/{env_name}/promote",
    operation_id = "promote", tag = "environments",
    params(EnvPath),
    request_body = PromoteRequest,
    responses(
        (status = 200, body = Deployment),
        WriteErrors,
    ))]
async fn promote(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
    JsonBody(req): JsonBody<PromoteRequest>,
) -> ApiResult<Deployment> {
    if req.deployment_id.is_empty() {
        return Err(ApiError::bad_request(
            "deployment_id: must not be empty (the id of the deployment to promote)",
        ));
    }
    if req.environment_settings_update.is_some() {
        return Err(ApiError::bad_request(
            "environment_settings_update: not supported by switchyard (only null); PATCH the environment first",
        ));
    }
    if req.promotion_settings_override.is_some() {
        return Err(ApiError::bad_request(
            "promotion_settings_override: not supported by switchyard (only null); PATCH the environment's promotion_settings first",
        ));
    }
    s.controller
        .execute(Command::Promote {
            model: m.clone(),
            environment: e.clone(),
            candidate: req.deployment_id.clone(),
        })
        .await?;
    saved(&s).await?;
    Ok(axum::Json(views::one_deployment(
        &s,
        &m,
        &req.deployment_id,
    )?))
}

macro_rules! signal {
    ($name:ident, $path:literal, $doc:literal, $call:ident) => {
        #[doc = $doc]
        #[utoipa::path(post, path = $path, operation_id = stringify!($name), tag = "environments",
                    params(EnvPath),
                    request_body(content = Option<EmptyRequest>, description = "empty, or `{}`"),
                    responses(
                        (status = 200, body = SignalPromotionResponse),
                        WriteErrors,
                    ))]
        async fn $name(
            State(s): State<ApiState>,
            ApiPath(EnvPath {
                model_id: m,
                env_name: e,
            }): ApiPath<EnvPath>,
            JsonBody(_): JsonBody<EmptyRequest>,
        ) -> ApiResult<SignalPromotionResponse> {
            s.controller
                .execute(Command::$call {
                    model: m,
                    environment: e,
                })
                .await?;
            saved(&s).await?;
            Ok(axum::Json(SignalPromotionResponse { success: true }))
        }
    };
}

signal!(
    pause_promotion,
    "/v1/models/{model_id}/environments/{env_name}/pause_promotion",
    "Pauses the promotion at the next step boundary.",
    Pause
);
signal!(
    resume_promotion,
    "/v1/models/{model_id}/environments/{env_name}/resume_promotion",
    "Resumes a paused promotion.",
    Resume
);
signal!(
    force_cancel_promotion,
    "/v1/models/{model_id}/environments/{env_name}/force_cancel_promotion",
    "Cancels at once: all traffic back to the previous deployment now.",
    ForceCancel
);
signal!(
    force_roll_forward_promotion,
    "/v1/models/{model_id}/environments/{env_name}/force_roll_forward_promotion",
    "Finishes at once: all traffic to the candidate at the next step boundary.",
    ForceRollForward
);

/// Cancels the promotion: ramps traffic back to the previous deployment (`RAMPING_DOWN`), or
/// ends it at once when nothing moved yet (`CANCELED`).
#[utoipa::path(post, path = "/v1/models/{model_id}/environments/{env_name}/cancel_promotion",
    operation_id = "cancel_promotion", tag = "environments",
    params(EnvPath),
    request_body(content = Option<EmptyRequest>, description = "empty, or `{}`"),
    responses(
        (status = 200, body = CancelPromotionResponse),
        WriteErrors,
    ))]
async fn cancel_promotion(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
    JsonBody(_): JsonBody<EmptyRequest>,
) -> ApiResult<CancelPromotionResponse> {
    let status: PromotionStatus = match s
        .controller
        .execute(Command::Cancel {
            model: m,
            environment: e.clone(),
        })
        .await?
    {
        Outcome::Status(st) => st.into(),
        other => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cancel answered {other:?}"),
            ))
        }
    };
    saved(&s).await?;
    let message = if status == PromotionStatus::Canceled {
        format!("Promotion to {e} was successfully canceled.")
    } else {
        format!("Promotion to {e} is ramping traffic back to the previous deployment.")
    };
    Ok(axum::Json(CancelPromotionResponse { status, message }))
}

/// The environment's event log (`application/json`), or with `Accept: text/event-stream` its
/// new events as they happen, one `data:` line of JSON (an `Event`) each.
#[utoipa::path(get, path = "/v1/models/{model_id}/environments/{env_name}/events",
    operation_id = "events", tag = "environments",
    params(EnvPath),
    responses(
        (status = 200, content(
            (Events = "application/json"),
            (String = "text/event-stream"),
        )),
        ReadErrors,
    ))]
async fn events(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let log = s.controller.events(&m, &e)?; // 404 for unknown names
    if accepts_event_stream(&headers) {
        return Ok(event_stream(&s, m, e));
    }
    let events = log.iter().map(views::event).collect();
    Ok(json_response(StatusCode::OK, &Events { events }))
}

/// switchyard's own: each deployment's traffic in the environment over the last 5 minutes, in
/// 5-second windows (requests/s, error rate, p99 latency and time to first byte), oldest first.
/// The dashboard's sparklines; a deployment appears once it has been routed to for a window.
#[utoipa::path(get, path = "/v1/models/{model_id}/environments/{env_name}/figures",
    operation_id = "getEnvironmentFigures", tag = "environments",
    params(EnvPath),
    responses(
        (status = 200, body = EnvironmentFigures),
        ReadErrors,
    ))]
async fn figures(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
) -> ApiResult<EnvironmentFigures> {
    s.controller.environment(&m, &e)?; // 404 for unknown names
    Ok(axum::Json(s.figures.environment(&m, &e)))
}

/// switchyard's own: the steps of the promotion in progress (as `switchyard plan` computes
/// them, from the replica count and settings it started with) with the current one marked,
/// else of the next promotion with the environment's settings.
#[utoipa::path(get, path = "/v1/models/{model_id}/environments/{env_name}/plan",
    operation_id = "getEnvironmentPlan", tag = "environments",
    params(EnvPath),
    responses(
        (status = 200, body = RolloutPlan),
        ReadErrors,
        (status = 409, description = "the settings or replica count give no valid plan", body = ErrorBody),
    ))]
async fn plan(
    State(s): State<ApiState>,
    ApiPath(EnvPath {
        model_id: m,
        env_name: e,
    }): ApiPath<EnvPath>,
) -> ApiResult<RolloutPlan> {
    let v = s.controller.environment(&m, &e)?;
    let plan = views::plan(&v).map_err(|msg| ApiError::new(StatusCode::CONFLICT, msg))?;
    Ok(axum::Json(plan))
}

/// `text/event-stream` of an environment's new events; a comment every 15 s keeps idle
/// connections (and proxies in between) open.
fn event_stream(s: &ApiState, model: String, environment: String) -> Response {
    let rx = s.controller.subscribe();
    let first = Bytes::from_static(b": switchyard events\n\n");
    let stream = futures_util::stream::unfold((rx, Some(first)), move |(mut rx, first)| {
        let (model, environment) = (model.clone(), environment.clone());
        async move {
            if let Some(chunk) = first {
                return Some((Ok::<_, Infallible>(chunk), (rx, None)));
            }
            loop {
                let chunk = match tokio::time::timeout(Duration::from_secs(15), rx.recv()).await {
                    Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                    Ok(Ok(ev)) if ev.model == model && ev.environment == environment => {
                        match serde_json::to_string(&views::event(&ev.event)) {
                            Ok(json) => Bytes::from(format!("data: {json}\n\n")),
                            Err(_) => continue,
                        }
                    }
                    Ok(Ok(_)) => continue,
                    Ok(Err(RecvError::Lagged(n))) => {
                        Bytes::from(format!(": {n} events were dropped (slow reader)\n\n"))
                    }
                    Ok(Err(RecvError::Closed)) => return None,
                };
                return Some((Ok(chunk), (rx, None)));
            }
        }
    });
    let mut r = Body::from_stream(stream).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations_are_checked_field_by_field() {
        let p = |body: &str| {
            super::super::parse_json::<CreateDeploymentRequest>(body.as_bytes())
                .and_then(provider_spec)
        };
        assert!(p(r#"{"id": "v3", "provider": "static", "endpoints": ["127.0.0.1:9"]}"#).is_ok());
        for (body, field) in [
            (
                r#"{"id": "..", "provider": "static", "endpoints": ["127.0.0.1:9"]}"#,
                "id",
            ),
            (
                r#"{"id": ".", "provider": "static", "endpoints": ["127.0.0.1:9"]}"#,
                "id",
            ),
            (
                r#"{"id": "v3", "provider": "static", "endpoints": ["127.0.0.1:0"]}"#,
                "endpoints[0]",
            ),
            (
                r#"{"id": "v3", "provider": "static", "endpoints": []}"#,
                "endpoints",
            ),
            (
                r#"{"id": "v3", "provider": "static", "endpoints": ["nope"]}"#,
                "endpoints[0]",
            ),
            (
                r#"{"id": "x", "provider": "process", "command": ["srv"]}"#,
                "command",
            ),
            (r#"{"id": "x", "provider": "ftp"}"#, "provider"),
        ] {
            let e = p(body).unwrap_err();
            assert!(e.contains(field), "{body}: {e}");
        }
    }
}
