//! Wiring: builds every part from a validated config, owns the one cancellation token and
//! task tracker, and is the only place that spawns tasks. Lifecycle: open the store and
//! bind the server ([`App::build`], so callers learn the bound address), then run the
//! pollers and sink workers until `shutdown` resolves, then drain within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::api;
use crate::config::Config;
use crate::delivery::Outbox;
use crate::delivery::deploy::{CallError, DeployRequest, Deployment, LoopsDeployer};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::TargetState;
use crate::poller::Poller;
use crate::replicas::Ownership;
use crate::server::{self, ServerState};
use crate::store::postgres::{Leases, PgStore};
use crate::store::{self, Access, Store};
use crate::wake::Wake;

/// Everything one daemon needs, built and bound but not yet running.
pub struct App {
    cfg: Config,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub outbox: Arc<Outbox>,
    pub poller: Arc<Poller>,
    listener: Option<TcpListener>,
    addr: Option<SocketAddr>,
    /// With PostgreSQL: this replica's leases and the targets they give it.
    leases: Option<(Leases, Arc<Ownership>)>,
}

impl App {
    /// Open the store, build the client and sinks. With `serve`, bind the HTTP listener.
    pub async fn build(cfg: Config, serve: bool) -> anyhow::Result<App> {
        Self::build_with(cfg, serve, Access::ReadWrite).await
    }

    /// [`App::build`] with the store opened for `access` (`once --dry-run`: read-only).
    pub async fn build_with(cfg: Config, serve: bool, access: Access) -> anyhow::Result<App> {
        let metrics = Arc::new(Metrics::new());
        metrics.init_series(&cfg);
        let (store, leases): (Arc<dyn Store>, _) = if cfg.store.is_postgres() {
            let pg = PgStore::open_with(&cfg.store.url, access).await?;
            let leases = Leases::new(&pg, cfg.store.replica_id.clone(), cfg.store.lease_ttl);
            let own = Arc::new(Ownership::new(cfg.store.replica_id.clone()));
            metrics.targets_owned.set(0);
            (Arc::new(pg), Some((leases, own)))
        } else {
            (store::open_with(&cfg.store.url, access).await?, None)
        };
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
        let outbox = Arc::new(Outbox::with_deployer(
            store.clone(),
            metrics.clone(),
            &cfg.sinks,
            wake.clone(),
            Some(deployer(client.clone(), metrics.clone())),
        )?);
        let health = Arc::new(Health::new(cfg.targets.iter().map(|t| t.name.clone())));
        let mut poller = Poller::new(
            client,
            store.clone(),
            metrics.clone(),
            Some(wake),
            health.clone(),
            cfg.poll.clone(),
            cfg.sinks.clone(),
        );
        if let Some((_, own)) = &leases {
            poller = poller.with_ownership(own.clone());
        }
        let poller = Arc::new(poller);
        let (listener, addr) = if serve {
            let l = TcpListener::bind(cfg.server.listen)
                .await
                .with_context(|| format!("cannot listen on server.listen {}", cfg.server.listen))?;
            let a = l.local_addr()?;
            (Some(l), Some(a))
        } else {
            (None, None)
        };
        Ok(App {
            cfg,
            store,
            metrics,
            health,
            outbox,
            poller,
            listener,
            addr,
            leases,
        })
    }

    /// The bound address of `/metrics` `/healthz` `/readyz`.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// With PostgreSQL: the target leases, under this process's `store.replica_id`.
    pub fn leases(&self) -> Option<&Leases> {
        self.leases.as_ref().map(|(l, _)| l)
    }

    /// Run until `shutdown` resolves, then stop polling, give in-flight deliveries the
    /// grace period, and return.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let tracker = TaskTracker::new();

        if let (Some(listener), Some(addr)) = (self.listener.take(), self.addr) {
            let router = server::router(ServerState {
                metrics: self.metrics.clone(),
                health: self.health.clone(),
                outbox: self.outbox.clone(),
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

        if let Some((leases, own)) = self.leases.take() {
            let ttl = self.cfg.store.lease_ttl;
            let beat = self
                .health
                .heartbeat("leases", ttl * 2 + Duration::from_secs(30));
            let targets: Vec<String> = self.cfg.targets.iter().map(|t| t.name.clone()).collect();
            let (metrics, health, tok) = (self.metrics.clone(), self.health.clone(), token.clone());
            info!(replica = %own.replica, lease_ttl_s = ttl.as_secs_f64(), "sharing targets with other replicas");
            tracker.spawn(crate::replicas::run(
                leases, ttl, own, targets, metrics, health, tok, beat,
            ));
        }
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
        // A single instance owns every target: read all their states in one go (with
        // several replicas each poller loads a target when it takes its lease).
        let mut states: Vec<Option<TargetState>> = vec![None; self.cfg.targets.len()];
        if !self.cfg.store.is_postgres() {
            let names: Vec<&str> = self.cfg.targets.iter().map(|t| t.name.as_str()).collect();
            let started = std::time::Instant::now();
            match self.store.load_targets(&names).await {
                Ok(loaded) => {
                    info!(
                        targets = loaded.len(),
                        tracked = loaded.iter().map(|s| s.checkpoints.len()).sum::<usize>(),
                        took_s = started.elapsed().as_secs_f64(),
                        "state loaded"
                    );
                    states = loaded.into_iter().map(Some).collect();
                }
                Err(e) => {
                    warn!(error = %e, "cannot load the state at once; each target will load its own")
                }
            }
        }
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

/// The Loops API as `baseten_deploy` sinks need it, over the shared client (its token
/// bucket, timeout and `loopwatch_api_requests_total`).
pub fn deployer(client: Arc<api::Client>, metrics: Arc<Metrics>) -> Arc<dyn LoopsDeployer> {
    Arc::new(ApiDeployer { client, metrics })
}

struct ApiDeployer {
    client: Arc<api::Client>,
    metrics: Arc<Metrics>,
}

impl ApiDeployer {
    fn count<T>(&self, endpoint: api::Endpoint, r: &Result<T, api::Error>) {
        let code = match r {
            Ok(_) => "200".to_string(),
            Err(e) => e.code_label(),
        };
        self.metrics.api_request(endpoint.label(), &code);
    }
}

#[async_trait::async_trait]
impl LoopsDeployer for ApiDeployer {
    async fn validate(&self, path: &str, run_id: Option<&str>) -> Result<(), CallError> {
        let r = self.client.validate(path, run_id).await;
        self.count(api::Endpoint::Validate, &r);
        r.map_err(call_error)
    }

    async fn deploy(&self, r: &DeployRequest) -> Result<Deployment, CallError> {
        let request = api::DeployRequest {
            checkpoint_ids: r.checkpoint_ids.clone(),
            model_name: r.model_name.clone(),
            instance_type_id: r.instance_type_id.clone(),
            hf_secret_name: r.hf_secret_name.clone(),
        };
        let r = self.client.deploy(&request).await;
        self.count(api::Endpoint::Deploy, &r);
        let d = r.map_err(call_error)?;
        Ok(Deployment {
            model_id: d.model_id,
            deployment_id: d.deployment_id,
        })
    }
}

/// The outbox's classification of a client error (docs/events.md, "baseten_deploy").
fn call_error(e: api::Error) -> CallError {
    match e {
        api::Error::Status {
            code,
            retry_after,
            message,
            ..
        } => CallError::status(code, retry_after, message),
        api::Error::Timeout => CallError::timeout(e.to_string()),
        api::Error::Connect(_) | api::Error::Transport(_) => CallError::transport(e.to_string()),
        // A 2xx that is not the documented answer: the deploy may have happened, so it
        // is not retried (that would deploy again).
        api::Error::Decode(_) | api::Error::TooLarge(_) => {
            CallError::invalid(200, format!("the answer is not as documented: {e}"))
        }
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
