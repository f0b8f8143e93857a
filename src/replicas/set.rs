//! The replica-set actor shared by both providers: one task per deployment that converges the
//! replicas on the desired count, checks readiness, restarts crashed replicas with back-off and
//! drains replicas before removing them.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Request;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a draining replica stays up even with nothing in flight. A request counts against
/// its replica in the same breath as it picks it (the pick reads the draining flag, then the
/// count goes up: a few instructions), so one that picked just before the drain began may be
/// seen only a moment later; 50 ms is that moment with room for a busy machine.
const DRAIN_SETTLE: Duration = Duration::from_millis(50);

use super::{DataPlaneLookup, ProviderSpec, ProviderTiming, ReplicaProvider, ReplicaSetStatus};
use crate::routing::Replica;

/// A deployment's replicas, managed by a background task on the current tokio runtime.
pub struct ReplicaSet {
    desired: watch::Sender<u32>,
    status: Arc<Mutex<ReplicaSetStatus>>,
    changed: watch::Sender<u64>,
    stop: watch::Sender<bool>,
}

impl ReplicaSet {
    /// Starts the actor. Must be called inside a tokio runtime that outlives the replicas:
    /// with the `process` provider, replicas get SIGKILL when the thread that spawned them exits.
    pub fn spawn(
        runtime: &tokio::runtime::Handle,
        name: String,
        spec: ProviderSpec,
        timing: ProviderTiming,
        lookup: DataPlaneLookup,
    ) -> Arc<ReplicaSet> {
        let (desired, desired_rx) = watch::channel(0u32);
        let (changed, _) = watch::channel(0u64);
        let (stop, stop_rx) = watch::channel(false);
        let status = Arc::new(Mutex::new(ReplicaSetStatus::default()));
        let set = Arc::new(ReplicaSet {
            desired,
            status: status.clone(),
            changed: changed.clone(),
            stop,
        });
        let actor = Actor {
            name,
            spec,
            timing,
            lookup,
            members: Vec::new(),
            consecutive_crashes: 0,
            next_start: Instant::now(),
            failure: None,
            status,
            changed,
            published: None,
        };
        runtime.spawn(actor.run(desired_rx, stop_rx));
        set
    }
}

impl ReplicaProvider for ReplicaSet {
    fn scale(&self, replicas: u32) {
        self.desired.send_replace(replicas);
        // Report the new target at once, before the actor's next pass publishes the rest.
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .desired = replicas;
    }

    fn status(&self) -> ReplicaSetStatus {
        self.status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn changed(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn shutdown(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for ReplicaSet {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

#[derive(Debug)]
enum State {
    Starting,
    Ready,
    Draining {
        since: Instant,
        replica: Option<Arc<Replica>>,
    },
    Stopping {
        since: Instant,
    },
}

struct Member {
    addr: SocketAddr,
    state: State,
    child: Option<tokio::process::Child>,
    /// Last line the process wrote to stderr, for crash reports.
    last_output: Arc<Mutex<String>>,
}

struct Actor {
    name: String,
    spec: ProviderSpec,
    timing: ProviderTiming,
    lookup: DataPlaneLookup,
    members: Vec<Member>,
    consecutive_crashes: u32,
    next_start: Instant,
    failure: Option<String>,
    status: Arc<Mutex<ReplicaSetStatus>>,
    changed: watch::Sender<u64>,
    published: Option<ReplicaSetStatus>,
}

impl Actor {
    async fn run(
        mut self,
        mut desired_rx: watch::Receiver<u32>,
        mut stop_rx: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.timing.health_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            // With no replica and none wanted there is nothing to check: only a new target
            // or the stop wakes the actor. Otherwise it polls on `health_interval`: readiness
            // is an HTTP probe, a drain ends when the data plane's in-flight counter (which
            // has no notification) reaches zero, and crashes are found with `try_wait`.
            let idle = self.members.is_empty() && (stopping || *desired_rx.borrow() == 0);
            tokio::select! {
                _ = tick.tick(), if !idle => {}
                r = desired_rx.changed() => if r.is_err() { stopping = true },
                r = stop_rx.changed() => if r.is_err() || *stop_rx.borrow() { stopping = true },
            }
            let desired = if stopping { 0 } else { *desired_rx.borrow() };
            self.reap();
            self.check_readiness().await;
            self.converge(desired);
            self.drain_and_stop();
            self.publish(desired);
            if stopping && self.members.is_empty() {
                break;
            }
        }
    }

    fn reap(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.members.len() {
            let m = &mut self.members[i];
            let exited = match m.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(format!("cannot be waited on: {e}")),
                _ => None,
            };
            let Some(how) = exited else {
                i += 1;
                continue;
            };
            let m = self.members.swap_remove(i);
            if matches!(m.state, State::Starting | State::Ready) {
                let was_ready = matches!(m.state, State::Ready);
                let output = m.last_output.lock().map(|s| s.clone()).unwrap_or_default();
                if !was_ready {
                    self.consecutive_crashes += 1;
                }
                let backoff = self.backoff();
                self.next_start = now + backoff;
                tracing::warn!(deployment = %self.name, replica = %m.addr, exit = %how, last_output = %output, restart_in = ?backoff, "replica exited unexpectedly");
                if self.consecutive_crashes >= self.timing.crash_loop_threshold {
                    let msg = format!(
                        "replicas exited {} times in a row before becoming ready (last: {how}{})",
                        self.consecutive_crashes,
                        if output.is_empty() {
                            String::new()
                        } else {
                            format!("; last output: {output}")
                        }
                    );
                    if self.failure.as_deref() != Some(msg.as_str()) {
                        tracing::error!(deployment = %self.name, "{msg}");
                    }
                    self.failure = Some(msg);
                }
            }
        }
    }

    fn backoff(&self) -> Duration {
        let exp = self.consecutive_crashes.saturating_sub(1).min(16);
        (self.timing.restart_backoff_min * 2u32.pow(exp)).min(self.timing.restart_backoff_max)
    }

    async fn check_readiness(&mut self) {
        let ProviderSpec::Process { health_path, .. } = &self.spec else {
            return;
        };
        let path = Some(health_path.clone());
        let mut checks = tokio::task::JoinSet::new();
        for (i, m) in self.members.iter().enumerate() {
            if matches!(m.state, State::Starting) {
                let (addr, path) = (m.addr, path.clone());
                checks.spawn(async move { (i, probe(addr, path.as_deref()).await) });
            }
        }
        while let Some(Ok((i, ok))) = checks.join_next().await {
            if ok {
                if let Some(m) = self.members.get_mut(i) {
                    if matches!(m.state, State::Starting) {
                        m.state = State::Ready;
                        self.consecutive_crashes = 0;
                        self.failure = None;
                        tracing::info!(deployment = %self.name, replica = %m.addr, "replica is ready");
                    }
                }
            }
        }
    }

    fn converge(&mut self, desired: u32) {
        let active = self
            .members
            .iter()
            .filter(|m| matches!(m.state, State::Starting | State::Ready))
            .count() as u32;
        if active < desired && Instant::now() >= self.next_start {
            for _ in active..desired {
                if !self.start_one() {
                    break;
                }
            }
        } else if active > desired {
            for _ in desired..active {
                self.retire_one();
            }
        }
    }

    /// Starts one replica; false when none can be started now.
    fn start_one(&mut self) -> bool {
        match self.spec.clone() {
            ProviderSpec::Static { .. } => false,
            ProviderSpec::Process { command, .. } => match self.spawn_process(&command) {
                Ok(m) => {
                    tracing::info!(deployment = %self.name, replica = %m.addr, "started replica process");
                    self.members.push(m);
                    true
                }
                Err(e) => {
                    self.consecutive_crashes += 1;
                    self.next_start = Instant::now() + self.backoff();
                    let msg = format!(
                        "cannot start the replica command {:?}: {e}",
                        command.first().map(String::as_str).unwrap_or("")
                    );
                    tracing::error!(deployment = %self.name, "{msg}");
                    if self.consecutive_crashes >= self.timing.crash_loop_threshold {
                        self.failure = Some(msg);
                    }
                    false
                }
            },
        }
    }

    fn spawn_process(&self, command: &[String]) -> std::io::Result<Member> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let (model, deployment) = self
            .name
            .split_once('/')
            .unwrap_or(("", self.name.as_str()));
        let argv: Vec<String> = command
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{deployment}", deployment)
                    .replace("{model}", model)
            })
            .collect();
        let Some((program, args)) = argv.split_first() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "empty command",
            ));
        };
        // setpriv gives the child a parent-death signal (no unsafe code needed): if switchyard
        // dies, even by SIGKILL, its replicas get SIGKILL too.
        let mut cmd = if std::path::Path::new(SETPRIV).exists() {
            let mut c = tokio::process::Command::new(SETPRIV);
            c.args(["--pdeathsig", "KILL", "--"])
                .arg(program)
                .args(args);
            c
        } else {
            let mut c = tokio::process::Command::new(program);
            c.args(args);
            c
        };
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env("PORT", port.to_string());
        let mut child = cmd.spawn()?;
        let last_output = Arc::new(Mutex::new(String::new()));
        if let Some(stderr) = child.stderr.take() {
            let (name, last) = (self.name.clone(), last_output.clone());
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(deployment = %name, port, "{line}");
                    if let Ok(mut l) = last.lock() {
                        *l = line;
                    }
                }
            });
        }
        Ok(Member {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            state: State::Starting,
            child: Some(child),
            last_output,
        })
    }

    /// Retires one replica: one still starting if any (it has no traffic), else the ready one
    /// with the fewest requests in flight, which drains first.
    fn retire_one(&mut self) {
        let pick = self
            .members
            .iter()
            .rposition(|m| matches!(m.state, State::Starting))
            .or_else(|| {
                self.members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| matches!(m.state, State::Ready))
                    .min_by_key(|(_, m)| (self.lookup)(m.addr).map_or(0, |r| r.outstanding()))
                    .map(|(i, _)| i)
            });
        let Some(i) = pick else { return };
        let now = Instant::now();
        let m = &mut self.members[i];
        match m.state {
            State::Starting => {
                if let Some(c) = m.child.as_mut() {
                    signal_group(c, Signal::SIGKILL);
                    m.state = State::Stopping { since: now };
                } else {
                    self.members.swap_remove(i);
                }
            }
            _ => {
                let replica = (self.lookup)(m.addr);
                if let Some(r) = &replica {
                    // No new requests from this instant, before the next snapshot drops it.
                    r.set_draining(true);
                }
                tracing::info!(deployment = %self.name, replica = %m.addr, in_flight = replica.as_ref().map_or(0, |r| r.outstanding()), "draining replica");
                m.state = State::Draining {
                    since: now,
                    replica,
                };
            }
        }
    }

    fn drain_and_stop(&mut self) {
        let now = Instant::now();
        let (drain_timeout, grace) = (self.timing.drain_timeout, self.timing.stop_grace);
        let mut i = 0;
        while i < self.members.len() {
            let m = &mut self.members[i];
            match &m.state {
                State::Draining { since, replica } => {
                    let busy = replica.as_ref().map_or(0, |r| r.outstanding());
                    let drained = now.duration_since(*since);
                    // A request that chose this replica just before it was marked draining
                    // may not be counted yet: stopping waits out that moment.
                    let settled = drained >= DRAIN_SETTLE;
                    if (busy == 0 && settled) || drained >= drain_timeout {
                        if busy > 0 {
                            tracing::warn!(deployment = %self.name, replica = %m.addr, in_flight = busy, "drain deadline passed; stopping anyway");
                        }
                        match m.child.as_mut() {
                            Some(c) => {
                                signal_group(c, Signal::SIGTERM);
                                m.state = State::Stopping { since: now };
                            }
                            None => {
                                self.members.swap_remove(i);
                                continue;
                            }
                        }
                    }
                }
                State::Stopping { since } if now.duration_since(*since) >= grace => {
                    if let Some(c) = m.child.as_mut() {
                        signal_group(c, Signal::SIGKILL);
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }

    fn publish(&mut self, desired: u32) {
        let status = ReplicaSetStatus {
            desired,
            ready: self
                .members
                .iter()
                .filter(|m| matches!(m.state, State::Ready))
                .map(|m| m.addr)
                .collect(),
            starting: self
                .members
                .iter()
                .filter(|m| matches!(m.state, State::Starting))
                .count() as u32,
            draining: self
                .members
                .iter()
                .filter(|m| matches!(m.state, State::Draining { .. } | State::Stopping { .. }))
                .count() as u32,
            failure: self.failure.clone(),
        };
        if self.published.as_ref() != Some(&status) {
            *self.status.lock().unwrap_or_else(|e| e.into_inner()) = status.clone();
            self.published = Some(status);
            self.changed.send_modify(|n| *n += 1);
        }
    }
}

const SETPRIV: &str = "/usr/bin/setpriv";

/// Signals the replica's whole process group (it may have children of its own).
fn signal_group(child: &mut tokio::process::Child, signal: Signal) {
    if let Some(pid) = child.id() {
        let _ = killpg(Pid::from_raw(pid as i32), signal);
    }
}

/// Readiness: `GET path` answers 2xx, or (without a path) a TCP connection is accepted.
async fn probe(addr: SocketAddr, path: Option<&str>) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let Some(path) = path else { return Some(true) };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", addr.to_string())
            .body(Empty::<bytes::Bytes>::new())
            .ok()?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status().is_success())
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
