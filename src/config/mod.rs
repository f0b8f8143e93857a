//! Configuration: the TOML file and the `serve` flags, both turned into one validated
//! [`Settings`]. Every error names the field (or flag) and the value that is wrong.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::api::types::InstanceType;

mod model;

pub use model::{
    initial_routing, models_from_routing, DeploymentConfig, EnvironmentConfig, ModelConfig, Traffic,
};

use crate::replicas::ProviderSpec;
use crate::rollout::analysis::AnalysisSettings;
use crate::rollout::autoscale::AutoscalingSettings;
use crate::rollout::machine::{CleanupStrategy, PromotionConfig};
use crate::rollout::plan::RollingConfig;
use crate::routing::spec::normalize_weights;
use crate::routing::RoutingSpec;

/// A configuration problem, naming where it is.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the proxy talks to replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    /// Budget from request sent to response headers; `None` waits forever.
    pub response_header_timeout: Option<Duration>,
    /// Longest silence allowed between two body chunks of a response; `None` waits forever.
    pub body_idle_timeout: Option<Duration>,
    /// A request body that sends nothing for this long is cut (408), its replica connection
    /// closed and its slot freed. `None`: never.
    pub request_body_idle_timeout: Option<Duration>,
    /// Idle upstream connections older than this are closed.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per replica on each worker.
    pub pool_max_idle_per_replica: usize,
    /// Replicas tried for one request when connecting fails (never after bytes were sent).
    pub max_connect_attempts: u32,
    /// Consecutive connect failures that eject a replica.
    pub eject_after_failures: u32,
    pub eject_duration: Duration,
    /// How often static endpoints are probed (a TCP connect); one that refuses is not ready
    /// until a probe connects again. `None`: never probed, every listed endpoint is ready.
    pub static_probe_interval: Option<Duration>,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            connect_timeout: Duration::from_secs(2),
            response_header_timeout: Some(Duration::from_secs(300)),
            body_idle_timeout: Some(Duration::from_secs(300)),
            request_body_idle_timeout: Some(Duration::from_secs(30)),
            pool_idle_timeout: Duration::from_secs(30),
            pool_max_idle_per_replica: 256,
            max_connect_attempts: 3,
            eject_after_failures: 3,
            eject_duration: Duration::from_secs(10),
            static_probe_interval: Some(Duration::from_secs(2)),
        }
    }
}

/// Everything `switchyard serve` needs, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Data-plane worker threads, each with its own runtime, listener and upstream pool.
    pub workers: usize,
    pub tls: Option<TlsFiles>,
    /// Send `x-switchyard-deployment` on every proxied response.
    pub deployment_header: bool,
    /// How long in-flight requests may run after SIGTERM before the process exits.
    pub shutdown_grace: Duration,
    pub upstream: UpstreamSettings,
    pub models: Vec<ModelConfig>,
    /// Management API key; `None`: one is generated at start and printed.
    pub api_key: Option<String>,
    /// Where controller state persists; `None`: nothing survives a restart.
    pub data_dir: Option<PathBuf>,
    /// What the API reports as a deployment's `instance_type`, by (model, deployment), where
    /// the config declares one.
    pub instance_types: BTreeMap<(String, String), InstanceType>,
    /// Whether the API may register `process` deployments (which run a command of the
    /// caller's choosing). Off by default, so a leaked API key cannot run code.
    pub api_process_deployments: bool,
    /// How long an admin client has to send a request head; idle admin connections close
    /// after it too.
    pub admin_header_timeout: Duration,
    /// The same for proxy clients (their first bytes, every request head, idle keep-alive).
    pub client_header_timeout: Duration,
    /// A data-plane worker with nothing left to do yields its core (`sched_yield`) before it
    /// sleeps: on cores shared with the model server or the load generator, the threads its
    /// writes just woke run there first, and their answers are often back before it would
    /// have gone to sleep.
    pub yield_before_sleep: bool,
    /// The time slice each data-plane worker asks the scheduler for (Linux 6.12+); `None`:
    /// the kernel's default.
    pub worker_slice: Option<Duration>,
    /// A new client connection goes to the first worker holding fewer than this many, and
    /// once every worker holds this many, to the worker holding the fewest; 0: it stays on
    /// the worker the kernel's `SO_REUSEPORT` hash gave it (`crate::placement`).
    pub worker_fill_connections: usize,
    /// Several instances share their state on etcd; `None`: the embedded store (`data_dir`).
    pub shared_store: Option<crate::cluster::SharedStoreSettings>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

impl Settings {
    /// Defaults for everything but routing, from a fixed routing description (static
    /// endpoints, fixed splits).
    pub fn with_routing(routing: RoutingSpec) -> Self {
        Self::with_models(models_from_routing(&routing))
    }

    /// Defaults for everything but the models.
    pub fn with_models(models: Vec<ModelConfig>) -> Self {
        Settings {
            listen: parse_listen(DEFAULT_LISTEN),
            admin_listen: parse_listen(DEFAULT_ADMIN_LISTEN),
            workers: default_workers(),
            tls: None,
            deployment_header: true,
            shutdown_grace: Duration::from_secs(30),
            upstream: UpstreamSettings::default(),
            models,
            api_key: None,
            data_dir: None,
            instance_types: BTreeMap::new(),
            api_process_deployments: false,
            admin_header_timeout: Duration::from_secs(30),
            client_header_timeout: Duration::from_secs(30),
            yield_before_sleep: true,
            worker_slice: Some(Duration::from_micros(DEFAULT_WORKER_SLICE_MICROSECONDS)),
            worker_fill_connections: DEFAULT_WORKER_FILL_CONNECTIONS,
            shared_store: None,
        }
    }
}

fn parse_listen(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------------
// The file.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    upstream: UpstreamSection,
    #[serde(default)]
    models: Vec<ModelSection>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    admin_listen: Option<String>,
    workers: Option<usize>,
    deployment_header: Option<bool>,
    shutdown_grace_seconds: Option<f64>,
    tls: Option<TlsSection>,
    api_key: Option<String>,
    data_dir: Option<PathBuf>,
    api_process_deployments: Option<bool>,
    admin_header_timeout_seconds: Option<f64>,
    client_header_timeout_seconds: Option<f64>,
    yield_before_sleep: Option<bool>,
    worker_slice_microseconds: Option<u64>,
    worker_fill_connections: Option<usize>,
    /// `embedded` or `etcd://HOST:PORT[,HOST:PORT...]`.
    store: Option<String>,
    store_prefix: Option<String>,
    store_user: Option<String>,
    store_password: Option<String>,
    leader_lease_seconds: Option<u64>,
    instance_name: Option<String>,
    store_ca: Option<PathBuf>,
    store_cert: Option<PathBuf>,
    store_key: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UpstreamSection {
    connect_timeout_seconds: Option<f64>,
    response_header_timeout_seconds: Option<f64>,
    body_idle_timeout_seconds: Option<f64>,
    request_body_idle_timeout_seconds: Option<f64>,
    pool_idle_timeout_seconds: Option<f64>,
    pool_max_idle_per_replica: Option<usize>,
    max_connect_attempts: Option<u32>,
    eject_after_failures: Option<u32>,
    eject_seconds: Option<f64>,
    static_probe_interval_seconds: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSection {
    id: String,
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    deployments: Vec<DeploymentSection>,
    #[serde(default)]
    environments: Vec<EnvironmentSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentSection {
    id: String,
    /// Static provider: these endpoints.
    #[serde(default)]
    replicas: Vec<String>,
    /// Process provider: this command, with `{port}` substituted.
    command: Option<Vec<String>>,
    health_path: Option<String>,
    /// What one replica has, as the API reports it (Baseten's `instance_type`).
    instance_type: Option<InstanceTypeSection>,
    /// Static deployments: argv run when the replica target changes; `{model}`,
    /// `{deployment}` and `{replicas}` are substituted.
    scale_command: Option<Vec<String>>,
}

/// Baseten's `InstanceTypeV1`: the resources of one replica of a deployment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceTypeSection {
    id: String,
    name: Option<String>,
    memory_limit_mib: u64,
    millicpu_limit: u64,
    #[serde(default)]
    gpu_count: u32,
    gpu_type: Option<String>,
    gpu_memory_limit_mib: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvironmentSection {
    name: String,
    #[serde(default)]
    hosts: Vec<String>,
    current: Option<String>,
    /// Replicas of the current deployment (process provider); static: the listed endpoints.
    replicas: Option<u32>,
    weights: Option<BTreeMap<String, f64>>,
    promotion_settings: Option<PromotionSection>,
    autoscaling_settings: Option<AutoscalingSection>,
}

/// Baseten's `autoscaling_settings`; omitted keys take Baseten's defaults.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscalingSection {
    min_replica: Option<u32>,
    max_replica: Option<u32>,
    autoscaling_window: Option<u32>,
    scale_down_delay: Option<u32>,
    concurrency_target: Option<u32>,
    target_utilization_percentage: Option<u32>,
}

/// Baseten's `promotion_settings`, plus switchyard's readiness timing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromotionSection {
    rolling_deploy: Option<bool>,
    promotion_cleanup_strategy: Option<CleanupStrategy>,
    rolling_deploy_config: Option<RollingSection>,
    ready_wait_seconds: Option<f64>,
    ready_deadline_seconds: Option<f64>,
    /// switchyard's canary analysis; omitted fields take their defaults.
    analysis: Option<AnalysisSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollingSection {
    rolling_deploy_strategy: Option<String>,
    max_surge_percent: Option<i64>,
    max_unavailable_percent: Option<i64>,
    stabilization_time_seconds: Option<i64>,
    replica_overhead_percent: Option<i64>,
}

/// Reads and validates a config file.
pub fn load_file(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        err(
            path.display().to_string(),
            format!("cannot read the config file: {e}"),
        )
    })?;
    parse_str(&text)
        .and_then(|s| check_shared_store(&s).map(|_| s))
        .map_err(|e| ConfigError {
            field: format!("{}: {}", path.display(), e.field),
            message: e.message,
        })
}

/// Parses and validates config text.
pub fn parse_str(text: &str) -> Result<Settings, ConfigError> {
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().map(|s| line_of(text, s.start)).unwrap_or_default();
        err(format!("config{span}"), e.message().to_owned())
    })?;
    from_file(file)
}

fn line_of(text: &str, offset: usize) -> String {
    let line = text[..offset.min(text.len())].matches('\n').count() + 1;
    format!(" line {line}")
}

fn from_file(f: FileConfig) -> Result<Settings, ConfigError> {
    let mut s = Settings::with_models(Vec::new());
    if let Some(v) = &f.server.listen {
        s.listen = parse_addr("server.listen", v)?;
    }
    if let Some(v) = &f.server.admin_listen {
        s.admin_listen = parse_addr("server.admin_listen", v)?;
    }
    if let Some(w) = f.server.workers {
        s.workers = check_workers("server.workers", w)?;
    }
    if let Some(v) = f.server.deployment_header {
        s.deployment_header = v;
    }
    if let Some(v) = f.server.shutdown_grace_seconds {
        s.shutdown_grace = seconds("server.shutdown_grace_seconds", v, 0.0, 86_400.0)?;
    }
    if let Some(d) = f.server.data_dir {
        s.data_dir = Some(d);
    }
    if let Some(v) = f.server.client_header_timeout_seconds {
        s.client_header_timeout = seconds("server.client_header_timeout_seconds", v, 0.1, 3600.0)?;
    }
    if let Some(v) = f.server.yield_before_sleep {
        s.yield_before_sleep = v;
    }
    if let Some(v) = f.server.worker_slice_microseconds {
        s.worker_slice = worker_slice("server.worker_slice_microseconds", v)?;
    }
    if let Some(v) = f.server.worker_fill_connections {
        s.worker_fill_connections = worker_fill("server.worker_fill_connections", v)?;
    }
    if let Some(v) = f.server.admin_header_timeout_seconds {
        s.admin_header_timeout = seconds("server.admin_header_timeout_seconds", v, 0.1, 3600.0)?;
    }
    if let Some(b) = f.server.api_process_deployments {
        s.api_process_deployments = b;
    }
    let shared = SharedStoreFlags {
        store: f.server.store.clone(),
        prefix: f.server.store_prefix.clone(),
        user: f.server.store_user.clone(),
        password: f.server.store_password.clone(),
        lease_seconds: f.server.leader_lease_seconds,
        instance_name: f.server.instance_name.clone(),
        ca: f.server.store_ca.clone(),
        cert: f.server.store_cert.clone(),
        key: f.server.store_key.clone(),
    };
    s.shared_store = shared.settings("server.", None)?;
    if let Some(k) = f.server.api_key {
        s.api_key = Some(check_api_key("server.api_key", k)?);
    }
    if let Some(t) = f.server.tls {
        s.tls = Some(TlsFiles {
            cert: t.cert,
            key: t.key,
        });
    }
    let u = &f.upstream;
    let d = &mut s.upstream;
    if let Some(v) = u.connect_timeout_seconds {
        d.connect_timeout = seconds("upstream.connect_timeout_seconds", v, 0.001, 600.0)?;
    }
    if let Some(v) = u.response_header_timeout_seconds {
        d.response_header_timeout =
            optional_seconds("upstream.response_header_timeout_seconds", v)?;
    }
    if let Some(v) = u.body_idle_timeout_seconds {
        d.body_idle_timeout = optional_seconds("upstream.body_idle_timeout_seconds", v)?;
    }
    if let Some(v) = u.request_body_idle_timeout_seconds {
        d.request_body_idle_timeout =
            optional_seconds("upstream.request_body_idle_timeout_seconds", v)?;
    }
    if let Some(v) = u.pool_idle_timeout_seconds {
        d.pool_idle_timeout = seconds("upstream.pool_idle_timeout_seconds", v, 0.0, 86_400.0)?;
    }
    if let Some(v) = u.pool_max_idle_per_replica {
        d.pool_max_idle_per_replica = v;
    }
    if let Some(v) = u.max_connect_attempts {
        if !(1..=16).contains(&v) {
            return Err(err(
                "upstream.max_connect_attempts",
                format!("{v} is out of range 1..=16"),
            ));
        }
        d.max_connect_attempts = v;
    }
    if let Some(v) = u.eject_after_failures {
        d.eject_after_failures = v;
    }
    if let Some(v) = u.eject_seconds {
        d.eject_duration = seconds("upstream.eject_seconds", v, 0.0, 86_400.0)?;
    }
    if let Some(v) = u.static_probe_interval_seconds {
        let t = seconds("upstream.static_probe_interval_seconds", v, 0.0, 3_600.0)?;
        d.static_probe_interval = (!t.is_zero()).then_some(t);
    }

    for (mi, m) in f.models.into_iter().enumerate() {
        let at = format!("models[{mi}]");
        check_id(&format!("{at}.id"), &m.id)?;
        let mut deployments: Vec<DeploymentConfig> = Vec::new();
        for (di, d) in m.deployments.into_iter().enumerate() {
            let dat = format!("{at}.deployments[{di}]");
            check_id(&format!("{dat}.id"), &d.id)?;
            if deployments.iter().any(|x| x.id == d.id) {
                return Err(err(
                    format!("{dat}.id"),
                    format!("deployment {:?} is declared twice", d.id),
                ));
            }
            let provider = match (d.command, d.replicas.is_empty()) {
                (Some(_), false) => {
                    return Err(err(dat, "set either `replicas` (static endpoints) or `command` (process replicas), not both"))
                }
                (Some(command), true) => {
                    if command.is_empty() || command[0].is_empty() {
                        return Err(err(format!("{dat}.command"), "must name a program, e.g. [\"my-server\", \"--port\", \"{port}\"]"));
                    }
                    if !command.iter().any(|a| a.contains("{port}")) {
                        return Err(err(format!("{dat}.command"), "must pass {port} to the replica somewhere (switchyard picks the port)"));
                    }
                    let health_path = d.health_path.unwrap_or_else(|| "/healthz".into());
                    if !health_path.starts_with('/') {
                        return Err(err(format!("{dat}.health_path"), format!("{health_path:?} must start with '/'")));
                    }
                    ProviderSpec::Process { command, health_path }
                }
                (None, _) => {
                    if d.health_path.is_some() {
                        return Err(err(format!("{dat}.health_path"), "only applies to `command` deployments"));
                    }
                    let endpoints = d
                        .replicas
                        .iter()
                        .enumerate()
                        .map(|(ri, r)| resolve_endpoint(&format!("{dat}.replicas[{ri}]"), r))
                        .collect::<Result<_, _>>()?;
                    ProviderSpec::Static { endpoints }
                }
            };
            if let Some(it) = d.instance_type {
                let iat = format!("{dat}.instance_type");
                if it.id.trim().is_empty() {
                    return Err(err(
                        format!("{iat}.id"),
                        "must not be empty (e.g. \"L4:4x16\")",
                    ));
                }
                if it.gpu_count == 0 && (it.gpu_type.is_some() || it.gpu_memory_limit_mib.is_some())
                {
                    return Err(err(
                        format!("{iat}.gpu_count"),
                        "is 0, but gpu_type or gpu_memory_limit_mib is set",
                    ));
                }
                s.instance_types.insert(
                    (m.id.clone(), d.id.clone()),
                    InstanceType {
                        name: it.name.unwrap_or_else(|| it.id.clone()),
                        id: it.id,
                        memory_limit_mib: it.memory_limit_mib,
                        millicpu_limit: it.millicpu_limit,
                        gpu_count: it.gpu_count,
                        gpu_type: it.gpu_type,
                        gpu_memory_limit_mib: it.gpu_memory_limit_mib,
                    },
                );
            }
            let scale_command = match (d.scale_command, &provider) {
                (None, _) => None,
                (Some(_), ProviderSpec::Process { .. }) => {
                    return Err(err(
                        format!("{dat}.scale_command"),
                        "only applies to static deployments (process deployments start their own replicas)",
                    ))
                }
                (Some(c), _) => {
                    if c.is_empty() || c[0].is_empty() {
                        return Err(err(
                            format!("{dat}.scale_command"),
                            "must name a program, e.g. [\"kubectl\", \"scale\", \"deployment/{deployment}\", \"--replicas={replicas}\"]",
                        ));
                    }
                    if !c.iter().any(|a| a.contains("{replicas}")) {
                        return Err(err(
                            format!("{dat}.scale_command"),
                            "must pass {replicas} somewhere (the replica count switchyard asks for)",
                        ));
                    }
                    Some(c)
                }
            };
            deployments.push(DeploymentConfig {
                id: d.id,
                provider,
                scale_command,
            });
        }
        if m.environments.is_empty() {
            return Err(err(
                format!("{at}.environments"),
                "declare at least one environment (e.g. name = \"production\")",
            ));
        }
        let mut environments = Vec::new();
        for (ei, e) in m.environments.into_iter().enumerate() {
            let eat = format!("{at}.environments[{ei}]");
            check_id(&format!("{eat}.name"), &e.name)?;
            let promotion =
                promotion_settings(&format!("{eat}.promotion_settings"), e.promotion_settings)?;

            let autoscaling = match e.autoscaling_settings {
                None => None,
                Some(a) => {
                    let d = AutoscalingSettings::default();
                    let min = a.min_replica.unwrap_or(1);
                    let a = AutoscalingSettings {
                        min_replica: min,
                        max_replica: a.max_replica.unwrap_or(d.max_replica.max(min)),
                        autoscaling_window: a.autoscaling_window.unwrap_or(d.autoscaling_window),
                        scale_down_delay: a.scale_down_delay.unwrap_or(d.scale_down_delay),
                        concurrency_target: a.concurrency_target.unwrap_or(d.concurrency_target),
                        target_utilization_percentage: a
                            .target_utilization_percentage
                            .unwrap_or(d.target_utilization_percentage),
                    };
                    a.validate().map_err(|x| {
                        err(format!("{eat}.autoscaling_settings.{}", x.field), x.message)
                    })?;
                    if a.min_replica == 0 {
                        return Err(err(
                            format!("{eat}.autoscaling_settings.min_replica"),
                            "0 (scale to zero) is not supported yet; use 1 or more",
                        ));
                    }
                    if e.replicas.is_some() {
                        return Err(err(
                            format!("{eat}.replicas"),
                            "with autoscaling_settings the count comes from min_replica..max_replica; remove `replicas`",
                        ));
                    }
                    Some(a)
                }
            };
            let traffic = match (e.current, e.weights) {
                (Some(c), None) => {
                    let Some(d) = deployments.iter().find(|d| d.id == c) else {
                        return Err(err(
                            format!("{eat}.current"),
                            format!("deployment {c:?} is not declared"),
                        ));
                    };
                    let replicas =
                        match (&d.provider, e.replicas) {
                            (ProviderSpec::Static { endpoints }, None) if endpoints.is_empty() => return Err(err(
                                format!("{eat}.replicas"),
                                format!("deployment {c:?} lists no endpoints (they register through the API): say how many it runs"),
                            )),
                            (ProviderSpec::Static { endpoints }, None) => endpoints.len() as u32,
                            // No listed endpoints: as many registered ones are admitted.
                            (ProviderSpec::Static { endpoints }, Some(r)) if endpoints.is_empty() => r,
                            (ProviderSpec::Static { .. }, Some(_)) => return Err(err(
                                format!("{eat}.replicas"),
                                "a static deployment runs its listed endpoints; remove `replicas` (only a deployment whose endpoints all register through the API takes it)",
                            )),
                            (ProviderSpec::Process { .. }, r) => {
                                r.or(autoscaling.map(|a| a.min_replica)).unwrap_or(1)
                            }
                        };
                    if !(1..=1000).contains(&replicas) {
                        return Err(err(
                            format!("{eat}.replicas"),
                            format!("{replicas} is out of range 1..=1000"),
                        ));
                    }
                    Traffic::Current {
                        deployment: c,
                        replicas,
                    }
                }
                (None, Some(w)) => {
                    if e.replicas.is_some() || autoscaling.is_some() {
                        return Err(err(
                            eat,
                            "`replicas` and `autoscaling_settings` only apply with `current`",
                        ));
                    }
                    let listed: Vec<&str> = deployments.iter().map(|d| d.id.as_str()).collect();
                    Traffic::Weights(check_weights(&eat, &w, &listed)?)
                }
                (Some(_), Some(_)) => {
                    return Err(err(eat, "set either `current` or `weights`, not both"))
                }
                (None, None) => return Err(err(
                    eat,
                    "set `current = \"<deployment>\"` or `weights = { <deployment> = <n>, ... }`",
                )),
            };
            environments.push(EnvironmentConfig {
                name: e.name,
                hosts: e.hosts,
                traffic,
                promotion,
                autoscaling,
            });
        }
        s.models.push(ModelConfig {
            id: m.id,
            hosts: m.hosts,
            deployments,
            environments,
        });
    }
    if s.models.is_empty() {
        return Err(err("models", "declare at least one model with [[models]]"));
    }
    check_routing(&initial_routing(&s.models))?;
    Ok(s)
}

fn promotion_settings(
    at: &str,
    p: Option<PromotionSection>,
) -> Result<PromotionConfig, ConfigError> {
    let mut c = PromotionConfig {
        rolling: false,
        ..PromotionConfig::default()
    };
    let Some(p) = p else { return Ok(c) };
    c.rolling = p.rolling_deploy.unwrap_or(false);
    if let Some(v) = p.promotion_cleanup_strategy {
        c.cleanup = v;
    }
    if let Some(v) = p.ready_wait_seconds {
        c.ready_wait_ms =
            seconds(&format!("{at}.ready_wait_seconds"), v, 0.0, 86_400.0)?.as_millis() as u64;
    }
    if let Some(v) = p.ready_deadline_seconds {
        c.ready_deadline_ms =
            seconds(&format!("{at}.ready_deadline_seconds"), v, 0.1, 86_400.0)?.as_millis() as u64;
    }
    if let Some(a) = p.analysis {
        a.validate()
            .map_err(|e| err(format!("{at}.analysis.{}", e.field), e.message))?;
        c.analysis = a;
    }
    if let Some(r) = p.rolling_deploy_config {
        if let Some(st) = &r.rolling_deploy_strategy {
            if st != "REPLICA" {
                return Err(err(
                    format!("{at}.rolling_deploy_config.rolling_deploy_strategy"),
                    format!("{st:?}: only \"REPLICA\" is supported"),
                ));
            }
        }
        c.rolling_config = RollingConfig::from_options(
            r.max_surge_percent,
            r.max_unavailable_percent,
            r.stabilization_time_seconds,
            r.replica_overhead_percent,
        )
        .map_err(|e| {
            err(
                format!("{at}.rolling_deploy_config.{}", e.field()),
                e.message(),
            )
        })?;
    }
    Ok(c)
}

fn check_weights(
    at: &str,
    raw: &BTreeMap<String, f64>,
    deployments: &[&str],
) -> Result<BTreeMap<String, u32>, ConfigError> {
    for (dep, w) in raw {
        if !deployments.contains(&dep.as_str()) {
            let known = deployments;
            return Err(err(
                format!("{at}.weights.{dep}"),
                format!(
                    "deployment {dep:?} is not declared (declared: {})",
                    known.join(", ")
                ),
            ));
        }
        if !w.is_finite() || *w < 0.0 {
            return Err(err(
                format!("{at}.weights.{dep}"),
                format!("{w} is not a non-negative number"),
            ));
        }
    }
    if raw.values().sum::<f64>() <= 0.0 {
        return Err(err(
            format!("{at}.weights"),
            "at least one weight must be above zero",
        ));
    }
    Ok(normalize_weights(raw))
}

fn check_routing(spec: &RoutingSpec) -> Result<(), ConfigError> {
    // The router validates again; this maps its messages onto config wording.
    crate::routing::Router::new(crate::metrics::Metrics::new())
        .apply(spec)
        .map(|_| ())
        .map_err(|e| err("models", e.to_string()))
}

fn check_id(field: &str, id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{id:?} must be 1-128 characters of letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// The shared-store settings as given (file or flags), before checking.
#[derive(Debug, Clone, Default)]
pub struct SharedStoreFlags {
    pub store: Option<String>,
    pub prefix: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub lease_seconds: Option<u64>,
    pub instance_name: Option<String>,
    /// TLS to etcd: CA file, and a client certificate and key.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl SharedStoreFlags {
    /// Checks them; field names are `{section}store` etc. for the file, `--store` etc. for
    /// flags (`section` "--"). `base` is what the file set, which flags override.
    fn settings(
        &self,
        section: &str,
        base: Option<crate::cluster::SharedStoreSettings>,
    ) -> Result<Option<crate::cluster::SharedStoreSettings>, ConfigError> {
        use crate::cluster::settings as cs;
        let flag = section == "--";
        let name = |n: &str| {
            if flag {
                format!("--{}", n.replace('_', "-"))
            } else {
                format!("{section}{n}")
            }
        };
        let mut out = base;
        if let Some(v) = &self.store {
            let f = name("store");
            match cs::parse_store(&f, v).map_err(|m| err(f.clone(), strip_field(&f, m)))? {
                None => out = None,
                Some(endpoints) => {
                    let mut s = out.unwrap_or(crate::cluster::SharedStoreSettings {
                        endpoints: Vec::new(),
                        prefix: cs::DEFAULT_PREFIX.into(),
                        credential: None,
                        lease_ttl_seconds: cs::DEFAULT_LEASE_TTL_SECONDS,
                        instance_name: None,
                        tls: None,
                    });
                    s.endpoints = endpoints;
                    out = Some(s);
                }
            }
        }
        let given = [
            (self.prefix.is_some(), "store_prefix"),
            (self.user.is_some(), "store_user"),
            (self.password.is_some(), "store_password"),
            (self.lease_seconds.is_some(), "leader_lease_seconds"),
            (self.instance_name.is_some(), "instance_name"),
            (self.ca.is_some(), "store_ca"),
            (self.cert.is_some(), "store_cert"),
            (self.key.is_some(), "store_key"),
        ];
        let Some(mut s) = out else {
            if let Some((_, n)) = given.iter().find(|(g, _)| *g) {
                return Err(err(
                    name(n),
                    format!(
                        "only applies with a shared store; set {} = etcd://HOST:PORT",
                        name("store")
                    ),
                ));
            }
            return Ok(None);
        };
        if let Some(p) = &self.prefix {
            let f = name("store_prefix");
            s.prefix = cs::check_prefix(&f, p).map_err(|m| err(f.clone(), strip_field(&f, m)))?;
        }
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => s.credential = Some((u.clone(), p.clone())),
            (Some(_), None) => {
                return Err(err(
                    name("store_password"),
                    "is required with a store user (SWITCHYARD_STORE_PASSWORD keeps it off the command line)",
                ))
            }
            (None, Some(_)) => return Err(err(name("store_user"), "is required with a store password")),
            (None, None) => {}
        }
        if let Some(t) = self.lease_seconds {
            let f = name("leader_lease_seconds");
            s.lease_ttl_seconds =
                cs::check_lease_ttl(&f, t).map_err(|m| err(f.clone(), strip_field(&f, m)))?;
        }
        if let Some(n) = &self.instance_name {
            check_id(&name("instance_name"), n)?;
            s.instance_name = Some(n.clone());
        }
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (Some(_), None) => {
                return Err(err(
                    name("store_key"),
                    "is required with a store client certificate",
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    name("store_cert"),
                    "is required with a store client key",
                ))
            }
            (None, None) => None,
        };
        match (&self.ca, identity) {
            (Some(ca), identity) => {
                s.tls = Some(crate::cluster::settings::StoreTls {
                    ca: ca.clone(),
                    identity,
                })
            }
            (None, Some(_)) => {
                return Err(err(
                    name("store_ca"),
                    "is required with a client certificate (the CA that signed etcd's certificate)",
                ))
            }
            (None, None) => {}
        }
        for (flag, path) in s.tls.iter().flat_map(|t| {
            std::iter::once(("store_ca", &t.ca)).chain(
                t.identity
                    .iter()
                    .flat_map(|(c, k)| [("store_cert", c), ("store_key", k)]),
            )
        }) {
            if let Err(e) = std::fs::metadata(path) {
                return Err(err(name(flag), format!("{}: {e}", path.display())));
            }
        }
        Ok(Some(s))
    }
}

/// Messages from the cluster settings start with the field name; ConfigError adds it again.
fn strip_field(field: &str, m: String) -> String {
    m.strip_prefix(&format!("{field}: "))
        .map(str::to_owned)
        .unwrap_or(m)
}

/// On a shared store every instance would start its own process replicas: refused by name.
fn check_shared_store(s: &Settings) -> Result<(), ConfigError> {
    if s.shared_store.is_none() {
        return Ok(());
    }
    for (mi, m) in s.models.iter().enumerate() {
        for (di, d) in m.deployments.iter().enumerate() {
            if matches!(d.provider, ProviderSpec::Process { .. }) {
                return Err(err(
                    format!("models[{mi}].deployments[{di}].command"),
                    format!("deployment {:?} runs process replicas, which cannot run with a shared store (every instance would start its own); list its endpoints under `replicas`, or run this instance with the embedded store", d.id),
                ));
            }
        }
    }
    if s.api_process_deployments {
        return Err(err(
            "server.api_process_deployments",
            "cannot be on with a shared store: process replicas would start on every instance",
        ));
    }
    Ok(())
}

fn check_api_key(field: &str, key: String) -> Result<String, ConfigError> {
    if key.len() < 16 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(err(field, "must be at least 16 characters with no spaces"));
    }
    Ok(key)
}

fn check_workers(field: &str, w: usize) -> Result<usize, ConfigError> {
    match w {
        0 => Ok(default_workers()),
        1..=256 => Ok(w),
        _ => Err(err(
            field,
            format!("{w} is out of range 0..=256 (0 = one per core)"),
        )),
    }
}

fn parse_addr(field: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| {
        err(
            field,
            format!("{v:?} is not an IP:port address (e.g. 127.0.0.1:8080)"),
        )
    })
}

/// `HOST:PORT` where HOST may be a name; resolved once, at start.
fn resolve_endpoint(field: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = v.parse() {
        return Ok(a);
    }
    let bad = || err(field, format!("{v:?} is not a HOST:PORT replica address"));
    if !v.contains(':') {
        return Err(bad());
    }
    v.to_socket_addrs()
        .map_err(|_| bad())?
        .next()
        .ok_or_else(bad)
}

/// A worker's time slice: 100 µs asked of the scheduler by default (benches/README.md, issue
/// 15, sixteenth pass).
pub const DEFAULT_WORKER_SLICE_MICROSECONDS: u64 = 100;

/// 0: the kernel's default slice; otherwise within what the kernel accepts (100 µs to 100 ms).
fn worker_slice(field: &str, us: u64) -> Result<Option<Duration>, ConfigError> {
    let (min, max) = (
        crate::sched::MIN_SLICE.as_micros() as u64,
        crate::sched::MAX_SLICE.as_micros() as u64,
    );
    match us {
        0 => Ok(None),
        _ if (min..=max).contains(&us) => Ok(Some(Duration::from_micros(us))),
        _ => Err(err(
            field,
            format!("{us} is out of range {min}..={max} microseconds (0 = the kernel's default)"),
        )),
    }
}

/// Connections a worker takes before the next one gets any (benches/README.md, issue 15,
/// nineteenth pass).
pub const DEFAULT_WORKER_FILL_CONNECTIONS: usize = 8;

fn worker_fill(field: &str, n: usize) -> Result<usize, ConfigError> {
    if n <= 1_000_000 {
        Ok(n)
    } else {
        Err(err(
            field,
            format!("{n} is out of range 0..=1000000 connections (0 = where the kernel puts them)"),
        ))
    }
}

fn seconds(field: &str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if v.is_finite() && v >= min && v <= max {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(err(
            field,
            format!("{v} is out of range {min}..={max} seconds"),
        ))
    }
}

/// 0 disables the timeout.
fn optional_seconds(field: &str, v: f64) -> Result<Option<Duration>, ConfigError> {
    if v == 0.0 {
        return Ok(None);
    }
    seconds(field, v, 0.001, 86_400.0).map(Some)
}

// ---------------------------------------------------------------------------------------------
// Flags.

/// The `serve` flags that describe routing and the listeners; `None` = not given.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub workers: Option<usize>,
    pub model: Option<String>,
    pub environment: Option<String>,
    pub upstreams: Vec<String>,
    pub current: Option<String>,
    pub weights: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub no_deployment_header: bool,
    pub no_yield_before_sleep: bool,
    pub worker_slice_microseconds: Option<u64>,
    pub worker_fill_connections: Option<usize>,
    pub shutdown_grace_seconds: Option<f64>,
    pub api_key: Option<String>,
    pub data_dir: Option<PathBuf>,
    /// Used when neither the flag nor the file names a data directory.
    pub default_data_dir: Option<PathBuf>,
    /// Keep no state across restarts (overrides any data directory).
    pub ephemeral: bool,
    /// `--store` and its companions (override the file's).
    pub shared_store: SharedStoreFlags,
}

impl ServeFlags {
    /// Builds settings: from the file when `--config` is given (listener and TLS flags
    /// override it), otherwise from the flags alone.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        let mut s = match &self.config {
            Some(path) => {
                for (given, flag) in [
                    (!self.upstreams.is_empty(), "--upstream"),
                    (self.current.is_some(), "--current"),
                    (!self.weights.is_empty(), "--weight"),
                    (self.model.is_some(), "--model"),
                    (self.environment.is_some(), "--environment"),
                ] {
                    if given {
                        return Err(err(
                            flag,
                            "cannot be combined with --config: declare models in the file",
                        ));
                    }
                }
                load_file(path)?
            }
            None => Settings::with_models(self.models_from_flags()?),
        };
        if let Some(v) = &self.listen {
            s.listen = parse_addr("--listen", v)?;
        }
        if let Some(v) = &self.admin_listen {
            s.admin_listen = parse_addr("--admin-listen", v)?;
        }
        if let Some(w) = self.workers {
            s.workers = check_workers("--workers", w)?;
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                s.tls = Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (Some(_), None) => return Err(err("--tls-key", "is required with --tls-cert")),
            (None, Some(_)) => return Err(err("--tls-cert", "is required with --tls-key")),
            (None, None) => {}
        }
        if let Some(d) = self.data_dir.clone() {
            s.data_dir = Some(d);
        }
        if s.data_dir.is_none() {
            // One default directory per admin address, so two instances on one host (which
            // must differ in admin port) each keep their own state; the default address keeps
            // the directory earlier versions used.
            s.data_dir = self.default_data_dir.clone().map(|d| {
                if s.admin_listen == parse_listen(DEFAULT_ADMIN_LISTEN) {
                    d
                } else {
                    d.join(format!(
                        "admin-{}-{}",
                        s.admin_listen.ip(),
                        s.admin_listen.port()
                    ))
                }
            });
        }
        if self.ephemeral {
            s.data_dir = None;
        }
        if let Some(k) = self.api_key.clone() {
            s.api_key = Some(check_api_key("SWITCHYARD_API_KEY", k)?);
        }
        if self.no_deployment_header {
            s.deployment_header = false;
        }
        if self.no_yield_before_sleep {
            s.yield_before_sleep = false;
        }
        if let Some(v) = self.worker_slice_microseconds {
            s.worker_slice = worker_slice("--worker-slice-microseconds", v)?;
        }
        if let Some(v) = self.worker_fill_connections {
            s.worker_fill_connections = worker_fill("--worker-fill-connections", v)?;
        }
        if let Some(v) = self.shutdown_grace_seconds {
            s.shutdown_grace = seconds("--shutdown-grace-seconds", v, 0.0, 86_400.0)?;
        }
        s.shared_store = self.shared_store.settings("--", s.shared_store.take())?;
        check_shared_store(&s)?;
        if s.listen == s.admin_listen && s.listen.port() != 0 {
            return Err(err(
                "--admin-listen",
                format!("{} is also the proxy listener", s.admin_listen),
            ));
        }
        Ok(s)
    }

    fn models_from_flags(&self) -> Result<Vec<ModelConfig>, ConfigError> {
        let model = self.model.clone().unwrap_or_else(|| "default".into());
        let environment = self
            .environment
            .clone()
            .unwrap_or_else(|| "production".into());
        check_id("--model", &model)?;
        check_id("--environment", &environment)?;
        if self.upstreams.is_empty() {
            return Err(err("--upstream", "give at least one --upstream DEPLOYMENT=HOST:PORT[,HOST:PORT...] (or --config FILE)"));
        }
        let mut deployments: Vec<DeploymentConfig> = Vec::new();
        for u in &self.upstreams {
            let (id, addrs) = u.split_once('=').ok_or_else(|| {
                err(
                    "--upstream",
                    format!("{u:?} is not DEPLOYMENT=HOST:PORT[,HOST:PORT...]"),
                )
            })?;
            check_id("--upstream", id)?;
            if deployments.iter().any(|d| d.id == id) {
                return Err(err(
                    "--upstream",
                    format!("deployment {id:?} is given twice"),
                ));
            }
            let replicas = addrs
                .split(',')
                .filter(|a| !a.trim().is_empty())
                .map(|a| resolve_endpoint("--upstream", a.trim()))
                .collect::<Result<Vec<_>, _>>()?;
            deployments.push(DeploymentConfig {
                id: id.to_owned(),
                provider: ProviderSpec::Static {
                    endpoints: replicas,
                },
                scale_command: None,
            });
        }
        let listed: Vec<&str> = deployments.iter().map(|d| d.id.as_str()).collect();
        let current = match (&self.current, self.weights.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    "--current",
                    "give either --current or --weight, not both",
                ))
            }
            (Some(c), true) => Some(c.clone()),
            (None, true) if deployments.len() == 1 => Some(deployments[0].id.clone()),
            (None, true) => return Err(err(
                "--current",
                "several --upstream deployments: say which gets traffic with --current or --weight",
            )),
            (None, false) => None,
        };
        let traffic = match current {
            Some(c) => {
                let Some(d) = deployments.iter().find(|d| d.id == c) else {
                    return Err(err(
                        "--current",
                        format!(
                            "deployment {c:?} is not given with --upstream (given: {})",
                            listed.join(", ")
                        ),
                    ));
                };
                let replicas = match &d.provider {
                    ProviderSpec::Static { endpoints } => endpoints.len() as u32,
                    ProviderSpec::Process { .. } => 1,
                };
                Traffic::Current {
                    deployment: c,
                    replicas,
                }
            }
            None => {
                let mut raw = BTreeMap::new();
                for w in &self.weights {
                    let (dep, n) = w
                        .split_once('=')
                        .ok_or_else(|| err("--weight", format!("{w:?} is not DEPLOYMENT=N")))?;
                    let n: f64 = n
                        .trim()
                        .parse()
                        .map_err(|_| err("--weight", format!("{n:?} in {w:?} is not a number")))?;
                    raw.insert(dep.to_owned(), n);
                }
                Traffic::Weights(
                    check_weights("--weight", &raw, &listed)
                        .map_err(|e| err("--weight", e.message))?,
                )
            }
        };
        let models = vec![ModelConfig {
            id: model,
            hosts: vec![],
            deployments,
            environments: vec![EnvironmentConfig {
                name: environment,
                hosts: vec![],
                traffic,
                promotion: PromotionConfig {
                    rolling: false,
                    ..PromotionConfig::default()
                },
                autoscaling: None,
            }],
        }];
        check_routing(&initial_routing(&models))?;
        Ok(models)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(upstreams: &[&str], weights: &[&str]) -> ServeFlags {
        ServeFlags {
            upstreams: upstreams.iter().map(|s| s.to_string()).collect(),
            weights: weights.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn flags_build_a_weighted_split() {
        let s = flags(
            &["v1=127.0.0.1:1,127.0.0.1:2", "v2=127.0.0.1:3"],
            &["v1=90", "v2=10"],
        )
        .into_settings()
        .unwrap();
        let r = initial_routing(&s.models);
        let m = &r.models[0];
        assert_eq!(m.id, "default");
        assert_eq!(m.environments[0].name, "production");
        assert_eq!(m.deployments[0].replicas.len(), 2);
        assert_eq!(m.environments[0].weights["v1"], 900_000);
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
    }

    #[test]
    fn flag_errors_name_the_flag_and_value() {
        let e = flags(&["v1=127.0.0.1:1"], &["v2=10"])
            .into_settings()
            .unwrap_err();
        assert_eq!(e.field, "--weight");
        assert!(e.message.contains("\"v2\""), "{e}");
        let e = flags(&["v1=nonsense"], &[]).into_settings().unwrap_err();
        assert!(e.to_string().contains("\"nonsense\""), "{e}");
        let e = flags(&["v1=127.0.0.1:1"], &["v1=x"])
            .into_settings()
            .unwrap_err();
        assert!(e.to_string().contains("\"x\""), "{e}");
        let e = flags(&["v1=127.0.0.1:1", "v2=127.0.0.1:2"], &[])
            .into_settings()
            .unwrap_err();
        assert_eq!(e.field, "--current");
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.listen = Some("localhost".into());
        let e = f.into_settings().unwrap_err();
        assert_eq!(e.field, "--listen");
    }

    #[test]
    fn file_parses_and_validates() {
        let s = parse_str(
            r#"
            [server]
            listen = "127.0.0.1:0"
            [upstream]
            body_idle_timeout_seconds = 0
            [[models]]
            id = "llama"
            hosts = ["llama.local"]
            [[models.deployments]]
            id = "v1"
            replicas = ["127.0.0.1:9001"]
            [[models.deployments]]
            id = "v2"
            replicas = ["localhost:9002"]
            [[models.environments]]
            name = "production"
            weights = { v1 = 3, v2 = 1 }
            [[models.environments]]
            name = "staging"
            current = "v2"
            "#,
        )
        .unwrap();
        assert_eq!(s.upstream.body_idle_timeout, None);
        assert_eq!(
            initial_routing(&s.models).models[0].environments[0].weights["v2"],
            250_000
        );
    }

    /// One model, one deployment, one environment: the smallest valid file.
    const ONE_MODEL: &str = r#"
        [[models]]
        id = "m"
        [[models.deployments]]
        id = "v1"
        replicas = ["127.0.0.1:9001"]
        [[models.environments]]
        name = "production"
        current = "v1"
    "#;

    /// On by default; the file's `false` or the flag turns it off; a wrong type names its line.
    #[test]
    fn yield_before_sleep_defaults_on_and_the_file_or_the_flag_turns_it_off() {
        let model = ONE_MODEL;
        assert!(parse_str(model).unwrap().yield_before_sleep);
        let off = parse_str(&format!("[server]\nyield_before_sleep = false\n{model}")).unwrap();
        assert!(!off.yield_before_sleep);
        let e = parse_str(&format!("[server]\nyield_before_sleep = \"no\"\n{model}")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let flags = ServeFlags {
            upstreams: vec!["v1=127.0.0.1:9001".into()],
            no_yield_before_sleep: true,
            ..ServeFlags::default()
        };
        assert!(!flags.into_settings().unwrap().yield_before_sleep);
    }

    /// 100 µs by default; 0 leaves the kernel's slice; out of the kernel's range names the
    /// field and the range; the flag overrides the file.
    #[test]
    fn worker_slice_defaults_to_100_microseconds_and_0_leaves_the_kernels() {
        assert_eq!(
            parse_str(ONE_MODEL).unwrap().worker_slice,
            Some(Duration::from_micros(100))
        );
        let file = |v: &str| format!("[server]\nworker_slice_microseconds = {v}\n{ONE_MODEL}");
        assert_eq!(parse_str(&file("0")).unwrap().worker_slice, None);
        assert_eq!(
            parse_str(&file("2000")).unwrap().worker_slice,
            Some(Duration::from_millis(2))
        );
        for bad in ["50", "100001"] {
            let e = parse_str(&file(bad)).unwrap_err().to_string();
            assert!(
                e.contains("server.worker_slice_microseconds") && e.contains("100..=100000"),
                "{e}"
            );
        }
        let flags = |v| ServeFlags {
            upstreams: vec!["v1=127.0.0.1:9001".into()],
            worker_slice_microseconds: Some(v),
            ..ServeFlags::default()
        };
        assert_eq!(flags(0).into_settings().unwrap().worker_slice, None);
        let e = flags(7).into_settings().unwrap_err().to_string();
        assert!(e.contains("--worker-slice-microseconds"), "{e}");
    }

    /// 8 by default; 0 leaves placement to the kernel; too large names the field; the flag
    /// overrides the file.
    #[test]
    fn worker_fill_defaults_to_8_connections_and_the_flag_overrides_the_file() {
        assert_eq!(parse_str(ONE_MODEL).unwrap().worker_fill_connections, 8);
        let file = |v: &str| format!("[server]\nworker_fill_connections = {v}\n{ONE_MODEL}");
        assert_eq!(parse_str(&file("0")).unwrap().worker_fill_connections, 0);
        let e = parse_str(&file("2000000")).unwrap_err().to_string();
        assert!(
            e.contains("server.worker_fill_connections") && e.contains("0..=1000000"),
            "{e}"
        );
        let e = parse_str(&file("-1")).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("-1"), "{e}");
        let flags = ServeFlags {
            upstreams: vec!["v1=127.0.0.1:9001".into()],
            worker_fill_connections: Some(0),
            ..ServeFlags::default()
        };
        assert_eq!(flags.into_settings().unwrap().worker_fill_connections, 0);
    }

    #[test]
    fn analysis_settings_come_from_the_file_with_false_turning_a_check_off() {
        let file = |analysis: &str| {
            format!("{ONE_MODEL}\n[models.environments.promotion_settings.analysis]\n{analysis}\n")
        };
        let s = parse_str(&file(
            "enabled = true\nmax_error_rate_percent = 5\nmax_p99_itl_ratio = false\non_failure = \"PAUSE\"",
        ))
        .unwrap();
        let a = &s.models[0].environments[0].promotion.analysis;
        assert!(a.enabled);
        assert_eq!(a.max_error_rate_percent, Some(5.0));
        assert_eq!(a.max_p99_itl_ratio, None);
        assert_eq!(
            a.max_p99_ttft_ratio,
            Some(1.5),
            "unnamed fields keep their defaults"
        );
        let e = parse_str(&file("interval_seconds = 0")).unwrap_err();
        assert_eq!(
            e.field,
            "models[0].environments[0].promotion_settings.analysis.interval_seconds"
        );
        let e = parse_str(&file("max_p99_ttft_ratio = -2")).unwrap_err();
        assert!(e.field.ends_with("analysis.max_p99_ttft_ratio"), "{e}");
        assert!(parse_str(&file("on_failure = \"SHRUG\"")).is_err());
    }

    #[test]
    fn file_errors_name_the_field() {
        let e = parse_str("[server]\nlisten = \"nope\"\n").unwrap_err();
        assert_eq!(e.field, "server.listen");
        let e = parse_str("[server]\nlisen = \"x\"\n").unwrap_err();
        assert!(
            e.to_string().contains("lisen") && e.to_string().contains("line 2"),
            "{e}"
        );
        let e = parse_str(
            "[[models]]\nid = \"m\"\n[[models.deployments]]\nid = \"v1\"\n[[models.environments]]\nname = \"production\"\nweights = { v1 = 1, v9 = 1 }\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "models[0].environments[0].weights.v9");
        let e = parse_str("[upstream]\nconnect_timeout_seconds = -1\n").unwrap_err();
        assert_eq!(e.field, "upstream.connect_timeout_seconds");
        let e = parse_str("[[models]]\nid = \"bad id\"\n").unwrap_err();
        assert_eq!(e.field, "models[0].id");
    }

    #[test]
    fn instance_types_are_declared_per_deployment() {
        let base = "[[models]]\nid = \"m\"\n[[models.deployments]]\nid = \"v1\"\nreplicas = [\"127.0.0.1:9001\"]\n";
        let env = "[[models.environments]]\nname = \"production\"\ncurrent = \"v1\"\n";
        let s = parse_str(&format!(
            "{base}[models.deployments.instance_type]\nid = \"L4:4x16\"\nmemory_limit_mib = 16384\nmillicpu_limit = 4000\ngpu_count = 1\ngpu_type = \"L4\"\n{env}"
        ))
        .unwrap();
        let it = &s.instance_types[&("m".to_owned(), "v1".to_owned())];
        assert_eq!((it.id.as_str(), it.name.as_str()), ("L4:4x16", "L4:4x16"));
        assert_eq!((it.memory_limit_mib, it.gpu_count), (16384, 1));
        let e = parse_str(&format!(
            "{base}[models.deployments.instance_type]\nid = \"cpu\"\nmemory_limit_mib = 1\nmillicpu_limit = 1\ngpu_type = \"L4\"\n{env}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "models[0].deployments[0].instance_type.gpu_count");
        let e = parse_str(&format!(
            "{base}[models.deployments.instance_type]\nid = \"cpu\"\nmemory_limit_mib = 1\n{env}"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("millicpu_limit"), "{e}");
    }

    #[test]
    fn shared_store_flags_are_checked_by_name() {
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://127.0.0.1:2379,127.0.0.1:22379".into());
        f.shared_store.lease_seconds = Some(4);
        let s = f.into_settings().unwrap();
        let shared = s.shared_store.unwrap();
        assert_eq!(shared.endpoints.len(), 2);
        assert_eq!(shared.prefix, "/switchyard/");
        assert_eq!(shared.lease_ttl_seconds, 4);

        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://nohost".into());
        assert_eq!(f.into_settings().unwrap_err().field, "--store");
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://127.0.0.1:2379".into());
        f.shared_store.prefix = Some("relative/".into());
        let e = f.into_settings().unwrap_err();
        assert_eq!(e.field, "--store-prefix", "{e}");
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.lease_seconds = Some(10);
        let e = f.into_settings().unwrap_err();
        assert_eq!(e.field, "--leader-lease-seconds");
        assert!(e.message.contains("shared store"), "{e}");
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://127.0.0.1:2379".into());
        f.shared_store.user = Some("root".into());
        assert_eq!(f.into_settings().unwrap_err().field, "--store-password");

        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://127.0.0.1:2379".into());
        f.shared_store.cert = Some("/c.pem".into());
        assert_eq!(f.into_settings().unwrap_err().field, "--store-key");
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.shared_store.store = Some("etcd://127.0.0.1:2379".into());
        f.shared_store.ca = Some("/no/such/ca.pem".into());
        let e = f.into_settings().unwrap_err();
        assert_eq!(e.field, "--store-ca");
        assert!(e.message.contains("/no/such/ca.pem"), "{e}");

        // Process replicas are refused by name on a shared store.
        let e = parse_str(
            r#"
            [server]
            store = "etcd://127.0.0.1:2379"
            [[models]]
            id = "m"
            [[models.deployments]]
            id = "v1"
            command = ["srv", "--port", "{port}"]
            [[models.environments]]
            name = "production"
            current = "v1"
            "#,
        )
        .and_then(|s| check_shared_store(&s).map(|_| s))
        .unwrap_err();
        assert_eq!(e.field, "models[0].deployments[0].command", "{e}");
        assert!(e.message.contains("\"v1\""), "{e}");
    }

    #[test]
    fn default_data_directories_differ_by_admin_address() {
        let base = std::path::PathBuf::from("/state/switchyard");
        let dir = |admin: Option<&str>| {
            let mut f = flags(&["v1=127.0.0.1:1"], &[]);
            f.default_data_dir = Some(base.clone());
            f.admin_listen = admin.map(str::to_owned);
            f.into_settings().unwrap().data_dir.unwrap()
        };
        assert_eq!(
            dir(None),
            base,
            "the default admin address keeps the old directory"
        );
        assert_eq!(
            dir(Some("127.0.0.1:9191")),
            base.join("admin-127.0.0.1-9191")
        );
        assert_ne!(dir(Some("127.0.0.1:9191")), dir(Some("127.0.0.1:9192")));
        let mut f = flags(&["v1=127.0.0.1:1"], &[]);
        f.default_data_dir = Some(base.clone());
        f.admin_listen = Some("127.0.0.1:9191".into());
        f.data_dir = Some("/explicit".into());
        assert_eq!(
            f.into_settings().unwrap().data_dir.unwrap(),
            std::path::PathBuf::from("/explicit")
        );
    }

    #[test]
    fn scale_commands_are_checked_by_name() {
        let base = |extra: &str, provider: &str| {
            parse_str(&format!(
                r#"
                [[models]]
                id = "m"
                [[models.deployments]]
                id = "v1"
                {provider}
                {extra}
                [[models.environments]]
                name = "production"
                current = "v1"
                replicas = 1
                "#
            ))
        };
        let s = base(
            r#"scale_command = ["kubectl", "scale", "deployment/{deployment}", "--replicas={replicas}"]"#,
            "replicas = []",
        )
        .unwrap();
        assert!(s.models[0].deployments[0].scale_command.is_some());
        let e = base(r#"scale_command = ["kubectl", "scale"]"#, "replicas = []").unwrap_err();
        assert_eq!(e.field, "models[0].deployments[0].scale_command", "{e}");
        assert!(e.message.contains("{replicas}"), "{e}");
        let e = base(
            r#"scale_command = ["x", "{replicas}"]"#,
            r#"command = ["srv", "{port}"]"#,
        )
        .unwrap_err();
        assert_eq!(e.field, "models[0].deployments[0].scale_command", "{e}");
        // No listed endpoints: the environment must say how many register.
        let e = parse_str(
            r#"
            [[models]]
            id = "m"
            [[models.deployments]]
            id = "v1"
            replicas = []
            [[models.environments]]
            name = "production"
            current = "v1"
            "#,
        )
        .unwrap_err();
        assert_eq!(e.field, "models[0].environments[0].replicas", "{e}");
    }
}
