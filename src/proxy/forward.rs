//! One request, from routing to the response handed back to the client connection's server,
//! in four stages:
//!
//! 1. `route`: one snapshot load chooses the pool, a replica and the prefix to strip.
//! 2. `connect`: a pooled or new connection; a failed connect moves on to another replica.
//! 3. `send`: the request goes out and the response head comes back, within the
//!    response-header timeout. No retry once a byte went upstream.
//! 4. `respond`: the head as the client gets it, and the body streaming behind it.
//!
//! Every way these can fail is a `ForwardError`, which alone decides the status code,
//! body, deployment tag, metrics and log line of the answer.

mod error;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::future::FutureExt;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::AsyncWriteExt;
use tracing::field;

use self::error::ForwardError;
use super::body::{InFlight, ProxyBody, UpstreamBody};
use super::client_body::{ClientBody, ClientUpgrade};
use super::client_conn::RequestGuard;
use super::headers::{self, Forwarding};
use super::upstream::{self, Conn, ResponseBody, SendError, Timeouts, UpstreamError};
use crate::config::UpstreamSettings;
use crate::routing::{Pool, Replica, Route, Router};

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
    /// Requests in progress, for the connection's idle watchdog.
    pub activity: super::client_conn::Activity,
}

/// At most this many replicas are tried for one request (config caps attempts at 16).
const MAX_TRIED: usize = 16;
/// Pooled connections found closing (no byte of the request sent) before giving up.
const MAX_STALE_RETRIES: u32 = 2;

/// Proxies one request. Never fails: problems become 4xx/5xx responses with a short body. The
/// response body holds `request` (its connection's busy mark) until it is dropped.
///
/// One async body from the server's call to the response: every async stage nested in another
/// is moved into its parent's state when awaited, and the server moves the whole future into
/// its connection's state once more, so each level cost a copy of the request's state (about
/// 1 kB) per request. The work before the exchange is the synchronous [`prepare`].
pub async fn proxy(
    ctx: Arc<ProxyContext>,
    request: RequestGuard,
    req: Box<Request<ClientBody>>,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let resp = match prepare(&ctx, req, started) {
        Err(resp) => resp,
        Ok(Prepared {
            target,
            req,
            host,
            client_version,
            client_upgrade,
        }) => {
            let conn = request.info();
            let forwarding = Forwarding {
                peer: &conn.peer_ip,
                proto: conn.proto,
                host: host.as_ref(),
            };
            let exchanged = exchange(&ctx.upstream, target.chosen, req, &forwarding).await;
            exchanged
                .and_then(|(in_flight, response)| {
                    respond(&ctx, in_flight, response, client_version, client_upgrade)
                })
                .unwrap_or_else(|e| e.into_response(ctx.deployment_header))
        }
    };
    Ok(resp.map(|body| body.held_by(request)))
}

/// A request ready to go upstream: routed, stripped of hop-by-hop headers, its path rewritten.
struct Prepared {
    target: Target,
    req: Box<Request<ClientBody>>,
    /// The Host asked for, for the upstream head.
    host: Option<HeaderValue>,
    client_version: Version,
    client_upgrade: Option<ClientUpgrade>,
}

/// Everything before the exchange: the request's own checks, the route (stage 1) and the
/// request made fit for the replica; or the response that refuses it.
// Both sides are consumed at once by the caller; boxing the refusal would only add an allocation.
#[allow(clippy::result_large_err)]
fn prepare(
    ctx: &ProxyContext,
    mut req: Box<Request<ClientBody>>,
    started: Instant,
) -> Result<Prepared, Response<ProxyBody>> {
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
        return Err(resp);
    }
    // RFC 9112 3.2: a request with more than one Host, or an HTTP/1.1 request with none, gets
    // a 400 (HTTP/2 carries the authority in `:authority`; HTTP/1.0 may omit Host).
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next().cloned();
    let more_hosts = hosts.next().is_some();
    if more_hosts || (host_header.is_none() && req.version() == Version::HTTP_11) {
        return Err(local(
            StatusCode::BAD_REQUEST,
            if more_hosts {
                "more than one Host header"
            } else {
                "an HTTP/1.1 request needs a Host header"
            },
        ));
    }
    let refused = |e: ForwardError| e.into_response(ctx.deployment_header);
    let target = route(&ctx.router, &req, host_header.as_ref(), started).map_err(refused)?;
    // The Host asked for (the header, or for HTTP/2 the URI authority), taken before
    // stripping: `Connection: host` must not hide it. One value held across the exchange.
    let host = host_header.or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let client_version = req.version();
    let upgrade = headers::is_upgrade(req.headers()) && req.version() == Version::HTTP_11;
    let client_upgrade = upgrade.then(|| ClientUpgrade::take(&mut req));
    // Strip before adding forwarding headers, so `Connection: x-forwarded-for` cannot remove
    // the client address the proxy adds.
    headers::strip_hop_by_hop(req.headers_mut(), upgrade);
    rewrite_path(&mut req, target.strip).map_err(|e| refused(ForwardError::BadRequest(e)))?;
    *req.version_mut() = Version::HTTP_11;
    Ok(Prepared {
        target,
        req,
        host,
        client_version,
        client_upgrade,
    })
}

/// Where the routing decision sends a request.
struct Target {
    /// The pool and replica chosen, the request already counted against the replica.
    chosen: InFlight,
    /// Bytes of routing prefix to strip from the path.
    strip: usize,
}

/// Stage 1, route: one snapshot load chooses the pool and a replica; only the Arcs needed
/// across awaits are kept. The request counts against the replica from here, in the same
/// breath as the pick: the next request's pick sees it, and a drain that begins now waits
/// for it.
fn route(
    router: &Router,
    req: &Request<ClientBody>,
    host_header: Option<&HeaderValue>,
    started: Instant,
) -> Result<Target, ForwardError> {
    // The Host the client addressed: the URI authority (HTTP/2, absolute form) or the header.
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host_header.and_then(|h| h.to_str().ok()));
    let snapshot = router.load();
    let resolved = snapshot
        .resolve(host, req.uri().path())
        .map_err(ForwardError::NoRoute)?;
    let mut rng = rand::rng();
    let pool = match resolved.route {
        Route::Pinned(p) => p,
        Route::Split(env) => env
            .pick_pool(&mut rng)
            .ok_or_else(|| ForwardError::NoTraffic {
                environment: env.name.clone(),
                model: resolved.model.id.clone(),
            })?,
    };
    match pool.pick_replica(&mut rng, &[]) {
        Some(replica) => Ok(Target {
            chosen: InFlight::chosen(replica.clone(), pool.clone(), started),
            strip: resolved.strip,
        }),
        None => Err(ForwardError::NoReplica { pool: pool.clone() }),
    }
}

/// Stages 2 and 3: a connection (stage 2), the request sent on it and the response head
/// awaited (stage 3). A pooled connection found closing before a byte of the request went out
/// is replaced; once bytes went upstream there is no retry.
async fn exchange(
    cfg: &UpstreamSettings,
    mut in_flight: InFlight,
    mut req: Box<Request<ClientBody>>,
    forwarding: &Forwarding<'_>,
) -> Result<(InFlight, Response<ResponseBody>), ForwardError> {
    let mut tried = Tried::default();
    let mut stale_retries = 0u32;
    loop {
        let conn = connect(cfg, &mut in_flight, &mut tried).await?;
        in_flight.sending();
        match send(
            cfg,
            &in_flight.pool,
            &in_flight.replica,
            conn,
            req,
            forwarding,
        )
        .await
        {
            Ok(response) => return Ok((in_flight, response)),
            Err(Unanswered::NotSent(back, _)) if stale_retries < MAX_STALE_RETRIES => {
                stale_retries += 1;
                req = back;
            }
            Err(Unanswered::NotSent(_, e)) => {
                return Err(ForwardError::Upstream {
                    pool: in_flight.pool.clone(),
                    replica: in_flight.replica.addr,
                    error: UpstreamError::Send(e),
                })
            }
            Err(Unanswered::Failed(e)) => return Err(e),
        }
    }
}

/// Replicas a request failed to connect to, so that a retry picks another.
#[derive(Default)]
struct Tried {
    ids: [u64; MAX_TRIED],
    len: usize,
}

/// Stage 2, connect: a pooled connection to the chosen replica, or a new one. A failed connect
/// (nothing was sent) moves the request on to another replica of the pool, up to
/// `max_connect_attempts` in all; `in_flight` is left counted against the one connected to.
async fn connect(
    cfg: &UpstreamSettings,
    in_flight: &mut InFlight,
    tried: &mut Tried,
) -> Result<Conn, ForwardError> {
    let max_attempts = (cfg.max_connect_attempts as usize).min(MAX_TRIED);
    // The request's start is the clock for the first look at the pool; after a failed connect
    // (which may have taken its timeout) the clock is read again.
    let mut first = Some(in_flight.started());
    loop {
        let replica = &in_flight.replica;
        let now = first.take().unwrap_or_else(Instant::now);
        if let Some(conn) = upstream::checkout(replica.id, cfg.pool_idle_timeout, now) {
            return Ok(conn);
        }
        let error = match upstream::connect(replica.addr, cfg.connect_timeout).await {
            Ok(conn) => {
                replica.record_connect_success();
                return Ok(conn);
            }
            Err(e) => e,
        };
        let ejected = replica.record_connect_failure(cfg.eject_after_failures, cfg.eject_duration);
        let pool = &in_flight.pool;
        let failed = ForwardError::Connect {
            pool: pool.clone(),
            replica: replica.addr,
            error,
            ejected,
        };
        tried.ids[tried.len] = replica.id;
        tried.len += 1;
        let next = if tried.len < max_attempts {
            pool.pick_replica(&mut rand::rng(), &tried.ids[..tried.len])
        } else {
            None
        };
        match next {
            Some(next) => {
                // Counted and logged like the last failure, which becomes the response.
                failed.record();
                let next = next.clone();
                in_flight.move_to(next);
            }
            None => return Err(failed),
        }
    }
}

/// Why stage 3 produced no response head.
enum Unanswered {
    /// Not a byte reached the replica (a pooled connection was closing): the request is back.
    NotSent(Box<Request<ClientBody>>, io::Error),
    Failed(ForwardError),
}

/// Stage 3, send: writes the request and waits for the response head, at most
/// `response_header_timeout`. The request body keeps streaming with the response body.
///
/// Built from combinators rather than as an `async fn`: an async stage keeps what it awaits a
/// second time beside its arguments, and this one would have held the connection's whole
/// exchange twice.
fn send<'a>(
    cfg: &'a UpstreamSettings,
    pool: &'a Arc<Pool>,
    replica: &'a Arc<Replica>,
    conn: Conn,
    req: Box<Request<ClientBody>>,
    forwarding: &Forwarding<'_>,
) -> impl Future<Output = Result<Response<ResponseBody>, Unanswered>> + 'a {
    let timeouts = Timeouts {
        response_header: cfg.response_header_timeout,
        request_body_idle: cfg.request_body_idle_timeout,
    };
    let sent = conn.send(req, forwarding, timeouts, replica);
    sent.map(move |sent| match sent {
        Err(SendError::HeaderTimeout) => Err(Unanswered::Failed(ForwardError::HeaderTimeout {
            pool: pool.clone(),
            replica: replica.addr,
            after: cfg.response_header_timeout.unwrap_or_default(),
        })),
        Err(SendError::NotSent(back, e)) => Err(Unanswered::NotSent(back, e)),
        Err(SendError::Failed(error)) if error.is_client_body() => {
            Err(Unanswered::Failed(ForwardError::ClientBody {
                pool: pool.clone(),
                error,
            }))
        }
        Err(SendError::Failed(error)) => Err(Unanswered::Failed(ForwardError::Upstream {
            pool: pool.clone(),
            replica: replica.addr,
            error,
        })),
        Ok(response) => Ok(response),
    })
}

/// Stage 4, respond: the replica's head as the client gets it (its protocol version, the
/// deployment tag; the codec dropped the hop-by-hop headers), with a body that counts the
/// request in flight until it ends; or, for a 101, the tunnel.
fn respond(
    ctx: &ProxyContext,
    in_flight: InFlight,
    response: Response<ResponseBody>,
    client_version: Version,
    client_upgrade: Option<ClientUpgrade>,
) -> Result<Response<ProxyBody>, ForwardError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS && client_upgrade.is_none() {
        // The socket now speaks an unknown protocol: dropped with the response.
        return Err(ForwardError::UnaskedSwitch {
            pool: in_flight.pool.clone(),
            replica: in_flight.replica.addr,
        });
    }

    in_flight.pool.metrics.count_response(response.status());
    let (mut parts, body) = response.into_parts();
    // Answer in the client's protocol version, whatever the replica spoke.
    parts.version = client_version;
    if ctx.deployment_header {
        parts.headers.insert(
            &headers::X_SWITCHYARD_DEPLOYMENT,
            in_flight.pool.header_value.clone(),
        );
    }

    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        return match (client_upgrade, body.into_upgraded()) {
            (Some(client_upgrade), Some(upstream)) => {
                tokio::spawn(tunnel(client_upgrade, upstream, in_flight));
                Ok(Response::from_parts(parts, ProxyBody::empty()))
            }
            // The request body was still uploading: the socket cannot change protocols.
            _ => Err(ForwardError::SwitchedEarly {
                pool: in_flight.pool.clone(),
                replica: in_flight.replica.addr,
            }),
        };
    }
    // The codec left the hop-by-hop headers out of the head already.
    let cfg = &ctx.upstream;
    let streamed = body.is_streamed();
    let body = UpstreamBody::new(
        body,
        in_flight,
        cfg.pool_max_idle_per_replica,
        cfg.body_idle_timeout,
        streamed,
    );
    Ok(Response::from_parts(parts, ProxyBody::upstream(body)))
}

/// Makes the request's target fit for an HTTP/1.1 replica: origin form, without the routing
/// prefix. (Host and the forwarding headers are written as the head is encoded.)
fn rewrite_path(req: &mut Request<ClientBody>, strip: usize) -> Result<(), &'static str> {
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
    Ok(())
}

/// Bridges an upgraded (e.g. WebSocket) connection: client bytes to the replica and back.
async fn tunnel(
    client: ClientUpgrade,
    (mut upstream, early): (tokio::net::TcpStream, Bytes),
    in_flight: InFlight,
) {
    let mut client = match client.switched().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                deployment = field::display(&in_flight.pool.deployment),
                error = field::display(e),
                "protocol upgrade did not complete"
            );
            return;
        }
    };
    // Bytes of the new protocol the replica sent right behind its 101.
    if !early.is_empty() {
        if let Err(e) = client.write_all(&early).await {
            tracing::debug!(
                deployment = field::display(&in_flight.pool.deployment),
                error = field::display(e),
                "upgraded connection closed"
            );
            return;
        }
    }
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(
            deployment = field::display(&in_flight.pool.deployment),
            error = field::display(e),
            "upgraded connection closed"
        );
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

#[cfg(test)]
mod tests {

    use super::*;

    /// The size of the future a function returns, without calling it.
    fn future_size<A, B, C, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    fn future_size5<A, B, C, D, E, F, Fut>(_: F) -> usize
    where
        F: FnOnce(A, B, C, D, E) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A connection keeps its request future in state as large as the future, and moves it
    /// there for every request: an async stage taking the request or the connection by value
    /// keeps it twice, and the future had grown to 4 kB that way (benches/README.md, third
    /// pass of issue 15).
    #[test]
    fn request_futures_stay_small() {
        let proxy =
            future_size::<Arc<ProxyContext>, RequestGuard, Box<Request<ClientBody>>, _, _>(proxy);
        let send = future_size5::<
            Conn,
            Box<Request<ClientBody>>,
            &'static Forwarding<'static>,
            Timeouts,
            &'static Arc<Replica>,
            _,
            _,
        >(Conn::send);
        // 1,064 and 528 bytes when written; 3,704 and 1,424 before the third pass.
        assert!(proxy <= 1536, "the request future is {proxy} bytes");
        assert!(send <= 768, "an upstream exchange's future is {send} bytes");
    }
}
