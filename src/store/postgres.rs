//! The shared store for several replicas: the same schema as SQLite on PostgreSQL, plus
//! replica heartbeats and shard leases with fencing epochs ([`PgLeases`], in
//! `pg_leases.rs`).
//!
//! Lease times use the database clock, so replicas never compare their own clocks.

use std::time::Duration;

use sqlx::postgres::{
    PgArguments, PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgQueryResult,
};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Postgres, Row};

use super::backend::{Backend, ClaimAsk, Grade, Turn};
use super::batch::Rows;
use super::coordination::Fence;
use super::rows::{event_from_row, ms_to_time};
use super::shared::{Dialect, LaneTurns};
use super::{Access, Claimed, PollState, Result, StoreError, sql};
use crate::model::{Event, TargetState, Tracked};

pub use super::pg_leases::PgLeases;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How long an operation waits for a connection, which is also how long a database that
/// went away takes to show as an error (`/readyz` 503): sqlx keeps trying to connect until
/// then. A query takes milliseconds and a pool of 8 is rarely all busy, so a longer wait
/// means the server is gone or overloaded, not that the pool is short.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a one-shot run's owner name has after the replica id (`r1/once-4242`); a
/// replica id never has a `/`.
pub(super) const ONE_SHOT: &str = "/once-";
/// [`ONE_SHOT`] as a LIKE pattern.
pub(super) const ONE_SHOT_LIKE: &str = "%/once-%";

/// The database clock in Unix milliseconds.
pub(super) const DB_NOW: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

pub struct PgStore {
    pool: PgPool,
    /// How each claim splits between first attempts and retries.
    lanes: LaneTurns,
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
            .acquire_timeout(ACQUIRE_TIMEOUT);
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
            .map_err(|source| StoreError::Connect {
                store: shown.clone(),
                source,
            })?;
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
        Ok(PgStore {
            pool,
            lanes: LaneTurns::default(),
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// PostgreSQL writes a poll's rows one statement per table, the rows bound as arrays
/// (`pg_batch`).
impl Dialect for Postgres {
    /// PostgreSQL keeps no digest of the text: always the text.
    fn tracked_columns(_with_raw: bool) -> String {
        format!(
            "{}, NULL::BIGINT AS raw_digest, raw",
            sql::CHECKPOINT_FIELDS
        )
    }

    fn rows_affected(r: &PgQueryResult) -> u64 {
        r.rows_affected()
    }

    const BODY_CREATED_AT: &'static str = "(e.body::jsonb #>> '{data,checkpoint,created_at}')";
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const MODEL_LOCK: Option<&'static str> =
        Some("SELECT pg_advisory_xact_lock(7474, hashtext($1))");
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const UNSYNCED_COMMIT: Option<&'static str> = Some("SET LOCAL synchronous_commit = off");

    /// The database's clock: replicas' clocks may disagree, and a claim that lapsed by
    /// one replica's clock must not be taken by another's while its holder still works.
    /// `param` is the caller's offset from the present ([`super::clock_skew`]).
    fn claim_clock(param: &str) -> String {
        format!("(CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT) + {param})")
    }
    const BODY_FIRST_SEEN_AT: &'static str = "(e.body::jsonb #>> '{data,first_seen_at}')";

    /// Lock the target's shard lease: a takeover waits for this commit, and a stale epoch
    /// (the shard was taken while this replica was paused), a released shard or a
    /// heartbeat that lapsed commits nothing.
    async fn check_fence(tx: &mut PgConnection, target: &str, fence: Option<&Fence>) -> Result<()> {
        let Some(f) = fence else {
            return Ok(());
        };
        let held = sqlx::query(AssertSqlSafe(format!(
            "SELECT 1 FROM shard_leases l JOIN replicas r ON r.id = l.owner
             WHERE l.shard = $1 AND l.owner = $2 AND l.epoch = $3 AND NOT l.released
                AND r.lease_expires_at > {DB_NOW}
             FOR UPDATE OF l"
        )))
        .bind(super::coordination::shard_of(target))
        .bind(&f.owner)
        .bind(f.epoch)
        .fetch_optional(&mut *tx)
        .await?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced {
                target: target.to_string(),
                epoch: f.epoch,
            }),
        }
    }

    async fn upsert_checkpoints(
        tx: &mut PgConnection,
        target: &str,
        rows: &[&Tracked],
    ) -> Result<()> {
        super::pg_batch::upsert_checkpoints(tx, target, rows).await
    }

    async fn insert_events(tx: &mut PgConnection, events: &[(&Event, &str)]) -> Result<Vec<i64>> {
        super::pg_batch::insert_events(tx, events).await
    }

    async fn insert_deliveries(
        tx: &mut PgConnection,
        rows: &[(i64, &str, &str)],
        now: i64,
    ) -> Result<()> {
        super::pg_batch::insert_deliveries(tx, rows, now).await
    }

    fn rows_table(rows: &Rows, first: usize) -> String {
        super::pg_batch::rows_table(rows, first)
    }

    fn bind_rows<'q>(
        q: Query<'q, Postgres, PgArguments>,
        rows: &Rows,
    ) -> Query<'q, Postgres, PgArguments> {
        super::pg_batch::bind_rows(q, rows)
    }
}

/// PostgreSQL's part of the store's roles: one pool for everything, no write turn (the
/// database orders concurrent writers), the database's clock for claims.
impl Backend for PgStore {
    type DB = Postgres;

    fn reads(&self) -> &PgPool {
        &self.pool
    }

    /// Any connection of the pool, durable or not alike (a claim turns off
    /// `synchronous_commit` in its own transaction); kept after an error.
    async fn write(&self, _grade: Grade) -> Result<Turn<'_, Postgres>> {
        Ok(Turn::new(self.pool.acquire().await?, None, false))
    }

    /// The database adds its own clock ([`Dialect::claim_clock`]).
    fn clock_base(&self) -> i64 {
        0
    }

    async fn claim_deliveries(&self, ask: &ClaimAsk<'_>) -> Result<Vec<Claimed>> {
        let (sink, limit, token) = (ask.sink, ask.limit, ask.token);
        let clock = <Postgres as Dialect>::claim_clock("$5");
        let mut rows = Vec::with_capacity(limit);
        // One transaction: the lanes' claims stand or fall together.
        let mut tx = self.pool.begin().await?;
        // A claim only leases deliveries to this replica: its commit does not wait for
        // the disk (one WAL flush, milliseconds, per claim). A server crash that loses it
        // costs at worst a repeat, as a lapsed claim does, and the next durable commit
        // (an outcome's) flushes it with its own. And no sort: each lane has an index in
        // its order, but with statistics from before a burst (few pending) the planner
        // read every pending delivery of the sink by another index and sorted them, on
        // every claim (3,500 rows sorted for 32 taken, profiled mid-burst).
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true),
                    set_config('enable_sort', 'off', true)",
        )
        .execute(&mut *tx)
        .await?;
        for (lane, room) in self.lanes.split(sink, limit) {
            let room = room.min(limit - rows.len());
            if room == 0 {
                continue;
            }
            // SKIP LOCKED: replicas claiming at once take disjoint rows instead of waiting.
            // A row the first lane took is claimed now, so the second cannot take it again.
            let took = sqlx::query(AssertSqlSafe(format!(
                "WITH due AS ({} FOR UPDATE SKIP LOCKED)
                 UPDATE deliveries d SET {}
                 FROM due, events e
                 WHERE d.id = due.id AND e.seq = d.event_seq
                 RETURNING d.id AS delivery_id, d.attempts, d.created_at AS delivery_created, {}",
                sql::due(lane, ask.ordered, "", &clock),
                sql::claim_set(&clock),
                sql::EVENT_COLUMNS
            )))
            .bind(ask.lease_ms)
            .bind(sink)
            .bind(ask.now_ms)
            .bind(room as i64)
            .bind(super::clock_skew(ask.now))
            .bind(token)
            .fetch_all(&mut *tx)
            .await?;
            rows.extend(took);
        }
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(Claimed {
                    delivery_id: r.try_get("delivery_id")?,
                    token,
                    attempts: r.try_get::<i32, _>("attempts")? as u32,
                    created_at: ms_to_time(r.try_get("delivery_created")?),
                    event: event_from_row(r)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by_key(|c| c.event.seq);
        Ok(out)
    }

    /// One read per target, concurrently.
    async fn load_states(&self, names: &[&str]) -> Result<Vec<TargetState>> {
        futures_util::future::try_join_all(names.iter().map(|n| self.load_target(n))).await
    }

    /// Other replicas may hold claims: they expire on their own.
    async fn release_every_claim(&self) -> Result<u64> {
        Ok(0)
    }
}
