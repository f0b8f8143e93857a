//! Starting and stopping `switchyard serve`: the data-plane workers and the admin listener.
//!
//! Each data-plane worker is an OS thread running a current-thread tokio runtime with its own
//! `SO_REUSEPORT` listener and its own upstream connection pool; the kernel spreads incoming
//! connections across them, and a worker hands a connection it accepted to another worker
//! when [`crate::placement`] says so. Nothing on the request path is shared between workers
//! except the routing snapshot (read through `arc-swap`) and atomic counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http::{HeaderValue, Request};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::admin;
use crate::admin::Health;
use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;
use crate::proxy::client_body::ClientBody;
use crate::proxy::client_conn::{self, Protocols, RequestGuard};
use crate::proxy::{forward, tls, ConnInfo, ProxyContext};
use crate::replicas::ProviderTiming;
use crate::rollout::controller::{Controller, ModelSetup};
use crate::routing::Router;
use prometheus::IntGauge;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
}

/// A started proxy. Dropping it without [`RunningProxy::shutdown`] leaves the threads running.
pub struct RunningProxy {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The management API key (configured, or generated at start).
    pub api_key: Arc<str>,
    router: Arc<Router>,
    health: Arc<Health>,
    stop: watch::Sender<bool>,
    workers: Vec<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
    admin_stop: Option<oneshot::Sender<()>>,
    controller: Arc<Controller>,
    control: Option<JoinHandle<()>>,
    control_stop: watch::Sender<bool>,
}

impl RunningProxy {
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The rollout controller: promotions and control actions.
    pub fn controller(&self) -> &Arc<Controller> {
        &self.controller
    }

    /// Stops accepting, turns `/readyz` to 503 and lets in-flight requests finish.
    pub fn begin_shutdown(&self) {
        self.health.start_shutdown();
        let _ = self.stop.send(true);
    }

    /// Blocks until every worker has drained (or its grace period ran out).
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // Traffic has drained: now stop the replicas switchyard started.
        self.control_stop.send_replace(true);
        if let Some(c) = self.control.take() {
            let _ = c.join();
        }
        drop(self.admin_stop.take());
        if let Some(a) = self.admin.take() {
            let _ = a.join();
        }
    }

    /// Graceful shutdown from async code: [`Self::begin_shutdown`] then wait on a blocking thread.
    pub async fn shutdown(self) {
        self.begin_shutdown();
        let _ = tokio::task::spawn_blocking(move || self.wait()).await;
    }
}

/// Binds every listener (so errors surface before anything runs), installs the routing from
/// `settings` and starts the workers and the admin listener.
pub fn start(settings: Settings) -> Result<RunningProxy, StartError> {
    let tls = settings.tls.as_ref().map(tls::server_config).transpose()?;
    let metrics = Metrics::new();
    let router = Arc::new(Router::new(metrics.clone()));

    let listeners = bind_reuseport(settings.listen, settings.workers)?;
    let listen_addr = listeners[0]
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
    let admin_listener =
        std::net::TcpListener::bind(settings.admin_listen).map_err(|source| StartError::Bind {
            addr: settings.admin_listen,
            source,
        })?;
    admin_listener
        .set_nonblocking(true)
        .map_err(|source| StartError::Bind {
            addr: settings.admin_listen,
            source,
        })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: settings.admin_listen,
            source,
        })?;

    // Bound everything first: a busy port must not leave replica processes behind.
    let (control_stop, control_stop_rx) = watch::channel(false);
    let (controller, control) = start_control(
        &settings,
        router.clone(),
        control_stop_rx,
        (admin_addr, listen_addr),
    )?;

    let ctx = Arc::new(ProxyContext {
        router: router.clone(),
        upstream: settings.upstream.clone(),
        deployment_header: settings.deployment_header,
    });
    let health = Arc::new(Health::default());
    let (stop, stop_rx) = watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);

    let mut inboxes = Vec::with_capacity(listeners.len());
    let mut peers = Vec::with_capacity(listeners.len());
    for i in 0..listeners.len() {
        let (tx, rx) = mpsc::unbounded_channel();
        inboxes.push(rx);
        peers.push(Peer {
            connections: metrics.worker_connections(i),
            inbox: tx,
        });
    }
    let peers: Arc<[Peer]> = peers.into();
    let mut workers = Vec::with_capacity(listeners.len());
    for ((i, listener), inbox) in listeners.into_iter().enumerate().zip(inboxes) {
        let worker = Worker {
            index: i,
            peers: peers.clone(),
            fill: settings.worker_fill_connections,
            ctx: ctx.clone(),
            tls: acceptor.clone(),
            stop: stop_rx.clone(),
            grace: settings.shutdown_grace,
            header_timeout: settings.client_header_timeout,
            yield_before_sleep: settings.yield_before_sleep,
            slice: settings.worker_slice,
        };
        let handle = std::thread::Builder::new()
            .name(format!("switchyard-worker-{i}"))
            .spawn(move || worker.run(listener, inbox))
            .map_err(StartError::Thread)?;
        workers.push(handle);
    }
    let api_key: Arc<str> = settings
        .api_key
        .clone()
        .unwrap_or_else(crate::api::auth::generate)
        .into();
    let admin_state = admin::AdminState::new(
        metrics,
        health.clone(),
        crate::api::ApiState {
            controller: controller.clone(),
            api_key: api_key.clone(),
            started: std::time::SystemTime::now(),
            instance_types: Arc::new(settings.instance_types.clone()),
            process_deployments: settings.api_process_deployments,
            figures: crate::api::figures::Figures::new(router.clone()),
            admin_addr,
            proxy_addr: listen_addr,
        },
        settings.admin_header_timeout,
    );
    let (admin_stop, admin_stop_rx) = oneshot::channel();
    let admin = std::thread::Builder::new()
        .name("switchyard-admin".into())
        .spawn(move || admin::run(admin_listener, admin_state, admin_stop_rx))
        .map_err(StartError::Thread)?;

    tracing::info!(%listen_addr, %admin_addr, workers = workers.len(), tls = acceptor.is_some(), "switchyard is serving");
    Ok(RunningProxy {
        listen_addr,
        admin_addr,
        api_key,
        router,
        health,
        stop,
        workers,
        admin: Some(admin),
        admin_stop: Some(admin_stop),
        controller,
        control: Some(control),
        control_stop,
    })
}

/// Starts the control thread (controller and replica providers) and waits for the initial
/// routing to be installed.
fn start_control(
    settings: &Settings,
    router: Arc<Router>,
    mut stop: watch::Receiver<bool>,
    (admin_addr, listen_addr): (SocketAddr, SocketAddr),
) -> Result<(Arc<Controller>, JoinHandle<()>), StartError> {
    let models: Vec<ModelSetup> = settings.models.iter().map(ModelSetup::from).collect();
    let shared = settings.shared_store.clone();
    let store: Option<Arc<dyn crate::store::Store>> = match &settings.data_dir {
        // With a shared store the state lives in etcd only.
        _ if shared.is_some() => None,
        Some(dir) => Some(Arc::new(crate::store::RedbStore::open(dir).map_err(
            |e| {
                StartError::Config(ConfigError {
                    field: "data_dir".into(),
                    message: e.to_string(),
                })
            },
        )?)),
        None => None,
    };
    let timing = ProviderTiming {
        static_probe_interval: settings.upstream.static_probe_interval,
        ..ProviderTiming::default()
    };
    let stop_timeout = timing.drain_timeout.min(Duration::from_secs(30)) + timing.stop_grace;
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::Builder::new()
        .name("switchyard-control".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("cannot build the control runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let controller = match Controller::start(&models, router, timing, store) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                if let Some(shared) = &shared {
                    let started =
                        match crate::cluster::Cluster::connect(shared, admin_addr, listen_addr) {
                            Ok(cluster) => {
                                controller.attach_cluster(cluster.clone());
                                cluster.start(controller.clone(), stop.clone()).await
                            }
                            Err(e) => Err(e),
                        };
                    if let Err(e) = started {
                        let _ = tx.send(Err(format!("store: {e}")));
                        return;
                    }
                }
                let _ = tx.send(Ok(controller.clone()));
                let run = tokio::spawn(controller.clone().run(stop.clone()));
                let _ = stop.wait_for(|s| *s).await;
                let _ = run.await;
                controller.stop_replicas(stop_timeout).await;
            });
        })
        .map_err(StartError::Thread)?;
    match rx.recv() {
        Ok(Ok(c)) => Ok((c, handle)),
        Ok(Err(message)) => Err(StartError::Config(match message.strip_prefix("store: ") {
            Some(m) => ConfigError {
                field: "store".into(),
                message: m.to_owned(),
            },
            None => ConfigError {
                field: "models".into(),
                message,
            },
        })),
        Err(_) => Err(StartError::Config(ConfigError {
            field: "models".into(),
            message: "the control thread stopped during start".into(),
        })),
    }
}

/// One listener per worker on the same address; with port 0 the first picks the port.
fn bind_reuseport(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out = Vec::with_capacity(n);
    let mut bound = addr;
    for _ in 0..n.max(1) {
        let err = |source| StartError::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(err)?;
        socket.set_reuse_address(true).map_err(err)?;
        socket.set_reuse_port(true).map_err(err)?;
        socket.set_nodelay(true).map_err(err)?;
        socket.bind(&bound.into()).map_err(err)?;
        socket.listen(4096).map_err(err)?;
        socket.set_nonblocking(true).map_err(err)?;
        let l: std::net::TcpListener = socket.into();
        bound = l.local_addr().map_err(err)?;
        out.push(l);
    }
    Ok(out)
}

/// What a worker knows of another (or itself): how many connections it holds, and where to
/// hand it one.
struct Peer {
    /// Client connections open on the worker (`switchyard_worker_client_connections`).
    connections: IntGauge,
    inbox: mpsc::UnboundedSender<Handoff>,
}

/// A client connection accepted by one worker for another to serve.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    open: OpenConnection,
}

struct Worker {
    /// Its place among the workers (0 = the first).
    index: usize,
    /// Every worker, in order; `peers[index]` is this one.
    peers: Arc<[Peer]>,
    /// `server.worker_fill_connections` (0: serve what the kernel gives this worker).
    fill: usize,
    ctx: Arc<ProxyContext>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
    grace: Duration,
    header_timeout: Duration,
    yield_before_sleep: bool,
    slice: Option<Duration>,
}

/// One open client connection on a worker's gauge, until its task ends.
struct OpenConnection(IntGauge);

impl OpenConnection {
    fn count(gauge: &IntGauge) -> Self {
        gauge.inc();
        OpenConnection(gauge.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Worker {
    fn run(self, listener: std::net::TcpListener, inbox: mpsc::UnboundedReceiver<Handoff>) {
        if let Some(slice) = self.slice {
            // A short slice: an answer waiting for this worker does not queue behind the
            // full slice of a load generator or model server on the same core (src/sched.rs).
            match crate::sched::request_slice(slice) {
                Err(e) => {
                    tracing::warn!(error = %e, ?slice, "cannot set the worker's scheduling slice; using the kernel's");
                }
                // Said once (by the first worker): older kernels take the call and keep
                // their slice, and then the yield before sleep can lengthen the light-load
                // tail (README, `server.yield_before_sleep`).
                Ok(()) if self.index == 0 => {
                    let reported = crate::sched::current_slice();
                    if let crate::sched::SliceOutcome::Ignored(kept) =
                        crate::sched::outcome(slice, reported)
                    {
                        if self.yield_before_sleep {
                            tracing::warn!(
                                asked = ?slice,
                                kept = ?kept,
                                "the kernel ignores the workers' scheduling slice (Linux 6.12+ \
                                 takes it): with the yield before sleep, the tail at light load \
                                 can double; --no-yield-before-sleep turns the yield off"
                            );
                        } else {
                            tracing::info!(asked = ?slice, kept = ?kept, "the kernel ignores the workers' scheduling slice (Linux 6.12+ takes it)");
                        }
                    }
                }
                Ok(()) => {}
            }
        }
        let mut builder = tokio::runtime::Builder::new_current_thread();
        builder.enable_all();
        if self.yield_before_sleep {
            // Called each time the worker has run out of ready work, just before it waits in
            // epoll. Its last writes have usually just woken the replica or the client; on a
            // core they share, yielding lets them run here now, and the answer is often back
            // before the wait, which then returns at once instead of sleeping and being woken
            // (an idle transition and, in a VM, an interprocessor interrupt). With nothing
            // else runnable the call returns at once. Measured in benches/README.md, issue 15,
            // sixteenth pass.
            builder.on_thread_park(std::thread::yield_now);
        }
        let rt = match builder.build() {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a worker runtime");
                return;
            }
        };
        rt.block_on(self.serve(listener, inbox));
        // Dropping the runtime cancels what is left: upgraded tunnels, idle upstream connections.
    }

    /// Accepts connections (its own, and those other workers hand it) until told to stop,
    /// then drains them.
    async fn serve(
        self,
        listener: std::net::TcpListener,
        mut inbox: mpsc::UnboundedReceiver<Handoff>,
    ) {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register the listener");
                return;
            }
        };
        let protocols = Arc::new(Protocols::new(self.header_timeout));
        // Every connection holds a receiver; the drain is over when all are dropped.
        let (drain, _) = watch::channel(());
        let idle = self.ctx.upstream.pool_idle_timeout;
        let sweeper = tokio::spawn(async move {
            let mut tick = tokio::time::interval(
                Duration::from_secs(5).min(idle.max(Duration::from_millis(100))),
            );
            loop {
                tick.tick().await;
                crate::proxy::upstream::sweep(idle);
            }
        });

        let mut stop = self.stop.clone();
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => break,
                Some(handed) = inbox.recv() => match TcpStream::from_std(handed.stream) {
                    Ok(stream) => self.spawn_connection(stream, handed.peer, handed.open, &protocols, &drain),
                    Err(e) => tracing::warn!(error = %e, "cannot take over a connection from another worker"),
                },
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            // Out of descriptors and the like: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    self.place(stream, peer, &protocols, &drain);
                }
            }
        }
        drop(listener);
        // Connections handed over but not yet taken close with the inbox.
        drop(inbox);
        sweeper.abort();
        let open = drain.receiver_count();
        if open > 0 {
            tracing::info!(open, grace = ?self.grace, "draining client connections");
        }
        let _ = drain.send(());
        if tokio::time::timeout(self.grace, drain.closed())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.grace, "grace period over; cutting the remaining connections");
        }
    }

    /// Serves an accepted connection here, or hands it to the worker [`crate::placement`]
    /// gives it to.
    fn place(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        protocols: &Arc<Protocols>,
        drain: &watch::Sender<()>,
    ) {
        let to = if self.fill == 0 {
            self.index
        } else {
            let open: Vec<i64> = self.peers.iter().map(|p| p.connections.get()).collect();
            crate::placement::place(&open, self.index, self.fill)
        };
        let Some(target) = self.peers.get(to).filter(|_| to != self.index) else {
            let open = OpenConnection::count(&self.peers[self.index].connections);
            return self.spawn_connection(stream, peer, open, protocols, drain);
        };
        // Counted on the target now, so the next placement (on any worker) sees it.
        let open = OpenConnection::count(&target.connections);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => return tracing::warn!(error = %e, "cannot hand a connection over"),
        };
        if let Err(mpsc::error::SendError(handed)) =
            target.inbox.send(Handoff { stream, peer, open })
        {
            // That worker has stopped (so will this one): serve it here meanwhile.
            drop(handed.open);
            let open = OpenConnection::count(&self.peers[self.index].connections);
            match TcpStream::from_std(handed.stream) {
                Ok(stream) => self.spawn_connection(stream, peer, open, protocols, drain),
                Err(e) => tracing::warn!(error = %e, "cannot serve a connection"),
            }
        }
    }

    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        open: OpenConnection,
        protocols: &Arc<Protocols>,
        drain: &watch::Sender<()>,
    ) {
        let info = Arc::new(ConnInfo {
            peer_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: if self.tls.is_some() { "https" } else { "http" },
            activity: Default::default(),
        });
        let conn_info = info.clone();
        let ctx = self.ctx.clone();
        let service = move |req: Request<ClientBody>| {
            // The connection counts as busy from here until the response body is
            // dropped (its idle watchdog, `client_conn::until_drained`).
            let request = RequestGuard::begin(info.clone());
            // Boxed once: a 264-byte request by value is kept in the future's
            // state, all of which hyper copies into its slot.
            forward::proxy(ctx.clone(), request, Box::new(req))
        };
        let protocols = protocols.clone();
        let drain = drain.subscribe();
        // Two task types: a plain connection's task does not carry the room a TLS
        // handshake needs (several kB per connection).
        match self.tls.clone() {
            None => tokio::spawn(async move {
                let _open = open;
                client_conn::serve_plain(protocols, stream, peer, (service, conn_info), drain).await
            }),
            Some(acceptor) => tokio::spawn(async move {
                let _open = open;
                client_conn::serve_tls(
                    protocols,
                    acceptor,
                    stream,
                    peer,
                    (service, conn_info),
                    drain,
                )
                .await
            }),
        };
    }
}
