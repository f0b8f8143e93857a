//! Live heap per configured model: what an idle proxy holds for a configuration of MODELS
//! models (one Host, one deployment with one replica, one environment each), counted by
//! dhat's allocator after the proxy has started and the dashboard's sampler has run twice.
//! It divides by MODELS, and says what one more model costs by also measuring a
//! configuration of one model in a second process.
//!
//!   cargo bench --bench config_heap
//!   MODELS=10000 cargo bench --bench config_heap
//!   SITES=1 cargo bench --bench config_heap   # also writes dhat-heap.json: every live
//!                                            # allocation site ("eb": bytes at the end)

use std::io::Write;
use std::process::Command;
use std::time::Duration;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn write_config(path: &std::path::Path, models: u64) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        f,
        "[server]\nworkers = 2\n[upstream]\nstatic_probe_interval_seconds = 0"
    )?;
    for m in 1..=models {
        writeln!(
            f,
            "[[models]]\nid = \"m{m}\"\nhosts = [\"m{m}.example\"]\n[[models.deployments]]\nid = \"v1\"\nreplicas = [\"127.0.0.1:9\"]\n[[models.environments]]\nname = \"production\"\ncurrent = \"v1\""
        )?;
    }
    f.flush()
}

/// In this process: starts the proxy on `models` models, waits, prints "blocks bytes".
fn measure(models: u64) {
    let dir = std::env::temp_dir().join(format!("switchyard-config-heap-{}", std::process::id()));
    if let Err(e) =
        std::fs::create_dir_all(&dir).and_then(|()| write_config(&dir.join("c.toml"), models))
    {
        panic!("cannot write the configuration in {}: {e}", dir.display());
    }
    let profiler = if std::env::var_os("SITES").is_some() {
        dhat::Profiler::new_heap()
    } else {
        dhat::Profiler::builder().testing().build()
    };
    let settings = switchyard::config::ServeFlags {
        config: Some(dir.join("c.toml")),
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        ephemeral: true,
        ..Default::default()
    }
    .into_settings()
    .expect("settings");
    let proxy = switchyard::server::start(settings).expect("start the proxy");
    // The sampler runs at once and every 5 s: two samples hold every pool's baseline and a
    // first window.
    std::thread::sleep(Duration::from_secs(6));
    let s = dhat::HeapStats::get();
    println!("{} {}", s.curr_blocks, s.curr_bytes);
    drop(profiler); // with SITES=1, writes dhat-heap.json while the proxy still runs
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Ok(n) = std::env::var("CONFIG_HEAP_CHILD") {
        measure(n.parse().unwrap_or(1));
        return;
    }
    let models = env_u64("MODELS", 2000).max(2);
    let exe = std::env::current_exe().expect("this bench's own path");
    let run = |n: u64| -> (f64, f64) {
        let mut cmd = Command::new(&exe);
        cmd.env("CONFIG_HEAP_CHILD", n.to_string());
        if n != models {
            cmd.env_remove("SITES"); // the sites of the large configuration only
        }
        let out = cmd.output().expect("run the measuring process");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<f64>().unwrap_or(f64::NAN));
        match (it.next(), it.next()) {
            (Some(b), Some(y)) if out.status.success() => (b, y),
            _ => panic!(
                "the measuring process for {n} models failed: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    let (b1, y1) = run(1);
    let (bn, yn) = run(models);
    let per = |x: f64, x1: f64| (x - x1) / (models - 1) as f64;
    println!("live heap of an idle proxy (2 workers, dashboard sampler run twice):");
    println!("  1 model:      {:>10.0} bytes in {:>8.0} blocks", y1, b1);
    println!(
        "  {models} models: {:>10.0} bytes in {:>8.0} blocks",
        yn, bn
    );
    println!(
        "  per model:    {:>10.0} bytes in {:>8.1} blocks (one Host, deployment, replica, environment)",
        per(yn, y1),
        per(bn, b1)
    );
}
