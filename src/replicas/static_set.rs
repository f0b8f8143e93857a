//! The `static` provider: a fixed list of endpoints. Scaling to N admits the first N listed;
//! a retired endpoint only stops getting new requests (its in-flight requests finish, and
//! switchyard never stops a process it did not start). Asking for more replicas than are listed
//! admits all of them and no more.

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::sync::watch;

use super::{ReplicaProvider, ReplicaSetStatus};

pub struct StaticSet {
    endpoints: Vec<SocketAddr>,
    desired: Mutex<u32>,
    changed: watch::Sender<u64>,
}

impl StaticSet {
    pub fn new(endpoints: Vec<SocketAddr>, desired: u32) -> Self {
        StaticSet {
            endpoints,
            desired: Mutex::new(desired),
            changed: watch::channel(0).0,
        }
    }

    pub fn listed(&self) -> usize {
        self.endpoints.len()
    }
}

impl ReplicaProvider for StaticSet {
    fn scale(&self, replicas: u32) {
        let mut d = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        if *d != replicas {
            *d = replicas;
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn status(&self) -> ReplicaSetStatus {
        let desired = *self.desired.lock().unwrap_or_else(|e| e.into_inner());
        ReplicaSetStatus {
            desired,
            ready: self
                .endpoints
                .iter()
                .take(desired as usize)
                .copied()
                .collect(),
            starting: 0,
            draining: 0,
            failure: None,
        }
    }

    fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Retires every endpoint: there is nothing to stop, switchyard did not start them.
    fn shutdown(&self) {
        self.scale(0);
    }
}
