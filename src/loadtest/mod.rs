//! `switchyard loadtest`: drives real traffic at a target (the proxy, or any HTTP server),
//! times every request the way LLM benchmarks do (time to first token, inter-token latency,
//! time per output token, end to end), follows a rollout through the admin API while it runs,
//! and reports per deployment and per rollout step: on the terminal, as JSON and as one
//! self-contained HTML page.
//!
//! - [`options`]: the flags and their validation;
//! - `generator`: connections, request bodies, sending and timing one request;
//! - `collect`: folding outcomes into figures with bounded memory, cutting rollout steps;
//! - `run`: the load loops, the rollout follower, progress;
//! - [`report`]: the report's types (the JSON schema), `summary` its text, [`html`] its page.

pub mod collect;
mod generator;
pub mod html;
pub mod options;
pub mod report;
mod run;
pub mod summary;

use std::process::ExitCode;

pub use options::{LoadtestArgs, Options};

/// Runs `switchyard loadtest`: exit 0, 1 when a limit was broken, 2 for bad flags or a target
/// that cannot be reached.
pub fn main(args: &LoadtestArgs) -> ExitCode {
    let key = std::env::var("SWITCHYARD_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let opts = match Options::from_args(args, key) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("switchyard loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    let (json, html) = (opts.json.clone(), opts.html.clone());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard loadtest: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match runtime.block_on(run::run(opts)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("switchyard loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", summary::text(&report));
    if let Some(path) = json {
        let written = serde_json::to_vec_pretty(&report)
            .map_err(|e| e.to_string())
            .and_then(|b| std::fs::write(&path, b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("switchyard loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if let Some(path) = html {
        if let Err(e) = std::fs::write(&path, html::render(&report)) {
            eprintln!("switchyard loadtest: cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    for v in &report.violations {
        eprintln!("switchyard loadtest: {v}");
    }
    if report.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
