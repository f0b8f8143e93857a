//! The client's request body as the forward path sees it, whichever server read it: switchyard's
//! own HTTP/1.1 server ([`super::http1`]) or hyper's HTTP/2 server. Also the protocol switch
//! (`Upgrade`) of a request, from either.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::upstream::codec::ProtocolError;

/// A request body.
pub enum ClientBody {
    /// No body, or all of it arrived with the head: handed on whole, no channel involved.
    Full(Option<Bytes>),
    /// An HTTP/1.1 body still arriving: the connection feeds it as it is asked for.
    Streamed(BodyReceiver),
    /// An HTTP/2 stream's body.
    H2(Incoming),
}

impl ClientBody {
    pub fn empty() -> Self {
        ClientBody::Full(None)
    }
}

impl std::fmt::Debug for ClientBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClientBody::Full(_) => "ClientBody::Full",
            ClientBody::Streamed(_) => "ClientBody::Streamed",
            ClientBody::H2(_) => "ClientBody::H2",
        })
    }
}

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error(transparent)]
    H2(#[from] hyper::Error),
    #[error("malformed request body: {0}")]
    Protocol(ProtocolError),
    #[error("the client closed the connection before its request body ended")]
    Closed,
    #[error("reading the request body failed: {0}")]
    Io(io::Error),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            ClientBody::Full(b) => Poll::Ready(b.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::Streamed(r) => r.poll_frame(cx),
            ClientBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(ClientBodyError::H2))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Full(b) => b.is_none(),
            ClientBody::Streamed(r) => r.lock().is_end(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |d| d.len() as u64)),
            ClientBody::Streamed(r) => r.lock().size_hint,
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// What the connection and a streamed body share: at most one frame in passing, so the
/// client is read only as fast as the body is consumed (the replica's pace).
#[derive(Default)]
pub struct Slot {
    /// The next frame (or the error that ends the body), handed over once.
    frame: Option<Result<Frame<Bytes>, ClientBodyError>>,
    /// No frame will come after `frame`.
    ended: bool,
    /// The body was polled and found nothing: the connection should read.
    wanted: bool,
    /// The body was dropped: nobody reads what is left.
    receiver_gone: bool,
    receiver: Option<Waker>,
    connection: Option<Waker>,
    /// What is left to come, for the body's size hint.
    pub size_hint: SizeHint,
}

impl Slot {
    fn is_end(&self) -> bool {
        self.ended && self.frame.is_none()
    }

    /// The connection's side: whether the body wants another frame now. Registers the
    /// connection's waker either way, so a poll of the body wakes it.
    pub fn wants(&mut self, cx: &Context<'_>) -> bool {
        if !self
            .connection
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            self.connection = Some(cx.waker().clone());
        }
        self.wanted && self.frame.is_none() && !self.receiver_gone
    }

    pub fn receiver_gone(&self) -> bool {
        self.receiver_gone
    }

    /// Hands a frame to the body; `last` when the body ends with it.
    pub fn put(&mut self, frame: Result<Frame<Bytes>, ClientBodyError>, last: bool) {
        self.frame = Some(frame);
        self.ended = last;
        self.wanted = false;
        if let Some(w) = self.receiver.take() {
            w.wake();
        }
    }

    /// The body ended without another frame.
    pub fn end(&mut self) {
        self.ended = true;
        self.wanted = false;
        if let Some(w) = self.receiver.take() {
            w.wake();
        }
    }
}

/// The connection's end of a streamed body.
#[derive(Clone)]
pub struct BodyFeed(Arc<Mutex<Slot>>);

impl BodyFeed {
    /// A feed and the body it fills.
    pub fn new(size_hint: SizeHint) -> (BodyFeed, BodyReceiver) {
        let slot = Arc::new(Mutex::new(Slot {
            size_hint,
            ..Slot::default()
        }));
        (BodyFeed(slot.clone()), BodyReceiver(slot))
    }

    pub fn lock(&self) -> MutexGuard<'_, Slot> {
        // A panic while holding the lock leaves a slot that is still consistent: take it.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The body's end of a streamed body.
pub struct BodyReceiver(Arc<Mutex<Slot>>);

impl BodyReceiver {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        let mut slot = self.lock();
        if let Some(frame) = slot.frame.take() {
            if let Ok(f) = &frame {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    let lower = slot.size_hint.lower().saturating_sub(n);
                    let upper = slot.size_hint.upper().map(|u| u.saturating_sub(n));
                    let mut hint = SizeHint::new();
                    hint.set_lower(lower);
                    if let Some(u) = upper {
                        hint.set_upper(u);
                    }
                    slot.size_hint = hint;
                }
            }
            return Poll::Ready(Some(frame));
        }
        if slot.ended {
            return Poll::Ready(None);
        }
        if !slot
            .receiver
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            slot.receiver = Some(cx.waker().clone());
        }
        if !slot.wanted {
            slot.wanted = true;
            if let Some(w) = slot.connection.as_ref() {
                w.wake_by_ref();
            }
        }
        Poll::Pending
    }
}

impl Drop for BodyReceiver {
    fn drop(&mut self) {
        let mut slot = self.lock();
        slot.receiver_gone = true;
        if let Some(w) = slot.connection.take() {
            w.wake();
        }
    }
}

/// The connection a request asked to switch protocols on, once the switch happened: the
/// client's socket, with the bytes it sent after its request head.
pub struct Upgraded {
    io: Box<dyn UpgradeIo>,
    read_first: Bytes,
}

/// What an upgraded connection is: any byte stream the server ran on.
pub trait UpgradeIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> UpgradeIo for T {}

impl Upgraded {
    pub fn new(io: Box<dyn UpgradeIo>, read_first: Bytes) -> Self {
        Upgraded { io, read_first }
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read_first.is_empty() {
            let n = this.read_first.len().min(buf.remaining());
            buf.put_slice(&this.read_first[..n]);
            this.read_first.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A request's pending protocol switch, put in its extensions by the HTTP/1.1 server when it
/// asked for one (`Connection: upgrade` and `Upgrade`). Extensions must be `Clone`; the
/// receiver is taken once.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    pub fn new(rx: oneshot::Receiver<Upgraded>) -> Self {
        PendingUpgrade(Arc::new(Mutex::new(Some(rx))))
    }
}

/// A protocol switch to wait for once the response is a 101.
pub enum ClientUpgrade {
    Http1(oneshot::Receiver<Upgraded>),
    Hyper(hyper::upgrade::OnUpgrade),
}

/// The connection once the switch happened, as a byte stream.
pub enum SwitchedIo {
    Http1(Upgraded),
    Hyper(hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>),
}

impl ClientUpgrade {
    /// Takes the request's pending switch.
    pub fn take(req: &mut Request<ClientBody>) -> Self {
        let pending = req
            .extensions_mut()
            .remove::<PendingUpgrade>()
            .and_then(|p| p.0.lock().unwrap_or_else(|e| e.into_inner()).take());
        match pending {
            Some(rx) => ClientUpgrade::Http1(rx),
            None => ClientUpgrade::Hyper(hyper::upgrade::on(req)),
        }
    }

    /// Waits for the switch: the 101 written to the client.
    pub async fn switched(self) -> Result<SwitchedIo, String> {
        match self {
            ClientUpgrade::Http1(rx) => rx
                .await
                .map(SwitchedIo::Http1)
                .map_err(|_| "the client connection closed before switching".to_owned()),
            ClientUpgrade::Hyper(on) => on
                .await
                .map(|u| SwitchedIo::Hyper(hyper_util::rt::TokioIo::new(u)))
                .map_err(|e| e.to_string()),
        }
    }
}

impl AsyncRead for SwitchedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SwitchedIo::Http1(u) => Pin::new(u).poll_read(cx, buf),
            SwitchedIo::Hyper(u) => Pin::new(u).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for SwitchedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SwitchedIo::Http1(u) => Pin::new(u).poll_write(cx, buf),
            SwitchedIo::Hyper(u) => Pin::new(u).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SwitchedIo::Http1(u) => Pin::new(u).poll_flush(cx),
            SwitchedIo::Hyper(u) => Pin::new(u).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SwitchedIo::Http1(u) => Pin::new(u).poll_shutdown(cx),
            SwitchedIo::Hyper(u) => Pin::new(u).poll_shutdown(cx),
        }
    }
}
