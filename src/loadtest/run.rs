//! Running a load test: the load (closed-loop clients or open-loop arrivals), the rollout
//! follower, the live progress line, and the report when it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand_distr::{Distribution, Gamma};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use super::collect::Collector;
use super::generator::{self, Conn, Outcome, Planner, Pool};
use super::options::{Load, Options};
use super::report::{Report, RolloutEvent};
use crate::api::types::{Environment, Event};
use crate::client::Client;

enum Msg {
    /// Outcomes in batches: one wake-up of the collector per batch, not per request.
    Outcomes(Vec<Outcome>),
    Event(Event),
    /// The event stream ended (the server went away).
    EventsEnded,
}

/// Shared by the load tasks: when to stop, and how many measured requests went out.
struct Control {
    stop: AtomicBool,
    measure_from: Instant,
    /// Requests issued after `measure_from`.
    issued: AtomicU64,
    limit: Option<u64>,
}

impl Control {
    /// May one more request go out? Counts it when it is measured.
    fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) {
            return false;
        }
        if Instant::now() < self.measure_from {
            return true;
        }
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        !matches!(self.limit, Some(limit) if n >= limit)
    }
}

/// What the rollout looked like when the test began.
struct Rollout {
    client: Client,
    model: String,
    environment: String,
    previous: Option<String>,
    candidate: Option<String>,
    initial: RolloutEvent,
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn rollout(opts: &Options) -> Result<Option<Rollout>, String> {
    let Some(url) = &opts.admin_url else {
        return Ok(None);
    };
    let client = Client::new(url, opts.api_key.clone()).map_err(|e| e.to_string())?;
    let (model, environment) = client
        .target(opts.model.clone(), opts.environment.clone())
        .await
        .map_err(|e| format!("--admin-url {url}: {e}"))?;
    let v: Environment = client
        .environment(&model, &environment)
        .await
        .map_err(|e| format!("--admin-url {url}: {e}"))?;
    let previous = v.current_deployment.as_ref().map(|d| d.id.clone());
    let running = v
        .in_progress_promotion
        .as_ref()
        .filter(|p| !p.status.is_terminal());
    if let (Some(p), Some(want)) = (running, &opts.promote) {
        return Err(format!(
            "--promote {want}: a promotion to {} is already {} in {model}/{environment}",
            p.candidate_deployment_id, p.status
        ));
    }
    let candidate = opts
        .promote
        .clone()
        .or_else(|| running.map(|p| p.candidate_deployment_id.clone()));
    let replicas =
        |d: &Option<crate::api::types::Deployment>| d.as_ref().map_or(0, |d| d.replicas.desired);
    let initial = RolloutEvent {
        t_s: 0.0,
        at: crate::api::views::rfc3339(SystemTime::now()),
        status: running.map_or("NO_PROMOTION".to_owned(), |p| p.status.to_string()),
        percent_traffic_to_new_version: running.map_or(0, |p| p.percent_traffic_to_new_version),
        candidate_replicas: replicas(&v.candidate_deployment),
        previous_replicas: replicas(&v.current_deployment),
        reason: "state when the load test began".into(),
    };
    Ok(Some(Rollout {
        client,
        model,
        environment,
        previous,
        candidate,
        initial,
    }))
}

/// Runs the whole test. Errors are for what prevents it from starting (exit 2).
pub async fn run(opts: Options) -> Result<Report, String> {
    let opts = Arc::new(opts);
    // A target that does not answer at all is a usage error, not a test result.
    generator::connect(&opts).await?;
    let mut rollout = rollout(&opts).await?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let mut follower = None;
    if let Some(r) = &rollout {
        let mut events = r
            .client
            .follow_events(&r.model, &r.environment)
            .await
            .map_err(|e| format!("cannot follow the rollout's events: {e}"))?;
        let tx = tx.clone();
        follower = Some(tokio::spawn(async move {
            while let Some(e) = events.next().await {
                if tx.send(Msg::Event(e)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Msg::EventsEnded);
        }));
    }

    let launched = Instant::now();
    let measure_from = launched + opts.warmup;
    let control = Arc::new(Control {
        stop: AtomicBool::new(false),
        measure_from,
        issued: AtomicU64::new(0),
        limit: opts.requests,
    });
    let mut load = tokio::spawn(drive(opts.clone(), control.clone(), tx.clone()));
    drop(tx);

    let mut collector = Collector::new(measure_from, opts.slo);
    let bar = progress(&opts);
    let mut promoted_at: Option<Instant> = None;
    let mut promote_wall_ms = 0;
    let mut ended_at: Option<Instant> = None;
    let mut status = String::from("-");
    let mut percent: Option<u32> = None;
    if let Some(r) = &rollout {
        status = r.initial.status.clone();
        percent = Some(r.initial.percent_traffic_to_new_version);
        collector.event(r.initial.clone());
    }
    let start_wall_ms = wall_ms() + opts.warmup.as_millis() as u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0u64);
    let mut rate = 0.0;
    loop {
        let now = Instant::now();
        if now >= measure_from {
            if let (Some(r), Some(want), None) = (&rollout, &opts.promote, promoted_at) {
                r.client
                    .promote(&r.model, &r.environment, want)
                    .await
                    .map_err(|e| format!("--promote {want}: {e}"))?;
                promoted_at = Some(now);
                promote_wall_ms = wall_ms();
            }
        }
        let done = match (opts.duration, &opts.promote, ended_at) {
            (Some(d), _, _) if now >= measure_from + d => true,
            (_, Some(_), Some(t)) => now >= t + opts.cooldown,
            _ => false,
        } || control.stop.load(Ordering::Relaxed)
            || opts
                .requests
                .is_some_and(|n| control.issued.load(Ordering::Relaxed) >= n);
        if done {
            break;
        }
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Outcomes(batch)) => {
                    for o in &batch {
                        collector.add(o);
                    }
                }
                Some(Msg::Event(e)) => {
                    status = e.status.to_string();
                    percent = Some(e.percent_traffic_to_new_version);
                    let terminal = e.terminal && promoted_at.is_some() && e.at_ms >= promote_wall_ms;
                    collector.event(event(&e, start_wall_ms));
                    if terminal && ended_at.is_none() {
                        ended_at = Some(Instant::now());
                    }
                }
                Some(Msg::EventsEnded) => {
                    bar.println("the admin listener closed the event stream; the rollout is no longer followed");
                    if opts.promote.is_some() && ended_at.is_none() {
                        ended_at = Some(Instant::now());
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                let (t, n) = last;
                let now = Instant::now();
                let total = collector.requests();
                let dt = now.duration_since(t).as_secs_f64();
                if dt >= 1.0 {
                    rate = (total - n) as f64 / dt;
                    last = (now, total);
                }
                let phase = if now < measure_from { "warm-up " } else { "" };
                bar.set_message(format!(
                    "{phase}{total} requests  {rate:.0}/s  errors {}  broken streams {}  {status}{}",
                    collector.errors(),
                    collector.broken(),
                    percent.map_or(String::new(), |p| format!(" {p}%")),
                ));
                if let Some(d) = opts.duration {
                    bar.set_position(now.saturating_duration_since(measure_from).as_secs().min(d.as_secs()));
                }
            }
        }
    }
    let measured = Instant::now().saturating_duration_since(measure_from);
    control.stop.store(true, Ordering::Relaxed);
    // Requests in flight finish (each within --timeout) and are counted.
    let take = |msg: Msg, collector: &mut Collector| match msg {
        Msg::Outcomes(batch) => {
            for o in &batch {
                collector.add(o);
            }
        }
        Msg::Event(e) => collector.event(event(&e, start_wall_ms)),
        Msg::EventsEnded => {}
    };
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => take(m, &mut collector),
                None => break,
            },
            _ = &mut load => {
                while let Ok(m) = rx.try_recv() {
                    take(m, &mut collector);
                }
                break;
            }
        }
    }
    if let Some(f) = follower {
        f.abort();
    }
    bar.finish_and_clear();
    let (model, environment, previous, candidate) = match rollout.take() {
        Some(r) => (Some(r.model), Some(r.environment), r.previous, r.candidate),
        None => (None, None, None, None),
    };
    let mut report = collector.report(
        opts.run_config(model.as_deref(), environment.as_deref()),
        crate::api::views::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_millis(start_wall_ms)),
        measured,
        previous.as_deref(),
        candidate.as_deref(),
    );
    report.violations = violations(&opts, &report);
    Ok(report)
}

fn event(e: &Event, start_wall_ms: u64) -> RolloutEvent {
    RolloutEvent {
        t_s: (e.at_ms as f64 - start_wall_ms as f64) / 1000.0,
        at: e.at.clone(),
        status: e.status.to_string(),
        percent_traffic_to_new_version: e.percent_traffic_to_new_version,
        candidate_replicas: e.candidate_replicas,
        previous_replicas: e.previous_replicas,
        reason: e.reason.clone(),
    }
}

fn progress(opts: &Options) -> ProgressBar {
    if opts.quiet {
        return ProgressBar::hidden();
    }
    let bar = match opts.duration {
        Some(d) => {
            let b = ProgressBar::with_draw_target(Some(d.as_secs()), ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{elapsed:>4} [{bar:20}] {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b
        }
        None => {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{elapsed:>4} {spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            b
        }
    };
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// The limits the run broke, one line each.
fn violations(opts: &Options, r: &Report) -> Vec<String> {
    let o = &r.summary.overall;
    let mut v = Vec::new();
    if let Some(max) = opts.max_error_rate {
        if o.error_rate_percent > max {
            v.push(format!(
                "error rate {:.2}% is above --max-error-rate {max}% ({} of {} requests)",
                o.error_rate_percent, o.errors, o.requests
            ));
        }
    }
    if let Some(max) = opts.max_broken_streams {
        if o.broken_streams > max {
            v.push(format!(
                "{} broken streams, above --max-broken-streams {max}",
                o.broken_streams
            ));
        }
    }
    if let (Some(min), Some(g)) = (opts.min_goodput_percent, o.goodput_percent) {
        if g < min {
            v.push(format!(
                "goodput {g:.2}% is below --min-goodput-percent {min}%"
            ));
        }
    }
    if o.requests == 0 {
        v.push("no request was measured".into());
    }
    v
}

/// The load: closed-loop clients or open-loop arrivals, until told to stop.
async fn drive(opts: Arc<Options>, control: Arc<Control>, tx: mpsc::UnboundedSender<Msg>) {
    match opts.load {
        Load::Closed { concurrency } => {
            let shared_h2 = if opts.http2 {
                generator::connect(&opts).await.ok()
            } else {
                None
            };
            let clients: Vec<_> = (0..concurrency)
                .map(|i| {
                    let (opts, control, tx) = (opts.clone(), control.clone(), tx.clone());
                    let shared = shared_h2.clone();
                    tokio::spawn(async move {
                        let mut planner =
                            Planner::new(&opts.shape, opts.seed.wrapping_add(u64::from(i)));
                        let mut conn: Option<Conn> = shared.clone();
                        let mut batch = Batch::default();
                        while control.take() {
                            let c = match conn.take() {
                                Some(c) => c,
                                None => match generator::connect(&opts).await {
                                    Ok(c) => c,
                                    Err(_) => {
                                        batch.push(connect_failure());
                                        if !batch.flush(&tx, true) {
                                            return;
                                        }
                                        tokio::time::sleep(Duration::from_millis(100)).await;
                                        continue;
                                    }
                                },
                            };
                            let o = generator::exchange(&opts, &c, planner.next()).await;
                            // A connection whose exchange failed is not trusted again.
                            if reusable(&o) || matches!(c, Conn::H2(_)) {
                                conn = Some(c);
                            }
                            batch.push(o);
                            if !batch.flush(&tx, false) {
                                return;
                            }
                        }
                        batch.flush(&tx, true);
                    })
                })
                .collect();
            for c in clients {
                let _ = c.await;
            }
        }
        Load::Open { rate, burstiness } => {
            let pool = Arc::new(Pool::default());
            let slots = Arc::new(Semaphore::new(opts.max_in_flight as usize));
            let mut planner = Planner::new(&opts.shape, opts.seed);
            // Gamma with shape k and scale 1/(k × rate): mean gap 1/rate; k = 1 is Poisson.
            let gaps = Gamma::new(burstiness, 1.0 / (burstiness * rate)).ok();
            let mut next = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                tokio::time::sleep_until(next).await;
                if !control.take() {
                    break;
                }
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let planned = planner.next();
                let (opts, pool, tx) = (opts.clone(), pool.clone(), tx.clone());
                tasks.spawn(async move {
                    let o = match pool.get(&opts).await {
                        Ok(c) => {
                            let o = generator::exchange(&opts, &c, planned).await;
                            if reusable(&o) {
                                pool.put(c);
                            }
                            o
                        }
                        Err(_) => connect_failure(),
                    };
                    drop(slot);
                    let _ = tx.send(Msg::Outcomes(vec![o]));
                });
                let gap = gaps.map_or(1.0 / rate, |g| g.sample(planner.rng()));
                next += Duration::from_secs_f64(gap.min(3600.0));
                // Reap finished tasks so the set stays small.
                while tasks.try_join_next().is_some() {}
            }
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// A client's outcomes not yet handed to the collector: sent every 32, or after 100 ms, so
/// the live figures stay current without a cross-thread wake-up per request.
#[derive(Default)]
struct Batch {
    outcomes: Vec<Outcome>,
    since: Option<Instant>,
}

impl Batch {
    fn push(&mut self, o: Outcome) {
        self.since.get_or_insert_with(Instant::now);
        self.outcomes.push(o);
    }

    /// Sends the batch when it is due (or `now`); false when the collector is gone.
    fn flush(&mut self, tx: &mpsc::UnboundedSender<Msg>, now: bool) -> bool {
        let due = self.outcomes.len() >= 32
            || self
                .since
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(100));
        if self.outcomes.is_empty() || !(now || due) {
            return true;
        }
        self.since = None;
        let batch = std::mem::replace(&mut self.outcomes, Vec::with_capacity(32));
        tx.send(Msg::Outcomes(batch)).is_ok()
    }
}

fn reusable(o: &Outcome) -> bool {
    o.status.is_ok() && !o.broken
}

fn connect_failure() -> Outcome {
    Outcome {
        sent: Instant::now(),
        status: Err(generator::Failure::Connect),
        deployment: None,
        ttft: None,
        itl_us: Vec::new(),
        e2el: Duration::ZERO,
        tokens: 0,
        bytes: 0,
        broken: false,
        streamed: false,
    }
}
