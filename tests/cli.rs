//! The `switchyard` binary as a user runs it: flag and config errors, the plan command, and
//! SIGTERM draining a live stream.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{admin_addr_of, bin, replica_command_toml, KillOnDrop};

fn run(args: &[&str]) -> (i32, String, String) {
    let out = bin().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_exit_non_zero_naming_the_flag_and_value() {
    let (code, _, err) = run(&["serve", "--upstream", "v1=not-an-address"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--upstream") && err.contains("not-an-address"),
        "{err}"
    );
    let (code, _, err) = run(&[
        "serve",
        "--upstream",
        "v1=127.0.0.1:1",
        "--weight",
        "v1=ten",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--weight") && err.contains("ten"), "{err}");
    let (code, _, err) = run(&[
        "serve",
        "--upstream",
        "v1=127.0.0.1:1",
        "--listen",
        "127.0.0.1",
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--listen") && err.contains("127.0.0.1"),
        "{err}"
    );
}

#[test]
fn a_busy_port_is_reported_before_serving() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, _, err) = run(&[
        "serve",
        "--upstream",
        "v1=127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &addr,
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&addr), "{err}");
}

/// Two instances started with default flags on one host (different ports) both start, each
/// with its own data directory; two pointed at one explicit directory: the second is refused,
/// naming it.
#[test]
fn two_default_instances_on_one_host_keep_separate_state() {
    let home = std::env::temp_dir().join(format!(
        "switchyard-cli-home-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let serve = |admin: &str, data_dir: Option<&std::path::Path>| {
        let mut c = common::bin();
        c.env_remove("SWITCHYARD_EPHEMERAL")
            .env_remove("SWITCHYARD_DATA_DIR")
            .env("XDG_STATE_HOME", &home)
            .args([
                "serve",
                "--upstream",
                "v1=127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--admin-listen", admin]);
        if let Some(d) = data_dir {
            c.arg("--data-dir").arg(d);
        }
        c.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string()
    };
    let (p1, p2) = (free(), free());
    let mut first = common::KillOnDrop(serve(&p1, None));
    let _ = common::admin_addr_of(&mut first.0);
    let mut second = common::KillOnDrop(serve(&p2, None));
    let _ = common::admin_addr_of(&mut second.0);
    for p in [&p1, &p2] {
        let dir = home
            .join("switchyard")
            .join(format!("admin-{}", p.replace(':', "-")));
        assert!(
            dir.join("state.redb").is_file(),
            "{} has no state",
            dir.display()
        );
    }
    drop((first, second));

    let shared = home.join("one-dir");
    let mut a = common::KillOnDrop(serve(&free(), Some(&shared)));
    let _ = common::admin_addr_of(&mut a.0);
    let b = serve(&free(), Some(&shared));
    let out = b.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&shared.display().to_string()) && err.contains("in use"),
        "{err}"
    );
    drop(a);
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn config_errors_name_the_key_and_check_config_accepts_the_example() {
    let dir = std::env::temp_dir().join(format!("switchyard-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[models]]\nid = \"m\"\n[[models.deployments]]\nid = \"v1\"\nreplicas = [\"127.0.0.1:1\"]\n[[models.environments]]\nname = \"production\"\nweights = { v1 = 1, v2 = 3 }\n").unwrap();
    let (code, _, err) = run(&["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        err.contains("models[0].environments[0].weights.v2"),
        "{err}"
    );
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/switchyard.example.toml"
    );
    let (code, out, err) = run(&["serve", "--config", example, "--check-config"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("model llama environment production: v1=90.00% v2=10.00%"),
        "{out}"
    );
    assert!(out.contains("config OK"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plan_prints_json_and_rejects_bad_settings_by_field() {
    let (code, out, err) = run(&[
        "plan",
        "--replicas",
        "10",
        "--max-surge-percent",
        "20",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["fleet"], 10);
    assert_eq!(v["mode"], "surge");
    let steps = v["steps"].as_array().unwrap();
    let last = steps.last().unwrap();
    assert_eq!(last["percent_traffic_to_new_version"], 100);
    assert_eq!(last["previous_replicas"], 0);
    let (code, _, err) = run(&["plan", "--replicas", "10", "--max-surge-percent", "80"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("max_surge_percent") && err.contains("80"),
        "{err}"
    );
}

/// A one-connection upstream that streams `n` SSE events 100 ms apart.
fn streaming_upstream(n: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in l.incoming() {
            let Ok(mut s) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
                for i in 0..n {
                    let ev = format!("data: {i}\n\n");
                    let _ = s.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = s.write_all(b"0\r\n\r\n");
            });
        }
    });
    addr
}

/// Reads stderr until the "proxy on http://ADDR" line and returns ADDR.
fn proxy_addr(child: &mut Child) -> SocketAddr {
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.split("proxy on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap().parse().unwrap();
            // Keep draining stderr so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return addr;
        }
    }
    panic!("switchyard did not report its address");
}

#[test]
fn sigterm_lets_an_in_flight_stream_finish_then_exits_zero() {
    let up = streaming_upstream(10);
    let mut child = bin()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(["--upstream", &format!("v1={up}"), "--workers", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = proxy_addr(&mut child);
    let mut client = TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("data: 1") {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.ends_with(b"0\r\n\r\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.contains("data: 9"),
        "the stream was cut at shutdown:\n{text}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "switchyard did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}

/// Pids whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent) {
            out.push(pid);
        }
    }
    out
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn no_replica_outlives_a_killed_switchyard() {
    let dir = std::env::temp_dir().join(format!("switchyard-orphans-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("process.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[models]]
id = "m"
[[models.deployments]]
id = "v1"
command = ["{bin}", "replica", "--port", "{{port}}", "--version", "v1"]
[[models.deployments]]
id = "sleeper"
command = ["sh", "-c", "exec sleep 600 # {{port}}"]
[[models.environments]]
name = "production"
current = "v1"
replicas = 2
[[models.environments]]
name = "staging"
current = "sleeper"
replicas = 1
"#,
            bin = env!("CARGO_BIN_EXE_switchyard")
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
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = proxy_addr(&mut child);
    // Wait until both replicas serve.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = s.write_all(b"POST /predict HTTP/1.1\r\nhost: m\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            // Two replicas of v1, plus a `sleep` that never gets ready and does not watch
            // its parent: only the parent-death signal can stop it.
            if out.starts_with("HTTP/1.1 200") && children_of(child.id()).len() == 3 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "replicas did not become ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replicas = children_of(child.id());
    assert_eq!(replicas.len(), 3);
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas.iter().any(|p| running(*p)) {
        assert!(
            Instant::now() < deadline,
            "replica processes {replicas:?} outlived switchyard"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a client command against `admin` with the API key.
fn client(admin: &str, key: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut c = bin();
    c.args(args)
        .env("SWITCHYARD_ADMIN_URL", format!("http://{admin}"));
    match key {
        Some(k) => c.env("SWITCHYARD_API_KEY", k),
        None => c.env_remove("SWITCHYARD_API_KEY"),
    };
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Reads the admin address from switchyard's start line.

#[test]
fn the_cli_drives_promotions_and_watch_exits_by_outcome() {
    let key = "cli-test-key-0123456789";
    let dir = std::env::temp_dir().join(format!("switchyard-cli-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("watch.toml");
    let replica = |v: &str| replica_command_toml(v, &[]);
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
[[models.deployments]]
id = "broken"
command = ["sh", "-c", "exit 7 # {{port}}"]
[[models.environments]]
name = "production"
current = "v1"
replicas = 2
[models.environments.promotion_settings]
rolling_deploy = true
ready_deadline_seconds = 20
[models.environments.promotion_settings.rolling_deploy_config]
max_surge_percent = 50
stabilization_time_seconds = 1
"#,
            replica("v1"),
            replica("v2")
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
        .env("SWITCHYARD_API_KEY", key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, admin) = admin_addr_of(&mut child);
    let admin = admin.to_string();

    let (code, _, err) = client(&admin, None, &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("missing API key"), "{err}");
    let (code, _, err) = client(&admin, Some("wrong-key-0123456789"), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("wrong API key"), "{err}");

    let (code, out, err) = client(&admin, Some(key), &["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("m/production: current deployment v1"), "{out}");

    let (code, out, err) = client(&admin, Some(key), &["promote", "v2", "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCEEDED") && out.contains("100%"), "{out}");
    let (_, out, _) = client(&admin, Some(key), &["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["current_deployment"]["id"], "v2");
    assert_eq!(v["in_progress_promotion"]["status"], "SUCCEEDED");

    // Back to v1, cancelled while ramping: --watch exits 3.
    let (code, _, err) = client(&admin, Some(key), &["promote", "v1"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = client(&admin, Some(key), &["status", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if v["in_progress_promotion"]["percent_traffic_to_new_version"]
            .as_u64()
            .unwrap_or(0)
            > 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the promotion never moved traffic"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, out, err) = client(&admin, Some(key), &["cancel"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("RAMPING_DOWN") || out.starts_with("CANCELED"),
        "{out}"
    );
    let (code, out, _) = client(&admin, Some(key), &["status", "--watch"]);
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("CANCELED"));
    let (code, _, err) = client(&admin, Some(key), &["pause"]);
    assert_eq!(code, 1);
    assert!(err.contains("no promotion is in progress"), "{err}");

    // A candidate that cannot start: FAILED, exit 1, with the reason.
    let (code, out, _) = client(&admin, Some(key), &["promote", "broken", "--watch"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED") && out.contains("exit status: 7"),
        "{out}"
    );

    let (code, out, _) = client(&admin, Some(key), &["events"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("SUCCEEDED") && out.contains("CANCELED") && out.contains("FAILED"),
        "{out}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rollout_killed_mid_way_resumes_from_the_same_step() {
    let key = "resume-test-key-0123456789";
    let dir = std::env::temp_dir().join(format!("switchyard-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("resume.toml");
    let replica = |v: &str| replica_command_toml(v, &[]);
    std::fs::write(
        &config,
        format!(
            r#"
[server]
data_dir = "{data}"
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
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    let start = || {
        let (child, _, admin) = serve_durable(&config, key);
        (child, admin)
    };
    let status = |admin: &str| status_json(admin, key);

    let (first, admin) = start();
    let mut first = KillOnDrop(first);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&admin)["current_deployment"]["active_replica_count"] != 4 {
        assert!(Instant::now() < deadline, "v1 never got 4 ready replicas");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = client(&admin, Some(key), &["promote", "v2"]);
    assert_eq!(code, 0, "{err}");
    // Wait for the second step (50%) and kill in the stabilization after it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = status(&admin);
        if v["in_progress_promotion"]["percent_traffic_to_new_version"] == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the promotion never reached 50%: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let old_replicas = children_of(first.0.id());
    assert!(
        old_replicas.len() >= 4,
        "2 of v1 and 2 of v2 at 50% (plus any still draining)"
    );
    first.0.kill().unwrap(); // SIGKILL mid-rollout
    first.0.wait().unwrap();

    let (second, admin) = start();
    let mut second = KillOnDrop(second);
    // The dead process's replicas are gone (cleaned up, not left to be duplicated)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while old_replicas.iter().any(|p| running(*p)) {
        assert!(
            Instant::now() < deadline,
            "replicas of the killed switchyard are still running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // ...and the new one asks for exactly the restored step's replicas, no more.
    let v = status(&admin);
    assert_eq!(v["current_deployment"]["replicas"]["desired"], 2, "{v}");
    assert_eq!(v["candidate_deployment"]["replicas"]["desired"], 2, "{v}");
    assert!(children_of(second.0.id()).len() <= 4);
    let p = &v["in_progress_promotion"];
    assert_eq!(p["status"], "RAMPING_UP", "{v}");
    let percent = p["percent_traffic_to_new_version"].as_u64().unwrap();
    assert!(
        (50..100).contains(&percent),
        "resumed at {percent}%, not from the step it was at"
    );
    assert_eq!(v["candidate_deployment"]["id"], "v2");
    let (code, out, _) = client(&admin, Some(key), &["status", "--watch"]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = client(&admin, Some(key), &["events", "--json"]);
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == "promotion started")
            .count(),
        1,
        "restarted from 0: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("shifted 25%")),
        "events before the crash were kept: {reasons:?}"
    );
    let v = status(&admin);
    assert_eq!(v["current_deployment"]["id"], "v2");
    let _ = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status();
    let _ = second.0.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `serve --config` on ephemeral ports, keeping the config's data directory (the crash tests
/// restart on it). Returns the child, the proxy and the admin address.
fn serve_durable(config: &std::path::Path, key: &str) -> (Child, SocketAddr, String) {
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
        .env_remove("SWITCHYARD_EPHEMERAL")
        .env("SWITCHYARD_API_KEY", key)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (proxy, admin) = admin_addr_of(&mut child);
    (child, proxy, admin.to_string())
}

/// `switchyard status --json`, parsed.
fn status_json(admin: &str, key: &str) -> serde_json::Value {
    let (code, out, err) = client(admin, Some(key), &["status", "--json"]);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// One HTTP/1.1 request on a fresh connection; returns (served-by deployment, raw response).
fn raw_request(addr: SocketAddr, body: &str) -> Result<(String, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: demo\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("read: {e}"))?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out.lines().next().unwrap_or("").to_string());
    }
    let dep = out
        .lines()
        .find_map(|l| l.strip_prefix("x-switchyard-deployment: "))
        .unwrap_or("")
        .trim()
        .to_string();
    Ok((dep, out))
}

#[test]
fn the_demo_rolls_out_and_back_under_load_without_a_failed_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    let key = "demo-test-key-0123456789";
    let child = bin()
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env("SWITCHYARD_API_KEY", key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = KillOnDrop(child);
    let (proxy, admin) = admin_addr_of(&mut demo.0);
    let admin = admin.to_string();
    let status = |admin: &str| -> serde_json::Value {
        let (_, out, _) = client(admin, Some(key), &["status", "--json"]);
        serde_json::from_str(&out).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&admin)["current_deployment"]["active_replica_count"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the demo's v1 replicas never got ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let served = Arc::new(Mutex::new(
        std::collections::BTreeMap::<String, usize>::new(),
    ));
    let streams = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (stop, failures, served, streams) = (
                stop.clone(),
                failures.clone(),
                served.clone(),
                streams.clone(),
            );
            std::thread::spawn(move || {
                let streaming = i % 2 == 0;
                let body = if streaming {
                    r#"{"stream": true, "max_tokens": 20}"#
                } else {
                    r#"{"max_tokens": 4}"#
                };
                while !stop.load(Ordering::Relaxed) {
                    match raw_request(proxy, body) {
                        Ok((dep, out)) => {
                            let complete = if streaming {
                                out.contains("data: [DONE]") && out.ends_with("0\r\n\r\n")
                            } else {
                                out.contains("chat.completion")
                            };
                            if !complete {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("incomplete answer from {dep}"));
                            } else if streaming {
                                streams.fetch_add(1, Ordering::Relaxed);
                            }
                            *served.lock().unwrap().entry(dep).or_default() += 1;
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(1));

    let (code, out, err) = client(&admin, Some(key), &["promote", "v2", "--watch"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("SUCCEEDED"), "{out}");

    let (code, _, err) = client(&admin, Some(key), &["promote", "v1"]);
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&admin)["in_progress_promotion"]["percent_traffic_to_new_version"]
        .as_u64()
        .unwrap_or(0)
        == 0
    {
        assert!(
            Instant::now() < deadline,
            "the promotion back to v1 never moved traffic"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, err) = client(&admin, Some(key), &["cancel"]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = client(&admin, Some(key), &["status", "--watch"]);
    assert_eq!(code, 3, "{out}");
    // Streams started before the cancel finished take under a second; then only v2 serves.
    std::thread::sleep(Duration::from_millis(1500));
    served.lock().unwrap().clear();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let served = served.lock().unwrap().clone();
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        vec!["v2"],
        "after the cancel: {served:?}"
    );
    assert!(streams.load(Ordering::Relaxed) >= 10);

    let replicas = children_of(demo.0.id());
    assert!(Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status()
        .unwrap()
        .success());
    let code = demo.0.wait().unwrap().code();
    assert_eq!(code, Some(0), "Ctrl-C stops the demo cleanly");
    let deadline = Instant::now() + Duration::from_secs(5);
    while replicas.iter().any(|p| running(*p)) {
        assert!(
            Instant::now() < deadline,
            "replica processes outlived the demo"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn analysis_state_survives_a_kill_9_mid_promotion() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let key = "analysis-resume-key-0123456789";
    let dir = std::env::temp_dir().join(format!("switchyard-analysis-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("analysis.toml");
    let replica = |v: &str, extra: &[&str]| {
        replica_command_toml(v, &[&["--latency-ms", "5"], extra].concat())
    };
    // v2 fails half its requests; analysis fails it after 3 bad intervals of 2 s.
    std::fs::write(
        &config,
        format!(
            r#"
[server]
data_dir = "{data}"
[[models]]
id = "m"
hosts = ["demo"]
[[models.deployments]]
id = "v1"
{}
[[models.deployments]]
id = "v2"
{}
[[models.environments]]
name = "production"
current = "v1"
replicas = 2
[models.environments.promotion_settings]
rolling_deploy = true
[models.environments.promotion_settings.rolling_deploy_config]
max_surge_percent = 50
[models.environments.promotion_settings.analysis]
enabled = true
interval_seconds = 2
min_requests = 5
failure_limit = 3
max_error_rate_percent = 5
max_p99_latency_ratio = false
max_p99_ttft_ratio = false
max_p99_itl_ratio = false
"#,
            replica("v1", &[]),
            replica("v2", &["--error-rate", "0.5"]),
            data = dir.join("data").display()
        ),
    )
    .unwrap();
    let start = || serve_durable(&config, key);
    let status = |admin: &str| status_json(admin, key);
    // Steady traffic to whichever proxy is current.
    let target = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (target, stop) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let addr = *target.lock().unwrap();
                match addr {
                    Some(a) => {
                        let _ = raw_request(a, r#"{"max_tokens": 1}"#);
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        })
    };

    let (first, proxy, admin) = start();
    let mut first = KillOnDrop(first);
    *target.lock().unwrap() = Some(proxy);
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&admin)["current_deployment"]["active_replica_count"] != 2 {
        assert!(Instant::now() < deadline, "v1 never got 2 ready replicas");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, err) = client(&admin, Some(key), &["promote", "v2"]);
    assert_eq!(code, 0, "{err}");
    // Kill right after the first failing verdict.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let v = status(&admin);
        let a = &v["in_progress_promotion"]["analysis"];
        if a["consecutive_failures"].as_u64().unwrap_or(0) >= 1 {
            break a.clone();
        }
        assert!(Instant::now() < deadline, "no failing verdict: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    first.0.kill().unwrap(); // SIGKILL mid-promotion
    first.0.wait().unwrap();
    *target.lock().unwrap() = None;

    let (second, proxy, admin) = start();
    let mut second = KillOnDrop(second);
    let v = status(&admin);
    let a = &v["in_progress_promotion"]["analysis"];
    assert_eq!(v["in_progress_promotion"]["status"], "RAMPING_UP", "{v}");
    assert!(
        a["consecutive_failures"].as_u64() >= before["consecutive_failures"].as_u64(),
        "the failure count was reset: before {before}, after {a}"
    );
    assert_eq!(a["last_verdict"]["result"], "FAIL", "{a}");
    assert_eq!(a["last_verdict"], before["last_verdict"], "{a}");
    let (_, out, _) = client(&admin, Some(key), &["status"]);
    assert!(out.contains("analysis: FAIL"), "{out}");

    // With traffic again, the remaining failures end it: FAILED, back on v1.
    *target.lock().unwrap() = Some(proxy);
    let deadline = Instant::now() + Duration::from_secs(40);
    let v = loop {
        let v = status(&admin);
        if v["in_progress_promotion"]["status"] == "FAILED" {
            break v;
        }
        assert!(Instant::now() < deadline, "never failed: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(v["current_deployment"]["id"], "v1", "{v}");
    let msg = v["in_progress_promotion"]["error_message"]
        .as_str()
        .unwrap();
    assert!(
        msg.starts_with("analysis failed 3 intervals in a row: error rate"),
        "{msg}"
    );
    stop.store(true, Ordering::Relaxed);
    let _ = load.join();
    let _ = Command::new("kill")
        .args(["-TERM", &second.0.id().to_string()])
        .status();
    let _ = second.0.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
