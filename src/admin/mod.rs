//! The admin listener: `/metrics`, `/livez`, `/readyz`. (The management API joins it later.)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

use crate::api::{ApiBody, ApiState};
use crate::metrics::Metrics;
use crate::server::Health;

#[derive(Clone)]
pub struct AdminState {
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub api: ApiState,
}

/// Routes an admin request: `/v1/...` to the management API, the rest to [`handle`].
pub async fn route(state: &AdminState, req: Request<Incoming>) -> Response<ApiBody> {
    if req.uri().path().starts_with("/v1/") || req.uri().path() == "/v1" {
        return crate::api::handle(&state.api, req).await;
    }
    if req.uri().path() == "/openapi.json" {
        return crate::api::json_response(StatusCode::OK, &crate::api::openapi());
    }
    handle(state, &req).map(|b| b.map_err(|e| match e {}).boxed())
}

/// Answers one admin request.
pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(state.metrics.encode())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.health.is_shutting_down() => {
            text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /livez, /readyz or the API under /v1\n",
        ),
    }
}

/// Serves the admin listener on its own thread until `stop` fires or its sender is dropped.
/// The server drops it only after the workers drained, so `/readyz` answers 503 meanwhile.
pub fn run(listener: std::net::TcpListener, state: AdminState, mut stop: oneshot::Receiver<()>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the admin runtime");
            return;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the admin listener");
                return;
            }
        };
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    let state = state.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(route(&state, req).await) }
                        });
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            }
        }
    });
}
