//! Heap allocations per proxied HTTP/1.1 request in steady state (issue 15).
//!
//! The proxy runs in this process under dhat's counting allocator; the replica (the built-in
//! `switchyard replica`) and the client (`switchyard loadtest --get`, keep-alive connections)
//! are child processes, so only the proxy's allocations are counted. After a warm-up (pools
//! filled, connections open), the allocations and bytes of REQUESTS requests are divided by
//! their number. Static probes are off; the control thread's own timers still run, so the
//! figure includes a little of that background work (reported separately as an idle rate).
//!
//!   cargo bench --bench allocations
//!   REQUESTS=50000 CONCURRENCY=16 cargo bench --bench allocations
//!   SITES=1 cargo bench --bench allocations   # also writes dhat-heap.json (every allocation
//!                                             # site with its backtrace, warm-up included)

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(18_999)
}

fn loadtest(exe: &str, url: &str, requests: u64, concurrency: u64) {
    let status = Command::new(exe)
        .args([
            "loadtest",
            url,
            "--get",
            "--requests",
            &requests.to_string(),
        ])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--warmup", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!("switchyard loadtest failed: {other:?}"),
    }
}

fn main() {
    let requests = env_u64("REQUESTS", 20_000);
    let concurrency = env_u64("CONCURRENCY", 8);
    let exe = env!("CARGO_BIN_EXE_switchyard");

    let port = free_port();
    let _replica = Child(
        Command::new(exe)
            .args(["replica", "--port", &port.to_string(), "--latency-ms", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the replica"),
    );
    let upstream: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(upstream).is_err() {
        assert!(Instant::now() < deadline, "the replica did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let sites = std::env::var_os("SITES").is_some();
    let _profiler = if sites {
        dhat::Profiler::new_heap()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let mut settings = switchyard::config::ServeFlags {
        upstreams: vec![format!("v1={upstream}")],
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ephemeral: true,
        api_key: Some("bench-allocations-key-0123".into()),
        ..Default::default()
    }
    .into_settings()
    .expect("settings");
    settings.upstream.static_probe_interval = None;
    let proxy = switchyard::server::start(settings).expect("start the proxy");
    let url = format!("http://{}/healthz", proxy.listen_addr);

    // Warm-up: connections, pools and every lazily built structure.
    loadtest(exe, &url, requests / 4, concurrency);

    let idle_for = Duration::from_secs(2);
    let before_idle = dhat::HeapStats::get();
    std::thread::sleep(idle_for);
    let before = dhat::HeapStats::get();
    let started = Instant::now();
    loadtest(exe, &url, requests, concurrency);
    let took = started.elapsed();
    let after = dhat::HeapStats::get();

    let idle_blocks_per_s =
        (before.total_blocks - before_idle.total_blocks) as f64 / idle_for.as_secs_f64();
    let blocks = (after.total_blocks - before.total_blocks) as f64;
    let bytes = (after.total_bytes - before.total_bytes) as f64;
    let background = idle_blocks_per_s * took.as_secs_f64();
    let n = requests as f64;
    println!(
        "allocations per proxied HTTP/1.1 request (GET, keep-alive, {concurrency} connections, {requests} requests in {:.1} s):",
        took.as_secs_f64()
    );
    println!(
        "  {:.2} allocations, {:.0} bytes per request (all the process allocated, / requests)",
        blocks / n,
        bytes / n
    );
    println!(
        "  {:.2} allocations per request without the idle background rate ({idle_blocks_per_s:.1}/s)",
        (blocks - background).max(0.0) / n
    );
    println!(
        "  live heap at the end: {} blocks, {} bytes",
        after.curr_blocks, after.curr_bytes
    );
    drop(proxy);
}
