//! The pure core: (previous state, listing, now) -> (state updates, events).
//!
//! No I/O, no clock, no async. Every event rule of docs/events.md is decided here, and the
//! first sight of a target is the same function run on an empty state.
//!
//! Rules beyond the table, chosen so that a flaky upstream never causes a false event:
//! - `COMPLETE` is never undone: once complete, a listing showing the checkpoint pending
//!   again (`SYNCING`, null) is taken for a stale read and ignored (no event, state
//!   kept). An unknown value after it is news, not an older read: `status_changed`, and
//!   so is a return from it to complete (`completed` never fires twice).
//! - The count of consecutive listings without a checkpoint is persisted, so `once`
//!   run from cron counts across runs just as the daemon does.
//! - A deleted checkpoint stays as a tombstone, so its reappearance is not `discovered`
//!   twice and it can never complete twice.
//! - A null checkpoint the readiness probe found ready (an input here: the poller probes,
//!   the diff decides) completes like one turning COMPLETE, with its `ready_by`; that
//!   makes it complete for good, so a later COMPLETE is a spelling change, not news.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};

use crate::model::{
    Checkpoint, Event, EventType, Raw, ReadyBy, Settled, SyncClass, TargetState, Tracked, event_id,
};

/// Null checkpoints the readiness probe found ready in this poll, by id.
pub type Ready = HashMap<String, ReadyBy>;

/// The knobs of §3 `[poll]` that change what is emitted.
#[derive(Clone, Debug)]
pub struct DiffOptions {
    pub emit_existing: bool,
    pub delete_after_missing: u32,
    /// `None` disables `stalled`.
    pub stalled_after: Option<chrono::Duration>,
    /// `poll.null_status = "probe"`: a null checkpoint may still complete by a probe, so a
    /// state holding one is never settled (the same listing must be probed again).
    pub probe_null: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diff {
    /// This listing is the target's first: mark it baselined.
    pub baseline: bool,
    /// New versions of the rows that changed.
    pub updates: Vec<Tracked>,
    pub events: Vec<Event>,
}

impl Diff {
    /// Whether the store has anything to write for this poll.
    pub fn writes(&self) -> bool {
        self.baseline || !self.events.is_empty() || !self.updates.is_empty()
    }
}

/// What the diff rules add to the persisted [`TargetState`] (which lives in `model`).
pub trait DiffState {
    /// The state after `diff` is committed.
    fn apply(&mut self, diff: &Diff);

    /// Whether a diff that wrote nothing against this state stays empty as time passes:
    /// the only rule that reads the clock is `stalled`, which needs a live checkpoint
    /// neither complete nor already stalled.
    fn timeless(&self, opts: &DiffOptions) -> bool;
}

impl DiffState for TargetState {
    fn apply(&mut self, diff: &Diff) {
        if diff.baseline {
            self.baselined = true;
        }
        self.checkpoints.upsert(diff.updates.iter().cloned());
    }

    fn timeless(&self, opts: &DiffOptions) -> bool {
        let live = |t: &&Tracked| !t.deleted && !t.completed;
        let probed = |t: &Tracked| t.class() == SyncClass::Unknown;
        (opts.stalled_after.is_none() || self.checkpoints.values().filter(live).all(|t| t.stalled))
            && !(opts.probe_null && self.checkpoints.values().filter(live).any(probed))
    }
}

/// One decoded listing of a target, as the plan needs it.
#[derive(Clone, Copy, Debug)]
pub struct Listing<'a> {
    /// The checkpoints, already narrowed to the target's `checkpoint_targets`.
    pub checkpoints: &'a [Checkpoint],
    /// The ids the listing had that `checkpoint_targets` left out: listed, so not missing
    /// (a narrowed list must not turn them into `deleted`).
    pub unwatched: &'a HashSet<String>,
    /// Digest of the body they were decoded from.
    pub digest: u128,
    /// The target's filter as text (`run_id=...`), kept with its baseline.
    pub filter: &'a str,
    /// Null checkpoints the readiness probe found ready before this plan.
    pub ready: &'a Ready,
}

/// Everything one successful listing means for a target, decided in one pure call: what
/// the commit writes, the state the poller keeps after it, and whether the listing
/// settled (so the same body need not be decoded again).
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Rows and events to commit.
    pub diff: Diff,
    /// The state after the commit, when the diff changes anything (`None`: keep it).
    pub next: Option<TargetState>,
    /// The listing agrees with the state it leaves behind, now and as time passes.
    pub settled: Option<Settled>,
}

impl Plan {
    /// Whether the store has anything to write.
    pub fn writes(&self) -> bool {
        self.diff.writes()
    }

    /// Advance `state` as if the commit succeeded.
    pub fn apply(self, state: &mut TargetState) {
        if let Some(next) = self.next {
            *state = next;
        }
        state.settled = self.settled;
    }
}

/// Diff `listing` against `state` and say what follows (see [`Plan`]).
pub fn plan(
    target: &str,
    state: &TargetState,
    listing: Listing<'_>,
    now: DateTime<Utc>,
    opts: &DiffOptions,
) -> Plan {
    let d = diff_listed(
        target,
        state,
        listing.checkpoints,
        listing.unwatched,
        listing.ready,
        now,
        opts,
    );
    let settled = Settled {
        digest: listing.digest,
        checkpoints: listing.checkpoints.len(),
    };
    if !d.writes() {
        return Plan {
            settled: state.timeless(opts).then_some(settled),
            diff: d,
            next: None,
        };
    }
    let mut next = state.clone();
    next.apply(&d);
    if d.baseline {
        next.filter = Some(listing.filter.to_string());
    }
    // Settled when the very same listing, diffed again against the new state, would
    // change nothing, and time cannot change that.
    let again = diff_listed(
        target,
        &next,
        listing.checkpoints,
        listing.unwatched,
        listing.ready,
        now,
        opts,
    );
    let settled = (!again.writes() && next.timeless(opts)).then_some(settled);
    next.settled = settled;
    Plan {
        diff: d,
        next: Some(next),
        settled,
    }
}

/// A target whose filter changed since its baseline lists other checkpoints: its old
/// state would turn into a storm of `deleted` and `discovered`. Resets `state`, so the
/// listing takes a new silent baseline, and returns the old filter; `None` when the
/// filter is the baseline's.
pub fn rebaseline_on_new_filter(state: &mut TargetState, filter: &str) -> Option<String> {
    if !state.baselined || state.filter.as_deref() == Some(filter) {
        return None;
    }
    let old = state.filter.take().unwrap_or_else(|| "?".into());
    *state = TargetState::default();
    Some(old)
}

/// Compare a successful listing with the previous state of `target`.
pub fn diff(
    target: &str,
    prev: &TargetState,
    listing: &[Checkpoint],
    now: DateTime<Utc>,
    opts: &DiffOptions,
) -> Diff {
    diff_ready(target, prev, listing, &Ready::new(), now, opts)
}

/// [`diff`], with the null checkpoints the readiness probe found `ready`.
pub fn diff_ready(
    target: &str,
    prev: &TargetState,
    listing: &[Checkpoint],
    ready: &Ready,
    now: DateTime<Utc>,
    opts: &DiffOptions,
) -> Diff {
    diff_listed(target, prev, listing, &HashSet::new(), ready, now, opts)
}

/// [`diff_ready`], with the ids listed but left out by `checkpoint_targets` (`unwatched`):
/// a tracked checkpoint among them is not missing.
pub fn diff_listed(
    target: &str,
    prev: &TargetState,
    listing: &[Checkpoint],
    unwatched: &HashSet<String>,
    ready: &Ready,
    now: DateTime<Utc>,
    opts: &DiffOptions,
) -> Diff {
    let baseline = !prev.baselined;
    let silent = baseline && !opts.emit_existing;
    let mut out = Diff {
        baseline,
        ..Diff::default()
    };

    // Most of a listing is what the state already holds: skip those rows without copying
    // them, and order only the rest.
    let mut sorted: Vec<&Checkpoint> = listing
        .iter()
        .filter(|c| {
            ready.contains_key(&c.id)
                || !prev
                    .checkpoints
                    .get(&c.id)
                    .is_some_and(|p| unchanged(p, c, now, opts))
        })
        .collect();
    // Detection order: oldest first, so `ordered` sinks see a run's history in order.
    sorted.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));

    for c in sorted {
        let class = SyncClass::of(c.sync_status.as_deref());
        let Some(p) = prev.checkpoints.get(&c.id) else {
            let mut row = Tracked {
                id: c.id.as_str().into(),
                name: c.name.as_str().into(),
                run_id: c.run_id.as_str().into(),
                target: c.target.clone(),
                sync_status: c.sync_status.as_deref().map(Into::into),
                created_at: c.created_at.as_str().into(),
                first_seen_at: now,
                completed: class == SyncClass::Complete,
                stalled: false,
                missing: 0,
                deleted: false,
                deleted_reported: false,
                seq: 0,
                raw: Raw::Text(c.raw.clone()),
            };
            if !silent {
                push(
                    &mut out,
                    target,
                    &mut row,
                    EventType::Discovered,
                    None,
                    None,
                    now,
                );
                if class == SyncClass::Complete {
                    // First seen already complete: no measured sync time.
                    push(
                        &mut out,
                        target,
                        &mut row,
                        EventType::Completed,
                        None,
                        None,
                        now,
                    );
                }
            }
            out.updates.push(row);
            continue;
        };

        let mut row = p.clone();
        row.missing = 0;
        row.deleted = false;
        let stale = p.completed && class.is_pending();
        if !stale {
            // What the URI and routing are made of follows the listing, as the name does.
            row.name = c.name.as_str().into();
            row.run_id = c.run_id.as_str().into();
            row.target = c.target.clone();
            row.created_at = c.created_at.as_str().into();
            row.raw = Raw::Text(c.raw.clone());
            row.sync_status = c.sync_status.as_deref().map(Into::into);
            if p.sync_status.as_deref() != c.sync_status.as_deref() {
                let before = p.sync_status.as_deref().map(str::to_string);
                let kind = match class {
                    SyncClass::Complete if !p.completed => Some(EventType::Completed),
                    // Back to complete from an unknown value it took after completing.
                    SyncClass::Complete
                        if SyncClass::of(p.sync_status.as_deref()) == SyncClass::Other =>
                    {
                        Some(EventType::StatusChanged)
                    }
                    // COMPLETE <-> COMPLETED is a spelling change, and null -> COMPLETE
                    // after the probe found it ready the same completion: not news.
                    SyncClass::Complete => None,
                    _ => Some(EventType::StatusChanged),
                };
                if let Some(kind) = kind {
                    let took = (kind == EventType::Completed).then(|| {
                        row.completed = true;
                        seconds_since(row.first_seen_at, now)
                    });
                    push(
                        &mut out,
                        target,
                        &mut row,
                        kind,
                        before,
                        took.flatten(),
                        now,
                    );
                }
            }
            if class == SyncClass::Unknown
                && !row.completed
                && let Some(&by) = ready.get(&c.id)
            {
                row.completed = true;
                let took = seconds_since(row.first_seen_at, now);
                push(
                    &mut out,
                    target,
                    &mut row,
                    EventType::Completed,
                    None,
                    took,
                    now,
                );
                if let Some(e) = out.events.last_mut() {
                    e.ready_by = Some(by);
                }
            }
        }
        if let Some(after) = opts.stalled_after
            && !row.completed
            && !row.stalled
            && now - row.first_seen_at >= after
        {
            row.stalled = true;
            let before = row.sync_status.as_deref().map(str::to_string);
            let took = seconds_since(row.first_seen_at, now);
            push(
                &mut out,
                target,
                &mut row,
                EventType::Stalled,
                before,
                took,
                now,
            );
        }
        if row != *p {
            out.updates.push(row);
        }
    }

    let present: std::collections::HashSet<&str> = listing.iter().map(|c| c.id.as_str()).collect();
    let mut gone: Vec<&Tracked> = prev
        .checkpoints
        .values()
        .filter(|t| {
            !t.deleted && !present.contains(t.id.as_str()) && !unwatched.contains(t.id.as_str())
        })
        .collect();
    gone.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
    for p in gone {
        let mut row = p.clone();
        row.missing += 1;
        if row.missing >= opts.delete_after_missing.max(1) {
            row.deleted = true;
            if !row.deleted_reported {
                row.deleted_reported = true;
                let before = row.sync_status.as_deref().map(str::to_string);
                push(
                    &mut out,
                    target,
                    &mut row,
                    EventType::Deleted,
                    before,
                    None,
                    now,
                );
            }
        }
        out.updates.push(row);
    }
    out
}

/// The listed `c` leaves the tracked `p` exactly as it is, with no event: the slow path
/// below would compute a row equal to `p`.
fn unchanged(p: &Tracked, c: &Checkpoint, now: DateTime<Utc>, opts: &DiffOptions) -> bool {
    p.missing == 0
        && !p.deleted
        && p.sync_status.as_deref() == c.sync_status.as_deref()
        && p.name == c.name.as_str()
        && p.created_at == c.created_at.as_str()
        && p.raw.matches(&c.raw)
        && !opts
            .stalled_after
            .is_some_and(|after| !p.completed && !p.stalled && now - p.first_seen_at >= after)
}

fn seconds_since(then: DateTime<Utc>, now: DateTime<Utc>) -> Option<f64> {
    Some((now - then).num_milliseconds() as f64 / 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn push(
    out: &mut Diff,
    target: &str,
    row: &mut Tracked,
    kind: EventType,
    previous: Option<String>,
    sync_seconds: Option<f64>,
    now: DateTime<Utc>,
) {
    out.events.push(Event {
        id: event_id(target, &row.id, row.first_seen_at, row.seq),
        kind,
        target: target.to_string(),
        checkpoint_id: row.id.to_string(),
        checkpoint_name: row.name.to_string(),
        run_id: row.run_id.to_string(),
        checkpoint_target: row.target.clone(),
        detected_at: now,
        previous_sync_status: previous,
        sync_status: row.sync_status.as_deref().map(str::to_string),
        first_seen_at: row.first_seen_at,
        sync_seconds,
        ready_by: (kind == EventType::Completed).then_some(ReadyBy::SyncStatus),
        // Empty when only the digest is held (a checkpoint gone from the listing): the
        // poller fills it in from the store before the event goes anywhere.
        checkpoint: row.raw.text().unwrap_or_default().to_string(),
    });
    row.seq += 1;
}

#[cfg(test)]
mod tests;
