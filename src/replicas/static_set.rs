//! The `static` provider: a fixed list of endpoints. Scaling to N admits the first N listed;
//! a retired endpoint only stops getting new requests (its in-flight requests finish, and
//! switchyard never stops a process it did not start). Asking for more replicas than are listed
//! admits all of them and no more.
//!
//! Endpoints are probed with a TCP connect every `probe_interval`: an admitted endpoint is
//! ready only while its last probe connected, so a closed port is never reported (or routed
//! to) as ready. The first probe runs when the set is built, before anything reads it.
//!
//! Registered endpoints (announced through the API with a TTL) follow the listed ones, in
//! address order (every instance admits the same ones); a new one counts as reachable (it just announced itself) until the
//! next probe says otherwise.

use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;

use super::{ReplicaProvider, ReplicaSetStatus};

pub struct StaticSet {
    /// The configured endpoints, then the registered ones, each with whether its last probe
    /// connected (always true when not probed).
    endpoints: Mutex<Vec<(SocketAddr, bool)>>,
    listed: usize,
    desired: Mutex<u32>,
    changed: watch::Sender<u64>,
}

/// A probe's connect timeout: at most this, and less than the probe interval.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

impl StaticSet {
    /// A set whose endpoints all count as reachable (no probing).
    pub fn new(endpoints: Vec<SocketAddr>, desired: u32) -> Self {
        StaticSet {
            listed: endpoints.len(),
            endpoints: Mutex::new(endpoints.into_iter().map(|a| (a, true)).collect()),
            desired: Mutex::new(desired),
            changed: watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SocketAddr, bool)>> {
        self.endpoints.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn addresses(&self) -> Vec<SocketAddr> {
        self.lock().iter().map(|(a, _)| *a).collect()
    }

    /// A set probed every `interval` on `runtime`; the first probe happens before it returns.
    pub fn probed(
        runtime: &tokio::runtime::Handle,
        endpoints: Vec<SocketAddr>,
        desired: u32,
        interval: Duration,
    ) -> Arc<Self> {
        let set = Arc::new(StaticSet::new(endpoints, desired));
        let timeout = PROBE_TIMEOUT.min(interval);
        // Blocking connects, each on its own thread: a loopback refusal takes microseconds, an
        // unreachable host at most `timeout`, whatever the number of endpoints.
        let endpoints = set.addresses();
        let first = probe_all(&endpoints, timeout);
        set.record(&endpoints, &first);
        let weak = Arc::downgrade(&set);
        runtime.spawn(probe_loop(weak, interval, timeout));
        set
    }

    pub fn listed(&self) -> usize {
        self.listed
    }

    /// Stores a probe round of `probed` (endpoints that left meanwhile are skipped);
    /// notifies when an endpoint changed.
    fn record(&self, probed: &[SocketAddr], results: &[bool]) {
        let mut changed = false;
        {
            let mut eps = self.lock();
            for (addr, now) in probed.iter().zip(results) {
                if let Some(e) = eps.iter_mut().find(|(a, _)| a == addr) {
                    if e.1 != *now {
                        e.1 = *now;
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

fn probe_all(endpoints: &[SocketAddr], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|s| {
        let probes: Vec<_> = endpoints
            .iter()
            .map(|a| s.spawn(move || TcpStream::connect_timeout(a, timeout).is_ok()))
            .collect();
        probes
            .into_iter()
            .map(|p| p.join().unwrap_or(false))
            .collect()
    })
}

async fn probe_loop(set: Weak<StaticSet>, interval: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(endpoints) = set.upgrade().map(|s| s.addresses()) else {
            return; // the deployment is gone
        };
        let probes = endpoints.iter().map(|a| async move {
            matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect(a)).await,
                Ok(Ok(_))
            )
        });
        let results = futures_util::future::join_all(probes).await;
        match set.upgrade() {
            Some(s) => s.record(&endpoints, &results),
            None => return,
        }
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
                .lock()
                .iter()
                .take(desired as usize)
                .filter(|(_, up)| *up)
                .map(|(a, _)| *a)
                .collect(),
            starting: 0,
            draining: 0,
            failure: None,
        }
    }

    fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn set_registered(&self, mut registered: Vec<SocketAddr>) {
        // Address order, so every instance admits the same ones.
        registered.sort_unstable();
        registered.dedup();
        let changed = {
            let mut eps = self.lock();
            let listed = self.listed;
            registered.retain(|a| !eps[..listed].iter().any(|(x, _)| x == a));
            let next: Vec<(SocketAddr, bool)> = registered
                .iter()
                .map(|a| {
                    let up = eps[listed..]
                        .iter()
                        .find(|(x, _)| x == a)
                        .is_none_or(|(_, up)| *up);
                    (*a, up)
                })
                .collect();
            let changed = eps[listed..] != next[..];
            eps.truncate(listed);
            eps.extend(next);
            changed
        };
        if changed {
            self.changed.send_modify(|n| *n += 1);
        }
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.addresses()
    }

    fn endpoint_count(&self) -> Option<usize> {
        Some(self.lock().len())
    }

    /// Retires every endpoint: there is nothing to stop, switchyard did not start them.
    fn shutdown(&self) {
        self.scale(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_closed_port_is_not_ready_until_something_listens_there() {
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let set = StaticSet::probed(
            &tokio::runtime::Handle::current(),
            vec![open.local_addr().unwrap(), closed],
            2,
            Duration::from_millis(50),
        );
        // The first probe ran before `probed` returned.
        assert_eq!(set.status().ready, vec![open.local_addr().unwrap()]);
        let mut changed = set.changed();
        let listener = std::net::TcpListener::bind(closed).unwrap();
        tokio::time::timeout(Duration::from_secs(5), changed.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(set.status().ready.len(), 2);
        drop(listener);
        drop(open);
        tokio::time::timeout(Duration::from_secs(5), changed.changed())
            .await
            .unwrap()
            .unwrap();
        // Both gone (the two changes may land in one probe round or two).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !set.status().ready.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", set.status());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The desired count still holds: they come back when reachable.
        assert_eq!(set.status().desired, 2);
    }
}
