//! Serving one client connection: choosing HTTP/1.1 or HTTP/2, running the proxy's own
//! HTTP/1.1 server ([`super::http1`]) or hyper's HTTP/2 server on it, and draining it when the
//! worker shuts down.
//!
//! hyper-util's `auto` builder does the protocol choice by reading the first bytes and handing
//! them back through a rewind wrapper. hyper's first read then sees only those few bytes, needs
//! a second read for the rest of the head, and grows its 8 KiB read buffer to 16 KiB on every
//! connection. Peeking at the socket (plain TCP) or asking rustls for the ALPN result (TLS)
//! decides the same thing without consuming anything, so each connection keeps one 8 KiB
//! buffer: about 8 kB less per open connection under load (see benches/memory.sh).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::body::ProxyBody;
use super::client_body::ClientBody;
use super::http1;
use super::ConnInfo;

/// The client connection preface every HTTP/2 connection without TLS starts with (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A client that opened a connection must send its first request head (or the HTTP/2 preface)
/// within this time by default, and an HTTP/1.1 connection without a request in progress is
/// closed after it (`server.client_header_timeout_seconds`; see `until_drained`).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(30);

/// Time a client has to complete the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How each protocol is served; built once per worker.
pub struct Protocols {
    http2: http2::Builder<TokioExecutor>,
    /// For the first bytes, then for every request head (idle keep-alive included): an
    /// HTTP/1.1 connection without a request in progress for this long is closed.
    header_timeout: Duration,
}

impl Protocols {
    pub fn new(header_timeout: Duration) -> Self {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(1024)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        Protocols {
            http2,
            header_timeout,
        }
    }
}

impl Default for Protocols {
    fn default() -> Self {
        Self::new(FIRST_BYTES_TIMEOUT)
    }
}

/// Which protocol the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// Serves a connection without TLS, telling HTTP/2 with prior knowledge from HTTP/1.1 by its
/// first bytes.
pub async fn serve_plain<S>(
    protocols: Arc<Protocols>,
    stream: TcpStream,
    peer: SocketAddr,
    (service, info): (S, Arc<ConnInfo>),
    drain: watch::Receiver<()>,
) where
    S: ProxyService,
{
    let mut drain = drain;
    // A connection that has sent nothing yet is simply closed when the worker drains.
    let protocol = tokio::select! {
        p = sniff(&stream, protocols.header_timeout) => p,
        _ = drain.changed() => None,
    };
    let Some(protocol) = protocol else {
        return;
    };
    let result = serve(protocols, protocol, stream, service, &info, drain).await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// Serves a TLS connection: handshake, then HTTP/2 or HTTP/1.1 as agreed by ALPN.
pub async fn serve_tls<S>(
    protocols: Arc<Protocols>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    (service, info): (S, Arc<ConnInfo>),
    drain: watch::Receiver<()>,
) where
    S: ProxyService,
{
    let mut drain = drain;
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = match tokio::select! {
        r = handshake => r,
        // Still in the handshake when the worker drains: no request to finish, so close.
        _ = drain.changed() => return,
    } {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let protocol = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Protocol::Http2,
        _ => Protocol::Http1,
    };
    let result = serve(protocols, protocol, tls, service, &info, drain).await;
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// The service every client connection runs: [`super::forward::proxy`] behind a closure.
pub trait ProxyService:
    Fn(Request<ClientBody>) -> Self::Fut + Clone + Send + Sync + 'static
{
    type Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static;
}

impl<S, F> ProxyService for S
where
    S: Fn(Request<ClientBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    type Fut = F;
}

/// Tells HTTP/2 with prior knowledge from HTTP/1.1 by peeking at the first bytes, leaving them in
/// the socket for the server. `None` when the client sent nothing usable in time.
async fn sniff(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    let sniffing = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // Part of the preface so far. The socket stays readable with the same bytes in it,
            // so wait a moment for the rest instead of peeking in a loop.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(within, sniffing).await.ok().flatten()
}

/// Serves the connection until it closes. When `drain` changes, the connection finishes the
/// requests in progress and closes (HTTP/1.1: after the current response; HTTP/2: GOAWAY).
async fn serve<IO, S>(
    protocols: Arc<Protocols>,
    protocol: Protocol,
    io: IO,
    service: S,
    info: &ConnInfo,
    drain: watch::Receiver<()>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ProxyService,
{
    match protocol {
        Protocol::Http1 => {
            let conn = pin!(http1::Connection::new(io, service));
            let idle = Some((&info.activity, protocols.header_timeout));
            let served = until_drained(conn, drain, idle, |c| c.graceful_shutdown()).await;
            // `None`: the watchdog closed a connection idle for too long.
            Ok(served.unwrap_or(Ok(()))?)
        }
        Protocol::Http2 => {
            let service =
                service_fn(move |req: Request<Incoming>| service(req.map(ClientBody::H2)));
            // Boxed: HTTP/2 state is twice the size of HTTP/1.1's and most clients speak 1.1.
            let mut conn = Box::pin(protocols.http2.serve_connection(TokioIo::new(io), service));
            let served = until_drained(conn.as_mut(), drain, None, |c| c.graceful_shutdown()).await;
            Ok(served.unwrap_or(Ok(()))?)
        }
    }
}

/// Takes the connection pinned where the caller keeps it: an async fn taking it by value
/// would hold it twice (as its argument and as the pinned local), a few hundred bytes more on
/// every open connection.
///
/// The drain signal is polled only after it woke the task. `tokio::select!` would poll it
/// every time the connection is polled, several times per request, and each poll of a
/// `watch` change takes the channel's waiter lock: about 300 instructions per request
/// (benches/README.md, fourth pass of issue 15).
///
/// With `idle`, a watchdog closes the connection (`None`) once it has had no request in
/// progress for the given time: a client must send each request head within it, and an idle
/// keep-alive connection closes after it. The watchdog is one timer per connection that wakes
/// once per period; requests only mark the connection busy and idle.
async fn until_drained<C, T>(
    mut conn: Pin<&mut C>,
    mut drain: watch::Receiver<()>,
    idle: Option<(&Activity, Duration)>,
    shutdown: impl FnOnce(Pin<&mut C>),
) -> Option<T>
where
    C: Future<Output = T>,
{
    let signal = Arc::new(Signal::default());
    let signal_waker = Waker::from(signal.clone());
    let mut watchdog = pin!(idle.map(|(_, after)| tokio::time::sleep(after)));
    // Polled only after its timer fired, like the drain signal: a streamed response wakes the
    // task for every piece, and polling the timer each time cost about as much as the rest of
    // the wake-up.
    let watchdog_signal = Arc::new(Signal::default());
    let watchdog_waker = Waker::from(watchdog_signal.clone());
    let drained = {
        let mut changed = pin!(drain.changed());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(Some(out)));
            }
            signal.task.register(cx.waker());
            if signal.woken.swap(false, Ordering::AcqRel) {
                let mut signal_cx = Context::from_waker(&signal_waker);
                if changed.as_mut().poll(&mut signal_cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            if let (Some((activity, after)), Some(mut timer)) =
                (idle, watchdog.as_mut().as_pin_mut())
            {
                watchdog_signal.task.register(cx.waker());
                if !watchdog_signal.woken.swap(false, Ordering::AcqRel) {
                    return Poll::Pending;
                }
                let mut watchdog_cx = Context::from_waker(&watchdog_waker);
                while timer.as_mut().poll(&mut watchdog_cx).is_ready() {
                    match activity.idle_until(after) {
                        Some(next) => timer.as_mut().reset(next.into()),
                        None => return Poll::Ready(Some(None)),
                    }
                }
            }
            Poll::Pending
        })
        .await
    };
    if let Some(out) = drained {
        return out;
    }
    shutdown(conn.as_mut());
    // Keep `drain` alive until the connection is done: the worker waits for every receiver
    // to be dropped.
    let out = conn.await;
    drop(drain);
    Some(out)
}

/// Requests in progress on one client connection, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    busy: AtomicU32,
    /// Nanoseconds from `epoch` to when the last request in progress ended.
    idle_since: AtomicU64,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    /// `None` when the connection has been idle for `after`; otherwise when to look again.
    fn idle_until(&self, after: Duration) -> Option<Instant> {
        let now = Instant::now();
        if self.busy.load(Ordering::Acquire) > 0 {
            return Some(now + after);
        }
        let since = self.epoch + Duration::from_nanos(self.idle_since.load(Ordering::Acquire));
        let until = since + after;
        (until > now).then_some(until)
    }
}

/// Marks its connection busy from the moment the request's head arrived until the response
/// body is dropped (the server wrote it, or gave up on it).
pub struct RequestGuard(Arc<ConnInfo>);

impl RequestGuard {
    pub fn begin(info: Arc<ConnInfo>) -> Self {
        info.activity.busy.fetch_add(1, Ordering::AcqRel);
        RequestGuard(info)
    }

    pub fn info(&self) -> &ConnInfo {
        &self.0
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.0.activity;
        if activity.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = activity.epoch.elapsed().as_nanos();
            activity
                .idle_since
                .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
        }
    }
}

/// Wakes the connection's task when a signal (the drain, the idle watchdog's timer) fires, and
/// notes that it did, so that the signal is polled only then.
struct Signal {
    /// Set when the signal's future should be polled: at first, then after each wake.
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for Signal {
    fn default() -> Self {
        Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}
