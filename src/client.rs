//! The CLI's client of the management API (`switchyard status`, `promote`, ...).

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

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

    /// Sends one request and returns the JSON answer of a 2xx, or the server's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
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
        let protocol = |e: &dyn std::fmt::Display| ClientError::Protocol {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| protocol(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, self.addr.as_str());
        if let Some(k) = &self.key {
            req = req.header(header::AUTHORIZATION, format!("Api-Key {k}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req.body(Full::new(body)).map_err(|e| protocol(&e))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
            .await
            .map_err(|_| protocol(&"no answer within 30 s"))?
            .map_err(|e| protocol(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| protocol(&e))?
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            return Ok(v);
        }
        let message = v
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| v.to_string());
        Err(ClientError::Api { status, message })
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call(Method::GET, path, None).await
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
                let models = self.get("/v1/models").await?;
                let ids: Vec<String> = models["models"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|m| m["id"].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
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
                let m = self.get(&format!("/v1/models/{model}")).await?;
                let envs: Vec<String> = m["environments"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|e| e.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
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

/// One progress line for an `EnvironmentV1`: status, a bar of the traffic on the candidate,
/// replicas per deployment.
pub fn progress_line(env: &Value) -> String {
    let p = &env["in_progress_promotion"];
    let status = p["status"].as_str().unwrap_or("NO PROMOTION");
    let percent = p["percent_traffic_to_new_version"]
        .as_u64()
        .unwrap_or(0)
        .min(100);
    let filled = (percent / 5) as usize;
    let bar = format!("[{}{}]", "#".repeat(filled), "-".repeat(20 - filled));
    let replicas = |d: &Value| -> String {
        if d.is_null() {
            return String::new();
        }
        let r = &d["replicas"];
        format!(
            "{} {}/{} ready{}",
            d["id"].as_str().unwrap_or("?"),
            r["ready"].as_u64().unwrap_or(0),
            r["desired"].as_u64().unwrap_or(0),
            match r["starting"].as_u64().unwrap_or(0) {
                0 => String::new(),
                n => format!(" +{n} starting"),
            }
        )
    };
    let mut line = format!(
        "{status:<12} {bar} {percent:>3}% to {}",
        p["candidate_deployment_id"].as_str().unwrap_or("-")
    );
    for d in [&env["current_deployment"], &env["candidate_deployment"]] {
        let r = replicas(d);
        if !r.is_empty() {
            line.push_str("  ");
            line.push_str(&r);
        }
    }
    if let Some(e) = p["error_message"].as_str() {
        line.push_str(&format!("  error: {e}"));
    }
    line
}

/// Process exit code for a promotion's final status: 0 SUCCEEDED, 1 FAILED, 3 CANCELED.
pub fn exit_code_for(status: &str) -> Option<u8> {
    match status {
        "SUCCEEDED" => Some(0),
        "FAILED" => Some(1),
        "CANCELED" => Some(3),
        _ => None,
    }
}
