//! The `switchyard` command line. Everything it runs lives in the library.
// Denied rather than forbidden: `allocator` alone implements `GlobalAlloc`, which is unsafe.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
mod allocator;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchyard::api::types::{
    CleanupStrategy, Environment, OnFailure, UpdateAnalysis, UpdateAutoscalingSettings,
    UpdateEnvironmentRequest, UpdatePromotionSettings, UpdateRollingDeployConfig,
};
use switchyard::client::{progress_line, Client, ClientError, Signal, SignalAnswer};
use switchyard::config::ServeFlags;

/// Fewer instructions per request and less memory per connection than glibc's malloc
/// (benches/README.md, "Issue 15, third pass"), called as `allocator` explains.
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

/// `--analysis-on-failure`, in any letter case.
fn parse_on_failure(s: &str) -> Result<OnFailure, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_uppercase()))
        .map_err(|_| format!("{s:?}: expected ROLLBACK, PAUSE or FORCE_CANCEL"))
}

/// `--promotion-cleanup-strategy`, in any letter case.
fn parse_cleanup(s: &str) -> Result<CleanupStrategy, String> {
    match s.to_ascii_uppercase().as_str() {
        "SCALE_TO_ZERO" => Ok(CleanupStrategy::ScaleToZero),
        "KEEP" => Ok(CleanupStrategy::Keep),
        "DEACTIVATE" => Ok(CleanupStrategy::Deactivate),
        _ => Err(format!(
            "{s:?} is not one of SCALE_TO_ZERO, KEEP, DEACTIVATE"
        )),
    }
}

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
    Serve(Box<ServeArgs>),
    /// Print the steps of a rolling deployment (pure arithmetic; contacts nothing).
    Plan(PlanArgs),
    /// Run the built-in model server (OpenAI-style completions, /predict, /healthz).
    Replica(ReplicaArgs),
    /// A complete demo, no config: model `demo` on built-in replicas, v1 live, v2 to promote.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Admin listener (metrics, API).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: std::net::SocketAddr,
        /// Keep the demo's state here, kept on exit: a demo started again with the same
        /// directory resumes where the last one stopped. Default: a fresh temporary directory,
        /// removed on exit.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Drive traffic at a target and report per deployment and per rollout step (with
    /// --promote: through a whole promotion).
    Loadtest(Box<switchyard::loadtest::LoadtestArgs>),
    /// Show an environment: current deployment, promotion status, replicas.
    Status(ClientArgs),
    /// Promote a deployment to the environment (with --watch: follow it to the end).
    Promote {
        /// The deployment to promote.
        deployment: String,
        #[command(flatten)]
        args: ClientArgs,
    },
    /// Pause the promotion at the next step boundary.
    Pause(ClientArgs),
    /// Resume a paused promotion.
    Resume(ClientArgs),
    /// Cancel: ramp traffic back to the previous deployment.
    Cancel(ClientArgs),
    /// Cancel at once: all traffic back to the previous deployment now.
    ForceCancel(ClientArgs),
    /// Finish at once: all traffic to the candidate at the next step boundary.
    ForceRollForward(ClientArgs),
    /// The environment's event log.
    Events(ClientArgs),
    /// The model's deployments and their replicas.
    Deployments(ClientArgs),
    /// Show the environment's promotion and autoscaling settings, or change some of them.
    Settings {
        #[command(flatten)]
        args: ClientArgs,
        #[command(flatten)]
        set: Box<SettingsArgs>,
    },
}

/// Settings to change (Baseten's names); the others stay as they are.
#[derive(Args, Default)]
struct SettingsArgs {
    #[arg(long)]
    rolling_deploy: Option<bool>,
    /// SCALE_TO_ZERO, KEEP or DEACTIVATE.
    #[arg(long, value_parser = parse_cleanup)]
    promotion_cleanup_strategy: Option<CleanupStrategy>,
    #[arg(long)]
    max_surge_percent: Option<i64>,
    #[arg(long)]
    max_unavailable_percent: Option<i64>,
    #[arg(long)]
    stabilization_time_seconds: Option<i64>,
    #[arg(long)]
    replica_overhead_percent: Option<i64>,
    #[arg(long)]
    min_replica: Option<i64>,
    #[arg(long)]
    max_replica: Option<i64>,
    #[arg(long)]
    autoscaling_window: Option<i64>,
    #[arg(long)]
    scale_down_delay: Option<i64>,
    #[arg(long)]
    concurrency_target: Option<i64>,
    #[arg(long)]
    target_utilization_percentage: Option<i64>,
    /// Canary analysis on or off (promotion_settings.analysis.enabled).
    #[arg(long)]
    analysis: Option<bool>,
    #[arg(long)]
    analysis_interval_seconds: Option<i64>,
    #[arg(long)]
    analysis_min_requests: Option<i64>,
    #[arg(long)]
    analysis_failure_limit: Option<i64>,
    /// ROLLBACK, PAUSE or FORCE_CANCEL.
    #[arg(long, value_parser = parse_on_failure)]
    analysis_on_failure: Option<OnFailure>,
    #[arg(long)]
    max_error_rate_percent: Option<f64>,
    #[arg(long)]
    max_p99_latency_ratio: Option<f64>,
    #[arg(long)]
    max_p99_ttft_ratio: Option<f64>,
    #[arg(long)]
    max_p99_itl_ratio: Option<f64>,
}

impl SettingsArgs {
    /// The PATCH body, or None when nothing is to change.
    fn patch(&self) -> Option<UpdateEnvironmentRequest> {
        let rolling = UpdateRollingDeployConfig {
            rolling_deploy_strategy: None,
            max_surge_percent: self.max_surge_percent,
            max_unavailable_percent: self.max_unavailable_percent,
            stabilization_time_seconds: self.stabilization_time_seconds,
            replica_overhead_percent: self.replica_overhead_percent,
        };
        let analysis = UpdateAnalysis {
            enabled: self.analysis,
            interval_seconds: self.analysis_interval_seconds,
            min_requests: self.analysis_min_requests,
            failure_limit: self.analysis_failure_limit,
            on_failure: self.analysis_on_failure,
            max_error_rate_percent: self.max_error_rate_percent.map(Some),
            max_p99_latency_ratio: self.max_p99_latency_ratio.map(Some),
            max_p99_ttft_ratio: self.max_p99_ttft_ratio.map(Some),
            max_p99_itl_ratio: self.max_p99_itl_ratio.map(Some),
            ..UpdateAnalysis::default()
        };
        let promotion = UpdatePromotionSettings {
            rolling_deploy: self.rolling_deploy,
            promotion_cleanup_strategy: self.promotion_cleanup_strategy,
            rolling_deploy_config: (rolling != UpdateRollingDeployConfig::default())
                .then_some(rolling),
            analysis: (analysis != UpdateAnalysis::default()).then_some(analysis),
            ..UpdatePromotionSettings::default()
        };
        let autoscaling = UpdateAutoscalingSettings {
            min_replica: self.min_replica,
            max_replica: self.max_replica,
            autoscaling_window: self.autoscaling_window,
            scale_down_delay: self.scale_down_delay,
            concurrency_target: self.concurrency_target,
            target_utilization_percentage: self.target_utilization_percentage,
            ..UpdateAutoscalingSettings::default()
        };
        let body = UpdateEnvironmentRequest {
            promotion_settings: (promotion != UpdatePromotionSettings::default())
                .then_some(promotion),
            autoscaling_settings: (autoscaling != UpdateAutoscalingSettings::default())
                .then_some(autoscaling),
            ..UpdateEnvironmentRequest::default()
        };
        (body != UpdateEnvironmentRequest::default()).then_some(body)
    }
}

/// Options of the commands that talk to a running switchyard's management API. The API key
/// comes from SWITCHYARD_API_KEY.
#[derive(Args)]
struct ClientArgs {
    /// The admin listener of the switchyard to talk to.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_URL",
        default_value = "http://127.0.0.1:9090"
    )]
    admin_url: String,
    /// Model id [default: the only one].
    #[arg(long)]
    model: Option<String>,
    /// Environment [default: the only one, else production].
    #[arg(long)]
    environment: Option<String>,
    /// Follow the promotion until it ends: exit 0 SUCCEEDED, 1 FAILED, 3 CANCELED.
    #[arg(long)]
    watch: bool,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
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
    /// Register with a switchyard (its admin URL) and keep renewing; deregister on SIGTERM.
    /// The API key comes from SWITCHYARD_API_KEY.
    #[arg(long, value_name = "ADMIN_URL")]
    register: Option<String>,
    /// The deployment to register with (with --register).
    #[arg(long)]
    deployment: Option<String>,
    /// The model [default: the only one] (with --register).
    #[arg(long)]
    model: Option<String>,
    /// Seconds a registration lasts without renewal; renewed every third of it.
    #[arg(long, default_value_t = 10)]
    register_ttl: u32,
    /// The address to register [default: --host:--port]; must be reachable from every
    /// switchyard instance.
    #[arg(long, value_name = "IP:PORT")]
    advertise: Option<String>,
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
    #[arg(long, env = "SWITCHYARD_NO_DEPLOYMENT_HEADER", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    no_deployment_header: bool,
    /// Workers sleep without first yielding their core to other runnable threads (see
    /// `server.yield_before_sleep`).
    #[arg(long, env = "SWITCHYARD_NO_YIELD_BEFORE_SLEEP", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    no_yield_before_sleep: bool,
    /// Time slice each worker asks the scheduler for, in µs (Linux 6.12+; 0 = the kernel's
    /// default) [default: 100].
    #[arg(long, env = "SWITCHYARD_WORKER_SLICE_MICROSECONDS")]
    worker_slice_microseconds: Option<u64>,
    /// A new connection goes to the first worker holding fewer than this many; when all hold
    /// this many, to the one holding the fewest (0 = where the kernel's hash puts it)
    /// [default: 8].
    #[arg(long, env = "SWITCHYARD_WORKER_FILL_CONNECTIONS")]
    worker_fill_connections: Option<usize>,
    /// Seconds in-flight requests may run after SIGTERM/SIGINT [default: 30].
    #[arg(long, env = "SWITCHYARD_SHUTDOWN_GRACE_SECONDS")]
    shutdown_grace_seconds: Option<f64>,
    /// Validate the configuration (and TLS files), print a summary and exit without serving.
    #[arg(long)]
    check_config: bool,
    /// Where promotions, current deployments and events persist across restarts
    /// [default: $XDG_STATE_HOME/switchyard or ~/.local/state/switchyard].
    #[arg(long, env = "SWITCHYARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep no state across restarts.
    #[arg(long, env = "SWITCHYARD_EPHEMERAL", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::SetTrue)]
    ephemeral: bool,
    /// Management API key (at least 16 characters); without it one is generated and printed.
    #[arg(long, env = "SWITCHYARD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Share state with other instances: `etcd://HOST:PORT[,HOST:PORT...]`, or `embedded`
    /// (the default: a local store in the data directory).
    #[arg(long, env = "SWITCHYARD_STORE")]
    store: Option<String>,
    /// Key prefix in etcd [default: /switchyard/].
    #[arg(long, env = "SWITCHYARD_STORE_PREFIX")]
    store_prefix: Option<String>,
    /// etcd user, when etcd has authentication on.
    #[arg(long, env = "SWITCHYARD_STORE_USER")]
    store_user: Option<String>,
    /// etcd password (prefer the environment variable).
    #[arg(long, env = "SWITCHYARD_STORE_PASSWORD", hide_env_values = true)]
    store_password: Option<String>,
    /// Seconds a leader's lease lasts without renewal: a killed leader is replaced after about
    /// this long [default: 10].
    #[arg(long, env = "SWITCHYARD_LEADER_LEASE_SECONDS")]
    leader_lease_seconds: Option<u64>,
    /// This instance's name among the others [default: host name and admin port].
    #[arg(long, env = "SWITCHYARD_INSTANCE_NAME")]
    instance_name: Option<String>,
    /// TLS to etcd: the CA (PEM) that signed the members' certificates.
    #[arg(long, env = "SWITCHYARD_STORE_CA")]
    store_ca: Option<PathBuf>,
    /// A client certificate (PEM) for etcd's --client-cert-auth, with --store-key.
    #[arg(long, env = "SWITCHYARD_STORE_CERT")]
    store_cert: Option<PathBuf>,
    #[arg(long, env = "SWITCHYARD_STORE_KEY")]
    store_key: Option<PathBuf>,
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
            no_yield_before_sleep: a.no_yield_before_sleep,
            worker_slice_microseconds: a.worker_slice_microseconds,
            worker_fill_connections: a.worker_fill_connections,
            shutdown_grace_seconds: a.shutdown_grace_seconds,
            api_key: a.api_key,
            data_dir: a.data_dir,
            default_data_dir: default_data_dir(),
            ephemeral: a.ephemeral,
            shared_store: switchyard::config::SharedStoreFlags {
                store: a.store,
                prefix: a.store_prefix,
                user: a.store_user,
                password: a.store_password,
                lease_seconds: a.leader_lease_seconds,
                instance_name: a.instance_name,
                ca: a.store_ca,
                cert: a.store_cert,
                key: a.store_key,
            },
        }
    }
}

/// $XDG_STATE_HOME/switchyard, else ~/.local/state/switchyard.
fn default_data_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))?;
    Some(base.join("switchyard"))
}

fn main() -> ExitCode {
    // Transparent huge pages turn each allocator arena's first touch into 2 MiB of resident
    // memory: an idle proxy measured 26 MiB with them and 12 without. Where the kernel uses them
    // for every mapping ("always"), turn them off for this process; failing to is harmless.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
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
            serve((*args).into(), check)
        }
        Command::Loadtest(a) => switchyard::loadtest::main(&a),
        Command::Status(a) => client_command(a, Action::Status),
        Command::Promote { deployment, args } => client_command(args, Action::Promote(deployment)),
        Command::Pause(a) => client_command(a, Action::Signal(Signal::Pause)),
        Command::Resume(a) => client_command(a, Action::Signal(Signal::Resume)),
        Command::Cancel(a) => client_command(a, Action::Signal(Signal::Cancel)),
        Command::ForceCancel(a) => client_command(a, Action::Signal(Signal::ForceCancel)),
        Command::ForceRollForward(a) => client_command(a, Action::Signal(Signal::ForceRollForward)),
        Command::Events(a) => client_command(a, Action::Events),
        Command::Deployments(a) => client_command(a, Action::Deployments),
        Command::Settings { args, set } => {
            client_command(args, Action::Settings(set.patch().map(Box::new)))
        }
        Command::Plan(args) => plan(args),
        Command::Replica(args) => replica(args),
        Command::Demo {
            listen,
            admin_listen,
            data_dir,
        } => demo(listen, admin_listen, data_dir),
    }
}

enum Action {
    Status,
    Promote(String),
    Signal(Signal),
    Events,
    Deployments,
    Settings(Option<Box<UpdateEnvironmentRequest>>),
}

fn client_command(a: ClientArgs, action: Action) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run_client(a, action)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run_client(a: ClientArgs, action: Action) -> Result<ExitCode, ClientError> {
    let key = std::env::var("SWITCHYARD_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    let client = Client::new(&a.admin_url, key)?;
    let (model, env) = client.target(a.model, a.environment).await?;
    match action {
        Action::Status if !a.watch => {
            let v = client.environment(&model, &env).await?;
            if a.json {
                print_json(&v);
            } else {
                let current = v.current_deployment.as_ref().map_or("-", |d| d.id.as_str());
                println!("{model}/{env}: current deployment {current}");
                println!("{}", progress_line(&v));
                // Older servers have no /v1/cluster: say nothing then.
                if let Ok(c) = client.cluster().await {
                    if c.store != "embedded" {
                        let live = c.instances.len();
                        match &c.leader {
                            Some(l) => println!(
                                "cluster: {live} instances on {}, leader {l} (answered by {})",
                                c.store, c.instance
                            ),
                            None => println!(
                                "cluster: {live} instances on {}, no leader at the moment (answered by {})",
                                c.store, c.instance
                            ),
                        }
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Action::Status => {}
        Action::Promote(d) => {
            let v = client.promote(&model, &env, &d).await?;
            if !a.watch {
                if a.json {
                    print_json(&v);
                } else {
                    println!(
                        "promoting {d} to {model}/{env}; follow it with: switchyard status --watch"
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
        }
        Action::Signal(signal) => {
            let v = client.signal(&model, &env, signal).await?;
            if a.json {
                print_json(&v);
            } else if let SignalAnswer::Cancel(c) = &v {
                println!("{}: {}", c.status, c.message);
            } else {
                println!("ok");
            }
            if !a.watch {
                return Ok(ExitCode::SUCCESS);
            }
        }
        Action::Events => {
            let v = client.events(&model, &env).await?;
            if a.json {
                print_json(&v);
            } else {
                for e in &v.events {
                    println!(
                        "{}  {:<12} {:>3}%  candidate {:>3}  previous {:>3}  {}",
                        e.at,
                        e.status,
                        e.percent_traffic_to_new_version,
                        e.candidate_replicas,
                        e.previous_replicas,
                        e.reason
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Action::Settings(patch) => {
            let v = match patch {
                Some(body) => {
                    client
                        .update_environment(&model, &env, &body)
                        .await?
                        .environment
                }
                None => client.environment(&model, &env).await?,
            };
            print_settings(&model, &env, &v, a.json);
            return Ok(ExitCode::SUCCESS);
        }
        Action::Deployments => {
            let v = client.deployments(&model).await?;
            if a.json {
                print_json(&v);
            } else {
                for d in &v.deployments {
                    println!(
                        "{:<16} {:<15} {} ready / {} desired  env {}",
                        d.id,
                        d.status.as_str(),
                        d.replicas.ready,
                        d.replicas.desired,
                        d.environment.as_deref().unwrap_or("-")
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    watch(&client, &model, &env, a.json).await
}

/// `switchyard settings`: the environment's promotion and autoscaling settings.
fn print_settings(model: &str, env: &str, v: &Environment, json: bool) {
    if json {
        #[derive(serde::Serialize)]
        struct Shown<'a> {
            promotion_settings: &'a switchyard::api::types::PromotionSettings,
            autoscaling_settings: &'a switchyard::api::types::AutoscalingSettings,
        }
        print_json(&Shown {
            promotion_settings: &v.promotion_settings,
            autoscaling_settings: &v.autoscaling_settings,
        });
        return;
    }
    let p = &v.promotion_settings;
    let r = &p.rolling_deploy_config;
    println!("{model}/{env}");
    println!("  rolling_deploy               {}", p.rolling_deploy);
    let cleanup = serde_json::to_value(p.promotion_cleanup_strategy).unwrap_or_default();
    println!(
        "  promotion_cleanup_strategy   {}",
        cleanup.as_str().unwrap_or("-")
    );
    for (k, n) in [
        ("max_surge_percent", r.max_surge_percent),
        ("max_unavailable_percent", r.max_unavailable_percent),
        ("stabilization_time_seconds", r.stabilization_time_seconds),
        ("replica_overhead_percent", r.replica_overhead_percent),
    ] {
        println!("  {k:<28} {n}");
    }
    let a = &p.analysis;
    if a.enabled {
        let opt = |v: Option<f64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
        println!(
            "  analysis                     on: every {} s, min_requests {}, failure_limit {}, max_inconclusive_intervals {}, on_failure {}",
            a.interval_seconds,
            a.min_requests,
            a.failure_limit,
            a.max_inconclusive_intervals,
            serde_json::to_value(a.on_failure)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default()
        );
        for (k, v) in [
            ("max_error_rate_percent", a.max_error_rate_percent),
            ("max_error_rate_ratio", a.max_error_rate_ratio),
            ("max_p99_latency_ratio", a.max_p99_latency_ratio),
            ("max_p99_latency_ms", a.max_p99_latency_ms),
            ("max_p99_ttft_ratio", a.max_p99_ttft_ratio),
            ("max_p99_itl_ratio", a.max_p99_itl_ratio),
        ] {
            println!("    {k:<26} {}", opt(v));
        }
        for w in &a.webhooks {
            println!("    webhook {} {:?} {}", w.name, w.when, w.url);
        }
    } else {
        println!("  analysis                     off");
    }
    let au = &v.autoscaling_settings;
    if !au.enabled {
        println!(
            "  autoscaling                  off (fixed replica count: {})",
            au.min_replica
        );
        return;
    }
    let opt = |n: Option<u32>| n.map_or_else(|| "null".to_owned(), |n| n.to_string());
    for (k, n) in [
        ("min_replica", au.min_replica.to_string()),
        ("max_replica", au.max_replica.to_string()),
        ("autoscaling_window", opt(au.autoscaling_window)),
        ("scale_down_delay", opt(au.scale_down_delay)),
        ("concurrency_target", au.concurrency_target.to_string()),
        (
            "target_utilization_percentage",
            opt(au.target_utilization_percentage),
        ),
    ] {
        println!("  {k:<28} {n}");
    }
}

/// `--watch`: follows the promotion until it ends, woken by the environment's event stream,
/// and once a second for replica changes that are not events (replicas becoming ready).
async fn watch(
    client: &Client,
    model: &str,
    env: &str,
    json: bool,
) -> Result<ExitCode, ClientError> {
    // Subscribe before the first look, so nothing that happens in between is missed.
    let mut events = client.follow_events(model, env).await.ok();
    let mut last = String::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        let v = client.environment(model, env).await?;
        let line = progress_line(&v);
        if line != last {
            if json {
                println!("{}", serde_json::to_string(&v).unwrap_or_default());
            } else {
                println!("{line}");
            }
            last = line;
        }
        let Some(status) = v.in_progress_promotion.map(|p| p.status) else {
            return Ok(ExitCode::SUCCESS); // nothing to follow
        };
        if let Some(code) = status.exit_code() {
            return Ok(ExitCode::from(code));
        }
        match events.as_mut() {
            Some(stream) => tokio::select! {
                ev = stream.next() => if ev.is_none() {
                    events = None; // the stream ended (server restart): fall back to the tick
                },
                _ = tick.tick() => {}
            },
            None => {
                tick.tick().await;
            }
        }
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
    let registration = match (a.register, a.deployment) {
        (None, None) => None,
        (None, Some(_)) => {
            eprintln!("switchyard: --deployment: only applies with --register ADMIN_URL");
            return ExitCode::from(2);
        }
        (Some(_), None) => {
            eprintln!("switchyard: --register: needs --deployment (the deployment to join)");
            return ExitCode::from(2);
        }
        (Some(url), Some(deployment)) => {
            if !(1..=3600).contains(&a.register_ttl) {
                eprintln!(
                    "switchyard: --register-ttl: {} is out of range 1..=3600",
                    a.register_ttl
                );
                return ExitCode::from(2);
            }
            let address = match a.advertise {
                Some(x) => x,
                None if a.host.is_unspecified() => {
                    eprintln!("switchyard: --advertise: needed with --host {} (say which address the switchyard instances reach)", a.host);
                    return ExitCode::from(2);
                }
                None => std::net::SocketAddr::new(a.host, a.port).to_string(),
            };
            let key = std::env::var("SWITCHYARD_API_KEY")
                .ok()
                .filter(|k| !k.is_empty());
            match Client::new(&url, key) {
                Ok(client) => Some(Registration {
                    client,
                    url,
                    model: a.model,
                    deployment,
                    address,
                    ttl: a.register_ttl,
                }),
                Err(e) => {
                    eprintln!("switchyard: --register: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let listen = opts.listen;
    let served = rt.block_on(async move {
        let Some(reg) = registration else {
            return switchyard::replica::run(opts).await;
        };
        let reg = std::sync::Arc::new(reg);
        let keep = tokio::spawn(reg.clone().keep());
        let stop = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok::<(), std::io::Error>(())
        };
        let out = tokio::select! {
            r = switchyard::replica::run(opts) => r,
            r = stop => r,
        };
        keep.abort();
        // Leave at once rather than after the TTL.
        reg.leave().await;
        out
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: replica cannot listen on {listen}: {e}");
            ExitCode::from(2)
        }
    }
}

/// `replica --register`: where and as what this replica registers.
struct Registration {
    client: Client,
    url: String,
    model: Option<String>,
    deployment: String,
    address: String,
    ttl: u32,
}

impl Registration {
    async fn model(&self) -> Result<String, switchyard::client::ClientError> {
        if let Some(m) = &self.model {
            return Ok(m.clone());
        }
        let models = self.client.models().await?.models;
        match models.as_slice() {
            [one] => Ok(one.id.clone()),
            _ => Err(switchyard::client::ClientError::Usage(format!(
                "{} serves {} models; name one with --model",
                self.url,
                models.len()
            ))),
        }
    }

    /// Registers, then renews every third of the TTL; failures are reported and retried.
    async fn keep(self: std::sync::Arc<Self>) {
        let every = std::time::Duration::from_secs_f64(f64::from(self.ttl) / 3.0);
        let mut registered = false;
        loop {
            let result = match self.model().await {
                Ok(m) => self
                    .client
                    .register_endpoint(&m, &self.deployment, &self.address, self.ttl)
                    .await
                    .map(|_| m),
                Err(e) => Err(e),
            };
            match result {
                Ok(m) if !registered => {
                    registered = true;
                    eprintln!(
                        "switchyard replica: registered {} with {m}/{} at {} (ttl {} s)",
                        self.address, self.deployment, self.url, self.ttl
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    registered = false;
                    eprintln!("switchyard replica: registration failed: {e}");
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    async fn leave(&self) {
        if let Ok(m) = self.model().await {
            let _ = self
                .client
                .deregister_endpoint(&m, &self.deployment, &self.address)
                .await;
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

fn demo(
    listen: std::net::SocketAddr,
    admin_listen: std::net::SocketAddr,
    keep_dir: Option<std::path::PathBuf>,
) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(p) => p.display().to_string(),
        Err(e) => {
            eprintln!("switchyard: cannot find my own binary to start replicas: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A fresh state directory per run unless one is given: the demo starts from v1.
    let fresh = keep_dir.is_none();
    let data_dir = keep_dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("switchyard-demo-{}", std::process::id()))
    });
    let mut settings = switchyard::demo::settings(&exe, listen, admin_listen, data_dir.clone());
    if let Ok(k) = std::env::var("SWITCHYARD_API_KEY") {
        if !k.is_empty() {
            settings.api_key = Some(k);
        }
    }
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
    println!(
        "{}",
        switchyard::demo::instructions(&exe, proxy.listen_addr, proxy.admin_addr, &proxy.api_key)
    );
    let code = run_until_signal(proxy);
    if fresh {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    code
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
    run_until_signal(proxy)
}

/// Serves until SIGTERM/SIGINT, then drains and stops.
fn run_until_signal(proxy: switchyard::server::RunningProxy) -> ExitCode {
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

/// A current-thread runtime for the CLI's own work; `None` (reported) if it cannot be built.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("switchyard: cannot start a runtime: {e}");
            None
        }
    }
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
