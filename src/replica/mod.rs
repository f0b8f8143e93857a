//! The built-in model server (`switchyard replica`): what demos and tests run as replicas.
//!
//! OpenAI-compatible `POST /v1/chat/completions` and `POST /v1/completions` (streaming with
//! `"stream": true`, as SSE ending in `data: [DONE]`), `POST /predict`, and `GET /healthz`,
//! which answers 503 until the simulated cold start is over. Every response names the version
//! that served it (`x-replica-version` and in the body).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};

/// How the replica behaves.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub listen: SocketAddr,
    pub version: String,
    /// Simulated model load: `/healthz` answers 503 this long after start.
    pub startup_delay: Duration,
    /// Time to the first token (or to the whole answer when not streaming).
    pub latency: Duration,
    pub tokens_per_second: f64,
    /// Tokens generated when the request sets no `max_tokens`.
    pub default_tokens: u32,
    /// Share of requests (0-1) answered with a 500.
    pub error_rate: f64,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            version: "v1".into(),
            startup_delay: Duration::ZERO,
            latency: Duration::from_millis(20),
            tokens_per_second: 50.0,
            default_tokens: 16,
            error_rate: 0.0,
        }
    }
}

type ReplicaBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

struct State {
    opts: ReplicaOptions,
    ready: AtomicBool,
}

/// Serves until the process is killed (or its parent dies).
pub async fn run(opts: ReplicaOptions) -> std::io::Result<()> {
    // The proxy's own listen backlog (server.rs): a burst of new upstream connections (a
    // thousand streams starting at once through a cold pool) must not overflow the accept
    // queue, whose dropped SYNs come back only after a second and can time connects out.
    let socket = if opts.listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(opts.listen)?;
    let listener = socket.listen(4096)?;
    let state = Arc::new(State {
        opts,
        ready: AtomicBool::new(false),
    });
    let s = state.clone();
    tokio::spawn(async move {
        tokio::time::sleep(s.opts.startup_delay).await;
        s.ready.store(true, Ordering::Relaxed);
    });
    watch_parent();
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// A replica must not outlive the switchyard that started it, even if switchyard is killed
/// with SIGKILL: exit when our parent changes.
fn watch_parent() {
    let parent = std::os::unix::process::parent_id();
    if parent <= 1 {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
}

fn json_response(state: &State, status: StatusCode, v: Value) -> Response<ReplicaBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-replica-version", state.opts.version.as_str())
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

async fn handle(state: &State, req: Request<Incoming>) -> Response<ReplicaBody> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        return if state.ready.load(Ordering::Relaxed) {
            json_response(
                state,
                StatusCode::OK,
                json!({"status": "ok", "version": state.opts.version}),
            )
        } else {
            json_response(
                state,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "loading", "version": state.opts.version}),
            )
        };
    }
    if req.method() != Method::POST {
        return json_response(
            state,
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route for {} {path}", req.method())}),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_response(
                state,
                StatusCode::BAD_REQUEST,
                json!({"error": "cannot read the body"}),
            )
        }
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return json_response(
                    state,
                    StatusCode::BAD_REQUEST,
                    json!({"error": format!("body is not JSON: {e}")}),
                )
            }
        }
    };
    if !state.ready.load(Ordering::Relaxed) {
        return json_response(
            state,
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "model is still loading"}),
        );
    }
    if state.opts.error_rate > 0.0 && rand::random::<f64>() < state.opts.error_rate {
        return json_response(
            state,
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "simulated failure", "version": state.opts.version}),
        );
    }
    let tokens = input
        .get("max_tokens")
        .and_then(Value::as_u64)
        .map_or(state.opts.default_tokens, |n| n.min(100_000) as u32);
    let stream = input
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let v = state.opts.version.clone();
    match path.as_str() {
        "/v1/chat/completions" | "/v1/completions" => {
            let chat = path == "/v1/chat/completions";
            if stream {
                return sse(state, chat, tokens);
            }
            tokio::time::sleep(state.opts.latency + token_time(state, tokens)).await;
            let text = words(tokens);
            let choice = if chat {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"})
            } else {
                json!({"index": 0, "text": text, "finish_reason": "length"})
            };
            json_response(
                state,
                StatusCode::OK,
                json!({
                    "id": format!("cmpl-{v}"),
                    "object": if chat { "chat.completion" } else { "text_completion" },
                    "model": v,
                    "choices": [choice],
                    "usage": {"completion_tokens": tokens},
                }),
            )
        }
        "/predict" => {
            tokio::time::sleep(state.opts.latency).await;
            json_response(
                state,
                StatusCode::OK,
                json!({"version": v, "output": words(tokens)}),
            )
        }
        _ => json_response(
            state,
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route for POST {path}")}),
        ),
    }
}

fn token_time(state: &State, tokens: u32) -> Duration {
    if state.opts.tokens_per_second <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(f64::from(tokens) / state.opts.tokens_per_second)
}

fn words(tokens: u32) -> String {
    (0..tokens)
        .map(|i| format!("tok{i}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A streamed completion: one SSE event per token, paced, then `data: [DONE]`.
fn sse(state: &State, chat: bool, tokens: u32) -> Response<ReplicaBody> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let latency = state.opts.latency;
    let gap = if state.opts.tokens_per_second > 0.0 {
        Duration::from_secs_f64(1.0 / state.opts.tokens_per_second)
    } else {
        Duration::ZERO
    };
    let version = state.opts.version.clone();
    tokio::spawn(async move {
        tokio::time::sleep(latency).await;
        // Tokens on a fixed schedule from the first, so timer rounding does not add up, and
        // `[DONE]` right behind the last one, as inference servers send it.
        let first = tokio::time::Instant::now();
        for i in 0..tokens {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep_until(first + gap * i).await;
            }
            let chunk = if chat {
                json!({"object": "chat.completion.chunk", "model": version, "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}}]})
            } else {
                json!({"object": "text_completion", "model": version, "choices": [{"index": 0, "text": format!("tok{i} ")}]})
            };
            if tx
                .send(Bytes::from(format!("data: {chunk}\n\n")))
                .await
                .is_err()
            {
                return; // the client went away: stop generating
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-replica-version", state.opts.version.as_str())
        .body(channel_body(rx))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// A body fed by a channel: it ends when the sender is dropped, and a send fails once the
/// client went away, which is how the producer learns to stop.
fn channel_body(rx: tokio::sync::mpsc::Receiver<Bytes>) -> ReplicaBody {
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok(http_body::Frame::data(chunk)), rx))
    });
    http_body_util::StreamBody::new(frames).boxed()
}
