//! Wiring: builds every part from a validated config, owns the one cancellation token and
//! task tracker, and is the only place that spawns tasks. Lifecycle: open the store and
//! bind the server ([`App::build`], so callers learn the bound address), then run the
//! pollers and sink workers until `shutdown` resolves, then drain within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::api;
use crate::config::{Config, StoreConfig};
use crate::delivery::Outbox;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::TargetState;
use crate::poller::Poller;
use crate::replicas::Ownership;
use crate::server::{self, ServerState};
use crate::store::{self, Access, Coordinator, Role, Store};
use crate::store_watch::{StoreWatch, Watched};
use crate::wake::Wake;

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
}

impl App {
    /// Open the store, build the client and sinks. With `serve`, bind the HTTP listener.
    pub async fn build(cfg: Config, serve: bool) -> anyhow::Result<App> {
        Self::build_with(cfg, serve, Access::ReadWrite, Role::Replica).await
    }

    /// [`App::build`] with the store opened for `access` (`once --dry-run`: read-only),
    /// taking part in sharing the targets as `role` (`once`: [`Role::OneShot`]).
    pub async fn build_with(
        cfg: Config,
        serve: bool,
        access: Access,
        role: Role,
    ) -> anyhow::Result<App> {
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
            open_store(&cfg.store, access, role, &watch, &health, serve).await?;
        let store: Arc<dyn Store> = Arc::new(Watched::new(store, watch));
        let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
        let ownership = Arc::new(Ownership::from_start(&*coordinator, &names));
        metrics.targets_owned.set(ownership.count() as i64);
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
        let outbox = Arc::new(Outbox::new(
            store.clone(),
            metrics.clone(),
            &cfg.sinks,
            wake.clone(),
        )?);
        let poller = Poller::new(
            client,
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
        })
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

    /// The targets this process may poll now, and the fence of each.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// Run until `shutdown` resolves, then stop polling, give in-flight deliveries the
    /// grace period, and return.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();

        if let Some(early) = self.early.take() {
            let addr = early.addr;
            let listener = early.finish().await;
            let router = server::router(ServerState {
                metrics: self.metrics.clone(),
                health: self.health.clone(),
                outbox: Some(self.outbox.clone()),
            });
            let stop = token.clone();
            tracker.spawn(async move {
                let serve =
                    axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned());
                if let Err(e) = serve.await {
                    warn!(error = %e, "HTTP server stopped");
                }
            });
            info!(%addr, "serving /metrics /healthz /readyz");
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
        tracker.spawn(crate::replicas::run(
            self.coordinator.clone(),
            self.ownership.clone(),
            targets,
            self.metrics.clone(),
            self.health.clone(),
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
        let longest = self
            .cfg
            .targets
            .iter()
            .map(|t| t.interval)
            .max()
            .unwrap_or_default();
        let poll_beat = self.health.heartbeat(
            "poller",
            longest.mul_f64(2.0) + self.cfg.api.timeout * 2 + Duration::from_secs(60),
        );
        for (t, state) in self.cfg.targets.iter().zip(states) {
            let poller = self.poller.clone();
            let (t, tok, beat) = (t.clone(), token.clone(), poll_beat.clone());
            tracker.spawn(async move { poller.run_target(t, state, tok, beat).await });
        }
        let grace = self.cfg.delivery.shutdown_grace;
        for sink in self.outbox.sinks() {
            let beat = self.health.heartbeat(
                &format!("sink {}", sink.name()),
                sink.cfg.timeout + Duration::from_secs(60),
            );
            let (outbox, sink, tok) = (self.outbox.clone(), sink.clone(), token.clone());
            tracker.spawn(async move { outbox.run_sink(sink, tok, grace, beat).await });
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
        // The store is open and the server bound: tell systemd (a no-op elsewhere).
        notify(&[NotifyState::Ready, NotifyState::Status("polling")]);
        info!(
            targets = self.cfg.targets.len(),
            sinks = self.cfg.sinks.len(),
            store = %crate::config::redact_url(&self.cfg.store.url),
            "loopwatch running"
        );

        shutdown.await;
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

/// Open the store. With `wait` (the daemon), keep trying while the database is out of
/// reach ([`store::StoreError::is_unavailable`]), backing off from 1 s to 30 s, with
/// `/readyz` answering 503 and why; logged when it starts waiting and when it is back.
/// Any other error (a wrong password, no such database, a locked state file) is final.
async fn open_store(
    cfg: &StoreConfig,
    access: Access,
    role: Role,
    watch: &StoreWatch,
    health: &Health,
    wait: bool,
) -> anyhow::Result<(Arc<dyn Store>, Arc<dyn Coordinator>)> {
    let shown = crate::config::redact_url(&cfg.url);
    if wait {
        health.store_unavailable(format!("opening {shown}"), Instant::now());
    }
    let waiting_since = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match store::open_coordinated(cfg, access, role).await {
            Ok(opened) => {
                health.store_available(started);
                if failures > 0 {
                    info!(store = %shown, waited_s = waiting_since.elapsed().as_secs_f64(), failures,
                        "store reachable; starting");
                }
                return Ok(opened);
            }
            Err(e) if wait && e.is_unavailable() => {
                failures += 1;
                watch.failed("open", started, &e);
                health.store_unavailable(e.to_string(), started);
                if failures == 1 {
                    warn!(error = %e, "store unavailable at start; serving /healthz and /readyz (503) and retrying until it is reachable");
                } else {
                    debug!(error = %e, failures, retry_in_s = backoff.as_secs_f64(), "store still unavailable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `run`'s listener, bound before the store opens, with an interim server answering
/// `/healthz`, `/readyz` (503 and why until the store is open) and `/metrics` on it until
/// [`App::run`] serves the full router on the same socket.
struct Early {
    listener: TcpListener,
    addr: SocketAddr,
    /// Stops the interim server when finished or dropped (a failed build).
    stop: tokio_util::sync::DropGuard,
    server: tokio::task::JoinHandle<()>,
}

impl Early {
    async fn bind(
        cfg: &Config,
        metrics: &Arc<Metrics>,
        health: &Arc<Health>,
    ) -> anyhow::Result<Early> {
        let l = TcpListener::bind(cfg.server.listen)
            .await
            .with_context(|| format!("cannot listen on server.listen {}", cfg.server.listen))?;
        let addr = l.local_addr()?;
        // Two handles on one socket: the interim server's, closed when it stops, and ours.
        let std = l.into_std()?;
        let interim = TcpListener::from_std(std.try_clone()?)?;
        let listener = TcpListener::from_std(std)?;
        let router = server::router(ServerState {
            metrics: metrics.clone(),
            health: health.clone(),
            outbox: None,
        });
        let token = CancellationToken::new();
        let stop = token.clone();
        let server = tokio::spawn(async move {
            let serve = axum::serve(interim, router).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                warn!(error = %e, "HTTP server stopped");
            }
        });
        info!(%addr, "serving /healthz /readyz /metrics while the store opens");
        Ok(Early {
            listener,
            addr,
            stop: token.drop_guard(),
            server,
        })
    }

    /// Stop the interim server (a second at most for its open requests); the socket
    /// stays bound, and connections made meanwhile wait in its backlog.
    async fn finish(self) -> TcpListener {
        let Early {
            listener,
            stop,
            mut server,
            ..
        } = self;
        drop(stop);
        if tokio::time::timeout(Duration::from_secs(1), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        listener
    }
}

/// Send a state to systemd when run as `Type=notify`; without `NOTIFY_SOCKET` it does nothing.
fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("can install a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
