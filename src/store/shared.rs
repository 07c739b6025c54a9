//! The store operations both backends run the same way, written once and generic over
//! the sqlx database: a poll's commit, reads of state and of the events' figures, the
//! backlog, outcomes, renewals, re-queueing and pruning; and how a claim splits between
//! lanes ([`LaneTurns`]). A backend's [`Dialect`] supplies the little SQL that differs
//! (`sqlite_dialect.rs`, `postgres.rs`); the one implementation of the store's roles
//! (`backend.rs`) calls these, on a connection the backend hands it for each write
//! (SQLite's inside its write turn).

use std::collections::HashMap;
use std::future::Future;

use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::batch::{Col, Rows};
use super::rows::{self, DeliveryRecord, EventRecord, TargetRecord, TrackedRecord};
use super::{
    AttemptOutcome, DeliveryRow, DeliveryStatus, Fence, FollowUp, PollCommit, Recorded, Redeliver,
    Requeued, Result, SinkBacklog, StoredEvent, TargetDump, Written, sql, sql::Lane,
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
    fn check_fence(
        tx: &mut Self::Connection,
        target: &str,
        fence: Option<&Fence>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Insert or overwrite checkpoints that come with their object's text.
    fn upsert_checkpoints(
        tx: &mut Self::Connection,
        target: &str,
        rows: &[&Tracked],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Insert events with their `standard` bodies, in order; returns their `seq`s.
    fn insert_events(
        tx: &mut Self::Connection,
        events: &[(&Event, &str)],
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// A row lock for a `SELECT` that fences a write (`FOR UPDATE`; SQLite has one writer).
    const LOCK_ROW: &'static str;

    /// A statement taking a transaction-scoped lock on a model's name (`$1`), where
    /// replicas write at once (PostgreSQL's advisory locks); none for SQLite's one writer.
    const MODEL_LOCK: Option<&'static str>;

    /// `FOR UPDATE SKIP LOCKED` where replicas claim at once; nothing for SQLite.
    const SKIP_LOCKED: &'static str;

    /// First in a transaction of [`Grade::Lease`](super::backend::Grade) writes (webhook
    /// and exec outcomes): its commit returns without waiting for the disk, as SQLite's
    /// `leases` connections do (`synchronous = NORMAL`), where a connection of its own
    /// does it and this is `None`.
    const UNSYNCED_COMMIT: Option<&'static str>;

    /// The SQL of "now" for claim expiries (Unix ms), given a placeholder: SQLite binds
    /// its process's claim clock there (one process per file), PostgreSQL the caller's
    /// offset ([`super::clock_skew`]) to add to the database's clock (one clock for every
    /// replica).
    fn claim_clock(param: &str) -> String;

    /// Insert pending deliveries (event seq, sink, run id), due at `now`, in order.
    fn insert_deliveries(
        tx: &mut Self::Connection,
        rows: &[(i64, &str, &str)],
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// `rows` as a table `u` with their columns' names, for a `FROM` clause, bound from
    /// the placeholder `$first` on ([`super::batch`]).
    fn rows_table(rows: &Rows, first: usize) -> String;

    /// Bind `rows` as [`Dialect::rows_table`] reads them, after the statement's other
    /// parameters.
    fn bind_rows<'q>(
        q: Query<'q, Self, <Self as sqlx::Database>::Arguments>,
        rows: &Rows,
    ) -> Query<'q, Self, <Self as sqlx::Database>::Arguments>;
}

/// The last of each key in `items`, in the order of those last ones: what writing them
/// one statement at a time, each overwriting the one before, would leave.
fn last_of_each<T, K: std::hash::Hash + Eq>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut last: HashMap<K, usize> = HashMap::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        last.insert(key(t), i);
    }
    items
        .into_iter()
        .enumerate()
        .filter(|(i, t)| last.get(&key(t)) == Some(i))
        .map(|(_, t)| t)
        .collect()
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
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
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
    /// (the rule of [`super::PollState::commit_poll`]).
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
        // One statement per table, whatever the row count: a checkpoint listed twice
        // leaves what its last row says, as row-by-row writes would.
        let texts = last_of_each(texts, |t| t.id.as_str());
        DB::upsert_checkpoints(&mut tx, c.target, &texts).await?;
        // A row without its text (a checkpoint absent from the listing) keeps the stored one.
        let bare = last_of_each(bare, |t| t.id.as_str());
        if !bare.is_empty() {
            let rows = super::batch::checkpoints(&bare);
            let q = format!(
                "UPDATE checkpoints SET {} FROM {} WHERE checkpoints.target = $1 AND checkpoints.id = u.id",
                sql::UPDATE_CHECKPOINT_FROM_U,
                DB::rows_table(&rows, 2)
            );
            DB::bind_rows(sqlx::query(AssertSqlSafe(q)).bind(c.target), &rows)
                .execute(&mut *tx)
                .await?;
        }
        // After the rows: a checkpoint first listed (and probed) in this poll exists now.
        let probes = last_of_each(c.probes.iter().collect(), |(id, _)| *id);
        if !probes.is_empty() {
            let memos: Vec<Option<String>> = probes
                .iter()
                .map(|(_, memo)| memo.map(rows::probe_text))
                .collect();
            let rows = Rows::default()
                .col("id", Col::Text(probes.iter().map(|(id, _)| *id).collect()))
                .col(
                    "probe",
                    Col::OptText(memos.iter().map(Option::as_deref).collect()),
                );
            let q = format!(
                "UPDATE checkpoints SET probe = u.probe FROM {}
                 WHERE checkpoints.target = $1 AND checkpoints.id = u.id",
                DB::rows_table(&rows, 2)
            );
            DB::bind_rows(sqlx::query(AssertSqlSafe(q)).bind(c.target), &rows)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(sql::SET_LISTING_DIGEST)
            .bind(rows::digest_text(c.settled))
            .bind(c.target)
            .execute(&mut *tx)
            .await?;
        let events = &c.diff.events;
        // The state holds only a digest of a checkpoint gone from the listing: its event
        // carries the object last stored, read here, in the same transaction (one read).
        let gone: Vec<&str> = events
            .iter()
            .filter(|e| e.checkpoint.is_empty())
            .map(|e| e.checkpoint_id.as_str())
            .collect();
        let mut stored: HashMap<String, String> = HashMap::new();
        if !gone.is_empty() {
            let rows = Rows::default().col("id", Col::Text(gone));
            let q = format!(
                "SELECT c.id, c.raw FROM {} JOIN checkpoints c ON c.target = $1 AND c.id = u.id",
                DB::rows_table(&rows, 2)
            );
            let found: Vec<(String, String)> =
                DB::bind_rows(sqlx::query(AssertSqlSafe(q)).bind(c.target), &rows)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(<(String, String)>::from_row)
                    .collect::<std::result::Result<_, _>>()?;
            stored.extend(found);
        }
        let bodies: Vec<String> = events
            .iter()
            .map(|e| {
                if !e.checkpoint.is_empty() {
                    return e.standard_body();
                }
                let filled = Event {
                    checkpoint: stored.get(&e.checkpoint_id).cloned().unwrap_or_default(),
                    ..e.clone()
                };
                filled.standard_body()
            })
            .collect();
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

    /// [`super::Outbox::next_due`].
    pub(crate) async fn next_due(
        pool: &Pool<DB>,
        sink: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let next: Option<(i64,)> = sqlx::query_as(sql::NEXT_DUE)
            .bind(sink)
            .bind(now.timestamp_millis())
            .fetch_optional(pool)
            .await?;
        Ok(next.map(|(ms,)| rows::ms_to_time(ms)))
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
    /// named by delivery or event id, in one transaction. Returns how many, and the
    /// deployed deploys among them left alone (all re-queued with
    /// [`Redeliver::DeployAgain`]). A re-queued delivery counts its attempts from 0
    /// again; its attempts log is cut to one fewer than the bound
    /// ([`super::attempts::log`] does not trim after a first attempt).
    pub(crate) async fn redeliver(
        conn: &mut DB::Connection,
        which: &Redeliver,
        now: i64,
    ) -> Result<Requeued> {
        // Each statement's `$2`: a sink or an event id, or a delivery id.
        type Named<'a> = (sql::Requeue, Option<&'a str>, Option<i64>);
        let mut tx = conn.begin().await?;
        let (named, deploy_again): (Vec<Named>, bool) = match which {
            Redeliver::Pending { sink } => {
                // Attempts kept: the schedule goes on where it was; the log stays as it is.
                let done = sqlx::query(AssertSqlSafe(sql::retry_pending_now()))
                    .bind(now)
                    .bind(sink.as_deref())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Requeued {
                    count: DB::rows_affected(&done),
                    deployed: Vec::new(),
                });
            }
            Redeliver::Dead { sink } => (vec![(sql::Requeue::Dead, sink.as_deref(), None)], false),
            Redeliver::Ids(ids) | Redeliver::DeployAgain(ids) => (
                ids.iter()
                    .map(|id| match id.parse::<i64>() {
                        Ok(num) => (sql::Requeue::Delivery, None, Some(num)),
                        Err(_) => (sql::Requeue::Event, Some(id.as_str()), None),
                    })
                    .collect(),
                matches!(which, Redeliver::DeployAgain(_)),
            ),
        };
        let ids_of = |rows: Vec<DB::Row>| -> Result<Vec<i64>> {
            rows.iter()
                .map(|r| <(i64,)>::from_row(r).map(|(id,)| id).map_err(Into::into))
                .collect()
        };
        let (mut ids, mut deployed) = (Vec::new(), Vec::new());
        for (requeue, text, num) in named {
            let query = |statement: String| {
                let q = sqlx::query(AssertSqlSafe(statement)).bind(now);
                match num {
                    Some(num) => q.bind(num),
                    None => q.bind(text),
                }
            };
            if !deploy_again {
                deployed.extend(ids_of(
                    query(requeue.deployed()).fetch_all(&mut *tx).await?,
                )?);
            }
            ids.extend(ids_of(
                query(requeue.update(deploy_again))
                    .fetch_all(&mut *tx)
                    .await?,
            )?);
        }
        super::attempts::trim::<DB>(&mut tx, &ids, super::attempts::KEPT_PER_DELIVERY - 1).await?;
        tx.commit().await?;
        Ok(Requeued {
            count: ids.len() as u64,
            deployed,
        })
    }

    /// Attempts' outcomes in one transaction on `conn`, each fenced by its claim's token
    /// (a stale one changes nothing: its id is returned); a delivered deploy's follow-up
    /// event and a deploy pipeline's new stage go with their delivery's outcome.
    ///
    /// One `UPDATE ... FROM <rows>` writes every outcome, fenced row by row by the same
    /// `claim_token` condition, and returns the rows it changed: the others are stale.
    /// The attempts log is one insert and one trim; only a deploy's follow-up and stage
    /// (a `baseten_deploy` sink's) add statements of their own.
    pub(crate) async fn record_attempts(
        conn: &mut DB::Connection,
        outcomes: &[Recorded],
        now: i64,
    ) -> Result<Written> {
        // A delivery twice in one batch: the first write ends its claim, so the second is
        // stale, as when written one after the other.
        let mut seen = std::collections::HashSet::with_capacity(outcomes.len());
        let (first, again): (Vec<&Recorded>, Vec<&Recorded>) =
            outcomes.iter().partition(|r| seen.insert(r.delivery_id));
        let mut stale: Vec<i64> = again.iter().map(|r| r.delivery_id).collect();
        if first.is_empty() {
            return Ok(Written {
                stale,
                superseded: 0,
            });
        }
        let rows = outcome_rows(&first);
        let mut tx = conn.begin().await?;
        // Outcomes alone are lease-grade: losing one in a crash of the database server
        // costs a repeat under the same id. A deploy's outcome (its stage, its follow-up
        // event) is the pipeline's record and waits for the disk.
        let plain = first.iter().all(|r| {
            r.deploy.is_none()
                && matches!(
                    r.outcome,
                    AttemptOutcome::Delivered
                        | AttemptOutcome::Retry { .. }
                        | AttemptOutcome::Dead { .. }
                )
        });
        if let (true, Some(unsynced)) = (plain, DB::UNSYNCED_COMMIT) {
            sqlx::query(unsynced).execute(&mut *tx).await?;
        }
        let q = format!(
            "UPDATE deliveries SET {} FROM {}
             WHERE deliveries.id = u.id AND deliveries.claim_token = u.token
             RETURNING deliveries.id, deliveries.sink, CAST(deliveries.attempts AS BIGINT)",
            sql::RECORD_OUTCOME_FROM_U,
            DB::rows_table(&rows, 2)
        );
        let written: Vec<(i64, String, i64)> =
            DB::bind_rows(sqlx::query(AssertSqlSafe(q)).bind(now), &rows)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(<(i64, String, i64)>::from_row)
                .collect::<std::result::Result<_, _>>()?;
        let written: HashMap<i64, (String, i64)> = written
            .into_iter()
            .map(|(id, sink, attempts)| (id, (sink, attempts)))
            .collect();
        let mut applied: Vec<(&Recorded, &str, i64)> = Vec::with_capacity(written.len());
        let mut superseded = 0;
        for r in first {
            let Some((sink, attempts)) = written.get(&r.delivery_id) else {
                stale.push(r.delivery_id);
                continue;
            };
            if let AttemptOutcome::DeliveredWith(f) | AttemptOutcome::AwaitingApproval(Some(f)) =
                &r.outcome
            {
                Self::insert_follow_up(&mut tx, f, now).await?;
            }
            if let Some(u) = &r.deploy {
                superseded += Self::apply_deploy_update(&mut tx, r.delivery_id, u, now).await?;
            }
            applied.push((r, sink.as_str(), *attempts));
        }
        super::attempts::log::<DB>(&mut tx, &applied, now).await?;
        tx.commit().await?;
        Ok(Written { stale, superseded })
    }

    /// Renew held claims (id, token) to `clock_now + lease_ms` on the dialect's claim
    /// clock, in one statement; the ids still held.
    pub(crate) async fn renew_claims(
        conn: &mut DB::Connection,
        held: &[(i64, i64)],
        clock_now: i64,
        lease_ms: i64,
    ) -> Result<Vec<i64>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let rows = claim_rows(held);
        let q = format!(
            "UPDATE deliveries SET claimed_until = {} + $1 FROM {}
             WHERE deliveries.id = u.id AND deliveries.claim_token = u.token
               AND deliveries.status = 'pending'
             RETURNING deliveries.id",
            DB::claim_clock("$2"),
            DB::rows_table(&rows, 3)
        );
        let kept = DB::bind_rows(
            sqlx::query(AssertSqlSafe(q)).bind(lease_ms).bind(clock_now),
            &rows,
        )
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| <(i64,)>::from_row(r).map(|(id,)| id))
        .collect::<std::result::Result<_, _>>()?;
        Ok(kept)
    }

    /// Give back claims (id, token) never attempted, in one statement.
    pub(crate) async fn release(
        conn: &mut DB::Connection,
        claims: &[(i64, i64)],
        now: i64,
    ) -> Result<()> {
        if claims.is_empty() {
            return Ok(());
        }
        let rows = claim_rows(claims);
        let q = format!(
            "UPDATE deliveries SET claimed_until = NULL, claim_token = NULL, {} FROM {}
             WHERE deliveries.id = u.id AND deliveries.claim_token = u.token
               AND deliveries.status = 'pending'",
            sql::DUE_AGAIN_AT_1,
            DB::rows_table(&rows, 2)
        );
        DB::bind_rows(sqlx::query(AssertSqlSafe(q)).bind(now), &rows)
            .execute(&mut *conn)
            .await?;
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
        let rows: Vec<(i64, &str, &str)> = f
            .sinks
            .iter()
            .map(|sink| (seq, sink.as_str(), e.run_id.as_str()))
            .collect();
        DB::insert_deliveries(tx, &rows, now).await
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

/// Reads of the outbox's and the events' figures.
impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
{
    /// How many events are stored of each type: (type, count), by type.
    pub(crate) async fn event_counts(pool: &Pool<DB>) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(sql::EVENT_COUNTS).fetch_all(pool).await?)
    }
}

/// Claims (id, token) as rows `u(id, token)`.
fn claim_rows(claims: &[(i64, i64)]) -> Rows<'static> {
    Rows::default()
        .col("id", Col::Int(claims.iter().map(|(id, _)| *id).collect()))
        .col("token", Col::Int(claims.iter().map(|(_, t)| *t).collect()))
}

/// Outcomes as the rows [`sql::RECORD_OUTCOME_FROM_U`] reads: `u(id, token, status,
/// counted, next_at, keep_status, last_status, last_error)`. `status` and `next_at` are
/// NULL where the outcome keeps the stored value.
fn outcome_rows<'a>(outcomes: &[&'a Recorded]) -> Rows<'a> {
    let n = outcomes.len();
    let mut status: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut counted = Vec::with_capacity(n);
    let mut next_at = Vec::with_capacity(n);
    let mut keep_status = Vec::with_capacity(n);
    let mut last_status = Vec::with_capacity(n);
    let mut last_error: Vec<Option<&str>> = Vec::with_capacity(n);
    for r in outcomes {
        let http = |s: &Option<u16>| s.map(i64::from);
        let (st, count, next, keep, code, error) = match &r.outcome {
            AttemptOutcome::Delivered | AttemptOutcome::DeliveredWith(_) => {
                (Some("delivered"), 1, None, false, None, None)
            }
            AttemptOutcome::Superseded { reason } => (
                Some("superseded"),
                0,
                None,
                false,
                None,
                Some(reason.as_str()),
            ),
            AttemptOutcome::Retry {
                next,
                status,
                error,
            } => (
                None,
                1,
                Some(next.timestamp_millis()),
                false,
                http(status),
                Some(error.as_str()),
            ),
            AttemptOutcome::Dead { status, error } => (
                Some(DeliveryStatus::Dead.as_str()),
                1,
                None,
                false,
                http(status),
                Some(error.as_str()),
            ),
            AttemptOutcome::Deferred { next, reason } => (
                None,
                0,
                Some(next.timestamp_millis()),
                true,
                None,
                Some(reason.as_str()),
            ),
            AttemptOutcome::AwaitingApproval(_) => {
                (Some("awaiting_approval"), 0, None, false, None, None)
            }
            AttemptOutcome::Unknown { error } => (
                Some(DeliveryStatus::Unknown.as_str()),
                1,
                None,
                false,
                None,
                Some(error.as_str()),
            ),
        };
        status.push(st);
        // A deploy's reconciliation pass completes an earlier attempt: not counted.
        counted.push(if r.facts.reconciliation { 0 } else { count });
        next_at.push(next);
        keep_status.push(keep);
        last_status.push(code);
        last_error.push(error);
    }
    Rows::default()
        .col(
            "id",
            Col::Int(outcomes.iter().map(|r| r.delivery_id).collect()),
        )
        .col(
            "token",
            Col::Int(outcomes.iter().map(|r| r.token).collect()),
        )
        .col("status", Col::OptText(status))
        .col("counted", Col::Int(counted))
        .col("next_at", Col::OptInt(next_at))
        .col("keep_status", Col::Bool(keep_status))
        .col("last_status", Col::OptInt(last_status))
        .col("last_error", Col::OptText(last_error))
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
