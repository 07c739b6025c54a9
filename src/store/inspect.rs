//! Read-only views of the store for the status page and `/api/v1/status` (docs/status.md):
//! what each target has stored, each sink's backlog and last error, the dead deliveries
//! to replay, the newest events, and one target's checkpoints with their events,
//! deliveries and attempts.
//!
//! Every query is bounded: by the names asked for (a page of targets, the configured
//! sinks), by a `LIMIT`, or by an index range (`deliveries_status`, `events_checkpoint`,
//! `attempts_failed`, `deploys_open`): a request reads about as much as it shows, however large the
//! store. Written once for both backends, like `shared.rs`; [`InspectDialect`] holds the
//! little that differs (how a JSON list of names is read as a table, and the replicas'
//! leases, which only PostgreSQL has).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::deploys::{DEPLOY_COLUMNS, DeployRecord};
use super::rows::{DeliveryRecord, ms_to_time};
use super::{DeliveryRow, Result, SinkBacklog, sql};
use crate::model::{CheckpointTarget, checkpoint_uri};

/// What [`super::Inspection::overview`] reads.
#[derive(Clone, Debug, Default)]
pub struct OverviewQuery {
    /// The targets to describe (a page of them).
    pub targets: Vec<String>,
    /// The sinks whose last error and dead deliveries to read.
    pub sinks: Vec<String>,
    /// How many of the newest events.
    pub events: i64,
    /// How many of each sink's newest dead deliveries.
    pub dead_per_sink: i64,
    /// How many of the newest settled deploy pipelines ([`Deploys`]).
    pub settled_deploys: i64,
    /// At most how many of the open deploy pipelines (all of them, in practice).
    pub open_deploys: i64,
}

/// The deploy pipelines the status page lists: every open one (waiting for a person, or
/// with a step left: a deploy, a follow, a promotion or a clean-up), however old, then
/// the newest settled ones. Open pipelines are few (a wait ends by a decision, its
/// deadline or `latest_only`; a step by its outcome), and they are what an operator acts
/// on, so newer settled ones never push them off the page.
#[derive(Clone, Debug, Default)]
pub struct Deploys {
    /// The open pipelines, newest first (at most [`OverviewQuery::open_deploys`]).
    pub open: Vec<super::DeployRow>,
    /// How many are open in all (more than `open.len()` only past the bound).
    pub open_total: i64,
    /// The newest settled pipelines, newest first.
    pub settled: Vec<super::DeployRow>,
}

/// Which pipelines are open: a stage before its outcome, or a live one with a step left
/// (`follow_next_at` is set while one is: a promotion, a clean-up). The partial index
/// `deploys_open` holds exactly these rows, in `delivery_id` order (its predicate is this
/// text: keep the two the same).
pub(crate) const OPEN_DEPLOYS: &str = "(stage IN ('awaiting_approval', 'deploying', 'following')
    OR (stage IN ('active', 'promoted') AND follow_next_at IS NOT NULL))";

/// The newest `$1` pipelines matching `filter`.
pub(crate) fn deploys_query(filter: &str) -> String {
    format!(
        "SELECT {DEPLOY_COLUMNS} FROM deploys WHERE {filter} ORDER BY delivery_id DESC LIMIT $1"
    )
}

/// The database-wide picture: the same on every replica.
#[derive(Clone, Debug, Default)]
pub struct Overview {
    /// Of the targets asked for, those the store has (baselined), in no order.
    pub targets: Vec<TargetFacts>,
    /// How many targets the store has in all.
    pub stored_targets: i64,
    /// Pending and dead deliveries of every sink.
    pub backlog: Vec<SinkBacklog>,
    /// Each asked-for sink's last failed attempt, if any is logged.
    pub last_errors: Vec<AttemptLine>,
    /// Each asked-for sink's newest dead deliveries, newest first.
    pub dead: Vec<DeliveryLine>,
    /// The newest events, newest first.
    pub events: Vec<EventLine>,
    /// Who holds the lease of each asked-for target (PostgreSQL replicas; none on SQLite,
    /// where the one daemon polls every target).
    pub leases: Vec<LeaseLine>,
    /// The replicas sharing the database (PostgreSQL; none on SQLite).
    pub replicas: Vec<ReplicaLine>,
    /// The deploy pipelines to list.
    pub deploys: Deploys,
}

/// One stored target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetFacts {
    pub name: String,
    /// The filter of its baseline (`run_id=...`).
    pub filter: String,
    pub baselined_at: DateTime<Utc>,
    pub checkpoints: CheckpointCounts,
    /// The newest (by `created_at`) completed checkpoint not deleted.
    pub newest_completed: Option<CheckpointLine>,
}

/// A target's checkpoints by status. Live ones are in exactly one of `complete`,
/// `syncing`, `pending` (no `sync_status` yet) and `other`; `stalled` counts live ones
/// not complete that were reported stalled; `deleted` those gone from the listing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckpointCounts {
    pub complete: i64,
    pub syncing: i64,
    pub pending: i64,
    pub other: i64,
    pub stalled: i64,
    pub deleted: i64,
}

/// One checkpoint as stored.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointLine {
    /// The unique `id`.
    pub id: String,
    /// The `checkpoint_id` (`step-100`).
    pub name: String,
    pub run_id: String,
    pub checkpoint_target: String,
    pub sync_status: Option<String>,
    /// As the API wrote it.
    pub created_at: String,
    pub first_seen_at: DateTime<Utc>,
    pub completed: bool,
    pub stalled: bool,
    pub deleted: bool,
    /// None for a checkpoint target value without a URI.
    pub uri: Option<String>,
}

/// One event, without its body.
#[derive(Clone, Debug, Serialize)]
pub struct EventLine {
    pub seq: i64,
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub checkpoint_id: String,
    pub checkpoint_name: String,
    pub run_id: String,
    pub checkpoint_target: String,
    pub detected_at: DateTime<Utc>,
    pub uri: Option<String>,
}

/// One logged attempt of a delivery (`store::attempts`).
#[derive(Clone, Debug, Serialize)]
pub struct AttemptLine {
    pub delivery_id: i64,
    pub sink: String,
    /// The delivery's attempt number (from 1 again after a `redeliver`).
    pub attempt: i64,
    /// When it ended.
    pub at: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub status: Option<i64>,
    /// `delivered`, `retry` or `dead`.
    pub outcome: String,
    pub error: Option<String>,
}

/// A delivery as `deliveries list` shows it, with its checkpoint's name.
#[derive(Clone, Debug, Serialize)]
pub struct DeliveryLine {
    #[serde(flatten)]
    pub row: DeliveryRow,
    pub checkpoint_name: String,
}

/// Who holds a target's lease.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseLine {
    pub target: String,
    pub owner: String,
    /// Until the lease lapses unless renewed (negative: lapsed), by the database clock.
    pub expires_in_ms: i64,
}

/// A replica sharing the database.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaLine {
    pub id: String,
    /// Since its last heartbeat, by the database clock.
    pub heartbeat_age_ms: i64,
    pub started_at: DateTime<Utc>,
}

/// What [`super::Inspection::target_detail`] reads: one page of a target's checkpoints, newest
/// first.
#[derive(Clone, Debug)]
pub struct DetailQuery {
    pub target: String,
    pub limit: i64,
    pub offset: i64,
}

/// One target's stored history.
#[derive(Clone, Debug, Default)]
pub struct TargetDetail {
    /// None when the store has no such target.
    pub target: Option<TargetFacts>,
    pub lease: Option<LeaseLine>,
    /// The page of checkpoints, newest (by `created_at`) first.
    pub checkpoints: Vec<CheckpointLine>,
    pub total_checkpoints: i64,
    /// The events of those checkpoints, newest first.
    pub events: Vec<EventLine>,
    /// The deliveries of those events, oldest first.
    pub deliveries: Vec<DeliveryLine>,
    /// The logged attempts of those deliveries, oldest first.
    pub attempts: Vec<AttemptLine>,
}

/// Events of one checkpoint a detail page shows at most.
pub const EVENTS_PER_CHECKPOINT: i64 = 20;

/// What differs between the backends for these reads.
pub(crate) trait InspectDialect: Database {
    /// The text values of the JSON array `$1` as a one-column table.
    const TEXT_LIST: &'static str;
    /// The integer values of the JSON array `$1` as a one-column table.
    const INT_LIST: &'static str;
    /// (shard, owner, ms until expiry) of the shards in the JSON array `$1`; None where
    /// there are no leases.
    const LEASES: Option<&'static str>;
    /// (id, ms since heartbeat, started_at ms) of every replica; None where there are none.
    const REPLICAS: Option<&'static str>;
}

impl InspectDialect for sqlx::Sqlite {
    const TEXT_LIST: &'static str = "(SELECT value FROM json_each($1))";
    const INT_LIST: &'static str = "(SELECT value FROM json_each($1))";
    const LEASES: Option<&'static str> = None;
    const REPLICAS: Option<&'static str> = None;
}

/// The database clock in Unix milliseconds (as `postgres.rs` has it).
macro_rules! pg_now {
    () => {
        "(extract(epoch from clock_timestamp()) * 1000)::bigint"
    };
}

impl InspectDialect for sqlx::Postgres {
    const TEXT_LIST: &'static str = "(SELECT jsonb_array_elements_text(CAST($1 AS jsonb)))";
    const INT_LIST: &'static str =
        "(SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS BIGINT))";
    const LEASES: Option<&'static str> = Some(concat!(
        "SELECT CAST(l.shard AS TEXT), l.owner, CASE WHEN l.released THEN 0 ELSE COALESCE(r.lease_expires_at, 0) END - ",
        pg_now!(),
        " FROM shard_leases l LEFT JOIN replicas r ON r.id = l.owner",
        " WHERE l.shard IN (SELECT CAST(jsonb_array_elements_text(CAST($1 AS jsonb)) AS INTEGER))"
    ));
    const REPLICAS: Option<&'static str> = Some(concat!(
        "SELECT id, ",
        pg_now!(),
        " - heartbeat_at, started_at FROM replicas ORDER BY id LIMIT 100"
    ));
}

/// The replicas listed at most (the query's `LIMIT`).
pub const MAX_REPLICAS: usize = 100;

#[derive(FromRow)]
pub(crate) struct TargetRecord {
    name: String,
    filter: String,
    baselined_at: i64,
}

#[derive(FromRow)]
pub(crate) struct CountsRecord {
    target: String,
    complete: i64,
    syncing: i64,
    pending: i64,
    other: i64,
    stalled: i64,
    deleted: i64,
}

#[derive(Clone, FromRow)]
pub(crate) struct CheckpointRecord {
    target: String,
    id: String,
    name: String,
    run_id: String,
    checkpoint_target: String,
    sync_status: Option<String>,
    created_at: String,
    first_seen_at: i64,
    completed: bool,
    stalled: bool,
    deleted: bool,
}

impl From<CheckpointRecord> for CheckpointLine {
    fn from(r: CheckpointRecord) -> Self {
        CheckpointLine {
            uri: uri(&r.run_id, &r.checkpoint_target, &r.name),
            id: r.id,
            name: r.name,
            run_id: r.run_id,
            checkpoint_target: r.checkpoint_target,
            sync_status: r.sync_status,
            created_at: r.created_at,
            first_seen_at: ms_to_time(r.first_seen_at),
            completed: r.completed,
            stalled: r.stalled,
            deleted: r.deleted,
        }
    }
}

#[derive(FromRow)]
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
}

impl From<EventRecord> for EventLine {
    fn from(r: EventRecord) -> Self {
        EventLine {
            uri: uri(&r.run_id, &r.checkpoint_target, &r.checkpoint_name),
            seq: r.seq,
            id: r.id,
            kind: r.kind,
            target: r.target,
            checkpoint_id: r.checkpoint_id,
            checkpoint_name: r.checkpoint_name,
            run_id: r.run_id,
            checkpoint_target: r.checkpoint_target,
            detected_at: ms_to_time(r.detected_at),
        }
    }
}

#[derive(FromRow)]
pub(crate) struct NameRecord {
    checkpoint_name: String,
}

#[derive(FromRow)]
pub(crate) struct AttemptRecord {
    delivery_id: i64,
    sink: String,
    attempt: i32,
    at: i64,
    duration_ms: Option<i64>,
    status: Option<i32>,
    outcome: String,
    error: Option<String>,
}

impl From<AttemptRecord> for AttemptLine {
    fn from(r: AttemptRecord) -> Self {
        AttemptLine {
            delivery_id: r.delivery_id,
            sink: r.sink,
            attempt: i64::from(r.attempt),
            at: ms_to_time(r.at),
            duration_ms: r.duration_ms,
            status: r.status.map(i64::from),
            outcome: r.outcome,
            error: r.error,
        }
    }
}

fn uri(run_id: &str, checkpoint_target: &str, name: &str) -> Option<String> {
    let t = CheckpointTarget::parse(checkpoint_target);
    checkpoint_uri(run_id, &t, name)
}

fn json_list<T: Serialize>(items: &[T]) -> String {
    serde_json::to_string(items).expect("plain values serialize")
}

/// The columns of an [`EventRecord`] (events `e`).
const EVENT_LINE_COLUMNS: &str = "e.seq, e.id, e.type, e.target, e.checkpoint_id,
    e.checkpoint_name, e.run_id, e.checkpoint_target, e.detected_at";

/// The columns of a [`CheckpointRecord`].
const CHECKPOINT_LINE_COLUMNS: &str = "target, id, name, run_id, checkpoint_target,
    sync_status, created_at, first_seen_at, completed, stalled, deleted";

/// The columns of an [`AttemptRecord`].
const ATTEMPT_COLUMNS: &str = "delivery_id, sink, attempt, at, duration_ms, status, outcome, error";

/// The reads, for the dialect `DB` (bounds as in `shared.rs`).
pub(crate) struct Inspect<DB>(std::marker::PhantomData<DB>);

impl<DB: InspectDialect> Inspect<DB>
where
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> CountsRecord: FromRow<'r, DB::Row>,
    for<'r> CheckpointRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> AttemptRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
    for<'r> NameRecord: FromRow<'r, DB::Row>,
{
    /// Deliveries joined with their events ([`sql::DELIVERY_LIST_COLUMNS`]) by `query`,
    /// which binds `text`, `int` and `list` in that order (those given).
    async fn deliveries(
        pool: &Pool<DB>,
        query: String,
        text: Option<&str>,
        int: Option<i64>,
        list: Option<String>,
    ) -> Result<Vec<DeliveryLine>> {
        let mut q = sqlx::query(AssertSqlSafe(query));
        if let Some(t) = text {
            q = q.bind(t);
        }
        if let Some(i) = int {
            q = q.bind(i);
        }
        if let Some(l) = list {
            q = q.bind(l);
        }
        let rows = q.fetch_all(pool).await?;
        rows.iter()
            .map(|r| {
                Ok(DeliveryLine {
                    row: DeliveryRow::try_from(DeliveryRecord::from_row(r)?)?,
                    checkpoint_name: NameRecord::from_row(r)?.checkpoint_name,
                })
            })
            .collect()
    }

    pub(crate) async fn overview(pool: &Pool<DB>, q: &OverviewQuery) -> Result<Overview> {
        let targets = Self::targets(pool, &q.targets).await?;
        let (stored_targets,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM targets")
            .fetch_one(pool)
            .await?;
        let rows = sqlx::query_as(sql::BACKLOG).fetch_all(pool).await?;
        let backlog = super::rows::fold_backlog(rows);
        let mut last_errors = Vec::new();
        let mut dead = Vec::new();
        for sink in &q.sinks {
            let last: Option<AttemptRecord> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts
                 WHERE sink = $1 AND error IS NOT NULL ORDER BY seq DESC LIMIT 1"
            )))
            .bind(sink.as_str())
            .fetch_optional(pool)
            .await?;
            last_errors.extend(last.map(AttemptLine::from));
            let query = format!(
                "SELECT {} FROM deliveries d JOIN events e ON e.seq = d.event_seq
                 WHERE d.status = 'dead' AND d.sink = $1
                 ORDER BY d.created_at DESC, d.id DESC LIMIT $2",
                sql::DELIVERY_LIST_COLUMNS
            );
            dead.extend(
                Self::deliveries(pool, query, Some(sink), Some(q.dead_per_sink), None).await?,
            );
        }
        let events: Vec<EventRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {EVENT_LINE_COLUMNS} FROM events e ORDER BY e.seq DESC LIMIT $1"
        )))
        .bind(q.events)
        .fetch_all(pool)
        .await?;
        Ok(Overview {
            targets,
            stored_targets,
            backlog,
            last_errors,
            dead,
            events: events.into_iter().map(EventLine::from).collect(),
            leases: Self::leases(pool, &q.targets).await?,
            replicas: Self::replicas(pool).await?,
            deploys: Self::deploys(pool, q).await?,
        })
    }

    /// [`Deploys`]: the open pipelines through their own index (`deploys_open`), then the
    /// newest settled ones walking the primary key down (they are nearly all of them: it
    /// stops after `settled_deploys`, passing over at most the open ones).
    async fn deploys(pool: &Pool<DB>, q: &OverviewQuery) -> Result<Deploys> {
        let read = async |filter: &str, limit: i64| -> Result<Vec<super::DeployRow>> {
            let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(deploys_query(filter)))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.into_iter().map(DeployRecord::into_row).collect()
        };
        let open = read(OPEN_DEPLOYS, q.open_deploys).await?;
        let open_total = if (open.len() as i64) < q.open_deploys {
            open.len() as i64
        } else {
            let (n,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT COUNT(*) FROM deploys WHERE {OPEN_DEPLOYS}"
            )))
            .fetch_one(pool)
            .await?;
            n
        };
        let settled = read(&format!("NOT {OPEN_DEPLOYS}"), q.settled_deploys).await?;
        Ok(Deploys {
            open,
            open_total,
            settled,
        })
    }

    /// The stored facts of `names` (those the store has).
    async fn targets(pool: &Pool<DB>, names: &[String]) -> Result<Vec<TargetFacts>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let list = json_list(names);
        let rows: Vec<TargetRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT name, filter, baselined_at FROM targets WHERE name IN {}",
            DB::TEXT_LIST
        )))
        .bind(list.clone())
        .fetch_all(pool)
        .await?;
        let counts: Vec<CountsRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT target,
                SUM(CASE WHEN NOT deleted AND completed THEN 1 ELSE 0 END) AS complete,
                SUM(CASE WHEN NOT deleted AND NOT completed AND sync_status = 'SYNCING' THEN 1 ELSE 0 END) AS syncing,
                SUM(CASE WHEN NOT deleted AND NOT completed AND sync_status IS NULL THEN 1 ELSE 0 END) AS pending,
                SUM(CASE WHEN NOT deleted AND NOT completed AND sync_status <> 'SYNCING' THEN 1 ELSE 0 END) AS other,
                SUM(CASE WHEN NOT deleted AND NOT completed AND stalled THEN 1 ELSE 0 END) AS stalled,
                SUM(CASE WHEN deleted THEN 1 ELSE 0 END) AS deleted
             FROM checkpoints WHERE target IN {} GROUP BY target",
            DB::TEXT_LIST
        )))
        .bind(list.clone())
        .fetch_all(pool)
        .await?;
        let newest: Vec<CheckpointRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_LINE_COLUMNS} FROM (
                SELECT {CHECKPOINT_LINE_COLUMNS}, ROW_NUMBER() OVER (
                    PARTITION BY target ORDER BY created_at DESC, id DESC) AS n
                FROM checkpoints WHERE target IN {} AND completed AND NOT deleted) c
             WHERE n = 1",
            DB::TEXT_LIST
        )))
        .bind(list)
        .fetch_all(pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|t| {
                let c = counts.iter().find(|c| c.target == t.name);
                TargetFacts {
                    checkpoints: c.map(CountsRecord::counts).unwrap_or_default(),
                    newest_completed: newest
                        .iter()
                        .find(|n| n.target == t.name)
                        .map(|n| CheckpointLine::from(n.clone())),
                    name: t.name,
                    filter: t.filter,
                    baselined_at: ms_to_time(t.baselined_at),
                }
            })
            .collect())
    }

    async fn leases(pool: &Pool<DB>, names: &[String]) -> Result<Vec<LeaseLine>> {
        let Some(q) = DB::LEASES else {
            return Ok(Vec::new());
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let shards: Vec<i32> = names
            .iter()
            .map(|n| super::coordination::shard_of(n))
            .collect();
        let rows: std::collections::HashMap<String, (String, i64)> = sqlx::query_as(q)
            .bind(json_list(&shards))
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|(shard, owner, expires_in_ms): (String, String, i64)| {
                (shard, (owner, expires_in_ms))
            })
            .collect();
        Ok(names
            .iter()
            .zip(&shards)
            .filter_map(|(target, shard)| {
                let (owner, expires_in_ms) = rows.get(&shard.to_string())?;
                Some(LeaseLine {
                    target: target.clone(),
                    owner: owner.clone(),
                    expires_in_ms: *expires_in_ms,
                })
            })
            .collect())
    }

    async fn replicas(pool: &Pool<DB>) -> Result<Vec<ReplicaLine>> {
        let Some(q) = DB::REPLICAS else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(q).fetch_all(pool).await?;
        Ok(rows
            .into_iter()
            .map(|(id, heartbeat_age_ms, started)| ReplicaLine {
                id,
                heartbeat_age_ms,
                started_at: ms_to_time(started),
            })
            .collect())
    }

    pub(crate) async fn target_detail(pool: &Pool<DB>, q: &DetailQuery) -> Result<TargetDetail> {
        let name = std::slice::from_ref(&q.target);
        let target = Self::targets(pool, name).await?.pop();
        let lease = Self::leases(pool, name).await?.pop();
        let (total_checkpoints,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM checkpoints WHERE target = $1")
                .bind(q.target.as_str())
                .fetch_one(pool)
                .await?;
        let checkpoints: Vec<CheckpointRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {CHECKPOINT_LINE_COLUMNS} FROM checkpoints WHERE target = $1
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        )))
        .bind(q.target.as_str())
        .bind(q.limit)
        .bind(q.offset)
        .fetch_all(pool)
        .await?;
        let checkpoints: Vec<CheckpointLine> =
            checkpoints.into_iter().map(CheckpointLine::from).collect();
        let mut detail = TargetDetail {
            target,
            lease,
            total_checkpoints,
            ..TargetDetail::default()
        };
        if checkpoints.is_empty() {
            return Ok(detail);
        }
        let ids: Vec<&str> = checkpoints.iter().map(|c| c.id.as_str()).collect();
        let events: Vec<EventRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {EVENT_LINE_COLUMNS} FROM events e
             WHERE e.target = $2 AND e.checkpoint_id IN {} ORDER BY e.seq DESC LIMIT $3",
            DB::TEXT_LIST
        )))
        .bind(json_list(&ids))
        .bind(q.target.as_str())
        .bind(EVENTS_PER_CHECKPOINT * ids.len() as i64)
        .fetch_all(pool)
        .await?;
        detail.checkpoints = checkpoints;
        detail.events = events.into_iter().map(EventLine::from).collect();
        if detail.events.is_empty() {
            return Ok(detail);
        }
        let seqs: Vec<i64> = detail.events.iter().map(|e| e.seq).collect();
        let query = format!(
            "SELECT {} FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE d.event_seq IN {} ORDER BY d.id",
            sql::DELIVERY_LIST_COLUMNS,
            DB::INT_LIST
        );
        detail.deliveries =
            Self::deliveries(pool, query, None, None, Some(json_list(&seqs))).await?;
        if detail.deliveries.is_empty() {
            return Ok(detail);
        }
        let ids: Vec<i64> = detail.deliveries.iter().map(|d| d.row.id).collect();
        let attempts: Vec<AttemptRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id IN {} ORDER BY seq",
            DB::INT_LIST
        )))
        .bind(json_list(&ids))
        .fetch_all(pool)
        .await?;
        detail.attempts = attempts.into_iter().map(AttemptLine::from).collect();
        Ok(detail)
    }
}

impl CountsRecord {
    fn counts(&self) -> CheckpointCounts {
        CheckpointCounts {
            complete: self.complete,
            syncing: self.syncing,
            pending: self.pending,
            other: self.other,
            stalled: self.stalled,
            deleted: self.deleted,
        }
    }
}
