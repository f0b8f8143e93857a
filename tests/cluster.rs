//! Several switchyard instances on one etcd (`--store etcd://...`): real etcd members and real
//! switchyard and replica processes on loopback ports, client load through every instance.
//!
//! Without an `etcd` binary these tests say so and pass, except under `CI=true`, where they
//! fail (`.ci/run` installs Debian's etcd-server).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{admin_addr_of, bin, KillOnDrop};

const KEY: &str = "cluster-test-key-0123456789";
const ENV: &str = "/v1/models/m/environments/production";

// ---------------------------------------------------------------------------------------------
// etcd.

fn etcd_binary() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("etcd"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "no etcd binary on PATH; CI must install it (apt-get install etcd-server)"
        );
        eprintln!("skipping: no etcd binary on PATH (apt-get install etcd-server)");
    }
    found
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<KillOnDrop>,
}

/// A real etcd cluster of `n` members on loopback ports.
struct Etcd {
    binary: PathBuf,
    members: Vec<Member>,
    token: String,
    root: PathBuf,
    /// Serve clients over TLS with this certificate and key.
    tls: Option<(PathBuf, PathBuf)>,
}

impl Etcd {
    fn start(n: usize) -> Option<Etcd> {
        Etcd::start_with(n, None)
    }

    fn start_with(n: usize, tls: Option<(PathBuf, PathBuf)>) -> Option<Etcd> {
        let binary = etcd_binary()?;
        let root = std::env::temp_dir().join(format!(
            "switchyard-etcd-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let members = (0..n)
            .map(|i| Member {
                name: format!("e{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.join(format!("e{i}")),
                child: None,
            })
            .collect();
        let mut etcd = Etcd {
            binary,
            members,
            token: format!("t{:x}", rand::random::<u32>()),
            root,
            tls,
        };
        for i in 0..n {
            etcd.spawn(i);
        }
        for i in 0..n {
            etcd.wait_healthy(i);
        }
        Some(etcd)
    }

    fn spawn(&mut self, i: usize) {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut cmd = std::process::Command::new(&self.binary);
        if let Some((cert, key)) = &self.tls {
            cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key);
        }
        let child = cmd
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("{scheme}://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &cluster.join(","),
                "--initial-cluster-token",
                &self.token,
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(KillOnDrop(child));
    }

    fn wait_healthy(&self, i: usize) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.members[i].client)
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        if self.tls.is_some() {
            // No HTTPS client here: the port answering is enough (switchyard retries at start).
            wait_for("etcd's TLS port", Duration::from_secs(30), || {
                TcpStream::connect(addr).is_ok()
            });
            return;
        }
        loop {
            if let Ok((200, _, body)) = request(addr, "GET", "/health", None, "") {
                if body.contains("true") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd member {i} is not healthy");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcd://127.0.0.1:P1,127.0.0.1:P2,...`
    fn store(&self) -> String {
        let eps: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect();
        format!("etcd://{}", eps.join(","))
    }

    fn stop(&mut self, i: usize) {
        self.members[i].child = None; // killed on drop
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            m.child = None;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP.

/// One request on a fresh connection: (status, lower-cased head, body).
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> Result<(u16, String, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let auth = key.map_or(String::new(), |k| format!("authorization: Api-Key {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: m\r\n{auth}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no head")?;
    let status = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let lower = head.to_ascii_lowercase();
    let body = if lower.contains("transfer-encoding: chunked") {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).map_err(|e| e.to_string())?;
            if n == 0 || tail.len() < n {
                break;
            }
            joined.push_str(&tail[..n]);
            rest = &tail[(n + 2).min(tail.len())..];
        }
        joined
    } else {
        body.to_owned()
    };
    Ok((status, lower, body))
}

fn get_json(admin: SocketAddr, path: &str) -> serde_json::Value {
    let (status, _, body) = request(admin, "GET", path, Some(KEY), "").unwrap();
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn post(admin: SocketAddr, path: &str, body: &str) -> (u16, String) {
    match request(admin, "POST", path, Some(KEY), body) {
        Ok((s, _, b)) => (s, b),
        Err(e) => (0, e),
    }
}

/// (status, percent) of the environment's promotion as `admin` reports it.
fn promotion(admin: SocketAddr) -> (String, u64, Option<String>) {
    let v = get_json(admin, ENV);
    let p = &v["in_progress_promotion"];
    let current = v["current_deployment"]["id"].as_str().map(str::to_owned);
    (
        p["status"].as_str().unwrap_or("NONE").to_owned(),
        p["percent_traffic_to_new_version"].as_u64().unwrap_or(0),
        current,
    )
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Keep-alive load through one instance: counts answers by deployment, and failures.
#[derive(Default)]
struct Tally {
    by_deployment: BTreeMap<String, u64>,
    failures: Vec<String>,
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    limited: bool,
}

impl Load {
    /// `conns` connections sending until stopped, or `limit` requests in all.
    fn start(proxy: SocketAddr, conns: usize, limit: Option<u64>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..conns)
            .map(|_| {
                let (stop, tally, sent) = (stop.clone(), tally.clone(), sent.clone());
                std::thread::spawn(move || {
                    let mut conn: Option<std::io::BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(l) = limit {
                            if sent.fetch_add(1, Ordering::Relaxed) >= l {
                                break;
                            }
                        }
                        let r = one_request(&mut conn, proxy);
                        let mut t = tally.lock().unwrap();
                        match r {
                            Ok(dep) => *t.by_deployment.entry(dep).or_default() += 1,
                            Err(e) => {
                                conn = None;
                                t.failures.push(e);
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
            limited: limit.is_some(),
        }
    }

    /// Stops an open-ended load; a limited one runs to its count first.
    fn finish(self) -> Tally {
        if !self.limited {
            self.stop.store(true, Ordering::Relaxed);
        }
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// One completion on a kept-alive connection; answers the deployment that served it.
fn one_request(
    conn: &mut Option<std::io::BufReader<TcpStream>>,
    proxy: SocketAddr,
) -> Result<String, String> {
    use std::io::BufRead;
    if conn.is_none() {
        let s = TcpStream::connect(proxy).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        *conn = Some(std::io::BufReader::new(s));
    }
    let c = conn.as_mut().ok_or("no connection")?;
    let body = r#"{"prompt":"hi","max_tokens":1,"stream":false}"#;
    let req = format!(
        "POST /v1/completions HTTP/1.1\r\nhost: m\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    c.get_mut()
        .write_all(req.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut status = String::new();
    c.read_line(&mut status).map_err(|e| format!("read: {e}"))?;
    let mut len = 0usize;
    let mut dep = String::new();
    loop {
        let mut line = String::new();
        c.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().map_err(|_| "bad length".to_string())?;
        } else if let Some(v) = lower.strip_prefix("x-switchyard-deployment:") {
            dep = v.trim().to_owned();
        } else if lower.starts_with("transfer-encoding:") {
            return Err(format!("unexpected chunked answer: {status}"));
        }
    }
    let mut buf = vec![0; len];
    c.read_exact(&mut buf).map_err(|e| format!("body: {e}"))?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("{} from {dep}", status.trim()));
    }
    Ok(dep)
}

// ---------------------------------------------------------------------------------------------
// Replicas and instances.

/// A built-in replica reporting `version` with `extra` flags (and `env`), once it answers
/// (a registering one is not waited for).
fn spawn_replica(version: &str, extra: &[&str], env: &[(&str, &str)]) -> (KillOnDrop, SocketAddr) {
    let port = free_port();
    let child = bin()
        .args(["replica", "--port", &port.to_string(), "--version", version])
        .args(["--latency-ms", "0", "--startup-delay-ms", "0"])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for("a replica", Duration::from_secs(10), || {
        TcpStream::connect(addr).is_ok()
    });
    (KillOnDrop(child), addr)
}

fn replica(version: &str) -> (KillOnDrop, SocketAddr) {
    spawn_replica(version, &[], &[])
}

fn addrs(r: &[(KillOnDrop, SocketAddr)]) -> Vec<SocketAddr> {
    r.iter().map(|x| x.1).collect()
}

/// A config with deployments v1 and v2 of `n` static endpoints each (current v1).
fn config(
    dir: &std::path::Path,
    v1: &[SocketAddr],
    v2: &[SocketAddr],
    surge: u32,
    stabilization: u32,
) -> PathBuf {
    let list = |a: &[SocketAddr]| {
        a.iter()
            .map(|x| format!("\"{x}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let text = format!(
        r#"
[upstream]
static_probe_interval_seconds = 0.5

[[models]]
id = "m"

[[models.deployments]]
id = "v1"
replicas = [{}]

[[models.deployments]]
id = "v2"
replicas = [{}]

[[models.environments]]
name = "production"
current = "v1"

[models.environments.promotion_settings]
rolling_deploy = true

[models.environments.promotion_settings.rolling_deploy_config]
max_surge_percent = {surge}
max_unavailable_percent = 0
stabilization_time_seconds = {stabilization}
"#,
        list(v1),
        list(v2),
    );
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("switchyard.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Instance {
    name: String,
    child: KillOnDrop,
    proxy: SocketAddr,
    admin: SocketAddr,
}

fn instance(name: &str, config: &std::path::Path, store: &str, lease: u32) -> Instance {
    let mut child: Child = bin()
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", store, "--instance-name", name])
        .args(["--leader-lease-seconds", &lease.to_string()])
        .args(["--shutdown-grace-seconds", "1"])
        .env("SWITCHYARD_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (proxy, admin) = admin_addr_of(&mut child);
    Instance {
        name: name.to_owned(),
        child: KillOnDrop(child),
        proxy,
        admin,
    }
}

/// Instance "a" on `store`, once it leads (started first, it takes the leader key).
fn first_leader(config: &std::path::Path, store: &str, lease: u32) -> Instance {
    let a = instance("a", config, store, lease);
    wait_for("a to lead", Duration::from_secs(20), || {
        leader_of(a.admin).as_deref() == Some("a")
    });
    a
}

fn leader_of(admin: SocketAddr) -> Option<String> {
    request(admin, "GET", "/v1/cluster", Some(KEY), "")
        .ok()
        .filter(|(s, _, _)| *s == 200)
        .and_then(|(_, _, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["leader"].as_str().map(str::to_owned))
}

fn temp_dir(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "switchyard-cluster-{tag}-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// The percents the event log shifted traffic to, in order; a step run twice repeats one.
fn shifts(admin: SocketAddr) -> Vec<u64> {
    let v = get_json(admin, &format!("{ENV}/events"));
    let mut out: Vec<u64> = Vec::new();
    let mut last = 0;
    for e in v["events"].as_array().unwrap() {
        let p = e["percent_traffic_to_new_version"].as_u64().unwrap();
        if p != last {
            out.push(p);
            last = p;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The suites.

/// Three instances on a 3-member etcd under load through all three: a promotion started on a
/// follower survives a kill -9 of the leader at 50%: another instance leads within the lease
/// TTL + 2 s, the promotion continues from its step to SUCCEEDED, no request through the
/// surviving instances fails, and no step is in the event log twice.
#[test]
fn a_killed_leader_is_replaced_and_the_promotion_finishes() {
    let Some(etcd) = Etcd::start(3) else { return };
    let dir = temp_dir("failover");
    let v1: Vec<_> = (0..4).map(|_| replica("v1")).collect();
    let v2: Vec<_> = (0..4).map(|_| replica("v2")).collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 25, 2);
    let lease = 4;
    let mut a = first_leader(&cfg, &etcd.store(), lease);
    let b = instance("b", &cfg, &etcd.store(), lease);
    let c = instance("c", &cfg, &etcd.store(), lease);
    let cluster = get_json(b.admin, "/v1/cluster");
    assert_eq!(cluster["store"], "etcd");
    assert_eq!(cluster["leader"], "a");

    let loads: Vec<Load> = [&a, &b, &c]
        .iter()
        .map(|i| Load::start(i.proxy, 3, None))
        .collect();
    let (status, body) = post(
        b.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 200, "promote through the follower: {body}");
    wait_for("the promotion at 50%", Duration::from_secs(60), || {
        promotion(c.admin).1 >= 50
    });
    let at_kill = promotion(b.admin);
    assert!(at_kill.0 != "SUCCEEDED", "killed too late: {at_kill:?}");
    // The killed instance's own clients are not counted: they lose their server.
    let mut loads = loads.into_iter();
    let a_load = loads.next().unwrap();
    a.child.0.kill().unwrap();
    let killed = Instant::now();
    let _ = a_load.finish();
    let _ = a.child.0.wait();
    let mut new_leader = None;
    wait_for(
        "another instance to lead",
        Duration::from_secs(lease as u64 + 10),
        || {
            new_leader = leader_of(b.admin).filter(|l| l != "a");
            new_leader.is_some()
        },
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(lease as u64 + 2),
        "{new_leader:?} led {took:?} after the kill; the lease is {lease} s"
    );
    wait_for("SUCCEEDED", Duration::from_secs(90), || {
        promotion(b.admin).0 == "SUCCEEDED" && promotion(c.admin).0 == "SUCCEEDED"
    });
    // Requests after the end all go to v2.
    std::thread::sleep(Duration::from_millis(300));
    let tallies: Vec<Tally> = loads.map(Load::finish).collect();
    for (name, t) in ["b", "c"].iter().zip(&tallies) {
        assert!(
            t.failures.is_empty(),
            "{} failed requests through {name}: {:?}",
            t.failures.len(),
            &t.failures[..t.failures.len().min(5)]
        );
        assert!(
            t.by_deployment.get("v2").copied().unwrap_or(0) > 0,
            "{name}: {:?}",
            t.by_deployment
        );
    }
    let after = Load::start(c.proxy, 1, Some(50)).finish();
    assert_eq!(
        after.by_deployment.get("v2"),
        Some(&50),
        "{:?}",
        after.by_deployment
    );
    for i in [&b, &c] {
        let s = shifts(i.admin);
        let mut sorted = s.clone();
        sorted.dedup();
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "{}: traffic shifts {s:?} repeat or go back",
            i.name
        );
        assert_eq!(s.last(), Some(&100), "{}: {s:?}", i.name);
    }
    let cluster = get_json(c.admin, "/v1/cluster");
    eprintln!(
        "leader after the kill: {new_leader:?} in {took:?}; apply lag on c: {}",
        cluster["apply_lag"]
    );
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Stopping one etcd member of three changes nothing; stopping all three freezes the step
/// (routing keeps the last split, writes answer 503); restarting them lets it finish.
#[test]
fn etcd_outages_hold_the_step_and_keep_serving() {
    let Some(mut etcd) = Etcd::start(3) else {
        return;
    };
    let dir = temp_dir("outage");
    let v1: Vec<_> = (0..4).map(|_| replica("v1")).collect();
    let v2: Vec<_> = (0..4).map(|_| replica("v2")).collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 25, 3);
    let a = first_leader(&cfg, &etcd.store(), 3);
    let b = instance("b", &cfg, &etcd.store(), 3);
    let loads = [Load::start(a.proxy, 2, None), Load::start(b.proxy, 2, None)];
    let (status, body) = post(
        a.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the first step", Duration::from_secs(30), || {
        promotion(b.admin).1 >= 25
    });
    // One member down: the promotion keeps moving.
    etcd.stop(0);
    let before = promotion(b.admin).1;
    wait_for(
        "a step with one etcd member down",
        Duration::from_secs(30),
        || promotion(b.admin).1 > before,
    );
    assert!(
        promotion(b.admin).0 == "RAMPING_UP",
        "{:?}",
        promotion(b.admin)
    );
    // All down: the step holds and writes fail, but traffic flows.
    etcd.stop(1);
    etcd.stop(2);
    std::thread::sleep(Duration::from_millis(500));
    let held = (promotion(a.admin), promotion(b.admin));
    std::thread::sleep(Duration::from_secs(8)); // more than two stabilization times
    assert_eq!(
        (promotion(a.admin), promotion(b.admin)),
        held,
        "a step moved with etcd down"
    );
    for i in [&a, &b] {
        let (status, body) = post(i.admin, &format!("{ENV}/pause_promotion"), "{}");
        assert_eq!(status, 503, "{}: {body}", i.name);
    }
    let during = Load::start(b.proxy, 2, Some(400)).finish();
    assert!(
        during.failures.is_empty(),
        "{:?}",
        &during.failures[..during.failures.len().min(5)]
    );
    assert_eq!(during.by_deployment.values().sum::<u64>(), 400);
    assert_eq!(
        during.by_deployment.len(),
        2,
        "the split is kept: {:?}",
        during.by_deployment
    );
    // Back: the promotion finishes.
    for i in 0..3 {
        etcd.spawn(i);
    }
    wait_for(
        "SUCCEEDED after etcd returned",
        Duration::from_secs(90),
        || promotion(a.admin).0 == "SUCCEEDED" && promotion(b.admin).0 == "SUCCEEDED",
    );
    for (l, name) in loads.into_iter().zip(["a", "b"]) {
        let t = l.finish();
        assert!(
            t.failures.is_empty(),
            "{} failed through {name}: {:?}",
            t.failures.len(),
            &t.failures[..t.failures.len().min(5)]
        );
    }
    let s = shifts(b.admin);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "shifts {s:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Control actions sent to a follower take effect as on the leader, and the leader's refusals
/// come back with their status and message.
#[test]
fn a_follower_relays_every_control_action() {
    let Some(etcd) = Etcd::start(1) else { return };
    let dir = temp_dir("follower");
    let v1: Vec<_> = (0..2).map(|_| replica("v1")).collect();
    let v2: Vec<_> = (0..2).map(|_| replica("v2")).collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 50, 1);
    let a = first_leader(&cfg, &etcd.store(), 3);
    let f = instance("f", &cfg, &etcd.store(), 3);
    let act = |what: &str, body: &str| post(f.admin, &format!("{ENV}/{what}"), body);
    // `switchyard status` on the follower names the leader.
    wait_for("f to see both", Duration::from_secs(10), || {
        get_json(f.admin, "/v1/cluster")["instances"]
            .as_array()
            .is_some_and(|i| i.len() == 2)
    });
    let out = bin()
        .args(["status", "--admin-url", &format!("http://{}", f.admin)])
        .env("SWITCHYARD_API_KEY", KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("cluster: 2 instances on etcd, leader a (answered by f)"),
        "{text}"
    );

    let (status, body) = act("pause_promotion", "{}");
    assert_eq!(status, 409, "the leader's refusal comes back: {body}");
    assert!(body.contains("no promotion is in progress"), "{body}");
    let (status, body) = act("promote", r#"{"deployment_id":"nope"}"#);
    assert_eq!(status, 404, "{body}");

    assert_eq!(act("promote", r#"{"deployment_id":"v2"}"#).0, 200);
    let (status, body) = act("pause_promotion", "{}");
    assert_eq!(status, 200, "{body}");
    wait_for("PAUSED on the leader", Duration::from_secs(10), || {
        promotion(a.admin).0 == "PAUSED"
    });
    assert_eq!(
        promotion(f.admin).0,
        "PAUSED",
        "the follower answers after applying"
    );
    assert_eq!(act("resume_promotion", "{}").0, 200);
    wait_for("resumed", Duration::from_secs(10), || {
        promotion(a.admin).0 != "PAUSED"
    });
    let (status, body) = act("cancel_promotion", "{}");
    assert_eq!(status, 200, "{body}");
    wait_for("canceled", Duration::from_secs(30), || {
        promotion(a.admin).0 == "CANCELED"
    });
    assert_eq!(promotion(a.admin).2.as_deref(), Some("v1"));

    assert_eq!(act("promote", r#"{"deployment_id":"v2"}"#).0, 200);
    assert_eq!(act("force_roll_forward_promotion", "{}").0, 200);
    wait_for("rolled forward", Duration::from_secs(30), || {
        promotion(f.admin).0 == "SUCCEEDED"
    });
    // The other instance applies the same record moments later.
    wait_for("v2 current on the leader", Duration::from_secs(10), || {
        promotion(a.admin).2.as_deref() == Some("v2")
    });

    assert_eq!(act("promote", r#"{"deployment_id":"v1"}"#).0, 200);
    assert_eq!(act("force_cancel_promotion", "{}").0, 200);
    wait_for("force-canceled", Duration::from_secs(30), || {
        let s = promotion(a.admin).0;
        s == "CANCELED" || s == "FAILED"
    });
    wait_for(
        "v2 still current on the follower",
        Duration::from_secs(10),
        || {
            let (status, _, current) = promotion(f.admin);
            (status == "CANCELED" || status == "FAILED") && current.as_deref() == Some("v2")
        },
    );

    // Settings changed through the follower reach the leader.
    let (status, _, body) = request(
        f.admin,
        "PATCH",
        ENV,
        Some(KEY),
        r#"{"promotion_settings":{"rolling_deploy_config":{"stabilization_time_seconds":7}}}"#,
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v = get_json(a.admin, ENV);
    assert_eq!(
        v["promotion_settings"]["rolling_deploy_config"]["stabilization_time_seconds"], 7,
        "{v}"
    );
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With the shared state holding a 70/30 split (a promotion resting at its first 30% step),
/// each instance's measured split over 10,000 requests is within 1.5 points of it.
#[test]
fn every_instance_serves_the_same_split() {
    let Some(etcd) = Etcd::start(1) else { return };
    let dir = temp_dir("split");
    let v1: Vec<_> = (0..10).map(|_| replica("v1")).collect();
    let v2: Vec<_> = (0..10).map(|_| replica("v2")).collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 30, 3600);
    let a = first_leader(&cfg, &etcd.store(), 3);
    let others = [
        instance("b", &cfg, &etcd.store(), 3),
        instance("c", &cfg, &etcd.store(), 3),
    ];
    assert_eq!(
        post(
            a.admin,
            &format!("{ENV}/promote"),
            r#"{"deployment_id":"v2"}"#
        )
        .0,
        200
    );
    for i in [&a, &others[0], &others[1]] {
        wait_for("30% everywhere", Duration::from_secs(30), || {
            promotion(i.admin).1 == 30
        });
    }
    // Ready replicas are probed by each instance: let every one see all three candidates.
    std::thread::sleep(Duration::from_secs(1));
    let loads: Vec<Load> = [&a, &others[0], &others[1]]
        .iter()
        .map(|i| Load::start(i.proxy, 4, Some(10_000)))
        .collect();
    for (l, name) in loads.into_iter().zip(["a", "b", "c"]) {
        let t = l.finish();
        assert!(
            t.failures.is_empty(),
            "{name}: {:?}",
            &t.failures[..t.failures.len().min(5)]
        );
        let total: u64 = t.by_deployment.values().sum();
        assert_eq!(total, 10_000);
        let v2 = t.by_deployment.get("v2").copied().unwrap_or(0) as f64 * 100.0 / total as f64;
        eprintln!("{name}: {:.2}% to v2 over {total} requests", v2);
        assert!(
            (v2 - 30.0).abs() <= 1.5,
            "{name}: {v2:.2}% to v2, not 30 ± 1.5"
        );
    }
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A built-in replica that registers itself with `admin` for its version (TTL 2 s).
fn registered_replica(version: &str, admin: SocketAddr) -> (KillOnDrop, SocketAddr) {
    let url = format!("http://{admin}");
    spawn_replica(
        version,
        &[
            "--register",
            &url,
            "--deployment",
            version,
            "--model",
            "m",
            "--register-ttl",
            "2",
        ],
        &[("SWITCHYARD_API_KEY", KEY)],
    )
}

fn registered(admin: SocketAddr, deployment: &str) -> Vec<String> {
    let v = get_json(
        admin,
        &format!("/v1/models/m/deployments/{deployment}/endpoints"),
    );
    let mut out: Vec<String> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

/// Replicas that register themselves through one instance join the deployment on every
/// instance, are promoted to like listed ones, and leave every instance when their
/// registration lapses (kill -9) or is withdrawn (SIGTERM).
#[test]
fn registered_replicas_join_and_leave_every_instance() {
    let Some(etcd) = Etcd::start(1) else { return };
    let dir = temp_dir("register");
    let v1: Vec<_> = (0..2).map(|_| replica("v1")).collect();
    let cfg = config(&dir, &addrs(&v1), &[], 50, 0);
    let a = first_leader(&cfg, &etcd.store(), 3);
    let b = instance("b", &cfg, &etcd.store(), 3);
    // Too few endpoints yet: the promotion is refused with the count.
    let (status, body) = post(
        a.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("has 0 endpoints"), "{body}");

    let mut v2: Vec<_> = (0..2).map(|_| registered_replica("v2", b.admin)).collect();
    let mut want: Vec<String> = v2.iter().map(|r| r.1.to_string()).collect();
    want.sort();
    for i in [&a, &b] {
        wait_for(
            "both registrations everywhere",
            Duration::from_secs(15),
            || registered(i.admin, "v2") == want,
        );
    }
    let (status, body) = post(
        a.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    wait_for("SUCCEEDED", Duration::from_secs(30), || {
        promotion(b.admin).0 == "SUCCEEDED"
    });
    // kill -9 (requests in flight to it would fail: none are sent meanwhile): no
    // deregistration, the TTL (2 s) removes it everywhere.
    let gone = v2.remove(0);
    drop(gone);
    let left = vec![v2[0].1.to_string()];
    for i in [&a, &b] {
        wait_for(
            "the lapsed registration to leave",
            Duration::from_secs(10),
            || registered(i.admin, "v2") == left,
        );
    }
    for i in [&a, &b] {
        let t = Load::start(i.proxy, 2, Some(200)).finish();
        assert!(
            t.failures.is_empty(),
            "{}: {:?}",
            i.name,
            &t.failures[..t.failures.len().min(5)]
        );
        assert_eq!(t.by_deployment.get("v2"), Some(&200), "{}", i.name);
    }
    // SIGTERM: the replica withdraws its registration before exiting.
    let last = v2.remove(0);
    let pid = last.0 .0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t = Instant::now();
    wait_for(
        "the withdrawn registration to leave",
        Duration::from_secs(10),
        || registered(a.admin, "v2").is_empty(),
    );
    eprintln!("withdrawn registration left in {:?}", t.elapsed());
    drop(last);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Alone (no etcd), registrations live in the instance with their expiry.
#[test]
fn registrations_expire_on_the_embedded_store_too() {
    let dir = temp_dir("register-alone");
    let v1: Vec<_> = (0..1).map(|_| replica("v1")).collect();
    let cfg = config(&dir, &[v1[0].1], &[], 50, 0);
    let mut child: Child = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("SWITCHYARD_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, admin) = admin_addr_of(&mut child);
    let _child = KillOnDrop(child);
    let path = "/v1/models/m/deployments/v2/endpoints";
    for (body, field) in [
        (r#"{"address":"nope"}"#, "address"),
        (r#"{"address":"127.0.0.1:0"}"#, "address"),
        (
            r#"{"address":"127.0.0.1:9","ttl_seconds":0}"#,
            "ttl_seconds",
        ),
    ] {
        let (status, answer) = post(admin, path, body);
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer.contains(field), "{answer}");
    }
    let (status, answer) = post(
        admin,
        "/v1/models/m/deployments/nope/endpoints",
        r#"{"address":"127.0.0.1:9"}"#,
    );
    assert_eq!(status, 404, "{answer}");
    let v2 = replica("v2");
    let (status, answer) = post(
        admin,
        path,
        &format!(r#"{{"address":"{}","ttl_seconds":1}}"#, v2.1),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(registered(admin, "v2"), vec![v2.1.to_string()]);
    let v = get_json(admin, path);
    let left = v["endpoints"][0]["expires_in_seconds"].as_f64().unwrap();
    assert!(left > 0.0 && left <= 1.0, "{v}");
    wait_for("the registration to expire", Duration::from_secs(5), || {
        registered(admin, "v2").is_empty()
    });
    // Deregistering what is not registered names it.
    let (status, _, answer) =
        request(admin, "DELETE", &format!("{path}/{}", v2.1), Some(KEY), "").unwrap();
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains(&v2.1.to_string()), "{answer}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The leader (only) tells the orchestrator each new replica target, and a scale-down waits
/// until no instance has a request in flight to the endpoints leaving: a stream through a
/// follower to a v1 endpoint holds the last `v1 0` until it ends.
#[test]
fn scale_commands_run_on_the_leader_after_every_instance_drained() {
    let Some(etcd) = Etcd::start(1) else { return };
    let dir = temp_dir("scale");
    let v1: Vec<_> = (0..2)
        .map(|_| spawn_replica("v1", &["--tokens-per-second", "5"], &[]))
        .collect();
    let v2: Vec<_> = (0..2)
        .map(|_| spawn_replica("v2", &["--tokens-per-second", "50"], &[]))
        .collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 50, 0);
    let log = dir.join("scale.log");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "\nreplicas = [",
        &format!(
            "\nscale_command = [\"sh\", \"-c\", \"echo $(date +%s%N) {{deployment}} {{replicas}} $PPID >> {}\"]\nreplicas = [",
            log.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let a = first_leader(&cfg, &etcd.store(), 3);
    let b = instance("b", &cfg, &etcd.store(), 3);
    let lines = || -> Vec<(u128, String, u32, u32)> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (
                    f[0].parse().unwrap(),
                    f[1].to_owned(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                )
            })
            .collect()
    };
    wait_for("the starting targets", Duration::from_secs(10), || {
        lines().len() >= 2
    });
    // A 3-second stream through the follower, to one of v1's endpoints.
    let stream = std::thread::spawn(move || {
        let body = r#"{"prompt":"hi","max_tokens":15,"stream":true}"#;
        let answer = request(b.proxy, "POST", "/v1/completions", None, body);
        (answer, now_ns(), b)
    });
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = post(
        a.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    wait_for("SUCCEEDED", Duration::from_secs(30), || {
        promotion(a.admin).0 == "SUCCEEDED"
    });
    let succeeded = now_ns();
    let (answer, ended, b) = stream.join().unwrap();
    let (status, _, text) = answer.unwrap();
    assert_eq!(status, 200);
    assert!(text.contains("[DONE]"), "the stream was cut: {text}");
    assert!(
        ended > succeeded + 500_000_000,
        "the stream should outlast the promotion"
    );
    wait_for("v1 scaled to 0", Duration::from_secs(15), || {
        lines().iter().any(|l| l.1 == "v1" && l.2 == 0)
    });
    let all = lines();
    eprintln!("{all:?}");
    let v1_zero = all.iter().find(|l| l.1 == "v1" && l.2 == 0).unwrap();
    assert!(
        v1_zero.0 + 50_000_000 >= ended,
        "v1 was scaled to 0 {} ms before the stream to it ended",
        (ended - v1_zero.0) / 1_000_000
    );
    let v2_targets: Vec<u32> = all.iter().filter(|l| l.1 == "v2").map(|l| l.2).collect();
    assert_eq!(v2_targets.last(), Some(&2), "{all:?}");
    let leader_pid = a.child.0.id();
    assert!(
        all.iter().all(|l| l.3 == leader_pid),
        "only the leader ({leader_pid}) runs scale commands: {all:?}"
    );
    drop(b);
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// etcd serving TLS: an instance given the CA follows it and leads; one without it does not
/// start, and says why.
#[test]
fn etcd_over_tls() {
    let dir = temp_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let (cert, key) = (dir.join("etcd.pem"), dir.join("etcd-key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let Some(etcd) = Etcd::start_with(1, Some((cert.clone(), key))) else {
        return;
    };
    let v1 = replica("v1");
    let cfg = config(&dir, &[v1.1], &[], 50, 0);
    let mut child: Child = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", &etcd.store(), "--instance-name", "tls"])
        .arg("--store-ca")
        .arg(&cert)
        .env("SWITCHYARD_API_KEY", KEY)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_, admin) = admin_addr_of(&mut child);
    let _child = KillOnDrop(child);
    wait_for("the TLS instance to lead", Duration::from_secs(20), || {
        leader_of(admin).as_deref() == Some("tls")
    });
    // Without the CA the handshake fails: no start, and the error names the store.
    let out = bin()
        .args(["serve", "--config"])
        .arg(&cfg)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--store", &etcd.store()])
        .env("SWITCHYARD_API_KEY", KEY)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store: cannot read etcd"), "{err}");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Canary analysis on the leader judges the traffic of every instance: with all the load on a
/// follower, a candidate answering 30% errors is still rolled back (judging its own traffic
/// alone, the leader would see no request and pause as inconclusive).
#[test]
fn analysis_judges_the_traffic_of_every_instance() {
    let Some(etcd) = Etcd::start(1) else { return };
    let dir = temp_dir("analysis");
    let v1: Vec<_> = (0..2).map(|_| replica("v1")).collect();
    let v2: Vec<_> = (0..2)
        .map(|_| spawn_replica("v2", &["--error-rate", "0.3"], &[]))
        .collect();
    let cfg = config(&dir, &addrs(&v1), &addrs(&v2), 50, 0);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(
        r#"
[models.environments.promotion_settings.analysis]
enabled = true
interval_seconds = 2
min_requests = 20
failure_limit = 1
max_inconclusive_intervals = 3
on_failure = "ROLLBACK"
max_error_rate_percent = 1.0
"#,
    );
    std::fs::write(&cfg, text).unwrap();
    let a = first_leader(&cfg, &etcd.store(), 3);
    let b = instance("b", &cfg, &etcd.store(), 3);
    let load = Load::start(b.proxy, 4, None);
    let (status, body) = post(
        a.admin,
        &format!("{ENV}/promote"),
        r#"{"deployment_id":"v2"}"#,
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the promotion to end", Duration::from_secs(40), || {
        let s = promotion(a.admin).0;
        s == "FAILED" || s == "PAUSED" || s == "SUCCEEDED"
    });
    let t = load.finish();
    // The follower learns the outcome through etcd, a moment after the leader decided it.
    wait_for(
        "the follower to see the promotion end",
        Duration::from_secs(10),
        || {
            let s = promotion(b.admin).0;
            s == "FAILED" || s == "PAUSED" || s == "SUCCEEDED"
        },
    );
    let v = get_json(b.admin, ENV);
    let p = &v["in_progress_promotion"];
    assert_eq!(p["status"], "FAILED", "{v}");
    let why = p["error_message"].as_str().unwrap_or("");
    assert!(why.contains("error rate"), "{why}");
    assert!(t.by_deployment.get("v2").copied().unwrap_or(0) > 0);
    assert_eq!(v["current_deployment"]["id"], "v1");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}

/// etcd with authentication on: an instance given the user and password follows it and leads;
/// one without them does not start, and says why.
#[test]
fn etcd_with_authentication() {
    use etcdv3client::pb;
    let Some(etcd) = Etcd::start(1) else { return };
    let endpoint = format!("http://127.0.0.1:{}", etcd.members[0].client);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcdv3client::Client::new(vec![endpoint.as_str()], None)
            .await
            .unwrap();
        // etcd refuses to turn authentication on unless root exists with the root role.
        let _ = c
            .auth
            .role_add(pb::AuthRoleAddRequest {
                name: "root".into(),
            })
            .await;
        c.auth
            .user_add(pb::AuthUserAddRequest {
                name: "root".into(),
                password: "secret-pw".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        c.auth
            .user_grant_role(pb::AuthUserGrantRoleRequest {
                user: "root".into(),
                role: "root".into(),
            })
            .await
            .unwrap();
        c.auth.auth_enable(pb::AuthEnableRequest {}).await.unwrap();
    });
    let dir = temp_dir("auth");
    let v1 = replica("v1");
    let cfg = config(&dir, &[v1.1], &[], 50, 0);
    let serve = |extra: &[&str]| {
        let mut c = bin();
        c.args(["serve", "--config"])
            .arg(&cfg)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--store", &etcd.store(), "--instance-name", "auth"])
            .args(extra)
            .env("SWITCHYARD_API_KEY", KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c
    };
    let mut child = serve(&["--store-user", "root"])
        .env("SWITCHYARD_STORE_PASSWORD", "secret-pw")
        .spawn()
        .unwrap();
    let (_, admin) = admin_addr_of(&mut child);
    let _child = KillOnDrop(child);
    wait_for(
        "the authenticated instance to lead",
        Duration::from_secs(20),
        || leader_of(admin).as_deref() == Some("auth"),
    );
    let out = serve(&[]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("store:"), "{err}");
    drop(etcd);
    let _ = std::fs::remove_dir_all(&dir);
}
