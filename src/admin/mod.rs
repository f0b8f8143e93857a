//! The admin listener: the management API under `/v1` (see [`crate::api`]), its OpenAPI
//! document at `/openapi.json`, Prometheus `/metrics`, and `/livez` and `/readyz`, which this
//! module owns: readiness turns to 503 as soon as the server starts draining. `/` serves the
//! rollout dashboard (`dashboard/`), which calls the API with the key the operator enters.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::sync::{oneshot, Semaphore};
use tower::ServiceExt;

use crate::api::{ApiError, ApiState};
use crate::metrics::{Metrics, ScrapeBody};

/// Connections the admin listener serves at once; more are closed as they arrive. Idle and
/// trickling clients lose theirs after the header timeout (`server.admin_header_timeout_seconds`,
/// default 30 s; event streams are responses, not idle, and stay open).
pub const MAX_CONNECTIONS: usize = 1024;

/// Process-wide state the admin listener reports on.
#[derive(Default)]
pub struct Health {
    shutting_down: AtomicBool,
}

impl Health {
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending new work.
    pub fn start_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone)]
pub struct AdminState {
    metrics: Metrics,
    health: Arc<Health>,
    api: ApiState,
    api_router: axum::Router,
    header_timeout: Duration,
}

impl AdminState {
    pub fn new(
        metrics: Metrics,
        health: Arc<Health>,
        api: ApiState,
        header_timeout: Duration,
    ) -> Self {
        AdminState {
            metrics,
            health,
            header_timeout,
            api_router: crate::api::router(api.clone()),
            api,
        }
    }
}

/// Routes an admin request: `/v1/...` to the management API (after the API key check), the
/// rest to [`handle`].
pub async fn route(state: &AdminState, req: Request<Incoming>) -> Response {
    let path = req.uri().path();
    if path.starts_with("/v1/") || path == "/v1" {
        if let Err(msg) = crate::api::auth::check(&state.api.api_key, req.headers()) {
            return axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::UNAUTHORIZED,
                msg,
            ));
        }
        let req = without_trailing_slash(req.map(Body::new));
        return match state.api_router.clone().oneshot(req).await {
            Ok(r) => r,
            Err(e) => match e {},
        };
    }
    if path == "/metrics" && (req.method() == Method::GET || req.method() == Method::HEAD) {
        // With 10,000 models that have served, an exposition is 55 MB and over 100 ms of CPU:
        // it is written a part at a time as the connection takes it, so that `/readyz`, the
        // API and the dashboard's streams wait at most a few parts, and no scrape holds more
        // than a few parts in memory.
        let mut r = Response::new(Body::new(ScrapeBody::new(state.metrics.scrape())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return r;
    }
    handle(state, &req)
}

/// `/v1/models/` and `/v1/models` are the same route.
fn without_trailing_slash(mut req: Request<Body>) -> Request<Body> {
    let path = req.uri().path();
    if path.len() > 1 && path.ends_with('/') {
        let trimmed = path.trim_end_matches('/');
        let pq = match req.uri().query() {
            Some(q) => format!("{trimmed}?{q}"),
            None => trimmed.to_owned(),
        };
        if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
            *req.uri_mut() = uri;
        }
    }
    req
}

/// Answers one request outside the API and `/metrics`.
pub fn handle(state: &AdminState, req: &Request<Incoming>) -> Response {
    let text = |status: StatusCode, body: &'static str| {
        let mut r = Response::new(Body::from(Bytes::from_static(body.as_bytes())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/" | "/index.html" => dashboard_asset(DASHBOARD_HTML, "text/html; charset=utf-8"),
        "/dashboard/app.js" => {
            dashboard_asset(DASHBOARD_JS, "text/javascript; charset=utf-8")
        }
        "/dashboard/style.css" => dashboard_asset(DASHBOARD_CSS, "text/css; charset=utf-8"),
        "/openapi.json" => {
            let mut r = Response::new(Body::from(crate::api::openapi_json()));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
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
            "not found: try / (the dashboard), /metrics, /livez, /readyz, /openapi.json or the API under /v1\n",
        ),
    }
}

// The dashboard, embedded: no files to install, and the page needs nothing from elsewhere.
const DASHBOARD_HTML: &str = include_str!("dashboard/index.html");
const DASHBOARD_JS: &str = include_str!("dashboard/app.js");
const DASHBOARD_CSS: &str = include_str!("dashboard/style.css");

/// Only this listener's own scripts, styles and API: an injected script or a framing page gets
/// nothing. The page holds no secret but the key the operator types, which this protects.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// A dashboard file. The page is public (it asks for the API key and sends it on each call);
/// `no-cache` so an upgraded switchyard serves its own page, not a stale one.
fn dashboard_asset(body: &'static str, content_type: &'static str) -> Response {
    let mut r = Response::new(Body::from(Bytes::from_static(body.as_bytes())));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
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
        // Sampled on this runtime: the sampler ends with the admin listener.
        tokio::spawn(state.api.figures.clone().run());
        let header_timeout = state.header_timeout;
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(header_timeout));
        let builder = Arc::new(builder);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            tokio::select! {
                _ = &mut stop => break,
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { continue };
                    // Over the cap the connection is closed at once: the timeouts below free
                    // the slots idle or trickling clients hold.
                    let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
                    let state = state.clone();
                    let builder = builder.clone();
                    tokio::spawn(async move {
                        let _slot = slot;
                        let svc = service_fn(move |req| {
                            let state = state.clone();
                            async move { Ok::<_, Infallible>(route(&state, req).await) }
                        });
                        // A client must start its first request within the header timeout;
                        // hyper's timer covers every head after that, idle keep-alive included.
                        let mut first = [0u8; 1];
                        match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                            Ok(Ok(n)) if n > 0 => {}
                            _ => return,
                        }
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
            }
        }
    });
}
