//! The outbox worker: claim due deliveries of one sink -> build and sign -> send ->
//! record the outcome. One worker per sink, each with its own `concurrency`, so a slow or
//! dead sink never delays polling or another sink.
//!
//! Retry policy (docs/events.md): 2xx delivered; 410 dead at once; a failure no retry can
//! fix ([`Failure::is_permanent`]: the payload or the command's environment cannot be
//! built, or, for a `baseten_deploy` sink, a final API answer: a 4xx other than 408/429)
//! dead at once with its reason; anything else waits `retry_schedule[n]` +-20% (at least
//! `Retry-After` when given) and is dead after 1 + len(retry_schedule) attempts. A deploy
//! made moot by a newer one of the same run (`latest_only`) is `superseded` without an
//! attempt.
//!
//! Claims are fenced: each carries a token, every outcome write checks it (a stale
//! attempt's outcome is discarded), and the worker renews what it holds
//! (`worker.rs`), so a claim never lapses under a live attempt or one waiting for a slot.

pub mod approval;
pub mod deploy;
pub mod exec;
mod follow;
mod lifecycle;
mod outcome;
pub mod payload;
mod promote;
mod retry;
/// Signing moved below config and delivery (`crate::signing`); the old path still works.
pub mod webhook;
mod worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Invocation, SinkConfig, SinkKind};
use crate::metrics::Metrics;
use crate::model::CheckpointTarget;
use crate::store::{
    AttemptFacts, AttemptOutcome, Claimed, DeployStage, DeployUpdate, FollowUp, Recorded, Store,
    StoredEvent,
};
use crate::template::{Template, compile_template};
use crate::wake::Wake;
use deploy::{DeploySink, Deployed, LoopsDeployer};
pub use retry::{Failure, RECONCILE_WITHOUT_SCHEDULE, decide, reconcile_at};

// `Deployed` is what `Sent::Deployed` carries; re-exported for the wiring and tests.

/// What one attempt did, when it did not fail.
#[derive(Clone, Debug)]
pub enum Sent {
    /// The HTTP status (0 for exec).
    Status(u16),
    /// A `baseten_deploy` sink deployed the checkpoint.
    Deployed(Deployed),
    /// Not attempted: a newer deploy of the same run makes it moot; why.
    Superseded(String),
    /// A deploy whose outcome cannot be told (several new deployments of its model): why.
    Ambiguous(String),
    /// Not attempted: the deploy (of this model name) waits for `deliveries approve`.
    AwaitingApproval(String),
}

/// A configured sink, ready to send.
pub struct Sink {
    pub cfg: SinkConfig,
    template: Option<Template>,
    http: reqwest::Client,
    /// `kind = "baseten_deploy"`: its settings, and the API it deploys through.
    deploy: Option<DeploySink>,
    deployer: Option<Arc<dyn LoopsDeployer>>,
}

impl Sink {
    /// A deploy sink built this way cannot deploy until [`Sink::with_deployer`].
    pub fn new(cfg: SinkConfig, http: reqwest::Client) -> anyhow::Result<Self> {
        let template = match &cfg.kind {
            SinkKind::Webhook {
                template: Some(t), ..
            } => Some(
                compile_template(t)
                    .map_err(|e| anyhow::anyhow!("sink {}: template: {e}", cfg.name))?,
            ),
            _ => None,
        };
        let deploy = match &cfg.kind {
            SinkKind::BasetenDeploy(d) => Some(
                DeploySink::new(d.clone())
                    .map_err(|e| anyhow::anyhow!("sink {}: {e}", cfg.name))?,
            ),
            _ => None,
        };
        Ok(Sink {
            cfg,
            template,
            http,
            deploy,
            deployer: None,
        })
    }

    /// The Loops API a `baseten_deploy` sink deploys through.
    pub fn with_deployer(mut self, deployer: Arc<dyn LoopsDeployer>) -> Self {
        self.deployer = Some(deployer);
        self
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// A `baseten_deploy` sink's settings.
    pub fn deploy_sink(&self) -> Option<&DeploySink> {
        self.deploy.as_ref()
    }

    /// The API of a `baseten_deploy` sink, once given.
    pub fn deployer(&self) -> Option<&dyn LoopsDeployer> {
        self.deployer.as_deref()
    }

    pub fn payload(&self, event: &StoredEvent) -> Result<payload::Payload, String> {
        match &self.cfg.kind {
            SinkKind::Webhook {
                format,
                content_type,
                ..
            } => payload::build(event, *format, self.template.as_ref(), content_type),
            SinkKind::Exec { .. } | SinkKind::BasetenDeploy(_) => Ok(payload::Payload {
                content_type: "application/json".into(),
                headers: Vec::new(),
                body: event.body.clone().into_bytes(),
            }),
        }
    }

    /// One attempt: Ok(status) on success (0 for exec).
    pub async fn send(&self, event: &StoredEvent) -> Result<u16, Failure> {
        match &self.cfg.kind {
            SinkKind::Webhook {
                url,
                secret,
                previous_secret,
                signing_key,
                headers,
                ..
            } => {
                let payload = self.payload(event).map_err(Failure::Payload)?;
                let keys: Vec<_> = secret.iter().chain(previous_secret.iter()).collect();
                let to = webhook::Target {
                    url,
                    keys: &keys,
                    ed25519: signing_key.as_ref(),
                    headers,
                    timeout: self.cfg.timeout,
                };
                webhook::send(&self.http, &to, &event.id, payload).await
            }
            SinkKind::Exec { command } => exec::run(command, event, self.cfg.timeout).await,
            // Deploys go through the outbox's attempt ([`deploy::DeploySink::attempt`]),
            // which needs the store; a sample send of a deploy sink is `test-sink`'s validate.
            SinkKind::BasetenDeploy(_) => Err(Failure::Payload(
                "a baseten_deploy sink deploys through the outbox".into(),
            )),
        }
    }
}

/// A sink from its config; a `baseten_deploy` one gets the API it deploys through.
fn make_sink(
    cfg: &SinkConfig,
    http: &reqwest::Client,
    deployer: Option<&Arc<dyn LoopsDeployer>>,
) -> anyhow::Result<Sink> {
    let sink = Sink::new(cfg.clone(), http.clone())?;
    match (&sink.deploy, deployer) {
        (None, _) => Ok(sink),
        (Some(_), Some(d)) => Ok(sink.with_deployer(d.clone())),
        (Some(_), None) => Err(anyhow::anyhow!(
            "sink {}: a baseten_deploy sink needs the Loops API client",
            cfg.name
        )),
    }
}

/// An attempt that has finished.
struct Finished {
    claimed: Claimed,
    result: Result<Sent, Failure>,
    took: Duration,
    /// A deploy call may have acted without its outcome being known.
    in_doubt: bool,
    /// A deploy attempt that only reconciled an earlier call in doubt and sent nothing.
    reconciled_only: bool,
    /// Who approved a deploy.
    approved_by: Option<String>,
}

/// What the attempts log keeps of an attempt beyond its outcome: the HTTP status it got
/// (an exec sink's `Status(0)` is none) and how long it took.
fn facts(r: &Result<Sent, Failure>, took: Duration) -> AttemptFacts {
    let status = match r {
        Ok(Sent::Status(code)) => Some(*code).filter(|c| *c != 0),
        Err(f) => f.status(),
        Ok(_) => None,
    };
    AttemptFacts {
        status,
        took: Some(took),
        reconciliation: false,
    }
}

/// The sinks and what they share.
pub struct Outbox {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// The configured sinks; a reload replaces them ([`Outbox::set_sinks`]).
    sinks: RwLock<Vec<Arc<Sink>>>,
    /// Every sink configured since start: a removed sink's deliveries stay pending, and
    /// its backlog gauges keep saying so.
    known: Mutex<BTreeSet<String>>,
    http: reqwest::Client,
    wake: Wake,
    /// The Loops API `baseten_deploy` sinks deploy through (a reload's new ones too).
    deployer: Option<Arc<dyn LoopsDeployer>>,
    /// How the command lines its events carry (`approve_command`) name the config file.
    invocation: Invocation,
}

impl Outbox {
    /// The workers of `sinks`; each looks for due deliveries at once when `wake` fires
    /// (the poller fires it after a commit that queued deliveries).
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        sinks: &[SinkConfig],
        wake: Wake,
    ) -> anyhow::Result<Self> {
        Self::with_deployer(store, metrics, sinks, wake, None)
    }

    /// [`Outbox::new`], with the Loops API `baseten_deploy` sinks deploy through (required
    /// when there is one).
    pub fn with_deployer(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        sinks: &[SinkConfig],
        wake: Wake,
        deployer: Option<Arc<dyn LoopsDeployer>>,
    ) -> anyhow::Result<Self> {
        let http = webhook::client();
        let sinks: Vec<Arc<Sink>> = sinks
            .iter()
            .map(|s| make_sink(s, &http, deployer.as_ref()).map(Arc::new))
            .collect::<anyhow::Result<_>>()?;
        let known = sinks.iter().map(|s| s.name().to_string()).collect();
        Ok(Outbox {
            store,
            metrics,
            sinks: RwLock::new(sinks),
            known: Mutex::new(known),
            http,
            wake,
            deployer,
            invocation: Invocation::default(),
        })
    }

    /// The command lines its events carry name the config file as `how` does (the
    /// daemon's: [`crate::config::Config::invocation`]); bare without.
    pub fn with_invocation(mut self, how: Invocation) -> Self {
        self.invocation = how;
        self
    }

    /// The configured sinks.
    pub fn sinks(&self) -> Vec<Arc<Sink>> {
        self.sinks.read().expect("not poisoned").clone()
    }

    /// A sink ready to run, sharing the HTTP client of the others (a reload's new or
    /// changed sink).
    pub fn build_sink(&self, cfg: &SinkConfig) -> anyhow::Result<Arc<Sink>> {
        make_sink(cfg, &self.http, self.deployer.as_ref()).map(Arc::new)
    }

    /// Replace the configured sinks (a reload); the caller stops and starts the workers.
    pub fn set_sinks(&self, sinks: Vec<Arc<Sink>>) {
        let mut known = self.known.lock().expect("not poisoned");
        known.extend(sinks.iter().map(|s| s.name().to_string()));
        *self.sinks.write().expect("not poisoned") = sinks;
    }

    /// The signal the workers wait on between claims.
    pub fn wake(&self) -> &Wake {
        &self.wake
    }

    /// How long a claim lasts without renewal: a worker that dies mid-attempt frees it
    /// after this. A live worker renews it ([`worker`]), so an attempt started on a fresh
    /// claim always finishes (its `timeout`) before the claim could lapse.
    fn lease(sink: &Sink) -> Duration {
        sink.cfg.timeout + Duration::from_secs(30)
    }

    async fn attempt(&self, sink: &Sink, c: Claimed) -> Finished {
        let start = Instant::now();
        let mut approved_by = None;
        let mut reconciled_only = false;
        let (result, in_doubt) = match (&sink.deploy, &sink.deployer) {
            (Some(d), Some(api)) => {
                let progress = deploy::Progress::default();
                let budget = 1 + sink.cfg.retry_schedule.len() as u32;
                let attempt = d.attempt(
                    api.as_ref(),
                    self.store.as_ref(),
                    sink.name(),
                    &c,
                    budget,
                    &progress,
                );
                match tokio::time::timeout(sink.cfg.timeout, attempt).await {
                    Ok(a) => {
                        approved_by = a.approved_by;
                        reconciled_only = a.reconciled_only;
                        (a.result, a.in_doubt)
                    }
                    // Cut short: what is in doubt depends on how far it got.
                    Err(_) => match progress.step() {
                        // Reading for the reconciliation of an earlier call: still in doubt.
                        deploy::Step::Reconciling => {
                            reconciled_only = true;
                            (
                                Err(Failure::Unknown(deploy::reconciling(
                                    "the reads took longer than the sink's timeout",
                                ))),
                                true,
                            )
                        }
                        // Nothing in doubt, nothing sent yet.
                        deploy::Step::Preparing => (Err(Failure::Timeout), false),
                        // Perhaps mid-call: the next attempt reconciles if a call was
                        // recorded as sent.
                        deploy::Step::Starting | deploy::Step::Calling => {
                            (Err(Failure::Timeout), true)
                        }
                    },
                }
            }
            (Some(_), None) => (
                Err(Failure::Payload(format!(
                    "sink {} is not a baseten_deploy sink with an API client",
                    sink.name()
                ))),
                false,
            ),
            (None, _) => (sink.send(&c.event).await.map(Sent::Status), false),
        };
        Finished {
            claimed: c,
            result,
            took: start.elapsed(),
            in_doubt,
            reconciled_only,
            approved_by,
        }
    }

    /// The sinks a lifecycle event (`checkpoint.deployed`, ...) goes to: those whose
    /// `events` include it, never a deploy sink.
    fn lifecycle_routes(&self, e: &StoredEvent) -> Vec<String> {
        let ct = CheckpointTarget::parse(&e.checkpoint_target);
        let Some(kind) = e.event_type() else {
            return Vec::new();
        };
        self.sinks()
            .iter()
            .filter(|s| s.deploy.is_none() && s.cfg.wants(kind, &e.target, &ct))
            .map(|s| s.name().to_string())
            .collect()
    }

    /// Send everything due now, once (for `loopwatch once`). Failures are rescheduled.
    /// Followed deployments due now are read once. Events a round brought about
    /// (`checkpoint.deployed`, ...) are sent in a second round.
    pub async fn deliver_due(&self) -> DeliverySummary {
        let mut summary = self.deliver_round().await;
        for sink in self.sinks() {
            // Every deploy sink: following deployments (promoting, cleaning up), and ending
            // waits for approval past their deadline (a reload may have turned approval off).
            if sink.deploy.is_some() {
                // A step may make the next due at once (active -> promote -> clean up).
                for _ in 0..4 {
                    if !self.follow_round(&sink).await {
                        break;
                    }
                }
                summary.follow_ups += 1;
            }
        }
        if summary.follow_ups > 0 {
            summary.add(self.deliver_round().await);
        }
        summary
    }

    async fn deliver_round(&self) -> DeliverySummary {
        let mut summary = DeliverySummary::default();
        let sinks = self.sinks();
        let per_sink = sinks.iter().map(|sink| async move {
            let mut s = DeliverySummary::default();
            loop {
                let now = Utc::now();
                let batch = match self
                    .store
                    .claim_due(
                        sink.name(),
                        now,
                        sink.cfg.concurrency.get(),
                        sink.cfg.ordered,
                        Self::lease(sink),
                    )
                    .await
                {
                    Ok(b) if !b.is_empty() => b,
                    Ok(_) => break,
                    Err(e) => {
                        warn!(sink = sink.name(), error = %e, "cannot claim deliveries");
                        break;
                    }
                };
                let results = futures_util::future::join_all(
                    batch.into_iter().map(|c| self.attempt(sink, c)),
                )
                .await;
                // A one-shot run gives a store that stays out of reach 30 s to record.
                let stop = CancellationToken::new();
                match tokio::time::timeout(
                    Duration::from_secs(30),
                    self.record(sink, results, &stop),
                )
                .await
                {
                    Ok(r) => s.add(r),
                    Err(_) => {
                        warn!(
                            sink = sink.name(),
                            "cannot record delivery outcomes; they will be attempted again"
                        );
                        break;
                    }
                }
            }
            s
        });
        for s in futures_util::future::join_all(per_sink).await {
            summary.add(s);
        }
        summary
    }

    /// Refresh the backlog gauges from the store (at scrape time).
    /// With several replicas only one reports the database-wide figures; the others
    /// export 0 ([`Metrics::reports_backlog`]), so a `sum` over replicas is the truth.
    pub async fn refresh_backlog(&self) {
        let rows = if self.metrics.reports_backlog() {
            match self.store.backlog().await {
                Ok(rows) => rows,
                Err(_) => return,
            }
        } else {
            Vec::new()
        };
        let by_sink: HashMap<&str, _> = rows.iter().map(|b| (b.sink.as_str(), b)).collect();
        let now = Utc::now();
        let known: Vec<String> = self
            .known
            .lock()
            .expect("not poisoned")
            .iter()
            .cloned()
            .collect();
        for n in &known {
            let n = n.as_str();
            let b = by_sink.get(n);
            self.metrics
                .pending
                .with_label_values(&[n])
                .set(b.map_or(0, |b| b.pending));
            self.metrics
                .dead
                .with_label_values(&[n])
                .set(b.map_or(0, |b| b.dead));
            let age = b.and_then(|b| b.oldest_pending).map_or(0.0, |t| {
                ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0)
            });
            self.metrics.oldest_pending.with_label_values(&[n]).set(age);
        }
        self.refresh_deploys().await;
    }

    /// `loopwatch_deploys{sink,stage}` from the store, as the backlog gauges: on the
    /// backlog reporter the database-wide counts, elsewhere 0.
    async fn refresh_deploys(&self) {
        let rows = if self.metrics.reports_backlog() {
            match self.store.deploy_stages().await {
                Ok(rows) => rows,
                Err(_) => return,
            }
        } else {
            Vec::new()
        };
        let gauge = &self.metrics.deploys;
        gauge.reset();
        for sink in self.sinks().iter().filter(|s| s.deploy.is_some()) {
            for stage in DeployStage::ALL {
                gauge
                    .with_label_values(&[sink.name(), stage.as_str()])
                    .set(0);
            }
        }
        for (sink, stage, n) in rows {
            gauge.with_label_values(&[&sink, &stage]).set(n);
        }
        self.refresh_approvals().await;
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct DeliverySummary {
    pub delivered: u64,
    /// Failed, with an attempt left: due again per `retry_schedule`.
    pub retrying: u64,
    /// Failed for good (410, or the last attempt): kept as dead.
    pub dead: u64,
    /// Deploys made moot by a newer one (`latest_only`).
    pub superseded: u64,
    /// Deliveries that brought about an event (`checkpoint.deployed`).
    pub follow_ups: u64,
    /// Deploys that now wait for `deliveries approve`.
    pub awaiting_approval: u64,
}

impl DeliverySummary {
    fn add(&mut self, o: DeliverySummary) {
        self.delivered += o.delivered;
        self.retrying += o.retrying;
        self.dead += o.dead;
        self.superseded += o.superseded;
        self.follow_ups += o.follow_ups;
        self.awaiting_approval += o.awaiting_approval;
    }
}
