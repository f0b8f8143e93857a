//! `switchyard loadtest`: drives real traffic at a target (the proxy, or any HTTP server),
//! times every request the way LLM benchmarks do (time to first token, inter-token latency,
//! time per output token, end to end), follows a rollout through the admin API while it runs,
//! and reports per deployment and per rollout step: on the terminal, as JSON and as one
//! self-contained HTML page.

pub mod html;
pub mod report;
