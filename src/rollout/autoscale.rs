//! Autoscaling, Baseten style: pure decisions from in-flight request samples and a clock.
//!
//! Desired replicas = ceil(average in-flight requests over `autoscaling_window` /
//! (`concurrency_target` × `target_utilization_percentage` / 100)), within
//! `min_replica..=max_replica`. Up at once; down only after the load stayed low for
//! `scale_down_delay`. Replicas still starting count as capacity, so a burst does not cascade
//! 2 → 4 → 8 while the first new replicas boot. `min_replica == max_replica` pins the count.
//!
//! During a rollout (also while paused) only additions happen, split between the two
//! deployments in proportion to the traffic split ([`split_addition`]).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Baseten's `autoscaling_settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscalingSettings {
    pub min_replica: u32,
    pub max_replica: u32,
    pub autoscaling_window: u32,
    pub scale_down_delay: u32,
    pub concurrency_target: u32,
    pub target_utilization_percentage: u32,
}

impl Default for AutoscalingSettings {
    /// Baseten's documented defaults.
    fn default() -> Self {
        AutoscalingSettings {
            min_replica: 0,
            max_replica: 1,
            autoscaling_window: 60,
            scale_down_delay: 900,
            concurrency_target: 1,
            target_utilization_percentage: 70,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct AutoscalingError {
    pub field: &'static str,
    pub message: String,
}

impl AutoscalingSettings {
    pub fn validate(&self) -> Result<(), AutoscalingError> {
        let bad = |field, message: String| Err(AutoscalingError { field, message });
        if self.max_replica == 0 || self.max_replica > 1000 {
            return bad(
                "max_replica",
                format!("{} is out of range 1..=1000", self.max_replica),
            );
        }
        if self.min_replica > self.max_replica {
            return bad(
                "min_replica",
                format!(
                    "{} is above max_replica {}",
                    self.min_replica, self.max_replica
                ),
            );
        }
        if !(10..=3600).contains(&self.autoscaling_window) {
            return bad(
                "autoscaling_window",
                format!(
                    "{} is out of range 10..=3600 seconds",
                    self.autoscaling_window
                ),
            );
        }
        if self.scale_down_delay > 3600 {
            return bad(
                "scale_down_delay",
                format!("{} is out of range 0..=3600 seconds", self.scale_down_delay),
            );
        }
        if !(1..=256).contains(&self.concurrency_target) {
            return bad(
                "concurrency_target",
                format!("{} is out of range 1..=256", self.concurrency_target),
            );
        }
        if !(1..=100).contains(&self.target_utilization_percentage) {
            return bad(
                "target_utilization_percentage",
                format!(
                    "{} is out of range 1..=100",
                    self.target_utilization_percentage
                ),
            );
        }
        Ok(())
    }

    /// Autoscaling is on when the count is not pinned.
    pub fn enabled(&self) -> bool {
        self.min_replica < self.max_replica
    }
}

/// The recommendation state of one environment.
#[derive(Debug, Clone)]
pub struct Autoscaler {
    pub settings: AutoscalingSettings,
    /// (time ms, in-flight requests) inside the window.
    samples: VecDeque<(u64, u32)>,
    /// Since when the recommendation has been below the current count.
    low_since: Option<u64>,
}

impl Autoscaler {
    pub fn new(settings: AutoscalingSettings) -> Self {
        Autoscaler {
            settings,
            samples: VecDeque::new(),
            low_since: None,
        }
    }

    /// Records a sample of the load. A sample stands for the period before it, so one taken a
    /// whole window ago covers no part of the window and drops out: with 1 s samples and a
    /// 10 s window, the average is over the last 10 samples.
    pub fn record(&mut self, now: u64, in_flight: u32) {
        self.samples.push_back((now, in_flight));
        let window = u64::from(self.settings.autoscaling_window) * 1000;
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.saturating_sub(*t) >= window)
        {
            self.samples.pop_front();
        }
    }

    /// Replicas the load asks for, before the scale-down delay.
    pub fn recommended(&self) -> u32 {
        let s = &self.settings;
        if self.samples.is_empty() {
            return s.min_replica;
        }
        let avg = self.samples.iter().map(|(_, n)| f64::from(*n)).sum::<f64>()
            / self.samples.len() as f64;
        let per_replica =
            f64::from(s.concurrency_target) * f64::from(s.target_utilization_percentage) / 100.0;
        let want = (avg / per_replica - 1e-9).ceil().max(0.0) as u32;
        want.clamp(s.min_replica, s.max_replica)
    }

    /// The replica count to run, given `capacity` = replicas ready or starting now.
    pub fn desired(&mut self, now: u64, capacity: u32) -> u32 {
        let s = self.settings;
        if !s.enabled() {
            return s.max_replica;
        }
        let want = self.recommended();
        if want >= capacity {
            self.low_since = None;
            return want.max(s.min_replica);
        }
        let since = *self.low_since.get_or_insert(now);
        if now.saturating_sub(since) >= u64::from(s.scale_down_delay) * 1000 {
            self.low_since = None;
            want
        } else {
            capacity.clamp(s.min_replica, s.max_replica)
        }
    }
}

/// Splits `extra` new replicas between the previous and the candidate deployment in proportion
/// to the traffic split (percent on the candidate), capped so the total stays within
/// `max_total`. Returns (to previous, to candidate).
pub fn split_addition(
    extra: u32,
    percent_to_candidate: u32,
    previous: u32,
    candidate: u32,
    max_total: u32,
) -> (u32, u32) {
    let room = max_total.saturating_sub(previous + candidate);
    let extra = extra.min(room);
    let to_candidate =
        ((u64::from(extra) * u64::from(percent_to_candidate.min(100)) + 50) / 100) as u32;
    (extra - to_candidate, to_candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(min: u32, max: u32) -> AutoscalingSettings {
        AutoscalingSettings {
            min_replica: min,
            max_replica: max,
            autoscaling_window: 10,
            scale_down_delay: 30,
            concurrency_target: 2,
            target_utilization_percentage: 50,
        }
    }

    #[test]
    fn desired_follows_the_formula() {
        // Per replica: 2 × 50% = 1 in flight. Average over the window of 3, 5 → 4.
        let mut a = Autoscaler::new(settings(1, 10));
        a.record(0, 3);
        a.record(1000, 5);
        assert_eq!(a.recommended(), 4);
        assert_eq!(a.desired(1000, 1), 4);
        // Samples older than the window drop out.
        a.record(20_000, 1);
        assert_eq!(a.recommended(), 1);
        // One a whole window old too: it stands for the second before it.
        let mut a = Autoscaler::new(settings(1, 10));
        a.record(0, 9);
        a.record(9_000, 1);
        assert_eq!(a.recommended(), 5);
        a.record(10_000, 1);
        assert_eq!(a.recommended(), 1);
        let mut a = Autoscaler::new(settings(2, 5));
        a.record(0, 100);
        assert_eq!(a.recommended(), 5, "capped at max_replica");
        let mut a = Autoscaler::new(settings(2, 5));
        a.record(0, 0);
        assert_eq!(a.recommended(), 2, "floored at min_replica");
    }

    #[test]
    fn starting_replicas_count_as_capacity_so_bursts_do_not_cascade() {
        let mut a = Autoscaler::new(settings(1, 20));
        a.record(0, 4);
        assert_eq!(a.desired(0, 1), 4);
        // The 3 new replicas are still starting (capacity 4); the same load asks for no more.
        a.record(1000, 4);
        assert_eq!(a.desired(1000, 4), 4);
        a.record(2000, 4);
        assert_eq!(a.desired(2000, 4), 4);
    }

    #[test]
    fn scale_down_waits_for_the_delay() {
        let mut a = Autoscaler::new(settings(1, 10));
        a.record(0, 6);
        assert_eq!(a.desired(0, 1), 6);
        for t in (11_000..40_000).step_by(1000) {
            a.record(t, 1);
            let d = a.desired(t, 6);
            if t - 11_000 < 30_000 {
                assert_eq!(d, 6, "scaled down too early at {t}");
            }
        }
        a.record(41_000, 1);
        assert_eq!(a.desired(41_000, 6), 1);
        // A spike in between resets the delay.
        let mut a = Autoscaler::new(settings(1, 10));
        a.record(0, 1);
        assert_eq!(a.desired(0, 3), 3);
        a.record(20_000, 3);
        assert_eq!(a.desired(20_000, 3), 3);
        a.record(31_000, 1);
        assert_eq!(a.desired(31_000, 3), 3);
    }

    #[test]
    fn equal_min_and_max_pin_the_count() {
        let mut a = Autoscaler::new(settings(3, 3));
        a.record(0, 100);
        assert_eq!(a.desired(0, 3), 3);
        a.record(1, 0);
        assert_eq!(a.desired(100_000, 3), 3);
    }

    #[test]
    fn rollout_additions_follow_the_traffic_split() {
        // The seed: 60/40 between previous and candidate, 10 more replicas of demand → 6 and 4.
        assert_eq!(split_addition(10, 40, 5, 5, 100), (6, 4));
        // The combined count stays within max_replica.
        assert_eq!(split_addition(10, 40, 5, 5, 14), (2, 2));
        assert_eq!(split_addition(10, 40, 5, 5, 10), (0, 0));
        assert_eq!(split_addition(3, 100, 0, 4, 10), (0, 3));
    }

    #[test]
    fn validation_names_the_field() {
        let mut s = settings(1, 10);
        s.min_replica = 11;
        assert_eq!(s.validate().unwrap_err().field, "min_replica");
        let mut s = settings(1, 10);
        s.target_utilization_percentage = 0;
        assert_eq!(
            s.validate().unwrap_err().field,
            "target_utilization_percentage"
        );
        assert!(settings(1, 10).validate().is_ok());
    }
}
