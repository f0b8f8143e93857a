//! `switchyard loadtest` against real processes: built-in replicas with known timing for
//! accuracy, and a real promotion for rollout mode.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard::loadtest::report::Report;

mod common;

use common::{admin_addr_of, replica_command_toml, KillOnDrop};

/// The binary, with no admin listener or key from the environment.
fn bin() -> Command {
    let mut c = common::bin();
    c.env_remove("SWITCHYARD_ADMIN_URL")
        .env_remove("SWITCHYARD_API_KEY");
    c
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A built-in replica on a free port, once it answers.
fn replica(args: &[&str]) -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let child = bin()
        .args([
            "replica",
            "--port",
            &port.to_string(),
            "--startup-delay-ms",
            "0",
        ])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "replica did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (KillOnDrop(child), addr)
}

/// Median round trip of a tiny request on a fresh connection, in ms.
fn round_trip_ms(addr: SocketAddr) -> f64 {
    let mut times: Vec<f64> = (0..21)
        .map(|_| {
            let t = Instant::now();
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[10]
}

fn loadtest(args: &[&str], envs: &[(&str, &str)]) -> (i32, Report, String) {
    let dir = std::env::temp_dir().join(format!(
        "switchyard-loadtest-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut c = bin();
    c.arg("loadtest")
        .args(args)
        .arg("--quiet")
        .arg("--json")
        .arg(&json);
    for (k, v) in envs {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Report = serde_json::from_str(&text).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().unwrap_or(-1),
        report,
        format!("{stdout}{stderr}"),
    )
}

#[test]
fn streamed_timings_match_a_replica_with_known_latency() {
    // 50 ms to the first token, then one token every 20 ms.
    let (_r, addr) = replica(&["--latency-ms", "50", "--tokens-per-second", "50"]);
    let rtt = round_trip_ms(addr);
    let target = format!("http://{addr}");
    let (code, r, out) = loadtest(
        &[
            &target,
            "--concurrency",
            "4",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--max-tokens",
            "10",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let o = &r.summary.overall;
    assert!(o.requests >= 20, "{out}");
    assert_eq!((o.errors, o.broken_streams), (0, 0), "{out}");
    let ttft = o.ttft_ms.p50.unwrap();
    // Histogram buckets are ±6% wide: the bound allows for that too.
    assert!(
        ttft >= 50.0 * 0.94 && ttft <= (55.0 + rtt) * 1.06,
        "median TTFT {ttft:.2} ms, configured 50 ms + round trip {rtt:.2} ms\n{out}"
    );
    let tpot = o.tpot_ms.p50.unwrap();
    assert!(
        (18.0..=22.0).contains(&tpot),
        "median TPOT {tpot:.2} ms, configured 20 ms\n{out}"
    );
    assert_eq!(
        o.output_tokens,
        o.requests * 10,
        "10 token events per stream"
    );
    // Without a version header the answers are counted under "-".
    assert!(r.summary.deployments.contains_key("-"));
}

#[test]
fn errors_are_counted_by_status_within_statistical_bounds() {
    let (_r, addr) = replica(&["--latency-ms", "2", "--error-rate", "0.2"]);
    let target = format!("http://{addr}");
    let (code, r, out) = loadtest(
        &[
            &target,
            "--rate",
            "400",
            "--requests",
            "800",
            "--warmup",
            "0",
            "--stream",
            "false",
            "--max-tokens",
            "1",
            "--max-error-rate",
            "5",
        ],
        &[],
    );
    // 20% errors is above --max-error-rate 5: exit 1, with the reason.
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("is above --max-error-rate 5%"), "{out}");
    let o = &r.summary.overall;
    assert_eq!(o.requests, 800, "{out}");
    let rate = o.errors as f64 / o.requests as f64;
    // 4.5 standard deviations of a binomial(800, 0.2): about 0.063.
    assert!((rate - 0.2).abs() < 0.063, "error rate {rate}\n{out}");
    assert_eq!(o.errors_by_status["500"], o.errors);
}

#[test]
fn bad_flags_and_unreachable_targets_exit_2_with_the_reason() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    for (args, want) in [
        (vec!["--rate", "0"], "--rate 0"),
        (vec!["--stream", "maybe"], "--stream"),
        (vec![closed.as_str(), "--duration", "1"], "cannot connect"),
        (
            vec!["--admin-url", "http://127.0.0.1:9", "--duration", "1"],
            "SWITCHYARD_API_KEY",
        ),
    ] {
        let out = bin().arg("loadtest").args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn rollout_mode_measures_each_step_and_follows_the_event_log() {
    let key = "loadtest-rollout-key-0123456789";
    let dir = std::env::temp_dir().join(format!("switchyard-lt-rollout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("rollout.toml");
    let replica =
        |v: &str| replica_command_toml(v, &["--latency-ms", "5", "--startup-delay-ms", "100"]);
    std::fs::write(
        &config,
        format!(
            r#"
[[models]]
id = "m"
[[models.deployments]]
id = "v1"
{}
[[models.deployments]]
id = "v2"
{}
[[models.environments]]
name = "production"
current = "v1"
replicas = 4
[models.environments.promotion_settings]
rolling_deploy = true
[models.environments.promotion_settings.rolling_deploy_config]
max_surge_percent = 25
stabilization_time_seconds = 3
"#,
            replica("v1"),
            replica("v2"),
        ),
    )
    .unwrap();
    let mut child = bin()
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "info")
        .env("SWITCHYARD_API_KEY", key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (proxy, admin) = admin_addr_of(&mut child);
    let _server = KillOnDrop(child);
    let admin_url = format!("http://{admin}");
    // Wait for v1's 4 replicas.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = bin()
            .args(["status", "--json"])
            .env("SWITCHYARD_ADMIN_URL", &admin_url)
            .env("SWITCHYARD_API_KEY", key)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if v["current_deployment"]["active_replica_count"] == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "v1 never got 4 replicas: {v}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let target = format!("http://{proxy}");
    let (code, r, out) = loadtest(
        &[
            &target,
            "--admin-url",
            &admin_url,
            "--promote",
            "v2",
            "--rate",
            "150",
            "--warmup",
            "1",
            "--cooldown",
            "1",
            "--stream",
            "false",
            "--max-tokens",
            "1",
        ],
        &[("SWITCHYARD_API_KEY", key)],
    );
    assert_eq!(code, 0, "{out}");
    assert_eq!(r.candidate.as_deref(), Some("v2"));
    assert_eq!(r.summary.overall.errors, 0, "{out}");
    let last = r.steps.last().unwrap();
    assert_eq!(last.status, "SUCCEEDED", "{out}");
    let percents: Vec<u32> = r.steps.iter().map(|s| s.configured_percent).collect();
    for want in [25, 50, 75, 100] {
        assert!(
            percents.contains(&want),
            "no step at {want}%: {percents:?}\n{out}"
        );
    }
    // Each well-sampled step's measured share agrees with its configured percent. The report
    // gives 95% intervals; the test allows 99.9% (z = 3.29) so that it fails for a real
    // routing error, not one run in twenty by chance.
    let mut checked = 0;
    for s in r.steps.iter().filter(|s| s.requests >= 200) {
        let n = s.requests as f64;
        let p = f64::from(s.configured_percent) / 100.0;
        let measured = s.candidate_requests as f64 / n;
        let sd = (p * (1.0 - p) / n).sqrt().max(0.5 / n);
        assert!(
            (measured - p).abs() <= 3.29 * sd + 1.0 / n,
            "step {s:?}: measured {measured:.3} vs configured {p}\n{out}"
        );
        let (lo, hi) = s.ci95.unwrap();
        assert!(lo <= 100.0 * measured && 100.0 * measured <= hi);
        checked += 1;
    }
    assert!(
        checked >= 3,
        "too few steps with 200 requests: {:#?}",
        r.steps
    );

    // The report's events are the environment's event log from the promotion on.
    let events = bin()
        .args(["events", "--json"])
        .env("SWITCHYARD_ADMIN_URL", &admin_url)
        .env("SWITCHYARD_API_KEY", key)
        .output()
        .unwrap();
    let log: serde_json::Value = serde_json::from_slice(&events.stdout).unwrap();
    let log: Vec<(String, u64, String)> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["status"].as_str().unwrap().to_owned(),
                e["percent_traffic_to_new_version"].as_u64().unwrap(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let seen: Vec<(String, u64, String)> = r
        .events
        .iter()
        .skip(1) // the state when the test began
        .map(|e| {
            (
                e.status.clone(),
                u64::from(e.percent_traffic_to_new_version),
                e.reason.clone(),
            )
        })
        .collect();
    assert_eq!(seen, log, "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http2_json_bodies_and_plain_gets_all_reach_the_target() {
    let (_r, addr) = replica(&["--latency-ms", "1", "--version", "v9"]);
    let target = format!("http://{addr}");
    let dir = std::env::temp_dir().join(format!("switchyard-lt-body-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let body = dir.join("predict.json");
    std::fs::write(&body, r#"{"max_tokens": 3}"#).unwrap();
    for args in [
        vec!["--http2", "--concurrency", "4", "--stream", "mix"],
        vec!["--path", "/predict", "--body-file", body.to_str().unwrap()],
        vec!["--get", "--path", "/healthz", "--rate", "200"],
    ] {
        let mut all = vec![target.as_str(), "--requests", "60", "--warmup", "0"];
        all.extend(&args);
        let (code, r, out) = loadtest(&all, &[("SWITCHYARD_API_KEY", "unused")]);
        assert_eq!(code, 0, "{args:?}: {out}");
        let o = &r.summary.overall;
        assert_eq!(
            (o.requests, o.errors, o.broken_streams),
            (60, 0, 0),
            "{args:?}: {out}"
        );
        assert!(
            o.ttft_ms.p50.is_some() && o.e2el_ms.p50.is_some(),
            "{args:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
