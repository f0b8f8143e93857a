//! One request, from routing to the response handed back to hyper.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::body::{InFlight, ProxyBody, UpstreamBody};
use super::headers;
use super::upstream::{self, SendError};
use crate::config::UpstreamSettings;
use crate::metrics::UpstreamErrorKind;
use crate::routing::{Pool, Route, Router};

/// What every request on every worker shares.
pub struct ProxyContext {
    pub router: Arc<Router>,
    pub upstream: UpstreamSettings,
    pub deployment_header: bool,
}

/// What one client connection shares between its requests.
pub struct ConnInfo {
    /// The client's IP, ready to append to `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    pub proto: &'static str,
}

/// At most this many replicas are tried for one request (config caps attempts at 16).
const MAX_TRIED: usize = 16;

/// Proxies one request. Never fails: problems become 4xx/5xx responses with a short body.
pub async fn proxy(
    ctx: &ProxyContext,
    conn: &ConnInfo,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    if req.method() == Method::CONNECT {
        // A reverse proxy has no tunnel to open; replicas are reached by path and Host.
        let mut resp = local(
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not supported: switchyard is a reverse proxy",
        );
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return resp;
    }

    // Routing decision: one snapshot load, then only the Arcs needed across awaits.
    let (pool, replica, strip) = {
        let snapshot = ctx.router.load();
        let host = request_host(&req);
        let resolved = match snapshot.resolve(host, req.uri().path()) {
            Ok(r) => r,
            Err(e) => return local(StatusCode::NOT_FOUND, e.to_string()),
        };
        let mut rng = rand::rng();
        let pool = match resolved.route {
            Route::Pinned(p) => p,
            Route::Split(env) => match env.pick_pool(&mut rng) {
                Some(p) => p,
                None => {
                    return local(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "environment {:?} of model {:?} sends no traffic to any deployment",
                            env.name, resolved.model.id
                        ),
                    )
                }
            },
        };
        let replica = pool.pick_replica(&mut rng, &[]).cloned();
        (pool.clone(), replica, resolved.strip)
    };
    let Some(mut replica) = replica else {
        tracing::warn!(deployment = %pool.deployment, "no ready replica");
        return pool_error(
            &pool,
            ctx.deployment_header,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("deployment {:?} has no ready replica", pool.deployment),
        );
    };

    let client_version = req.version();
    let upgrade = headers::is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // The Host asked for, taken before stripping: `Connection: host` must not hide it.
    let host = request_host_value(&req);
    // Strip before adding forwarding headers, so `Connection: x-forwarded-for` cannot remove
    // the client address the proxy adds.
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    if let Err(msg) = rewrite_request(&mut req, strip, conn, host) {
        return local(StatusCode::BAD_REQUEST, msg);
    }
    *req.version_mut() = Version::HTTP_11;

    let cfg = &ctx.upstream;
    let mut tried = [0u64; MAX_TRIED];
    let mut attempts = 0usize;
    let mut stale_retries = 0u32;
    let (in_flight, response) = loop {
        // A pooled connection, or a new one; a failed connect moves on to another replica.
        let conn = match upstream::checkout(replica.id, cfg.pool_idle_timeout) {
            Some(s) => s,
            None => match upstream::connect(replica.addr, cfg.connect_timeout).await {
                Ok(s) => {
                    replica.record_connect_success();
                    s
                }
                Err(e) => {
                    pool.metrics.count_error(UpstreamErrorKind::Connect);
                    let ejected = replica
                        .record_connect_failure(cfg.eject_after_failures, cfg.eject_duration);
                    tracing::warn!(
                        deployment = %pool.deployment,
                        replica = %replica.addr,
                        error = %e,
                        ejected,
                        "cannot connect to replica"
                    );
                    tried[attempts] = replica.id;
                    attempts += 1;
                    let next = (attempts < cfg.max_connect_attempts as usize)
                        .then(|| {
                            pool.pick_replica(&mut rand::rng(), &tried[..attempts])
                                .cloned()
                        })
                        .flatten();
                    match next {
                        Some(r) => {
                            replica = r;
                            continue;
                        }
                        None => {
                            return pool_error(
        &pool,
        ctx.deployment_header,
                                StatusCode::BAD_GATEWAY,
                                format!(
                                    "no replica of deployment {:?} could be reached (last tried {}: {e})",
                                    pool.deployment, replica.addr
                                ),
                            )
                        }
                    }
                }
            },
        };
        let in_flight = InFlight::begin(replica.clone(), pool.clone(), started);
        let send = conn.send(req);
        let result = match cfg.response_header_timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => {
                    pool.metrics.count_error(UpstreamErrorKind::HeaderTimeout);
                    tracing::warn!(
                        deployment = %pool.deployment,
                        replica = %replica.addr,
                        timeout = ?t,
                        "no response headers from replica in time"
                    );
                    return pool_error(
                        &pool,
                        ctx.deployment_header,
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "deployment {:?} replica {} sent no response headers within {t:?}",
                            pool.deployment, replica.addr
                        ),
                    );
                }
            },
            None => send.await,
        };
        match result {
            Ok(resp) => break (in_flight, resp),
            // Not a byte sent: the pooled connection was closing. Retry on another one.
            Err(SendError::NotSent(back, _)) if stale_retries < 2 => {
                stale_retries += 1;
                req = *back;
                drop(in_flight);
            }
            Err(SendError::Failed(e @ upstream::UpstreamError::ClientBody(_))) => {
                // The client's own body broke (it went away, or sent bad framing): not the
                // replica's fault, and nobody may be left to read the answer.
                tracing::debug!(deployment = %pool.deployment, error = %e, "request body failed");
                return local(StatusCode::BAD_REQUEST, e.to_string());
            }
            Err(e) => {
                let e = match e {
                    SendError::NotSent(_, e) => upstream::UpstreamError::Send(e),
                    SendError::Failed(e) => e,
                };
                pool.metrics.count_error(UpstreamErrorKind::Protocol);
                tracing::warn!(
                    deployment = %pool.deployment,
                    replica = %replica.addr,
                    error = %e,
                    "replica failed the request"
                );
                return pool_error(
                    &pool,
                    ctx.deployment_header,
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "deployment {:?} replica {} failed the request: {e}",
                        pool.deployment, replica.addr
                    ),
                );
            }
        }
    };

    if response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
        // A 101 the client did not ask for (RFC 9110 15.2.2 forbids it): nothing can be
        // tunnelled, and the socket now speaks an unknown protocol, so it is dropped.
        pool.metrics.count_error(UpstreamErrorKind::Protocol);
        tracing::warn!(
            deployment = %pool.deployment,
            replica = %replica.addr,
            "replica switched protocols without being asked"
        );
        return pool_error(
            &pool,
            ctx.deployment_header,
            StatusCode::BAD_GATEWAY,
            format!(
                "deployment {:?} replica {} switched protocols without being asked",
                pool.deployment, replica.addr
            ),
        );
    }

    let m = &pool.metrics;
    m.first_byte.observe(started.elapsed().as_secs_f64());
    m.count_response(response.status());
    let (mut parts, body) = response.into_parts();
    // Answer in the client's protocol version, whatever the replica spoke.
    parts.version = client_version;
    if ctx.deployment_header {
        parts
            .headers
            .insert(&headers::X_SWITCHYARD_DEPLOYMENT, pool.header_value.clone());
    }

    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return match (client_upgrade, body.into_upgraded()) {
            (Some(client_upgrade), Some(upstream)) => {
                tokio::spawn(tunnel(client_upgrade, upstream, in_flight));
                Response::from_parts(parts, ProxyBody::empty())
            }
            // The request body was still uploading: the socket cannot change protocols.
            _ => pool_error(
                &pool,
                ctx.deployment_header,
                StatusCode::BAD_GATEWAY,
                format!(
                    "deployment {:?} replica {} switched protocols before the request body was sent",
                    pool.deployment, replica.addr
                ),
            ),
        };
    }
    headers::strip_hop_by_hop(&mut parts.headers, false);
    let body = UpstreamBody::new(
        body,
        in_flight,
        cfg.pool_max_idle_per_replica,
        cfg.body_idle_timeout,
    );
    Response::from_parts(parts, ProxyBody::Upstream(body))
}

/// The Host the client addressed: the `Host` header (HTTP/1.1) or the URI authority (HTTP/2).
fn request_host(req: &Request<Incoming>) -> Option<&str> {
    req.uri().authority().map(|a| a.as_str()).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}

/// The `Host` header, or for HTTP/2 the URI authority, as a header value.
fn request_host_value(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.headers().get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok()),
    }
}

/// Makes the request fit for an HTTP/1.1 replica: origin-form URI without the routing prefix,
/// a Host header, forwarding headers.
fn rewrite_request(
    req: &mut Request<Incoming>,
    strip: usize,
    conn: &ConnInfo,
    host: Option<HeaderValue>,
) -> Result<(), &'static str> {
    if let Some(h) = &host {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, h.clone());
        }
    }
    let absolute = req.uri().scheme().is_some() || req.uri().authority().is_some();
    if strip > 0 || absolute {
        let path = &req.uri().path()[strip..];
        let path = if path.is_empty() { "/" } else { path };
        let pq = match req.uri().query() {
            Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
            None if strip == 0 => PathAndQuery::try_from(path),
            None => PathAndQuery::try_from(path.to_owned()),
        };
        match pq {
            Ok(pq) => *req.uri_mut() = Uri::from(pq),
            Err(_) => return Err("the request path cannot be forwarded"),
        }
    }
    headers::add_forwarded(req.headers_mut(), &conn.peer_ip, conn.proto, host);
    Ok(())
}

/// Bridges an upgraded (e.g. WebSocket) connection: client bytes to the replica and back.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    (mut upstream, early): (tokio::net::TcpStream, Bytes),
    in_flight: InFlight,
) {
    let client = match client.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                deployment = %in_flight.pool.deployment,
                error = %e,
                "protocol upgrade did not complete"
            );
            return;
        }
    };
    let mut client = TokioIo::new(client);
    // Bytes of the new protocol the replica sent right behind its 101.
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            tracing::debug!(deployment = %in_flight.pool.deployment, error = %e, "upgraded connection closed");
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(deployment = %in_flight.pool.deployment, error = %e, "upgraded connection closed");
    }
    drop(in_flight);
}

/// A response of the proxy's own, not tied to a deployment.
pub fn local(status: StatusCode, message: impl Into<String>) -> Response<ProxyBody> {
    let mut body = message.into();
    body.push('\n');
    let mut resp = Response::new(ProxyBody::text(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An error response on behalf of a deployment: counted in its metrics, and tagged with it.
fn pool_error(pool: &Pool, tag: bool, status: StatusCode, message: String) -> Response<ProxyBody> {
    pool.metrics.count_response(status);
    let mut resp = local(status, message);
    if tag {
        resp.headers_mut()
            .insert(&headers::X_SWITCHYARD_DEPLOYMENT, pool.header_value.clone());
    }
    resp
}
