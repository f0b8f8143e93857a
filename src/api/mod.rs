//! The management API (Baseten-shaped), served on the admin listener under `/v1`.
//!
//! Paths, JSON shapes and enums follow Baseten's API (`shared/reference/baseten-api.md`), so
//! scripts written for Baseten carry over: unset nullable fields are sent as `null`, control
//! actions answer `{"success": true}` (cancel: `{"status", "message"}`), errors are
//! `{"error": "<what to do>"}` with 400, 401, 404 or 409.

pub mod auth;
mod json;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};

use crate::channel_body::ChannelBody;
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::rollout::controller::{Controller, ControllerError};
use crate::rollout::machine::Status;

pub type ApiBody = BoxBody<Bytes, Infallible>;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub controller: Arc<Controller>,
    pub api_key: Arc<str>,
    /// Reported as `created_at` of models, deployments and environments.
    pub started: SystemTime,
}

/// The OpenAPI 3 document of this API (kept in step with the routes by a test).
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn openapi() -> Value {
    serde_json::from_str(OPENAPI).unwrap_or(Value::Null)
}

/// Largest request body the API reads.
const MAX_BODY: usize = 64 * 1024;

pub fn json_response(status: StatusCode, v: &Value) -> Response<ApiBody> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

pub fn error(status: StatusCode, message: impl Into<String>) -> Response<ApiBody> {
    json_response(status, &json!({ "error": message.into() }))
}

fn controller_error(e: ControllerError) -> Response<ApiBody> {
    let status = match &e {
        ControllerError::UnknownModel(_)
        | ControllerError::UnknownEnvironment { .. }
        | ControllerError::UnknownDeployment { .. } => StatusCode::NOT_FOUND,
        ControllerError::PromotionInProgress(_)
        | ControllerError::NoPromotion(_)
        | ControllerError::FixedSplit(_)
        | ControllerError::SharedDeployment { .. }
        | ControllerError::AlreadyCurrent(_)
        | ControllerError::DeploymentExists(_)
        | ControllerError::Control(_) => StatusCode::CONFLICT,
        ControllerError::NotEnoughEndpoints { .. } | ControllerError::Settings(_) => {
            StatusCode::BAD_REQUEST
        }
    };
    error(status, e.to_string())
}

/// Every operation the API serves: (method, path template). The handler only answers paths
/// that match one of these, and a test checks this table against the OpenAPI document both ways.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id}"),
    ("GET", "/v1/models/{model_id}/deployments"),
    ("POST", "/v1/models/{model_id}/deployments"),
    ("GET", "/v1/models/{model_id}/deployments/{deployment_id}"),
    (
        "POST",
        "/v1/models/{model_id}/deployments/{deployment_id}/activate",
    ),
    (
        "POST",
        "/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
    ),
    ("GET", "/v1/models/{model_id}/environments"),
    ("GET", "/v1/models/{model_id}/environments/{env_name}"),
    ("PATCH", "/v1/models/{model_id}/environments/{env_name}"),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/promote",
    ),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/pause_promotion",
    ),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/resume_promotion",
    ),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/cancel_promotion",
    ),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/force_cancel_promotion",
    ),
    (
        "POST",
        "/v1/models/{model_id}/environments/{env_name}/force_roll_forward_promotion",
    ),
    (
        "GET",
        "/v1/models/{model_id}/environments/{env_name}/events",
    ),
];

/// Does `path` match `template` (`{name}` matches one non-empty segment)?
fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

/// Answers a request under `/v1`.
pub async fn handle(state: &ApiState, req: Request<Incoming>) -> Response<ApiBody> {
    if let Err(msg) = auth::check(&state.api_key, req.headers()) {
        return error(StatusCode::UNAUTHORIZED, msg);
    }
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method_name = req.method().as_str().to_owned();
    let routed: Vec<&(&str, &str)> = ROUTES.iter().filter(|(_, t)| matches(t, &path)).collect();
    if routed.is_empty() {
        return not_found(&path);
    }
    if !routed.iter().any(|(m, _)| *m == method_name) {
        let allowed: Vec<&str> = routed.iter().map(|(m, _)| *m).collect();
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method_name} is not supported on {path}; use {}",
                allowed.join(" or ")
            ),
        );
    }
    let segments: Vec<&str> = path.split('/').skip(2).collect(); // "", "v1", ...
    let method = req.method().clone();
    let wants_stream = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is over {MAX_BODY} bytes"),
            )
        }
    };
    let c = &state.controller;
    match (method, segments.as_slice()) {
        (Method::GET, ["models"]) => {
            let models: Vec<Value> = c.models().iter().map(|m| json::model(state, m)).collect();
            json_response(StatusCode::OK, &json!({ "models": models }))
        }
        (Method::GET, ["models", m]) => match c.models().into_iter().find(|x| x.id == *m) {
            Some(model) => json_response(StatusCode::OK, &json::model(state, &model)),
            None => controller_error(ControllerError::UnknownModel((*m).to_owned())),
        },
        (Method::GET, ["models", m, "deployments"]) => match json::deployments(state, m) {
            Ok(list) => json_response(StatusCode::OK, &json!({ "deployments": list })),
            Err(e) => controller_error(e),
        },
        (Method::GET, ["models", m, "deployments", d]) => deployment_response(state, m, d),
        (Method::POST, ["models", m, "deployments"]) => {
            let (id, spec) = match json::register_request(&body) {
                Ok(x) => x,
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            };
            if let Err(err) = c.add_deployment(m, &id, spec) {
                return controller_error(err);
            }
            deployment_response(state, m, &id)
        }
        (Method::POST, ["models", m, "deployments", d, action @ ("activate" | "deactivate")]) => {
            if let Err(msg) = json::empty_object(&body) {
                return error(StatusCode::BAD_REQUEST, msg);
            }
            match c.set_active(m, d, *action == "activate") {
                Ok(()) => json_response(StatusCode::OK, &json!({ "success": true })),
                Err(err) => controller_error(err),
            }
        }
        (Method::GET, ["models", m, "environments"]) => {
            let Some(model) = c.models().into_iter().find(|x| x.id == *m) else {
                return controller_error(ControllerError::UnknownModel((*m).to_owned()));
            };
            let envs: Result<Vec<Value>, _> = model
                .environments
                .iter()
                .map(|e| json::environment(state, m, e))
                .collect();
            match envs {
                Ok(envs) => json_response(StatusCode::OK, &json!({ "environments": envs })),
                Err(e) => controller_error(e),
            }
        }
        (Method::GET, ["models", m, "environments", e]) => match json::environment(state, m, e) {
            Ok(v) => json_response(StatusCode::OK, &v),
            Err(err) => controller_error(err),
        },
        (Method::PATCH, ["models", m, "environments", e]) => {
            let view = match c.environment(m, e) {
                Ok(v) => v,
                Err(err) => return controller_error(err),
            };
            let (settings, autoscaling) = match json::patch_environment(&view, &body) {
                Ok(x) => x,
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            };
            let changed = match c.set_environment_settings(m, e, settings, autoscaling) {
                Ok(changed) => changed,
                Err(err) => return controller_error(err),
            };
            match json::environment(state, m, e) {
                Ok(env) => json_response(
                    StatusCode::OK,
                    &json!({
                        "environment": env,
                        "status": if changed { "ACCEPTED" } else { "UNCHANGED" },
                        "message": if changed {
                            "Settings updated; a promotion in progress keeps the settings it started with."
                        } else {
                            "Nothing to change."
                        },
                    }),
                ),
                Err(err) => controller_error(err),
            }
        }
        (Method::GET, ["models", m, "environments", e, "events"]) => {
            if wants_stream {
                return match events_stream(state, m, e) {
                    Ok(r) => r,
                    Err(err) => controller_error(err),
                };
            }
            match c.events(m, e) {
                Ok(events) => json_response(
                    StatusCode::OK,
                    &json!({ "events": events.iter().map(json::event).collect::<Vec<_>>() }),
                ),
                Err(err) => controller_error(err),
            }
        }
        (Method::POST, ["models", m, "environments", e, "promote"]) => {
            let deployment = match json::promote_request(&body) {
                Ok(d) => d,
                Err(msg) => return error(StatusCode::BAD_REQUEST, msg),
            };
            if let Err(err) = c.promote(m, e, &deployment) {
                return controller_error(err);
            }
            deployment_response(state, m, &deployment)
        }
        (Method::POST, ["models", m, "environments", e, action]) => {
            if let Err(msg) = json::empty_object(&body) {
                return error(StatusCode::BAD_REQUEST, msg);
            }
            let result = match *action {
                "pause_promotion" => c.pause(m, e),
                "resume_promotion" => c.resume(m, e),
                "cancel_promotion" => c.cancel(m, e),
                "force_cancel_promotion" => c.force_cancel(m, e),
                "force_roll_forward_promotion" => c.force_roll_forward(m, e),
                _ => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("{path} is listed but not handled"),
                    )
                }
            };
            match (result, *action) {
                (Ok(status), "cancel_promotion") => {
                    let message = if status == Status::Canceled {
                        format!("Promotion to {e} was successfully canceled.")
                    } else {
                        format!(
                            "Promotion to {e} is ramping traffic back to the previous deployment."
                        )
                    };
                    json_response(
                        StatusCode::OK,
                        &json!({ "status": status.as_str(), "message": message }),
                    )
                }
                (Ok(_), _) => json_response(StatusCode::OK, &json!({ "success": true })),
                (Err(err), _) => controller_error(err),
            }
        }
        (Method::GET | Method::POST | Method::PATCH, _) => not_found(&path),
        (m, _) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{m} is not supported on {path}"),
        ),
    }
}

/// A deployment's `DeploymentV1`, or 404.
fn deployment_response(state: &ApiState, model: &str, id: &str) -> Response<ApiBody> {
    match json::deployments(state, model) {
        Ok(list) => match list.into_iter().find(|x| x["id"] == id) {
            Some(dep) => json_response(StatusCode::OK, &dep),
            None => controller_error(ControllerError::UnknownDeployment {
                model: model.to_owned(),
                deployment: id.to_owned(),
            }),
        },
        Err(e) => controller_error(e),
    }
}

fn not_found(path: &str) -> Response<ApiBody> {
    error(
        StatusCode::NOT_FOUND,
        format!("no API route {path}; see /openapi.json"),
    )
}

/// `text/event-stream` of an environment's new events, one `data:` line of JSON each.
fn events_stream(
    state: &ApiState,
    model: &str,
    environment: &str,
) -> Result<Response<ApiBody>, ControllerError> {
    state.controller.events(model, environment)?; // 404 for unknown names
    let mut rx = state.controller.subscribe();
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    let (model, environment) = (model.to_owned(), environment.to_owned());
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b": switchyard events\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let next = tokio::time::timeout(std::time::Duration::from_secs(15), rx.recv()).await;
            let chunk = match next {
                // Comments keep idle connections (and proxies in between) open.
                Err(_) => Bytes::from_static(b": keep-alive\n\n"),
                Ok(Ok(ev)) if ev.model == model && ev.environment == environment => {
                    Bytes::from(format!("data: {}\n\n", json::event(&ev.event)))
                }
                Ok(Ok(_)) => continue,
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(n))) => {
                    Bytes::from(format!(": {n} events were dropped (slow reader)\n\n"))
                }
                Ok(Err(_)) => return,
            };
            if tx.send(chunk).await.is_err() {
                return; // the client went away
            }
        }
    });
    let mut r = Response::new(ChannelBody(body_rx).boxed());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_route_table_and_the_openapi_document_list_the_same_operations() {
        let doc = openapi();
        let mut documented: Vec<(String, String)> = doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .into_iter()
                    .flatten()
                    .map(move |(m, _)| (m.to_uppercase(), path.clone()))
            })
            .collect();
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        served.sort();
        assert_eq!(documented, served);
    }

    #[test]
    fn templates_match_one_segment_per_parameter() {
        assert!(matches("/v1/models/{model_id}", "/v1/models/m"));
        assert!(!matches("/v1/models/{model_id}", "/v1/models"));
        assert!(!matches("/v1/models/{model_id}", "/v1/models/m/x"));
        assert!(!matches("/v1/models/{model_id}", "/v1/models/"));
    }
}
