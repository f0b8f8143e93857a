//! The CLI's client of the management API (`switchyard status`, `promote`, ...), speaking the
//! same types the server answers with ([`crate::api::types`]).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::types::{
    CancelPromotionResponse, Deployment, Deployments, Environment, ErrorBody, Event, Events, Model,
    Models, PromoteRequest, SignalPromotionResponse, UpdateEnvironmentRequest,
    UpdateEnvironmentResponse,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("--admin-url {0:?}: {1}")]
    BadUrl(String, String),
    #[error("cannot reach the admin API at {url}: {source}")]
    Unreachable { url: String, source: std::io::Error },
    #[error("the admin API at {url} broke the connection: {message}")]
    Protocol { url: String, message: String },
    /// The server answered with an error; `message` is its `error` field.
    #[error("{message}")]
    Api { status: StatusCode, message: String },
    #[error("{0}")]
    Usage(String),
}

/// A control action on an environment's promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Pause,
    Resume,
    Cancel,
    ForceCancel,
    ForceRollForward,
}

impl Signal {
    fn path(self) -> &'static str {
        match self {
            Signal::Pause => "pause_promotion",
            Signal::Resume => "resume_promotion",
            Signal::Cancel => "cancel_promotion",
            Signal::ForceCancel => "force_cancel_promotion",
            Signal::ForceRollForward => "force_roll_forward_promotion",
        }
    }
}

/// What a control action answered: cancel says where it went, the others only succeed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SignalAnswer {
    Cancel(CancelPromotionResponse),
    Done(SignalPromotionResponse),
}

pub struct Client {
    url: String,
    addr: String,
    key: Option<String>,
}

impl Client {
    /// `url` like `http://127.0.0.1:9090` (the admin listener is plain HTTP).
    pub fn new(url: &str, key: Option<String>) -> Result<Client, ClientError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| ClientError::BadUrl(url.into(), format!("{e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::BadUrl(
                url.into(),
                "use http://HOST:PORT (the admin listener has no TLS)".into(),
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::BadUrl(url.into(), "no host".into()))?;
        let addr = format!("{host}:{}", uri.port_u16().unwrap_or(80));
        Ok(Client {
            url: url.trim_end_matches('/').to_owned(),
            addr,
            key,
        })
    }

    fn protocol(&self, e: &dyn std::fmt::Display) -> ClientError {
        ClientError::Protocol {
            url: self.url.clone(),
            message: e.to_string(),
        }
    }

    /// Sends one request; answers the response head and body stream once the head arrived.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &'static str,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            url: self.url.clone(),
            source,
        };
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::net::TcpStream::connect(&self.addr),
        )
        .await
        .map_err(|_| {
            unreachable(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        })?
        .map_err(unreachable)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.as_str())
            .header(header::ACCEPT, accept);
        if let Some(k) = &self.key {
            req = req.header(header::AUTHORIZATION, format!("Api-Key {k}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b)
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| self.protocol(&e))?;
        tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| self.protocol(&"no answer within 30 s"))?
            .map_err(|e| self.protocol(&e))
    }

    /// Sends one request and returns the typed answer of a 2xx, or the server's error.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Usage(format!("cannot encode the request: {e}")))?;
        let resp = self.send(method, path, body, "application/json").await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(&e))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| self.protocol(&format!("the answer to {path} does not parse ({e})")));
        }
        let message = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => e.error,
            Err(_) => String::from_utf8_lossy(&bytes).into_owned(),
        };
        Err(ClientError::Api { status, message })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call(Method::GET, path, None::<&()>).await
    }

    /// Registers (or renews) `address` with a static deployment for `ttl_seconds`.
    pub async fn register_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: &str,
        ttl_seconds: u32,
    ) -> Result<crate::api::types::RegisteredEndpoint, ClientError> {
        let body = crate::api::types::RegisterEndpointRequest {
            address: address.to_owned(),
            ttl_seconds: Some(ttl_seconds),
        };
        self.call(
            Method::POST,
            &format!("/v1/models/{model}/deployments/{deployment}/endpoints"),
            Some(&body),
        )
        .await
    }

    pub async fn deregister_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: &str,
    ) -> Result<SignalPromotionResponse, ClientError> {
        self.call(
            Method::DELETE,
            &format!("/v1/models/{model}/deployments/{deployment}/endpoints/{address}"),
            None::<&()>,
        )
        .await
    }

    /// The instances sharing the state and which one leads.
    pub async fn cluster(&self) -> Result<crate::api::types::Cluster, ClientError> {
        self.get("/v1/cluster").await
    }

    pub async fn models(&self) -> Result<Models, ClientError> {
        self.get("/v1/models").await
    }

    pub async fn model(&self, model: &str) -> Result<Model, ClientError> {
        self.get(&format!("/v1/models/{model}")).await
    }

    pub async fn deployments(&self, model: &str) -> Result<Deployments, ClientError> {
        self.get(&format!("/v1/models/{model}/deployments")).await
    }

    pub async fn environment(&self, model: &str, env: &str) -> Result<Environment, ClientError> {
        self.get(&env_path(model, env)).await
    }

    pub async fn update_environment(
        &self,
        model: &str,
        env: &str,
        req: &UpdateEnvironmentRequest,
    ) -> Result<UpdateEnvironmentResponse, ClientError> {
        self.call(Method::PATCH, &env_path(model, env), Some(req))
            .await
    }

    pub async fn promote(
        &self,
        model: &str,
        env: &str,
        deployment: &str,
    ) -> Result<Deployment, ClientError> {
        let req = PromoteRequest {
            deployment_id: deployment.to_owned(),
            scale_down_previous_deployment: None,
            preserve_env_instance_type: None,
            environment_settings_update: None,
            promotion_settings_override: None,
        };
        let path = format!("{}/promote", env_path(model, env));
        self.call(Method::POST, &path, Some(&req)).await
    }

    pub async fn signal(
        &self,
        model: &str,
        env: &str,
        signal: Signal,
    ) -> Result<SignalAnswer, ClientError> {
        let path = format!("{}/{}", env_path(model, env), signal.path());
        Ok(match signal {
            Signal::Cancel => {
                SignalAnswer::Cancel(self.call(Method::POST, &path, None::<&()>).await?)
            }
            _ => SignalAnswer::Done(self.call(Method::POST, &path, None::<&()>).await?),
        })
    }

    pub async fn events(&self, model: &str, env: &str) -> Result<Events, ClientError> {
        self.get(&format!("{}/events", env_path(model, env))).await
    }

    /// Subscribes to the environment's live events (`text/event-stream`).
    pub async fn follow_events(&self, model: &str, env: &str) -> Result<EventStream, ClientError> {
        let path = format!("{}/events", env_path(model, env));
        let resp = self
            .send(Method::GET, &path, None, "text/event-stream")
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
                |_| String::from_utf8_lossy(&bytes).into_owned(),
                |e| e.error,
            );
            return Err(ClientError::Api { status, message });
        }
        Ok(EventStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    /// The model and environment to act on: as given, or the only one the server has.
    pub async fn target(
        &self,
        model: Option<String>,
        environment: Option<String>,
    ) -> Result<(String, String), ClientError> {
        let model = match model {
            Some(m) => m,
            None => {
                let ids: Vec<String> = self
                    .models()
                    .await?
                    .models
                    .into_iter()
                    .map(|m| m.id)
                    .collect();
                match ids.as_slice() {
                    [one] => one.clone(),
                    [] => return Err(ClientError::Usage("the server has no model".into())),
                    many => {
                        return Err(ClientError::Usage(format!(
                            "the server has several models ({}): pass --model",
                            many.join(", ")
                        )))
                    }
                }
            }
        };
        let environment = match environment {
            Some(e) => e,
            None => {
                let envs = self.model(&model).await?.environments;
                match envs.as_slice() {
                    [one] => one.clone(),
                    _ if envs.iter().any(|e| e == "production") => "production".into(),
                    _ => {
                        return Err(ClientError::Usage(format!(
                            "model {model} has several environments ({}): pass --environment",
                            envs.join(", ")
                        )))
                    }
                }
            }
        };
        Ok((model, environment))
    }
}

fn env_path(model: &str, env: &str) -> String {
    format!("/v1/models/{model}/environments/{env}")
}

/// An environment's live events, as the server sends them.
pub struct EventStream {
    body: hyper::body::Incoming,
    buf: BytesMut,
}

impl EventStream {
    /// The next event; `None` when the server closed the stream (e.g. it restarted).
    /// Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let message = self.buf.split_to(end + 2);
                let text = String::from_utf8_lossy(&message);
                let data: String = text
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect::<Vec<_>>()
                    .join("\n");
                if data.is_empty() {
                    continue;
                }
                match serde_json::from_str::<Event>(&data) {
                    Ok(ev) => return Some(ev),
                    Err(_) => continue,
                }
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// One progress line for an environment: status, a bar of the traffic on the candidate,
/// replicas per deployment.
pub fn progress_line(env: &Environment) -> String {
    let p = env.in_progress_promotion.as_ref();
    let status = p.map_or("NO PROMOTION", |p| p.status.as_str());
    let percent = p.map_or(0, |p| p.percent_traffic_to_new_version.min(100));
    let filled = (percent / 5) as usize;
    let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(20 - filled));
    let mut line = format!(
        "{status:<12} {bar} {percent:>3}% to {}",
        p.map_or("-", |p| p.candidate_deployment_id.as_str())
    );
    for d in [&env.current_deployment, &env.candidate_deployment]
        .into_iter()
        .flatten()
    {
        let r = &d.replicas;
        line.push_str(&format!("  {} {}/{} ready", d.id, r.ready, r.desired));
        if r.starting > 0 {
            line.push_str(&format!(" +{} starting", r.starting));
        }
    }
    if let Some(e) = p.and_then(|p| p.error_message.as_deref()) {
        line.push_str(&format!("  error: {e}"));
    }
    if let Some(a) = p.and_then(|p| p.analysis.as_ref()) {
        line.push_str("\n  analysis: ");
        match &a.last_verdict {
            Some(v) => line.push_str(&format!(
                "{} ({} verdicts, {} failing in a row): {}",
                v.result.as_str(),
                a.verdicts,
                a.consecutive_failures,
                v.summary
            )),
            None => line.push_str("no verdict yet"),
        }
    }
    line
}
