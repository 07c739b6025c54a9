//! The per-target schedule: wait -> fetch -> probe (the readiness of null checkpoints)
//! -> diff -> commit (state + events + deliveries in one transaction) -> wake the outbox.
//! Each target is a loop of turns ([`TargetLoop`], [`Poller::turn`]), so polls of one
//! target never overlap; the daemon runs the turns of every target on a few workers
//! taking them from one timer queue ([`Fleet`]), and a semaphore bounds the polls in
//! flight across targets.
//!
//! Waits: `syncing_interval` while the target has a pending checkpoint, `interval`
//! otherwise, +-`jitter`; after a transient failure, `syncing_interval` doubling up to
//! `interval`; never sooner than a `Retry-After`.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::RngExt;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api;
use crate::config::{NullStatus, PollConfig, SinkConfig, TargetConfig};
use crate::diff::{self, DiffOptions};
use crate::health::{Health, Heartbeat};
use crate::metrics::{Metrics, PollOutcome};
use crate::model::{
    Checkpoint, CheckpointTarget, Event, EventType, ProbeMemo, SyncClass, TargetState,
};
use crate::replicas::Ownership;
use crate::store::{Fence, PollCommit, Store, StoreError};
use crate::wake::Wake;

mod fleet;
mod probe;
mod schedule;
pub use fleet::{Fleet, Gone, Joining};
pub use probe::{FILES_PAGE_SIZE, MAX_PROBES_PER_POLL, PROBE_REQUESTS_PER_POLL};
use probe::{awaits_probe, probe_changes, remember_probes};
pub use schedule::{Cadence, cadence, next_wait};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Api(#[from] api::Error),
    #[error("cannot store the poll: {0}")]
    Store(#[from] StoreError),
    /// Shutdown came before the listing did: nothing was written.
    #[error("cancelled by shutdown before the listing arrived; nothing was written")]
    Cancelled,
}

/// What one successful poll found.
#[derive(Debug, Default)]
pub struct PollReport {
    pub checkpoints: usize,
    pub events: Vec<Event>,
    pub wrote: bool,
}

pub struct Poller {
    client: Arc<api::Client>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// Fired after a commit that queued deliveries.
    wake: Option<Wake>,
    health: Arc<Health>,
    /// `[poll]` and the sinks events are routed to; a reload replaces both
    /// ([`Poller::reconfigure`]).
    cfg: RwLock<Arc<PollConfig>>,
    sinks: RwLock<Arc<Vec<SinkConfig>>>,
    permits: Semaphore,
    /// Permits to forget as they come back, after a reload lowered `concurrency`.
    permits_owed: AtomicUsize,
    ownership: Option<Arc<Ownership>>,
    /// The unknown `sync_status` values already logged (each is logged once).
    unknown_statuses: Mutex<HashSet<String>>,
    /// Targets whose `checkpoint_path` was answered 404 at their last poll (logged once
    /// when it goes missing, once when it is back).
    paths_missing: Mutex<HashSet<String>>,
    /// The checkpoints already logged for a `created_at` past the horizon.
    created_ahead: Mutex<HashSet<String>>,
}

/// At most this many distinct unknown `sync_status` values are remembered and logged.
const UNKNOWN_STATUSES_LOGGED: usize = 64;

/// At most this many checkpoints with a `created_at` past the horizon are remembered
/// (logged and counted once each); more are neither logged nor counted again.
const CREATED_AHEAD_LOGGED: usize = 4096;

impl Poller {
    pub fn new(
        client: Arc<api::Client>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        wake: Option<Wake>,
        health: Arc<Health>,
        cfg: PollConfig,
        sinks: Vec<SinkConfig>,
    ) -> Self {
        let permits = Semaphore::new(cfg.concurrency.get());
        Poller {
            client,
            store,
            metrics,
            wake,
            health,
            cfg: RwLock::new(Arc::new(cfg)),
            sinks: RwLock::new(Arc::new(sinks)),
            permits,
            permits_owed: AtomicUsize::new(0),
            ownership: None,
            unknown_statuses: Mutex::default(),
            paths_missing: Mutex::default(),
            created_ahead: Mutex::default(),
        }
    }

    /// Poll only the targets whose lease this replica holds (several replicas).
    pub fn with_ownership(mut self, own: Arc<Ownership>) -> Self {
        self.ownership = Some(own);
        self
    }

    /// The `[poll]` settings in force.
    fn cfg(&self) -> Arc<PollConfig> {
        self.cfg.read().expect("not poisoned").clone()
    }

    /// Apply a reloaded `[poll]` and sinks: polls from now on use them (a poll under way
    /// finishes with the old ones), and `poll.concurrency` is resized.
    pub fn reconfigure(&self, cfg: PollConfig, sinks: Vec<SinkConfig>) {
        let (old, new) = (self.cfg().concurrency.get(), cfg.concurrency.get());
        if new > old {
            // Pay back what a previous shrink still owes before adding permits.
            let owed = self.permits_owed.swap(0, Ordering::SeqCst);
            let add = (new - old).saturating_sub(owed);
            self.permits_owed
                .store(owed.saturating_sub(new - old), Ordering::SeqCst);
            self.permits.add_permits(add);
        } else if new < old {
            let forgotten = self.permits.forget_permits(old - new);
            // Permits in use now are forgotten as they are given back.
            self.permits_owed
                .fetch_add(old - new - forgotten, Ordering::SeqCst);
        }
        *self.cfg.write().expect("not poisoned") = Arc::new(cfg);
        *self.sinks.write().expect("not poisoned") = Arc::new(sinks);
    }

    /// Log each `sync_status` value outside the documented ones the first time it is seen
    /// (passed through, logged once, counted as `other`).
    fn log_unknown_statuses(&self, target: &str, listing: &[Checkpoint]) {
        for c in listing {
            let Some(status) = c.sync_status.as_deref() else {
                continue;
            };
            if SyncClass::of(Some(status)) != SyncClass::Other {
                continue;
            }
            let mut seen = self.unknown_statuses.lock().expect("not poisoned");
            if seen.len() < UNKNOWN_STATUSES_LOGGED && seen.insert(status.to_string()) {
                warn!(target, checkpoint_id = %c.id, sync_status = status,
                    "unknown sync_status from the API: counted as \"other\", never fires completed (logged once per value)");
            }
        }
    }

    /// Log and count, once per checkpoint, a `created_at` more than a day past `now`: it
    /// is ordered as if created when first seen (`crate::model::ordering_time`), so one
    /// poisoned date cannot make every later checkpoint of its run look older.
    fn log_created_ahead(&self, target: &str, listing: &[Checkpoint], now: DateTime<Utc>) {
        for c in listing {
            let Some(created) = crate::model::parse_created_at(&c.created_at) else {
                continue;
            };
            if !crate::model::beyond_horizon(created, now) {
                continue;
            }
            let mut seen = self.created_ahead.lock().expect("not poisoned");
            if seen.len() < CREATED_AHEAD_LOGGED && seen.insert(c.id.clone()) {
                self.metrics.target(target).created_ahead();
                warn!(target, checkpoint_id = %c.id, created_at = %c.created_at,
                    "created_at is more than a day past this host's clock: ordered as if created when first seen (logged once per checkpoint)");
            }
        }
    }

    fn diff_options(&self) -> DiffOptions {
        let cfg = self.cfg();
        DiffOptions {
            emit_existing: cfg.emit_existing,
            delete_after_missing: cfg.delete_after_missing_polls,
            stalled_after: cfg
                .stalled_after
                .and_then(|d| chrono::Duration::from_std(d).ok()),
            probe_null: cfg.null_status == NullStatus::Probe,
        }
    }

    /// Poll one target once. On success `state` is advanced; on any failure it is untouched
    /// and nothing was written. `dry_run` diffs without writing.
    pub async fn poll_target(
        &self,
        t: &TargetConfig,
        state: &mut TargetState,
        dry_run: bool,
        fence: Option<Fence>,
    ) -> Result<PollReport, PollError> {
        let never = CancellationToken::new();
        self.poll_until(t, state, dry_run, fence, &never, None)
            .await
    }

    /// [`Poller::poll_target`], given up ([`PollError::Cancelled`], nothing written) when
    /// `cancel` fires while the poll waits for a slot, a rate-limit token or the API. Once
    /// the listing is in, the poll runs to its end: a commit is never cut. `beat` beats
    /// while the poll waits for a slot (a target's turn may be long in coming).
    pub async fn poll_until(
        &self,
        t: &TargetConfig,
        state: &mut TargetState,
        dry_run: bool,
        fence: Option<Fence>,
        cancel: &CancellationToken,
        beat: Option<&Heartbeat>,
    ) -> Result<PollReport, PollError> {
        let acquire = async {
            match beat {
                Some(b) => b.while_waiting(self.permits.acquire()).await,
                None => self.permits.acquire().await,
            }
        };
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(PollError::Cancelled),
            p = acquire => p.expect("never closed"),
        };
        // Boxed: the poll's future (HTTP, decode, store) exists only while it runs, so a
        // waiting target costs a small future, not a poll's worth, times 10,000 targets.
        let r = Box::pin(self.poll_now(t, state, dry_run, fence, cancel)).await;
        self.give_back(permit);
        r
    }

    /// A poll slot, waited for until `cancel` fires (None then).
    async fn slot(&self, cancel: &CancellationToken) -> Option<SemaphorePermit<'_>> {
        if let Ok(free) = self.permits.try_acquire() {
            return Some(free);
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => None,
            p = self.permits.acquire() => Some(p.expect("never closed")),
        }
    }

    /// Give a poll slot back, or forget it if a reload lowered `concurrency` since.
    fn give_back(&self, permit: SemaphorePermit<'_>) {
        if self.permits_owed.load(Ordering::Relaxed) == 0 {
            return;
        }
        let owed = self
            .permits_owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if owed.is_ok() {
            permit.forget();
        }
    }

    /// One poll, in named steps: fetch -> (settled? done) -> decode -> narrow -> probe -> plan ->
    /// commit -> advance the state. Any failure returns before the state is touched.
    async fn poll_now(
        &self,
        t: &TargetConfig,
        state: &mut TargetState,
        dry_run: bool,
        fence: Option<Fence>,
        cancel: &CancellationToken,
    ) -> Result<PollReport, PollError> {
        let name = t.name.as_str();
        let start = Instant::now();
        let body = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(PollError::Cancelled),
            r = self.client.fetch(&t.filter) => r.map_err(|e| self.failed(name, e, start))?,
        };
        let code = if body.path_not_found() { "404" } else { "200" };
        self.note_path(t, body.path_not_found());
        // A null checkpoint waiting for a probe keeps the same listing worth a look (a
        // state settled before probing existed, e.g. loaded from the store, included).
        let probing = self.cfg().null_status == NullStatus::Probe && awaits_probe(state);
        let digest = watched_digest(body.digest(), t.checkpoint_targets.as_ref());
        if !dry_run
            && !probing
            && let Some(settled) = state.settled.filter(|s| s.digest == digest)
        {
            // The very listing this state already agrees with: nothing to decode or diff.
            self.count_request(code);
            self.observe(t, state, &[], start, false);
            return Ok(PollReport {
                checkpoints: settled.checkpoints,
                events: Vec::new(),
                wrote: false,
            });
        }
        let listing = body.decode().map_err(|e| self.failed(name, e, start))?;
        self.count_request(code);
        // Listed but not watched (`checkpoint_targets`): not missing either.
        let unwatched = unwatched(&listing, t.checkpoint_targets.as_ref());
        let listing = narrow(listing, t.checkpoint_targets.as_ref());
        self.log_unknown_statuses(name, &listing);
        self.log_created_ahead(name, &listing, Utc::now());
        let filter = t.filter.to_string();
        if let Some(old) = diff::rebaseline_on_new_filter(state, &filter) {
            warn!(target = name, old, new = %filter,
                "the target's filter changed; taking a new baseline");
        }
        let now = Utc::now();
        let (ready, probes) = self.probe(t, state, &listing, now, cancel).await;
        let listed = diff::Listing {
            checkpoints: &listing,
            unwatched: &unwatched,
            digest,
            filter: &filter,
            ready: &ready,
        };
        let mut plan = diff::plan(name, state, listed, now, &self.diff_options());
        // What the probes saw and when, kept with the rows (a new process carries on from
        // it): a poll that probed writes even when the listing changed nothing.
        let after = plan.next.as_ref().unwrap_or(state);
        let probes = remember_probes(&state.probes, &after.checkpoints, probes);
        let probe_writes = probe_changes(&state.probes, &probes);
        let wrote = (plan.writes() || !probe_writes.is_empty()) && !dry_run;
        if wrote {
            self.commit(name, &filter, &plan, probe_writes, now, fence, start)
                .await?;
        }
        let events = if dry_run {
            plan.diff.events
        } else {
            if plan.diff.baseline {
                info!(
                    target = name,
                    checkpoints = listing.len(),
                    emitted = plan.diff.events.len(),
                    "baseline recorded"
                );
            }
            let events = std::mem::take(&mut plan.diff.events);
            plan.apply(state);
            state.probes = probes;
            self.observe(t, state, &events, start, true);
            if !events.is_empty()
                && let Some(w) = &self.wake
            {
                w.notify();
            }
            events
        };
        Ok(PollReport {
            checkpoints: listing.len(),
            events,
            wrote,
        })
    }

    /// A `checkpoint_path` answered 404 is an empty listing (a successful poll): said once
    /// at INFO when the path goes missing, and once when it is listed again.
    fn note_path(&self, t: &TargetConfig, missing: bool) {
        let mut paths = self.paths_missing.lock().expect("not poisoned");
        let changed = if missing {
            paths.insert(t.name.clone())
        } else {
            paths.remove(&t.name)
        };
        if changed && missing {
            info!(target = %t.name, filter = %t.filter,
                "checkpoint_path not found (404): an empty listing; its checkpoints count as missing");
        } else if changed {
            info!(target = %t.name, filter = %t.filter, "checkpoint_path found again");
        }
    }

    /// A failed fetch or decode: counted and timed (a hanging API shows as latency, not
    /// silence), and nothing else happens.
    fn failed(&self, target: &str, e: api::Error, start: Instant) -> PollError {
        self.count_request(&e.code_label());
        let outcome = if e.is_rate_limited() {
            PollOutcome::RateLimited
        } else {
            PollOutcome::Error
        };
        let m = self.metrics.target(target);
        m.poll(outcome);
        m.poll_duration(start.elapsed().as_secs_f64());
        e.into()
    }

    fn count_request(&self, code: &str) {
        self.metrics.api_request(api::Endpoint::List.label(), code);
    }

    /// Write the plan's rows, events and deliveries, and what the probes saw, in one
    /// transaction (fenced by the lease when replicas share the store).
    #[allow(clippy::too_many_arguments)]
    async fn commit(
        &self,
        target: &str,
        filter: &str,
        plan: &diff::Plan,
        probes: Vec<(&str, Option<&ProbeMemo>)>,
        now: DateTime<Utc>,
        fence: Option<Fence>,
        start: Instant,
    ) -> Result<(), PollError> {
        let sinks = self.sinks.read().expect("not poisoned").clone();
        let commit = PollCommit {
            target,
            filter,
            diff: &plan.diff,
            sinks: route(&plan.diff.events, &sinks),
            now,
            fence,
            settled: plan.settled.map(|s| s.digest),
            probes,
        };
        if let Err(e) = self.store.commit_poll(commit).await {
            let m = self.metrics.target(target);
            m.poll(PollOutcome::Error);
            m.poll_duration(start.elapsed().as_secs_f64());
            if matches!(e, StoreError::Fenced { .. }) {
                m.fencing_rejection();
            }
            return Err(e.into());
        }
        Ok(())
    }

    /// Metrics and readiness after a successful poll; `diffed` is false when the listing
    /// was the settled one (the checkpoint gauges cannot have changed).
    fn observe(
        &self,
        t: &TargetConfig,
        state: &TargetState,
        events: &[Event],
        start: Instant,
        diffed: bool,
    ) {
        let name = t.name.as_str();
        let m = self.metrics.target(name);
        m.poll(PollOutcome::Success);
        m.poll_duration(start.elapsed().as_secs_f64());
        m.last_success(Utc::now().timestamp_millis() as f64 / 1000.0);
        for e in events {
            m.event(e.kind);
            if e.kind == EventType::Completed
                && let Some(s) = e.sync_seconds
            {
                m.sync_duration(s);
            }
            let checkpoint = e.uri().unwrap_or_else(|| e.checkpoint_id.clone());
            info!(target = name, event = %e.kind, %checkpoint, event_id = %e.id, "event");
        }
        if diffed {
            self.publish_checkpoints(name, state);
        }
        self.health.target_polled(name);
    }

    /// The checkpoint gauges from `state`: after a poll that diffed, and whenever a
    /// target's state is loaded (a restart must not show "no checkpoints" until the
    /// listing changes: a settled listing is not diffed again).
    fn publish_checkpoints(&self, name: &str, state: &TargetState) {
        self.metrics.target(name).set_checkpoints(
            // Listed now: one missing from the last listing is not counted (it stays
            // tracked until `delete_after_missing_polls` says it is deleted).
            state
                .checkpoints
                .values()
                .filter(|c| !c.deleted && c.missing == 0)
                .map(|c| (c.target.clone(), c.class(), c.ordering_time())),
        );
    }

    fn jittered(&self, d: Duration) -> Duration {
        jittered(d, self.cfg().jitter)
    }
}

/// `d` +-`jitter` (a fraction).
fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return d;
    }
    d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter))
}

/// The listed checkpoints the target watches: without `checkpoint_targets`, every one
/// (unknown targets included); with a list, only the values it names.
/// The digest a settled state is known by: the listing's, and with `checkpoint_targets`
/// the list too, so that changing it (a reload, a restart) makes the same listing worth
/// a diff again (a widened list lets in checkpoints the state never saw). Without a list,
/// the body's digest as it always was.
pub fn watched_digest(body: u128, wanted: Option<&BTreeSet<CheckpointTarget>>) -> u128 {
    match wanted {
        None => body,
        Some(only) => {
            let mut text = body.to_le_bytes().to_vec();
            for t in only {
                text.push(0);
                text.extend_from_slice(t.as_str().as_bytes());
            }
            xxhash_rust::xxh3::xxh3_128(&text)
        }
    }
}

/// The ids of `listing` that `wanted` leaves out: listed, so never counted as missing.
pub fn unwatched(
    listing: &[Checkpoint],
    wanted: Option<&BTreeSet<CheckpointTarget>>,
) -> std::collections::HashSet<String> {
    match wanted {
        None => std::collections::HashSet::new(),
        Some(only) => listing
            .iter()
            .filter(|c| !only.contains(&c.target))
            .map(|c| c.id.clone())
            .collect(),
    }
}

pub fn narrow(
    listing: Vec<Checkpoint>,
    wanted: Option<&BTreeSet<CheckpointTarget>>,
) -> Vec<Checkpoint> {
    match wanted {
        None => listing,
        Some(only) => listing
            .into_iter()
            .filter(|c| only.contains(&c.target))
            .collect(),
    }
}

/// For each event (same order), the names of the sinks it goes to.
pub fn route<'a>(events: &[Event], sinks: &'a [SinkConfig]) -> Vec<Vec<&'a str>> {
    events
        .iter()
        .map(|e| {
            sinks
                .iter()
                .filter(|s| s.wants(e.kind, &e.target, &e.checkpoint_target))
                .map(|s| s.name.as_str())
                .collect()
        })
        .collect()
}

/// One target's loop between two of its turns: its config and state, and what its polls
/// taught it (failures in a row, the lease it polls under, its cadence).
pub struct TargetLoop {
    t: TargetConfig,
    state: Option<TargetState>,
    failures: u32,
    /// The lease polled under (a single node: owns every target, so a state loaded by the
    /// caller is kept).
    held: Option<Fence>,
    /// Consecutive successful polls that changed nothing, and the target's cadence
    /// (adaptive polling; the cadence is learned again whenever the state changes).
    unchanged: u32,
    pace: Option<Cadence>,
    learned: bool,
}

/// What a target's loop does after a turn ([`Poller::turn`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Its next turn comes after this wait.
    Wait(Duration),
    /// Another replica holds its lease: its next turn comes when the lease changes.
    NotOwned,
    /// Cancelled: the loop is over.
    Stop,
}

impl Poller {
    /// The loop of `t`, starting from `state` when the caller loaded it (else its first
    /// turn loads it).
    pub fn target_loop(&self, t: TargetConfig, state: Option<TargetState>) -> TargetLoop {
        let held = self.ownership.as_ref().and_then(|o| o.fence(&t.name));
        if let Some(s) = &state {
            self.publish_checkpoints(&t.name, s);
        }
        TargetLoop {
            t,
            state,
            failures: 0,
            held,
            unchanged: 0,
            pace: None,
            learned: false,
        }
    }

    /// Whether a turn of `lp`, not owned at its last turn, would find its lease changed.
    fn lease_changed(&self, lp: &TargetLoop) -> bool {
        self.ownership
            .as_ref()
            .is_some_and(|o| o.fence(&lp.t.name) != lp.held)
    }

    /// The loop of one target until `token` is cancelled, starting from `state` when the
    /// caller loaded it (else the loop loads it): its turns, and the waits between them.
    /// Cancellation is observed only between polls, never in the middle of a commit. (The
    /// daemon runs every target's turns on a few workers instead: [`Fleet`].)
    pub async fn run_target(
        &self,
        t: TargetConfig,
        state: Option<TargetState>,
        token: CancellationToken,
        beat: Heartbeat,
    ) {
        let mut lp = self.target_loop(t, state);
        loop {
            let wait = match self.turn(&mut lp, &token, &beat, None).await {
                Next::Stop => break,
                Next::Wait(wait) => wait,
                Next::NotOwned => {
                    let own = self.ownership.as_ref().expect("only with leases");
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = own.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            };
            tokio::select! {
                _ = token.cancelled() => break,
                _ = beat.while_waiting(tokio::time::sleep(wait)) => {}
            }
        }
    }

    /// One turn of a target's loop: see whether its lease changed, load its state if it
    /// has none, poll it, and say when its next turn is. `slot`: the poll slot the caller
    /// holds for it (else the turn waits for one, beating).
    pub async fn turn(
        &self,
        lp: &mut TargetLoop,
        token: &CancellationToken,
        beat: &Heartbeat,
        slot: Option<&SemaphorePermit<'_>>,
    ) -> Next {
        let name = lp.t.name.as_str();
        loop {
            beat.beat();
            if let Some(own) = &self.ownership {
                let fence = own.fence(name);
                if fence != lp.held {
                    // A new lease: the previous owner may have committed since we last looked.
                    lp.state = None;
                    lp.learned = false;
                    if fence.is_none() {
                        // Another replica owns the target now and reports its checkpoints:
                        // a sum over replicas must not count them twice.
                        self.metrics
                            .target(name)
                            .set_checkpoints(std::iter::empty());
                    }
                    lp.held = fence;
                }
                if lp.held.is_none() {
                    return Next::NotOwned;
                }
            }
            let t = &lp.t;
            let wait = match &mut lp.state {
                None => match self.store.load_target(name).await {
                    Ok(s) => {
                        debug!(target = %name, tracked = s.checkpoints.len(), baselined = s.baselined, "state loaded");
                        self.publish_checkpoints(name, &s);
                        lp.state = Some(s);
                        continue;
                    }
                    Err(e) if e.is_unavailable() => {
                        // Logged once for every loop by the store watch.
                        debug!(target = %name, error = %e, "cannot load target state; will retry");
                        t.syncing_interval
                    }
                    Err(e) => {
                        error!(target = %name, error = %e, "cannot load target state; will retry");
                        t.syncing_interval
                    }
                },
                Some(s) => {
                    let polled = match slot {
                        Some(_) => self.poll_now(t, s, false, lp.held.clone(), token).await,
                        None => {
                            self.poll_until(t, s, false, lp.held.clone(), token, Some(beat))
                                .await
                        }
                    };
                    match polled {
                        Ok(report) => {
                            lp.failures = 0;
                            lp.unchanged = if report.wrote {
                                0
                            } else {
                                lp.unchanged.saturating_add(1)
                            };
                            let adaptive = self.cfg().adaptive;
                            if adaptive && (report.wrote || !lp.learned) {
                                let next =
                                    cadence(s.checkpoints.values().map(|c| c.first_seen_at), t);
                                match (&lp.pace, &next) {
                                    (None, Some(c)) => {
                                        info!(target = %name, period_s = c.period.as_secs_f64(),
                                        "save cadence learned; polling at syncing_interval around each expected save")
                                    }
                                    (Some(_), None) => info!(target = %name,
                                        "save cadence lost; backing off after changes instead"),
                                    _ => {}
                                }
                                lp.pace = next;
                                lp.learned = true;
                            }
                            self.jittered(next_wait(
                                s.has_pending(),
                                lp.unchanged,
                                lp.pace.as_ref(),
                                Utc::now(),
                                t,
                                adaptive,
                            ))
                        }
                        Err(PollError::Cancelled) => return Next::Stop,
                        Err(PollError::Store(StoreError::Fenced { epoch, .. })) => {
                            warn!(target = %name, epoch, "lease lost before commit; nothing committed or emitted");
                            lp.state = None;
                            lp.learned = false;
                            lp.held = None;
                            t.syncing_interval
                        }
                        Err(e) => {
                            lp.failures += 1;
                            self.failure_wait(t, &e, lp.failures)
                        }
                    }
                }
            };
            return Next::Wait(wait);
        }
    }

    fn failure_wait(&self, t: &TargetConfig, e: &PollError, failures: u32) -> Duration {
        let name = t.name.as_str();
        self.health.poll_failed(name, &e.to_string());
        match e {
            PollError::Api(api) if api.needs_operator() => {
                error!(target = name, error = %api, filter = %t.filter,
                    "the Loops API refused this poll; check api.api_key_env or api.api_key_file, api.auth_scheme and the target's filter");
                self.jittered(t.interval)
            }
            PollError::Api(api) => {
                let backoff = t
                    .syncing_interval
                    .saturating_mul(1 << failures.saturating_sub(1).min(16));
                let wait = self.jittered(backoff.min(t.interval));
                let wait = wait.max(api.retry_after().unwrap_or_default());
                warn!(target = name, error = %api, failures, retry_in_s = wait.as_secs_f64(), "poll failed; state unchanged");
                wait
            }
            PollError::Store(s) if s.is_unavailable() => {
                debug!(target = name, error = %s, "cannot commit a poll; nothing was emitted, will retry");
                self.jittered(t.syncing_interval)
            }
            PollError::Store(s) => {
                error!(target = name, error = %s, "cannot commit a poll; nothing was emitted, will retry");
                self.jittered(t.syncing_interval)
            }
            // The loop stops on it before asking.
            PollError::Cancelled => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests;
