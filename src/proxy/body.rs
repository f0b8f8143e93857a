//! Response bodies sent to clients.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;
use tracing::field;

use super::client_conn::RequestGuard;
use super::upstream::{self, ResponseBody, UpstreamError};
use crate::metrics::UpstreamErrorKind;
use crate::routing::{Pool, Replica};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One request counted against its replica from the moment the replica is chosen, and against
/// its pool from the moment it is sent, until the response body ends or is dropped (not until
/// the headers: inference streams last minutes).
///
/// Counting the replica from the choice, not from the connection, matters twice: a request
/// still connecting is load that the least-outstanding pick must see (or every request of a
/// burst picks the fresh replica whose connections are still opening), and a draining replica
/// must not be stopped under a request that chose it and has yet to connect.
pub struct InFlight {
    pub replica: Arc<Replica>,
    pub pool: Arc<Pool>,
    started: Instant,
    /// When the response body ended, if its end already read the clock.
    ended: Option<Instant>,
    /// Whether the request has gone to the replica: counted in the pool's in-flight gauge, and
    /// its latency recorded when it ends. A request that never connected has no latency.
    sent: bool,
}

impl InFlight {
    /// A request that has chosen `replica`, counted against it from now on.
    pub fn chosen(replica: Arc<Replica>, pool: Arc<Pool>, started: Instant) -> Self {
        replica.begin_request();
        InFlight {
            replica,
            pool,
            started,
            ended: None,
            sent: false,
        }
    }

    /// The request moves to another replica of the pool (its connect failed): counted against
    /// the new one before the old one lets go.
    pub fn move_to(&mut self, next: Arc<Replica>) {
        next.begin_request();
        std::mem::replace(&mut self.replica, next).end_request();
    }

    /// When the request arrived.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The request is being sent: from now on it counts in the pool's gauge. Once only, so a
    /// request sent again on a fresh connection (a pooled one was closing) counts once.
    pub fn sending(&mut self) {
        if !self.sent {
            self.sent = true;
            self.pool.metrics.in_flight.inc();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.replica.end_request();
        if !self.sent {
            return;
        }
        let m = &self.pool.metrics;
        m.in_flight.dec();
        let ended = self.ended.unwrap_or_else(Instant::now);
        m.stats
            .latency(ended.saturating_duration_since(self.started));
    }
}

/// When the body's chunks arrived, for time to first byte, inter-chunk gaps and time per
/// output chunk. Only streamed bodies (SSE, chunked) take a clock reading per chunk.
struct ChunkTiming {
    streamed: bool,
    first: Option<Instant>,
    last: Option<Instant>,
    chunks: u32,
    ended: bool,
}

impl ChunkTiming {
    /// A data chunk arrived; `now` reads the clock, called only when the reading is used.
    fn chunk(&mut self, in_flight: &InFlight, now: impl FnOnce() -> Instant) {
        self.chunks = self.chunks.saturating_add(1);
        let m = &in_flight.pool.metrics;
        match self.last {
            None => {
                let now = now();
                let ttfb = now.duration_since(in_flight.started);
                m.stats.first_byte(ttfb);
                self.first = Some(now);
                self.last = Some(now);
            }
            Some(last) if self.streamed => {
                let now = now();
                let gap = now.duration_since(last);
                m.stats.inter_chunk(gap);
                self.last = Some(now);
            }
            Some(_) => {}
        }
    }

    /// The body ended cleanly (or was empty from the start).
    fn end(&mut self, in_flight: &InFlight) {
        if self.ended {
            return;
        }
        self.ended = true;
        let m = &in_flight.pool.metrics;
        match (self.first, self.last) {
            (None, _) => {
                let ttfb = in_flight.started.elapsed();
                m.stats.first_byte(ttfb);
            }
            (Some(first), Some(last)) if self.streamed && self.chunks > 1 => {
                let per = last.duration_since(first) / (self.chunks - 1);
                m.stats.time_per_output_chunk(per);
            }
            _ => {}
        }
    }
}

/// A body streamed from a replica. When it ends cleanly its connection goes back to the
/// worker's pool; when it is dropped early (the client went away) the connection is closed,
/// which is what tells an inference server to stop generating.
pub struct UpstreamBody {
    inner: ResponseBody,
    in_flight: InFlight,
    max_idle_per_replica: usize,
    idle_timeout: Option<Duration>,
    /// Armed only once the body has to wait, so quick responses allocate no timer. It is not
    /// moved on every frame (that re-files it in the timer wheel, once per streamed token):
    /// when it fires early because frames came since, it is re-armed from `last_frame`.
    idle: Option<Pin<Box<Sleep>>>,
    /// When the last frame came, kept only while `idle` is armed.
    last_frame: Option<tokio::time::Instant>,
    /// The waker `idle` was last polled with.
    idle_waker: Option<Waker>,
    timing: ChunkTiming,
}

impl UpstreamBody {
    pub fn new(
        inner: ResponseBody,
        in_flight: InFlight,
        max_idle_per_replica: usize,
        idle_timeout: Option<Duration>,
        streamed: bool,
    ) -> Self {
        UpstreamBody {
            inner,
            in_flight,
            max_idle_per_replica,
            idle_timeout,
            idle: None,
            last_frame: None,
            idle_waker: None,
            timing: ChunkTiming {
                streamed,
                first: None,
                last: None,
                chunks: 0,
                ended: false,
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no data from replica {replica} of deployment {deployment:?} for {after:?}; stream cut")]
pub struct BodyIdleTimeout {
    deployment: String,
    replica: std::net::SocketAddr,
    after: Duration,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let data = frame.data_ref().is_some_and(|d| !d.is_empty());
                // One clock reading serves both the idle timer and the chunk timing.
                let mut now = None;
                let mut read_clock = || *now.get_or_insert_with(tokio::time::Instant::now);
                if this.idle.is_some() {
                    this.last_frame = Some(read_clock());
                }
                if data {
                    this.timing
                        .chunk(&this.in_flight, || read_clock().into_std());
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) if e.is_client_body() => {
                if matches!(e, UpstreamError::ClientBodyTimeout(_)) {
                    this.in_flight
                        .pool
                        .metrics
                        .count_error(UpstreamErrorKind::ClientBodyTimeout);
                }
                // The client's request body broke mid-stream; the replica did nothing wrong.
                tracing::debug!(
                    deployment = field::display(&this.in_flight.pool.deployment),
                    error = field::display(&e),
                    "request body failed while the response streamed"
                );
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Err(e))) => {
                let m = &this.in_flight.pool.metrics;
                m.count_error(UpstreamErrorKind::Protocol);
                m.stats.stream_cut();
                tracing::warn!(
                    deployment = field::display(&this.in_flight.pool.deployment),
                    replica = field::display(this.in_flight.replica.addr),
                    error = field::display(&e),
                    "response body from replica broke off"
                );
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.timing.end(&this.in_flight);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let Some(t) = this.idle_timeout else {
                    return Poll::Pending;
                };
                let sleep = match &mut this.idle {
                    Some(sleep) => sleep,
                    None => {
                        let now = tokio::time::Instant::now();
                        this.last_frame = Some(now);
                        this.idle
                            .insert(Box::pin(tokio::time::sleep_until(now + t)))
                    }
                };
                loop {
                    // The timer keeps the waker it was last polled with. The servers poll a
                    // body again once its last frame is written (hyper's HTTP/2 server after
                    // every flush), so many polls find nothing new; while
                    // the timer has not fired and the waker is the same, polling it would
                    // only register that waker again (~120 instructions, twice per event).
                    let same_waker = this
                        .idle_waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()));
                    if same_waker && !sleep.is_elapsed() {
                        return Poll::Pending;
                    }
                    // Out of coop budget, `poll` yields before it registers anything.
                    let registers = tokio::task::coop::has_budget_remaining();
                    if sleep.as_mut().poll(cx).is_pending() {
                        if !registers {
                            this.idle_waker = None;
                        } else if !same_waker {
                            this.idle_waker = Some(cx.waker().clone());
                        }
                        return Poll::Pending;
                    }
                    // Fired, which took the waker: whatever comes next polls it again.
                    this.idle_waker = None;
                    // Frames that came since it was armed push the deadline on.
                    let deadline = this.last_frame.map(|at| at + t);
                    if let Some(deadline) = deadline.filter(|d| *d > tokio::time::Instant::now()) {
                        sleep.as_mut().reset(deadline);
                        continue;
                    }
                    let p = &this.in_flight.pool;
                    p.metrics.count_error(UpstreamErrorKind::BodyIdleTimeout);
                    p.metrics.stats.stream_cut();
                    let e = BodyIdleTimeout {
                        deployment: p.deployment.to_string(),
                        replica: this.in_flight.replica.addr,
                        after: t,
                    };
                    tracing::warn!("{e}");
                    // The response is unfinished, so its connection is never reused.
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // The servers do not poll a body that has no place in the response (a 204, or a HEAD
        // answer).
        if self.inner.is_end_stream() {
            self.timing.end(&self.in_flight);
        }
        // One clock reading for the pooled connection's age and the request's latency.
        let now = Instant::now();
        self.in_flight.ended = Some(now);
        if let Some(conn) = self.inner.take_reusable() {
            upstream::checkin(
                self.in_flight.replica.id,
                conn,
                self.max_idle_per_replica,
                now,
            );
        }
    }
}

/// What the proxy answers with: a replica's stream, or a short message of its own.
pub struct ProxyBody {
    inner: Inner,
    /// Keeps the client connection counted busy until the server has written the body and
    /// dropped it (see [`super::client_conn::Activity`]).
    request: Option<RequestGuard>,
}

enum Inner {
    /// Boxed, at one allocation per proxied response: the response is moved several times on
    /// its way into the server, and an inline upstream body made each move 350 bytes larger (fewer
    /// instructions per request with the box than without, benches/README.md).
    Upstream(Box<UpstreamBody>),
    Local(Option<Bytes>),
}

impl ProxyBody {
    pub fn empty() -> Self {
        Self::local(None)
    }

    pub fn text(s: impl Into<Bytes>) -> Self {
        Self::local(Some(s.into()))
    }

    fn local(b: Option<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Local(b),
            request: None,
        }
    }

    pub fn upstream(body: UpstreamBody) -> Self {
        ProxyBody {
            inner: Inner::Upstream(Box::new(body)),
            request: None,
        }
    }

    /// Whether the replica streams this body (server-sent events, chunked or unsized), so
    /// each piece should reach the client as it comes; a sized body may be written in bigger
    /// pieces.
    pub fn is_streamed(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.timing.streamed,
            Inner::Local(_) => false,
        }
    }

    /// The body, holding `request` until it is dropped.
    pub fn held_by(mut self, request: RequestGuard) -> Self {
        self.request = Some(request);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Upstream(b) => Pin::new(&mut **b).poll_frame(cx),
            Inner::Local(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(b) => b.size_hint(),
            Inner::Local(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn pool(metrics: &Metrics) -> Arc<Pool> {
        Arc::new(Pool {
            model: "m".into(),
            environment: "e".into(),
            deployment: "d".into(),
            replicas: (0..2u16)
                .map(|i| {
                    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i));
                    Arc::new(Replica::new(u64::from(i), addr, "d".into()))
                })
                .collect(),
            metrics: metrics.pool("m", "e", "d"),
            header_value: http::HeaderValue::from_static("d"),
        })
    }

    fn latency_count(metrics: &Metrics) -> String {
        let text = String::from_utf8(metrics.encode()).unwrap();
        text.lines()
            .find(|l| l.starts_with("switchyard_request_duration_seconds_count"))
            .map_or_else(String::new, |l| {
                l.rsplit(' ').next().unwrap_or("").to_owned()
            })
    }

    /// The replica counts a request from its choice; the pool's gauge and latency only once it
    /// is sent, and once however often it is sent.
    #[test]
    fn a_request_counts_against_its_replica_from_the_choice_and_its_pool_once_sent() {
        let metrics = Metrics::new();
        let p = pool(&metrics);
        let (a, b) = (p.replicas[0].clone(), p.replicas[1].clone());
        let mut req = InFlight::chosen(a.clone(), p.clone(), Instant::now());
        assert_eq!((a.outstanding(), b.outstanding()), (1, 0));
        assert_eq!(p.metrics.in_flight.get(), 0);

        // Its connect failed: it moves to the other replica.
        req.move_to(b.clone());
        assert_eq!((a.outstanding(), b.outstanding()), (0, 1));

        // Sent, then sent again on a fresh connection (a pooled one was closing).
        req.sending();
        req.sending();
        assert_eq!(p.metrics.in_flight.get(), 1);
        drop(req);
        assert_eq!(
            (a.outstanding(), b.outstanding(), p.metrics.in_flight.get()),
            (0, 0, 0)
        );
        assert_eq!(latency_count(&metrics), "1");

        // A request that never connected leaves no latency sample.
        drop(InFlight::chosen(a.clone(), p.clone(), Instant::now()));
        assert_eq!((a.outstanding(), p.metrics.in_flight.get()), (0, 0));
        assert_eq!(latency_count(&metrics), "1");
    }
}
