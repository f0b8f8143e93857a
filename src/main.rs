//! The `switchyard` command line. Everything it runs lives in the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchyard::config::ServeFlags;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "Traffic-splitting reverse proxy for model-inference replicas"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy and its admin listener.
    Serve(ServeArgs),
    /// Print the steps of a rolling deployment (pure arithmetic; contacts nothing).
    Plan(PlanArgs),
    /// Run the built-in model server (OpenAI-style completions, /predict, /healthz).
    Replica(ReplicaArgs),
}

#[derive(Args)]
struct ReplicaArgs {
    /// Port to listen on (127.0.0.1 unless --host is given).
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Version name reported in every response.
    #[arg(long, default_value = "v1")]
    version: String,
    /// Simulated cold start: /healthz answers 503 for this long.
    #[arg(long, default_value_t = 0)]
    startup_delay_ms: u64,
    /// Time to first token (or to the whole answer when not streaming).
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    #[arg(long, default_value_t = 50.0)]
    tokens_per_second: f64,
    /// Tokens generated when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    tokens: u32,
    /// Share of requests (0-1) answered with HTTP 500.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
}

#[derive(Args)]
struct PlanArgs {
    /// Replicas of the previous (current) deployment, 1-1000000.
    #[arg(long, allow_negative_numbers = true)]
    replicas: i64,
    /// Percent of the fleet added per step, 0-50 [default: 10, or 0 when
    /// --max-unavailable-percent is non-zero].
    #[arg(long, allow_negative_numbers = true)]
    max_surge_percent: Option<i64>,
    /// Percent of the fleet that may be unavailable per step, 0-50 [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    max_unavailable_percent: Option<i64>,
    /// Seconds to wait between steps, 0-3600 [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    stabilization_time_seconds: Option<i64>,
    /// Percent of extra replicas added to the previous deployment before traffic moves, 0-500
    /// [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    replica_overhead_percent: Option<i64>,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file (see config/switchyard.example.toml). Without it, flags describe one
    /// model and environment.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Proxy listener address [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    listen: Option<String>,
    /// Admin listener (/metrics, /livez, /readyz) [default: 127.0.0.1:9090].
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Data-plane worker threads; 0 = one per core [default: 0].
    #[arg(long, env = "SWITCHYARD_WORKERS")]
    workers: Option<usize>,
    /// Model id [default: default].
    #[arg(long, env = "SWITCHYARD_MODEL")]
    model: Option<String>,
    /// Environment name [default: production].
    #[arg(long, env = "SWITCHYARD_ENVIRONMENT")]
    environment: Option<String>,
    /// A deployment and its replicas: DEPLOYMENT=HOST:PORT[,HOST:PORT...]. Repeatable; in the
    /// environment variable, separate deployments with ';'.
    #[arg(long = "upstream", env = "SWITCHYARD_UPSTREAM", value_delimiter = ';')]
    upstreams: Vec<String>,
    /// The deployment that gets all traffic.
    #[arg(long, env = "SWITCHYARD_CURRENT")]
    current: Option<String>,
    /// A static split, DEPLOYMENT=N (relative weights), e.g. --weight v1=90 --weight v2=10.
    #[arg(long = "weight", env = "SWITCHYARD_WEIGHT", value_delimiter = ',')]
    weights: Vec<String>,
    /// PEM certificate chain: terminate TLS (ALPN h2 and http/1.1).
    #[arg(long, env = "SWITCHYARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Do not add x-switchyard-deployment to responses.
    #[arg(long, env = "SWITCHYARD_NO_DEPLOYMENT_HEADER")]
    no_deployment_header: bool,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<f64>,
    /// Validate the configuration (and TLS files), print a summary and exit without serving.
    #[arg(long)]
    check_config: bool,
    /// Management API key (at least 16 characters); without it one is generated and printed.
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl From<ServeArgs> for ServeFlags {
    fn from(a: ServeArgs) -> Self {
        ServeFlags {
            config: a.config,
            listen: a.listen,
            admin_listen: a.admin_listen,
            workers: a.workers,
            model: a.model,
            environment: a.environment,
            upstreams: a.upstreams,
            current: a.current,
            weights: a.weights,
            tls_cert: a.tls_cert,
            tls_key: a.tls_key,
            no_deployment_header: a.no_deployment_header,
            shutdown_grace_seconds: a.shutdown_grace_seconds,
            api_key: a.api_key,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let check = args.check_config;
            serve(args.into(), check)
        }
        Command::Plan(args) => plan(args),
        Command::Replica(args) => replica(args),
    }
}

fn replica(a: ReplicaArgs) -> ExitCode {
    if !(0.0..=1.0).contains(&a.error_rate) {
        eprintln!(
            "switchyard: --error-rate: {} is out of range 0..=1",
            a.error_rate
        );
        return ExitCode::from(2);
    }
    if !a.tokens_per_second.is_finite() || a.tokens_per_second < 0.0 {
        eprintln!(
            "switchyard: --tokens-per-second: {} must be a non-negative number",
            a.tokens_per_second
        );
        return ExitCode::from(2);
    }
    let opts = switchyard::replica::ReplicaOptions {
        listen: std::net::SocketAddr::new(a.host, a.port),
        version: a.version,
        startup_delay: std::time::Duration::from_millis(a.startup_delay_ms),
        latency: std::time::Duration::from_millis(a.latency_ms),
        tokens_per_second: a.tokens_per_second,
        default_tokens: a.tokens,
        error_rate: a.error_rate,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listen = opts.listen;
    match rt.block_on(switchyard::replica::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: replica cannot listen on {listen}: {e}");
            ExitCode::from(2)
        }
    }
}

fn plan(a: PlanArgs) -> ExitCode {
    use std::io::Write;
    use switchyard::rollout::plan::{Field, Plan, RollingConfig};
    let built = Field::Replicas.check(a.replicas).and_then(|replicas| {
        let config = RollingConfig::from_options(
            a.max_surge_percent,
            a.max_unavailable_percent,
            a.stabilization_time_seconds,
            a.replica_overhead_percent,
        )?;
        Plan::new(replicas, &config)
    });
    let plan = match built {
        Ok(p) => p,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    let text = if a.json {
        match serde_json::to_string(&plan) {
            Ok(json) => json + "\n",
            Err(e) => {
                eprintln!("switchyard: cannot encode the plan: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        plan.render_table()
    };
    // A closed pipe (`| head`) is not worth a panic.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn serve(flags: ServeFlags, check_only: bool) -> ExitCode {
    let settings = match flags.into_settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    if check_only {
        if let Some(files) = &settings.tls {
            if let Err(e) = switchyard::proxy::tls::server_config(files) {
                eprintln!("switchyard: {e}");
                return ExitCode::from(2);
            }
        }
        for m in &settings.models {
            for e in &m.environments {
                let traffic = match &e.traffic {
                    switchyard::config::Traffic::Weights(w) => w
                        .iter()
                        .map(|(d, w)| format!("{d}={:.2}%", f64::from(*w) / 1e4))
                        .collect::<Vec<_>>()
                        .join(" "),
                    switchyard::config::Traffic::Current {
                        deployment,
                        replicas,
                    } => {
                        let rolling = if e.promotion.rolling {
                            "rolling"
                        } else {
                            "all at once"
                        };
                        let scale = match &e.autoscaling {
                            Some(a) if a.enabled() => {
                                format!("autoscaling {}-{}", a.min_replica, a.max_replica)
                            }
                            _ => format!("{replicas} replica(s)"),
                        };
                        format!("current {deployment} ({scale}; promotions {rolling})")
                    }
                };
                println!("model {} environment {}: {traffic}", m.id, e.name);
            }
            for d in &m.deployments {
                match &d.provider {
                    switchyard::replicas::ProviderSpec::Static { endpoints } => {
                        println!(
                            "model {} deployment {}: {} static endpoint(s)",
                            m.id,
                            d.id,
                            endpoints.len()
                        )
                    }
                    switchyard::replicas::ProviderSpec::Process {
                        command,
                        health_path,
                    } => println!(
                        "model {} deployment {}: process {:?}, ready on {health_path}",
                        m.id,
                        d.id,
                        command.join(" ")
                    ),
                }
            }
        }
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    let key_configured = settings.api_key.is_some();
    let proxy = match switchyard::server::start(settings) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("switchyard: {e}");
            return ExitCode::from(2);
        }
    };
    eprintln!(
        "switchyard: proxy on http://{}  admin on http://{} (/metrics /livez /readyz, API under /v1)",
        proxy.listen_addr, proxy.admin_addr
    );
    if std::env::var_os("SWITCHYARD_API_KEY").is_none() && !key_configured {
        eprintln!(
            "switchyard: generated API key (set SWITCHYARD_API_KEY to choose one): {}",
            proxy.api_key
        );
    }
    if let Err(e) = wait_for_signal() {
        eprintln!("switchyard: cannot wait for signals: {e}");
    }
    tracing::info!("shutting down: no new connections, draining in-flight requests");
    proxy.begin_shutdown();
    // A second signal while draining ends the process at once.
    std::thread::spawn(|| {
        if wait_for_signal().is_ok() {
            eprintln!("switchyard: second signal, exiting without waiting");
            std::process::exit(130);
        }
    });
    proxy.wait();
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

/// Blocks until SIGTERM or SIGINT.
fn wait_for_signal() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        Ok(())
    })
}
