//! Calling analysis webhooks: an HTTP/1.1 POST of the JSON payload (over TLS for `https://`,
//! checked against the platform's CAs), bounded by the webhook's timeout. Gates answer with their status code; notifications are only logged.

use std::sync::Arc;
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
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_else(|| host.clone());
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let req = Request::post(path)
        .header(header::HOST, authority)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "switchyard-analysis")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    if !tls {
        return exchange(stream, req).await;
    }
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} is not a TLS server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls_config()?)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake failed: {e}"))?;
    exchange(stream, req).await
}

async fn exchange<S>(stream: S, req: Request<Full<Bytes>>) -> Result<http::StatusCode, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    tokio::spawn(conn);
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    Ok(resp.status())
}

/// Trusts the platform's CA certificates, or those of `SSL_CERT_FILE` / `SSL_CERT_DIR` when set.
/// Read at each call: webhooks are called once per interval at most, and a changed bundle
/// applies without a restart.
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(": {e}"));
        return Err(format!(
            "no trusted CA certificate found (install ca-certificates or set SSL_CERT_FILE){why}"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use http::{Response, StatusCode};
    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    use super::*;
    use crate::rollout::analysis::{Counts, Verdict, VerdictResult, WebhookWhen};
    use crate::rollout::machine::Status;

    type Seen = Arc<Mutex<Vec<serde_json::Value>>>;

    /// A webhook receiver on 127.0.0.1 answering `status` (over TLS with `cert` when given),
    /// keeping the JSON bodies it was sent.
    async fn receiver(
        status: StatusCode,
        cert: Option<&rcgen::CertifiedKey>,
        seen: Seen,
    ) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = cert.map(|ck| {
            let certs = vec![CertificateDer::from_pem_slice(ck.cert.pem().as_bytes()).unwrap()];
            let key =
                PrivateKeyDer::from_pem_slice(ck.key_pair.serialize_pem().as_bytes()).unwrap();
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tls, seen) = (tls.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let seen = seen.clone();
                        async move {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            seen.lock()
                                .unwrap()
                                .push(serde_json::from_slice(&body).unwrap());
                            let mut r = Response::new(Full::new(Bytes::new()));
                            *r.status_mut() = status;
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(stream).await {
                                let _ = http.serve_connection(TokioIo::new(s), svc).await;
                            }
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(stream), svc).await;
                        }
                    }
                });
            }
        });
        addr
    }

    fn hook(name: &str, url: String) -> Webhook {
        Webhook {
            name: name.into(),
            url,
            timeout_seconds: 1,
            when: WebhookWhen::BeforeShift,
        }
    }

    #[tokio::test]
    async fn gates_are_posted_over_http_and_https_and_each_failure_says_why() {
        let trusted = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let stranger = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let bundle = std::env::temp_dir().join(format!("switchyard-ca-{}.pem", std::process::id()));
        std::fs::write(&bundle, trusted.cert.pem()).unwrap();
        // Only this test reads it: the webhook client trusts this bundle alone.
        std::env::set_var("SSL_CERT_FILE", &bundle);

        let seen: Seen = Arc::default();
        let https = receiver(StatusCode::NO_CONTENT, Some(&trusted), seen.clone()).await;
        let untrusted = receiver(StatusCode::OK, Some(&stranger), seen.clone()).await;
        let refusing = receiver(StatusCode::INTERNAL_SERVER_ERROR, None, seen.clone()).await;
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let payload = WebhookPayload {
            webhook: String::new(),
            when: WebhookWhen::BeforeShift,
            model: "m".into(),
            environment: "production".into(),
            previous_deployment_id: "v1".into(),
            candidate_deployment_id: "v2".into(),
            status: Status::RampingUp,
            percent_traffic_to_new_version: 34,
            verdict: Verdict {
                result: VerdictResult::Pass,
                from_ms: 0,
                to_ms: 10_000,
                candidate: Counts::default(),
                previous: Counts::default(),
                checks: Vec::new(),
                summary: "ok".into(),
            },
        };
        let outcomes = call_all(
            vec![
                hook("tls", format!("https://{https}/gate")),
                hook("stranger", format!("https://{untrusted}/gate")),
                hook("refuses", format!("http://{refusing}/gate")),
                hook(
                    "silent",
                    format!("http://{}/gate", silent.local_addr().unwrap()),
                ),
                hook("closed", format!("http://{closed}/gate")),
            ],
            payload,
        )
        .await;
        std::env::remove_var("SSL_CERT_FILE");
        let _ = std::fs::remove_file(&bundle);
        let got: Vec<(&str, bool, &str)> = outcomes
            .iter()
            .map(|o| (o.name.as_str(), o.passed, o.detail.as_str()))
            .collect();
        assert_eq!(got[0], ("tls", true, "HTTP 204"));
        assert!(
            !got[1].1 && got[1].2.starts_with("TLS handshake failed"),
            "{got:?}"
        );
        assert_eq!(got[2], ("refuses", false, "HTTP 500"));
        assert_eq!(got[3], ("silent", false, "no answer within 1 s"));
        assert!(
            !got[4].1 && got[4].2.starts_with("cannot connect"),
            "{got:?}"
        );
        // Each receiver got the promotion, named for it.
        let seen = seen.lock().unwrap();
        let names: Vec<&str> = seen.iter().filter_map(|v| v["webhook"].as_str()).collect();
        assert!(
            names.contains(&"tls") && names.contains(&"refuses"),
            "{names:?}"
        );
        assert!(seen
            .iter()
            .all(|v| v["candidate_deployment_id"] == "v2"
                && v["percent_traffic_to_new_version"] == 34));
    }
}
