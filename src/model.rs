//! Domain types shared by every layer: what a checkpoint is once decoded, what the
//! daemon remembers about it, and the events it emits. No I/O and no wire formats here;
//! `api/` converts upstream JSON into these types.

use std::fmt;
use std::ops::Index;

use chrono::{DateTime, SecondsFormat, Utc};
use compact_str::CompactString;
use serde::Serialize;

/// Whether a checkpoint is servable weights (`sampler`) or full training state (`trainer`),
/// or a value this version does not know (Baseten's SDK types it `sampler | trainer |
/// <any string>`), kept as received: such a checkpoint passes through with no URI.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CheckpointTarget {
    Sampler,
    Trainer,
    /// Any other non-empty value, as received.
    Other(CompactString),
}

impl CheckpointTarget {
    /// The known values.
    pub const ALL: [CheckpointTarget; 2] = [CheckpointTarget::Sampler, CheckpointTarget::Trainer];
    /// The `checkpoint_target` metric labels, in [`CheckpointTarget::label_index`] order.
    pub const LABELS: [&'static str; 3] = ["sampler", "trainer", "other"];

    /// The value as received (`sampler`, `trainer` or the other value).
    pub fn as_str(&self) -> &str {
        match self {
            CheckpointTarget::Sampler => "sampler",
            CheckpointTarget::Trainer => "trainer",
            CheckpointTarget::Other(v) => v,
        }
    }

    /// The metric label: `sampler`, `trainer`, or `other` for every other value.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.label_index()]
    }

    pub fn label_index(&self) -> usize {
        match self {
            CheckpointTarget::Sampler => 0,
            CheckpointTarget::Trainer => 1,
            CheckpointTarget::Other(_) => 2,
        }
    }

    pub fn is_other(&self) -> bool {
        matches!(self, CheckpointTarget::Other(_))
    }

    /// The path segment of the checkpoint's `bt://` URI; none for another value.
    pub fn uri_segment(&self) -> Option<&'static str> {
        match self {
            CheckpointTarget::Sampler => Some("sampler_weights"),
            CheckpointTarget::Trainer => Some("weights"),
            CheckpointTarget::Other(_) => None,
        }
    }

    /// Any value, the empty string included: a known one, or [`CheckpointTarget::Other`]
    /// (Baseten's SDK types `target` as `Literal["sampler", "trainer"] | str`, so `""` is
    /// a value like any other; only config refuses to name it).
    pub fn parse(s: &str) -> Self {
        match s {
            "sampler" => CheckpointTarget::Sampler,
            "trainer" => CheckpointTarget::Trainer,
            other => CheckpointTarget::Other(other.into()),
        }
    }

    pub fn from_uri_segment(s: &str) -> Option<Self> {
        match s {
            "sampler_weights" => Some(CheckpointTarget::Sampler),
            "weights" => Some(CheckpointTarget::Trainer),
            _ => None,
        }
    }
}

impl fmt::Display for CheckpointTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CheckpointTarget {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How loopwatch reads the free-form upstream `sync_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncClass {
    /// `COMPLETE` or `COMPLETED`.
    Complete,
    /// `SYNCING`.
    Syncing,
    /// `null`: not yet known, treated as pending.
    Unknown,
    /// Any other string: passed through, never fires `completed`.
    Other,
}

impl SyncClass {
    pub fn of(status: Option<&str>) -> SyncClass {
        match status {
            None => SyncClass::Unknown,
            Some("COMPLETE" | "COMPLETED") => SyncClass::Complete,
            Some("SYNCING") => SyncClass::Syncing,
            Some(_) => SyncClass::Other,
        }
    }

    /// Pending checkpoints are polled at `syncing_interval` and can stall.
    pub fn is_pending(self) -> bool {
        matches!(self, SyncClass::Syncing | SyncClass::Unknown)
    }

    /// The `sync_status` label value of `loopwatch_checkpoints`.
    pub fn label(self) -> &'static str {
        match self {
            SyncClass::Complete => "COMPLETE",
            SyncClass::Syncing => "SYNCING",
            SyncClass::Unknown => "unknown",
            SyncClass::Other => "other",
        }
    }
}

/// One checkpoint as decoded from a listing. `raw` is the upstream object's text exactly
/// as received, unknown fields included, so payloads carry it through (they re-encode it).
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub id: String,
    pub name: String,
    pub run_id: String,
    pub target: CheckpointTarget,
    pub checkpoint_type: String,
    pub size_bytes: i64,
    pub created_at: String,
    pub base_model: Option<String>,
    pub sync_status: Option<String>,
    pub raw: String,
}

impl Checkpoint {
    /// `bt://loops:<run_id>/<segment>/<name>`; none for another target value.
    pub fn uri(&self) -> Option<String> {
        checkpoint_uri(&self.run_id, &self.target, &self.name)
    }
}

/// The `bt://` URI of a checkpoint; none for a target value without a URI segment.
pub fn checkpoint_uri(run_id: &str, target: &CheckpointTarget, name: &str) -> Option<String> {
    let segment = target.uri_segment()?;
    Some(format!("bt://loops:{run_id}/{segment}/{name}"))
}

/// What the daemon remembers about one checkpoint of one target between polls.
///
/// Sized for fleets (10,000 targets x 50 checkpoints in ~100 MB): the short strings live
/// inline ([`CompactString`], up to 24 bytes without a heap allocation) and the upstream
/// object is held as text only on its way to the store ([`Raw`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub id: CompactString,
    pub name: CompactString,
    pub run_id: CompactString,
    pub target: CheckpointTarget,
    pub sync_status: Option<CompactString>,
    pub created_at: CompactString,
    pub first_seen_at: DateTime<Utc>,
    /// Set once `completed` was emitted or the checkpoint was recorded complete; never cleared.
    pub completed: bool,
    pub stalled: bool,
    /// Consecutive successful listings without this checkpoint.
    pub missing: u32,
    /// Absent from enough consecutive listings; the row stays as a tombstone so a
    /// reappearance is not news.
    pub deleted: bool,
    /// `deleted` was emitted once; a checkpoint that flaps in and out is not re-reported.
    pub deleted_reported: bool,
    /// Events emitted for this checkpoint so far; part of every event id.
    pub seq: u32,
    pub raw: Raw,
}

/// A checkpoint's upstream object as last received: its text on the way from a listing to
/// the store, then only a digest of it in memory (the store keeps the text; a `deleted`
/// event, the one that needs it later, reads it back from there).
#[derive(Clone, Debug)]
pub enum Raw {
    Text(String),
    /// XXH3-64 of the text.
    Digest(u64),
}

impl Raw {
    pub fn digest_of(text: &str) -> u64 {
        xxhash_rust::xxh3::xxh3_64(text.as_bytes())
    }

    pub fn digest(&self) -> u64 {
        match self {
            Raw::Text(t) => Raw::digest_of(t),
            Raw::Digest(d) => *d,
        }
    }

    /// The text, when it is held.
    pub fn text(&self) -> Option<&str> {
        match self {
            Raw::Text(t) => Some(t),
            Raw::Digest(_) => None,
        }
    }

    /// Whether `text` is this object.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Raw::Text(t) => t == text,
            Raw::Digest(d) => *d == Raw::digest_of(text),
        }
    }

    /// Keep only the digest.
    pub fn compact(&mut self) {
        if let Raw::Text(t) = self {
            *self = Raw::Digest(Raw::digest_of(t));
        }
    }
}

/// Two texts compare as text; otherwise by digest.
impl PartialEq for Raw {
    fn eq(&self, other: &Raw) -> bool {
        match (self, other) {
            (Raw::Text(a), Raw::Text(b)) => a == b,
            _ => self.digest() == other.digest(),
        }
    }
}

impl Tracked {
    pub fn class(&self) -> SyncClass {
        SyncClass::of(self.sync_status.as_deref())
    }

    pub fn uri(&self) -> Option<String> {
        checkpoint_uri(&self.run_id, &self.target, &self.name)
    }

    /// The time this checkpoint is ordered by ("newer", `latest_only`): its `created_at`,
    /// or its first sight when `created_at` lies more than a day past it
    /// ([`ordering_time`]); None when `created_at` does not read as a time.
    pub fn ordering_time(&self) -> Option<DateTime<Utc>> {
        parse_created_at(&self.created_at).map(|t| ordering_time(t, self.first_seen_at))
    }
}

/// The six event types (docs/events.md). The first five come from the diff;
/// `Deployed` from a `baseten_deploy` sink's successful deploy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Discovered,
    Completed,
    StatusChanged,
    Stalled,
    Deleted,
    Deployed,
    AwaitingApproval,
    DeploymentActive,
    DeploymentFailed,
    Promoted,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::Discovered,
        EventType::Completed,
        EventType::StatusChanged,
        EventType::Stalled,
        EventType::Deleted,
        EventType::Deployed,
        EventType::AwaitingApproval,
        EventType::DeploymentActive,
        EventType::DeploymentFailed,
        EventType::Promoted,
    ];

    /// Brought about by a `baseten_deploy` sink (never routed to one).
    pub fn is_lifecycle(self) -> bool {
        matches!(
            self,
            EventType::Deployed
                | EventType::AwaitingApproval
                | EventType::DeploymentActive
                | EventType::DeploymentFailed
                | EventType::Promoted
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Discovered => "checkpoint.discovered",
            EventType::Completed => "checkpoint.completed",
            EventType::StatusChanged => "checkpoint.status_changed",
            EventType::Stalled => "checkpoint.stalled",
            EventType::Deleted => "checkpoint.deleted",
            EventType::Deployed => "checkpoint.deployed",
            EventType::AwaitingApproval => "checkpoint.awaiting_approval",
            EventType::DeploymentActive => "checkpoint.deployment_active",
            EventType::DeploymentFailed => "checkpoint.deployment_failed",
            EventType::Promoted => "checkpoint.promoted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What showed a checkpoint complete: `data.ready_by` of `checkpoint.completed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadyBy {
    /// Its `sync_status` turned complete.
    SyncStatus,
    /// Readiness probe: its files add up (or stayed the same between two probes).
    Files,
    /// Readiness probe: it lives in a volume.
    Source,
}

impl ReadyBy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadyBy::SyncStatus => "sync_status",
            ReadyBy::Files => "files",
            ReadyBy::Source => "source",
        }
    }
}

/// What a readiness probe of a null checkpoint's files saw, for the stable-listing rule
/// (two probes at least `syncing_interval` apart seeing the same files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesSeen {
    pub count: u64,
    pub total_bytes: i64,
    /// The newest `last_modified`, as listed.
    pub newest: String,
    /// When these same files were first seen.
    pub since: DateTime<Utc>,
}

/// What the poller remembers about probing one null checkpoint, stored with the
/// checkpoint's row (`checkpoints.probe`) after every probe: the probe interval and the
/// stable-listing rule hold across processes (`loopwatch once`, a restart).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeMemo {
    pub probed_at: DateTime<Utc>,
    pub files: Option<FilesSeen>,
}

/// One detected change, ready to be stored and delivered.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// `evt_...`, derived from (target, checkpoint, first sight, per-checkpoint sequence):
    /// re-detecting the same change after a crash yields the same id.
    pub id: String,
    pub kind: EventType,
    pub target: String,
    pub checkpoint_id: String,
    pub checkpoint_name: String,
    pub run_id: String,
    pub checkpoint_target: CheckpointTarget,
    pub detected_at: DateTime<Utc>,
    pub previous_sync_status: Option<String>,
    pub sync_status: Option<String>,
    pub first_seen_at: DateTime<Utc>,
    pub sync_seconds: Option<f64>,
    /// On `completed`: what showed it complete.
    pub ready_by: Option<ReadyBy>,
    /// The checkpoint's upstream object, as received (JSON text).
    pub checkpoint: String,
}

impl Event {
    pub fn uri(&self) -> Option<String> {
        checkpoint_uri(&self.run_id, &self.checkpoint_target, &self.checkpoint_name)
    }

    /// The `format = "standard"` body (docs/events.md). Stored once at detection, so
    /// every attempt sends the same bytes.
    ///
    /// Fields in the documented order; the checkpoint object goes in as received (its text is
    /// checked to be JSON, never parsed into a tree and written again: that was a tenth of
    /// a burst's commit time).
    pub fn standard_body(&self) -> String {
        #[derive(serde::Serialize)]
        struct Body<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            timestamp: String,
            data: Data<'a>,
        }
        #[derive(serde::Serialize)]
        struct Data<'a> {
            event_id: &'a str,
            target: &'a str,
            uri: Option<String>,
            previous_sync_status: Option<&'a str>,
            sync_status: Option<&'a str>,
            first_seen_at: String,
            sync_seconds: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            ready_by: Option<&'static str>,
            checkpoint: Option<&'a serde_json::value::RawValue>,
        }
        let checkpoint: Option<&serde_json::value::RawValue> =
            serde_json::from_str(&self.checkpoint).ok();
        serde_json::to_string(&Body {
            kind: self.kind.as_str(),
            timestamp: rfc3339(self.detected_at),
            data: Data {
                event_id: &self.id,
                target: &self.target,
                uri: self.uri(),
                previous_sync_status: self.previous_sync_status.as_deref(),
                sync_status: self.sync_status.as_deref(),
                first_seen_at: rfc3339(self.first_seen_at),
                sync_seconds: self.sync_seconds,
                ready_by: self.ready_by.map(ReadyBy::as_str),
                checkpoint,
            },
        })
        .expect("strings and numbers serialize")
    }
}

/// An upstream `created_at`: RFC 3339, or an ISO 8601 date-time without an offset
/// (documented only as ISO 8601), read as UTC.
pub fn parse_created_at(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.to_utc());
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(s, f).ok())
        .map(|t| t.and_utc())
}

/// How far past the daemon's clock an upstream `created_at` is trusted for ordering
/// ("newer", `latest_only`, the newest-checkpoint gauge): one day, for clock skew.
pub fn created_at_horizon() -> chrono::TimeDelta {
    chrono::TimeDelta::days(1)
}

/// Whether `created` lies beyond [`created_at_horizon`] of `seen`, the daemon's clock
/// when it read the value.
pub fn beyond_horizon(created: DateTime<Utc>, seen: DateTime<Utc>) -> bool {
    created > seen + created_at_horizon()
}

/// The time a checkpoint created at `created` and first seen at `seen` is ordered by: its
/// `created_at`, unless that lies beyond the horizon, when it is ordered as if created when
/// first seen. One checkpoint dated 9999-12-31 once superseded every later deploy of its
/// run, for good.
pub fn ordering_time(created: DateTime<Utc>, seen: DateTime<Utc>) -> DateTime<Utc> {
    if beyond_horizon(created, seen) {
        seen
    } else {
        created
    }
}

/// `latest_only`'s one rule, wherever it is decided (a deploy about to be made, `once
/// --dry-run`): of `candidates`, other completed sampler checkpoints of the same run at the
/// same sink, each with the time it is ordered by ([`ordering_time`]), the newest ordered
/// after `than`, which supersedes the checkpoint ordered at `than`; None when none is.
pub fn superseded_by<N: Ord>(
    candidates: impl IntoIterator<Item = (DateTime<Utc>, N)>,
    than: DateTime<Utc>,
) -> Option<N> {
    candidates
        .into_iter()
        .filter(|(at, _)| *at > than)
        .max()
        .map(|(_, name)| name)
}

/// RFC 3339 with milliseconds and `Z`, the one timestamp format loopwatch writes.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Stable event id: `evt_` + 26 hex digits of SHA-256 over the identifying fields.
pub fn event_id(target: &str, checkpoint_id: &str, first_seen: DateTime<Utc>, seq: u32) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(target.as_bytes());
    h.update([0]);
    h.update(checkpoint_id.as_bytes());
    h.update([0]);
    h.update(first_seen.timestamp_millis().to_be_bytes());
    h.update(seq.to_be_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(30);
    id.push_str("evt_");
    for b in &digest[..13] {
        use std::fmt::Write;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// A deploy of sampler checkpoints (`POST .../deploy`, `DeployLoopsCheckpointRequest`):
/// what a `baseten_deploy` sink asks for and the API client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeployRequest {
    /// Sampler checkpoint ids (`id`, not the name); at least one.
    pub checkpoint_ids: Vec<String>,
    pub model_name: String,
    pub instance_type_id: String,
    pub hf_secret_name: String,
}

/// What a successful deploy created (`DeployLoopsCheckpointResponse`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    pub model_id: String,
    pub deployment_id: String,
}

/// The id of the `checkpoint.deployed` event that `sink` announces for the completed event
/// `completed_id`: the same whatever repeats (a retry, a crash, a second replica).
pub fn deployed_event_id(completed_id: &str, sink: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"checkpoint.deployed");
    h.update([0]);
    h.update(completed_id.as_bytes());
    h.update([0]);
    h.update(sink.as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(30);
    id.push_str("evt_");
    for b in &digest[..13] {
        use std::fmt::Write;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// The id of a deploy lifecycle event of `kind` (`checkpoint.deployment_active`, ...)
/// that `sink` announces for the completed event `completed_id`: derived from the
/// completed event's id, the sink and the stage, so the same whatever repeats.
/// `checkpoint.deployed` keeps [`deployed_event_id`].
pub fn lifecycle_event_id(completed_id: &str, sink: &str, kind: EventType) -> String {
    if kind == EventType::Deployed {
        return deployed_event_id(completed_id, sink);
    }
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(completed_id.as_bytes());
    h.update([0]);
    h.update(sink.as_bytes());
    let digest = h.finalize();
    let mut id = String::with_capacity(30);
    id.push_str("evt_");
    for b in &digest[..13] {
        use std::fmt::Write;
        let _ = write!(id, "{b:02x}");
    }
    id
}

/// A deployment as the models API shows it (`Deployment` of the `baseten` package):
/// what reconciliation, follow and clean-up read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelDeployment {
    pub id: String,
    pub model_id: String,
    /// `BUILDING`, `ACTIVE`, ... or any new string.
    pub status: String,
    pub environment: Option<String>,
    pub is_production: bool,
    pub created_at: String,
}

/// Everything known about one target between polls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetState {
    /// The first successful listing has been recorded.
    pub baselined: bool,
    /// The filter the baseline was taken with (`run_id=...`); `None` before the baseline.
    pub filter: Option<String>,
    pub checkpoints: TrackedSet,
    /// A listing known to change nothing here: see [`Settled`]. Stored with the state
    /// when a commit leaves it settled, so a restart does not decode it again.
    pub settled: Option<Settled>,
    /// Readiness probes of null checkpoints, by id. Those that saw files are stored with
    /// the checkpoint's row (written by a poll whose probe saw other files, cleared when the
    /// checkpoint completes or is deleted) and loaded with the state.
    pub probes: std::collections::BTreeMap<CompactString, ProbeMemo>,
}

/// A listing body whose diff against the state it was diffed with is empty, and stays
/// empty as time passes (no checkpoint can still stall). Until the state changes, a poll
/// that gets the same body (same digest) has nothing to decode, diff or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// Digest of the body's bytes.
    pub digest: u128,
    /// Checkpoints it listed (after the target's `checkpoint_targets`).
    pub checkpoints: usize,
}

impl TargetState {
    /// True while any live checkpoint is still syncing (or of unknown status).
    pub fn has_pending(&self) -> bool {
        self.checkpoints
            .values()
            .any(|t| !t.deleted && !t.completed && t.class().is_pending())
    }
}

/// The tracked checkpoints of one target, sorted by id. A lookup is a binary search and a
/// row costs its own size (a hash map adds a copy of the key and ~30% empty slots); the
/// upstream text of each row is reduced to its digest on the way in.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrackedSet {
    rows: Vec<Tracked>,
}

impl TrackedSet {
    pub fn get(&self, id: &str) -> Option<&Tracked> {
        self.rows
            .binary_search_by(|r| r.id.as_str().cmp(id))
            .ok()
            .map(|i| &self.rows[i])
    }

    /// Every row, in id order.
    pub fn values(&self) -> std::slice::Iter<'_, Tracked> {
        self.rows.iter()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Insert or replace rows by id (a later row of the same id wins).
    pub fn upsert(&mut self, rows: impl IntoIterator<Item = Tracked>) {
        let mut fresh = Vec::new();
        for mut row in rows {
            row.raw.compact();
            match self.rows.binary_search_by(|r| r.id.cmp(&row.id)) {
                Ok(i) => self.rows[i] = row,
                Err(_) => fresh.push(row),
            }
        }
        if !fresh.is_empty() {
            self.rows.append(&mut fresh);
            self.settle();
        }
    }

    /// Sort by id, keep the last row of each id, and give back spare capacity.
    fn settle(&mut self) {
        self.rows.sort_by(|a, b| a.id.cmp(&b.id)); // stable: equal ids keep their order
        self.rows.reverse();
        self.rows.dedup_by(|later, kept| later.id == kept.id);
        self.rows.reverse();
        if self.rows.capacity() > self.rows.len() + self.rows.len() / 4 + 4 {
            self.rows.shrink_to_fit();
        }
    }
}

impl FromIterator<Tracked> for TrackedSet {
    fn from_iter<I: IntoIterator<Item = Tracked>>(rows: I) -> Self {
        let mut set = TrackedSet {
            rows: rows
                .into_iter()
                .map(|mut r| {
                    r.raw.compact();
                    r
                })
                .collect(),
        };
        set.settle();
        set
    }
}

impl Index<&str> for TrackedSet {
    type Output = Tracked;

    fn index(&self, id: &str) -> &Tracked {
        self.get(id)
            .unwrap_or_else(|| panic!("no tracked checkpoint {id:?}"))
    }
}

#[cfg(test)]
mod tests;
