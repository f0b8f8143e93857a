//! What the binary-driving test crates (`cli`, `loadtest`) share: starting the built
//! `switchyard`, reading the addresses it reports, and never leaving a child behind.
#![allow(dead_code)] // each crate uses its own subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// The built binary, logging at info (its addresses are logged), with no config from the
/// environment and no shared data directory (a second opener is refused; the crash tests opt
/// in with their own).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    c.env("RUST_LOG", "info")
        .env_remove("SWITCHYARD_CONFIG")
        .env("SWITCHYARD_EPHEMERAL", "1");
    c
}

/// The proxy and admin addresses a serving child logs on stderr (which must be piped); the
/// rest of its stderr is drained so it never blocks.
pub fn admin_addr_of(child: &mut Child) -> (SocketAddr, SocketAddr) {
    let stderr = child.stderr.take().expect("stderr must be piped");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let (Some(p), Some(a)) = (
            line.split("proxy on http://").nth(1),
            line.split("admin on http://").nth(1),
        ) {
            let proxy = p.split_whitespace().next().unwrap().parse().unwrap();
            let admin = a.split_whitespace().next().unwrap().parse().unwrap();
            std::thread::spawn(move || for _ in lines {});
            return (proxy, admin);
        }
    }
    panic!("switchyard did not report its addresses");
}

/// Kills the child if the test fails before stopping it, so no server outlives the test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The TOML `command = [...]` line of a deployment running the built-in replica as `version`,
/// with extra flags.
pub fn replica_command_toml(version: &str, extra: &[&str]) -> String {
    let mut args = vec![
        env!("CARGO_BIN_EXE_switchyard").to_owned(),
        "replica".into(),
        "--port".into(),
        "{port}".into(),
        "--version".into(),
        version.to_owned(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let quoted: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!("command = [{}]", quoted.join(", "))
}
