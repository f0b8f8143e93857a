//! The immutable routing tree read by every request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use http::HeaderValue;

use crate::metrics::PoolMetrics;

/// One upstream endpoint. Its counters outlive snapshots: the router hands the same `Arc` to
/// every snapshot that keeps the replica, so load and ejection state carry over a swap.
#[derive(Debug)]
pub struct Replica {
    /// Process-unique id; keys the per-core connection pools.
    pub id: u64,
    pub addr: SocketAddr,
    pub deployment: Arc<str>,
    /// Requests sent to this replica whose response body has not ended.
    outstanding: AtomicU32,
    /// Of those, the ones whose request body is still arriving from the client.
    uploading: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    /// Ejection's clock: tokio's (paused in tests), from when the replica was created.
    created: Instant,
    /// Milliseconds since `created` (+1) until which the replica gets no new requests; 0 = never.
    ejected_until_ms: AtomicU64,
    /// Set when the replica is chosen for removal: it gets no new requests while it drains.
    draining: AtomicBool,
}

impl Replica {
    pub fn new(id: u64, addr: SocketAddr, deployment: Arc<str>) -> Self {
        Replica {
            id,
            addr,
            deployment,
            outstanding: AtomicU32::new(0),
            uploading: AtomicU32::new(0),
            consecutive_connect_failures: AtomicU32::new(0),
            created: Instant::now(),
            ejected_until_ms: AtomicU64::new(0),
            draining: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        // +1 so that a timestamp is never 0, which means "not ejected".
        self.created.elapsed().as_millis() as u64 + 1
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Requests the replica can work on: in flight, less those still waiting for the client's
    /// request body (a stalled upload is not load, and must not make autoscaling add replicas).
    pub fn working(&self) -> u32 {
        self.outstanding()
            .saturating_sub(self.uploading.load(Ordering::Relaxed))
    }

    pub fn begin_request(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn end_request(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// May this replica be given a new request now?
    #[inline]
    pub fn is_available(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || self.now_ms() >= until
    }

    pub fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining.store(draining, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Records a failed connect; returns true when this failure ejected the replica.
    pub fn record_connect_failure(&self, eject_after: u32, eject_for: Duration) -> bool {
        let n = self
            .consecutive_connect_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if eject_after > 0 && n >= eject_after {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
            let until = self.now_ms() + eject_for.as_millis() as u64;
            self.ejected_until_ms.store(until, Ordering::Relaxed);
            return true;
        }
        false
    }

    pub fn record_connect_success(&self) {
        // Reads first: the common case is no failures, and a store would bounce the cache line.
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
        if self.ejected_until_ms.load(Ordering::Relaxed) != 0 {
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }
}

/// The replicas of one deployment as seen from one environment, with that pair's metric
/// handles already resolved.
pub struct Pool {
    pub model: Arc<str>,
    pub environment: Arc<str>,
    pub deployment: Arc<str>,
    /// Ready replicas only: a replica is listed here once it passed readiness.
    pub replicas: Box<[Arc<Replica>]>,
    pub metrics: Arc<PoolMetrics>,
    /// `x-switchyard-deployment` value, built once.
    pub header_value: HeaderValue,
}

pub struct Environment {
    pub name: Arc<str>,
    /// Every deployment named in this environment's weights, weighted or not.
    pub pools: Box<[Arc<Pool>]>,
    /// Running sum of weights, parallel to `pools`; the last entry is the total.
    pub cumulative: Box<[u32]>,
}

pub struct Model {
    pub id: Arc<str>,
    pub environments: Box<[Environment]>,
    pub default_environment: usize,
    /// Pools for pinned requests (`/deployment/{id}/...`) to deployments that are in no
    /// environment; their metrics carry an empty environment label.
    pub unassigned: Box<[Arc<Pool>]>,
}

/// A Host name (lower case, no port) and the (model index, environment index) it selects.
pub type HostRoute = (Arc<str>, (usize, usize));

/// One complete routing state. Never mutated after it is built.
#[derive(Default)]
pub struct Snapshot {
    /// Shared with later snapshots while their spec is unchanged.
    pub models: Box<[Arc<Model>]>,
    /// Host name (lower case, no port) → (model index, environment index).
    pub hosts: HostTable,
    /// Monotonic version, for logs and tests.
    pub version: u64,
}

/// Where a request goes, before picking a replica.
pub enum Route<'a> {
    /// Split by weight between the environment's pools.
    Split(&'a Environment),
    /// A single deployment, whatever the weights.
    Pinned(&'a Arc<Pool>),
}

/// The outcome of reading a request's host and path against a snapshot.
pub struct Resolved<'a> {
    pub model: &'a Model,
    pub environment: &'a Environment,
    pub route: Route<'a>,
    /// Bytes of the path prefix (`/deployment/x` or `/environments/y`) to strip before forwarding.
    pub strip: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum RouteError {
    NoModels,
    UnknownEnvironment { model: String, environment: String },
    UnknownDeployment { model: String, deployment: String },
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::NoModels => write!(f, "no model is configured"),
            RouteError::UnknownEnvironment { model, environment } => {
                write!(f, "model {model:?} has no environment {environment:?}")
            }
            RouteError::UnknownDeployment { model, deployment } => {
                write!(f, "model {model:?} has no deployment {deployment:?}")
            }
        }
    }
}

/// Splits `/{prefix}/{segment}/rest` into (segment, bytes to strip).
fn prefixed_segment<'p>(path: &'p str, prefix: &str) -> Option<(&'p str, usize)> {
    let rest = path.strip_prefix(prefix)?;
    if rest.is_empty() {
        return None;
    }
    let end = rest.find('/').unwrap_or(rest.len());
    Some((&rest[..end], prefix.len() + end))
}

impl Snapshot {
    /// Chooses the model and environment from the Host, then applies the pinning prefixes.
    pub fn resolve<'a>(
        &'a self,
        host: Option<&str>,
        path: &str,
    ) -> Result<Resolved<'a>, RouteError> {
        let (mi, mut ei) = match (self.hosts.is_empty(), host) {
            (false, Some(h)) => self.lookup_host(h),
            _ => None,
        }
        .unwrap_or_else(|| (0, self.models.first().map_or(0, |m| m.default_environment)));
        let model = self.models.get(mi).ok_or(RouteError::NoModels)?;

        if let Some((name, strip)) = prefixed_segment(path, "/environments/") {
            ei = model
                .environments
                .iter()
                .position(|e| &*e.name == name)
                .ok_or_else(|| RouteError::UnknownEnvironment {
                    model: model.id.to_string(),
                    environment: name.to_owned(),
                })?;
            let environment = &model.environments[ei];
            return Ok(Resolved {
                model,
                environment,
                route: Route::Split(environment),
                strip,
            });
        }
        let environment = model.environments.get(ei).ok_or(RouteError::NoModels)?;
        if let Some((id, strip)) = prefixed_segment(path, "/deployment/") {
            let pool = environment
                .pools
                .iter()
                .chain(model.unassigned.iter())
                .find(|p| &*p.deployment == id)
                .or_else(|| {
                    model
                        .environments
                        .iter()
                        .flat_map(|e| e.pools.iter())
                        .find(|p| &*p.deployment == id)
                })
                .ok_or_else(|| RouteError::UnknownDeployment {
                    model: model.id.to_string(),
                    deployment: id.to_owned(),
                })?;
            return Ok(Resolved {
                model,
                environment,
                route: Route::Pinned(pool),
                strip,
            });
        }
        Ok(Resolved {
            model,
            environment,
            route: Route::Split(environment),
            strip: 0,
        })
    }

    fn lookup_host(&self, host: &str) -> Option<(usize, usize)> {
        self.hosts.get(strip_port(host))
    }
}

/// Hosts up to this many are scanned; more are hashed, so a request's cost does not grow
/// with the number of models.
const SCAN_HOSTS: usize = 8;

/// Host name (lower case, no port) → (model index, environment index).
pub enum HostTable {
    /// A handful: a scan with a plain compare beats hashing the request's Host.
    Few(Box<[HostRoute]>),
    Many(std::collections::HashMap<Arc<str>, (usize, usize)>),
}

impl Default for HostTable {
    fn default() -> Self {
        HostTable::Few(Box::new([]))
    }
}

impl HostTable {
    /// From (lower-case host, target) pairs.
    pub fn new(hosts: Vec<HostRoute>) -> Self {
        if hosts.len() <= SCAN_HOSTS {
            HostTable::Few(hosts.into())
        } else {
            HostTable::Many(hosts.into_iter().collect())
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            HostTable::Few(h) => h.is_empty(),
            HostTable::Many(h) => h.is_empty(),
        }
    }

    /// The target of a host name (no port), matched without regard to ASCII case.
    pub fn get(&self, name: &str) -> Option<(usize, usize)> {
        match self {
            // Hosts are stored lowercase and clients nearly always send them so: a plain
            // (vectorised) compare first, the byte-wise case-folding one only when it fails.
            HostTable::Few(hosts) => hosts
                .iter()
                .find(|(h, _)| {
                    h.len() == name.len()
                        && (h.as_bytes() == name.as_bytes() || h.eq_ignore_ascii_case(name))
                })
                .map(|(_, v)| *v),
            HostTable::Many(map) => {
                if let Some(v) = map.get(name) {
                    return Some(*v);
                }
                if !name.bytes().any(|b| b.is_ascii_uppercase()) || name.len() > 255 {
                    return None;
                }
                // Lower-cased on the stack: no allocation for a mixed-case Host.
                let mut buf = [0u8; 255];
                let lower = &mut buf[..name.len()];
                lower.copy_from_slice(name.as_bytes());
                lower.make_ascii_lowercase();
                std::str::from_utf8(lower)
                    .ok()
                    .and_then(|l| map.get(l))
                    .copied()
            }
        }
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

/// Counts a request whose body is still arriving from the client, for as long as it lives.
pub struct Uploading(Arc<Replica>);

impl Uploading {
    pub fn new(replica: Arc<Replica>) -> Self {
        replica.uploading.fetch_add(1, Ordering::Relaxed);
        Uploading(replica)
    }
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.0.uploading.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::HostTable;

    #[test]
    fn many_hosts_are_hashed_and_still_match_without_case_or_port() {
        for n in [3usize, 20] {
            let table = HostTable::new(
                (0..n)
                    .map(|i| (format!("m{i}.example").into(), (i, 0)))
                    .collect(),
            );
            assert_eq!(matches!(table, HostTable::Many(_)), n > 8);
            assert_eq!(table.get("m2.example"), Some((2, 0)));
            assert_eq!(table.get("M2.Example"), Some((2, 0)));
            assert_eq!(table.get("m2.example.org"), None);
            assert_eq!(table.get(&"x".repeat(300)), None);
            assert_eq!(table.get(&"X".repeat(300)), None);
        }
    }

    use super::*;

    #[test]
    fn prefix_segments() {
        assert_eq!(
            prefixed_segment("/deployment/v2/predict", "/deployment/"),
            Some(("v2", 14))
        );
        assert_eq!(
            prefixed_segment("/deployment/v2", "/deployment/"),
            Some(("v2", 14))
        );
        assert_eq!(prefixed_segment("/deployment/", "/deployment/"), None);
        assert_eq!(prefixed_segment("/deployments/v2", "/deployment/"), None);
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_expires_exactly_after_its_duration() {
        let r = Replica::new(1, "127.0.0.1:1".parse().unwrap(), "d".into());
        assert!(r.is_available());
        assert!(!r.record_connect_failure(2, Duration::from_millis(30)));
        assert!(r.is_available());
        assert!(r.record_connect_failure(2, Duration::from_millis(30)));
        assert!(!r.is_available());
        assert!(r.is_ejected());
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(!r.is_available(), "still ejected 1 ms before the end");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(r.is_available());
        assert!(!r.is_ejected());
    }
}
