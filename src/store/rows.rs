//! Rows both backends read the same way: selected by column name (the lists in
//! [`super::sql`]), decoded by sqlx's `FromRow` for either database, then turned into the
//! domain types here, once.

use chrono::{DateTime, Utc};

use super::{
    DeliveryRow, DeliveryStatus, Result, SinkBacklog, StoreError, StoredEvent, TargetDump,
};
use crate::model::{CheckpointTarget, FilesSeen, ProbeMemo, Raw, Tracked};
use crate::model::{Settled, TargetState, TrackedSet};

/// The probes of a target's checkpoints, by id ([`TargetState::probes`]).
pub(crate) type Probes = std::collections::BTreeMap<compact_str::CompactString, ProbeMemo>;

/// Stored times are Unix milliseconds.
pub(crate) fn ms_to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// How [`super::PollCommit::settled`] is stored.
pub(crate) fn digest_text(d: Option<u128>) -> Option<String> {
    d.map(|d| format!("{d:032x}"))
}

/// The `checkpoints.probe` column: a [`ProbeMemo`] as JSON, times in Unix ms.
#[derive(serde::Serialize, serde::Deserialize)]
struct ProbeJson<'a> {
    probed_at: i64,
    #[serde(borrow)]
    files: Option<FilesJson<'a>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct FilesJson<'a> {
    count: u64,
    total_bytes: i64,
    #[serde(borrow)]
    newest: std::borrow::Cow<'a, str>,
    since: i64,
}

/// How a [`ProbeMemo`] is stored (`checkpoints.probe`).
pub(crate) fn probe_text(m: &ProbeMemo) -> String {
    let j = ProbeJson {
        probed_at: m.probed_at.timestamp_millis(),
        files: m.files.as_ref().map(|f| FilesJson {
            count: f.count,
            total_bytes: f.total_bytes,
            newest: f.newest.as_str().into(),
            since: f.since.timestamp_millis(),
        }),
    };
    serde_json::to_string(&j).expect("plain fields serialize")
}

/// A stored [`ProbeMemo`]; one that does not read is as good as none (it only saves a
/// probe interval).
pub(crate) fn parse_probe(text: &str) -> Option<ProbeMemo> {
    let j: ProbeJson = serde_json::from_str(text).ok()?;
    Some(ProbeMemo {
        probed_at: ms_to_time(j.probed_at),
        files: j.files.map(|f| FilesSeen {
            count: f.count,
            total_bytes: f.total_bytes,
            newest: f.newest.into_owned(),
            since: ms_to_time(f.since),
        }),
    })
}

/// Every stored value reads back, `""` included (an unknown target the API sent).
pub(crate) fn checkpoint_target(s: &str) -> Result<CheckpointTarget> {
    Ok(CheckpointTarget::parse(s))
}

/// A target's state from its stored parts: the `targets` row (filter and settled
/// listing digest, if baselined), its checkpoints and what the probes saw of them.
pub(crate) fn target_state(
    target_row: Option<(String, Option<String>)>,
    checkpoints: TrackedSet,
    probes: Probes,
) -> TargetState {
    let (filter, digest) = target_row.unzip();
    let settled = digest
        .flatten()
        .and_then(|d| u128::from_str_radix(&d, 16).ok())
        .map(|digest| Settled {
            digest,
            // A settled listing lists exactly the live checkpoints.
            checkpoints: checkpoints.values().filter(|c| !c.deleted).count(),
        });
    TargetState {
        baselined: filter.is_some(),
        filter,
        checkpoints,
        settled,
        probes,
    }
}

/// (sink, status, count, oldest created_at) rows ([`super::sql::BACKLOG`]) -> one
/// backlog per sink.
pub(crate) fn fold_backlog(rows: Vec<(String, String, i64, i64)>) -> Vec<SinkBacklog> {
    let mut out: Vec<SinkBacklog> = Vec::new();
    for (sink, status, count, oldest) in rows {
        let i = match out.iter().position(|b| b.sink == sink) {
            Some(i) => i,
            None => {
                out.push(SinkBacklog {
                    sink,
                    ..SinkBacklog::default()
                });
                out.len() - 1
            }
        };
        if status == "pending" {
            out[i].pending = count;
            out[i].oldest_pending = Some(ms_to_time(oldest));
        } else {
            out[i].dead += count;
        }
    }
    out
}

/// A `checkpoints` row: [`super::sql::CHECKPOINT_FIELDS`], then `raw_digest` and `raw`
/// as the dialect has them (SQLite stores the digest and leaves the text out where it has
/// one; PostgreSQL selects a NULL digest and the text).
#[derive(sqlx::FromRow)]
pub(crate) struct TrackedRecord {
    id: String,
    name: String,
    run_id: String,
    checkpoint_target: String,
    sync_status: Option<String>,
    created_at: String,
    first_seen_at: i64,
    completed: bool,
    stalled: bool,
    missing: i64,
    deleted: bool,
    deleted_reported: bool,
    seq: i64,
    probe: Option<String>,
    raw_digest: Option<i64>,
    raw: Option<String>,
}

impl TrackedRecord {
    /// What the readiness probe saw of this checkpoint, if it is remembered.
    pub(crate) fn probe(&self) -> Option<(compact_str::CompactString, ProbeMemo)> {
        let memo = parse_probe(self.probe.as_deref()?)?;
        Some((self.id.as_str().into(), memo))
    }

    /// The checkpoint, holding its object's text only with `keep_raw` (`state`), else
    /// its digest (the stored one, or one computed from the text).
    pub(crate) fn into_tracked(self, keep_raw: bool) -> Result<Tracked> {
        Ok(Tracked {
            target: checkpoint_target(&self.checkpoint_target)?,
            id: self.id.into(),
            name: self.name.into(),
            run_id: self.run_id.into(),
            sync_status: self.sync_status.map(Into::into),
            created_at: self.created_at.into(),
            first_seen_at: ms_to_time(self.first_seen_at),
            completed: self.completed,
            stalled: self.stalled,
            missing: self.missing as u32,
            deleted: self.deleted,
            deleted_reported: self.deleted_reported,
            seq: self.seq as u32,
            raw: match (keep_raw, self.raw_digest, self.raw) {
                (true, _, Some(raw)) => Raw::Text(raw),
                (false, Some(d), _) => Raw::Digest(d as u64),
                (_, _, raw) => Raw::Digest(Raw::digest_of(&raw.unwrap_or_default())),
            },
        })
    }
}

/// A `targets` row as `state` shows it ([`super::sql::DUMP_TARGETS`]).
#[derive(sqlx::FromRow)]
pub(crate) struct TargetRecord {
    pub name: String,
    filter: String,
    baselined_at: i64,
}

impl TargetRecord {
    pub(crate) fn dump(self, checkpoints: Vec<TrackedRecord>) -> Result<TargetDump> {
        Ok(TargetDump {
            name: self.name,
            filter: self.filter,
            baselined_at: ms_to_time(self.baselined_at),
            checkpoints: checkpoints
                .into_iter()
                .map(|r| r.into_tracked(true))
                .collect::<Result<_>>()?,
        })
    }
}

/// An `events` row ([`super::sql::EVENT_COLUMNS`]; a row may carry other columns too).
#[derive(sqlx::FromRow)]
pub(crate) struct EventRecord {
    seq: i64,
    id: String,
    #[sqlx(rename = "type")]
    kind: String,
    target: String,
    checkpoint_id: String,
    checkpoint_name: String,
    run_id: String,
    checkpoint_target: String,
    detected_at: i64,
    body: String,
}

impl From<EventRecord> for StoredEvent {
    fn from(r: EventRecord) -> Self {
        StoredEvent {
            seq: r.seq,
            id: r.id,
            kind: r.kind,
            target: r.target,
            checkpoint_id: r.checkpoint_id,
            checkpoint_name: r.checkpoint_name,
            run_id: r.run_id,
            checkpoint_target: r.checkpoint_target,
            detected_at: ms_to_time(r.detected_at),
            body: r.body,
        }
    }
}

/// A [`StoredEvent`] from any row holding [`super::sql::EVENT_COLUMNS`].
pub(crate) fn event_from_row<'r, R: sqlx::Row>(r: &'r R) -> Result<StoredEvent>
where
    EventRecord: sqlx::FromRow<'r, R>,
{
    Ok(<EventRecord as sqlx::FromRow<'r, R>>::from_row(r)?.into())
}

/// One delivery and its event, as `deliveries list` shows them
/// ([`super::sql::DELIVERY_LIST_COLUMNS`]).
#[derive(sqlx::FromRow)]
pub(crate) struct DeliveryRecord {
    id: i64,
    sink: String,
    status: String,
    attempts: i32,
    next_attempt_at: i64,
    last_status: Option<i32>,
    last_error: Option<String>,
    created_at: i64,
    updated_at: i64,
    event_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    target: String,
    run_id: String,
    checkpoint_target: String,
    checkpoint_name: String,
}

impl TryFrom<DeliveryRecord> for DeliveryRow {
    type Error = StoreError;

    fn try_from(r: DeliveryRecord) -> Result<Self> {
        let status = DeliveryStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt(format!("status {:?}", r.status)))?;
        let ct = CheckpointTarget::parse(&r.checkpoint_target);
        Ok(DeliveryRow {
            id: r.id,
            event_id: r.event_id,
            kind: r.kind,
            target: r.target,
            uri: crate::model::checkpoint_uri(&r.run_id, &ct, &r.checkpoint_name),
            sink: r.sink,
            status,
            attempts: r.attempts.max(0) as u32,
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| ms_to_time(r.next_attempt_at)),
            last_status: r.last_status.and_then(|s| u16::try_from(s).ok()),
            last_error: r.last_error,
            created_at: ms_to_time(r.created_at),
            updated_at: ms_to_time(r.updated_at),
        })
    }
}
