//! Wiring: builds every part from a validated config, owns the one cancellation token and
//! task tracker, and is the only place that spawns tasks. Lifecycle: open the store and
//! bind the server ([`App::build`], so callers learn the bound address), then run the
//! pollers and sink workers until `shutdown` resolves, then drain within the grace period.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::api;
use crate::config::{self, Config, Environment, TargetConfig};
use crate::delivery::{Outbox, Sink};
use crate::health::{Health, Heartbeat};
use crate::metrics::Metrics;
use crate::model::TargetState;
use crate::poller::{Fleet, Gone, Poller};
use crate::replicas::Ownership;
use crate::server::{self, ServerState};
use crate::status::Status;
use crate::store::{Access, Coordinator, Role, Store, StoreError};
use crate::store_watch::{StoreWatch, Watched};
use crate::wake::Wake;

mod deployer;
mod early;
pub use deployer::deployer;
use early::Early;

/// Why an [`App`] could not be built: callers branch on a store that is missing (a dry
/// run then starts from an empty state) or unreachable.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

/// `server.listen` cannot be bound (in use, not an address of this host). Typed so that
/// the demo, whose address is its `--listen`, can name that instead.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on server.listen {addr}")]
pub struct ListenError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Everything one daemon needs, built and bound but not yet running.
pub struct App {
    cfg: Config,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub outbox: Arc<Outbox>,
    pub poller: Arc<Poller>,
    /// `run`'s listener, bound (and answering probes) before the store opened.
    early: Option<Early>,
    addr: Option<SocketAddr>,
    /// Who polls which target (leases with several replicas), and what it gives this process.
    coordinator: Arc<dyn Coordinator>,
    ownership: Arc<Ownership>,
    client: Arc<api::Client>,
    /// The status page's view of this process and the store; told of reloads.
    status: Arc<Status>,
    /// The file SIGHUP reloads the config from ([`App::reload_on_sighup`]).
    reload_from: Option<PathBuf>,
}

/// A running loop (one target's poller or one sink's worker), stoppable on its own and
/// watched by its own heartbeat.
struct Loop {
    token: CancellationToken,
    handle: JoinHandle<()>,
    beat: Heartbeat,
}

/// A target the fleet polls, stoppable on its own and watched by its own heartbeat.
struct Polled {
    token: CancellationToken,
    gone: Gone,
    beat: Heartbeat,
}

/// The loops of a running daemon, by name, and what starting another needs.
struct Running {
    token: CancellationToken,
    tracker: TaskTracker,
    grace: Duration,
    /// Polls every target on a few workers.
    fleet: Arc<Fleet>,
    /// The heartbeat of the fleet's upkeep, under which its workers run too.
    fleet_beat: Heartbeat,
    /// The fleet's workers started (`poll.concurrency` at its highest since the start).
    workers: usize,
    targets: HashMap<String, Polled>,
    /// Removed targets whose loop is still finishing: a target added back waits for it.
    retired: HashMap<String, JoinHandle<()>>,
    sinks: HashMap<String, Loop>,
    /// The configured target names, for the lease loop's fair share.
    names: watch::Sender<Vec<String>>,
}

impl App {
    /// Open the store, build the client and sinks. With `serve`, bind the HTTP listener.
    pub async fn build(cfg: Config, serve: bool) -> Result<App, BuildError> {
        Self::build_with(cfg, serve, Access::ReadWrite, Role::Replica).await
    }

    /// [`App::build`] with the store opened for `access` (`once --dry-run`: read-only),
    /// taking part in sharing the targets as `role` (`once`: [`Role::OneShot`]).
    pub async fn build_with(
        cfg: Config,
        serve: bool,
        access: Access,
        role: Role,
    ) -> Result<App, BuildError> {
        // A config loaded for a read-only command has placeholders for its secrets: it
        // would poll with no key and send unsigned webhooks.
        if let Some(first) = cfg.skipped_secrets.first() {
            return Err(anyhow::anyhow!(
                "{}: cannot run without reading its secrets ({first} was not read)",
                cfg.source
            )
            .into());
        }
        let metrics = Arc::new(Metrics::new());
        metrics.init_series(&cfg);
        let health = Arc::new(Health::new(cfg.targets.iter().map(|t| t.name.clone())));
        let watch = StoreWatch::new(metrics.clone(), health.clone());
        // The daemon answers probes before the store opens, and waits for an unreachable one.
        let early = match serve {
            true => Some(Early::bind(&cfg, &metrics, &health).await?),
            false => None,
        };
        let (store, coordinator) =
            crate::store_watch::open_store(&cfg.store, access, role, &watch, &health, serve)
                .await?;
        let store: Arc<dyn Store> = Arc::new(Watched::new(store, watch));
        let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
        let ownership = Arc::new(Ownership::from_start(&*coordinator, &names));
        metrics.targets_owned.set(ownership.count() as i64);
        // With leases, the rounds say which replica reports the database-wide backlog.
        metrics.set_reports_backlog(coordinator.lease_ttl().is_none());
        // One SQLite file has one daemon: claims left by its crash are its to release. Not
        // `once`'s: it may run beside the daemon, whose claims are attempts in flight.
        if serve && access == Access::ReadWrite {
            let released = store.release_claims().await?;
            if released > 0 {
                info!(
                    released,
                    "released delivery claims left by the previous run"
                );
            }
        }
        let client = Arc::new(api::Client::new(&cfg.api)?);
        // Pollers fire it after a commit that queued deliveries; sink workers wait on it.
        let wake = Wake::new();
        // baseten_deploy sinks deploy through the pollers' client: one token bucket.
        let outbox = Arc::new(
            Outbox::with_deployer(
                store.clone(),
                metrics.clone(),
                &cfg.sinks,
                wake.clone(),
                Some(deployer(client.clone(), metrics.clone())),
            )?
            .with_invocation(cfg.invocation()),
        );
        let poller = Poller::new(
            client.clone(),
            store.clone(),
            metrics.clone(),
            Some(wake),
            health.clone(),
            cfg.poll.clone(),
            cfg.sinks.clone(),
        )
        .with_ownership(ownership.clone());
        let poller = Arc::new(poller);
        let addr = early.as_ref().map(|e| e.addr);
        let status = Arc::new(Status::new(
            store.clone(),
            health.clone(),
            ownership.clone(),
            &cfg,
        ));
        Ok(App {
            cfg,
            store,
            metrics,
            health,
            outbox,
            poller,
            early,
            addr,
            coordinator,
            ownership,
            client,
            status,
            reload_from: None,
        })
    }

    /// Reload the config from `path` on SIGHUP while running (docs/configuration.md,
    /// "Reload").
    pub fn reload_on_sighup(mut self, path: PathBuf) -> Self {
        self.reload_from = Some(path);
        self
    }

    /// The bound address of `/metrics` `/healthz` `/readyz`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Who polls which target: the leases this process holds, under its owner name.
    pub fn coordinator(&self) -> &Arc<dyn Coordinator> {
        &self.coordinator
    }

    /// Take `1 / processes` of `api.max_requests_per_second` from now on (a lease round
    /// counts the processes polling the shared store).
    pub fn share_api_budget(&self, processes: i64) {
        self.client.share_budget(processes);
    }

    /// The targets this process may poll now, and the fence of each.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Run until `shutdown` resolves, then stop polling, give in-flight deliveries the
    /// grace period, and return.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();
        // A panic in any task is logged with where it happened, as one event.
        crate::health::install_panic_hook();

        if let Some(early) = self.early.take() {
            let addr = early.addr;
            let limits = early.limits;
            let listener = early.finish().await;
            let router = server::router(ServerState {
                metrics: self.metrics.clone(),
                health: self.health.clone(),
                outbox: Some(self.outbox.clone()),
                status: Some(self.status.clone()),
            });
            tracker.spawn(crate::listener::serve(
                listener,
                router,
                limits,
                token.clone(),
            ));
            info!(%addr, "serving /metrics /healthz /readyz and the status page at /");
        }

        // The targets owned before any lease round (every target on a single node) read
        // their states in one go; a target leased later loads its own when it is taken.
        let owned: Vec<bool> = (self.cfg.targets.iter())
            .map(|t| self.ownership.fence(&t.name).is_some())
            .collect();
        let preload: Vec<&str> = (self.cfg.targets.iter().zip(&owned))
            .filter(|(_, owned)| **owned)
            .map(|(t, _)| t.name.as_str())
            .collect();
        let mut states: Vec<Option<TargetState>> = vec![None; self.cfg.targets.len()];
        if !preload.is_empty() {
            let started = std::time::Instant::now();
            match self.store.load_targets(&preload).await {
                Ok(loaded) => {
                    info!(
                        targets = loaded.len(),
                        tracked = loaded.iter().map(|s| s.checkpoints.len()).sum::<usize>(),
                        took_s = started.elapsed().as_secs_f64(),
                        "state loaded"
                    );
                    let mut loaded = loaded.into_iter();
                    states = owned
                        .iter()
                        .map(|&o| o.then(|| loaded.next()).flatten())
                        .collect();
                }
                Err(e) => {
                    warn!(error = %e, "cannot load the state at once; each target will load its own")
                }
            }
        }

        let targets: Vec<String> = self.cfg.targets.iter().map(|t| t.name.clone()).collect();
        let (names, names_rx) = watch::channel(targets);
        let (client, metrics) = (self.client.clone(), self.metrics.clone());
        metrics.api_budget.set(client.rate());
        tracker.spawn(crate::replicas::run(
            self.coordinator.clone(),
            self.ownership.clone(),
            names_rx,
            self.metrics.clone(),
            self.health.clone(),
            move |sharers| {
                client.share_budget(sharers);
                metrics.api_budget.set(client.rate());
            },
            token.clone(),
        ));
        if let Some(retention) = self.cfg.store.retention {
            let (store, tok) = (self.store.clone(), token.clone());
            tracker.spawn(async move {
                // Hourly, starting a minute after start so it never slows the first polls.
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + Duration::from_secs(60),
                    Duration::from_secs(3600),
                );
                loop {
                    tokio::select! {
                        _ = tok.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let cutoff = chrono::Utc::now()
                        - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
                    match store.prune(cutoff).await {
                        Ok((0, 0)) => {}
                        Ok((deliveries, events)) => info!(
                            deliveries,
                            events, "pruned history older than store.retention"
                        ),
                        Err(e) => warn!(error = %e, "cannot prune old deliveries; will retry"),
                    }
                }
            });
        }
        let grace = self.cfg.delivery.shutdown_grace;
        let mut running = Running {
            token: token.clone(),
            tracker: tracker.clone(),
            grace,
            targets: HashMap::new(),
            retired: HashMap::new(),
            sinks: HashMap::new(),
            fleet: Fleet::new(self.poller.clone(), token.clone()),
            fleet_beat: self.health.heartbeat("poller", Duration::from_secs(60)),
            workers: 0,
            names,
        };
        for (t, state) in self.cfg.targets.clone().into_iter().zip(states) {
            self.start_target(&mut running, t, state, None);
        }
        let keep = running.fleet.clone().keep(running.fleet_beat.clone());
        let beat = running.fleet_beat.clone();
        tracker.spawn(crate::health::supervise(beat, token.clone(), keep));
        start_workers(&mut running, self.cfg.poll.concurrency.get());
        for sink in self.outbox.sinks() {
            self.start_sink(&mut running, sink, None);
        }
        if let Some(period) = sd_notify::watchdog_enabled() {
            // WATCHDOG=1 only while every loop is alive: a wedged daemon gets restarted.
            let (health, tok) = (self.health.clone(), token.clone());
            tracker.spawn(async move {
                let mut tick = tokio::time::interval(period / 2);
                loop {
                    tokio::select! {
                        _ = tok.cancelled() => break,
                        _ = tick.tick() => match health.live() {
                            Ok(()) => notify(&[NotifyState::Watchdog]),
                            Err(why) => warn!(%why, "not alive; withholding the systemd watchdog ping"),
                        },
                    }
                }
            });
        }
        tracker.close();
        #[cfg(unix)]
        let mut hangup = match &self.reload_from {
            Some(_) => Some(
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                    .context("cannot install a SIGHUP handler")?,
            ),
            None => None,
        };
        self.metrics.config_applied(true);
        // The store is open and the server bound: tell systemd (a no-op elsewhere).
        notify(&[NotifyState::Ready, NotifyState::Status("polling")]);
        info!(
            targets = self.cfg.targets.len(),
            sinks = self.cfg.sinks.len(),
            store = %crate::config::redact_url(&self.cfg.store.url),
            "loopwatch running"
        );

        tokio::pin!(shutdown);
        loop {
            #[cfg(unix)]
            let hup = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hup = std::future::pending::<Option<()>>();
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = hup => {
                    // The read runs on a thread of its own and SIGTERM wins over it: a
                    // config path on a hung mount must not keep the daemon from stopping.
                    let Some(read) = self.read_for_reload() else { continue };
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        loaded = read => self.reload(&mut running, loaded),
                    }
                }
            }
        }
        notify(&[NotifyState::Stopping]);
        info!(
            grace_s = grace.as_secs_f64(),
            "shutting down: polling stopped, draining deliveries"
        );
        token.cancel();
        if tokio::time::timeout(grace + Duration::from_secs(2), tracker.wait())
            .await
            .is_err()
        {
            warn!("some tasks did not stop within the grace period");
        }
        info!("stopped");
        Ok(())
    }
}

/// Reload: read the config again and apply what a reload applies (docs/configuration.md,
/// "Reload"); `crate::reload` says what changed, these functions start and stop the loops.
impl App {
    /// How long a target may be silent: it beats while it waits (for its next poll or
    /// a poll slot), so only a poll itself is silent: a listing and every probe request
    /// of it, each within `api.timeout`, and a commit; plus a minute.
    fn poll_silence(&self) -> Duration {
        let requests = 2 + crate::poller::PROBE_REQUESTS_PER_POLL as u32;
        crate::health::IDLE_BEAT + self.cfg.api.timeout * requests + Duration::from_secs(60)
    }

    /// Start polling `t` (the fleet's workers take its turns), after `after` (the loop it
    /// replaces, or the clean-up of a removed one) has finished, so two loops of one
    /// target never overlap.
    fn start_target(
        &self,
        run: &mut Running,
        t: TargetConfig,
        state: Option<TargetState>,
        after: Option<JoinHandle<()>>,
    ) {
        let after = after.or_else(|| run.retired.remove(&t.name));
        let name = t.name.clone();
        let beat = (self.health).heartbeat(&format!("target {name}"), self.poll_silence());
        let token = run.token.child_token();
        let (joining, gone) = Fleet::target(t, state, token.clone(), beat.clone());
        match after {
            None => run.fleet.add(joining),
            Some(previous) => {
                let (fleet, what) = (run.fleet.clone(), beat.name().to_string());
                run.tracker.spawn(async move {
                    crate::health::joined(previous.await, &what);
                    fleet.add(joining);
                });
            }
        }
        run.targets.insert(name, Polled { token, gone, beat });
    }

    /// Start the worker of `sink`, after `after` (the worker it replaces) has finished.
    fn start_sink(&self, run: &mut Running, sink: Arc<Sink>, after: Option<JoinHandle<()>>) {
        let beat = self.health.heartbeat(
            &format!("sink {}", sink.name()),
            sink.cfg.timeout + Duration::from_secs(60),
        );
        let (outbox, grace, name) = (self.outbox.clone(), run.grace, sink.name().to_string());
        let lp = spawn_loop(run, beat, after, move |tok, b| async move {
            outbox.run_sink(sink, tok, grace, b).await
        });
        run.sinks.insert(name, lp);
    }

    /// Stop the worker of sink `name` (in-flight attempts get the grace period; the rest
    /// stay pending); returns its handle.
    fn stop_sink(&self, run: &mut Running, name: &str) -> Option<JoinHandle<()>> {
        let lp = run.sinks.remove(name)?;
        self.health.retire(&lp.beat);
        lp.token.cancel();
        Some(lp.handle)
    }

    /// Stop polling target `name` (between polls, never inside a commit); returns a
    /// handle that finishes once it is out of the fleet (call [`Fleet::drop_cancelled`]
    /// after the last stop, for the targets that wait in its queue).
    fn stop_target(&self, run: &mut Running, name: &str) -> Option<JoinHandle<()>> {
        let polled = run.targets.remove(name)?;
        self.health.retire(&polled.beat);
        polled.token.cancel();
        Some(run.tracker.spawn(polled.gone))
    }

    /// SIGHUP: tell systemd, and read the config file again on a thread of its own (the
    /// read is bounded and never opens a FIFO for good, but a hung network mount can still
    /// block it); the answer comes to [`App::reload`]. None without a file to read.
    fn read_for_reload(
        &self,
    ) -> Option<impl Future<Output = Result<Config, config::ConfigError>> + use<>> {
        let path = self.reload_from.clone()?;
        // Type=notify-reload: RELOADING=1 with the monotonic time, then READY=1 when done.
        let mut reloading = vec![NotifyState::Reloading];
        if let Ok(now) = NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        info!(config = %path.display(), "SIGHUP: reloading the config");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shown = path.display().to_string();
        // A plain thread, not spawn_blocking: the runtime waits for those when it shuts
        // down, and this one may never return.
        let spawned = std::thread::Builder::new()
            .name("config-reload".into())
            .spawn(move || {
                let _ = tx.send(config::load(&path, &Environment::from_process()));
            });
        Some(async move {
            match spawned {
                Ok(_) => rx.await.unwrap_or_else(|_| {
                    Err(config::ConfigError {
                        problems: vec![format!("{shown}: the config read failed")],
                    })
                }),
                Err(e) => Err(config::ConfigError {
                    problems: vec![format!("{shown}: cannot start reading the config: {e}")],
                }),
            }
        })
    }

    /// Apply a reloaded config or refuse it whole, record the outcome in the reload
    /// metrics, tell systemd the reload is over. Never fails.
    fn reload(&mut self, run: &mut Running, loaded: Result<Config, config::ConfigError>) {
        let outcome = match loaded {
            Ok(new) => self.apply(run, new),
            Err(e) => Err(e.problems),
        };
        match outcome {
            Ok(()) => {
                self.metrics.config_applied(true);
                self.status.configure(&self.cfg);
            }
            Err(problems) => {
                for problem in &problems {
                    error!(%problem, "problem in the reloaded config");
                }
                error!(
                    problems = problems.len(),
                    "config reload refused; the running config stays"
                );
                self.metrics.config_applied(false);
            }
        }
        notify(&[NotifyState::Ready, NotifyState::Status("polling")]);
    }

    /// Apply a valid config: targets, sinks and `[poll]`; restart-only keys are named.
    fn apply(&mut self, run: &mut Running, new: Config) -> Result<(), Vec<String>> {
        let plan = crate::reload::plan(&self.cfg, &new);
        // Build every new sink first: one that cannot be built refuses the whole reload.
        let mut built: HashMap<String, Arc<Sink>> = HashMap::new();
        let mut problems = Vec::new();
        for s in plan.added_sinks.iter().chain(&plan.changed_sinks) {
            match self.outbox.build_sink(s) {
                Ok(sink) => {
                    built.insert(s.name.clone(), sink);
                }
                Err(e) => problems.push(format!("{}: {e:#}", new.source)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for key in &plan.needs_restart {
            warn!(%key, "config change needs a restart; not applied");
        }
        let cfg = crate::reload::effective(&self.cfg, new);
        if plan.is_noop() {
            info!("config reloaded; no target, sink or [poll] change");
            self.cfg = cfg;
            return Ok(());
        }
        self.metrics.init_series(&cfg);
        self.poller.reconfigure(cfg.poll.clone(), cfg.sinks.clone());
        // A higher `concurrency` needs more workers; a lower one leaves some waiting for a slot.
        start_workers(run, cfg.poll.concurrency.get());

        // Sinks: the outbox's set first (routing and the backlog gauges), then the workers.
        let current: HashMap<String, Arc<Sink>> = (self.outbox.sinks().into_iter())
            .map(|s| (s.name().to_string(), s))
            .collect();
        let sinks: Vec<Arc<Sink>> = (cfg.sinks.iter())
            .filter_map(|s| built.get(&s.name).or_else(|| current.get(&s.name)).cloned())
            .collect();
        self.outbox.set_sinks(sinks);
        for name in &plan.removed_sinks {
            self.stop_sink(run, name);
        }
        for s in &plan.changed_sinks {
            let old = self.stop_sink(run, &s.name);
            self.start_sink(run, built[&s.name].clone(), old);
        }
        for s in &plan.added_sinks {
            self.start_sink(run, built[&s.name].clone(), None);
        }

        // Targets: ownership (a single node owns new ones at once; replicas share them at
        // the next lease round), readiness, then the loops.
        let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
        self.ownership.retarget(&*self.coordinator, &names);
        run.names.send_replace(names);
        let added: Vec<String> = plan.added_targets.iter().map(|t| t.name.clone()).collect();
        let owned_now = self.coordinator.owned_from_start(&added);
        self.health
            .retarget(&plan.removed_targets, owned_now.into_iter().map(|(t, _)| t));
        for name in &plan.removed_targets {
            if let Some(handle) = self.stop_target(run, name) {
                // Its series go once its loop has stopped writing them.
                let (metrics, name2) = (self.metrics.clone(), name.clone());
                let cleanup = run.tracker.spawn(async move {
                    crate::health::joined(handle.await, &format!("target {name2}"));
                    metrics.remove_target(&name2);
                });
                run.retired.insert(name.clone(), cleanup);
            }
        }
        let old: Vec<(TargetConfig, Option<JoinHandle<()>>)> = (plan.changed_targets.iter())
            .map(|t| (t.clone(), self.stop_target(run, &t.name)))
            .collect();
        // Stopped targets waiting in the queue leave it now (their handles finish).
        run.fleet.drop_cancelled();
        for (t, old) in old {
            self.start_target(run, t, None, old);
        }
        for t in &plan.added_targets {
            self.start_target(run, t.clone(), None, None);
        }
        self.metrics
            .targets_owned
            .set(self.ownership.count() as i64);
        run.retired.retain(|_, h| !h.is_finished());
        self.cfg = cfg;
        info!(
            targets_added = plan.added_targets.len(),
            targets_removed = plan.removed_targets.len(),
            targets_changed = plan.changed_targets.len(),
            sinks_added = plan.added_sinks.len(),
            sinks_removed = plan.removed_sinks.len(),
            sinks_changed = plan.changed_sinks.len(),
            poll_changed = plan.poll_changed,
            "config reloaded"
        );
        Ok(())
    }
}

/// Start workers of the fleet up to `concurrency`, each supervised (a panic outside a
/// target's turn fails `/healthz`, naming the poller).
fn start_workers(run: &mut Running, concurrency: usize) {
    while run.workers < concurrency {
        let work = run.fleet.clone().work();
        let (beat, token) = (run.fleet_beat.clone(), run.token.clone());
        run.tracker
            .spawn(crate::health::supervise(beat, token, work));
        run.workers += 1;
    }
}

/// Spawn the loop `task` makes (from its token and heartbeat) once `after` (the loop it
/// replaces) has finished; [`crate::health::supervise`] marks it stopped if it panics or
/// returns before its token is cancelled.
fn spawn_loop<F>(
    run: &Running,
    beat: Heartbeat,
    after: Option<JoinHandle<()>>,
    task: impl FnOnce(CancellationToken, Heartbeat) -> F + Send + 'static,
) -> Loop
where
    F: Future<Output = ()> + Send + 'static,
{
    let token = run.token.child_token();
    let (tok, b) = (token.clone(), beat.clone());
    let handle = run.tracker.spawn(async move {
        if let Some(previous) = after {
            crate::health::joined(previous.await, b.name());
        }
        crate::health::supervise(b.clone(), tok.clone(), task(tok, b)).await
    });
    Loop {
        token,
        handle,
        beat,
    }
}

/// Send a state to systemd when run as `Type=notify`; without `NOTIFY_SOCKET` it does nothing.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed now, not at the first poll: a SIGTERM that comes while
    // the caller is still busy (the store opening) must not kill the process outright.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("can install a SIGINT handler");
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
