//! `scale_command`: an orchestrator (kubectl, a script) is told each static deployment's replica
//! target when it changes, so it can start replicas (which register, or are listed) and stop
//! the ones no longer needed.
//!
//! Only the instance that moves promotions runs it (the leader on a shared store). A scale-down
//! drains first: the endpoints leaving are out of every instance's routing as soon as the lower
//! target is committed, and the command runs only once no live instance reports a request in
//! flight to them (or the drain timeout passed), so the orchestrator never stops a replica that
//! is still answering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::Controller;

/// A command that has not exited after this long is killed (and retried).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// After a failed command.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Longest a scale-down waits for requests to the leaving endpoints to finish.
pub(super) const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
pub(super) struct ScaleCommands {
    per: Mutex<HashMap<(String, String), CommandState>>,
}

#[derive(Default)]
struct CommandState {
    /// The count the command last ran with successfully.
    asked: Option<u32>,
    running: bool,
    retry_at: Option<Instant>,
    /// A scale-down waiting for its endpoints to drain: (target, endpoints, since, since wall ms).
    draining: Option<(u32, Vec<SocketAddr>, Instant, u64)>,
}

/// A deployment with a scale command, as one pass sees it.
struct Target {
    model: String,
    deployment: String,
    command: Vec<String>,
    desired: u32,
    /// Its endpoints in admission order.
    endpoints: Vec<SocketAddr>,
}

/// What one pass decided for one deployment.
enum Step {
    Run(u32),
    Wait(Instant),
    Nothing,
}

impl Controller {
    /// Runs the scale commands whose deployment's target changed. Returns when to look again
    /// (a drain in progress, a retry), if ever.
    pub(super) fn run_scale_commands(self: &Arc<Self>) -> Option<Instant> {
        let wanted: Vec<Target> = {
            let st = self.lock();
            st.models
                .iter()
                .flat_map(|m| {
                    m.deployments.iter().filter_map(|d| {
                        Some(Target {
                            model: m.id.clone(),
                            deployment: d.id.clone(),
                            command: d.scale_command.clone()?,
                            desired: d.provider.status().desired,
                            endpoints: d.provider.endpoints(),
                        })
                    })
                })
                .collect()
        };
        let mut next: Option<Instant> = None;
        for t in wanted {
            let step = self.scale_step(&t.model, &t.deployment, t.desired, &t.endpoints);
            match step {
                Step::Run(n) => self.spawn_scale_command(t.model, t.deployment, t.command, n),
                Step::Wait(at) => next = Some(next.map_or(at, |x| x.min(at))),
                Step::Nothing => {}
            }
        }
        next
    }

    fn scale_step(&self, model: &str, dep: &str, desired: u32, endpoints: &[SocketAddr]) -> Step {
        let now = Instant::now();
        let mut per = self
            .scale_commands
            .per
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let s = per.entry((model.to_owned(), dep.to_owned())).or_default();
        if s.running || s.asked == Some(desired) {
            if s.asked == Some(desired) {
                s.draining = None;
            }
            return Step::Nothing;
        }
        if let Some(at) = s.retry_at {
            if at > now {
                return Step::Wait(at);
            }
        }
        let Some(asked) = s.asked.filter(|a| desired < *a) else {
            s.draining = None;
            return Step::Run(desired);
        };
        // A scale-down: the endpoints admitted at `asked` but not at `desired` must drain.
        let leaving: Vec<SocketAddr> = endpoints
            .iter()
            .take(asked as usize)
            .skip(desired as usize)
            .copied()
            .collect();
        let (since, since_ms) = match &s.draining {
            Some((target, eps, since, ms)) if *target == desired && *eps == leaving => {
                (*since, *ms)
            }
            _ => {
                let ms = wall_ms();
                s.draining = Some((desired, leaving.clone(), now, ms));
                (now, ms)
            }
        };
        drop(per);
        let busy = self.in_flight_to(model, dep, &leaving, since_ms);
        if busy.is_empty() || now.duration_since(since) >= DRAIN_TIMEOUT {
            if !busy.is_empty() {
                tracing::warn!(
                    model,
                    deployment = dep,
                    ?busy,
                    "drain timeout: scaling down with requests still in flight"
                );
            }
            return Step::Run(desired);
        }
        tracing::debug!(
            model,
            deployment = dep,
            ?busy,
            "waiting for leaving endpoints to drain"
        );
        Step::Wait(now + Duration::from_millis(250))
    }

    /// Where requests to `leaving` are still in flight: this instance's routing, and on a
    /// shared store every live instance's heartbeat (one sent after the drain began; an
    /// instance that has not reported since counts as busy).
    fn in_flight_to(
        &self,
        model: &str,
        dep: &str,
        leaving: &[SocketAddr],
        since_ms: u64,
    ) -> Vec<String> {
        let mut busy = Vec::new();
        for (m, d, a, n) in self.router.retired_in_flight() {
            if m == model && d == dep && leaving.contains(&a) {
                busy.push(format!("{a}: {n} here"));
            }
        }
        if let Some(c) = self.cluster.get() {
            for member in c.view().members.values() {
                if member.id == c.id {
                    continue;
                }
                if member.heartbeat_ms <= since_ms {
                    busy.push(format!("{}: no report since the drain began", member.id));
                    continue;
                }
                for r in &member.in_flight_to_retired {
                    if r.model == model && r.deployment == dep && leaving.contains(&r.address) {
                        busy.push(format!("{}: {} on {}", r.address, r.in_flight, member.id));
                    }
                }
            }
        }
        busy
    }

    fn spawn_scale_command(self: &Arc<Self>, model: String, dep: String, cmd: Vec<String>, n: u32) {
        {
            let mut per = self
                .scale_commands
                .per
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            per.entry((model.clone(), dep.clone())).or_default().running = true;
        }
        let argv: Vec<String> = cmd
            .iter()
            .map(|a| {
                a.replace("{model}", &model)
                    .replace("{deployment}", &dep)
                    .replace("{replicas}", &n.to_string())
            })
            .collect();
        let me = Arc::downgrade(self);
        self.providers.runtime.spawn(async move {
            tracing::info!(model = %model, deployment = %dep, replicas = n, command = ?argv, "running the scale command");
            let ok = run(&argv).await;
            let Some(c) = me.upgrade() else { return };
            {
                let mut per = c
                    .scale_commands
                    .per
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let s = per.entry((model.clone(), dep.clone())).or_default();
                s.running = false;
                match &ok {
                    Ok(()) => {
                        s.asked = Some(n);
                        s.retry_at = None;
                        s.draining = None;
                    }
                    Err(_) => s.retry_at = Some(Instant::now() + RETRY_AFTER),
                }
            }
            if let Err(e) = ok {
                tracing::error!(model = %model, deployment = %dep, replicas = n, error = %e, "the scale command failed; it will be retried");
            }
            c.wake.notify_one();
        });
    }
}

async fn run(argv: &[String]) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Err(_) => Err(format!("{program} did not exit within {COMMAND_TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("{program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{program} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
