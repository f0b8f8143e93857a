//! One HTTP/1.1 connection to a replica.
//!
//! switchyard speaks HTTP/1.1 to replicas itself rather than through hyper's client
//! connection. hyper's client runs each connection as its own task fed by an unbounded
//! channel, with an 8 KiB write buffer: about 25 kB per upstream connection before a byte is
//! read (see benches/README.md). Here the request future owns the socket: it writes the head
//! and body, reads the response head, and hands the socket to the response body, which gives
//! it back to the worker's pool when the body ends cleanly. Dropping the body early closes the
//! socket, which is how an inference server learns the client went away.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use crate::proxy::client_body::{ClientBody, ClientBodyError};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::codec::{self, BodyDecoder, Decoded, ProtocolError, RequestFraming};
use crate::proxy::headers::Forwarding;
use crate::routing::snapshot::{Replica, Uploading};

/// First read of a response on a new connection: a head and a small body (inference JSON, SSE
/// events). Each connection then sizes its first read by the responses it gets, between
/// `FIRST_READ_MIN` and `FIRST_READ_MAX`: every request in flight holds one such buffer.
const FIRST_READ: usize = 2048;
const FIRST_READ_MIN: usize = 1024;
const FIRST_READ_MAX: usize = 16 * 1024;
/// Reads of a long body grow up to this when they keep filling the buffer.
const MAX_READ: usize = 64 * 1024;
/// Request body pieces up to this size are copied into one write with their chunk framing.
const COALESCE: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("connection closed before a response head arrived")]
    ClosedBeforeHead,
    #[error("connection closed before the response body ended")]
    ClosedMidBody,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("sending the request failed: {0}")]
    Send(io::Error),
    #[error("the client's request body failed: {0}")]
    ClientBody(ClientBodyError),
    #[error("the client sent no request body bytes for {0:?}")]
    ClientBodyTimeout(Duration),
}

impl UpstreamError {
    /// The client's doing, not the replica's.
    pub fn is_client_body(&self) -> bool {
        matches!(
            self,
            UpstreamError::ClientBody(_) | UpstreamError::ClientBodyTimeout(_)
        )
    }
}

/// Why a request did not get a response.
#[derive(Debug)]
pub enum SendError {
    /// Not a byte reached the replica: the request can be sent on another connection.
    NotSent(Box<Request<ClientBody>>, io::Error),
    Failed(UpstreamError),
    /// No response head within the response-header timeout.
    HeaderTimeout,
}

/// How long a request may wait on the replica.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// From sending the request to the whole response head.
    pub response_header: Option<Duration>,
    /// Between pieces of the request body coming from the client.
    pub request_body_idle: Option<Duration>,
}

/// An open connection to a replica, idle between requests.
pub struct Conn {
    io: TcpStream,
    /// Bytes read but not used yet. Empty (no allocation) while the connection is idle.
    buf: BytesMut,
    /// Reused by every request head sent (a few hundred bytes).
    head: Vec<u8>,
    /// Response header names by position, reused across responses.
    seen: codec::HeadScratch,
    /// The size of the next response's first read (see `FIRST_READ`).
    first_read: usize,
    /// The response-header timer, kept for the connection's life and moved to each request's
    /// deadline. A new timer per request cost a timer-wheel insert and removal every time; a
    /// later deadline on a timer still waiting is one atomic update.
    head_timer: Option<Pin<Box<Sleep>>>,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            head: Vec::new(),
            seen: codec::HeadScratch::default(),
            first_read: FIRST_READ,
            head_timer: None,
        }
    }

    /// False when the replica closed the connection or sent bytes nobody asked for. Costs no
    /// system call unless the socket has signalled activity since it was last read.
    pub fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends the request, with the proxy's `forwarding` headers, and waits for the response
    /// head; the body streams after. The request
    /// body keeps streaming after the response head arrives (full duplex), driven by the
    /// response body.
    /// A request body idle for `body_idle` is cut with [`UpstreamError::ClientBodyTimeout`];
    /// while it uploads, it counts as [`Uploading`] on `replica`.
    ///
    /// Not an `async fn`: one would keep the connection and the request twice (as arguments
    /// and as the locals they move into), in a future that every request builds and moves.
    pub fn send<'a>(
        mut self,
        mut req: Box<Request<ClientBody>>,
        forwarding: &Forwarding<'_>,
        timeouts: Timeouts,
        replica: &'a Arc<Replica>,
    ) -> impl Future<Output = Result<Response<ResponseBody>, SendError>> + 'a {
        // With a Host to forward, the encoder writes it if the request has none left.
        if forwarding.host.is_none() && !req.headers().contains_key(header::HOST) {
            // HTTP/1.1 requires Host; an HTTP/1.0 client may have sent none. Name the replica.
            if let Some(host) = self
                .io
                .peer_addr()
                .ok()
                .and_then(|a| HeaderValue::from_str(&a.to_string()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        let method = req.method().clone();
        let (framing, length) = request_framing(&req);
        codec::encode_head_into(
            &mut self.head,
            &method,
            req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
            req.headers(),
            framing,
            length,
            Some(forwarding),
        );
        // A body that came whole with its head (most JSON requests) goes out in the same write:
        // one segment and one wake-up of the replica instead of two.
        let inline = match req.body_mut() {
            ClientBody::Full(b @ Some(_)) if framing == RequestFraming::Length => b.take(),
            _ => None,
        };
        // Only these two go into the future: it is kept in every client connection's state.
        let deadline = timeouts
            .response_header
            .map(|t| tokio::time::Instant::now() + t);
        let body_idle = timeouts.request_body_idle;
        async move {
            // Until the first write succeeds nothing was sent, and the caller may try elsewhere.
            let first = match &inline {
                Some(body) => {
                    let parts = [io::IoSlice::new(&self.head), io::IoSlice::new(body)];
                    self.io.write_vectored(&parts).await
                }
                None => self.io.write(&self.head).await,
            };
            let written = match first.and_then(|n| match n {
                0 => Err(io::ErrorKind::WriteZero.into()),
                n => Ok(n),
            }) {
                Ok(n) => n,
                Err(e) => {
                    if inline.is_some() {
                        *req.body_mut() = ClientBody::Full(inline);
                    }
                    return Err(SendError::NotSent(req, e));
                }
            };
            let fail = |e| SendError::Failed(UpstreamError::Send(e));
            let head_len = self.head.len();
            if written < head_len {
                self.io
                    .write_all(&self.head[written..])
                    .await
                    .map_err(fail)?;
            }
            if let Some(body) = &inline {
                let sent = written.saturating_sub(head_len);
                self.io.write_all(&body[sent..]).await.map_err(fail)?;
            }
            self.head.clear();
            // The head is out: its headers are not needed again.
            crate::proxy::header_maps::give(std::mem::take(req.headers_mut()));

            let mut upload = (framing != RequestFraming::None && inline.is_none()).then(|| {
                Upload::new(
                    req.into_body(),
                    framing == RequestFraming::Chunked,
                    body_idle,
                    Uploading::new(replica.clone()),
                )
            });
            let mut upload_failed = None;
            let mut interim = 0;
            if let Some(at) = deadline {
                match self.head_timer.as_mut() {
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.head_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            let head = std::future::poll_fn(|cx| {
                if let Some(up) = upload.as_mut() {
                    match up.poll(&mut self.io, cx) {
                        Poll::Ready(Ok(())) => upload = None,
                        Poll::Ready(Err(e)) if e.is_client_body() => {
                            return Poll::Ready(Err(Some(e)))
                        }
                        // The replica stopped reading; it may still have answered.
                        Poll::Ready(Err(e)) => {
                            upload = None;
                            upload_failed = Some(e);
                        }
                        Poll::Pending => {}
                    }
                }
                if let Poll::Ready(head) = poll_head(&mut self, &method, &mut interim, cx) {
                    return Poll::Ready(head.map_err(Some));
                }
                let timed_out = deadline.is_some()
                    && self
                        .head_timer
                        .as_mut()
                        .is_some_and(|timer| timer.as_mut().poll(cx).is_ready());
                if timed_out {
                    Poll::Ready(Err(None))
                } else {
                    Poll::Pending
                }
            })
            .await;
            let head = match head {
                Ok(head) => head,
                Err(None) => return Err(SendError::HeaderTimeout),
                // No head after a failed upload: the upload's error says more than the read's.
                Err(Some(e)) => return Err(SendError::Failed(upload_failed.take().unwrap_or(e))),
            };

            let state = if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                State::Upgrade
            } else {
                State::Body(BodyDecoder::new(head.framing))
            };
            let read_size = self.first_read;
            let mut resp = Response::new(ResponseBody {
                conn: Some(self),
                // Boxed: a body still uploading when the head arrives is rare, and an inline
                // one made every response a few hundred bytes larger to move around.
                upload: upload.map(Box::new),
                state,
                reusable: head.keep_alive && upload_failed.is_none(),
                read_size,
                streamed: head.streamed,
            });
            *resp.status_mut() = head.status;
            *resp.version_mut() = head.version;
            *resp.headers_mut() = head.headers;
            Ok(resp)
        }
    }
}

/// How the request body goes on the wire, and the length to declare if the client did not.
fn request_framing(req: &Request<ClientBody>) -> (RequestFraming, Option<u64>) {
    let body = req.body();
    if req.headers().contains_key(header::CONTENT_LENGTH) {
        return (RequestFraming::Length, None);
    }
    if body.is_end_stream() {
        // Methods that usually carry a body say so, as hyper's client does.
        let declare = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
        return if declare {
            (RequestFraming::Length, Some(0))
        } else {
            (RequestFraming::None, None)
        };
    }
    match body.size_hint().exact() {
        Some(n) => (RequestFraming::Length, Some(n)),
        None => (RequestFraming::Chunked, None),
    }
}

/// The client's request body on its way to the replica, one frame at a time: the next frame
/// is taken only once the previous one is written, so a slow replica slows the client.
struct Upload {
    body: ClientBody,
    chunked: bool,
    /// Bytes taken from the body and not yet written.
    pending: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
    idle_timeout: Option<Duration>,
    /// Armed the first time the client keeps us waiting, reset by each frame it sends.
    idle: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Released with the upload: until then the request is not load the replica works on.
    _uploading: Uploading,
}

impl Upload {
    fn new(
        body: ClientBody,
        chunked: bool,
        idle_timeout: Option<Duration>,
        uploading: Uploading,
    ) -> Self {
        Upload {
            body,
            chunked,
            pending: VecDeque::new(),
            trailers: None,
            ended: false,
            idle_timeout,
            idle: None,
            _uploading: uploading,
        }
    }

    /// The client's next frame; an error once it has sent nothing for the idle timeout.
    fn poll_client(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let (Some(sleep), Some(t)) = (self.idle.as_mut(), self.idle_timeout) {
                    sleep.as_mut().reset(tokio::time::Instant::now() + t);
                }
                Poll::Ready(frame.map(|f| f.map_err(UpstreamError::ClientBody)))
            }
            Poll::Pending => {
                let Some(t) = self.idle_timeout else {
                    return Poll::Pending;
                };
                let sleep = self
                    .idle
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
                ready!(std::future::Future::poll(sleep.as_mut(), cx));
                Poll::Ready(Some(Err(UpstreamError::ClientBodyTimeout(t))))
            }
        }
    }

    /// Ready when the whole body (and the last chunk) is written.
    fn poll(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            while let Some(front) = self.pending.front_mut() {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, front))
                    .map_err(UpstreamError::Send)?;
                if n == 0 {
                    return Poll::Ready(Err(UpstreamError::Send(io::ErrorKind::WriteZero.into())));
                }
                front.advance(n);
                if front.is_empty() {
                    self.pending.pop_front();
                }
            }
            if self.ended {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.poll_client(cx)) {
                None => {
                    self.ended = true;
                    if self.chunked {
                        let last = codec::encode_last_chunk(self.trailers.as_ref());
                        self.pending.push_back(Bytes::from(last));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) if !self.chunked => self.pending.push_back(data),
                    Ok(data) if data.len() <= COALESCE => {
                        let mut framed = Vec::with_capacity(data.len() + 12);
                        codec::encode_chunk(&data, &mut framed);
                        self.pending.push_back(Bytes::from(framed));
                    }
                    Ok(data) => {
                        let size = format!("{:x}\r\n", data.len());
                        self.pending.push_back(Bytes::from(size));
                        self.pending.push_back(data);
                        self.pending.push_back(Bytes::from_static(b"\r\n"));
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            self.trailers.get_or_insert_with(HeaderMap::new).extend(t);
                        }
                    }
                },
            }
        }
    }
}

/// Reads until a whole final (non-1xx) response head is in the connection's buffer, and parses
/// it. A first read that fills the buffer makes the next response's first read twice as large;
/// one that fills less than a quarter of it, half as large.
fn poll_head(
    conn: &mut Conn,
    method: &Method,
    interim: &mut u32,
    cx: &mut Context<'_>,
) -> Poll<Result<codec::Head, UpstreamError>> {
    let mut first = conn.buf.is_empty();
    loop {
        if let Some(head) = codec::parse_final_head(&mut conn.buf, method, interim, &mut conn.seen)?
        {
            return Poll::Ready(Ok(head));
        }
        let buf = &mut conn.buf;
        if buf.capacity() - buf.len() < conn.first_read / 4 {
            buf.reserve(conn.first_read);
        }
        let room = buf.capacity() - buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut conn.io),
            cx,
            buf
        ))?;
        if n == 0 {
            return Poll::Ready(Err(UpstreamError::ClosedBeforeHead));
        }
        if first {
            first = false;
            if n == room {
                conn.first_read = (conn.first_read * 2).min(FIRST_READ_MAX);
            } else if n <= room / 4 {
                conn.first_read = (conn.first_read / 2).max(FIRST_READ_MIN);
            }
        }
    }
}

enum State {
    Body(BodyDecoder),
    /// 101: the body is empty and the socket now carries the new protocol.
    Upgrade,
}

/// A response body read straight off the replica's socket.
pub struct ResponseBody {
    /// `None` once the socket failed.
    conn: Option<Conn>,
    /// The rest of the request body, when the replica answered before it was all sent.
    upload: Option<Box<Upload>>,
    state: State,
    /// The connection may carry another request once this body has ended.
    reusable: bool,
    read_size: usize,
    streamed: bool,
}

impl ResponseBody {
    /// The connection, when the body ended cleanly and the replica allows another request.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        let done = matches!(&self.state, State::Body(body) if body.is_done());
        if !(done && self.reusable && self.upload.is_none()) {
            return None;
        }
        let mut conn = self.conn.take()?;
        if !conn.buf.is_empty() {
            // Bytes past the end of the response: the connection is out of step.
            return None;
        }
        // Let go of the read buffer: frames already handed on keep what they need of it.
        conn.buf = BytesMut::new();
        Some(conn)
    }

    /// Whether the body arrives in pieces over time ([`codec::Head::streamed`]).
    pub fn is_streamed(&self) -> bool {
        self.streamed
    }

    /// After a 101 response: the socket and any bytes of the new protocol already read.
    pub fn into_upgraded(mut self) -> Option<(TcpStream, Bytes)> {
        if !matches!(self.state, State::Upgrade) || self.upload.is_some() {
            return None;
        }
        let conn = self.conn.take()?;
        Some((conn.io, conn.buf.freeze()))
    }

    fn fail(&mut self, e: UpstreamError) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.conn = None;
        self.state = State::Body(BodyDecoder::Done);
        self.reusable = false;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if let (Some(up), Some(conn)) = (this.upload.as_mut(), this.conn.as_mut()) {
            match up.poll(&mut conn.io, cx) {
                Poll::Pending => {}
                // The client's body broke: close the replica's connection, the only way to tell
                // it the request is gone (the client may be too).
                Poll::Ready(Err(e @ UpstreamError::ClientBody(_))) => return this.fail(e),
                Poll::Ready(result) => {
                    this.upload = None;
                    // An unfinished request body leaves the connection out of step.
                    this.reusable &= result.is_ok();
                }
            }
        }
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let State::Body(body) = &mut this.state else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match body.decode(buf) {
                Ok(Decoded::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::NeedMore) => {}
                Err(e) => return this.fail(e.into()),
            }
            // Nothing usable buffered: read more.
            if buf.capacity() - buf.len() < this.read_size / 4 {
                buf.reserve(this.read_size);
            }
            let room = buf.capacity() - buf.len();
            let n = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.io),
                cx,
                buf
            )) {
                Ok(n) => n,
                Err(e) => return this.fail(e.into()),
            };
            if n == 0 {
                if body.close() {
                    return Poll::Ready(None);
                }
                return this.fail(UpstreamError::ClosedMidBody);
            }
            if n == room && this.read_size < MAX_READ {
                this.read_size *= 2;
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Body(body) => body.is_done(),
            State::Upgrade => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            State::Body(body) => body.size_hint(),
            State::Upgrade => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pooled connection the replica has reset: the first write fails, nothing was sent,
    /// and the request comes back with its body, so a retry on a fresh connection has it.
    #[tokio::test]
    async fn a_request_not_sent_comes_back_with_the_body_that_rode_with_its_head() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // SO_LINGER 0: closing sends a reset, so the client's next write fails at once.
        #[allow(deprecated)]
        server.set_linger(Some(Duration::ZERO)).unwrap();
        drop(server);
        let mut probe = [0u8; 1];
        loop {
            client.readable().await.unwrap();
            match client.try_read(&mut probe) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                _ => break,
            }
        }
        let replica = Arc::new(Replica::new(1, addr, "d".into()));
        let peer = HeaderValue::from_static("127.0.0.1");
        let forwarding = Forwarding {
            peer: &peer,
            proto: "http",
            host: None,
        };
        let req = Request::post("/v1/completions")
            .header(header::CONTENT_LENGTH, "13")
            .body(ClientBody::Full(Some(Bytes::from_static(
                b"{\"prompt\":1}\n",
            ))))
            .unwrap();
        let timeouts = Timeouts {
            response_header: None,
            request_body_idle: None,
        };
        let sent = Conn::new(client)
            .send(Box::new(req), &forwarding, timeouts, &replica)
            .await;
        let Err(SendError::NotSent(back, _)) = sent else {
            panic!("the write to a reset connection should fail before anything is sent");
        };
        match back.into_body() {
            ClientBody::Full(Some(body)) => assert_eq!(&body[..], b"{\"prompt\":1}\n"),
            _ => panic!("the request came back without its body"),
        }
    }
}
