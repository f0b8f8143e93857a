//! The deploy/ artifacts are checked against the binary they deploy.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Metric families the binary exports, with the series suffixes of histograms.
fn exported() -> BTreeSet<String> {
    let m = switchyard::metrics::Metrics::new();
    let p = m.pool("m", "e", "d");
    p.count_response(http::StatusCode::OK);
    p.count_error(switchyard::metrics::UpstreamErrorKind::Connect);
    p.stats.latency(std::time::Duration::from_millis(100));
    p.stats.first_byte(std::time::Duration::from_millis(100));
    let text = String::from_utf8(m.encode()).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(family) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (n, kind) = family.split_once(' ').unwrap();
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{n}{suffix}"));
            }
        }
        names.insert(n.to_string());
    }
    names
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("switchyard_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_dashboard_only_queries_metrics_the_binary_exports() {
    let dash: serde_json::Value = serde_json::from_str(&read("deploy/grafana/switchyard.json"))
        .expect("dashboard JSON parses");
    let mut queries = String::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            queries.push_str(t["expr"].as_str().unwrap());
            queries.push('\n');
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"].as_str() {
            queries.push_str(q);
        }
    }
    let used = metric_names(&queries);
    assert!(used.len() >= 6, "{used:?}");
    let exported = exported();
    let unknown: Vec<&String> = used.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the binary does not export: {unknown:?}"
    );
    // And every family the binary exports has a panel.
    for family in [
        "switchyard_requests_total",
        "switchyard_request_duration_seconds_bucket",
        "switchyard_time_to_first_byte_seconds_bucket",
        "switchyard_in_flight_requests",
        "switchyard_upstream_errors_total",
        "switchyard_traffic_weight",
        "switchyard_ready_replicas",
    ] {
        assert!(used.contains(family), "no panel uses {family}");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("systemd-analyze is not installed: skipped");
        return;
    };
    assert!(out.status.success());
    // verify checks that ExecStart exists: point it at the binary under test.
    let unit = read("deploy/switchyard.service").replace(
        "/usr/local/bin/switchyard",
        env!("CARGO_BIN_EXE_switchyard"),
    );
    let dir = std::env::temp_dir().join(format!("switchyard-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchyard.service");
    std::fs::write(&path, unit).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("switchyard.service:"),
        "systemd-analyze verify: {stderr}"
    );
}

/// The number after `key` on the line that contains it.
fn number_after(text: &str, key: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key}"));
    let tail = &line[line.find(key).unwrap() + key.len()..];
    tail.trim_start_matches(|c: char| !c.is_ascii_digit())
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn the_kubernetes_grace_period_covers_the_drain() {
    let y = read("deploy/kubernetes/sidecar.yaml");
    let grace = number_after(&y, "terminationGracePeriodSeconds:");
    let drain = number_after(&y, "--shutdown-grace-seconds=");
    let pre_stop = number_after(&y, r#"command: ["sleep", ""#);
    assert!(
        grace > drain + pre_stop,
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop} + drain {drain}"
    );
    assert!(y.contains("path: /livez") && y.contains("path: /readyz"));
    // The flags it passes are flags the binary has.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for line in y.lines().map(str::trim).filter(|l| l.starts_with("- --")) {
        let flag = line.trim_start_matches("- ").split('=').next().unwrap();
        assert!(help.contains(flag), "{flag} is not a serve flag");
    }
}

#[test]
fn the_container_build_is_multi_stage_and_runs_as_non_root() {
    let d = read("deploy/Dockerfile");
    assert_eq!(d.lines().filter(|l| l.starts_with("FROM ")).count(), 2);
    let user = d
        .lines()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("a USER line");
    assert!(!user.contains("root") && user != "USER 0", "{user}");
    assert!(
        d.contains("util-linux"),
        "setpriv is needed for replica processes"
    );
}
