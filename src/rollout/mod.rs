//! The rollout controller: replica-based rolling deployments modelled on Baseten's.
//!
//! [`plan`] is the pure step arithmetic (no I/O, no clock): given the previous deployment's
//! replica count and a [`RollingConfig`], it lists every action of a rolling deployment and the
//! state after each one. The state machine, replica providers and autoscaling build on it.

pub mod plan;

pub use plan::{Action, Field, Mode, Plan, PlanError, Problem, RollingConfig, Step};
pub mod analysis;
pub mod autoscale;
pub mod controller;
pub mod machine;
