//! Connections to replicas: one pool per worker thread, so checkout and checkin touch only
//! thread-local state (each worker runs a current-thread runtime, and every task it spawns
//! stays on it).

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The sending half of an HTTP/1.1 connection to a replica.
pub type Sender = http1::SendRequest<Incoming>;

/// Replica ids are already unique small integers: hash them as themselves.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type IdleMap = HashMap<u64, Vec<(Sender, Instant)>, BuildHasherDefault<IdHasher>>;

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
}

/// Takes the most recently used idle connection to the replica that is still open and younger
/// than `max_idle`.
pub fn checkout(replica: u64, max_idle: Duration) -> Option<Sender> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&replica)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < max_idle {
                return Some(sender);
            }
        }
        None
    })
}

/// Returns a connection whose last response ended, for the next request to the replica.
pub fn checkin(replica: u64, sender: Sender, max_per_replica: usize) {
    if sender.is_closed() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(replica).or_default();
        if list.len() < max_per_replica {
            list.push((sender, Instant::now()));
        }
    });
}

/// Drops closed and expired idle connections; run periodically on each worker.
pub fn sweep(max_idle: Duration) -> usize {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < max_idle);
            !list.is_empty()
        });
        idle.values().map(Vec::len).sum()
    })
}

/// Idle connections held by this thread.
pub fn idle_count() -> usize {
    IDLE.with(|idle| idle.borrow().values().map(Vec::len).sum())
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP/1.1 handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// Read buffer of an upstream connection. hyper's default grows from 8 KiB; a fixed 4 KiB keeps
/// a proxied connection pair under 40 kB while inference responses (small SSE chunks, JSON)
/// still arrive in one read.
const UPSTREAM_READ_BUFFER: usize = 4096;

/// Opens a new connection (TCP_NODELAY) and spawns its driver task on the current runtime.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::Builder::new()
        .read_buf_exact_size(Some(UPSTREAM_READ_BUFFER))
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}
