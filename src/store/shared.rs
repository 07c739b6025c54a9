//! The store operations both backends run the same way, written once and generic over
//! the sqlx database: a poll's commit, reads of state and events, the backlog,
//! re-queueing and pruning; and how a claim splits between lanes ([`LaneTurns`]). A backend's
//! [`Dialect`] supplies the little that differs; `sqlite.rs` and `postgres.rs` call these
//! from their [`super::Store`] methods (SQLite inside its write turn where it writes).

use std::collections::HashMap;

use sqlx::{AssertSqlSafe, Connection, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::rows::{self, DeliveryRecord, EventRecord, TargetRecord, TrackedRecord};
use super::{
    AttemptOutcome, DeliveryRow, DeliveryStatus, Fence, FollowUp, PollCommit, Recorded, Redeliver,
    Result, SinkBacklog, StoredEvent, TargetDump, sql, sql::Lane,
};
use crate::model::TargetState;
use crate::model::{Event, Tracked};

/// What differs between the dialects, for the shared operations: implemented beside
/// each backend (`sqlite.rs`, `postgres.rs`).
pub(crate) trait Dialect: super::attempts::LogDialect {
    /// The `checkpoints` columns a [`TrackedRecord`] reads; with `with_raw`, the object's
    /// text always (for `state`), else only where no digest is stored.
    fn tracked_columns(with_raw: bool) -> String;

    /// The rows a statement changed.
    fn rows_affected(r: &Self::QueryResult) -> u64;

    /// SQL of the checkpoint's `created_at` inside a stored event body `e.body` (text).
    const BODY_CREATED_AT: &'static str;

    /// SQL of the checkpoint's first sight (`data.first_seen_at`) inside `e.body`: what a
    /// `created_at` past the horizon is ordered as (`crate::model::ordering_time`).
    const BODY_FIRST_SEEN_AT: &'static str;

    /// First in a poll's transaction: refuse the commit ([`super::StoreError::Fenced`])
    /// unless `fence` still holds, and keep a takeover waiting until the commit ends.
    async fn check_fence(
        tx: &mut Self::Connection,
        target: &str,
        fence: Option<&Fence>,
    ) -> Result<()>;

    /// Insert or overwrite checkpoints that come with their object's text.
    async fn upsert_checkpoints(
        tx: &mut Self::Connection,
        target: &str,
        rows: &[&Tracked],
    ) -> Result<()>;

    /// Insert events with their `standard` bodies, in order; returns their `seq`s.
    async fn insert_events(
        tx: &mut Self::Connection,
        events: &[(&Event, &str)],
    ) -> Result<Vec<i64>>;

    /// A row lock for a `SELECT` that fences a write (`FOR UPDATE`; SQLite has one writer).
    const LOCK_ROW: &'static str;

    /// A statement taking a transaction-scoped lock on a model's name (`$1`), where
    /// replicas write at once (PostgreSQL's advisory locks); none for SQLite's one writer.
    const MODEL_LOCK: Option<&'static str>;

    /// `FOR UPDATE SKIP LOCKED` where replicas claim at once; nothing for SQLite.
    const SKIP_LOCKED: &'static str;

    /// The SQL of "now" for claim expiries (Unix ms), given a placeholder: SQLite binds
    /// its process's claim clock there (one process per file), PostgreSQL the caller's
    /// offset ([`super::clock_skew`]) to add to the database's clock (one clock for every
    /// replica).
    fn claim_clock(param: &str) -> String;

    /// Insert pending deliveries (event seq, sink, run id), due at `now`.
    async fn insert_deliveries(
        tx: &mut Self::Connection,
        rows: &[(i64, &str, &str)],
        now: i64,
    ) -> Result<()>;
}

/// The operations, for the dialect `DB`. The bounds say what both sqlx drivers provide:
/// connections that execute, arguments of these types, rows that decode into these records.
pub(crate) struct Queries<DB>(std::marker::PhantomData<DB>);

impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> TrackedRecord: FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> super::deploys::DeployRecord: FromRow<'r, DB::Row>,
{
    /// One poll's state changes, events and deliveries in one transaction on `conn`
    /// (the rule of [`super::Store::commit_poll`]).
    pub(crate) async fn commit_poll(
        conn: &mut DB::Connection,
        c: PollCommit<'_>,
    ) -> Result<Vec<StoredEvent>> {
        let now = c.now.timestamp_millis();
        let mut tx = conn.begin().await?;
        DB::check_fence(&mut tx, c.target, c.fence.as_ref()).await?;
        if c.diff.baseline {
            // A target baselined again (its filter changed) starts from nothing.
            sqlx::query(sql::FORGET_CHECKPOINTS)
                .bind(c.target)
                .execute(&mut *tx)
                .await?;
            sqlx::query(sql::BASELINE_TARGET)
                .bind(c.target)
                .bind(c.filter)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let (texts, bare): (Vec<&Tracked>, Vec<&Tracked>) =
            c.diff.updates.iter().partition(|t| t.raw.text().is_some());
        DB::upsert_checkpoints(&mut tx, c.target, &texts).await?;
        // A row without its text (a checkpoint absent from the listing) keeps the stored one.
        for t in bare {
            sqlx::query(sql::UPDATE_CHECKPOINT)
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
                .bind(i64::from(t.seq))
                .execute(&mut *tx)
                .await?;
        }
        // After the rows: a checkpoint first listed (and probed) in this poll exists now.
        for (id, memo) in &c.probes {
            sqlx::query(sql::SET_PROBE)
                .bind(memo.map(rows::probe_text))
                .bind(c.target)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(sql::SET_LISTING_DIGEST)
            .bind(rows::digest_text(c.settled))
            .bind(c.target)
            .execute(&mut *tx)
            .await?;
        let events = &c.diff.events;
        let mut bodies: Vec<String> = Vec::with_capacity(events.len());
        for e in events {
            if !e.checkpoint.is_empty() {
                bodies.push(e.standard_body());
                continue;
            }
            // The state holds only a digest of a checkpoint gone from the listing: its
            // event carries the object last stored, read here, in the same transaction.
            let raw: Option<String> = sqlx::query_scalar(sql::CHECKPOINT_RAW)
                .bind(c.target)
                .bind(e.checkpoint_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let filled = Event {
                checkpoint: raw.unwrap_or_default(),
                ..e.clone()
            };
            bodies.push(filled.standard_body());
        }
        let with_bodies: Vec<(&Event, &str)> = events
            .iter()
            .zip(bodies.iter().map(String::as_str))
            .collect();
        let seqs = DB::insert_events(&mut tx, &with_bodies).await?;
        let mut deliveries: Vec<(i64, &str, &str)> = Vec::new();
        for ((e, sinks), seq) in events.iter().zip(&c.sinks).zip(&seqs) {
            deliveries.extend(sinks.iter().map(|sink| (*seq, *sink, e.run_id.as_str())));
        }
        DB::insert_deliveries(&mut tx, &deliveries, now).await?;
        tx.commit().await?;
        Ok(events
            .iter()
            .zip(bodies)
            .zip(seqs)
            .map(|((e, body), seq)| StoredEvent::with_body(seq, e, body))
            .collect())
    }

    /// A target's persisted state, read row by row.
    pub(crate) async fn load_target(pool: &Pool<DB>, name: &str) -> Result<TargetState> {
        let target_row: Option<(String, Option<String>)> = sqlx::query_as(sql::TARGET_ROW)
            .bind(name)
            .fetch_optional(pool)
            .await?;
        let rows: Vec<TrackedRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {} FROM checkpoints WHERE target = $1",
            DB::tracked_columns(false)
        )))
        .bind(name)
        .fetch_all(pool)
        .await?;
        let probes = rows.iter().filter_map(TrackedRecord::probe).collect();
        let checkpoints = rows
            .into_iter()
            .map(|r| r.into_tracked(false))
            .collect::<Result<_>>()?;
        Ok(rows::target_state(target_row, checkpoints, probes))
    }

    /// The stored upstream object of one checkpoint.
    pub(crate) async fn checkpoint_raw(
        pool: &Pool<DB>,
        target: &str,
        id: &str,
    ) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(sql::CHECKPOINT_RAW)
            .bind(target)
            .bind(id)
            .fetch_optional(pool)
            .await?)
    }

    /// The name of the newest completed sampler checkpoint of `run_id`, created after
    /// `created_at`, that `sink` has a pending or delivered delivery for (other than
    /// `delivery_id`): a deploy due now is superseded by it (`latest_only`).
    pub(crate) async fn newer_deploy(
        pool: &Pool<DB>,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>> {
        let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(AssertSqlSafe(
            super::newer_deploy_query(DB::BODY_CREATED_AT, DB::BODY_FIRST_SEEN_AT),
        ))
        .bind(sink)
        .bind(run_id)
        .bind(delivery_id)
        .fetch_all(pool)
        .await?;
        Ok(super::pick_newer(rows, created_at))
    }

    /// Pending and dead deliveries per sink.
    pub(crate) async fn backlog(pool: &Pool<DB>) -> Result<Vec<SinkBacklog>> {
        let rows = sqlx::query_as(sql::BACKLOG).fetch_all(pool).await?;
        Ok(rows::fold_backlog(rows))
    }

    /// Every baselined target (or the one named) with its checkpoints and their text.
    pub(crate) async fn dump(pool: &Pool<DB>, target: Option<&str>) -> Result<Vec<TargetDump>> {
        let targets: Vec<TargetRecord> = sqlx::query_as(sql::DUMP_TARGETS)
            .bind(target)
            .fetch_all(pool)
            .await?;
        let checkpoints = format!(
            "SELECT {} FROM checkpoints WHERE target = $1 ORDER BY created_at, id",
            DB::tracked_columns(true)
        );
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let rows = sqlx::query_as(AssertSqlSafe(checkpoints.as_str()))
                .bind(t.name.as_str())
                .fetch_all(pool)
                .await?;
            out.push(t.dump(rows)?);
        }
        Ok(out)
    }

    /// Events in detection order, of one target or all.
    pub(crate) async fn events(pool: &Pool<DB>, target: Option<&str>) -> Result<Vec<StoredEvent>> {
        let rows: Vec<EventRecord> = sqlx::query_as(AssertSqlSafe(sql::events()))
            .bind(target)
            .fetch_all(pool)
            .await?;
        Ok(rows.into_iter().map(StoredEvent::from).collect())
    }

    /// The newest `limit` deliveries (of one status, or any), oldest first.
    pub(crate) async fn list_deliveries(
        pool: &Pool<DB>,
        status: Option<DeliveryStatus>,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        let rows: Vec<DeliveryRecord> = sqlx::query_as(AssertSqlSafe(sql::list_deliveries()))
            .bind(status.map(DeliveryStatus::as_str))
            .bind(limit)
            .bind(sink)
            .fetch_all(pool)
            .await?;
        rows.into_iter().rev().map(DeliveryRow::try_from).collect()
    }

    /// Re-queue deliveries to be sent now (Unix ms): every dead one (of a sink), or those
    /// named by delivery or event id, in one transaction. Returns how many.
    pub(crate) async fn redeliver(
        conn: &mut DB::Connection,
        which: &Redeliver,
        now: i64,
    ) -> Result<u64> {
        match which {
            Redeliver::Dead { sink } | Redeliver::Pending { sink } => {
                let q = match which {
                    Redeliver::Dead { .. } => sql::redeliver_dead(),
                    _ => sql::retry_pending_now(),
                };
                let done = sqlx::query(AssertSqlSafe(q))
                    .bind(now)
                    .bind(sink.as_deref())
                    .execute(&mut *conn)
                    .await?;
                Ok(DB::rows_affected(&done))
            }
            Redeliver::Ids(ids) => {
                let mut tx = conn.begin().await?;
                let mut n = 0;
                for id in ids {
                    let q = if let Ok(num) = id.parse::<i64>() {
                        sqlx::query(AssertSqlSafe(sql::redeliver_delivery()))
                            .bind(now)
                            .bind(num)
                    } else {
                        sqlx::query(AssertSqlSafe(sql::redeliver_event()))
                            .bind(now)
                            .bind(id.as_str())
                    };
                    n += DB::rows_affected(&q.execute(&mut *tx).await?);
                }
                tx.commit().await?;
                Ok(n)
            }
        }
    }

    /// Attempts' outcomes in one transaction on `conn`, each fenced by its claim's token
    /// (a stale one changes nothing: its id is returned); a delivered deploy's follow-up
    /// event and a deploy pipeline's new stage go with their delivery's outcome.
    pub(crate) async fn record_attempts(
        conn: &mut DB::Connection,
        outcomes: &[Recorded],
        now: i64,
    ) -> Result<Vec<i64>> {
        let mut tx = conn.begin().await?;
        let mut stale = Vec::new();
        let mut applied: Vec<&Recorded> = Vec::with_capacity(outcomes.len());
        for r in outcomes {
            let (id, token) = (r.delivery_id, r.token);
            let q = match &r.outcome {
                AttemptOutcome::Delivered | AttemptOutcome::DeliveredWith(_) => {
                    sqlx::query(sql::RECORD_DELIVERED)
                        .bind(now)
                        .bind(id)
                        .bind(token)
                }
                AttemptOutcome::Superseded { reason } => sqlx::query(sql::RECORD_SUPERSEDED)
                    .bind(now)
                    .bind(id)
                    .bind(token)
                    .bind(reason.as_str()),
                AttemptOutcome::Retry {
                    next,
                    status,
                    error,
                } => sqlx::query(sql::RECORD_RETRY)
                    .bind(now)
                    .bind(id)
                    .bind(token)
                    .bind(next.timestamp_millis())
                    .bind(status.map(i64::from))
                    .bind(error.as_str()),
                AttemptOutcome::Dead { status, error } => sqlx::query(sql::RECORD_DEAD)
                    .bind(now)
                    .bind(id)
                    .bind(token)
                    .bind(status.map(i64::from))
                    .bind(error.as_str())
                    .bind(1_i64)
                    .bind(DeliveryStatus::Dead.as_str()),
                AttemptOutcome::Deferred { next, reason } => sqlx::query(sql::RECORD_DEFERRED)
                    .bind(now)
                    .bind(id)
                    .bind(token)
                    .bind(next.timestamp_millis())
                    .bind(reason.as_str()),
                AttemptOutcome::Unknown { error } => sqlx::query(sql::RECORD_DEAD)
                    .bind(now)
                    .bind(id)
                    .bind(token)
                    .bind(None::<i64>)
                    .bind(error.as_str())
                    .bind(1_i64)
                    .bind(DeliveryStatus::Unknown.as_str()),
            };
            let done = q.execute(&mut *tx).await?;
            if DB::rows_affected(&done) == 0 {
                stale.push(id);
                continue;
            }
            if let AttemptOutcome::DeliveredWith(f) = &r.outcome {
                Self::insert_follow_up(&mut tx, f, now).await?;
            }
            if let Some(u) = &r.deploy {
                Self::apply_deploy_update(&mut tx, id, u, now).await?;
            }
            applied.push(r);
        }
        super::attempts::log::<DB>(&mut tx, &applied, now).await?;
        tx.commit().await?;
        Ok(stale)
    }

    /// Renew held claims (id, token) to `clock_now + lease_ms` on the dialect's claim
    /// clock; the ids still held.
    pub(crate) async fn renew_claims(
        conn: &mut DB::Connection,
        held: &[(i64, i64)],
        clock_now: i64,
        lease_ms: i64,
    ) -> Result<Vec<i64>> {
        let mut tx = conn.begin().await?;
        let renew = sql::renew_claim(&DB::claim_clock("$2"));
        let mut kept = Vec::with_capacity(held.len());
        for (id, token) in held {
            let r = sqlx::query(AssertSqlSafe(renew.as_str()))
                .bind(lease_ms)
                .bind(clock_now)
                .bind(*id)
                .bind(*token)
                .execute(&mut *tx)
                .await?;
            if DB::rows_affected(&r) > 0 {
                kept.push(*id);
            }
        }
        tx.commit().await?;
        Ok(kept)
    }

    /// Give back claims (id, token) never attempted.
    pub(crate) async fn release(conn: &mut DB::Connection, claims: &[(i64, i64)]) -> Result<()> {
        let mut tx = conn.begin().await?;
        for (id, token) in claims {
            sqlx::query(
                "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL
                 WHERE id = $1 AND claim_token = $2 AND status = 'pending'",
            )
            .bind(*id)
            .bind(*token)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Record a follow-up event and its deliveries on `tx`, unless an event of its id is
    /// already there (a repeated deploy: the event was announced once).
    pub(crate) async fn insert_follow_up(
        tx: &mut DB::Connection,
        f: &FollowUp,
        now: i64,
    ) -> Result<()> {
        let e = &f.event;
        let seq: Option<i64> = sqlx::query_scalar(sql::INSERT_FOLLOW_UP_EVENT)
            .bind(e.id.as_str())
            .bind(e.kind.as_str())
            .bind(e.target.as_str())
            .bind(e.checkpoint_id.as_str())
            .bind(e.checkpoint_name.as_str())
            .bind(e.run_id.as_str())
            .bind(e.checkpoint_target.as_str())
            .bind(e.detected_at.timestamp_millis())
            .bind(e.body.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(seq) = seq else {
            return Ok(());
        };
        for sink in &f.sinks {
            sqlx::query(sql::INSERT_DELIVERY)
                .bind(seq)
                .bind(sink.as_str())
                .bind(e.run_id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }

    /// Forget delivered deliveries updated before `cutoff` (Unix ms), then the events left
    /// without any, in one transaction on `conn`: (deliveries, events) removed.
    pub(crate) async fn prune(conn: &mut DB::Connection, cutoff: i64) -> Result<(u64, u64)> {
        let mut tx = conn.begin().await?;
        let deliveries = sqlx::query(sql::PRUNE_DELIVERIES)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let events = sqlx::query(sql::PRUNE_EVENTS)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok((DB::rows_affected(&deliveries), DB::rows_affected(&events)))
    }
}

/// How each claim splits its room between the lanes: half to first attempts
/// ([`Lane::First`]), the rest to every due delivery ([`Lane::Any`]), the first lane taking
/// what the second leaves. An odd room's extra slot goes to each lane in turn, per sink:
/// a sink claiming one delivery at a time (`concurrency` 1) starves neither new events
/// nor retries.
#[derive(Default)]
pub(crate) struct LaneTurns(std::sync::Mutex<HashMap<String, bool>>);

impl LaneTurns {
    /// The lanes of one claim of `room` for `sink`, in the order to claim them, each
    /// with at most how many to take.
    pub(crate) fn split(&self, sink: &str, room: usize) -> [(Lane, usize); 2] {
        let extra = if room % 2 == 1 {
            let mut turns = self.0.lock().expect("not poisoned");
            let first_now = turns.entry(sink.to_string()).or_insert(true);
            let took = *first_now;
            *first_now = !took;
            usize::from(took)
        } else {
            0
        };
        [(Lane::First, room / 2 + extra), (Lane::Any, room)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_odd_slot_goes_to_each_lane_in_turn_per_sink() {
        let turns = LaneTurns::default();
        let first = |sink: &str, room: usize| turns.split(sink, room)[0].1;
        assert_eq!(first("a", 4), 2);
        assert_eq!([first("a", 1), first("a", 1), first("a", 1)], [1, 0, 1]);
        assert_eq!(first("b", 3), 2, "each sink has its own turn");
        assert_eq!(first("a", 3), 1);
        assert_eq!(first("a", 0), 0);
        assert_eq!(turns.split("a", 5)[1], (Lane::Any, 5));
    }
}
