//! The shared store for several replicas: the same schema as SQLite on PostgreSQL, plus
//! replica heartbeats and target leases with fencing epochs ([`Leases`]).
//!
//! Lease times use the database clock, so replicas never compare their own clocks.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};

use super::{
    Access, AttemptOutcome, Claimed, DELIVERY_LIST_COLUMNS, DeliveryRecord, DeliveryRow,
    DeliveryStatus, EVENT_COLUMNS, PollCommit, Redeliver, Result, SinkBacklog, Store, StoreError,
    StoredEvent, TargetDump, event_from_row, ms_to_time,
};
use crate::model::TargetState;
use crate::model::{CheckpointTarget, Raw, Tracked};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The database clock in Unix milliseconds.
const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn open(url: &str) -> Result<Self> {
        Self::open_with(url, Access::ReadWrite).await
    }

    /// With [`Access::ReadOnly`], every transaction is read-only and nothing is migrated.
    pub async fn open_with(url: &str, access: Access) -> Result<Self> {
        let shown = crate::config::redact_url(url);
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e| StoreError::Open(format!("store.url {shown}: {e}")))?;
        let read_only = access == Access::ReadOnly;
        let mut pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10));
        if read_only {
            // Read-only sessions by a statement, not a startup option: PgBouncer refuses
            // unknown startup parameters.
            pool = pool.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = pool
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Open(format!("cannot connect to {shown}: {e}")))?;
        if read_only {
            let exists: bool =
                sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(&pool)
                    .await?;
            if !exists {
                return Err(StoreError::Missing(format!(
                    "no loopwatch state in {shown}: nothing has run with this store.url yet"
                )));
            }
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
                    .fetch_one(&pool)
                    .await?;
            super::require_current(applied, &MIGRATOR, &shown)?;
        } else {
            MIGRATOR.run(&pool).await?;
        }
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A checkpoints row; `raw` as text only with `keep_raw` (else its digest).
fn tracked_from_row(r: &PgRow, keep_raw: bool) -> Result<Tracked> {
    let target: &str = r.try_get("checkpoint_target")?;
    let raw: &str = r.try_get("raw")?;
    Ok(Tracked {
        id: r.try_get::<&str, _>("id")?.into(),
        name: r.try_get::<&str, _>("name")?.into(),
        run_id: r.try_get::<&str, _>("run_id")?.into(),
        target: CheckpointTarget::parse(target)
            .ok_or_else(|| StoreError::Corrupt(format!("checkpoint_target {target:?}")))?,
        sync_status: r.try_get::<Option<&str>, _>("sync_status")?.map(Into::into),
        created_at: r.try_get::<&str, _>("created_at")?.into(),
        first_seen_at: ms_to_time(r.try_get("first_seen_at")?),
        completed: r.try_get("completed")?,
        stalled: r.try_get("stalled")?,
        missing: r.try_get::<i64, _>("missing")? as u32,
        deleted: r.try_get("deleted")?,
        deleted_reported: r.try_get("deleted_reported")?,
        seq: r.try_get::<i64, _>("seq")? as u32,
        raw: if keep_raw {
            Raw::Text(raw.to_string())
        } else {
            Raw::Digest(Raw::digest_of(raw))
        },
    })
}

#[async_trait]
impl Store for PgStore {
    async fn load_target(&self, name: &str) -> Result<TargetState> {
        let target_row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT filter, listing_digest FROM targets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
        let rows = sqlx::query("SELECT * FROM checkpoints WHERE target = $1")
            .bind(name)
            .fetch_all(&self.pool)
            .await?;
        let checkpoints = rows
            .iter()
            .map(|r| tracked_from_row(r, false))
            .collect::<Result<_>>()?;
        Ok(super::target_state(target_row, checkpoints))
    }

    async fn checkpoint_raw(&self, target: &str, id: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT raw FROM checkpoints WHERE target = $1 AND id = $2")
                .bind(target)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    async fn commit_poll(&self, c: PollCommit<'_>) -> Result<Vec<StoredEvent>> {
        let now = c.now.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        if let Some(f) = &c.fence {
            // Lock the lease row: a takeover waits for this commit, and a stale epoch
            // (the lease was taken while this replica was paused) commits nothing.
            let held = sqlx::query(AssertSqlSafe(format!(
                "SELECT 1 FROM leases WHERE target = $1 AND owner = $2 AND epoch = $3 AND expires_at > {DB_NOW} FOR UPDATE"
            )))
            .bind(c.target)
            .bind(&f.owner)
            .bind(f.epoch)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Err(StoreError::Fenced {
                    target: c.target.to_string(),
                    epoch: f.epoch,
                });
            }
        }
        if c.diff.baseline {
            // A target baselined again (its filter changed) starts from nothing.
            sqlx::query("DELETE FROM checkpoints WHERE target = $1")
                .bind(c.target)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO targets (name, filter, baselined_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET filter = excluded.filter, baselined_at = excluded.baselined_at",
            )
                .bind(c.target)
                .bind(c.filter)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        for t in &c.diff.updates {
            // A row without its text (a checkpoint absent from the listing) keeps the
            // stored one.
            let sql = match t.raw.text() {
                Some(_) => {
                    "INSERT INTO checkpoints (target, id, name, run_id, checkpoint_target, sync_status, created_at,
                        first_seen_at, completed, stalled, missing, deleted, deleted_reported, seq, raw)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                     ON CONFLICT (target, id) DO UPDATE SET name = excluded.name, run_id = excluded.run_id,
                        checkpoint_target = excluded.checkpoint_target, sync_status = excluded.sync_status,
                        created_at = excluded.created_at, first_seen_at = excluded.first_seen_at,
                        completed = excluded.completed, stalled = excluded.stalled, missing = excluded.missing,
                        deleted = excluded.deleted, deleted_reported = excluded.deleted_reported,
                        seq = excluded.seq, raw = excluded.raw"
                }
                None => {
                    "UPDATE checkpoints SET name = $3, run_id = $4, checkpoint_target = $5,
                        sync_status = $6, created_at = $7, first_seen_at = $8, completed = $9,
                        stalled = $10, missing = $11, deleted = $12, deleted_reported = $13, seq = $14
                     WHERE target = $1 AND id = $2"
                }
            };
            let q = sqlx::query(sql)
                .bind(c.target)
                .bind(t.id.as_str())
                .bind(t.name.as_str())
                .bind(t.run_id.as_str())
                .bind(t.target.as_str())
                .bind(t.sync_status.as_deref())
                .bind(t.created_at.as_str())
                .bind(t.first_seen_at.timestamp_millis())
                .bind(t.completed)
                .bind(t.stalled)
                .bind(i64::from(t.missing))
                .bind(t.deleted)
                .bind(t.deleted_reported)
                .bind(i64::from(t.seq));
            match t.raw.text() {
                Some(raw) => q.bind(raw),
                None => q,
            }
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE targets SET listing_digest = $1 WHERE name = $2")
            .bind(super::digest_text(c.settled))
            .bind(c.target)
            .execute(&mut *tx)
            .await?;
        let mut stored = Vec::with_capacity(c.diff.events.len());
        for (e, sinks) in c.diff.events.iter().zip(&c.sinks) {
            let body = e.standard_body();
            let seq: i64 = sqlx::query_scalar(
                "INSERT INTO events (id, type, target, checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING seq",
            )
            .bind(&e.id)
            .bind(e.kind.as_str())
            .bind(&e.target)
            .bind(&e.checkpoint_id)
            .bind(&e.checkpoint_name)
            .bind(&e.run_id)
            .bind(e.checkpoint_target.as_str())
            .bind(e.detected_at.timestamp_millis())
            .bind(&body)
            .fetch_one(&mut *tx)
            .await?;
            for sink in sinks {
                sqlx::query(
                    "INSERT INTO deliveries (event_seq, sink, run_id, status, next_attempt_at, created_at, updated_at)
                     VALUES ($1, $2, $3, 'pending', $4, $4, $4)",
                )
                .bind(seq)
                .bind(*sink)
                .bind(&e.run_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            stored.push(StoredEvent::with_body(seq, e, body));
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn claim_due(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        ordered: bool,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        let now_ms = now.timestamp_millis();
        let until = now_ms + lease.as_millis() as i64;
        // SKIP LOCKED: replicas claiming at once take disjoint rows instead of waiting.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "WITH due AS (
                SELECT d.id FROM deliveries d
                WHERE d.sink = $2 AND d.status = 'pending' AND d.next_attempt_at <= $3
                  AND (d.claimed_until IS NULL OR d.claimed_until <= $3)
                  AND (NOT $5 OR NOT EXISTS (
                      SELECT 1 FROM deliveries h
                      WHERE h.sink = d.sink AND h.run_id = d.run_id AND h.status = 'pending'
                        AND h.event_seq < d.event_seq))
                ORDER BY d.next_attempt_at, d.id
                LIMIT $4
                FOR UPDATE SKIP LOCKED)
             UPDATE deliveries d SET claimed_until = $1 FROM due, events e
             WHERE d.id = due.id AND e.seq = d.event_seq
             RETURNING d.id AS delivery_id, d.attempts, d.created_at AS delivery_created, {EVENT_COLUMNS}"
        )))
        .bind(until)
        .bind(sink)
        .bind(now_ms)
        .bind(limit as i64)
        .bind(ordered)
        .fetch_all(&self.pool)
        .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    delivery_id: r.try_get("delivery_id")?,
                    attempts: r.try_get::<i32, _>("attempts")? as u32,
                    created_at: ms_to_time(r.try_get("delivery_created")?),
                    event: event_from_row(r)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|c| c.event.seq);
        Ok(out)
    }

    async fn next_due(&self, sink: &str) -> Result<Option<DateTime<Utc>>> {
        let ms: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(GREATEST(next_attempt_at, COALESCE(claimed_until, 0))) FROM deliveries WHERE sink = $1 AND status = 'pending'",
        )
        .bind(sink)
        .fetch_one(&self.pool)
        .await?;
        Ok(ms.map(ms_to_time))
    }

    async fn record_attempts(
        &self,
        outcomes: &[(i64, AttemptOutcome)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let now = now.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        for (id, outcome) in outcomes {
            let id = *id;
            let q = match outcome {
            AttemptOutcome::DeliveredWith(f) => {
                insert_follow_up(&mut tx, f, now).await?;
                sqlx::query(
                    "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, claimed_until = NULL,
                    last_status = NULL, last_error = NULL, updated_at = $1 WHERE id = $2",
                )
                .bind(now)
                .bind(id)
            }
            AttemptOutcome::Superseded { reason } => sqlx::query(
                "UPDATE deliveries SET status = 'superseded', claimed_until = NULL,
                    last_status = NULL, last_error = $3, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .bind(reason.clone()),
            AttemptOutcome::Delivered => sqlx::query(
                "UPDATE deliveries SET status = 'delivered', attempts = attempts + 1, claimed_until = NULL,
                    last_status = NULL, last_error = NULL, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id),
            AttemptOutcome::Retry { next, status, error } => sqlx::query(
                "UPDATE deliveries SET attempts = attempts + 1, claimed_until = NULL, next_attempt_at = $3,
                    last_status = $4, last_error = $5, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .bind(next.timestamp_millis())
            .bind(status.map(i32::from))
            .bind(error.clone()),
            AttemptOutcome::Dead { status, error } => sqlx::query(
                "UPDATE deliveries SET status = 'dead', attempts = attempts + 1, claimed_until = NULL,
                    last_status = $3, last_error = $4, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .bind(status.map(i32::from))
            .bind(error.clone()),
        };
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release(&self, delivery_ids: &[i64]) -> Result<()> {
        sqlx::query(
            "UPDATE deliveries SET claimed_until = NULL WHERE id = ANY($1) AND status = 'pending'",
        )
        .bind(delivery_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Other replicas may hold claims: they expire on their own.
    async fn release_claims(&self) -> Result<u64> {
        Ok(0)
    }

    async fn newer_deploy(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let rows: Vec<(String, Option<String>)> =
            sqlx::query_as(AssertSqlSafe(super::newer_deploy_query(
                "(e.body::jsonb #>> '{data,checkpoint,created_at}')",
                ["$1", "$2", "$3"],
            )))
            .bind(sink)
            .bind(run_id)
            .bind(delivery_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(super::pick_newer(rows, created_at))
    }

    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows: Vec<DeliveryRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DELIVERY_LIST_COLUMNS}
             FROM deliveries d JOIN events e ON e.seq = d.event_seq
             WHERE ($1::text IS NULL OR d.status = $1)
             ORDER BY d.id DESC LIMIT $2"
        )))
        .bind(status.map(DeliveryStatus::as_str))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().rev().map(DeliveryRow::try_from).collect()
    }

    async fn redeliver(&self, which: &Redeliver, now: DateTime<Utc>) -> Result<u64> {
        let now = now.timestamp_millis();
        const SET: &str = "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = $1, claimed_until = NULL, updated_at = $1";
        // Not one a worker is attempting: it would go out twice, and its outcome would
        // overwrite the re-queue.
        const NOT_IN_FLIGHT: &str = "(claimed_until IS NULL OR claimed_until <= $1)";
        let mut n = 0;
        match which {
            Redeliver::Dead { sink } => {
                n += sqlx::query(AssertSqlSafe(format!(
                    "{SET} WHERE status = 'dead' AND ($2::text IS NULL OR sink = $2)"
                )))
                .bind(now)
                .bind(sink.as_deref())
                .execute(&self.pool)
                .await?
                .rows_affected();
            }
            Redeliver::Ids(ids) => {
                let mut tx = self.pool.begin().await?;
                for id in ids {
                    let q = if let Ok(num) = id.parse::<i64>() {
                        sqlx::query(AssertSqlSafe(format!(
                            "{SET} WHERE id = $2 AND {NOT_IN_FLIGHT}"
                        )))
                        .bind(now)
                        .bind(num)
                    } else {
                        sqlx::query(AssertSqlSafe(format!(
                            "{SET} WHERE event_seq = (SELECT seq FROM events WHERE id = $2) AND {NOT_IN_FLIGHT}"
                        )))
                        .bind(now)
                        .bind(id.clone())
                    };
                    n += q.execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
            }
        }
        Ok(n)
    }

    async fn backlog(&self) -> Result<Vec<SinkBacklog>> {
        let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
            "SELECT sink, status, COUNT(*), MIN(created_at) FROM deliveries
             WHERE status IN ('pending', 'dead') GROUP BY sink, status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(super::fold_backlog(rows))
    }

    async fn dump(&self, target: Option<&str>) -> Result<Vec<TargetDump>> {
        let targets: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT name, filter, baselined_at FROM targets WHERE ($1::text IS NULL OR name = $1) ORDER BY name",
        )
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for (name, filter, at) in targets {
            let rows =
                sqlx::query("SELECT * FROM checkpoints WHERE target = $1 ORDER BY created_at, id")
                    .bind(&name)
                    .fetch_all(&self.pool)
                    .await?;
            let checkpoints = rows
                .iter()
                .map(|r| tracked_from_row(r, true))
                .collect::<Result<Vec<_>>>()?;
            out.push(TargetDump {
                name,
                filter,
                baselined_at: ms_to_time(at),
                checkpoints,
            });
        }
        Ok(out)
    }

    async fn events(&self, target: Option<&str>) -> Result<Vec<StoredEvent>> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE ($1::text IS NULL OR e.target = $1) ORDER BY e.seq"
        )))
        .bind(target)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<(u64, u64)> {
        let cutoff = cutoff.timestamp_millis();
        let mut tx = self.pool.begin().await?;
        let deliveries =
            sqlx::query("DELETE FROM deliveries WHERE status IN ('delivered', 'superseded') AND updated_at < $1")
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        let events = sqlx::query(
            "DELETE FROM events WHERE detected_at < $1
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_seq = events.seq)",
        )
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((deliveries, events))
    }
}

/// Records a follow-up event and its deliveries, unless an event of its id is already
/// there (a repeated deploy: the event was announced once).
async fn insert_follow_up(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    f: &super::FollowUp,
    now: i64,
) -> Result<()> {
    let e = &f.event;
    let seq: Option<i64> = sqlx::query_scalar(
        "INSERT INTO events (id, type, target, checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING RETURNING seq",
    )
    .bind(&e.id)
    .bind(&e.kind)
    .bind(&e.target)
    .bind(&e.checkpoint_id)
    .bind(&e.checkpoint_name)
    .bind(&e.run_id)
    .bind(&e.checkpoint_target)
    .bind(e.detected_at.timestamp_millis())
    .bind(&e.body)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(seq) = seq else {
        return Ok(());
    };
    for sink in &f.sinks {
        sqlx::query(
            "INSERT INTO deliveries (event_seq, sink, run_id, status, next_attempt_at, created_at, updated_at)
             VALUES ($1, $2, $3, 'pending', $4, $4, $4)",
        )
        .bind(seq)
        .bind(sink)
        .bind(&e.run_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Replica membership and target leases on the shared database.
pub struct Leases {
    pool: PgPool,
    pub replica: String,
    ttl: Duration,
}

/// What one lease round changed.
#[derive(Debug, Default, PartialEq)]
pub struct LeaseRound {
    /// Target -> epoch, for every lease this replica holds after the round.
    pub owned: Vec<(String, i64)>,
    /// Leases taken from a replica whose lease had expired (epoch > 1).
    pub takeovers: u64,
    pub live_replicas: i64,
}

impl Leases {
    pub fn new(store: &PgStore, replica: String, ttl: Duration) -> Self {
        Leases {
            pool: store.pool.clone(),
            replica,
            ttl,
        }
    }

    /// Heartbeat, renew what is held, give up what is above a fair share, and take
    /// free or expired targets up to it. Run every `ttl / 3`.
    pub async fn round(&self, targets: &[String]) -> Result<LeaseRound> {
        let ttl = self.ttl.as_millis() as i64;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO replicas (id, heartbeat_at, started_at) VALUES ($1, {DB_NOW}, {DB_NOW})
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at"
        )))
        .bind(&self.replica)
        .execute(&self.pool)
        .await?;
        let live: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM replicas WHERE heartbeat_at > {DB_NOW} - $1"
        )))
        .bind(ttl)
        .fetch_one(&self.pool)
        .await?;
        let live = live.max(1);
        let fair = (targets.len() as i64 + live - 1) / live;

        // Renew the leases still held; an expired one is gone (someone may own it now).
        let mut owned: Vec<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE leases SET expires_at = {DB_NOW} + $2
             WHERE owner = $1 AND expires_at > {DB_NOW} AND target = ANY($3)
             RETURNING target, epoch"
        )))
        .bind(&self.replica)
        .bind(ttl)
        .bind(targets)
        .fetch_all(&self.pool)
        .await?;
        owned.sort();

        // Above the fair share (a replica joined): release the surplus.
        while owned.len() as i64 > fair {
            let (target, epoch) = owned.pop().expect("non-empty");
            sqlx::query(
                "UPDATE leases SET expires_at = 0 WHERE target = $1 AND owner = $2 AND epoch = $3",
            )
            .bind(&target)
            .bind(&self.replica)
            .bind(epoch)
            .execute(&self.pool)
            .await?;
        }

        // Below it: take free or expired targets, in a per-replica order so that
        // replicas starting together do not all race for the same rows.
        let mut takeovers = 0;
        if (owned.len() as i64) < fair {
            let mut candidates: Vec<&String> = targets
                .iter()
                .filter(|t| !owned.iter().any(|(o, _)| o == *t))
                .collect();
            candidates
                .sort_by_key(|t| crate::model::event_id(&self.replica, t, DateTime::UNIX_EPOCH, 0));
            for t in candidates {
                if owned.len() as i64 >= fair {
                    break;
                }
                if let Some(epoch) = self.try_take(t).await? {
                    if epoch > 1 {
                        takeovers += 1;
                    }
                    owned.push((t.clone(), epoch));
                }
            }
        }
        Ok(LeaseRound {
            owned,
            takeovers,
            live_replicas: live,
        })
    }

    /// Take `target`'s lease if it is free or expired: its new epoch, or None while
    /// someone else holds it.
    async fn try_take(&self, target: &str) -> Result<Option<i64>> {
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "INSERT INTO leases (target, owner, epoch, expires_at) VALUES ($1, $2, 1, {DB_NOW} + $3)
             ON CONFLICT (target) DO UPDATE
                SET owner = excluded.owner, epoch = leases.epoch + 1, expires_at = excluded.expires_at
                WHERE leases.expires_at <= {DB_NOW}
             RETURNING epoch"
        )))
        .bind(target)
        .bind(&self.replica)
        .bind(self.ttl.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// For a one-shot run (`once`) beside running replicas: take the lease of each of
    /// `targets` that nobody holds, without joining as a replica (no heartbeat, so the
    /// fair shares do not move). Returns, per target, `Ok(epoch)` when taken or
    /// `Err(owner)` when a replica holds it.
    pub async fn take_free(
        &self,
        targets: &[String],
    ) -> Result<Vec<(String, std::result::Result<i64, String>)>> {
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let got = match self.try_take(t).await? {
                Some(epoch) => Ok(epoch),
                None => Err(
                    sqlx::query_scalar("SELECT owner FROM leases WHERE target = $1")
                        .bind(t)
                        .fetch_optional(&self.pool)
                        .await?
                        .unwrap_or_default(),
                ),
            };
            out.push((t.clone(), got));
        }
        Ok(out)
    }

    /// Extend every lease this owner still holds by `ttl` (a one-shot run's heartbeat);
    /// returns how many.
    pub async fn renew(&self) -> Result<u64> {
        Ok(sqlx::query(AssertSqlSafe(format!(
            "UPDATE leases SET expires_at = {DB_NOW} + $2 WHERE owner = $1 AND expires_at > {DB_NOW}"
        )))
        .bind(&self.replica)
        .bind(self.ttl.as_millis() as i64)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Give up every lease (on shutdown), so another replica takes over at once.
    pub async fn release_all(&self) -> Result<()> {
        sqlx::query("UPDATE leases SET expires_at = 0 WHERE owner = $1")
            .bind(&self.replica)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(&self.replica)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
