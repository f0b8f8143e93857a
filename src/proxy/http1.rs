//! The HTTP/1.1 server for client connections (RFC 9112): request heads in, responses out,
//! one request at a time (pipelined requests wait their turn in the read buffer).
//!
//! Why not hyper's: hyper's server builds its own write queue and dispatch state around every
//! message, polls a streamed response body again after each flush (three polls per server-sent
//! event, two of them empty), and formats chunk sizes with `fmt`. Per proxied request that was
//! about 3,000 of switchyard's 22,600 user-space instructions, and per streamed event more than
//! the whole gap to nginx (benches/README.md, issue 15). The replica side already ran on the
//! proxy's own codec (`upstream::codec`); this is the same for the client side, and shares its
//! body decoders and header-name cache. HTTP/2 stays on hyper.
//!
//! What it does, as hyper's did: keep-alive by version and `Connection`, pipelining, request
//! bodies by `Content-Length` or chunked (streamed to the replica as the replica reads them,
//! full duplex with the response), `Expect: 100-continue`, protocol switches (`Upgrade`),
//! `Date` on responses that lack one, a closed connection when the client goes away while its
//! request is in progress, and a status (400, 431, 505) for a head it cannot take.

use std::convert::Infallible;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, SizeHint};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::body::ProxyBody;
use super::client_body::{
    BodyFeed, ClientBody, ClientBodyError, PendingUpgrade, UpgradeIo, Upgraded,
};
use super::forward::local;
use super::headers;
use super::upstream::codec::{push_last_chunk, BodyDecoder, BodyFraming, Decoded, HeadScratch};

#[cfg(test)]
mod differential;

/// Request heads larger than this get a 431.
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines per request head (hyper's default); more get a 431.
const MAX_HEADERS: usize = 100;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 8 * 1024;
/// Body data up to this size is copied behind its chunk size line: one buffer, one `write`.
const COPY_DATA: usize = 2 * 1024;
/// Copied body data is written once this much waits, even if the body has more ready.
const WRITE_HIGH: usize = 16 * 1024;
/// A connection closed while its client may still be sending (a request body answered before
/// it was all in, a head refused) is shut for writing and then read and dropped until the
/// client closes too, or sends nothing for this long (nginx's `lingering_timeout`). Closing at
/// once would reset the connection under a client still writing, and many clients (Python's
/// `http.client` and `requests` among them) then report a broken pipe instead of the answer.
/// The idle watchdog (`client_header_timeout`) bounds the whole wait, as `lingering_time` does.
const LINGER_IDLE: Duration = Duration::from_secs(5);

/// What a request is answered with: [`super::forward::proxy`] behind a closure.
pub trait Serve {
    type Future: Future<Output = Result<Response<ProxyBody>, Infallible>>;
    fn call(&mut self, req: Request<ClientBody>) -> Self::Future;
}

impl<F, Fut> Serve for F
where
    F: FnMut(Request<ClientBody>) -> Fut,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Future = Fut;
    fn call(&mut self, req: Request<ClientBody>) -> Fut {
        self(req)
    }
}

pin_project! {
    /// One client connection, served until it closes, the client goes away or a drain ends it.
    pub struct Connection<IO, S: Serve> {
        io: Option<IO>,
        read: BytesMut,
        write: WriteBuf,
        service: S,
        scratch: HeadScratch,
        exchange: Exchange,
        // The worker drains: no request after the one in progress.
        draining: bool,
        read_closed: bool,
        #[pin]
        state: State<S::Future>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        /// Waiting for a request head.
        Head,
        /// The request is with the service.
        Service { #[pin] future: F },
        /// Writing the response body. `hold`: the head of a sized, unstreamed response waits
        /// in the buffer for the body's first bytes, so the two go out in one write.
        Body { body: ProxyBody, out: Out, hold: bool },
        /// The response is written (and flushed); what next depends on keep-alive.
        Done,
        /// Closing while the client may still send: the write side is shut (`shut`), and what
        /// comes is read and dropped until the client closes or is quiet for [`LINGER_IDLE`].
        Linger { shut: bool, quiet: Option<Pin<Box<tokio::time::Sleep>>> },
    }
}

/// The request in progress, as far as the connection is concerned.
#[derive(Default)]
struct Exchange {
    version: Option<Version>,
    head_request: bool,
    keep_alive: bool,
    /// The request body still arriving, and how it is delimited.
    feed: Option<(BodyFeed, BodyDecoder)>,
    /// The request body was given up before its end (or the head refused) while the client
    /// may still be sending it: the connection lingers before it closes.
    rest_unread: bool,
    /// The client asked to see `100 Continue` before it sends its body.
    expect_continue: bool,
    /// The client asked to switch protocols: where the switched connection goes.
    upgrade: Option<oneshot::Sender<Upgraded>>,
}

/// How the response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    /// No body is written (HEAD, 1xx, 204, 304).
    Empty,
    /// `Content-Length` was given: the data goes as it is.
    Length,
    Chunked,
    /// HTTP/1.0 without a length: the end of the body is the end of the connection.
    UntilClose,
}

/// Bytes waiting to be written: framing (and small data) in `buf`, then a piece of data, then
/// its CRLF; one `writev` for all three.
#[derive(Default)]
struct WriteBuf {
    buf: Vec<u8>,
    pos: usize,
    data: Bytes,
    tail: &'static [u8],
}

impl WriteBuf {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len() && self.data.is_empty() && self.tail.is_empty()
    }

    fn push_data(&mut self, data: Bytes, chunked: bool) {
        if chunked {
            push_hex(&mut self.buf, data.len());
            self.buf.extend_from_slice(b"\r\n");
        }
        if data.len() <= COPY_DATA {
            self.buf.extend_from_slice(&data);
            if chunked {
                self.buf.extend_from_slice(b"\r\n");
            }
        } else {
            self.data = data;
            self.tail = if chunked { b"\r\n" } else { b"" };
        }
    }

    /// Writes until nothing is left.
    fn poll_write<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let head = &self.buf[self.pos..];
            let n = if self.data.is_empty() && self.tail.is_empty() {
                std::task::ready!(Pin::new(&mut *io).poll_write(cx, head))?
            } else {
                let parts = [
                    IoSlice::new(head),
                    IoSlice::new(&self.data),
                    IoSlice::new(self.tail),
                ];
                std::task::ready!(Pin::new(&mut *io).poll_write_vectored(cx, &parts))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        self.buf.clear();
        self.pos = 0;
        Poll::Ready(Ok(()))
    }

    fn advance(&mut self, mut n: usize) {
        let head = self.buf.len() - self.pos;
        let from_head = n.min(head);
        self.pos += from_head;
        n -= from_head;
        let from_data = n.min(self.data.len());
        bytes::Buf::advance(&mut self.data, from_data);
        n -= from_data;
        self.tail = &self.tail[n.min(self.tail.len())..];
    }
}

/// Appends `n` in lower-case hex, as a chunk size line starts.
fn push_hex(out: &mut Vec<u8>, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut n = n;
    loop {
        i -= 1;
        tmp[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

impl<IO, S> Connection<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Serve,
{
    pub fn new(io: IO, service: S) -> Self {
        Connection {
            io: Some(io),
            read: BytesMut::new(),
            write: WriteBuf::default(),
            service,
            scratch: HeadScratch::default(),
            exchange: Exchange::default(),
            draining: false,
            read_closed: false,
            state: State::Head,
        }
    }

    /// Finish the request in progress (if any) and close; an idle connection closes at once.
    pub fn graceful_shutdown(self: Pin<&mut Self>) {
        *self.project().draining = true;
    }
}

impl<IO, S> Future for Connection<IO, S>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Serve,
{
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut this = self.project();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        loop {
            // The request body, while one is arriving: fed in every state, so the replica can
            // read it while the response already streams (full duplex). Without one this is
            // a check of an `Option`.
            if let Poll::Ready(Err(e)) = feed(
                io,
                this.read,
                this.write,
                this.exchange,
                this.read_closed,
                cx,
            ) {
                return Poll::Ready(Err(e));
            }
            match this.state.as_mut().project() {
                StateProj::Head => {
                    if *this.draining {
                        return Poll::Ready(Ok(()));
                    }
                    if !this.read.is_empty() {
                        match parse_request(this.read, this.scratch) {
                            Parsed::Partial => {}
                            Parsed::Request(req, exchange) => {
                                *this.exchange = exchange;
                                let future = this.service.call(req);
                                this.state.set(State::Service { future });
                                continue;
                            }
                            Parsed::Refused(status, why) => {
                                // The head cannot be taken: answer and close.
                                *this.exchange = Exchange {
                                    version: Some(Version::HTTP_11),
                                    // The client may still be sending the head (or a body).
                                    rest_unread: !*this.read_closed,
                                    ..Exchange::default()
                                };
                                this.read.clear();
                                *this.read_closed = true;
                                let resp = local(status, why);
                                start_response(
                                    this.write,
                                    this.exchange,
                                    resp,
                                    this.state.as_mut(),
                                );
                                continue;
                            }
                        }
                    }
                    if *this.read_closed {
                        return Poll::Ready(Ok(()));
                    }
                    match poll_read(io, this.read, cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => *this.read_closed = true,
                        Poll::Ready(Ok(_)) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    }
                }
                StateProj::Service { future } => {
                    match future.poll(cx) {
                        Poll::Ready(Ok(resp)) => {
                            start_response(this.write, this.exchange, resp, this.state.as_mut());
                        }
                        Poll::Ready(Err(never)) => match never {},
                        Poll::Pending => {
                            // Pending output is a 100 Continue: it must go before the client
                            // sends its body.
                            if !this.write.is_empty() {
                                std::task::ready!(this.write.poll_write(io, cx))?;
                            }
                            return detect_eof(io, this.read, this.exchange, this.read_closed, cx);
                        }
                    }
                }
                StateProj::Body { body, out, hold } => {
                    // A piece of data waits: write it before taking the next one.
                    if !this.write.data.is_empty()
                        || !this.write.tail.is_empty()
                        || this.write.buf.len() - this.write.pos >= WRITE_HIGH
                    {
                        std::task::ready!(this.write.poll_write(io, cx))?;
                    }
                    let out = *out;
                    match Pin::new(&mut *body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                if out != Out::Empty && !data.is_empty() {
                                    this.write.push_data(data, out == Out::Chunked);
                                    *hold = false;
                                }
                            }
                            Err(frame) => {
                                if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), out) {
                                    push_last_chunk(&mut this.write.buf, Some(&trailers));
                                    this.state.set(State::Done);
                                }
                            }
                        },
                        Poll::Ready(None) => {
                            if out == Out::Chunked {
                                push_last_chunk(&mut this.write.buf, None);
                            }
                            this.state.set(State::Done);
                        }
                        Poll::Ready(Some(Err(e))) => {
                            // The replica's body broke off: the client can only see the
                            // response cut short, by the connection closing.
                            tracing::debug!(error = %e, "response body failed; closing the client connection");
                            std::task::ready!(this.write.poll_write(io, cx))?;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Pending => {
                            // A replica that writes its head and body separately (as many
                            // servers do) would otherwise cost the client two writes, two
                            // segments and two wake-ups; nginx holds the head the same way
                            // (`postpone_output`). Streamed bodies are never held.
                            if !*hold {
                                std::task::ready!(this.write.poll_write(io, cx))?;
                                std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                            }
                            return detect_eof(io, this.read, this.exchange, this.read_closed, cx);
                        }
                    }
                }
                StateProj::Done => {
                    std::task::ready!(this.write.poll_write(io, cx))?;
                    std::task::ready!(Pin::new(&mut *io).poll_flush(cx))?;
                    // The response is out but the request body is not all in: `feed` (above)
                    // reads and drops the rest, and the next request waits for it. The idle
                    // watchdog bounds how long a client may take.
                    if this.exchange.feed.is_some()
                        && this.exchange.keep_alive
                        && !*this.draining
                        && this.exchange.upgrade.is_none()
                    {
                        return Poll::Pending;
                    }
                    let exchange = std::mem::take(this.exchange);
                    if let Some(tx) = exchange.upgrade {
                        // A 101 went out: the connection is the replica's protocol's now.
                        if let Some(io) = this.io.take() {
                            let early = this.read.split().freeze();
                            let _ =
                                tx.send(Upgraded::new(Box::new(io) as Box<dyn UpgradeIo>, early));
                        }
                        return Poll::Ready(Ok(()));
                    }
                    // A request body not read to its end leaves bytes that are not a head.
                    if !exchange.keep_alive || exchange.feed.is_some() || *this.draining {
                        // (`rest_unread` was set while the client could still send; a refused
                        // head also stops reading, which sets `read_closed`.)
                        if !*this.draining
                            && (exchange.rest_unread
                                || (exchange.feed.is_some() && !*this.read_closed))
                        {
                            this.state.set(State::Linger {
                                shut: false,
                                quiet: None,
                            });
                            continue;
                        }
                        return Poll::Ready(match Pin::new(io).poll_shutdown(cx) {
                            Poll::Ready(r) => r,
                            Poll::Pending => Ok(()),
                        });
                    }
                    this.state.set(State::Head);
                }
                StateProj::Linger { shut, quiet } => {
                    if !*shut {
                        match std::task::ready!(Pin::new(&mut *io).poll_shutdown(cx)) {
                            Ok(()) => *shut = true,
                            Err(_) => return Poll::Ready(Ok(())),
                        }
                    }
                    // A drain ends the wait: the worker is going away.
                    if *this.draining {
                        return Poll::Ready(Ok(()));
                    }
                    let mut heard = false;
                    loop {
                        this.read.clear();
                        match poll_read(io, this.read, cx) {
                            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                this.read.clear();
                                return Poll::Ready(Ok(()));
                            }
                            Poll::Ready(Ok(_)) => heard = true,
                            Poll::Pending => break,
                        }
                    }
                    let quiet =
                        quiet.get_or_insert_with(|| Box::pin(tokio::time::sleep(LINGER_IDLE)));
                    if heard {
                        quiet
                            .as_mut()
                            .reset(tokio::time::Instant::now() + LINGER_IDLE);
                    }
                    if quiet.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Ok(()));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Reads what the socket has into `read`, making room first.
fn poll_read<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if read.capacity() - read.len() < READ_SIZE / 4 {
        read.reserve(READ_SIZE);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, read)
}

/// While a request is in progress and its body is all read: a client that closes its side
/// has gone away, and the request is dropped with the connection (as hyper does by default).
/// Bytes that come are the next request's, kept for later.
fn detect_eof<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut BytesMut,
    exchange: &Exchange,
    read_closed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    if exchange.feed.is_some() || *read_closed || !read.is_empty() || exchange.upgrade.is_some() {
        return Poll::Pending;
    }
    match poll_read(io, read, cx) {
        Poll::Ready(Ok(0)) => {
            *read_closed = true;
            Poll::Ready(Ok(()))
        }
        // The next request's bytes: kept, and nothing more is read until this one is done.
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
    }
}

/// Moves the request body along: when the body wants its next frame, decodes one from what was
/// read, reading more if needed. Ready only with an error that ends the connection.
fn feed<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    read: &mut BytesMut,
    write: &mut WriteBuf,
    exchange: &mut Exchange,
    read_closed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let Some((feed, decoder)) = exchange.feed.as_mut() else {
            return Poll::Pending;
        };
        let mut slot = feed.lock();
        if slot.receiver_gone() {
            drop(slot);
            return discard(io, read, exchange, read_closed, cx);
        }
        if !slot.wants(cx) {
            return Poll::Pending;
        }
        let (frame, last) = match decoder.decode(read) {
            Ok(Decoded::Frame(frame)) => {
                let last = decoder.is_done();
                (Some(Ok(frame)), last)
            }
            Ok(Decoded::End) => (None, true),
            Ok(Decoded::NeedMore) if *read_closed => (Some(Err(ClientBodyError::Closed)), true),
            Ok(Decoded::NeedMore) => {
                drop(slot);
                if std::mem::take(&mut exchange.expect_continue) {
                    write
                        .buf
                        .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                if !write.is_empty() {
                    std::task::ready!(write.poll_write(io, cx))?;
                }
                match std::task::ready!(poll_read(io, read, cx)) {
                    Ok(0) => *read_closed = true,
                    Ok(_) => {}
                    Err(e) => {
                        let mut slot = feed.lock();
                        slot.put(
                            Err(ClientBodyError::Io(io::Error::new(e.kind(), e.to_string()))),
                            true,
                        );
                        drop(slot);
                        exchange.feed = None;
                        // The body ended in error; keep-alive is off.
                        exchange.keep_alive = false;
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            Err(e) => {
                exchange.keep_alive = false;
                // The client may still be sending whatever it meant by it.
                exchange.rest_unread = true;
                (Some(Err(ClientBodyError::Protocol(e))), true)
            }
        };
        let failed = matches!(frame, Some(Err(_)));
        match frame {
            Some(f) => slot.put(f, last),
            None => slot.end(),
        }
        drop(slot);
        if last {
            // A body that failed leaves the stream where no head starts: keep-alive is off,
            // but `feed` is done.
            exchange.feed = None;
            if failed {
                exchange.keep_alive = false;
            }
        }
    }
}

/// The rest of a request body whose reader is gone: read and dropped to its end, however long,
/// as nginx does, so that the connection serves the next request. The idle watchdog bounds how
/// long the client may take. A connection that is not kept anyway, or a body that cannot end
/// (the client closed, a malformed chunk), is given up here; the connection then lingers
/// before it closes. Ready only with a read error.
fn discard<IO: AsyncRead + Unpin>(
    io: &mut IO,
    read: &mut BytesMut,
    exchange: &mut Exchange,
    read_closed: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    // No 100 Continue for a body nobody wants: a client still waiting for one sends nothing,
    // so there is nothing to wait for either.
    if std::mem::take(&mut exchange.expect_continue) {
        exchange.keep_alive = false;
    }
    loop {
        let Some((_, decoder)) = exchange.feed.as_mut() else {
            return Poll::Pending;
        };
        let give_up = match decoder.decode(read) {
            Ok(Decoded::Frame(_)) => {
                if decoder.is_done() {
                    exchange.feed = None;
                }
                continue;
            }
            Ok(Decoded::End) => {
                exchange.feed = None;
                continue;
            }
            Ok(Decoded::NeedMore) if *read_closed => true,
            Ok(Decoded::NeedMore) if !exchange.keep_alive => true,
            Ok(Decoded::NeedMore) => {
                match std::task::ready!(poll_read(io, read, cx)) {
                    Ok(0) => *read_closed = true,
                    Ok(_) => {}
                    Err(e) => {
                        exchange.feed = None;
                        exchange.keep_alive = false;
                        return Poll::Ready(Err(e));
                    }
                }
                continue;
            }
            Err(_) => true,
        };
        if give_up {
            exchange.feed = None;
            exchange.keep_alive = false;
            exchange.rest_unread = !*read_closed;
        }
    }
}

/// Writes the response head into `write` and moves to writing its body.
fn start_response<F>(
    write: &mut WriteBuf,
    exchange: &mut Exchange,
    resp: Response<ProxyBody>,
    mut state: Pin<&mut State<F>>,
) {
    let (parts, body) = resp.into_parts();
    // Answered before its body was all in (RFC 9110 10.1.1: say now whether the connection
    // stays, since the client may be told nothing later): the rest is read and dropped and
    // the connection stays, unless the client still waits for a 100 Continue and so may never
    // send the body. It is told `Connection: close`, and the connection lingers in case it
    // sends the body all the same.
    if exchange.feed.is_some() && exchange.expect_continue {
        exchange.keep_alive = false;
    }
    // The client no longer gets a 100 Continue once its answer is out.
    exchange.expect_continue = false;
    let status = parts.status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS && exchange.upgrade.is_some();
    if !switching {
        exchange.upgrade = None;
    }
    let version = exchange.version.unwrap_or(Version::HTTP_11);
    let out = write_head(
        &mut write.buf,
        &parts.headers,
        status,
        version,
        exchange,
        &body,
    );
    super::header_maps::give(parts.headers);
    if switching || out == Out::Empty {
        drop(body);
        state.set(State::Done);
    } else {
        let hold = out == Out::Length && !body.is_streamed();
        state.set(State::Body { body, out, hold });
    }
}

/// The status line and headers, with the framing, `Date` and `Connection` the response needs.
fn write_head(
    buf: &mut Vec<u8>,
    headers: &HeaderMap,
    status: StatusCode,
    version: Version,
    exchange: &mut Exchange,
    body: &ProxyBody,
) -> Out {
    let http10 = version == Version::HTTP_10;
    // No reservation from the headers' sizes: the buffer is the connection's, kept between
    // responses, so after the first it already has the room.
    buf.extend_from_slice(if http10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    buf.extend_from_slice(status.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    buf.extend_from_slice(b"\r\n");
    let mut has_date = false;
    let mut has_length = false;
    for (name, value) in headers {
        // The framing is the server's to write.
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        has_date |= name == header::DATE;
        has_length |= name == header::CONTENT_LENGTH;
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let no_body = exchange.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let out = if no_body {
        Out::Empty
    } else if has_length {
        Out::Length
    } else if let Some(n) = body.size_hint().exact() {
        buf.extend_from_slice(b"content-length: ");
        push_decimal(buf, n);
        buf.extend_from_slice(b"\r\n");
        Out::Length
    } else if http10 {
        exchange.keep_alive = false;
        Out::UntilClose
    } else {
        buf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    };
    if !has_date {
        buf.extend_from_slice(b"date: ");
        date::push(buf);
        buf.extend_from_slice(b"\r\n");
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !exchange.keep_alive && !http10 {
            buf.extend_from_slice(b"connection: close\r\n");
        } else if exchange.keep_alive && http10 {
            buf.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    buf.extend_from_slice(b"\r\n");
    out
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// What a look at the read buffer found.
// Consumed where it is made; boxing the request would add an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Partial,
    Request(Request<ClientBody>, Exchange),
    Refused(StatusCode, &'static str),
}

/// Parses a request head off the front of `read`, with its body if all of it is there.
fn parse_request(read: &mut BytesMut, scratch: &mut HeadScratch) -> Parsed {
    use std::mem::MaybeUninit;
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, read, &mut slots)
    {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if read.len() >= MAX_HEAD => {
            return Parsed::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request head too large",
            )
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Refused(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "too many request header lines",
            )
        }
        // A request line ending in another `HTTP/x.y`; without one the head is just malformed.
        Err(httparse::Error::Version) if names_a_version(read) => {
            return Parsed::Refused(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "only HTTP/1.0 and HTTP/1.1 are served here (and HTTP/2 with prior knowledge)",
            )
        }
        Err(_) => return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed request head"),
    };
    if len > MAX_HEAD {
        return Parsed::Refused(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        );
    }
    let Ok(method) = Method::from_bytes(req.method.unwrap_or("").as_bytes()) else {
        return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed request method");
    };
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let base = read.as_ptr() as usize;
    let path = req.path.unwrap_or("");
    let path_at = path.as_ptr() as usize - base;
    let path_span = path_at..path_at + path.len();
    let spans = scratch.spans_mut();
    spans.clear();
    for h in req.headers.iter() {
        spans.push([
            h.name.as_ptr() as usize - base,
            h.name.len(),
            h.value.as_ptr() as usize - base,
            h.value.len(),
        ]);
    }
    let head = read.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(head.slice(path_span)) else {
        return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed request target");
    };

    let mut headers = super::header_maps::take(scratch.spans_len());
    let mut close = false;
    let mut keep_alive = false;
    let mut upgrade_token = false;
    let mut has_upgrade = false;
    let mut expect_continue = false;
    // Framing as hyper's server reads it (the differential test holds the two together): the
    // last Transfer-Encoding line decides chunked; each Content-Length line is digits only,
    // a repeat of the same value is dropped and a different one refused; with both, the
    // Content-Length lines go, and the connection closes after the response (RFC 9112 6.1).
    let mut length: Option<u64> = None;
    let mut saw_length = false;
    let mut te: Option<bool> = None;
    for i in 0..scratch.spans_len() {
        let [ns, nl, vs, vl] = scratch.span(i);
        let Ok(name) = scratch.name(i, &head[ns..ns + nl]) else {
            return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed header name");
        };
        let raw = &head[vs..vs + vl];
        if name == header::CONNECTION {
            for t in headers::connection_tokens(raw) {
                close |= t.eq_ignore_ascii_case(b"close");
                keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::CONTENT_LENGTH {
            saw_length = true;
            if te.is_some() {
                continue;
            }
            let Some(n) = digits(raw).filter(|&n| n <= MAX_CONTENT_LENGTH) else {
                return Parsed::Refused(StatusCode::BAD_REQUEST, "invalid Content-Length");
            };
            match length {
                Some(prev) if prev != n => {
                    return Parsed::Refused(
                        StatusCode::BAD_REQUEST,
                        "Content-Length lines that disagree",
                    )
                }
                Some(_) => continue,
                None => length = Some(n),
            }
        } else if name == header::TRANSFER_ENCODING {
            if version == Version::HTTP_10 {
                return Parsed::Refused(
                    StatusCode::BAD_REQUEST,
                    "Transfer-Encoding in an HTTP/1.0 request",
                );
            }
            if length.take().is_some() {
                headers.remove(header::CONTENT_LENGTH);
            }
            te = Some(chunked_last(raw));
        } else if name == header::UPGRADE {
            has_upgrade = true;
        } else if name == header::EXPECT {
            expect_continue = raw.eq_ignore_ascii_case(b"100-continue");
        }
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl)) else {
            return Parsed::Refused(StatusCode::BAD_REQUEST, "malformed header value");
        };
        headers.append(name, value);
    }
    let framing = match (te, length) {
        (Some(false), _) => {
            return Parsed::Refused(
                StatusCode::BAD_REQUEST,
                "Transfer-Encoding that does not end in chunked",
            )
        }
        (Some(true), _) => BodyFraming::Chunked,
        (None, Some(n)) => BodyFraming::Length(n),
        (None, None) => BodyFraming::Length(0),
    };
    if te.is_some() && saw_length {
        close = true;
    }

    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    let mut exchange = Exchange {
        version: Some(version),
        head_request: method == Method::HEAD,
        keep_alive,
        feed: None,
        rest_unread: false,
        expect_continue: false,
        upgrade: None,
    };
    let body = match framing {
        BodyFraming::Length(0) => ClientBody::empty(),
        BodyFraming::Length(n) if read.len() as u64 >= n => {
            ClientBody::Full(Some(read.split_to(n as usize).freeze()))
        }
        framing => {
            let hint = match framing {
                BodyFraming::Length(n) => SizeHint::with_exact(n),
                _ => SizeHint::default(),
            };
            let (feed, receiver) = BodyFeed::new(hint);
            exchange.feed = Some((feed, BodyDecoder::new(framing)));
            exchange.expect_continue = expect_continue && version == Version::HTTP_11;
            ClientBody::Streamed(receiver)
        }
    };
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    if has_upgrade && upgrade_token && version == Version::HTTP_11 {
        let (tx, rx) = oneshot::channel();
        exchange.upgrade = Some(tx);
        request.extensions_mut().insert(PendingUpgrade::new(rx));
    }
    Parsed::Request(request, exchange)
}

/// The largest Content-Length taken (hyper's: it keeps the two values above for itself).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;

/// A non-empty run of decimal digits that fits a `u64` (no sign, no spaces, no list).
fn digits(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() {
        return None;
    }
    raw.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Whether a Transfer-Encoding line's last coding is `chunked`; a line that is not visible
/// ASCII names none.
fn chunked_last(raw: &[u8]) -> bool {
    raw.iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
        && raw
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether the request line ends in `HTTP/<digit>.<digit>`.
fn names_a_version(read: &[u8]) -> bool {
    let line = read.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    matches!(line, [.., b' ', b'H', b'T', b'T', b'P', b'/', a, b'.', b] if a.is_ascii_digit() && b.is_ascii_digit())
}

/// The `Date` header value, formatted once per second per thread.
mod date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }

    pub fn push(out: &mut Vec<u8>) {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHE.with(|c| {
            let mut c = c.borrow_mut();
            if c.0 != secs || c.1.is_empty() {
                *c = (secs, httpdate::fmt_http_date(now));
            }
            out.extend_from_slice(c.1.as_bytes());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_as_chunk_sizes_and_lengths() {
        for n in [0usize, 1, 9, 10, 15, 16, 255, 4096, 0xdead_beef, usize::MAX] {
            let mut hex = Vec::new();
            push_hex(&mut hex, n);
            assert_eq!(hex, format!("{n:x}").into_bytes());
            let mut dec = Vec::new();
            push_decimal(&mut dec, n as u64);
            assert_eq!(dec, n.to_string().into_bytes());
        }
    }

    #[test]
    fn a_partial_write_resumes_where_it_stopped_across_the_three_parts() {
        let mut w = WriteBuf::default();
        w.buf.extend_from_slice(b"abc");
        w.push_data(Bytes::from(vec![b'x'; COPY_DATA + 1]), true);
        let total = w.buf.len() + w.data.len() + w.tail.len();
        assert_eq!(w.tail, b"\r\n");
        let mut written = 0;
        for step in [2, 5, COPY_DATA - 4, 1] {
            w.advance(step);
            written += step;
            assert_eq!(
                w.buf.len() - w.pos + w.data.len() + w.tail.len(),
                total - written
            );
        }
        w.advance(total - written);
        assert!(w.is_empty());
    }

    #[test]
    fn only_a_request_line_naming_a_version_is_a_version_fault() {
        assert!(names_a_version(b"GET / HTTP/2.0\r\nHost: x\r\n"));
        assert!(names_a_version(b"GET / HTTP/3.1\n"));
        assert!(!names_a_version(b"NOT HTTP AT ALL\r\n"));
        assert!(!names_a_version(b"GET / HTTP/x.0\r\n"));
    }

    #[test]
    fn a_request_with_its_whole_body_read_needs_no_feed() {
        let mut scratch = HeadScratch::default();
        let mut read = BytesMut::from(
            &b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n"[..],
        );
        let Parsed::Request(req, exchange) = parse_request(&mut read, &mut scratch) else {
            panic!("not parsed");
        };
        assert!(exchange.feed.is_none() && exchange.keep_alive);
        assert_eq!(req.uri(), "/a");
        assert!(matches!(req.body(), ClientBody::Full(Some(b)) if &b[..] == b"abc"));
        // The next request's bytes stay for the next parse.
        assert_eq!(&read[..], b"GET /b HTTP/1.1\r\n");
        assert!(matches!(
            parse_request(&mut read, &mut scratch),
            Parsed::Partial
        ));
    }
}
