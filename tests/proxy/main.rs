//! Data-plane integration tests: real upstream servers, the real proxy and real clients on
//! 127.0.0.1 ephemeral ports. Suites are named by the property they guard.

mod support;

mod analysis;
mod api;
mod failover;
mod framing;
mod http1_conformance;
mod idle_clients;
mod placement;
mod protocols;
mod rollout;
mod routes;
mod shutdown;
mod split;
mod streaming;
mod telemetry;
mod transparency;
