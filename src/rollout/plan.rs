//! The rolling-deployment plan: pure step arithmetic, no I/O and no clock.
//!
//! This follows the step engine of the `RollingDeployViz` widget on Baseten's "Rolling
//! deployments" documentation page (its functions `cP()` and `step()`), where N is the
//! previous deployment's replica count and p whichever of `max_surge_percent` /
//! `max_unavailable_percent` is non-zero:
//!
//! ```text
//! fleet              f  = N + round(N * replica_overhead_percent / 100)
//! replicas per step  rs = max(1, round(p * f / 100))
//! traffic per step   ts = ceil(100 * rs / f)
//! ```
//!
//! `round` is JavaScript's `Math.round`, which rounds halves up; it is done here in integer
//! arithmetic, `round(a / b) = (2a + b) / (2b)`, so no float error can creep in.
//!
//! A plan is the list of actions from "all traffic on the previous deployment, which has N
//! replicas" to "all traffic and f replicas on the candidate, 0 on the previous", each with the
//! state after it:
//!
//! ```text
//! [pre_provision]                                              only when f > N
//! surge:        scale_up → shift → scale_down → [stabilize] → scale_up → …  ends on scale_down
//! unavailable:  scale_down → scale_up → shift → [stabilize] → scale_down → …  ends on shift
//! ```
//!
//! # Where the seed is ambiguous, and what this module does (the JS wins over the prose)
//!
//! * **Pre-provision.** The JS has no pre-provision phase: it starts with `curActive = P.f`,
//!   i.e. the overhead replicas are already on the previous deployment. The prose says they are
//!   added "before any traffic shifts". The plan makes that an explicit first
//!   [`Action::PreProvision`] step (previous N → f), and only when it adds replicas: with
//!   `replica_overhead_percent` 0, or an overhead that rounds to 0 extra replicas (N = 1 at
//!   10 %), there is no such step, as in the JS.
//! * **Stabilization.** The JS has a `stab` phase only when `cfg.st > 0` (`sb: cfg.st > 0`,
//!   `phase = P.sb ? "stab" : …`), so with `stabilization_time_seconds` 0 the plan has no
//!   [`Action::Stabilize`] steps at all. The prose says "after each traffic shift"; the JS puts
//!   it after `scale_down` in surge mode (shift → scale_down → stab) and after `shift` in
//!   unavailable mode. The plan follows the JS.
//! * **No stabilize after the last step.** The JS checks "done" (`cTT >= 100 && candActive >=
//!   P.f && curActive <= 0`) at the end of `shift` and of `scale_down`, *before* choosing `stab`.
//!   So a surge plan ends on its last `scale_down` and an unavailable plan on its last `shift`,
//!   even when that `shift` changes nothing (traffic already at 100 %, the plan complete since
//!   the `scale_up` before it: N = 11 at 1 % unavailable).
//! * **Traffic moves by a fixed ts, not by the replica ratio.** The prose says traffic shifts
//!   "proportionally to match the new replica ratio"; the JS adds `P.ts` and caps at 100
//!   (`cTT = Math.min(100, cTT + P.ts)`). Because ts is rounded up, traffic can reach 100 % a few
//!   cycles before the replicas finish (N = 45 at 5 % surge: rs = 2, ts = 5, traffic is 100 % at
//!   cycle 20 of 23). The JS still walks through the `shift` phase in those cycles, so the plan
//!   keeps those [`Action::Shift`] steps even though they change nothing.
//! * **The last cycle is capped, nothing is left over.** Counts move by rs and are capped
//!   (`Math.min(P.f, candActive + P.rs)`, `Math.max(0, curActive - P.rs)`), so the last cycle may
//!   move fewer than rs replicas. Both deployments finish in the same cycle, `ceil(f / rs)`, and
//!   traffic never later than that (ts ≥ 100·rs/f), so no previous replica is left behind.
//! * **Mode.** The JS picks surge when `max_surge_percent > 0`, else unavailable; the widget
//!   silently fixes bad input (both set → unavailable := 0, both 0 → surge := 10). Here
//!   [`RollingConfig::validate`] rejects both cases instead, naming the field the widget would
//!   have changed.
//! * **Ranges.** The widget caps `replica_overhead_percent` at 60; the prose (and Baseten's docs)
//!   say 0–500, which is what is enforced. `replicas` must be 1..=[`MAX_REPLICAS`]; the upper
//!   bound is switchyard's (Baseten states none) and keeps the arithmetic far from overflow.
//!
//! # Bounds (derived from the formulas, checked by the property test)
//!
//! After pre-provisioning, in surge mode the two deployments together hold between f and f + rs
//! replicas (never fewer than f: nothing is unavailable). In unavailable mode they hold between
//! f − rs and f (never more than f). With f = 1 in unavailable mode that lower bound is 0: the
//! seed's arithmetic takes the only replica down before the candidate's is up.

use std::fmt;

use serde::{Deserialize, Serialize};

/// `max_surge_percent` when neither mode is given. The seed page documents 10 (its
/// `ParamField` default and the widget's initial value); Baseten's current OpenAPI spec says 25
/// (it was 20, then 10). switchyard follows the seed.
pub const DEFAULT_MAX_SURGE_PERCENT: u32 = 10;
/// Baseten's default `max_unavailable_percent`.
pub const DEFAULT_MAX_UNAVAILABLE_PERCENT: u32 = 0;
/// Baseten's default `stabilization_time_seconds`.
pub const DEFAULT_STABILIZATION_TIME_SECONDS: u32 = 0;
/// Baseten's default `replica_overhead_percent`.
pub const DEFAULT_REPLICA_OVERHEAD_PERCENT: u32 = 0;
/// Largest previous-deployment replica count a plan accepts (switchyard's bound, not Baseten's).
pub const MAX_REPLICAS: u32 = 1_000_000;

/// An input of a plan, named as in Baseten's `rolling_deploy_config` (plus `replicas`, the
/// previous deployment's replica count).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    Replicas,
    MaxSurgePercent,
    MaxUnavailablePercent,
    StabilizationTimeSeconds,
    ReplicaOverheadPercent,
}

impl Field {
    /// The field's name as users write it (`max_surge_percent`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Field::Replicas => "replicas",
            Field::MaxSurgePercent => "max_surge_percent",
            Field::MaxUnavailablePercent => "max_unavailable_percent",
            Field::StabilizationTimeSeconds => "stabilization_time_seconds",
            Field::ReplicaOverheadPercent => "replica_overhead_percent",
        }
    }

    /// The inclusive range of valid values.
    pub const fn range(self) -> (u32, u32) {
        match self {
            Field::Replicas => (1, MAX_REPLICAS),
            Field::MaxSurgePercent | Field::MaxUnavailablePercent => (0, 50),
            Field::StabilizationTimeSeconds => (0, 3600),
            Field::ReplicaOverheadPercent => (0, 500),
        }
    }

    /// Checks a user-supplied value (which may be negative or huge, as from JSON or the command
    /// line) against [`Field::range`].
    pub fn check(self, value: i64) -> Result<u32, PlanError> {
        let (min, max) = self.range();
        match u32::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(PlanError::new(
                self,
                Problem::OutOfRange { value, min, max },
            )),
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What is wrong with a field; the message without the field name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("must be between {min} and {max}, got {value}")]
    OutOfRange { value: i64, min: u32, max: u32 },
    /// Both percents are 0 (reported on `max_surge_percent`).
    #[error(
        "must not be 0 when max_unavailable_percent is 0, got 0 \
         (exactly one of max_surge_percent and max_unavailable_percent must be non-zero)"
    )]
    NoMode,
    /// Both percents are non-zero (reported on `max_unavailable_percent`).
    #[error(
        "must be 0 when max_surge_percent is non-zero (it is {max_surge_percent}), got {value} \
         (exactly one of max_surge_percent and max_unavailable_percent must be non-zero)"
    )]
    TwoModes { value: u32, max_surge_percent: u32 },
}

/// An invalid plan input. `Display` is `<field>: <message>`, e.g.
/// `max_surge_percent: must be between 0 and 50, got 60`; the HTTP API reuses it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct PlanError {
    field: Field,
    problem: Problem,
}

impl PlanError {
    fn new(field: Field, problem: Problem) -> Self {
        PlanError { field, problem }
    }

    /// The name of the offending field (`replicas`, `max_surge_percent`, …).
    pub fn field(&self) -> &'static str {
        self.field.name()
    }

    /// The offending field as an enum.
    pub fn field_id(&self) -> Field {
        self.field
    }

    /// What is wrong, structured.
    pub fn problem(&self) -> &Problem {
        &self.problem
    }

    /// The message without the field name.
    pub fn message(&self) -> String {
        self.problem.to_string()
    }

    /// The rejected value.
    pub fn value(&self) -> i64 {
        match self.problem {
            Problem::OutOfRange { value, .. } => value,
            Problem::NoMode => 0,
            Problem::TwoModes { value, .. } => i64::from(value),
        }
    }
}

/// Baseten's `rolling_deploy_config` (without `rolling_deploy_strategy`, which is always
/// `REPLICA`). [`Default`] is the seed's defaults: surge 10 %, everything else 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RollingConfig {
    pub max_surge_percent: u32,
    pub max_unavailable_percent: u32,
    pub stabilization_time_seconds: u32,
    pub replica_overhead_percent: u32,
}

impl Default for RollingConfig {
    fn default() -> Self {
        RollingConfig {
            max_surge_percent: DEFAULT_MAX_SURGE_PERCENT,
            max_unavailable_percent: DEFAULT_MAX_UNAVAILABLE_PERCENT,
            stabilization_time_seconds: DEFAULT_STABILIZATION_TIME_SECONDS,
            replica_overhead_percent: DEFAULT_REPLICA_OVERHEAD_PERCENT,
        }
    }
}

impl RollingConfig {
    /// Builds a validated config from optional user values (command-line flags), filling the
    /// rest with Baseten's defaults. `max_surge_percent` defaults to
    /// [`DEFAULT_MAX_SURGE_PERCENT`] unless `max_unavailable_percent` is given and non-zero,
    /// in which case it defaults to 0 (so `--max-unavailable-percent 25` alone selects
    /// unavailable mode).
    pub fn from_options(
        max_surge_percent: Option<i64>,
        max_unavailable_percent: Option<i64>,
        stabilization_time_seconds: Option<i64>,
        replica_overhead_percent: Option<i64>,
    ) -> Result<Self, PlanError> {
        let opt = |field: Field, v: Option<i64>| v.map(|v| field.check(v)).transpose();
        let surge = opt(Field::MaxSurgePercent, max_surge_percent)?;
        let unavailable = opt(Field::MaxUnavailablePercent, max_unavailable_percent)?;
        let stabilization = opt(Field::StabilizationTimeSeconds, stabilization_time_seconds)?;
        let overhead = opt(Field::ReplicaOverheadPercent, replica_overhead_percent)?;
        let unavailable = unavailable.unwrap_or(DEFAULT_MAX_UNAVAILABLE_PERCENT);
        let default_surge = if unavailable > 0 {
            0
        } else {
            DEFAULT_MAX_SURGE_PERCENT
        };
        let config = RollingConfig {
            max_surge_percent: surge.unwrap_or(default_surge),
            max_unavailable_percent: unavailable,
            stabilization_time_seconds: stabilization.unwrap_or(DEFAULT_STABILIZATION_TIME_SECONDS),
            replica_overhead_percent: overhead.unwrap_or(DEFAULT_REPLICA_OVERHEAD_PERCENT),
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks the ranges (surge 0–50, unavailable 0–50, stabilization 0–3600, overhead 0–500),
    /// then that exactly one of `max_surge_percent` / `max_unavailable_percent` is non-zero.
    pub fn validate(&self) -> Result<(), PlanError> {
        for (field, value) in [
            (Field::MaxSurgePercent, self.max_surge_percent),
            (Field::MaxUnavailablePercent, self.max_unavailable_percent),
            (
                Field::StabilizationTimeSeconds,
                self.stabilization_time_seconds,
            ),
            (Field::ReplicaOverheadPercent, self.replica_overhead_percent),
        ] {
            field.check(i64::from(value))?;
        }
        match (self.max_surge_percent, self.max_unavailable_percent) {
            (0, 0) => Err(PlanError::new(Field::MaxSurgePercent, Problem::NoMode)),
            (s, u) if s > 0 && u > 0 => Err(PlanError::new(
                Field::MaxUnavailablePercent,
                Problem::TwoModes {
                    value: u,
                    max_surge_percent: s,
                },
            )),
            _ => Ok(()),
        }
    }

    /// Surge when `max_surge_percent` is non-zero, else unavailable (the JS: `cfg.s > 0 ? "s" :
    /// "u"`). Meaningful on a validated config.
    pub fn mode(&self) -> Mode {
        if self.max_surge_percent > 0 {
            Mode::Surge
        } else {
            Mode::Unavailable
        }
    }

    /// p: the percent of the fleet moved per step (the non-zero one of the two).
    pub fn step_percent(&self) -> u32 {
        match self.mode() {
            Mode::Surge => self.max_surge_percent,
            Mode::Unavailable => self.max_unavailable_percent,
        }
    }
}

/// Provisioning mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `max_surge_percent`: scale the candidate up before scaling the previous down.
    Surge,
    /// `max_unavailable_percent`: scale the previous down before scaling the candidate up.
    Unavailable,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Surge => "surge",
            Mode::Unavailable => "unavailable",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action of a plan. Each changes exactly one quantity (or none, for `Stabilize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add the overhead replicas to the previous deployment (N → f) before anything moves.
    PreProvision,
    /// Add up to rs candidate replicas (capped at f).
    ScaleUp,
    /// Move up to ts percent of traffic to the candidate (capped at 100).
    Shift,
    /// Remove up to rs previous replicas (not below 0).
    ScaleDown,
    /// Wait `stabilization_time_seconds`.
    Stabilize,
}

impl Action {
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::PreProvision => "pre_provision",
            Action::ScaleUp => "scale_up",
            Action::Shift => "shift",
            Action::ScaleDown => "scale_down",
            Action::Stabilize => "stabilize",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action and the state after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Step {
    pub action: Action,
    pub candidate_replicas: u32,
    pub previous_replicas: u32,
    pub percent_traffic_to_new_version: u32,
}

impl Step {
    /// The JS's "done" test: all traffic and at least f replicas on the candidate, none left on
    /// the previous deployment.
    pub fn is_complete(&self, fleet: u32) -> bool {
        self.percent_traffic_to_new_version >= 100
            && self.candidate_replicas >= fleet
            && self.previous_replicas == 0
    }
}

/// The whole rolling deployment, step by step.
///
/// Serializes as `{"fleet":…,"replicas_per_step":…,"traffic_per_step":…,"mode":"surge",
/// "steps":[{"action":"scale_up","candidate_replicas":…,"previous_replicas":…,
/// "percent_traffic_to_new_version":…},…]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// f: replicas each deployment ends up with (the previous one after pre-provisioning, the
    /// candidate at the end).
    pub fleet: u32,
    /// rs.
    pub replicas_per_step: u32,
    /// ts, in percent.
    pub traffic_per_step: u32,
    pub mode: Mode,
    pub steps: Vec<Step>,
    /// N, the previous deployment's replica count before the plan.
    #[serde(skip)]
    pub previous_replicas: u32,
    /// T, the wait of each `stabilize` step.
    #[serde(skip)]
    pub stabilization_time_seconds: u32,
}

impl Plan {
    /// Validates `previous_replicas` (N, 1..=[`MAX_REPLICAS`]) and `config`, then lays out every
    /// step, mirroring the seed's `step()` state machine (see the module docs).
    pub fn new(previous_replicas: u32, config: &RollingConfig) -> Result<Plan, PlanError> {
        Field::Replicas.check(i64::from(previous_replicas))?;
        config.validate()?;
        let fleet = fleet_size(previous_replicas, config.replica_overhead_percent);
        let mode = config.mode();
        let rs = replicas_per_step(fleet, config.step_percent());
        let ts = traffic_per_step(fleet, rs);
        let stabilize = config.stabilization_time_seconds > 0;

        let mut steps = Vec::new();
        let mut at = Step {
            action: Action::PreProvision,
            candidate_replicas: 0,
            previous_replicas,
            percent_traffic_to_new_version: 0,
        };
        let mut record = |action: Action, at: &mut Step| {
            at.action = action;
            steps.push(*at);
        };
        if fleet > previous_replicas {
            at.previous_replicas = fleet;
            record(Action::PreProvision, &mut at);
        }
        // Terminates: every cycle takes rs >= 1 replicas off the previous deployment until it
        // has none, adds rs to the candidate until it has f, and adds ts >= 1 to the traffic
        // until it is 100.
        loop {
            match mode {
                Mode::Surge => {
                    at.candidate_replicas = scaled_up(at.candidate_replicas, rs, fleet);
                    record(Action::ScaleUp, &mut at);
                    at.percent_traffic_to_new_version =
                        next_traffic(at.percent_traffic_to_new_version, ts);
                    record(Action::Shift, &mut at);
                    if at.is_complete(fleet) {
                        break;
                    }
                    at.previous_replicas = scaled_down(at.previous_replicas, rs);
                    record(Action::ScaleDown, &mut at);
                    if at.is_complete(fleet) {
                        break;
                    }
                }
                Mode::Unavailable => {
                    at.previous_replicas = scaled_down(at.previous_replicas, rs);
                    record(Action::ScaleDown, &mut at);
                    if at.is_complete(fleet) {
                        break;
                    }
                    at.candidate_replicas = scaled_up(at.candidate_replicas, rs, fleet);
                    record(Action::ScaleUp, &mut at);
                    at.percent_traffic_to_new_version =
                        next_traffic(at.percent_traffic_to_new_version, ts);
                    record(Action::Shift, &mut at);
                    if at.is_complete(fleet) {
                        break;
                    }
                }
            }
            if stabilize {
                record(Action::Stabilize, &mut at);
            }
        }
        Ok(Plan {
            fleet,
            replicas_per_step: rs,
            traffic_per_step: ts,
            mode,
            steps,
            previous_replicas,
            stabilization_time_seconds: config.stabilization_time_seconds,
        })
    }

    /// How many `stabilize` steps the plan has.
    pub fn stabilize_steps(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action == Action::Stabilize)
            .count()
    }

    /// The least time the plan can take: its stabilization waits (replica start-up and drain
    /// come on top).
    pub fn min_duration_seconds(&self) -> u64 {
        self.stabilize_steps() as u64 * u64::from(self.stabilization_time_seconds)
    }

    /// A human-readable summary line and an aligned table of the steps, starting with a row 0
    /// for the state before the plan. Ends with a newline.
    pub fn render_table(&self) -> String {
        use fmt::Write as _;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fleet {} (previous {} + overhead {}), replicas per step {}, traffic per step {}%, \
             mode {}, estimated minimum duration {} ({} stabilize steps x {}s)",
            self.fleet,
            self.previous_replicas,
            self.fleet - self.previous_replicas,
            self.replicas_per_step,
            self.traffic_per_step,
            self.mode,
            human_duration(self.min_duration_seconds()),
            self.stabilize_steps(),
            self.stabilization_time_seconds,
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<13}  {:>9}  {:>9}  {:>16}",
            "step", "action", "candidate", "previous", "% to new version"
        );
        let _ = writeln!(
            out,
            "{:>4}  {:<13}  {:>9}  {:>9}  {:>15}%",
            0, "(start)", 0, self.previous_replicas, 0
        );
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>4}  {:<13}  {:>9}  {:>9}  {:>15}%",
                i + 1,
                s.action.as_str(),
                s.candidate_replicas,
                s.previous_replicas,
                s.percent_traffic_to_new_version
            );
        }
        out
    }
}

/// `1h 2m 3s`-style, `0s` for zero.
fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 {
        parts.push(format!("{m}m"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s}s"));
    }
    parts.join(" ")
}

/// `round(num / den)` with halves rounded up (JavaScript's `Math.round` on non-negative
/// numbers), in integers. `den` must be non-zero.
fn round_half_up(num: u64, den: u64) -> u64 {
    (2 * num + den) / (2 * den)
}

fn saturate(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// f = N + round(N · overhead / 100). Saturates at `u32::MAX` on unvalidated input.
pub fn fleet_size(previous_replicas: u32, replica_overhead_percent: u32) -> u32 {
    let n = u64::from(previous_replicas);
    saturate(n + round_half_up(n * u64::from(replica_overhead_percent), 100))
}

/// rs = max(1, round(p · f / 100)).
pub fn replicas_per_step(fleet: u32, percent: u32) -> u32 {
    saturate(round_half_up(u64::from(percent) * u64::from(fleet), 100).max(1))
}

/// ts = ceil(100 · rs / f), at most 100 (and 100 for an empty fleet).
pub fn traffic_per_step(fleet: u32, replicas_per_step: u32) -> u32 {
    if fleet == 0 {
        return 100;
    }
    saturate(
        (100 * u64::from(replicas_per_step))
            .div_ceil(u64::from(fleet))
            .min(100),
    )
}

/// The traffic percent after one ramp-up shift: `current + ts`, capped at 100.
pub fn next_traffic(current_percent: u32, traffic_per_step: u32) -> u32 {
    current_percent.saturating_add(traffic_per_step).min(100)
}

/// The traffic percent after one shift of a graceful cancel (ramp-down back to the previous
/// deployment): `current - ts`, not below 0. The reverse of [`next_traffic`] with the same step.
pub fn ramp_down_traffic(current_percent: u32, traffic_per_step: u32) -> u32 {
    current_percent.min(100).saturating_sub(traffic_per_step)
}

/// A deployment's replica count after scaling up by one step: `count + rs`, capped at `fleet`
/// (the candidate during a rollout, the previous deployment during a ramp-down).
pub fn scaled_up(count: u32, replicas_per_step: u32, fleet: u32) -> u32 {
    count.saturating_add(replicas_per_step).min(fleet)
}

/// A deployment's replica count after scaling down by one step: `count - rs`, not below 0.
pub fn scaled_down(count: u32, replicas_per_step: u32) -> u32 {
    count.saturating_sub(replicas_per_step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    fn config(surge: u32, unavailable: u32, stabilization: u32, overhead: u32) -> RollingConfig {
        RollingConfig {
            max_surge_percent: surge,
            max_unavailable_percent: unavailable,
            stabilization_time_seconds: stabilization,
            replica_overhead_percent: overhead,
        }
    }

    fn plan(n: u32, c: RollingConfig) -> Plan {
        match Plan::new(n, &c) {
            Ok(p) => p,
            Err(e) => panic!("plan({n}, {c:?}): {e}"),
        }
    }

    fn rows(p: &Plan) -> Vec<(Action, u32, u32, u32)> {
        p.steps
            .iter()
            .map(|s| {
                (
                    s.action,
                    s.candidate_replicas,
                    s.previous_replicas,
                    s.percent_traffic_to_new_version,
                )
            })
            .collect()
    }

    fn err(n: u32, c: RollingConfig) -> PlanError {
        match Plan::new(n, &c) {
            Ok(p) => panic!("plan({n}, {c:?}) should fail, got {p:?}"),
            Err(e) => e,
        }
    }

    /// Seed, "Deployment control actions": "the candidate deployment is at 20% traffic and has
    /// just been told to scale from 2 to 4 replicas". 10 replicas at 20 % surge give exactly
    /// that step.
    #[test]
    fn seed_pause_example_scale_up_2_to_4_at_20_percent() {
        let p = plan(10, config(20, 0, 0, 0));
        assert_eq!(
            (p.fleet, p.replicas_per_step, p.traffic_per_step),
            (10, 2, 20)
        );
        let i = p
            .steps
            .iter()
            .position(|s| s.action == ScaleUp && s.candidate_replicas == 4)
            .expect("a scale_up to 4");
        let before = p.steps[i - 1];
        assert_eq!(before.candidate_replicas, 2);
        assert_eq!(before.percent_traffic_to_new_version, 20);
        assert_eq!(p.steps[i].percent_traffic_to_new_version, 20);
    }

    #[test]
    fn surge_10_replicas_20_percent_full_plan() {
        let p = plan(10, config(20, 0, 0, 0));
        assert_eq!(p.mode, Mode::Surge);
        assert_eq!(
            rows(&p),
            vec![
                (ScaleUp, 2, 10, 0),
                (Shift, 2, 10, 20),
                (ScaleDown, 2, 8, 20),
                (ScaleUp, 4, 8, 20),
                (Shift, 4, 8, 40),
                (ScaleDown, 4, 6, 40),
                (ScaleUp, 6, 6, 40),
                (Shift, 6, 6, 60),
                (ScaleDown, 6, 4, 60),
                (ScaleUp, 8, 4, 60),
                (Shift, 8, 4, 80),
                (ScaleDown, 8, 2, 80),
                (ScaleUp, 10, 2, 80),
                (Shift, 10, 2, 100),
                (ScaleDown, 10, 0, 100),
            ]
        );
        assert_eq!(p.stabilize_steps(), 0);
        assert_eq!(p.min_duration_seconds(), 0);
    }

    #[test]
    fn unavailable_with_stabilization_full_plan() {
        let p = plan(10, config(0, 20, 60, 0));
        assert_eq!(p.mode, Mode::Unavailable);
        assert_eq!(
            (p.fleet, p.replicas_per_step, p.traffic_per_step),
            (10, 2, 20)
        );
        assert_eq!(
            rows(&p),
            vec![
                (ScaleDown, 0, 8, 0),
                (ScaleUp, 2, 8, 0),
                (Shift, 2, 8, 20),
                (Stabilize, 2, 8, 20),
                (ScaleDown, 2, 6, 20),
                (ScaleUp, 4, 6, 20),
                (Shift, 4, 6, 40),
                (Stabilize, 4, 6, 40),
                (ScaleDown, 4, 4, 40),
                (ScaleUp, 6, 4, 40),
                (Shift, 6, 4, 60),
                (Stabilize, 6, 4, 60),
                (ScaleDown, 6, 2, 60),
                (ScaleUp, 8, 2, 60),
                (Shift, 8, 2, 80),
                (Stabilize, 8, 2, 80),
                (ScaleDown, 8, 0, 80),
                (ScaleUp, 10, 0, 80),
                (Shift, 10, 0, 100),
            ]
        );
        assert_eq!(p.stabilize_steps(), 4);
        assert_eq!(p.min_duration_seconds(), 240);
    }

    #[test]
    fn surge_stabilizes_after_scale_down_but_not_after_the_last_step() {
        let p = plan(4, config(50, 0, 30, 0));
        assert_eq!(
            rows(&p),
            vec![
                (ScaleUp, 2, 4, 0),
                (Shift, 2, 4, 50),
                (ScaleDown, 2, 2, 50),
                (Stabilize, 2, 2, 50),
                (ScaleUp, 4, 2, 50),
                (Shift, 4, 2, 100),
                (ScaleDown, 4, 0, 100),
            ]
        );
        assert_eq!(p.min_duration_seconds(), 30);
    }

    /// The widget's own setup: N = 5, surge 10 %: round(0.5) = 1 (half up), ts = 20.
    #[test]
    fn seed_widget_defaults_round_half_up() {
        let p = plan(5, RollingConfig::default());
        assert_eq!(
            (p.fleet, p.replicas_per_step, p.traffic_per_step),
            (5, 1, 20)
        );
        assert_eq!(p.steps.len(), 15);
        assert_eq!(p.steps.iter().filter(|s| s.action == Shift).count(), 5);
        // Half up in the fleet too: 1 replica + 50 % overhead = 1 + round(0.5) = 2.
        assert_eq!(fleet_size(1, 50), 2);
        assert_eq!(fleet_size(1, 49), 1);
        assert_eq!(fleet_size(3, 50), 5); // 3 + round(1.5)
        assert_eq!(replicas_per_step(30, 5), 2); // round(1.5)
        assert_eq!(replicas_per_step(10, 1), 1); // max(1, round(0.1))
    }

    /// baseten-api.md (DOC-RD) uses 100 previous replicas at 25 %: surge asks for 25 candidate
    /// replicas while the previous keeps 100; unavailable takes the previous to 75 first.
    #[test]
    fn reference_100_replicas_25_percent() {
        let s = plan(100, config(25, 0, 0, 0));
        assert_eq!(
            (s.fleet, s.replicas_per_step, s.traffic_per_step),
            (100, 25, 25)
        );
        assert_eq!(rows(&s)[0], (ScaleUp, 25, 100, 0));
        assert_eq!(rows(&s)[2], (ScaleDown, 25, 75, 25));
        let u = plan(100, config(0, 25, 0, 0));
        assert_eq!(rows(&u)[..2], [(ScaleDown, 0, 75, 0), (ScaleUp, 25, 75, 0)]);
    }

    #[test]
    fn overhead_pre_provisions_the_previous_deployment_first() {
        let p = plan(10, config(20, 0, 0, 50));
        assert_eq!(
            (p.fleet, p.replicas_per_step, p.traffic_per_step),
            (15, 3, 20)
        );
        assert_eq!(
            rows(&p)[..4],
            [
                (PreProvision, 0, 15, 0),
                (ScaleUp, 3, 15, 0),
                (Shift, 3, 15, 20),
                (ScaleDown, 3, 12, 20),
            ]
        );
        assert_eq!(rows(&p).last(), Some(&(ScaleDown, 15, 0, 100)));
        let u = plan(10, config(0, 20, 0, 50));
        assert_eq!(
            rows(&u)[..2],
            [(PreProvision, 0, 15, 0), (ScaleDown, 0, 12, 0)]
        );
        // 500 %: 2 → 12.
        assert_eq!(
            plan(2, config(10, 0, 0, 500)).steps[0],
            Step {
                action: PreProvision,
                candidate_replicas: 0,
                previous_replicas: 12,
                percent_traffic_to_new_version: 0,
            }
        );
    }

    #[test]
    fn no_pre_provision_when_overhead_adds_nothing() {
        assert_eq!(plan(10, config(20, 0, 0, 0)).steps[0].action, ScaleUp);
        // round(1 * 10 / 100) = 0 extra replicas.
        let p = plan(1, config(20, 0, 0, 10));
        assert_eq!(p.fleet, 1);
        assert_eq!(p.steps[0].action, ScaleUp);
    }

    /// Capped last cycle: 10 replicas at 30 % → rs 3, ts 30; the last cycle moves 1 replica and
    /// 10 % of traffic.
    #[test]
    fn last_cycle_is_capped() {
        let p = plan(10, config(30, 0, 0, 0));
        assert_eq!((p.replicas_per_step, p.traffic_per_step), (3, 30));
        assert_eq!(
            rows(&p)[9..],
            [
                (ScaleUp, 10, 1, 90),
                (Shift, 10, 1, 100),
                (ScaleDown, 10, 0, 100)
            ]
        );
    }

    /// ts is rounded up, so traffic can reach 100 % before the replicas are done; the JS keeps
    /// walking through `shift`, which then changes nothing.
    #[test]
    fn traffic_can_finish_before_replicas() {
        let p = plan(45, config(5, 0, 0, 0));
        assert_eq!((p.replicas_per_step, p.traffic_per_step), (2, 5));
        let shifts: Vec<u32> = p
            .steps
            .iter()
            .filter(|s| s.action == Shift)
            .map(|s| s.percent_traffic_to_new_version)
            .collect();
        assert_eq!(shifts.len(), 23);
        assert_eq!(shifts[19..], [100, 100, 100, 100]);
        let at_100 = p
            .steps
            .iter()
            .find(|s| s.percent_traffic_to_new_version == 100);
        assert_eq!(
            at_100.map(|s| (s.candidate_replicas, s.previous_replicas)),
            Some((40, 7))
        );
        assert_eq!(rows(&p).last(), Some(&(ScaleDown, 45, 0, 100)));
    }

    /// Unavailable mode: complete after the last `scale_up`, yet the JS only checks "done" at
    /// the end of `shift`, so the plan ends on a `shift` that changes nothing.
    #[test]
    fn unavailable_ends_on_shift_even_when_it_is_a_no_op() {
        let p = plan(11, config(0, 1, 0, 0));
        assert_eq!((p.replicas_per_step, p.traffic_per_step), (1, 10));
        assert_eq!(
            rows(&p)[p.steps.len() - 4..],
            [
                (Shift, 10, 1, 100),
                (ScaleDown, 10, 0, 100),
                (ScaleUp, 11, 0, 100),
                (Shift, 11, 0, 100),
            ]
        );
    }

    #[test]
    fn single_replica() {
        let s = plan(1, config(10, 0, 0, 0));
        assert_eq!(
            rows(&s),
            vec![
                (ScaleUp, 1, 1, 0),
                (Shift, 1, 1, 100),
                (ScaleDown, 1, 0, 100)
            ]
        );
        let u = plan(1, config(0, 10, 0, 0));
        assert_eq!(
            rows(&u),
            vec![(ScaleDown, 0, 0, 0), (ScaleUp, 1, 0, 0), (Shift, 1, 0, 100)]
        );
    }

    #[test]
    fn validation_names_the_field_and_the_value() {
        let e = err(0, RollingConfig::default());
        assert_eq!(e.field(), "replicas");
        assert_eq!(
            e.to_string(),
            "replicas: must be between 1 and 1000000, got 0"
        );
        assert_eq!(e.value(), 0);

        let e = err(3, config(51, 0, 0, 0));
        assert_eq!(e.field(), "max_surge_percent");
        assert_eq!(
            e.to_string(),
            "max_surge_percent: must be between 0 and 50, got 51"
        );
        assert_eq!(e.message(), "must be between 0 and 50, got 51");

        let e = err(3, config(0, 75, 0, 0));
        assert_eq!(
            e.to_string(),
            "max_unavailable_percent: must be between 0 and 50, got 75"
        );

        let e = err(3, config(10, 0, 3601, 0));
        assert_eq!(
            e.to_string(),
            "stabilization_time_seconds: must be between 0 and 3600, got 3601"
        );

        let e = err(3, config(10, 0, 0, 501));
        assert_eq!(
            e.to_string(),
            "replica_overhead_percent: must be between 0 and 500, got 501"
        );
        assert_eq!(e.field_id(), Field::ReplicaOverheadPercent);

        let e = err(3, config(0, 0, 0, 0));
        assert_eq!(e.field(), "max_surge_percent");
        assert_eq!(e.problem(), &Problem::NoMode);
        assert_eq!(
            e.to_string(),
            "max_surge_percent: must not be 0 when max_unavailable_percent is 0, got 0 \
             (exactly one of max_surge_percent and max_unavailable_percent must be non-zero)"
        );

        let e = err(3, config(10, 5, 0, 0));
        assert_eq!(e.field(), "max_unavailable_percent");
        assert_eq!(e.value(), 5);
        assert_eq!(
            e.to_string(),
            "max_unavailable_percent: must be 0 when max_surge_percent is non-zero (it is 10), \
             got 5 (exactly one of max_surge_percent and max_unavailable_percent must be non-zero)"
        );

        // Ranges are checked before the mode rule.
        assert_eq!(err(3, config(60, 5, 0, 0)).field(), "max_surge_percent");
        // Boundaries are accepted.
        for c in [
            config(50, 0, 3600, 500),
            config(0, 50, 0, 0),
            config(1, 0, 0, 0),
        ] {
            assert!(c.validate().is_ok(), "{c:?}");
        }
        assert!(Plan::new(MAX_REPLICAS, &config(50, 0, 0, 500)).is_ok());
        assert_eq!(
            err(MAX_REPLICAS + 1, RollingConfig::default()).field(),
            "replicas"
        );
    }

    #[test]
    fn field_check_takes_signed_user_input() {
        assert_eq!(Field::MaxSurgePercent.check(20), Ok(20));
        let e = Field::MaxSurgePercent.check(-5).unwrap_err();
        assert_eq!(
            e.to_string(),
            "max_surge_percent: must be between 0 and 50, got -5"
        );
        assert_eq!(e.value(), -5);
        let e = Field::Replicas.check(i64::MAX).unwrap_err();
        assert_eq!(e.field(), "replicas");
        assert_eq!(e.value(), i64::MAX);
    }

    #[test]
    fn from_options_defaults() {
        let c = RollingConfig::from_options(None, None, None, None);
        assert_eq!(c, Ok(config(DEFAULT_MAX_SURGE_PERCENT, 0, 0, 0)));
        assert_eq!(
            RollingConfig::from_options(None, Some(25), None, None),
            Ok(config(0, 25, 0, 0))
        );
        assert_eq!(
            RollingConfig::from_options(None, Some(0), None, None),
            Ok(config(10, 0, 0, 0))
        );
        assert_eq!(
            RollingConfig::from_options(Some(20), None, Some(60), Some(50)),
            Ok(config(20, 0, 60, 50))
        );
        let e = RollingConfig::from_options(Some(0), None, None, None).unwrap_err();
        assert_eq!(e.problem(), &Problem::NoMode);
        let e = RollingConfig::from_options(Some(10), Some(10), None, None).unwrap_err();
        assert_eq!(e.field(), "max_unavailable_percent");
        let e = RollingConfig::from_options(None, None, Some(-1), None).unwrap_err();
        assert_eq!(e.field(), "stabilization_time_seconds");
    }

    #[test]
    fn json_shape() {
        let p = plan(2, config(50, 0, 0, 0));
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(
            json,
            r#"{"fleet":2,"replicas_per_step":1,"traffic_per_step":50,"mode":"surge","steps":[{"action":"scale_up","candidate_replicas":1,"previous_replicas":2,"percent_traffic_to_new_version":0},{"action":"shift","candidate_replicas":1,"previous_replicas":2,"percent_traffic_to_new_version":50},{"action":"scale_down","candidate_replicas":1,"previous_replicas":1,"percent_traffic_to_new_version":50},{"action":"scale_up","candidate_replicas":2,"previous_replicas":1,"percent_traffic_to_new_version":50},{"action":"shift","candidate_replicas":2,"previous_replicas":1,"percent_traffic_to_new_version":100},{"action":"scale_down","candidate_replicas":2,"previous_replicas":0,"percent_traffic_to_new_version":100}]}"#
        );
        let u = plan(2, config(0, 50, 10, 50));
        let v: serde_json::Value = serde_json::to_value(&u).unwrap_or_default();
        assert_eq!(v["mode"], "unavailable");
        let actions: Vec<&str> = v["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["action"].as_str())
            .collect();
        assert_eq!(
            actions,
            [
                "pre_provision",
                "scale_down",
                "scale_up",
                "shift",
                "stabilize",
                "scale_down",
                "scale_up",
                "shift"
            ]
        );
    }

    #[test]
    fn table() {
        let t = plan(10, config(0, 20, 90, 20)).render_table();
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "fleet 12 (previous 10 + overhead 2), replicas per step 2, traffic per step 17%, \
             mode unavailable, estimated minimum duration 7m 30s (5 stabilize steps x 90s)"
        );
        assert_eq!(
            lines[1],
            "step  action         candidate   previous  % to new version"
        );
        assert_eq!(
            lines[2],
            "   0  (start)                0         10                0%"
        );
        assert_eq!(
            lines[3],
            "   1  pre_provision          0         12                0%"
        );
        assert_eq!(
            lines.last().copied(),
            Some("  24  shift                 12          0              100%")
        );
        assert!(t.ends_with('\n'));
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(3600), "1h");
        assert_eq!(human_duration(3661), "1h 1m 1s");
    }

    #[test]
    fn helpers() {
        assert_eq!(next_traffic(80, 30), 100);
        assert_eq!(next_traffic(0, 17), 17);
        assert_eq!(next_traffic(u32::MAX, 1), 100);
        assert_eq!(ramp_down_traffic(100, 30), 70);
        assert_eq!(ramp_down_traffic(20, 30), 0);
        assert_eq!(scaled_up(9, 3, 10), 10);
        assert_eq!(scaled_down(2, 3), 0);
        assert_eq!(traffic_per_step(0, 1), 100);
        assert_eq!(traffic_per_step(1, 1), 100);
        assert_eq!(traffic_per_step(3, 2), 67);
        assert_eq!(fleet_size(u32::MAX, 500), u32::MAX);
        assert_eq!(round_half_up(5, 10), 1);
        assert_eq!(round_half_up(4, 10), 0);
        assert_eq!(round_half_up(15, 10), 2);
        assert_eq!(round_half_up(25, 10), 3);
        // A ramp-down from any point of a plan walks back to 0 in the same steps.
        let ts = 17;
        let mut t = 100;
        let mut n = 0;
        while t > 0 {
            t = ramp_down_traffic(t, ts);
            n += 1;
        }
        assert_eq!(n, 6);
    }

    /// The seed's JS arithmetic, in floats, as an independent oracle for the integer version.
    fn js(n: u32, p: u32, overhead: u32) -> (u32, u32, u32) {
        let n = f64::from(n);
        let f = n + (n * f64::from(overhead) / 100.0).round();
        let rs = (f64::from(p) * f / 100.0).round().max(1.0);
        let ts = (100.0 * rs / f).ceil();
        (f as u32, rs as u32, ts as u32)
    }

    /// Exhaustive: every N in 1..=60, every surge / unavailable percent in 1..=50 (the other 0),
    /// overhead in {0, 10, 50, 100, 500}, stabilization 0 and 60.
    #[test]
    fn property_every_small_plan_follows_the_formulas() {
        let mut plans = 0;
        for n in 1..=60u32 {
            for overhead in [0, 10, 50, 100, 500] {
                for (surge, unavailable) in (1..=50).map(|p| (p, 0)).chain((1..=50).map(|p| (0, p)))
                {
                    for stabilization in [0, 60] {
                        let c = config(surge, unavailable, stabilization, overhead);
                        check_plan(n, &c, &plan(n, c));
                        plans += 1;
                    }
                }
            }
        }
        assert_eq!(plans, 60 * 5 * 100 * 2);
    }

    fn check_plan(n: u32, c: &RollingConfig, p: &Plan) {
        let ctx = format!("N={n} {c:?}");
        let percent = c.max_surge_percent.max(c.max_unavailable_percent);
        let (f, rs, ts) = js(n, percent, c.replica_overhead_percent);
        assert_eq!(
            (p.fleet, p.replicas_per_step, p.traffic_per_step),
            (f, rs, ts),
            "{ctx}"
        );
        let surge = c.max_surge_percent > 0;
        assert_eq!(
            p.mode,
            if surge {
                Mode::Surge
            } else {
                Mode::Unavailable
            },
            "{ctx}"
        );

        // The action sequence: optional pre-provision, then K = ceil(f / rs) cycles, stabilize
        // between cycles only when T > 0, none after the last.
        let cycles = f.div_ceil(rs) as usize;
        assert!(100usize.div_ceil(ts as usize) <= cycles, "{ctx}");
        let cycle: &[Action] = if surge {
            &[ScaleUp, Shift, ScaleDown]
        } else {
            &[ScaleDown, ScaleUp, Shift]
        };
        let mut expected = Vec::new();
        if f > n {
            expected.push(PreProvision);
        }
        for k in 0..cycles {
            if k > 0 && c.stabilization_time_seconds > 0 {
                expected.push(Stabilize);
            }
            expected.extend_from_slice(cycle);
        }
        let actions: Vec<Action> = p.steps.iter().map(|s| s.action).collect();
        assert_eq!(actions, expected, "{ctx}");
        let stabilizes = if c.stabilization_time_seconds > 0 {
            cycles - 1
        } else {
            0
        };
        assert_eq!(p.stabilize_steps(), stabilizes, "{ctx}");
        assert_eq!(
            p.min_duration_seconds(),
            stabilizes as u64 * u64::from(c.stabilization_time_seconds),
            "{ctx}"
        );

        let mut prev = Step {
            action: PreProvision,
            candidate_replicas: 0,
            previous_replicas: n,
            percent_traffic_to_new_version: 0,
        };
        let mut shifts = 0;
        for (i, s) in p.steps.iter().enumerate() {
            let ctx = format!("{ctx} step {} {s:?}", i + 1);
            // Only the quantity the action names changes, by exactly the formula.
            let mut want = prev;
            want.action = s.action;
            match s.action {
                PreProvision => want.previous_replicas = f,
                ScaleUp => want.candidate_replicas = (prev.candidate_replicas + rs).min(f),
                Shift => {
                    shifts += 1;
                    want.percent_traffic_to_new_version = (shifts * ts).min(100);
                }
                ScaleDown => want.previous_replicas = prev.previous_replicas.saturating_sub(rs),
                Stabilize => {}
            }
            assert_eq!(*s, want, "{ctx}");
            assert!(s.percent_traffic_to_new_version >= prev.percent_traffic_to_new_version);
            assert!(s.percent_traffic_to_new_version <= 100, "{ctx}");
            assert!(
                s.candidate_replicas <= f && s.previous_replicas <= f,
                "{ctx}"
            );
            // The JS tests "done" only at the end of `shift` and `scale_down`: the plan ends at
            // the first of those that completes it. (An unavailable plan can be complete after
            // its last `scale_up` and still end on a `shift` that changes nothing.)
            if i + 1 == p.steps.len() {
                assert!(s.is_complete(f), "{ctx}");
            } else if matches!(s.action, Shift | ScaleDown) {
                assert!(!s.is_complete(f), "{ctx}");
            }
            let total = s.candidate_replicas + s.previous_replicas;
            if s.action != PreProvision {
                if surge {
                    assert!(total >= f && total <= f + rs, "{ctx}: total {total}");
                } else {
                    assert!(
                        total >= f.saturating_sub(rs) && total <= f,
                        "{ctx}: total {total}"
                    );
                }
            }
            prev = *s;
        }
        assert_eq!(
            (
                prev.candidate_replicas,
                prev.previous_replicas,
                prev.percent_traffic_to_new_version
            ),
            (f, 0, 100),
            "{ctx}"
        );
    }
}
