//! The management API (Baseten-shaped), served on the admin listener under `/v1`.
//!
//! Paths, JSON shapes and enums follow Baseten's management API, so scripts and Baseten's own
//! SDK carry over: unset nullable fields are sent as `null`, control actions answer
//! `{"success": true}` (cancel: `{"status", "message"}`), errors are `{"error": "<what to do>"}`
//! with 400, 401, 404, 405, 409 or 413.
//!
//! Each route is declared once, on its handler (`handlers`): the router and the OpenAPI document
//! (`/openapi.json`) are both built from those declarations. Bodies are the types of [`types`],
//! shared with the CLI client.

pub mod auth;
pub mod figures;
mod handlers;
pub mod types;
mod update;
pub mod views;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::rollout::controller::{Controller, ControllerError};
use types::ErrorBody;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub controller: Arc<Controller>,
    pub api_key: Arc<str>,
    /// Reported as `created_at` of models, deployments and environments.
    pub started: SystemTime,
    /// Declared instance types by (model, deployment); the others get what switchyard knows
    /// ([`views::default_instance_type`]).
    pub instance_types: Arc<BTreeMap<(String, String), types::InstanceType>>,
    /// Whether `POST .../deployments` may register `process` deployments.
    pub process_deployments: bool,
    /// Recent windowed figures per deployment (the dashboard's sparklines).
    pub figures: Arc<figures::Figures>,
    /// This instance's listeners, as `GET /v1/cluster` reports them.
    pub admin_addr: std::net::SocketAddr,
    pub proxy_addr: std::net::SocketAddr,
}

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// The router of every `/v1` route, with the state it serves.
pub fn router(state: ApiState) -> axum::Router {
    handlers::serving_routes()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The OpenAPI 3.1 document of this API, generated from the handlers and types.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = handlers::routes().split_for_parts().1;
        handlers::document_405(&mut doc);
        doc
    })
}

/// `/openapi.json`'s body, serialized once.
pub fn openapi_json() -> Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        Bytes::from(serde_json::to_vec(openapi()).unwrap_or_else(|_| b"{}".to_vec()))
    })
    .clone()
}

/// A JSON answer with the given status.
pub fn json_response<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            let mut r = Response::new(Body::from(format!("{{\"error\":\"cannot encode: {e}\"}}")));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        }
    }
}

/// An API error: the status and the `error` message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(
            self.status,
            &ErrorBody {
                error: self.message,
            },
        )
    }
}

impl From<ControllerError> for ApiError {
    fn from(e: ControllerError) -> Self {
        let status =
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.to_string())
    }
}

/// A JSON request body of type `T`: an empty body reads as `{}`; at most [`MAX_BODY`] bytes
/// (else 413); a body that does not fit `T` is a 400 naming the field's path.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + Serialize, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, ApiError> {
        let bytes = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is over {MAX_BODY} bytes"),
                ))
            }
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "the request body broke off: {e}"
                )))
            }
        };
        parse_json(&bytes)
            .map(JsonBody)
            .map_err(ApiError::bad_request)
    }
}

/// Parses a request body into `T`. Errors start with the JSON path of the field at fault
/// (`promotion_settings.rolling_deploy_config.max_surge_percent: ...`).
pub fn parse_json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Result<T, String> {
    let typed: T = parse_typed(bytes)?;
    // serde also reads a JSON array into a struct's fields by position (`[null, 1]`); compare
    // the shape that was sent with the typed result so an array never stands for an object.
    if let (Ok(sent), Ok(read)) = (
        serde_json::from_slice::<serde_json::Value>(bytes),
        serde_json::to_value(&typed),
    ) {
        if let Some(at) = array_for_object(&sent, &read, "") {
            return Err(format!("{at}: must be a JSON object, not an array"));
        }
    }
    Ok(typed)
}

/// The path where `sent` has an array and `read` (the typed value) an object, if any.
fn array_for_object(
    sent: &serde_json::Value,
    read: &serde_json::Value,
    at: &str,
) -> Option<String> {
    use serde_json::Value;
    match (sent, read) {
        (Value::Array(_), Value::Object(_)) => Some(at.to_owned()),
        (Value::Object(s), Value::Object(r)) => s.iter().find_map(|(k, v)| {
            let path = if at.is_empty() {
                k.clone()
            } else {
                format!("{at}.{k}")
            };
            r.get(k).and_then(|rv| array_for_object(v, rv, &path))
        }),
        _ => None,
    }
}

fn parse_typed<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    // No body, or a JSON null, asks for nothing: the same as `{}`. Whitespace alone is not
    // JSON: it is refused like any other malformed body.
    let text: &[u8] = if bytes.is_empty() || bytes.trim_ascii() == b"null" {
        b"{}"
    } else {
        bytes
    };
    // serde would read a JSON array into a struct's fields by position: only objects count.
    if text.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            Err(e) => Err(format!("the body is not valid JSON: {e}")),
            Ok(_) => Err("the body must be a JSON object".into()),
        };
    }
    let de = &mut serde_json::Deserializer::from_slice(text);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(de);
    match parsed {
        Ok(v) => Ok(v),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if inner.is_syntax() || inner.is_eof() {
                return Err(format!("the body is not valid JSON: {inner}"));
            }
            let msg = inner.to_string();
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_owned();
            // "unknown field `x`, expected one of ..." names the field at its own path.
            if let Some(rest) = msg.strip_prefix("unknown field `") {
                let (field, known) = rest.split_once('`').unwrap_or((rest, ""));
                // The path already ends with the unknown key.
                let at = if path == "." { field.to_owned() } else { path };
                let known = known
                    .trim_start_matches(", ")
                    .replace("expected one of ", "known: ")
                    .replace("expected ", "known: ")
                    .replace('`', "");
                return Err(format!("{at}: unknown field ({known})"));
            }
            if path == "." {
                if let Some(field) = msg
                    .strip_prefix("missing field `")
                    .and_then(|r| r.split('`').next())
                {
                    return Err(format!("{field}: required"));
                }
                if msg.starts_with("invalid type") {
                    return Err(format!("the body must be a JSON object ({msg})"));
                }
                return Err(msg);
            }
            Err(format!("{path}: {msg}"))
        }
    }
}

/// Path parameters, percent-decoded once; a bad encoding is a 400.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::bad_request(format!(
                "{}: {}",
                parts.uri.path(),
                e.body_text()
            ))),
        }
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no API route {}; see /openapi.json",
            req.uri().path().trim_end_matches('/')
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    let path = req.uri().path().trim_end_matches('/');
    let allowed = allowed_methods(path);
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not supported on {path}; use {}",
            req.method(),
            allowed.join(" or ")
        ),
    )
}

/// The methods the OpenAPI document lists for the template `path` matches.
fn allowed_methods(path: &str) -> Vec<String> {
    let matches = |template: &str| {
        let (t, p): (Vec<&str>, Vec<&str>) =
            (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len()
            && t.iter()
                .zip(&p)
                .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
    };
    let mut out: Vec<String> = openapi()
        .paths
        .paths
        .iter()
        .filter(|(t, _)| matches(t))
        .flat_map(|(_, item)| {
            [
                ("GET", item.get.is_some()),
                ("POST", item.post.is_some()),
                ("PATCH", item.patch.is_some()),
                ("PUT", item.put.is_some()),
                ("DELETE", item.delete.is_some()),
            ]
        })
        .filter(|(_, served)| *served)
        .map(|(m, _)| m.to_owned())
        .collect();
    out.sort();
    out
}

/// Does the `Accept` header ask for `text/event-stream` (with a non-zero quality)?
pub fn accepts_event_stream(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("");
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1.0, |(_, v)| v.trim().parse::<f32>().unwrap_or(0.0));
            media.eq_ignore_ascii_case("text/event-stream") && q > 0.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_errors_name_the_field_path() {
        use types::{PromoteRequest, UpdateEnvironmentRequest};
        let e = parse_json::<PromoteRequest>(b"{}").unwrap_err();
        assert_eq!(e, "deployment_id: required");
        let e = parse_json::<PromoteRequest>(br#"{"deployment_id": 3}"#).unwrap_err();
        assert!(e.starts_with("deployment_id: invalid type"), "{e}");
        let e =
            parse_json::<PromoteRequest>(br#"{"deployment_id": "v2", "extra": 1}"#).unwrap_err();
        assert!(e.starts_with("extra: unknown field (known: "), "{e}");
        let e = parse_json::<PromoteRequest>(b"[1]").unwrap_err();
        assert!(e.starts_with("the body must be a JSON object"), "{e}");
        assert!(parse_json::<PromoteRequest>(b"{")
            .unwrap_err()
            .contains("not valid JSON"));
        let e = parse_json::<UpdateEnvironmentRequest>(
            br#"{"promotion_settings": {"rolling_deploy_config": {"max_surge_percent": "x"}}}"#,
        )
        .unwrap_err();
        assert!(
            e.starts_with("promotion_settings.rolling_deploy_config.max_surge_percent: "),
            "{e}"
        );
        let e =
            parse_json::<UpdateEnvironmentRequest>(br#"{"promotion_settings": {"rolling": 1}}"#)
                .unwrap_err();
        assert!(
            e.starts_with("promotion_settings.rolling: unknown field"),
            "{e}"
        );
        let e = parse_json::<UpdateEnvironmentRequest>(br#"{"request_backpressure_settings": 7}"#)
            .unwrap_err();
        assert!(
            e.starts_with("request_backpressure_settings: invalid type"),
            "{e}"
        );
        assert!(parse_json::<types::EmptyRequest>(b"").is_ok());
        assert!(parse_json::<types::EmptyRequest>(b" {} ").is_ok());
        assert!(parse_json::<types::EmptyRequest>(br#"{"x": 1}"#).is_err());
        assert!(parse_json::<types::EmptyRequest>(b"null").is_ok());
        let e = parse_json::<UpdateEnvironmentRequest>(
            br#"{"promotion_settings": {"rolling_deploy_config": [null, null]}}"#,
        )
        .unwrap_err();
        assert_eq!(
            e,
            "promotion_settings.rolling_deploy_config: must be a JSON object, not an array"
        );
    }

    #[test]
    fn an_empty_body_is_an_empty_object_but_whitespace_is_not_json() {
        #[derive(serde::Deserialize, serde::Serialize, Default, Debug, PartialEq)]
        struct Empty {}
        assert_eq!(parse_json::<Empty>(b"").unwrap(), Empty {});
        assert_eq!(parse_json::<Empty>(b" null ").unwrap(), Empty {});
        let e = parse_json::<Empty>(b"\r").unwrap_err();
        assert!(e.contains("not valid JSON"), "{e}");
    }

    #[test]
    fn accept_is_parsed_as_media_ranges_with_quality() {
        let h = |v: &str| {
            let mut m = http::HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            accepts_event_stream(&m)
        };
        assert!(h("text/event-stream"));
        assert!(h("TEXT/EVENT-STREAM"));
        assert!(h("application/json, text/event-stream;q=0.5"));
        assert!(!h("text/event-stream;q=0"));
        assert!(!h("application/json"));
        assert!(!h("text/event-streams"));
    }
}
