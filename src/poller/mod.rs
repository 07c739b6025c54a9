//! The per-target schedule: wait -> fetch -> probe (the readiness of null checkpoints)
//! -> diff -> commit (state + events + deliveries in one transaction) -> wake the outbox. One loop per target, so polls of one target
//! never overlap; a semaphore bounds the polls in flight across targets.
//!
//! Waits: `syncing_interval` while the target has a pending checkpoint, `interval`
//! otherwise, +-`jitter`; after a transient failure, `syncing_interval` doubling up to
//! `interval`; never sooner than a `Retry-After`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use rand::RngExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::api::{self, Endpoint, Source};
use crate::config::{NullStatus, PollConfig, SinkConfig, TargetConfig};
use crate::diff::{self, DiffOptions};
use crate::health::{Health, Heartbeat};
use crate::metrics::{Metrics, PollOutcome, ProbeOutcome};
use crate::model::{
    Checkpoint, CheckpointTarget, Event, EventType, FilesSeen, ProbeMemo, ReadyBy, SyncClass,
    TargetState, TrackedSet,
};
use crate::replicas::Ownership;
use crate::store::{Fence, PollCommit, Store, StoreError};
use crate::wake::Wake;

mod schedule;
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
    /// The checkpoints already logged for a `created_at` past the horizon.
    created_ahead: Mutex<HashSet<String>>,
}

/// At most this many distinct unknown `sync_status` values are remembered and logged.
const UNKNOWN_STATUSES_LOGGED: usize = 64;

/// At most this many checkpoints with a `created_at` past the horizon are remembered
/// (logged and counted once each); more are neither logged nor counted again.
const CREATED_AHEAD_LOGGED: usize = 4096;

/// At most this many null checkpoints of one target are probed per poll (docs/events.md):
/// a target with many of them costs a bounded number of requests per poll, and the ones
/// probed longest ago go first, so every one gets its turn.
pub const MAX_PROBES_PER_POLL: usize = 8;
/// `page_size` of a probe's files requests.
const FILES_PAGE_SIZE: u32 = 1000;
/// Pages one probe reads at most (a million files); beyond that it is "not ready".
const MAX_FILES_PAGES: usize = 1000;

/// What one readiness probe found.
enum Probed {
    Ready(ReadyBy),
    /// Not (yet) ready; what the files looked like, for the stable-listing rule.
    NotReady(Option<FilesSeen>),
    Failed(api::Error),
}

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
        self.poll_until(t, state, dry_run, fence, &never).await
    }

    /// [`Poller::poll_target`], given up ([`PollError::Cancelled`], nothing written) when
    /// `cancel` fires while the poll waits for a slot, a rate-limit token or the API. Once
    /// the listing is in, the poll runs to its end: a commit is never cut.
    pub async fn poll_until(
        &self,
        t: &TargetConfig,
        state: &mut TargetState,
        dry_run: bool,
        fence: Option<Fence>,
        cancel: &CancellationToken,
    ) -> Result<PollReport, PollError> {
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(PollError::Cancelled),
            p = self.permits.acquire() => p.expect("never closed"),
        };
        // Boxed: the poll's future (HTTP, decode, store) exists only while it runs, so a
        // waiting target costs a small future, not a poll's worth, times 10,000 targets.
        let r = Box::pin(self.poll_now(t, state, dry_run, fence, cancel)).await;
        let owed = self
            .permits_owed
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if owed.is_ok() {
            permit.forget();
        }
        r
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
        // A null checkpoint waiting for a probe keeps the same listing worth a look (a
        // state settled before probing existed, e.g. loaded from the store, included).
        let probing = self.cfg().null_status == NullStatus::Probe && awaits_probe(state);
        if !dry_run
            && !probing
            && let Some(settled) = state.settled.filter(|s| s.digest == body.digest())
        {
            // The very listing this state already agrees with: nothing to decode or diff.
            self.count_request("200");
            self.observe(t, state, &[], start, false);
            return Ok(PollReport {
                checkpoints: settled.checkpoints,
                events: Vec::new(),
                wrote: false,
            });
        }
        let listing = body.decode().map_err(|e| self.failed(name, e, start))?;
        self.count_request("200");
        let listing = narrow(listing, &t.checkpoint_targets);
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
            digest: body.digest(),
            filter: &filter,
            ready: &ready,
        };
        let mut plan = diff::plan(name, state, listed, now, &self.diff_options());
        // What the probes saw, kept with the rows (a new process carries on from it): a
        // probe that saw something new writes even when the listing changed nothing.
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

    /// The readiness step (docs/events.md, "Readiness of null checkpoints"): probe the
    /// tracked null checkpoints that are due (at most one probe per `syncing_interval`
    /// each, at most [`MAX_PROBES_PER_POLL`]); the ones found ready feed the plan, and what
    /// was seen is remembered once the poll succeeds. A failure means "not yet" and only
    /// counts. Cut short by shutdown (what was probed so far still counts).
    async fn probe(
        &self,
        t: &TargetConfig,
        state: &TargetState,
        listing: &[Checkpoint],
        now: DateTime<Utc>,
        cancel: &CancellationToken,
    ) -> (diff::Ready, Vec<(String, ProbeMemo)>) {
        let mut ready = diff::Ready::new();
        let mut memos = Vec::new();
        if self.cfg().null_status != NullStatus::Probe {
            return (ready, memos);
        }
        let every = chrono::Duration::from_std(t.syncing_interval).unwrap_or(chrono::Duration::MAX);
        let mut due: Vec<(&Checkpoint, Option<&ProbeMemo>)> = listing
            .iter()
            .filter(|c| c.sync_status.is_none())
            .filter(|c| {
                state
                    .checkpoints
                    .get(&c.id)
                    .is_some_and(|p| !p.completed && !p.deleted)
            })
            .map(|c| (c, state.probes.get(c.id.as_str())))
            .filter(|(_, memo)| memo.is_none_or(|m| now - m.probed_at >= every))
            .collect();
        due.sort_by(|(a, ma), (b, mb)| {
            (ma.map(|m| m.probed_at), &a.created_at, &a.id).cmp(&(
                mb.map(|m| m.probed_at),
                &b.created_at,
                &b.id,
            ))
        });
        let m = self.metrics.target(&t.name);
        for (c, memo) in due.into_iter().take(MAX_PROBES_PER_POLL) {
            let probed = tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                p = self.probe_one(c, memo, now, every) => p,
            };
            let mut next = ProbeMemo {
                probed_at: now,
                files: memo.and_then(|m| m.files.clone()),
            };
            match probed {
                Probed::Ready(by) => {
                    m.probe(ProbeOutcome::Ready);
                    ready.insert(c.id.clone(), by);
                }
                Probed::NotReady(seen) => {
                    m.probe(ProbeOutcome::NotReady);
                    next.files = seen;
                }
                Probed::Failed(error) => {
                    m.probe(ProbeOutcome::Error);
                    debug!(target = %t.name, checkpoint_id = %c.id, %error,
                        "readiness probe failed; not ready yet, will probe again");
                }
            }
            memos.push((c.id.clone(), next));
        }
        (ready, memos)
    }

    /// Probe one null checkpoint: its source, then (s3) every page of its files.
    async fn probe_one(
        &self,
        c: &Checkpoint,
        memo: Option<&ProbeMemo>,
        now: DateTime<Utc>,
        every: chrono::Duration,
    ) -> Probed {
        let source = self.counted(Endpoint::Source, self.client.source(&c.id).await);
        match source {
            Err(e) => return Probed::Failed(e),
            Ok(Source::Volume { .. }) => return Probed::Ready(ReadyBy::Source),
            Ok(Source::Other(_)) => return Probed::NotReady(None),
            Ok(Source::S3) => {}
        }
        let (mut count, mut total, mut newest) = (0u64, 0i64, String::new());
        let mut token = 0;
        let mut last_page = false;
        for _ in 0..MAX_FILES_PAGES {
            let page = self.client.files_page(&c.id, FILES_PAGE_SIZE, token).await;
            let page = match self.counted(Endpoint::Files, page) {
                Ok(page) => page,
                Err(e) => return Probed::Failed(e),
            };
            for f in &page.files {
                count += 1;
                total = total.saturating_add(f.size_bytes.max(0));
                if later(&f.last_modified, &newest) {
                    newest.clone_from(&f.last_modified);
                }
            }
            match page.next_page_token {
                None => {
                    last_page = true;
                    break;
                }
                // A token that does not move would page forever.
                Some(next) if next == token => {
                    return Probed::Failed(api::Error::Decode(format!(
                        "files: next_page_token {next} repeats the page's own"
                    )));
                }
                Some(next) => token = next,
            }
        }
        if !last_page {
            return Probed::NotReady(None);
        }
        if c.size_bytes > 0 {
            return if total >= c.size_bytes {
                Probed::Ready(ReadyBy::Files)
            } else {
                Probed::NotReady(None)
            };
        }
        if count == 0 {
            return Probed::NotReady(None);
        }
        let seen = FilesSeen {
            count,
            total_bytes: total,
            newest,
            since: now,
        };
        match memo.and_then(|m| m.files.as_ref()) {
            Some(before)
                if (before.count, before.total_bytes, &before.newest)
                    == (seen.count, seen.total_bytes, &seen.newest) =>
            {
                if now - before.since >= every {
                    Probed::Ready(ReadyBy::Files)
                } else {
                    Probed::NotReady(Some(before.clone()))
                }
            }
            _ => Probed::NotReady(Some(seen)),
        }
    }

    /// Count a request other than the listing in `loopwatch_api_requests_total`.
    fn counted<T>(&self, endpoint: Endpoint, r: Result<T, api::Error>) -> Result<T, api::Error> {
        let code = match &r {
            Ok(_) => "200".to_string(),
            Err(e) => e.code_label(),
        };
        self.metrics.api_request(endpoint.label(), &code);
        r
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
            state.checkpoints.values().filter(|c| !c.deleted).map(|c| {
                let created = crate::model::parse_created_at(&c.created_at)
                    .map(|t| crate::model::ordering_time(t, c.first_seen_at));
                (c.target.clone(), c.class(), created)
            }),
        );
    }

    fn jittered(&self, d: Duration) -> Duration {
        jittered(d, self.cfg().jitter)
    }
}

/// Whether a live checkpoint of the state is null and not complete: one the readiness
/// probe may still complete.
fn awaits_probe(state: &TargetState) -> bool {
    state
        .checkpoints
        .values()
        .any(|t| !t.completed && !t.deleted && t.sync_status.is_none())
}

/// What the probes saw, kept for the checkpoints still waiting for readiness once the
/// poll's `checkpoints` are in: `old` with this poll's `probes` over it, the rest forgotten.
fn remember_probes(
    old: &BTreeMap<CompactString, ProbeMemo>,
    checkpoints: &TrackedSet,
    probes: Vec<(String, ProbeMemo)>,
) -> BTreeMap<CompactString, ProbeMemo> {
    let mut next = old.clone();
    for (id, memo) in probes {
        next.insert(id.as_str().into(), memo);
    }
    next.retain(|id, _| {
        checkpoints
            .get(id)
            .is_some_and(|t| !t.completed && !t.deleted && t.sync_status.is_none())
    });
    next
}

/// The memos a commit writes to go from `old` to `new`: what the stable-listing rule needs
/// (the files seen) is stored, so each memo whose files changed is written, or `None`
/// (forgotten) when it has no files any more. A probe that saw the same files as before,
/// or none, writes nothing: a loaded memo is then only older, which costs at most one
/// early probe.
fn probe_changes<'a>(
    old: &'a BTreeMap<CompactString, ProbeMemo>,
    new: &'a BTreeMap<CompactString, ProbeMemo>,
) -> Vec<(&'a str, Option<&'a ProbeMemo>)> {
    let changed = new
        .iter()
        .filter(|(id, m)| old.get(*id).and_then(|o| o.files.as_ref()) != m.files.as_ref())
        .map(|(id, m)| (id.as_str(), m.files.is_some().then_some(m)));
    let forgotten = old
        .iter()
        .filter(|(id, m)| m.files.is_some() && !new.contains_key(*id))
        .map(|(id, _)| (id.as_str(), None));
    changed.chain(forgotten).collect()
}

/// Whether `a` is a later `last_modified` than `b` (as times when both read as times).
fn later(a: &str, b: &str) -> bool {
    match (
        crate::model::parse_created_at(a),
        crate::model::parse_created_at(b),
    ) {
        (Some(a), Some(b)) => a > b,
        _ => a > b,
    }
}

/// `d` +-`jitter` (a fraction).
fn jittered(d: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return d;
    }
    d.mul_f64(1.0 + rand::rng().random_range(-jitter..=jitter))
}

/// The listed checkpoints the target watches (its `checkpoint_targets`). A target that
/// watches both known values (the default) also keeps checkpoints of any other target
/// value; a list naming values keeps only those.
pub fn narrow(listing: Vec<Checkpoint>, wanted: &BTreeSet<CheckpointTarget>) -> Vec<Checkpoint> {
    let every = CheckpointTarget::ALL.iter().all(|t| wanted.contains(t));
    listing
        .into_iter()
        .filter(|c| wanted.contains(&c.target) || (every && c.target.is_other()))
        .collect()
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

impl Poller {
    /// The loop of one target until `token` is cancelled, starting from `state` when the
    /// caller loaded it (else the loop loads it). Cancellation is observed only between
    /// polls, never in the middle of a commit.
    pub async fn run_target(
        &self,
        t: TargetConfig,
        mut state: Option<TargetState>,
        token: CancellationToken,
        beat: Heartbeat,
    ) {
        let name = t.name.clone();
        let mut failures: u32 = 0;
        // What this process owns from the start (a single node: every target, so a state
        // loaded by the caller is kept).
        let mut held: Option<Fence> = self.ownership.as_ref().and_then(|o| o.fence(&name));
        // Consecutive successful polls that changed nothing, and the target's cadence
        // (adaptive polling; the cadence is learned again whenever the state changes).
        let mut unchanged: u32 = 0;
        let mut pace: Option<Cadence> = None;
        let mut learned = false;
        if let Some(s) = &state {
            self.publish_checkpoints(&name, s);
        }
        loop {
            beat.beat();
            if let Some(own) = &self.ownership {
                let fence = own.fence(&name);
                if fence != held {
                    // A new lease: the previous owner may have committed since we last looked.
                    state = None;
                    learned = false;
                    if fence.is_none() {
                        // Another replica owns the target now and reports its checkpoints:
                        // a sum over replicas must not count them twice.
                        self.metrics
                            .target(&name)
                            .set_checkpoints(std::iter::empty());
                    }
                    held = fence;
                }
                if held.is_none() {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = own.changed() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    continue;
                }
            }
            let wait = match &mut state {
                None => match self.store.load_target(&name).await {
                    Ok(s) => {
                        debug!(target = %name, tracked = s.checkpoints.len(), baselined = s.baselined, "state loaded");
                        self.publish_checkpoints(&name, &s);
                        state = Some(s);
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
                Some(s) => match self.poll_until(&t, s, false, held.clone(), &token).await {
                    Ok(report) => {
                        failures = 0;
                        unchanged = if report.wrote {
                            0
                        } else {
                            unchanged.saturating_add(1)
                        };
                        if self.cfg().adaptive && (report.wrote || !learned) {
                            let next = cadence(s.checkpoints.values().map(|c| c.first_seen_at), &t);
                            match (&pace, &next) {
                                (None, Some(c)) => {
                                    info!(target = %name, period_s = c.period.as_secs_f64(),
                                    "save cadence learned; polling at syncing_interval around each expected save")
                                }
                                (Some(_), None) => info!(target = %name,
                                    "save cadence lost; backing off after changes instead"),
                                _ => {}
                            }
                            pace = next;
                            learned = true;
                        }
                        self.jittered(next_wait(
                            s.has_pending(),
                            unchanged,
                            pace.as_ref(),
                            Utc::now(),
                            &t,
                            self.cfg().adaptive,
                        ))
                    }
                    Err(PollError::Cancelled) => break,
                    Err(PollError::Store(StoreError::Fenced { epoch, .. })) => {
                        warn!(target = %name, epoch, "lease lost before commit; nothing committed or emitted");
                        state = None;
                        learned = false;
                        held = None;
                        t.syncing_interval
                    }
                    Err(e) => {
                        failures += 1;
                        self.failure_wait(&t, &e, failures)
                    }
                },
            };
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn failure_wait(&self, t: &TargetConfig, e: &PollError, failures: u32) -> Duration {
        let name = t.name.as_str();
        self.health.poll_failed(name, &e.to_string());
        match e {
            PollError::Api(api) if api.needs_operator() => {
                error!(target = name, error = %api, filter = %t.filter,
                    "the Loops API refused this poll; check api.api_key and the target's filter");
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
mod tests {
    use super::*;

    async fn poller(sim: &crate::sim::SimApi, sinks: &str) -> (Poller, TargetConfig) {
        let toml = format!(
            "[api]\nbase_url = \"{}\"\napi_key_env = \"K\"\n[store]\nurl = \"sqlite::memory:\"\n\
             [[targets]]\nname = \"t\"\nrun_id = \"r1\"\ncheckpoint_targets = [\"sampler\"]\n{sinks}",
            sim.base_url()
        );
        let env = crate::config::Environment::from_pairs([("K", "key")]);
        let cfg = crate::config::load_str(&toml, ::config::FileFormat::Toml, "test", &env)
            .expect("valid config");
        let store: Arc<dyn Store> = Arc::new(
            crate::store::sqlite::SqliteStore::open("sqlite::memory:")
                .await
                .unwrap(),
        );
        let poller = Poller::new(
            Arc::new(api::Client::new(&cfg.api).unwrap()),
            store,
            Arc::new(Metrics::new()),
            Some(Wake::new()),
            Arc::new(Health::new(["t".to_string()])),
            cfg.poll.clone(),
            cfg.sinks.clone(),
        );
        (poller, cfg.targets[0].clone())
    }

    /// What a stored state must agree with in memory (the store keeps times to the ms).
    fn summary(s: &TargetState) -> impl PartialEq + std::fmt::Debug + use<> {
        let rows: Vec<_> = s
            .checkpoints
            .values()
            .map(|c| (c.id.to_string(), c.sync_status.clone(), c.completed, c.seq))
            .collect();
        (s.baselined, s.filter.clone(), s.settled, rows)
    }

    fn requests(p: &Poller, code: &str) -> u64 {
        p.metrics
            .api_requests
            .with_label_values(&["list", code])
            .get()
    }

    #[tokio::test]
    async fn a_failed_fetch_or_decode_is_counted_and_changes_nothing() {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        let (p, t) = poller(&sim, "").await;
        let mut state = TargetState::default();
        sim.handle().push_fault(crate::sim::Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        });
        let e = p
            .poll_target(&t, &mut state, false, None)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            PollError::Api(api::Error::Status { code: 503, .. })
        ));
        sim.handle().push_fault(crate::sim::Fault::Truncated);
        let e = p
            .poll_target(&t, &mut state, false, None)
            .await
            .unwrap_err();
        assert!(matches!(e, PollError::Api(api::Error::Decode(_))));
        assert_eq!(state, TargetState::default());
        assert_eq!((requests(&p, "503"), requests(&p, "decode")), (1, 1));
        assert_eq!(
            p.store.load_target("t").await.unwrap(),
            TargetState::default()
        );
    }

    #[tokio::test]
    async fn a_settled_listing_is_neither_decoded_nor_written_again() {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        let h = sim.handle();
        h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
        h.add_checkpoint("r1", "trainer", "step-1", Some("COMPLETE"));
        let (p, t) = poller(&sim, "").await;
        let mut state = TargetState::default();
        let first = p.poll_target(&t, &mut state, false, None).await.unwrap();
        assert!(first.wrote && first.events.is_empty(), "a silent baseline");
        assert_eq!(first.checkpoints, 1, "narrowed to the sampler");
        assert!(state.settled.is_some());
        assert_eq!(
            summary(&state),
            summary(&p.store.load_target("t").await.unwrap())
        );
        let again = p.poll_target(&t, &mut state, false, None).await.unwrap();
        assert!(!again.wrote && again.events.is_empty());
        assert_eq!(again.checkpoints, 1);
        assert_eq!(requests(&p, "200"), 2);
    }

    #[tokio::test]
    async fn a_change_is_committed_with_its_deliveries_and_the_state_advances() {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        let h = sim.handle();
        let id = h.add_checkpoint("r1", "sampler", "step-1", Some("SYNCING"));
        let sink = "[[sinks]]\nname = \"s\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
                    events = [\"checkpoint.completed\"]\n";
        let (p, t) = poller(&sim, sink).await;
        let mut state = TargetState::default();
        p.poll_target(&t, &mut state, false, None).await.unwrap();
        h.set_status(&id, Some("COMPLETE"));
        // A dry run sees the event and writes nothing.
        let before = state.clone();
        let dry = p.poll_target(&t, &mut state, true, None).await.unwrap();
        assert_eq!(dry.events.len(), 1);
        assert!(!dry.wrote);
        assert_eq!(state, before);
        let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
        assert_eq!(report.events.len(), 1);
        assert_eq!(report.events[0].kind, EventType::Completed);
        assert!(state.checkpoints[id.as_str()].completed);
        assert_eq!(
            summary(&state),
            summary(&p.store.load_target("t").await.unwrap())
        );
        let due = p
            .store
            .claim_due("s", Utc::now(), 10, false, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].event.id, report.events[0].id);
    }

    #[tokio::test]
    async fn a_deleted_event_commits_the_last_stored_object_without_a_second_trip() {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        let h = sim.handle();
        let id = h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
        h.set_field(&id, "note", serde_json::json!("kept from the last listing"));
        let sink = "[[sinks]]\nname = \"s\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
                    events = [\"checkpoint.deleted\"]\n";
        let (p, t) = poller(&sim, sink).await;
        let mut state = TargetState::default();
        p.poll_target(&t, &mut state, false, None).await.unwrap();
        h.remove(&id);
        p.poll_target(&t, &mut state, false, None).await.unwrap();
        let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
        assert_eq!(report.events.len(), 1);
        assert_eq!(report.events[0].kind, EventType::Deleted);
        assert!(
            report.events[0].checkpoint.is_empty(),
            "the poller holds a digest only"
        );
        let due = p
            .store
            .claim_due("s", Utc::now(), 10, false, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        let body: serde_json::Value = serde_json::from_str(&due[0].event.body).unwrap();
        assert_eq!(body["type"], "checkpoint.deleted");
        assert_eq!(body["data"]["checkpoint"]["id"], id.as_str());
        assert_eq!(
            body["data"]["checkpoint"]["note"],
            "kept from the last listing"
        );
    }

    #[tokio::test]
    async fn a_cancelled_poll_writes_nothing() {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        sim.handle()
            .push_fault(crate::sim::Fault::Delay(Duration::from_secs(30)));
        let (p, t) = poller(&sim, "").await;
        let mut state = TargetState::default();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = p
            .poll_until(&t, &mut state, false, None, &cancel)
            .await
            .unwrap_err();
        assert!(matches!(e, PollError::Cancelled));
        assert_eq!(state, TargetState::default());
    }

    fn ck(id: &str, target: CheckpointTarget) -> Checkpoint {
        Checkpoint {
            id: id.into(),
            name: "step-1".into(),
            run_id: "r".into(),
            target,
            checkpoint_type: "lora".into(),
            size_bytes: 1,
            created_at: "2026-11-26T00:00:00Z".into(),
            base_model: None,
            sync_status: None,
            raw: "{}".into(),
        }
    }

    #[test]
    fn narrow_keeps_only_the_watched_checkpoint_targets() {
        let l = vec![
            ck("a", CheckpointTarget::Sampler),
            ck("b", CheckpointTarget::Trainer),
        ];
        let only = BTreeSet::from([CheckpointTarget::Trainer]);
        let ids: Vec<_> = narrow(l, &only).into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn route_sends_each_event_to_the_sinks_that_want_it() {
        let env = crate::config::Environment::from_pairs([("K", "key")]);
        let toml = "[api]\napi_key_env = \"K\"\n[[targets]]\nname = \"t\"\nrun_id = \"r\"\n[[targets]]\nname = \"u\"\nrun_id = \"q\"\n\
            [[sinks]]\nname = \"all\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
            [[sinks]]\nname = \"done-t\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
            events = [\"checkpoint.completed\"]\ntargets = [\"t\"]\n\
            [[sinks]]\nname = \"trainer\"\nkind = \"exec\"\ncommand = [\"true\"]\ncheckpoint_targets = [\"trainer\"]\n";
        let cfg = crate::config::load_str(toml, ::config::FileFormat::Toml, "test", &env).unwrap();
        let event = |kind, target: &str, ct| Event {
            id: "evt_1".into(),
            kind,
            target: target.into(),
            checkpoint_id: "c".into(),
            checkpoint_name: "step-1".into(),
            run_id: "r".into(),
            checkpoint_target: ct,
            detected_at: Utc::now(),
            previous_sync_status: None,
            sync_status: None,
            first_seen_at: Utc::now(),
            sync_seconds: None,
            ready_by: None,
            checkpoint: "{}".into(),
        };
        let events = [
            event(EventType::Completed, "t", CheckpointTarget::Sampler),
            event(EventType::Completed, "u", CheckpointTarget::Sampler),
            event(EventType::Discovered, "t", CheckpointTarget::Trainer),
        ];
        assert_eq!(
            route(&events, &cfg.sinks),
            [vec!["all", "done-t"], vec!["all"], vec!["all", "trainer"]]
        );
        assert!(route(&events, &[]).iter().all(Vec::is_empty));
    }

    /// A commit writes a memo whose files changed, forgets one whose checkpoint no longer
    /// waits, and writes nothing for a probe that saw the same files or none.
    #[test]
    fn probe_changes_write_only_what_the_files_rule_needs() {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let seen = |count, since| FilesSeen {
            count,
            total_bytes: 10,
            newest: "2026-11-26T00:00:00Z".into(),
            since: at(since),
        };
        let memo = |probed_at, files| ProbeMemo {
            probed_at: at(probed_at),
            files,
        };
        let map = |m: Vec<(&str, ProbeMemo)>| -> BTreeMap<CompactString, ProbeMemo> {
            m.into_iter().map(|(k, v)| (k.into(), v)).collect()
        };
        let old = map(vec![
            ("same", memo(1, Some(seen(1, 1)))),
            ("grew", memo(1, Some(seen(1, 1)))),
            ("done", memo(1, Some(seen(1, 1)))),
            ("bare", memo(1, None)),
            ("emptied", memo(1, Some(seen(1, 1)))),
        ]);
        let new = map(vec![
            ("same", memo(2, Some(seen(1, 1)))),
            ("grew", memo(2, Some(seen(2, 2)))),
            ("bare", memo(2, None)),
            ("emptied", memo(2, None)),
            ("first", memo(2, Some(seen(1, 2)))),
            ("first-bare", memo(2, None)),
        ]);
        let mut got: Vec<(&str, Option<u64>)> = probe_changes(&old, &new)
            .into_iter()
            .map(|(id, m)| (id, m.map(|m| m.files.as_ref().unwrap().count)))
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("done", None),
                ("emptied", None),
                ("first", Some(1)),
                ("grew", Some(2))
            ]
        );
        assert!(probe_changes(&old, &old).is_empty());
    }
}
