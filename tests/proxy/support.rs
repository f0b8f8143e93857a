//! Test harness: real upstream servers, a real proxy and real clients on 127.0.0.1:0.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use switchyard::config::Settings;
use switchyard::routing::spec::WEIGHT_SCALE;
use switchyard::routing::{DeploymentSpec, EnvironmentSpec, ModelSpec, RoutingSpec};
use switchyard::server::RunningProxy;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

pub fn full(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

pub fn empty() -> TestBody {
    full(Bytes::new())
}

/// A body fed through a channel, so a test decides when each chunk leaves.
pub struct ChanBody(pub mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = mpsc::channel(16);
    (tx, ChanBody(rx).boxed())
}

/// A real HTTP server (h1 + h2c) with a handler closure; counts requests and connections.
pub struct Upstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    pub connections: Arc<AtomicUsize>,
}

pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), handler)
}

/// [`upstream`] on a listener the test bound (an address that was dead a moment ago, say).
pub fn upstream_on<F, Fut>(listener: TcpListener, handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let (r, c) = (requests.clone(), connections.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let r = r.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        requests,
        connections,
    }
}

/// An upstream that answers every request with its name in the body.
pub async fn named(name: &'static str) -> Upstream {
    upstream(move |_req| async move { Response::new(full(name)) }).await
}

/// An address where nothing listens (connections are refused).
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// One model `m`, environment `production`, deployments with replicas and weights (percent).
pub fn spec(deployments: &[(&str, Vec<SocketAddr>, u32)]) -> RoutingSpec {
    let total: u32 = deployments.iter().map(|d| d.2).sum();
    let weights: BTreeMap<String, u32> = deployments
        .iter()
        .map(|(id, _, w)| {
            let w = if total == 0 {
                0
            } else {
                (u64::from(*w) * u64::from(WEIGHT_SCALE) / u64::from(total)) as u32
            };
            (id.to_string(), w)
        })
        .collect();
    RoutingSpec {
        models: vec![ModelSpec {
            id: "m".into(),
            hosts: vec![],
            deployments: deployments
                .iter()
                .map(|(id, r, _)| DeploymentSpec {
                    id: id.to_string(),
                    replicas: r.clone(),
                })
                .collect(),
            environments: vec![EnvironmentSpec {
                name: "production".into(),
                hosts: vec![],
                weights,
            }],
        }],
    }
}

pub fn settings(routing: RoutingSpec) -> Settings {
    let mut s = Settings::with_routing(routing);
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.admin_listen = "127.0.0.1:0".parse().unwrap();
    s.workers = 2;
    s.shutdown_grace = Duration::from_secs(10);
    // No TCP probes of static endpoints: these suites count the connections requests make,
    // and test passive ejection of dead endpoints. `static_endpoints_are_probed` turns it on.
    s.upstream.static_probe_interval = None;
    s
}

pub fn start(settings: Settings) -> RunningProxy {
    switchyard::server::start(settings).unwrap()
}

/// An HTTP/1.1 client connection. Like every real client it sends `Host` (HTTP/1.1 requires
/// it): `test.local` unless the request names one.
pub async fn h1(addr: SocketAddr) -> H1 {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    H1(sender)
}

pub struct H1(hyper::client::conn::http1::SendRequest<TestBody>);

impl H1 {
    pub async fn send_request(
        &mut self,
        mut req: Request<TestBody>,
    ) -> hyper::Result<Response<Incoming>> {
        if !req.headers().contains_key(http::header::HOST) {
            req.headers_mut().insert(
                http::header::HOST,
                http::HeaderValue::from_static("test.local"),
            );
        }
        // hyper takes a request only once its connection task has finished the previous
        // exchange (or it fails it at once with "operation was canceled: connection was not
        // ready"): a client that sends right after reading a body can get there first.
        self.0.ready().await?;
        self.0.send_request(req).await
    }
}

/// An HTTP/2 prior-knowledge (h2c) client connection.
pub async fn h2c(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

pub struct Got {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn deployment(&self) -> Option<&str> {
        self.headers
            .get("x-switchyard-deployment")
            .and_then(|v| v.to_str().ok())
    }
}

pub async fn collect(resp: Response<Incoming>) -> Got {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and reads the whole response.
pub async fn send(addr: SocketAddr, req: Request<TestBody>) -> Got {
    let mut c = h1(addr).await;
    let resp = c.send_request(req).await.unwrap();
    collect(resp).await
}

pub async fn get(addr: SocketAddr, path: &str) -> Got {
    send(
        addr,
        Request::get(path)
            .header("host", "test.local")
            .body(empty())
            .unwrap(),
    )
    .await
}

/// GETs a URL on the admin listener and returns its body as text.
pub async fn admin(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    let g = get(addr, path).await;
    (g.status, g.text())
}

/// The value of one sample in Prometheus text, by exact series text.
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.trim().parse().ok())
    })
}

/// Waits until `f` is true, up to `within`.
pub async fn eventually(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

/// Writes raw bytes on a new connection and reads until the server closes it (at most 5 s).
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// Each worker's `switchyard_worker_client_connections` in a `/metrics` text.
pub fn open_per_worker(m: &str, workers: usize) -> Vec<f64> {
    (0..workers)
        .map(|w| {
            let series = format!("switchyard_worker_client_connections{{worker=\"{w}\"}}");
            sample(m, &series).unwrap_or_else(|| panic!("no gauge for worker {w}:\n{m}"))
        })
        .collect()
}
