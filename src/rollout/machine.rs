//! The promotion state machine: pure, with an injected clock (milliseconds).
//!
//! A [`Promotion`] takes observations (ready replicas per deployment) and control requests, and
//! returns [`Effects`]: replica targets, the traffic percent for the candidate, and events. It
//! does no I/O; the driver applies the effects (replica provider, routing snapshot, store).
//!
//! It runs the same cycle as [`super::plan`] but on live counts, so that it can advance on
//! what is actually ready. With every requested replica ready at once, the sequence of
//! (candidate, previous, percent) it produces is exactly the plan's (tested below).
//!
//! Decisions where the seed leaves room:
//! - A scale-up step waits for the replicas it requested. If after `ready_wait_ms` only some are
//!   ready, the step goes on with those: traffic moves by at most the ready share
//!   (`ceil(100 × ready / fleet)`) and, in surge mode, the previous deployment gives up as many
//!   replicas as became ready (25 requested, 5 ready: previous 100 → 95).
//! - The promotion FAILS when no candidate replica became ready for `ready_deadline_ms`
//!   (counted while not paused), or when the provider reports the candidate crash-looping.
//! - Pause and force roll forward take effect at the next step boundary: a wait for replicas
//!   in progress completes first. Force cancel is immediate.
//! - Graceful cancel ramps back make-before-break whatever the mode: scale the previous up by
//!   rs, shift ts back, scale the candidate down by rs, stabilize. When no traffic is left on
//!   the candidate it ends at once.

use serde::{Deserialize, Serialize};

use super::analysis::{AnalysisSettings, AnalysisState, OnFailure, Verdict, VerdictResult};
use super::plan::{self, Mode, PlanError, RollingConfig};

/// Baseten's promotion statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Releasing,
    RampingUp,
    Paused,
    RampingDown,
    Succeeded,
    Failed,
    Canceled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Succeeded | Status::Failed | Status::Canceled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Releasing => "RELEASING",
            Status::RampingUp => "RAMPING_UP",
            Status::Paused => "PAUSED",
            Status::RampingDown => "RAMPING_DOWN",
            Status::Succeeded => "SUCCEEDED",
            Status::Failed => "FAILED",
            Status::Canceled => "CANCELED",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to the previous deployment after a promotion succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CleanupStrategy {
    /// Scale to zero replicas; it can be reactivated. Baseten's default.
    #[default]
    ScaleToZero,
    /// Leave it at its current replica count.
    Keep,
    /// Deactivate it: no replicas, no pinned traffic.
    Deactivate,
}

/// How one promotion runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromotionConfig {
    /// `rolling_deploy`: step by step, or all at once when the candidate is ready.
    pub rolling: bool,
    pub rolling_config: RollingConfig,
    pub cleanup: CleanupStrategy,
    /// How long a step waits for all the replicas it asked for before going on with those ready.
    pub ready_wait_ms: u64,
    /// No candidate replica ready for this long: FAILED.
    pub ready_deadline_ms: u64,
    /// Canary analysis: each traffic shift waits for a passing verdict on live traffic.
    #[serde(default)]
    pub analysis: AnalysisSettings,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        PromotionConfig {
            rolling: true,
            rolling_config: RollingConfig::default(),
            cleanup: CleanupStrategy::default(),
            ready_wait_ms: 120_000,
            ready_deadline_ms: 600_000,
            analysis: AnalysisSettings::default(),
        }
    }
}

/// What the driver saw since the last tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub candidate_ready: u32,
    pub previous_ready: u32,
    /// Set when the provider gave up on the candidate's replicas (crash loop), with why.
    pub candidate_failure: Option<String>,
}

/// One entry of the promotion's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u64,
    pub status: Status,
    pub percent_traffic_to_new_version: u32,
    pub candidate_replicas: u32,
    pub previous_replicas: u32,
    pub reason: String,
}

/// What the driver must do after a call. Targets are absolute; `None` = unchanged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    pub candidate_replicas: Option<u32>,
    pub previous_replicas: Option<u32>,
    pub percent: Option<u32>,
    /// Set once, when the promotion succeeded: apply to the previous deployment.
    pub cleanup: Option<CleanupStrategy>,
    pub events: Vec<Event>,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.candidate_replicas = other.candidate_replicas.or(self.candidate_replicas);
        self.previous_replicas = other.previous_replicas.or(self.previous_replicas);
        self.percent = other.percent.or(self.percent);
        self.cleanup = other.cleanup.or(self.cleanup);
        self.events.extend(other.events);
    }
}

/// The next step to run at a boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    ScaleUp,
    Shift,
    ScaleDown,
    Stabilize,
}

/// Where the machine is between calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Waiting for the candidate's requested replicas.
    WaitCandidate {
        since_ms: u64,
        ready_at_start: u32,
    },
    /// Waiting for the previous deployment's requested replicas (overhead, or a ramp-down).
    WaitPrevious {
        since_ms: u64,
    },
    Stabilizing {
        until_ms: u64,
    },
    /// Canary analysis is on and no interval passed since the last traffic shift.
    AwaitVerdict,
    /// Between steps; `next` runs when not paused.
    Boundary,
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("the promotion is already {0}")]
    Terminal(Status),
    #[error("the promotion is {0}; {1}")]
    NotApplicable(Status, &'static str),
}

/// One promotion of an environment from its current deployment to a candidate. Serializable,
/// so the driver can persist it and resume after a crash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Promotion {
    pub status: Status,
    pub config: PromotionConfig,
    pub mode: Mode,
    /// The previous deployment's replica count when the promotion started.
    pub original_previous: u32,
    pub fleet: u32,
    pub replicas_per_step: u32,
    pub traffic_per_step: u32,
    pub percent: u32,
    pub candidate_target: u32,
    pub previous_target: u32,
    pub phase: Phase,
    pub next: Next,
    /// Candidate replicas already paid for by scaling the previous deployment down.
    accounted_ready: u32,
    /// Most candidate replicas seen ready, and when that last grew.
    best_ready: u32,
    last_progress_ms: u64,
    resume_to: Status,
    roll_forward_requested: bool,
    pub error_message: Option<String>,
    pub started_ms: u64,
    #[serde(default)]
    pub analysis: AnalysisState,
    /// Set when analysis rolls the promotion back: the ramp-down ends FAILED with this.
    #[serde(default)]
    rollback_reason: Option<String>,
}

impl Promotion {
    /// Starts a promotion from a previous deployment with `previous_replicas` replicas.
    pub fn start(
        previous_replicas: u32,
        config: PromotionConfig,
        now: u64,
    ) -> Result<(Promotion, Effects), PlanError> {
        plan::Field::Replicas.check(i64::from(previous_replicas))?;
        let rc = config.rolling_config;
        rc.validate()?;
        let fleet = plan::fleet_size(previous_replicas, rc.replica_overhead_percent);
        let rs = plan::replicas_per_step(fleet, rc.step_percent());
        let ts = plan::traffic_per_step(fleet, rs);
        let mut p = Promotion {
            status: Status::Releasing,
            mode: rc.mode(),
            original_previous: previous_replicas,
            fleet,
            replicas_per_step: rs,
            traffic_per_step: ts,
            percent: 0,
            candidate_target: 0,
            previous_target: previous_replicas,
            phase: Phase::Boundary,
            next: Next::ScaleUp,
            accounted_ready: 0,
            best_ready: 0,
            last_progress_ms: now,
            resume_to: Status::RampingUp,
            roll_forward_requested: false,
            error_message: None,
            started_ms: now,
            analysis: AnalysisState::default(),
            rollback_reason: None,
            config,
        };
        let mut fx = Effects::default();
        p.event(&mut fx, now, "promotion started");
        if !p.config.rolling {
            // All at once: the candidate to full size, traffic swaps when every replica is ready.
            p.candidate_target = fleet;
            fx.candidate_replicas = Some(fleet);
            p.phase = Phase::WaitCandidate {
                since_ms: now,
                ready_at_start: 0,
            };
        } else if fleet > previous_replicas {
            p.previous_target = fleet;
            fx.previous_replicas = Some(fleet);
            p.phase = Phase::WaitPrevious { since_ms: now };
            p.event(
                &mut fx,
                now,
                format!("pre-provisioning the previous deployment to {fleet} replicas"),
            );
        }
        if p.mode == Mode::Unavailable {
            p.next = Next::ScaleDown;
        }
        Ok((p, fx))
    }

    fn event(&self, fx: &mut Effects, now: u64, reason: impl Into<String>) {
        fx.events.push(Event {
            at_ms: now,
            status: self.status,
            percent_traffic_to_new_version: self.percent,
            candidate_replicas: self.candidate_target,
            previous_replicas: self.previous_target,
            reason: reason.into(),
        });
    }

    fn set_status(
        &mut self,
        fx: &mut Effects,
        now: u64,
        status: Status,
        reason: impl Into<String>,
    ) {
        self.status = status;
        self.event(fx, now, reason);
    }

    fn ramping_down(&self) -> bool {
        self.status == Status::RampingDown
            || (self.status == Status::Paused && self.resume_to == Status::RampingDown)
    }

    /// Ready share of the fleet, in percent, rounded up.
    fn ready_cap(&self, ready: u32) -> u32 {
        if self.fleet == 0 {
            return 100;
        }
        ((100 * u64::from(ready))
            .div_ceil(u64::from(self.fleet))
            .min(100)) as u32
    }

    /// Advances as far as the observation allows.
    pub fn tick(&mut self, obs: &Observation, now: u64) -> Effects {
        let mut fx = Effects::default();
        if self.status.is_terminal() {
            return fx;
        }
        if obs.candidate_ready > self.best_ready {
            self.best_ready = obs.candidate_ready;
            self.last_progress_ms = now;
        }
        if self.status == Status::Releasing && obs.candidate_ready > 0 && self.config.rolling {
            self.set_status(
                &mut fx,
                now,
                Status::RampingUp,
                "first candidate replica is ready",
            );
        }
        if let Some(why) = &obs.candidate_failure {
            if !self.ramping_down() {
                let why = why.clone();
                self.fail(
                    &mut fx,
                    now,
                    format!("candidate replicas are failing: {why}"),
                );
                return fx;
            }
        }
        // Bounded: each pass either waits (break) or moves the cycle on by one action.
        for _ in 0..16 {
            match self.phase {
                Phase::Done => break,
                Phase::WaitCandidate {
                    since_ms,
                    ready_at_start,
                } => {
                    let all = obs.candidate_ready >= self.candidate_target;
                    let partial = self.config.rolling
                        && obs.candidate_ready > ready_at_start
                        && now.saturating_sub(since_ms) >= self.config.ready_wait_ms;
                    if all || partial {
                        self.phase = Phase::Boundary;
                    } else if self.status != Status::Paused
                        && now.saturating_sub(self.last_progress_ms)
                            >= self.config.ready_deadline_ms
                    {
                        let msg = format!(
                            "{} of {} candidate replicas ready; none became ready for {} s",
                            obs.candidate_ready,
                            self.candidate_target,
                            self.config.ready_deadline_ms / 1000
                        );
                        self.fail(&mut fx, now, msg);
                        break;
                    } else {
                        break;
                    }
                }
                Phase::WaitPrevious { since_ms } => {
                    if obs.previous_ready >= self.previous_target
                        || now.saturating_sub(since_ms) >= self.config.ready_wait_ms
                    {
                        self.phase = Phase::Boundary;
                    } else {
                        break;
                    }
                }
                Phase::Stabilizing { until_ms } => {
                    if now >= until_ms {
                        self.phase = Phase::Boundary;
                    } else {
                        break;
                    }
                }
                // A verdict (or a roll forward, or a cancel) moves it on.
                Phase::AwaitVerdict => break,
                Phase::Boundary => {
                    if self.roll_forward_requested {
                        self.finish_success(&mut fx, now, "forced roll forward");
                        break;
                    }
                    if self.status == Status::Paused {
                        break;
                    }
                    if !self.config.rolling {
                        self.finish_success(
                            &mut fx,
                            now,
                            "every candidate replica is ready; all traffic swapped",
                        );
                        break;
                    }
                    if self.ramping_down() {
                        self.step_back(obs, &mut fx, now);
                    } else {
                        self.step_forward(obs, &mut fx, now);
                    }
                }
            }
        }
        fx
    }

    fn step_forward(&mut self, obs: &Observation, fx: &mut Effects, now: u64) {
        let (rs, ts, fleet) = (self.replicas_per_step, self.traffic_per_step, self.fleet);
        match self.next {
            Next::ScaleUp => {
                self.candidate_target = plan::scaled_up(self.candidate_target, rs, fleet);
                fx.candidate_replicas = Some(self.candidate_target);
                self.phase = Phase::WaitCandidate {
                    since_ms: now,
                    ready_at_start: obs.candidate_ready,
                };
                self.next = Next::Shift;
                self.event(
                    fx,
                    now,
                    format!("scaling the candidate up to {}", self.candidate_target),
                );
            }
            Next::Shift => {
                let a = &self.config.analysis;
                let gated = a.gates().next().is_some();
                if a.enabled && (self.percent > 0 || gated) && !self.analysis.passed_since_shift {
                    if self.analysis.interval_started_ms.is_none() {
                        // The first shift, held by gates: their interval starts now.
                        self.analysis.interval_started_ms = Some(now);
                    }
                    self.phase = Phase::AwaitVerdict;
                    self.event(
                        fx,
                        now,
                        format!(
                            "waiting for a passing analysis interval before shifting more traffic (every {} s)",
                            a.interval_seconds
                        ),
                    );
                    return;
                }
                let mut percent = plan::next_traffic(self.percent, ts);
                if obs.candidate_ready < self.candidate_target {
                    // Only what is ready takes traffic.
                    percent = percent
                        .min(self.ready_cap(obs.candidate_ready))
                        .max(self.percent);
                }
                self.percent = percent;
                fx.percent = Some(percent);
                // The next interval measures this step alone.
                self.analysis.passed_since_shift = false;
                self.analysis.interval_started_ms = Some(now);
                self.event(
                    fx,
                    now,
                    format!("shifted {percent}% of traffic to the candidate"),
                );
                match self.mode {
                    Mode::Surge => self.next = Next::ScaleDown,
                    Mode::Unavailable => {
                        if self.complete(obs) {
                            self.finish_success(
                                fx,
                                now,
                                "all traffic and replicas on the candidate",
                            );
                            return;
                        }
                        self.next = Next::Stabilize;
                    }
                }
            }
            Next::ScaleDown => {
                let by = match self.mode {
                    Mode::Surge => {
                        let newly = obs.candidate_ready.saturating_sub(self.accounted_ready);
                        self.accounted_ready = self.accounted_ready.max(obs.candidate_ready);
                        newly
                    }
                    Mode::Unavailable => rs,
                };
                self.previous_target = plan::scaled_down(self.previous_target, by);
                fx.previous_replicas = Some(self.previous_target);
                self.event(
                    fx,
                    now,
                    format!(
                        "scaling the previous deployment down to {}",
                        self.previous_target
                    ),
                );
                match self.mode {
                    Mode::Surge => {
                        if self.complete(obs) {
                            self.finish_success(
                                fx,
                                now,
                                "all traffic and replicas on the candidate",
                            );
                            return;
                        }
                        self.next = Next::Stabilize;
                    }
                    Mode::Unavailable => self.next = Next::ScaleUp,
                }
            }
            Next::Stabilize => {
                self.stabilize(fx, now);
                self.next = match self.mode {
                    Mode::Surge => Next::ScaleUp,
                    Mode::Unavailable => Next::ScaleDown,
                };
            }
        }
    }

    /// One action of the graceful cancel: previous up, traffic back, candidate down, stabilize.
    fn step_back(&mut self, obs: &Observation, fx: &mut Effects, now: u64) {
        if self.percent == 0 {
            self.finish_cancel(fx, now, "no traffic left on the candidate");
            return;
        }
        let (rs, ts, fleet) = (self.replicas_per_step, self.traffic_per_step, self.fleet);
        match self.next {
            Next::ScaleUp => {
                let target = plan::scaled_up(self.previous_target, rs, fleet);
                if target != self.previous_target {
                    self.previous_target = target;
                    fx.previous_replicas = Some(target);
                    self.phase = Phase::WaitPrevious { since_ms: now };
                    self.event(
                        fx,
                        now,
                        format!("scaling the previous deployment back up to {target}"),
                    );
                }
                self.next = Next::Shift;
            }
            Next::Shift => {
                let mut percent = plan::ramp_down_traffic(self.percent, ts);
                if obs.previous_ready < self.previous_target {
                    // Keep on the candidate what the previous deployment cannot take yet.
                    percent = percent
                        .max(100 - self.ready_cap(obs.previous_ready))
                        .min(self.percent);
                }
                self.percent = percent;
                fx.percent = Some(percent);
                self.event(
                    fx,
                    now,
                    format!("shifted traffic back: {percent}% on the candidate"),
                );
                self.next = Next::ScaleDown;
            }
            Next::ScaleDown => {
                self.candidate_target =
                    plan::scaled_down(self.candidate_target, rs).max(u32::from(self.percent > 0));
                fx.candidate_replicas = Some(self.candidate_target);
                self.event(
                    fx,
                    now,
                    format!("scaling the candidate down to {}", self.candidate_target),
                );
                self.next = Next::Stabilize;
            }
            Next::Stabilize => {
                self.stabilize(fx, now);
                self.next = Next::ScaleUp;
            }
        }
    }

    fn stabilize(&mut self, fx: &mut Effects, now: u64) {
        let secs = self.config.rolling_config.stabilization_time_seconds;
        if secs > 0 {
            self.phase = Phase::Stabilizing {
                until_ms: now + u64::from(secs) * 1000,
            };
            self.event(fx, now, format!("stabilizing for {secs} s"));
        }
    }

    fn complete(&self, obs: &Observation) -> bool {
        self.percent >= 100 && obs.candidate_ready >= self.fleet && self.previous_target == 0
    }

    fn finish_success(&mut self, fx: &mut Effects, now: u64, reason: &str) {
        self.percent = 100;
        self.candidate_target = self.candidate_target.max(self.fleet);
        if self.config.cleanup != CleanupStrategy::Keep {
            self.previous_target = 0;
        }
        fx.percent = Some(100);
        fx.candidate_replicas = Some(self.candidate_target);
        fx.previous_replicas = Some(self.previous_target);
        fx.cleanup = Some(self.config.cleanup);
        self.phase = Phase::Done;
        self.roll_forward_requested = false;
        self.set_status(fx, now, Status::Succeeded, reason);
    }

    fn finish_cancel(&mut self, fx: &mut Effects, now: u64, reason: &str) {
        self.percent = 0;
        self.candidate_target = 0;
        // Back to the size it had before the promotion (overhead replicas were for the rollout).
        self.previous_target = self.original_previous;
        fx.percent = Some(0);
        fx.candidate_replicas = Some(0);
        fx.previous_replicas = Some(self.previous_target);
        self.phase = Phase::Done;
        match self.rollback_reason.take() {
            // An analysis rollback is a failure, whatever ended the ramp-down.
            Some(why) => {
                self.error_message = Some(why.clone());
                self.set_status(fx, now, Status::Failed, format!("rolled back: {why}"));
            }
            None => self.set_status(fx, now, Status::Canceled, reason),
        }
    }

    /// Whether analysis measures intervals now: traffic is split and the promotion moves up.
    fn judging(&self) -> bool {
        let a = &self.config.analysis;
        a.enabled
            && self.status == Status::RampingUp
            && (self.percent > 0 || a.gates().next().is_some())
            && self.percent < 100
    }

    /// Before the first shift the candidate has had no traffic: only gates can be judged.
    pub fn judging_gates_only(&self) -> bool {
        self.percent == 0
    }

    /// Start of the interval being measured, while one is.
    pub fn analysis_interval_start(&self) -> Option<u64> {
        self.analysis.interval_started_ms.filter(|_| self.judging())
    }

    /// When the interval being measured ends and a verdict is due.
    pub fn analysis_due_ms(&self) -> Option<u64> {
        self.analysis_interval_start()
            .map(|t| t.saturating_add(self.config.analysis.interval_ms()))
    }

    /// Takes the verdict of the interval that just ended: a pass lets the next shift go, a
    /// failure or a run of inconclusive intervals acts as the settings say.
    pub fn record_verdict(&mut self, v: Verdict, now: u64) -> Effects {
        let mut fx = Effects::default();
        if !self.judging() {
            return fx;
        }
        let s = self.config.analysis.clone();
        let a = &mut self.analysis;
        a.verdicts = a.verdicts.saturating_add(1);
        a.interval_started_ms = Some(now);
        let summary = v.summary.clone();
        let result = v.result;
        a.last = Some(v);
        match result {
            VerdictResult::Pass => {
                a.consecutive_failures = 0;
                a.consecutive_inconclusive = 0;
                a.passed_since_shift = true;
                self.event(&mut fx, now, format!("analysis PASS: {summary}"));
                if self.phase == Phase::AwaitVerdict {
                    self.phase = Phase::Boundary;
                }
            }
            VerdictResult::Inconclusive => {
                a.consecutive_inconclusive += 1;
                let n = a.consecutive_inconclusive;
                self.event(
                    &mut fx,
                    now,
                    format!(
                        "analysis INCONCLUSIVE ({n} of {} in a row): {summary}",
                        s.max_inconclusive_intervals
                    ),
                );
                if n >= s.max_inconclusive_intervals {
                    self.resume_to = Status::RampingUp;
                    self.set_status(
                        &mut fx,
                        now,
                        Status::Paused,
                        format!("paused by analysis: {n} inconclusive intervals in a row ({summary}); resume to judge again"),
                    );
                }
            }
            VerdictResult::Fail => {
                a.consecutive_failures += 1;
                a.consecutive_inconclusive = 0;
                a.passed_since_shift = false;
                let n = a.consecutive_failures;
                self.event(
                    &mut fx,
                    now,
                    format!(
                        "analysis FAIL ({n} of {} in a row): {summary}",
                        s.failure_limit
                    ),
                );
                if n >= s.failure_limit {
                    let why = format!("analysis failed {n} intervals in a row: {summary}");
                    self.act_on_failure(&mut fx, now, s.on_failure, why);
                }
            }
        }
        fx
    }

    fn act_on_failure(&mut self, fx: &mut Effects, now: u64, on: OnFailure, why: String) {
        match on {
            OnFailure::Rollback => {
                // Like a graceful cancel: make-before-break back to the previous deployment.
                self.candidate_target = self.candidate_target.min(self.best_ready.max(1));
                fx.candidate_replicas = Some(self.candidate_target);
                self.phase = Phase::Boundary;
                self.next = Next::ScaleUp;
                self.roll_forward_requested = false;
                self.rollback_reason = Some(why.clone());
                self.set_status(fx, now, Status::RampingDown, format!("{why}; rolling back"));
            }
            OnFailure::Pause => {
                self.resume_to = Status::RampingUp;
                self.set_status(
                    fx,
                    now,
                    Status::Paused,
                    format!("paused by analysis: {why}; resume to judge again"),
                );
            }
            OnFailure::ForceCancel => self.fail(fx, now, why),
        }
    }

    fn fail(&mut self, fx: &mut Effects, now: u64, why: String) {
        self.percent = 0;
        self.candidate_target = 0;
        self.previous_target = self.previous_target.max(self.original_previous);
        fx.percent = Some(0);
        fx.candidate_replicas = Some(0);
        fx.previous_replicas = Some(self.previous_target);
        self.phase = Phase::Done;
        self.error_message = Some(why.clone());
        self.set_status(fx, now, Status::Failed, why);
    }

    fn check_live(&self) -> Result<(), ControlError> {
        if self.status.is_terminal() {
            return Err(ControlError::Terminal(self.status));
        }
        Ok(())
    }

    /// Stops at the next step boundary; replica changes in progress finish.
    pub fn pause(&mut self, now: u64) -> Result<Effects, ControlError> {
        self.check_live()?;
        match self.status {
            Status::Paused => Err(ControlError::NotApplicable(self.status, "resume it first")),
            Status::RampingDown => Err(ControlError::NotApplicable(
                self.status,
                "a cancel cannot be paused",
            )),
            _ => {
                let mut fx = Effects::default();
                self.resume_to = if self.status == Status::Releasing {
                    Status::Releasing
                } else {
                    Status::RampingUp
                };
                self.set_status(&mut fx, now, Status::Paused, "paused by request");
                Ok(fx)
            }
        }
    }

    pub fn resume(&mut self, now: u64) -> Result<Effects, ControlError> {
        self.check_live()?;
        if self.status != Status::Paused {
            return Err(ControlError::NotApplicable(
                self.status,
                "only a paused promotion can be resumed",
            ));
        }
        let mut fx = Effects::default();
        // Paused time does not count against the readiness deadline.
        self.last_progress_ms = now;
        // Judged afresh: what failed before the pause does not count against what follows.
        let a = &mut self.analysis;
        a.consecutive_failures = 0;
        a.consecutive_inconclusive = 0;
        a.passed_since_shift = false;
        if a.interval_started_ms.is_some() {
            a.interval_started_ms = Some(now);
        }
        if let Phase::WaitCandidate { ready_at_start, .. } = self.phase {
            self.phase = Phase::WaitCandidate {
                since_ms: now,
                ready_at_start,
            };
        }
        self.set_status(&mut fx, now, self.resume_to, "resumed by request");
        Ok(fx)
    }

    /// Graceful cancel: RAMPING_DOWN (rolling) or CANCELED at once (not rolling).
    pub fn cancel(&mut self, now: u64) -> Result<Effects, ControlError> {
        self.check_live()?;
        if self.ramping_down() {
            return Err(ControlError::NotApplicable(
                self.status,
                "it is already being canceled",
            ));
        }
        let mut fx = Effects::default();
        if !self.config.rolling || self.percent == 0 {
            self.finish_cancel(&mut fx, now, "canceled by request");
            return Ok(fx);
        }
        // Candidate replicas still starting carry no traffic: stop asking for them.
        self.candidate_target = self.candidate_target.min(self.best_ready.max(1));
        fx.candidate_replicas = Some(self.candidate_target);
        self.phase = Phase::Boundary;
        self.next = Next::ScaleUp;
        self.roll_forward_requested = false;
        self.set_status(
            &mut fx,
            now,
            Status::RampingDown,
            "canceled by request; ramping traffic back",
        );
        Ok(fx)
    }

    /// All traffic back on the previous deployment now.
    pub fn force_cancel(&mut self, now: u64) -> Result<Effects, ControlError> {
        self.check_live()?;
        let mut fx = Effects::default();
        self.finish_cancel(&mut fx, now, "force-canceled by request");
        Ok(fx)
    }

    /// All traffic to the candidate at the next step boundary, even during a ramp-down. A
    /// stabilization wait is no replica change in progress: it ends at once.
    pub fn force_roll_forward(&mut self, now: u64) -> Result<Effects, ControlError> {
        self.check_live()?;
        let mut fx = Effects::default();
        self.roll_forward_requested = true;
        if matches!(self.phase, Phase::Stabilizing { .. } | Phase::AwaitVerdict) {
            self.phase = Phase::Boundary;
        }
        self.event(
            &mut fx,
            now,
            "force roll forward requested; takes effect at the next step boundary",
        );
        Ok(fx)
    }

    /// The seconds of stabilization left, for status displays.
    pub fn stabilizing_for_ms(&self, now: u64) -> Option<u64> {
        match self.phase {
            Phase::Stabilizing { until_ms } => Some(until_ms.saturating_sub(now)),
            _ => None,
        }
    }

    /// The earliest time after `now` at which [`Promotion::tick`] may move on with the same
    /// observation: the end of stabilization, of a ready wait or of the readiness deadline.
    /// `None` when only an observation or a control call can move it (or it is over).
    pub fn next_deadline_ms(&self, now: u64) -> Option<u64> {
        if self.status.is_terminal() {
            return None;
        }
        let deadlines = match self.phase {
            // A partial step counts once the ready wait is over, but only with more candidate
            // replicas ready than at the step's start: past the wait, an observation moves it.
            Phase::WaitCandidate { since_ms, .. } => [
                self.config
                    .rolling
                    .then(|| since_ms.saturating_add(self.config.ready_wait_ms)),
                (self.status != Status::Paused).then(|| {
                    self.last_progress_ms
                        .saturating_add(self.config.ready_deadline_ms)
                }),
            ],
            Phase::WaitPrevious { since_ms } => [
                Some(since_ms.saturating_add(self.config.ready_wait_ms)),
                None,
            ],
            Phase::Stabilizing { until_ms } => [Some(until_ms), None],
            Phase::AwaitVerdict | Phase::Boundary | Phase::Done => [None, None],
        };
        deadlines
            .into_iter()
            .chain([self.analysis_due_ms()])
            .flatten()
            .filter(|t| *t > now)
            .min()
    }
}

impl Effects {
    /// Folds the effects of a control call into those of a tick that follows it.
    pub fn then(mut self, other: Effects) -> Effects {
        self.merge(other);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::plan::Plan;

    fn cfg(surge: u32, unavailable: u32, stab: u32, overhead: u32) -> PromotionConfig {
        PromotionConfig {
            rolling: true,
            rolling_config: RollingConfig {
                max_surge_percent: surge,
                max_unavailable_percent: unavailable,
                stabilization_time_seconds: stab,
                replica_overhead_percent: overhead,
            },
            cleanup: CleanupStrategy::ScaleToZero,
            ready_wait_ms: 10_000,
            ready_deadline_ms: 60_000,
            analysis: AnalysisSettings::default(),
        }
    }

    /// Replicas become ready the moment they are asked for.
    fn instant(p: &Promotion) -> Observation {
        Observation {
            candidate_ready: p.candidate_target,
            previous_ready: p.previous_target,
            candidate_failure: None,
        }
    }

    fn states(events: &[Event]) -> Vec<(u32, u32, u32)> {
        let mut out: Vec<(u32, u32, u32)> = Vec::new();
        for e in events {
            let s = (
                e.candidate_replicas,
                e.previous_replicas,
                e.percent_traffic_to_new_version,
            );
            if out.last() != Some(&s) {
                out.push(s);
            }
        }
        out
    }

    /// Runs to a terminal status with instant readiness, one second per tick.
    fn run(n: u32, c: PromotionConfig) -> (Promotion, Vec<Event>) {
        let (mut p, fx) = Promotion::start(n, c, 0).unwrap();
        let mut events = fx.events;
        let mut now = 0;
        while !p.status.is_terminal() {
            now += 1000;
            let obs = instant(&p);
            events.extend(p.tick(&obs, now).events);
            assert!(now < 100_000_000, "did not finish");
        }
        (p, events)
    }

    #[test]
    fn with_instant_readiness_the_machine_walks_the_plan() {
        for n in 1..=25 {
            for (s, u) in [(10, 0), (25, 0), (50, 0), (0, 10), (0, 30), (0, 50)] {
                for overhead in [0, 50] {
                    for stab in [0, 30] {
                        let c = cfg(s, u, stab, overhead);
                        let plan = Plan::new(n, &c.rolling_config).unwrap();
                        let mut want = vec![(0, n, 0)];
                        for st in &plan.steps {
                            let s = (
                                st.candidate_replicas,
                                st.previous_replicas,
                                st.percent_traffic_to_new_version,
                            );
                            if want.last() != Some(&s) {
                                want.push(s);
                            }
                        }
                        let (p, events) = run(n, c);
                        assert_eq!(p.status, Status::Succeeded);
                        assert_eq!(
                            states(&events),
                            want,
                            "N={n} surge={s} unavailable={u} overhead={overhead}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn stabilization_holds_each_cycle() {
        let (p, events) = run(4, cfg(25, 0, 30, 0));
        assert_eq!(p.status, Status::Succeeded);
        // 4 cycles, stabilize after each but the last: at least 3 × 30 s.
        let last = events.last().unwrap().at_ms;
        assert!(last >= 90_000, "finished after {last} ms");
        assert_eq!(
            events
                .iter()
                .filter(|e| e.reason.starts_with("stabilizing"))
                .count(),
            3
        );
    }

    #[test]
    fn releasing_turns_ramping_up_at_the_first_ready_candidate_replica() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        assert_eq!(p.status, Status::Releasing);
        let fx = p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            1000,
        );
        assert_eq!(fx.candidate_replicas, Some(2));
        assert_eq!(p.status, Status::Releasing);
        p.tick(
            &Observation {
                candidate_ready: 1,
                previous_ready: 10,
                ..Default::default()
            },
            2000,
        );
        assert_eq!(p.status, Status::RampingUp);
        assert_eq!(
            p.percent, 0,
            "no traffic until the step's replicas are ready"
        );
    }

    #[test]
    fn nothing_moves_before_the_next_deadline_and_something_does_at_it() {
        // Stabilization: 5 s after the first shift.
        let (mut p, _) = Promotion::start(2, cfg(50, 0, 5, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| {
            matches!(p.phase, Phase::Stabilizing { .. })
        });
        let at = p.next_deadline_ms(now).unwrap();
        assert_eq!(at, now + 5000);
        let obs = instant(&p);
        let before = p.clone();
        assert_eq!(p.tick(&obs, at - 1), Effects::default());
        assert_eq!(p, before, "nothing moves before the deadline");
        assert!(!p.tick(&obs, at).events.is_empty(), "the deadline moves it");
        // Readiness deadline: the candidate never becomes ready.
        let (mut p, _) = Promotion::start(2, cfg(50, 0, 0, 0), 0).unwrap();
        let stuck = Observation {
            candidate_ready: 0,
            previous_ready: 2,
            candidate_failure: None,
        };
        p.tick(&stuck, 0);
        let mut now = 0;
        while let Some(at) = p.next_deadline_ms(now) {
            assert!(at > now, "a deadline in the past would spin");
            let before = p.clone();
            p.tick(&stuck, at - 1);
            assert_eq!(p, before);
            now = at;
            p.tick(&stuck, now);
        }
        assert_eq!(p.status, Status::Failed);
        assert_eq!(now, 60_000);
    }

    /// Drives with `ready` candidate replicas until the machine asks for `target`.
    fn drive_until(p: &mut Promotion, now: &mut u64, until: impl Fn(&Promotion) -> bool) {
        for _ in 0..1000 {
            if until(p) {
                return;
            }
            *now += 1000;
            let obs = instant(p);
            p.tick(&obs, *now);
        }
        panic!("condition never reached: {p:?}");
    }

    #[test]
    fn pause_lets_a_scale_in_progress_finish_and_holds_traffic() {
        // The seed's example: candidate at 20% told to scale 2 → 4, pause: it reaches 4 and
        // traffic stays at 20% until resume.
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| {
            p.percent == 20 && p.candidate_target == 4
        });
        let fx = p.pause(now).unwrap();
        assert_eq!(p.status, Status::Paused);
        assert_eq!(fx.events.last().unwrap().status, Status::Paused);
        for _ in 0..30 {
            now += 1000;
            p.tick(
                &Observation {
                    candidate_ready: 4,
                    previous_ready: 8,
                    ..Default::default()
                },
                now,
            );
            assert_eq!(p.percent, 20);
            assert_eq!(p.candidate_target, 4);
        }
        assert!(matches!(p.phase, Phase::Boundary));
        assert!(p.pause(now).is_err());
        p.resume(now).unwrap();
        assert_eq!(p.status, Status::RampingUp);
        now += 1000;
        let fx = p.tick(
            &Observation {
                candidate_ready: 4,
                previous_ready: 8,
                ..Default::default()
            },
            now,
        );
        assert_eq!(p.percent, 40);
        assert_eq!(fx.percent, Some(40));
    }

    #[test]
    fn paused_time_does_not_count_against_the_deadline() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            0,
        );
        p.pause(1000).unwrap();
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            500_000,
        );
        assert_eq!(p.status, Status::Paused);
        p.resume(500_000).unwrap();
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            530_000,
        );
        assert_eq!(p.status, Status::Releasing);
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            561_000,
        );
        assert_eq!(p.status, Status::Failed);
    }

    #[test]
    fn only_ready_replicas_earn_traffic_and_the_previous_gives_up_what_became_ready() {
        // 100 replicas at 25%: 25 requested, only 5 become ready within the step's wait.
        let (mut p, _) = Promotion::start(100, cfg(25, 0, 0, 0), 0).unwrap();
        let obs = |c| Observation {
            candidate_ready: c,
            previous_ready: 100,
            ..Default::default()
        };
        let fx = p.tick(&obs(0), 0);
        assert_eq!(fx.candidate_replicas, Some(25));
        p.tick(&obs(5), 5_000);
        assert_eq!(p.percent, 0, "still waiting for the step's replicas");
        let fx = p.tick(&obs(5), 10_000);
        assert_eq!(p.percent, 5, "traffic capped at the ready share");
        assert_eq!(fx.previous_replicas, Some(95));
        assert_eq!(p.previous_target, 95);
    }

    #[test]
    fn no_ready_candidate_within_the_deadline_fails_back_to_the_previous() {
        let (mut p, _) = Promotion::start(4, cfg(50, 0, 0, 0), 0).unwrap();
        let obs = Observation {
            candidate_ready: 0,
            previous_ready: 4,
            ..Default::default()
        };
        p.tick(&obs, 0);
        p.tick(&obs, 59_000);
        assert_eq!(p.status, Status::Releasing);
        let fx = p.tick(&obs, 60_000);
        assert_eq!(p.status, Status::Failed);
        assert_eq!(fx.percent, Some(0));
        assert_eq!(fx.candidate_replicas, Some(0));
        assert_eq!(fx.previous_replicas, Some(4));
        assert!(
            p.error_message
                .as_deref()
                .unwrap()
                .contains("0 of 2 candidate replicas ready"),
            "{:?}",
            p.error_message
        );
        assert!(p.pause(61_000).is_err());
    }

    #[test]
    fn a_crash_looping_candidate_fails_the_promotion() {
        let (mut p, _) = Promotion::start(4, cfg(50, 0, 0, 0), 0).unwrap();
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 4,
                ..Default::default()
            },
            0,
        );
        let fx = p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 4,
                candidate_failure: Some("exited with status 1, 5 times".into()),
            },
            1000,
        );
        assert_eq!(p.status, Status::Failed);
        assert!(p
            .error_message
            .as_deref()
            .unwrap()
            .contains("exited with status 1"));
        assert_eq!(fx.percent, Some(0));
    }

    #[test]
    fn graceful_cancel_ramps_traffic_back_step_by_step() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 60);
        let fx = p.cancel(now).unwrap();
        assert_eq!(p.status, Status::RampingDown);
        assert!(fx.events.iter().any(|e| e.status == Status::RampingDown));
        let mut percents = vec![p.percent];
        while !p.status.is_terminal() {
            now += 1000;
            let obs = instant(&p);
            p.tick(&obs, now);
            percents.push(p.percent);
            assert!(p.previous_target + p.candidate_target <= p.fleet + p.replicas_per_step);
        }
        assert_eq!(p.status, Status::Canceled);
        assert!(percents.windows(2).all(|w| w[1] <= w[0]), "{percents:?}");
        let distinct: std::collections::BTreeSet<u32> = percents.iter().copied().collect();
        assert_eq!(
            distinct.into_iter().collect::<Vec<_>>(),
            vec![0, 20, 40, 60],
            "steps of ts back"
        );
        assert_eq!(
            (p.percent, p.candidate_target, p.previous_target),
            (0, 0, 10)
        );
    }

    #[test]
    fn cancel_before_any_traffic_moved_is_immediate() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        p.tick(
            &Observation {
                candidate_ready: 0,
                previous_ready: 10,
                ..Default::default()
            },
            0,
        );
        p.cancel(1).unwrap();
        assert_eq!(p.status, Status::Canceled);
        assert_eq!(p.candidate_target, 0);
    }

    #[test]
    fn force_cancel_returns_all_traffic_at_once() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 40);
        let fx = p.force_cancel(now).unwrap();
        assert_eq!(p.status, Status::Canceled);
        assert_eq!(
            (fx.percent, fx.candidate_replicas, fx.previous_replicas),
            (Some(0), Some(0), Some(10))
        );
        assert_eq!(
            p.force_cancel(now).unwrap_err(),
            ControlError::Terminal(Status::Canceled)
        );
    }

    #[test]
    fn force_roll_forward_cuts_a_stabilization_wait_short() {
        let (mut p, _) = Promotion::start(2, cfg(50, 0, 3600, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| {
            matches!(p.phase, Phase::Stabilizing { .. })
        });
        p.force_roll_forward(now).unwrap();
        assert_eq!(p.next_deadline_ms(now), None, "nothing left to wait for");
        let obs = instant(&p);
        let fx = p.tick(&obs, now + 1);
        assert_eq!(p.status, Status::Succeeded);
        assert_eq!(fx.percent, Some(100));
    }

    #[test]
    fn force_roll_forward_waits_for_the_replicas_in_progress_then_succeeds() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| {
            p.percent == 20 && p.candidate_target == 4
        });
        p.force_roll_forward(now).unwrap();
        now += 1000;
        p.tick(
            &Observation {
                candidate_ready: 3,
                previous_ready: 8,
                ..Default::default()
            },
            now,
        );
        assert_eq!(
            p.status,
            Status::RampingUp,
            "the scale 2 → 4 is still in progress"
        );
        now += 1000;
        let fx = p.tick(
            &Observation {
                candidate_ready: 4,
                previous_ready: 8,
                ..Default::default()
            },
            now,
        );
        assert_eq!(p.status, Status::Succeeded);
        assert_eq!(fx.percent, Some(100));
        assert_eq!(fx.candidate_replicas, Some(10));
        assert_eq!(fx.cleanup, Some(CleanupStrategy::ScaleToZero));
        assert_eq!(fx.previous_replicas, Some(0));
    }

    #[test]
    fn force_roll_forward_also_works_during_a_ramp_down_and_while_paused() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 40);
        p.cancel(now).unwrap();
        now += 1000;
        let obs = instant(&p);
        p.tick(&obs, now);
        assert_eq!(p.status, Status::RampingDown);
        p.force_roll_forward(now).unwrap();
        drive_until(&mut p, &mut now, |p| p.status.is_terminal());
        assert_eq!((p.status, p.percent), (Status::Succeeded, 100));

        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 20);
        p.pause(now).unwrap();
        p.force_roll_forward(now).unwrap();
        drive_until(&mut p, &mut now, |p| p.status.is_terminal());
        assert_eq!(p.status, Status::Succeeded);
    }

    #[test]
    fn non_rolling_promotion_swaps_all_traffic_once_the_candidate_is_ready() {
        let mut c = cfg(20, 0, 0, 0);
        c.rolling = false;
        c.cleanup = CleanupStrategy::Keep;
        let (mut p, fx) = Promotion::start(6, c.clone(), 0).unwrap();
        assert_eq!(fx.candidate_replicas, Some(6));
        p.tick(
            &Observation {
                candidate_ready: 5,
                previous_ready: 6,
                ..Default::default()
            },
            200_000,
        );
        assert_eq!((p.status, p.percent), (Status::Releasing, 0));
        let fx = p.tick(
            &Observation {
                candidate_ready: 6,
                previous_ready: 6,
                ..Default::default()
            },
            201_000,
        );
        assert_eq!((p.status, fx.percent), (Status::Succeeded, Some(100)));
        assert_eq!(
            p.previous_target, 6,
            "KEEP leaves the previous deployment as it was"
        );

        let (mut p, _) = Promotion::start(6, c, 0).unwrap();
        assert_eq!(p.cancel(1).unwrap().percent, Some(0));
        assert_eq!(p.status, Status::Canceled);
    }

    #[test]
    fn control_requests_that_do_not_apply_are_refused() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 0, 0), 0).unwrap();
        assert!(matches!(
            p.resume(0),
            Err(ControlError::NotApplicable(Status::Releasing, _))
        ));
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 40);
        p.cancel(now).unwrap();
        assert!(p.pause(now).is_err());
        assert!(p.cancel(now).is_err());
        assert!(Promotion::start(0, cfg(20, 0, 0, 0), 0).is_err());
        assert_eq!(
            Promotion::start(5, cfg(20, 10, 0, 0), 0)
                .unwrap_err()
                .field(),
            "max_unavailable_percent"
        );
    }

    #[test]
    fn a_promotion_survives_serialization_mid_rollout() {
        let (mut p, _) = Promotion::start(10, cfg(20, 0, 5, 0), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 40);
        let json = serde_json::to_string(&p).unwrap();
        let mut back: Promotion = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
        drive_until(&mut back, &mut now, |p| p.status.is_terminal());
        assert_eq!(back.status, Status::Succeeded);
    }

    fn analyzed(on_failure: OnFailure) -> PromotionConfig {
        let mut c = cfg(20, 0, 0, 0);
        c.analysis = AnalysisSettings {
            enabled: true,
            interval_seconds: 5,
            failure_limit: 2,
            max_inconclusive_intervals: 3,
            on_failure,
            ..AnalysisSettings::default()
        };
        c
    }

    fn verdict(result: VerdictResult, summary: &str) -> Verdict {
        Verdict {
            result,
            from_ms: 0,
            to_ms: 0,
            candidate: Default::default(),
            previous: Default::default(),
            checks: Vec::new(),
            summary: summary.into(),
        }
    }

    /// Ticks and judges with `result` whenever an interval is due, until `until`.
    fn judge_until(
        p: &mut Promotion,
        now: &mut u64,
        result: VerdictResult,
        until: impl Fn(&Promotion) -> bool,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        for _ in 0..1000 {
            if until(p) {
                return events;
            }
            *now += 1000;
            if p.analysis_due_ms().is_some_and(|t| t <= *now) {
                events.extend(p.record_verdict(verdict(result, "figures"), *now).events);
            }
            let obs = instant(p);
            events.extend(p.tick(&obs, *now).events);
        }
        panic!("condition never reached: {p:?}");
    }

    #[test]
    fn with_analysis_every_shift_after_the_first_waits_for_a_passing_interval() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::Rollback), 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.percent == 20);
        // Without verdicts, nothing moves past the first step, however long it waits.
        for _ in 0..30 {
            now += 1000;
            let obs = instant(&p);
            p.tick(&obs, now);
        }
        assert_eq!((p.percent, p.phase), (20, Phase::AwaitVerdict));
        assert_eq!(p.next_deadline_ms(now), None, "the interval is overdue");
        let events = judge_until(&mut p, &mut now, VerdictResult::Pass, |p| {
            p.status.is_terminal()
        });
        assert_eq!(p.status, Status::Succeeded);
        // Each shift is preceded by a passing verdict since the previous shift.
        let mut passed = true;
        for e in &events {
            if e.reason.starts_with("analysis PASS") {
                passed = true;
            } else if e.reason.starts_with("shifted") {
                assert!(passed, "a shift without a pass before it: {events:#?}");
                passed = false;
            }
        }
    }

    #[test]
    fn a_gate_holds_even_the_first_shift() {
        let mut c = analyzed(OnFailure::Rollback);
        c.analysis.webhooks.push(crate::rollout::analysis::Webhook {
            name: "qa".into(),
            url: "http://127.0.0.1:9/".into(),
            timeout_seconds: 1,
            when: crate::rollout::analysis::WebhookWhen::BeforeShift,
        });
        let (mut p, _) = Promotion::start(10, c, 0).unwrap();
        let mut now = 0;
        drive_until(&mut p, &mut now, |p| p.phase == Phase::AwaitVerdict);
        assert_eq!(p.percent, 0);
        assert!(p.judging_gates_only());
        let due = p.analysis_due_ms().unwrap();
        let events = judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.status.is_terminal()
        });
        assert!(now >= due);
        assert_eq!((p.status, max(&events)), (Status::Failed, 0));
    }

    fn max(events: &[Event]) -> u32 {
        events
            .iter()
            .map(|e| e.percent_traffic_to_new_version)
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn failing_intervals_roll_back_gracefully_and_end_failed() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::Rollback), 0).unwrap();
        let mut now = 0;
        judge_until(&mut p, &mut now, VerdictResult::Pass, |p| p.percent == 40);
        let events = judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.status != Status::RampingUp
        });
        assert_eq!(p.status, Status::RampingDown);
        assert_eq!(p.percent, 40, "a rollback steps back, it does not jump");
        assert!(events
            .iter()
            .any(|e| e.reason.starts_with("analysis FAIL (1 of 2")));
        let events = judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.status.is_terminal()
        });
        assert_eq!((p.status, p.percent), (Status::Failed, 0));
        assert!(states(&events).iter().any(|s| s.2 == 20), "{events:#?}");
        assert_eq!(
            p.error_message.as_deref(),
            Some("analysis failed 2 intervals in a row: figures")
        );
    }

    #[test]
    fn on_failure_pause_pauses_and_resume_judges_afresh() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::Pause), 0).unwrap();
        let mut now = 0;
        judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.status == Status::Paused
        });
        assert_eq!(p.percent, 20);
        assert_eq!(p.analysis.consecutive_failures, 2);
        assert_eq!(p.analysis_due_ms(), None, "no judging while paused");
        p.resume(now).unwrap();
        assert_eq!(p.analysis.consecutive_failures, 0);
        assert_eq!(p.analysis_due_ms(), Some(now + 5000));
        judge_until(&mut p, &mut now, VerdictResult::Pass, |p| {
            p.status.is_terminal()
        });
        assert_eq!(p.status, Status::Succeeded);
    }

    #[test]
    fn on_failure_force_cancel_returns_all_traffic_at_once() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::ForceCancel), 0).unwrap();
        let mut now = 0;
        judge_until(&mut p, &mut now, VerdictResult::Pass, |p| p.percent == 40);
        judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.status.is_terminal()
        });
        assert_eq!(
            (p.status, p.percent, p.candidate_target),
            (Status::Failed, 0, 0)
        );
    }

    #[test]
    fn a_run_of_inconclusive_intervals_pauses_with_the_reason() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::Rollback), 0).unwrap();
        let mut now = 0;
        let events = judge_until(&mut p, &mut now, VerdictResult::Inconclusive, |p| {
            p.status == Status::Paused
        });
        assert_eq!(p.percent, 20, "never advances blind");
        let last = events.last().unwrap();
        assert!(
            last.reason
                .starts_with("paused by analysis: 3 inconclusive intervals in a row"),
            "{}",
            last.reason
        );
    }

    #[test]
    fn analysis_state_survives_serialization() {
        let (mut p, _) = Promotion::start(10, analyzed(OnFailure::Rollback), 0).unwrap();
        let mut now = 0;
        judge_until(&mut p, &mut now, VerdictResult::Pass, |p| p.percent == 40);
        judge_until(&mut p, &mut now, VerdictResult::Fail, |p| {
            p.analysis.consecutive_failures == 1
        });
        let back: Promotion = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
        assert_eq!(
            back.analysis.last.as_ref().unwrap().result,
            VerdictResult::Fail
        );
        // A promotion saved before analysis existed still loads.
        let mut old = serde_json::to_value(&p).unwrap();
        old.as_object_mut().unwrap().remove("analysis");
        old["config"].as_object_mut().unwrap().remove("analysis");
        let back: Promotion = serde_json::from_value(old).unwrap();
        assert!(!back.config.analysis.enabled);
    }
}
