//! Several switchyard instances sharing one state on etcd (`--store etcd://...`).
//!
//! Every instance mirrors the prefix: it reads it, then watches from the next revision, and
//! applies each committed model record to its controller, which rebuilds the routing snapshot
//! from it. On compaction, a member gone or etcd down, it reads afresh and watches again.
//!
//! One instance leads, through a key on its lease (`{prefix}leader`, created in a transaction
//! only while absent). Only the leader ticks promotions and autoscaling, and each of its writes
//! is a transaction compared on that key's create_revision: a leader whose lease ran out while
//! it stalled cannot write. Followers send API writes as commands through etcd
//! (`{prefix}commands/`); the leader runs each one and, in the same transaction as the state
//! it changed, writes the answer and deletes the command, so a command runs once.
//!
//! Keys under the prefix:
//! - `models/{id}`: the model's saved shape (environments, current deployments, settings,
//!   registered deployments, promotions, replica targets, a bounded event log);
//! - `leader`: the leading instance, on its lease;
//! - `members/{id}`: each instance's heartbeat (admin address, applied revision), on its lease;
//! - `commands/{id}`, `results/{id}`: API writes sent by followers, and their answers;
//! - `endpoints/{model}/{deployment}/{address}`: registered endpoints, each on a lease of its
//!   TTL.

pub mod etcd;
pub mod settings;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch, Notify};

use futures_util::future::BoxFuture;
use serde_json::value::RawValue;

use etcd::{Change, Entry, Etcd, WatchItem};
pub use settings::SharedStoreSettings;

/// The leading instance, as stored in `{prefix}leader`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaderRecord {
    pub id: String,
    pub admin_url: String,
    pub since_ms: u64,
}

/// One instance's heartbeat, as stored in `{prefix}members/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub id: String,
    pub admin_url: String,
    pub proxy_addr: String,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    /// The store revision this instance's routing reflects.
    pub applied_revision: i64,
    /// Requests still in flight to endpoints that left its routing (a scale-down waits for
    /// every instance to report none).
    #[serde(default)]
    pub in_flight_to_retired: Vec<RetiredInFlight>,
    /// Cumulative figures of the pools canary analysis is judging, so the leader judges the
    /// traffic of every instance, not its own alone.
    #[serde(default)]
    pub pool_stats: Vec<PoolStatsReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolStatsReport {
    pub model: String,
    pub environment: String,
    pub deployment: String,
    pub stats: crate::metrics::window::StatsSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RetiredInFlight {
    pub model: String,
    pub deployment: String,
    pub address: std::net::SocketAddr,
    pub in_flight: u32,
}

/// What the instance this cluster runs in does for it. The controller implements it; the
/// cluster never names the controller (it depends on the cluster, not the other way round).
pub trait Member: Send + Sync {
    /// Applies a committed model record. `Some(committed_at_ms)` when it changed this
    /// instance's state, `None` for one it already had.
    fn apply_record<'a>(&'a self, value: &'a [u8]) -> BoxFuture<'a, Result<Option<u64>, String>>;
    /// Leadership came or went.
    fn leadership_changed(&self);
    /// Requests in flight to endpoints that left this instance's routing.
    fn retired_in_flight(&self) -> Vec<RetiredInFlight>;
    /// This instance's figures of the pools canary analysis is judging.
    fn analysis_figures(&self) -> Vec<PoolStatsReport>;
    /// The leader runs a follower's command (and commits its answer through [`Cluster::commit`]).
    fn run_command(&self, envelope: CommandEnvelope) -> BoxFuture<'_, ()>;
    /// A registration appeared (`present`) or went.
    fn registration_seen(
        &self,
        model: &str,
        deployment: &str,
        address: std::net::SocketAddr,
        present: bool,
    );
    /// Every registration, from a full read.
    fn registrations_read(&self, all: Vec<(String, String, std::net::SocketAddr)>);
}

/// A command sent by a follower, as stored in `{prefix}commands/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnvelope {
    pub id: String,
    pub from: String,
    /// The sender's lease: the answer is stored on it, so it goes when the sender does.
    pub lease: i64,
    /// The command, as the controller encodes it.
    pub command: Box<RawValue>,
}

/// A command the leader refused: the HTTP status and message, as the follower answers them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFailure {
    pub status: u16,
    pub message: String,
}

/// Why a command sent to the leader has no answer.
#[derive(Debug, Clone, PartialEq)]
pub enum SubmitError {
    /// The leader refused it.
    Refused(CommandFailure),
    /// Nothing was applied: etcd or a leader was not there in time.
    Unavailable(String),
}

/// A registered endpoint, as stored in `{prefix}endpoints/{model}/{deployment}/{address}` on
/// a lease of its TTL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegistrationRecord {
    pub registered_ms: u64,
    pub ttl_seconds: u64,
    /// The instance that took the registration.
    pub via: String,
}

/// (model, deployment, address) of an `endpoints/...` key (the part after the prefix).
fn registration_of(rest: &str) -> Option<(String, String, std::net::SocketAddr)> {
    let mut parts = rest.strip_prefix("endpoints/")?.splitn(3, '/');
    let (m, d, a) = (parts.next()?, parts.next()?, parts.next()?);
    Some((m.to_owned(), d.to_owned(), a.parse().ok()?))
}

/// A command's answer, as stored in `{prefix}results/{id}`.
pub type CommandResult = Result<Box<RawValue>, CommandFailure>;

/// What the leader writes with the state when it answers a command.
pub struct Reply {
    pub id: String,
    pub lease: i64,
    pub result: CommandResult,
}

/// The cluster as one instance sees it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub leader: Option<LeaderRecord>,
    pub members: BTreeMap<String, MemberRecord>,
    /// The store revision this instance has applied.
    pub applied_revision: i64,
    /// Delays (ms) from a leader's commit to this instance's routing swap, newest last.
    pub apply_lag_ms: VecDeque<u64>,
}

const LAGS_KEPT: usize = 2000;
/// How long a follower waits for the leader to answer a command, beyond the lease TTL.
const COMMAND_GRACE: Duration = Duration::from_secs(5);
/// etcd refuses transactions of more than 128 operations by default.
const OPS_PER_TXN: usize = 100;

pub struct Cluster {
    etcd: Etcd,
    prefix: String,
    pub id: String,
    admin_url: String,
    proxy_addr: String,
    started_ms: u64,
    ttl: i64,
    /// The instance's lease (0 while it has none).
    lease: AtomicI64,
    /// The create_revision of the leader key while this instance leads, else 0.
    leader_rev: AtomicI64,
    view: Mutex<ClusterView>,
    waiting: Mutex<HashMap<String, oneshot::Sender<CommandResult>>>,
    /// Commands the leader is running, so a command seen twice runs once.
    running: Arc<Mutex<HashSet<String>>>,
    /// Wakes the lease loop to campaign at once (the leader key went away).
    campaign_now: Notify,
    member: std::sync::OnceLock<Weak<dyn Member>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// The cluster client for these settings; nothing is contacted yet.
    pub fn connect(
        settings: &SharedStoreSettings,
        admin_addr: std::net::SocketAddr,
        proxy_addr: std::net::SocketAddr,
    ) -> Result<Arc<Cluster>, String> {
        let etcd = Etcd::new(
            &settings.endpoints,
            settings.credential.clone(),
            settings.tls.as_ref(),
            // A loaded member can take seconds to fsync a write; a dead one refuses at once.
            Duration::from_secs(5),
        )?;
        let id = settings
            .instance_name
            .clone()
            .unwrap_or_else(|| default_instance_name(admin_addr));
        Ok(Arc::new(Cluster {
            etcd,
            prefix: settings.prefix.clone(),
            id,
            admin_url: format!("http://{admin_addr}"),
            proxy_addr: proxy_addr.to_string(),
            started_ms: now_ms(),
            ttl: settings.lease_ttl_seconds as i64,
            lease: AtomicI64::new(0),
            leader_rev: AtomicI64::new(0),
            view: Mutex::new(ClusterView::default()),
            waiting: Mutex::new(HashMap::new()),
            running: Arc::new(Mutex::new(HashSet::new())),
            campaign_now: Notify::new(),
            member: std::sync::OnceLock::new(),
        }))
    }

    /// Reads the shared state into `member`, then starts the lease, election and watch tasks
    /// on the current runtime. Fails when etcd cannot be read within 10 s.
    pub async fn start(
        self: &Arc<Self>,
        member: Arc<dyn Member>,
        stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let _ = self.member.set(Arc::downgrade(&member));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let (rev, entries) = loop {
            let read = match self.etcd.authenticate().await {
                Ok(()) => self.etcd.range_prefix(&self.prefix).await,
                Err(e) => Err(e),
            };
            match read {
                Ok(r) => break r,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::warn!(error = %e, "waiting for etcd");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot read etcd at {} within 10 s: {e}",
                        self.etcd.endpoints()
                    ))
                }
            }
        };
        self.resync(&member, rev, entries).await;
        tracing::info!(instance = %self.id, endpoints = %self.etcd.endpoints(), prefix = %self.prefix, revision = rev, "following the shared state on etcd");
        tokio::spawn(self.clone().mirror_loop(rev, stop.clone()));
        tokio::spawn(self.clone().lease_loop(stop));
        Ok(())
    }

    pub fn is_leader(&self) -> bool {
        self.leader_rev.load(Ordering::Acquire) != 0
    }

    /// The sum of what the other instances last reported for a pool (empty when none did).
    pub fn others_pool_stats(
        &self,
        model: &str,
        environment: &str,
        deployment: &str,
    ) -> crate::metrics::window::StatsSnapshot {
        let v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let mut sum = crate::metrics::window::StatsSnapshot::default();
        for m in v.members.values().filter(|m| m.id != self.id) {
            for r in &m.pool_stats {
                if r.model == model && r.environment == environment && r.deployment == deployment {
                    sum.add(&r.stats);
                }
            }
        }
        sum
    }

    pub fn view(&self) -> ClusterView {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn member(&self) -> Option<Arc<dyn Member>> {
        self.member.get().and_then(Weak::upgrade)
    }

    fn set_leading(&self, rev: i64) {
        let was = self.leader_rev.swap(rev, Ordering::AcqRel);
        if (was != 0) != (rev != 0) {
            if rev != 0 {
                tracing::info!(instance = %self.id, "this instance leads the controller");
            } else {
                tracing::warn!(instance = %self.id, "this instance no longer leads");
            }
            if let Some(m) = self.member() {
                m.leadership_changed();
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Writes.

    /// Commits changed model records (id, encoded model) and a command's answer, if this
    /// instance still leads. Nothing is written otherwise.
    pub async fn commit(
        &self,
        changes: &[(String, Vec<u8>)],
        reply: Option<&Reply>,
    ) -> Result<(), String> {
        let rev = self.leader_rev.load(Ordering::Acquire);
        if rev == 0 {
            return Err("this instance does not lead the controller".into());
        }
        let leader_key = self.key("leader");
        let at = now_ms();
        let mut ops: Vec<_> = changes
            .iter()
            .map(|(id, model)| {
                let mut value = format!(
                    "{{\"committed_at_ms\":{at},\"by\":{},\"model\":",
                    json_str(&self.id)
                )
                .into_bytes();
                value.extend_from_slice(model);
                value.push(b'}');
                etcd::op_put(&self.key(&format!("models/{id}")), value, 0)
            })
            .collect();
        let mut first_compare = vec![etcd::compare_create_revision(&leader_key, rev)];
        // The answer goes after the records it changed: a follower applies the records before
        // it sees the answer, so what it answers with reflects the change.
        let mut reply_ops = Vec::new();
        if let Some(r) = reply {
            let cmd_key = self.key(&format!("commands/{}", r.id));
            first_compare.push(etcd::compare_exists(&cmd_key));
            let answer = serde_json::to_vec(&r.result).map_err(|e| e.to_string())?;
            reply_ops.push(etcd::op_put(
                &self.key(&format!("results/{}", r.id)),
                answer,
                r.lease,
            ));
            reply_ops.push(etcd::op_delete(&cmd_key));
        }
        let take = OPS_PER_TXN.saturating_sub(reply_ops.len()).min(ops.len());
        let mut first_ops: Vec<_> = ops.drain(..take).collect();
        first_ops.extend(reply_ops);
        let mut batches = vec![(first_compare, first_ops)];
        while !ops.is_empty() {
            let n = OPS_PER_TXN.min(ops.len());
            batches.push((
                vec![etcd::compare_create_revision(&leader_key, rev)],
                ops.drain(..n).collect(),
            ));
        }
        for (compare, success) in batches {
            let resp = self
                .etcd
                .txn(etcdv3client::pb::TxnRequest {
                    compare,
                    success,
                    failure: vec![etcd::op_get(&leader_key)],
                })
                .await
                .map_err(|e| e.to_string())?;
            if !resp.succeeded {
                let still_mine = resp.responses.iter().any(|r| match &r.response {
                    Some(etcdv3client::pb::response_op::Response::ResponseRange(rr)) => {
                        rr.kvs.iter().any(|kv| kv.create_revision == rev)
                    }
                    _ => false,
                });
                if !still_mine {
                    self.set_leading(0);
                    return Err("leadership was lost before the change was committed".into());
                }
                return Err("the command was withdrawn by its sender before it ran".into());
            }
        }
        Ok(())
    }

    /// Sends a command to the leader through etcd and waits for its answer.
    pub async fn submit(&self, command: Box<RawValue>) -> Result<Box<RawValue>, SubmitError> {
        let lease = self.lease.load(Ordering::Acquire);
        if lease == 0 {
            return Err(SubmitError::Unavailable(
                "this instance has no etcd lease yet (is etcd reachable?)".into(),
            ));
        }
        let id = format!("{}-{:016x}", now_ms(), rand::random::<u64>());
        let envelope = CommandEnvelope {
            id: id.clone(),
            from: self.id.clone(),
            lease,
            command,
        };
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let forget = || {
            self.waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        };
        let cmd_key = self.key(&format!("commands/{id}"));
        let value = match serde_json::to_vec(&envelope) {
            Ok(v) => v,
            Err(e) => {
                forget();
                return Err(SubmitError::Unavailable(e.to_string()));
            }
        };
        if let Err(e) = self.etcd.put(&cmd_key, value, lease).await {
            forget();
            return Err(SubmitError::Unavailable(format!(
                "the change could not be sent to the leader: {e}"
            )));
        }
        let wait = Duration::from_secs(self.ttl as u64) + COMMAND_GRACE;
        let mut rx = rx;
        let answer = match tokio::time::timeout(wait, &mut rx).await {
            Ok(Ok(a)) => Some(a),
            _ => {
                // Withdraw it unless the leader took it meanwhile.
                let withdrawn = self
                    .etcd
                    .txn(etcdv3client::pb::TxnRequest {
                        compare: vec![etcd::compare_exists(&cmd_key)],
                        success: vec![etcd::op_delete(&cmd_key)],
                        failure: vec![],
                    })
                    .await
                    .map(|r| r.succeeded);
                match withdrawn {
                    Ok(true) => None,
                    _ => tokio::time::timeout(COMMAND_GRACE, rx)
                        .await
                        .ok()
                        .and_then(|r| r.ok()),
                }
            }
        };
        forget();
        let result_key = self.key(&format!("results/{id}"));
        // Best effort: the answer is on this instance's lease and goes with it anyway.
        let _ = self
            .etcd
            .txn(etcdv3client::pb::TxnRequest {
                compare: vec![],
                success: vec![etcd::op_delete(&result_key)],
                failure: vec![],
            })
            .await;
        match answer {
            Some(Ok(outcome)) => Ok(outcome),
            Some(Err(f)) => Err(SubmitError::Refused(f)),
            None => Err(SubmitError::Unavailable(format!(
                "no leader acted on the change within {} s; it was not applied",
                wait.as_secs()
            ))),
        }
    }

    /// Registers (or renews) an endpoint: a key on a lease of its own TTL, so it goes when it
    /// is not renewed, whichever instance took the registration.
    pub async fn register_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: std::net::SocketAddr,
        ttl: Duration,
    ) -> Result<(), String> {
        let lease = self
            .etcd
            .grant(ttl.as_secs().max(1) as i64)
            .await
            .map_err(|e| format!("the registration could not be stored: {e}"))?;
        let value = serde_json::to_vec(&RegistrationRecord {
            registered_ms: now_ms(),
            ttl_seconds: ttl.as_secs(),
            via: self.id.clone(),
        })
        .map_err(|e| e.to_string())?;
        self.etcd
            .put(
                &self.key(&format!("endpoints/{model}/{deployment}/{address}")),
                value,
                lease,
            )
            .await
            .map_err(|e| format!("the registration could not be stored: {e}"))
    }

    pub async fn deregister_endpoint(
        &self,
        model: &str,
        deployment: &str,
        address: std::net::SocketAddr,
    ) -> Result<bool, String> {
        let key = self.key(&format!("endpoints/{model}/{deployment}/{address}"));
        let resp = self
            .etcd
            .txn(etcdv3client::pb::TxnRequest {
                compare: vec![etcd::compare_exists(&key)],
                success: vec![etcd::op_delete(&key)],
                failure: vec![],
            })
            .await
            .map_err(|e| format!("the registration could not be removed: {e}"))?;
        Ok(resp.succeeded)
    }

    // -----------------------------------------------------------------------------------------
    // Lease, heartbeat and election.

    async fn lease_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let ttl = Duration::from_secs(self.ttl as u64);
        // At least every second: a scale-down waits for every instance's next report.
        let every = (ttl / 3).clamp(Duration::from_millis(300), Duration::from_secs(1));
        let mut last_ok = tokio::time::Instant::now();
        loop {
            let mut lease = self.lease.load(Ordering::Acquire);
            if lease == 0 {
                match self.etcd.grant(self.ttl).await {
                    Ok(id) => {
                        lease = id;
                        self.lease.store(id, Ordering::Release);
                        last_ok = tokio::time::Instant::now();
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot get an etcd lease"),
                }
            } else {
                match self.etcd.keep_alive(lease).await {
                    Ok(left) if left > 0 => last_ok = tokio::time::Instant::now(),
                    Ok(_) => {
                        tracing::warn!("the etcd lease expired; taking a new one");
                        self.lease.store(0, Ordering::Release);
                        self.set_leading(0);
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot renew the etcd lease"),
                }
            }
            if last_ok.elapsed() >= ttl {
                // The lease may have run out in etcd: another instance may lead by now.
                self.set_leading(0);
            }
            if lease != 0 && last_ok.elapsed() < ttl {
                self.heartbeat(lease).await;
                self.campaign(lease).await;
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.campaign_now.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        // Leave at once rather than after the TTL: the leader key and heartbeat go with it.
        let lease = self.lease.load(Ordering::Acquire);
        if lease != 0 {
            let _ = self.etcd.revoke(lease).await;
        }
    }

    async fn heartbeat(&self, lease: i64) {
        let record = MemberRecord {
            id: self.id.clone(),
            admin_url: self.admin_url.clone(),
            proxy_addr: self.proxy_addr.clone(),
            started_ms: self.started_ms,
            heartbeat_ms: now_ms(),
            applied_revision: self.view().applied_revision,
            in_flight_to_retired: self
                .member()
                .map(|m| m.retired_in_flight())
                .unwrap_or_default(),
            pool_stats: self
                .member()
                .map(|m| m.analysis_figures())
                .unwrap_or_default(),
        };
        if let Ok(v) = serde_json::to_vec(&record) {
            if let Err(e) = self
                .etcd
                .put(&self.key(&format!("members/{}", self.id)), v, lease)
                .await
            {
                tracing::warn!(error = %e, "cannot write the heartbeat");
            }
        }
    }

    /// Takes the leader key if it is free; learns whether this instance holds it.
    async fn campaign(&self, lease: i64) {
        let key = self.key("leader");
        let record = LeaderRecord {
            id: self.id.clone(),
            admin_url: self.admin_url.clone(),
            since_ms: now_ms(),
        };
        let Ok(value) = serde_json::to_vec(&record) else {
            return;
        };
        let resp = self
            .etcd
            .txn(etcdv3client::pb::TxnRequest {
                compare: vec![etcd::compare_create_revision(&key, 0)],
                success: vec![etcd::op_put(&key, value, lease)],
                failure: vec![etcd::op_get(&key)],
            })
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "campaign failed");
                return;
            }
        };
        if resp.succeeded {
            let rev = resp.header.map_or(0, |h| h.revision);
            self.set_leading(rev);
            // Commands sent while nobody led.
            self.run_pending_commands().await;
            return;
        }
        let holder = resp.responses.iter().find_map(|r| match &r.response {
            Some(etcdv3client::pb::response_op::Response::ResponseRange(rr)) => {
                rr.kvs.first().cloned()
            }
            _ => None,
        });
        match holder {
            Some(kv) if kv.lease == lease => self.set_leading(kv.create_revision),
            _ => self.set_leading(0),
        }
    }

    // -----------------------------------------------------------------------------------------
    // The mirror.

    async fn mirror_loop(self: Arc<Self>, mut rev: i64, mut stop: watch::Receiver<bool>) {
        let mut fresh_read = false;
        loop {
            if *stop.borrow() {
                return;
            }
            let Some(member) = self.member() else {
                return;
            };
            if fresh_read {
                match self.etcd.range_prefix(&self.prefix).await {
                    Ok((r, entries)) => {
                        rev = r;
                        self.resync(&member, r, entries).await;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot read etcd");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                }
            }
            fresh_read = true;
            let mut w = match self.etcd.watch(&self.prefix, rev + 1).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot watch etcd");
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
            };
            loop {
                let item = tokio::select! {
                    item = w.next() => item,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match item {
                    WatchItem::Changes(r, changes) => {
                        for c in changes {
                            self.apply_change(&member, c, true).await;
                        }
                        rev = rev.max(r);
                        self.view
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .applied_revision = rev;
                    }
                    WatchItem::Ended(why) => {
                        tracing::info!(reason = %why, "the etcd watch ended; reading afresh");
                        break;
                    }
                }
            }
        }
    }

    /// Applies a full read: every record present, members replaced, commands queued.
    async fn resync(&self, member: &Arc<dyn Member>, rev: i64, entries: Vec<Entry>) {
        {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.members.clear();
            v.leader = None;
        }
        let mut registered = Vec::new();
        for e in entries {
            if let Some(r) = e.key.strip_prefix(&self.prefix).and_then(registration_of) {
                registered.push(r);
                continue;
            }
            self.apply_change(member, Change::Put(e), false).await;
        }
        member.registrations_read(registered);
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .applied_revision = rev;
    }

    /// Applies one change; `live` for a watched one (its commit-to-swap delay is recorded).
    async fn apply_change(&self, member: &Arc<dyn Member>, change: Change, live: bool) {
        let (key, entry) = match &change {
            Change::Put(e) => (e.key.as_str(), Some(e)),
            Change::Delete(k) => (k.as_str(), None),
        };
        let Some(rest) = key.strip_prefix(&self.prefix) else {
            return;
        };
        if rest.starts_with("models/") {
            if let Some(e) = entry {
                match member.apply_record(&e.value).await {
                    Ok(Some(committed_at)) if live => {
                        let lag = now_ms().saturating_sub(committed_at);
                        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
                        if v.apply_lag_ms.len() >= LAGS_KEPT {
                            v.apply_lag_ms.pop_front();
                        }
                        v.apply_lag_ms.push_back(lag);
                    }
                    Ok(_) => {}
                    Err(err) => tracing::error!(key, error = %err, "cannot apply a shared record"),
                }
            }
        } else if rest == "leader" {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            v.leader = entry.and_then(|e| serde_json::from_slice(&e.value).ok());
            if entry.is_none() {
                drop(v);
                self.campaign_now.notify_one();
            }
        } else if let Some(id) = rest.strip_prefix("members/") {
            let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
            match entry.and_then(|e| serde_json::from_slice::<MemberRecord>(&e.value).ok()) {
                Some(m) => {
                    v.members.insert(id.to_owned(), m);
                }
                None => {
                    v.members.remove(id);
                }
            }
        } else if let Some(id) = rest.strip_prefix("results/") {
            if let Some(e) = entry {
                let waiter = self
                    .waiting
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                if let Some(tx) = waiter {
                    match serde_json::from_slice::<CommandResult>(&e.value) {
                        Ok(r) => {
                            let _ = tx.send(r);
                        }
                        Err(err) => tracing::error!(error = %err, "unreadable command answer"),
                    }
                }
            }
        } else if rest.starts_with("endpoints/") {
            if let Some((m, d, a)) = registration_of(rest) {
                member.registration_seen(&m, &d, a, entry.is_some());
            }
        } else if rest.starts_with("commands/") {
            if let Some(e) = entry {
                if self.is_leader() {
                    self.spawn_command(e.value.clone());
                }
            }
        }
    }

    fn spawn_command(&self, value: Vec<u8>) {
        let envelope: CommandEnvelope = match serde_json::from_slice(&value) {
            Ok(e) => e,
            Err(err) => {
                tracing::error!(error = %err, "unreadable command in etcd");
                return;
            }
        };
        if !self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(envelope.id.clone())
        {
            return;
        }
        let Some(member) = self.member() else {
            return;
        };
        let running = self.running.clone();
        tokio::spawn(async move {
            let id = envelope.id.clone();
            member.run_command(envelope).await;
            running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
        });
    }

    async fn run_pending_commands(&self) {
        match self.etcd.range_prefix(&self.key("commands/")).await {
            Ok((_, entries)) => {
                for e in entries {
                    self.spawn_command(e.value);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read pending commands"),
        }
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The host name and admin port: unique per host, stable across restarts.
fn default_instance_name(admin: std::net::SocketAddr) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "switchyard".into());
    format!("{host}-{}", admin.port())
}

/// Percentiles of the apply lags, for the API.
pub fn lag_summary(lags: &VecDeque<u64>) -> Option<(usize, u64, u64, u64)> {
    if lags.is_empty() {
        return None;
    }
    let mut v: Vec<u64> = lags.iter().copied().collect();
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    Some((v.len(), at(0.5), at(0.99), v[v.len() - 1]))
}
