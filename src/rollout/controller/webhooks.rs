//! Calling analysis webhooks: a plain HTTP/1.1 POST of the JSON payload, bounded by the
//! webhook's timeout. Gates answer with their status code; notifications are only logged.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::rollout::analysis::{GateOutcome, Webhook, WebhookPayload};

/// POSTs `payload` to each webhook, all at once; one outcome per webhook, in order.
pub(super) async fn call_all(hooks: Vec<Webhook>, payload: WebhookPayload) -> Vec<GateOutcome> {
    let calls = hooks.into_iter().map(|w| {
        let mut p = payload.clone();
        p.webhook = w.name.clone();
        async move {
            let body = serde_json::to_vec(&p).unwrap_or_default();
            let timeout = Duration::from_secs(u64::from(w.timeout_seconds));
            let (passed, detail) = match tokio::time::timeout(timeout, post(&w.url, body)).await {
                Ok(Ok(code)) => (code.is_success(), format!("HTTP {}", code.as_u16())),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, format!("no answer within {} s", w.timeout_seconds)),
            };
            GateOutcome {
                name: w.name,
                passed,
                detail,
            }
        }
    });
    futures_util::future::join_all(calls).await
}

async fn post(url: &str, body: Vec<u8>) -> Result<http::StatusCode, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "switchyard-analysis")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(resp.status())
}
