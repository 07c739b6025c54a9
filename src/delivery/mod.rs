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

pub mod deploy;
pub mod exec;
pub mod payload;
/// Signing moved below config and delivery (`crate::signing`); the old path still works.
pub mod webhook;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use rand::RngExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{SinkConfig, SinkKind};
use crate::health::Heartbeat;
use crate::metrics::Metrics;
use crate::model::{CheckpointTarget, EventType};
use crate::store::{AttemptOutcome, Claimed, FollowUp, Store, StoredEvent};
use crate::template::{Template, compile_template};
use crate::wake::Wake;
use deploy::{DeploySink, Deployed, LoopsDeployer};

/// Why an attempt failed.
#[derive(Clone, Debug)]
pub enum Failure {
    Status {
        code: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    Timeout,
    Connect(String),
    Exec(String),
    /// The payload could not be built: a template that fails to render (or runs out of
    /// fuel or size), a body the CloudEvents encoder cannot produce, an environment value
    /// the OS refuses (a NUL byte, too large). The same event fails the same way on every
    /// attempt, so it is dead at once with this reason; a fixed config and `deliveries
    /// redeliver` send it again. (It followed the retry schedule, for days.)
    Payload(String),
    /// Final: the Loops API refused the request at `step` (`validate`, `deploy`), or it
    /// cannot be made (`model_name`). Dead at once, the reason kept.
    Rejected {
        step: &'static str,
        code: Option<u16>,
        reason: String,
    },
    /// The store could not be asked (a deploy's `latest_only` check): follows the schedule.
    Store(String),
}

impl Failure {
    /// No retry can fix it: dead at once.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Failure::Payload(_) | Failure::Rejected { .. })
    }

    fn status(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            Failure::Rejected { code, .. } => *code,
            _ => None,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { code, body, .. } if body.is_empty() => write!(f, "HTTP {code}"),
            Failure::Status { code, body, .. } => write!(f, "HTTP {code}: {body}"),
            Failure::Timeout => f.write_str("timed out"),
            Failure::Connect(e) => write!(f, "connection failed: {e}"),
            Failure::Exec(e) => f.write_str(e),
            Failure::Payload(e) => write!(f, "cannot build the payload: {e}"),
            Failure::Rejected {
                step,
                code: Some(code),
                reason,
            } => write!(f, "{step} refused (HTTP {code}): {reason}"),
            Failure::Rejected { step, reason, .. } => write!(f, "{step}: {reason}"),
            Failure::Store(e) => write!(f, "cannot read the store: {e}"),
        }
    }
}

/// Decide what happens after attempt number `attempts_before + 1`. `jitter` is in
/// [-1, 1] and scales the +-20% spread.
pub fn decide(
    result: &Result<u16, Failure>,
    attempts_before: u32,
    schedule: &[Duration],
    now: DateTime<Utc>,
    jitter: f64,
) -> AttemptOutcome {
    let failure = match result {
        Ok(_) => return AttemptOutcome::Delivered,
        Err(f) => f,
    };
    let status = failure.status();
    // What is kept and logged: a peer's text in it is redacted at its source; this also
    // covers every failure kind added later.
    let error = crate::redact::secrets(&failure.to_string()).into_owned();
    if status == Some(410) || failure.is_permanent() {
        return AttemptOutcome::Dead { status, error };
    }
    let Some(base) = schedule.get(attempts_before as usize) else {
        return AttemptOutcome::Dead { status, error };
    };
    let mut wait = base.mul_f64(1.0 + 0.2 * jitter.clamp(-1.0, 1.0));
    if let Failure::Status {
        code: 429 | 503,
        retry_after: Some(ra),
        ..
    } = failure
    {
        wait = wait.max(*ra);
    }
    let next = now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
    AttemptOutcome::Retry {
        next,
        status,
        error,
    }
}

/// What one attempt did, when it did not fail.
#[derive(Clone, Debug)]
pub enum Sent {
    /// The HTTP status (0 for exec).
    Status(u16),
    /// A `baseten_deploy` sink deployed the checkpoint.
    Deployed(Deployed),
    /// Not attempted: a newer deploy of the same run makes it moot; why.
    Superseded(String),
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
            SinkKind::BasetenDeploy(_) => self.deploy(event).await.map(|_| 200),
        }
    }

    /// A `baseten_deploy` sink's attempt: validate (when configured), then deploy. Bounded
    /// by the sink's `timeout` as a whole (the API client has its own per request).
    pub async fn deploy(&self, event: &StoredEvent) -> Result<Deployed, Failure> {
        let (Some(d), Some(api)) = (&self.deploy, &self.deployer) else {
            return Err(Failure::Payload(format!(
                "sink {} is not a baseten_deploy sink with an API client",
                self.cfg.name
            )));
        };
        tokio::time::timeout(self.cfg.timeout, d.attempt(api.as_ref(), event))
            .await
            .unwrap_or(Err(Failure::Timeout))
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

/// An attempt that has finished: its delivery, result and duration.
type Finished = (Claimed, Result<Sent, Failure>, Duration);

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
        })
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

    /// How long a claim lasts: a worker that dies mid-attempt frees it after this.
    fn lease(sink: &Sink) -> Duration {
        sink.cfg.timeout + Duration::from_secs(30)
    }

    async fn attempt(&self, sink: &Sink, c: Claimed) -> Finished {
        let start = Instant::now();
        let r = match &sink.deploy {
            Some(d) => self.deploy(sink, d, &c).await,
            None => sink.send(&c.event).await.map(Sent::Status),
        };
        (c, r, start.elapsed())
    }

    /// A deploy sink's attempt: superseded without a call when `latest_only` finds a
    /// newer deploy of the same run (pending, in flight or delivered) at this sink.
    async fn deploy(&self, sink: &Sink, d: &DeploySink, c: &Claimed) -> Result<Sent, Failure> {
        if d.cfg.latest_only
            && let Some(created) = deploy::checkpoint_created_at(&c.event)
        {
            let newer = self
                .store
                .newer_deploy(sink.name(), &c.event.run_id, c.delivery_id, created)
                .await
                .map_err(|e| Failure::Store(e.to_string()))?;
            if let Some(name) = newer {
                return Ok(Sent::Superseded(format!(
                    "superseded by {name}, a newer checkpoint of run {}",
                    c.event.run_id
                )));
            }
        }
        sink.deploy(&c.event).await.map(Sent::Deployed)
    }

    /// The sinks a `checkpoint.deployed` event goes to: those whose `events` include it,
    /// never a deploy sink.
    fn deployed_routes(&self, e: &StoredEvent) -> Vec<String> {
        let ct = CheckpointTarget::parse(&e.checkpoint_target).unwrap_or(CheckpointTarget::Sampler);
        self.sinks()
            .iter()
            .filter(|s| s.deploy.is_none() && s.cfg.wants(EventType::Deployed, &e.target, &ct))
            .map(|s| s.name().to_string())
            .collect()
    }

    /// Record the outcomes of finished attempts, in one write; returns what they were.
    async fn record(&self, sink: &Sink, done: Vec<Finished>) -> DeliverySummary {
        let now = Utc::now();
        let outcomes: Vec<(i64, AttemptOutcome)> = done
            .into_iter()
            .map(|(c, r, took)| (c.delivery_id, self.outcome(sink, &c, r, took, now)))
            .collect();
        let mut summary = DeliverySummary::default();
        for (_, o) in &outcomes {
            match o {
                AttemptOutcome::Delivered => summary.delivered += 1,
                AttemptOutcome::DeliveredWith(_) => {
                    summary.delivered += 1;
                    summary.follow_ups += 1;
                }
                AttemptOutcome::Retry { .. } => summary.retrying += 1,
                AttemptOutcome::Dead { .. } => summary.dead += 1,
                AttemptOutcome::Superseded { .. } => summary.superseded += 1,
            }
        }
        match self.store.record_attempts(&outcomes, now).await {
            Ok(()) => {
                let mut routed = false;
                for (_, o) in &outcomes {
                    if let AttemptOutcome::DeliveredWith(f) = o {
                        if let Some(kind) = f.event.event_type() {
                            self.metrics.target(&f.event.target).event(kind);
                        }
                        routed |= !f.sinks.is_empty();
                    }
                }
                if routed {
                    self.wake.notify();
                }
            }
            Err(e) => {
                // The claims expire and the deliveries are retried: at-least-once holds.
                error!(sink = sink.name(), deliveries = outcomes.len(), error = %e, "cannot record delivery outcomes");
            }
        }
        summary
    }

    /// What an attempt's result means, counted and logged.
    fn outcome(
        &self,
        sink: &Sink,
        c: &Claimed,
        result: Result<Sent, Failure>,
        took: Duration,
        now: DateTime<Utc>,
    ) -> AttemptOutcome {
        let name = sink.name();
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let attempt = c.attempts + 1;
        let ev = &c.event;
        let outcome = match result {
            Ok(Sent::Superseded(reason)) => AttemptOutcome::Superseded { reason },
            Ok(Sent::Deployed(d)) => match deploy::deployed_event(ev, name, &d, now) {
                Ok(event) => {
                    info!(sink = name, event_id = %ev.id, uri = %ev.uri().unwrap_or_default(), model_name = %d.model_name,
                        model_id = %d.model_id, deployment_id = %d.deployment_id, "checkpoint deployed");
                    let sinks = self.deployed_routes(&event);
                    AttemptOutcome::DeliveredWith(Box::new(FollowUp { event, sinks }))
                }
                Err(e) => {
                    error!(sink = name, event_id = %ev.id, error = %e,
                        "deployed, but cannot build the checkpoint.deployed event");
                    AttemptOutcome::Delivered
                }
            },
            Ok(Sent::Status(code)) => {
                decide(&Ok(code), c.attempts, &sink.cfg.retry_schedule, now, jitter)
            }
            Err(f) => decide(&Err(f), c.attempts, &sink.cfg.retry_schedule, now, jitter),
        };
        if !matches!(outcome, AttemptOutcome::Superseded { .. }) {
            self.metrics
                .delivery_duration
                .with_label_values(&[name])
                .observe(took.as_secs_f64());
        }
        let label = match &outcome {
            AttemptOutcome::Delivered | AttemptOutcome::DeliveredWith(_) => {
                debug!(sink = name, event_id = %ev.id, attempt, "delivered");
                "success"
            }
            AttemptOutcome::Superseded { reason } => {
                info!(sink = name, event_id = %ev.id, uri = %ev.uri().unwrap_or_default(), %reason, "deploy superseded");
                "superseded"
            }
            AttemptOutcome::Retry { next, error, .. } => {
                let in_secs = (*next - now).num_milliseconds() as f64 / 1000.0;
                warn!(sink = name, event_id = %ev.id, attempt, %error, retry_in_s = in_secs, "delivery failed, will retry");
                "retry"
            }
            AttemptOutcome::Dead { error, .. } => {
                error!(sink = name, event_id = %ev.id, attempt, %error,
                    "delivery failed for good; kept as dead, replay with `loopwatch deliveries redeliver`");
                "dead"
            }
        };
        self.metrics
            .deliveries
            .with_label_values(&[name, label])
            .inc();
        outcome
    }

    /// Claim up to `room` due deliveries; with the wait before the next claim (none when
    /// there may be more due now).
    async fn claim(&self, sink: &Sink, room: usize) -> (Vec<Claimed>, Duration) {
        let now = Utc::now();
        let idle = Duration::from_secs(1);
        match self
            .store
            .claim_due(sink.name(), now, room, sink.cfg.ordered, Self::lease(sink))
            .await
        {
            Ok(batch) if batch.len() == room => (batch, Duration::ZERO),
            Ok(batch) => {
                let wait = match self.store.next_due(sink.name()).await {
                    Ok(Some(due)) if due > now => (due - now).to_std().unwrap_or(idle).min(idle),
                    _ => idle,
                };
                (batch, wait)
            }
            Err(e) if e.is_unavailable() => {
                // Logged once for every loop by the store watch.
                debug!(sink = sink.name(), error = %e, "cannot claim deliveries; will retry");
                (Vec::new(), idle)
            }
            Err(e) => {
                warn!(sink = sink.name(), error = %e, "cannot claim deliveries; will retry");
                (Vec::new(), idle)
            }
        }
    }

    /// The worker of one sink, until `token` is cancelled; then in-flight attempts get
    /// `grace` to finish and the rest stay pending.
    ///
    /// Three things overlap: attempts; one claim at a time, which keeps up to one more
    /// slot-full of deliveries claimed ahead (a slot that frees starts its next attempt at
    /// once); and one write at a time of the outcomes of finished attempts (every attempt
    /// that finishes while a write is under way goes into the next: group commit without
    /// a timer). A slot is busy from the start of an attempt until its outcome is written,
    /// so at most `concurrency` attempts are ever unrecorded: what a crash can repeat
    /// (under the same id, never lost).
    pub async fn run_sink(
        &self,
        sink: Arc<Sink>,
        token: CancellationToken,
        grace: Duration,
        beat: Heartbeat,
    ) {
        let limit = sink.cfg.concurrency.get();
        let ahead = limit;
        let mut ready: VecDeque<Claimed> = VecDeque::new();
        let mut inflight = FuturesUnordered::new();
        let mut finished: Vec<Finished> = Vec::new();
        let mut writing: Option<BoxFuture<'_, ()>> = None;
        let mut writing_len = 0;
        let mut claiming: Option<BoxFuture<'_, (Vec<Claimed>, Duration)>> = None;
        let mut next_claim = tokio::time::Instant::now();
        // New deliveries were announced while a claim was under way (it may have missed
        // them): claim again at once when it returns.
        let mut poked = false;
        let mut waiter = self.wake.subscribe();
        loop {
            beat.beat();
            while inflight.len() + finished.len() + writing_len < limit
                && let Some(c) = ready.pop_front()
            {
                inflight.push(self.attempt(&sink, c));
            }
            if writing.is_none() && !finished.is_empty() {
                writing_len = finished.len();
                let batch = std::mem::take(&mut finished);
                writing = Some(Box::pin(async {
                    self.record(&sink, batch).await;
                }));
            }
            // Claims in batches: once at most half a slot-full is left claimed ahead.
            let busy = inflight.len() + finished.len() + writing_len;
            let room = if ready.len() <= limit / 2 {
                (limit + ahead).saturating_sub(busy + ready.len())
            } else {
                0
            };
            if claiming.is_none() && room > 0 && tokio::time::Instant::now() >= next_claim {
                claiming = Some(Box::pin(self.claim(&sink, room)));
            }
            tokio::select! {
                Some(done) = inflight.next() => {
                    finished.push(done);
                    while let Some(Some(more)) = inflight.next().now_or_never() {
                        finished.push(more);
                    }
                }
                () = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    writing_len = 0;
                    // What was just written may be due soon (a retry after a short wait)
                    // or now (with `ordered`, the next event of a run whose head was
                    // delivered): look again instead of sleeping out the idle wait.
                    next_claim = tokio::time::Instant::now();
                    poked |= claiming.is_some();
                }
                (batch, wait) = async { claiming.as_mut().expect("guarded").await }, if claiming.is_some() => {
                    claiming = None;
                    ready.extend(batch);
                    next_claim = tokio::time::Instant::now() + if poked { Duration::ZERO } else { wait };
                    poked = false;
                }
                () = waiter.wait() => {
                    next_claim = tokio::time::Instant::now();
                    poked = claiming.is_some();
                }
                _ = tokio::time::sleep_until(next_claim), if claiming.is_none() && room > 0 => {}
                _ = token.cancelled() => break,
            }
        }
        // Claimed but not attempted: give them back, so that another replica (or the next
        // start) need not wait for the claims to expire.
        if let Some(c) = claiming.take() {
            ready.extend(c.await.0);
        }
        if !ready.is_empty() {
            let ids: Vec<i64> = ready.iter().map(|c| c.delivery_id).collect();
            if let Err(e) = self.store.release(&ids).await {
                warn!(sink = sink.name(), error = %e, "cannot give back claims; they expire on their own");
            }
        }
        if inflight.is_empty() && finished.is_empty() && writing.is_none() {
            return;
        }
        info!(
            sink = sink.name(),
            in_flight = inflight.len(),
            grace_s = grace.as_secs_f64(),
            "waiting for in-flight deliveries"
        );
        let drain = async {
            if let Some(w) = writing.take() {
                w.await;
            }
            while let Some(done) = inflight.next().await {
                finished.push(done);
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    finished.push(more);
                }
                self.record(&sink, std::mem::take(&mut finished)).await;
            }
            if !finished.is_empty() {
                self.record(&sink, finished).await;
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            warn!(
                sink = sink.name(),
                "grace period over; unfinished deliveries stay pending"
            );
        }
    }

    /// Send everything due now, once (for `loopwatch once`). Failures are rescheduled.
    /// Events a round brought about (`checkpoint.deployed`) are sent in a second round.
    pub async fn deliver_due(&self) -> DeliverySummary {
        let mut summary = self.deliver_round().await;
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
                s.add(self.record(sink, results).await);
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
}

impl DeliverySummary {
    fn add(&mut self, o: DeliverySummary) {
        self.delivered += o.delivered;
        self.retrying += o.retrying;
        self.dead += o.dead;
        self.superseded += o.superseded;
        self.follow_ups += o.follow_ups;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> Vec<Duration> {
        vec![Duration::from_secs(5), Duration::from_secs(300)]
    }

    fn status(code: u16, retry_after: Option<u64>) -> Result<u16, Failure> {
        Err(Failure::Status {
            code,
            retry_after: retry_after.map(Duration::from_secs),
            body: String::new(),
        })
    }

    fn wait_of(o: &AttemptOutcome, now: DateTime<Utc>) -> f64 {
        match o {
            AttemptOutcome::Retry { next, .. } => (*next - now).num_milliseconds() as f64 / 1000.0,
            other => panic!("expected a retry, got {other:?}"),
        }
    }

    #[test]
    fn success_is_delivered() {
        assert!(matches!(
            decide(&Ok(204), 0, &schedule(), Utc::now(), 0.0),
            AttemptOutcome::Delivered
        ));
    }

    #[test]
    fn a_refused_deploy_is_dead_at_once_with_its_reason() {
        let refused = Err(Failure::Rejected {
            step: "validate",
            code: Some(400),
            reason: "checkpoint uses another LoRA config".into(),
        });
        match decide(&refused, 0, &schedule(), Utc::now(), 0.0) {
            AttemptOutcome::Dead { status, error } => {
                assert_eq!(status, Some(400));
                assert_eq!(
                    error,
                    "validate refused (HTTP 400): checkpoint uses another LoRA config"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gone_is_dead_at_once() {
        assert!(matches!(
            decide(&status(410, None), 0, &schedule(), Utc::now(), 0.0),
            AttemptOutcome::Dead { .. }
        ));
    }

    #[test]
    fn a_payload_that_cannot_be_built_is_dead_at_once_with_its_reason() {
        let r = Err(Failure::Payload(
            "template: undefined value (in body:1)".into(),
        ));
        match decide(&r, 0, &schedule(), Utc::now(), 0.0) {
            AttemptOutcome::Dead { status, error } => {
                assert_eq!(status, None);
                assert_eq!(
                    error,
                    "cannot build the payload: template: undefined value (in body:1)"
                );
            }
            other => panic!("{other:?}"),
        }
        // Transient ones still follow the schedule.
        for f in [
            Failure::Timeout,
            Failure::Connect("refused".into()),
            Failure::Exec("exit 1".into()),
        ] {
            assert!(!f.is_permanent());
            assert!(matches!(
                decide(&Err(f), 0, &schedule(), Utc::now(), 0.0),
                AttemptOutcome::Retry { .. }
            ));
        }
    }

    #[test]
    fn schedule_with_jitter_then_dead() {
        let now = Utc::now();
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, 0.0), now),
            5.0
        );
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, 1.0), now),
            6.0
        );
        assert_eq!(
            wait_of(&decide(&status(500, None), 0, &schedule(), now, -1.0), now),
            4.0
        );
        assert_eq!(
            wait_of(
                &decide(&Err(Failure::Timeout), 1, &schedule(), now, 0.0),
                now
            ),
            300.0
        );
        // 1 + len(schedule) attempts in all: the third failure is final
        assert!(matches!(
            decide(&status(302, None), 2, &schedule(), now, 0.0),
            AttemptOutcome::Dead { .. }
        ));
        assert!(matches!(
            decide(&status(500, None), 0, &[], now, 0.0),
            AttemptOutcome::Dead { .. }
        ));
    }

    #[test]
    fn retry_after_is_a_floor_for_429_and_503() {
        let now = Utc::now();
        assert_eq!(
            wait_of(
                &decide(&status(429, Some(60)), 0, &schedule(), now, 0.0),
                now
            ),
            60.0
        );
        assert_eq!(
            wait_of(
                &decide(&status(503, Some(2)), 0, &schedule(), now, 0.0),
                now
            ),
            5.0
        );
        assert_eq!(
            wait_of(
                &decide(&status(500, Some(60)), 0, &schedule(), now, 0.0),
                now
            ),
            5.0
        );
    }
}
