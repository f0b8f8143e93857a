//! Connections to replicas: one pool per worker thread, so checkout and checkin touch only
//! thread-local state (each worker runs a current-thread runtime, and every task it spawns
//! stays on it).
//!
//! - [`codec`]: HTTP/1.1 heads and body framing (length, chunked, until close), without I/O.
//! - [`conn`]: one connection: sends a request, streams the response body.

pub mod codec;
pub mod conn;
#[cfg(test)]
pub(crate) mod differential;

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub use conn::{Conn, ResponseBody, SendError, Timeouts, UpstreamError};

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

type IdleMap = HashMap<u64, Vec<(Conn, Instant)>, BuildHasherDefault<IdHasher>>;

thread_local! {
    static IDLE: RefCell<IdleMap> = RefCell::new(IdleMap::default());
}

/// Takes the most recently used idle connection to the replica that is still open and younger
/// than `max_idle` at `now` (the caller's clock reading: the request's start).
pub fn checkout(replica: u64, max_idle: Duration, now: Instant) -> Option<Conn> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&replica)?;
        while let Some((conn, since)) = list.pop() {
            if now.saturating_duration_since(since) < max_idle && conn.is_usable() {
                return Some(conn);
            }
        }
        None
    })
}

/// Returns a connection whose last response ended at `now`, for the next request to the
/// replica.
pub fn checkin(replica: u64, conn: Conn, max_per_replica: usize, now: Instant) {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(replica).or_default();
        if list.len() < max_per_replica {
            list.push((conn, now));
        }
    });
}

/// Drops closed and expired idle connections; run periodically on each worker.
pub fn sweep(max_idle: Duration) -> usize {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        idle.retain(|_, list| {
            list.retain(|(c, since)| since.elapsed() < max_idle && c.is_usable());
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
}

/// Opens a new connection (TCP_NODELAY: request heads and small SSE events go out at once).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    Ok(Conn::new(stream))
}
