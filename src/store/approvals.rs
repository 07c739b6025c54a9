//! Deploys waiting for a person (docs/events.md, "Approval"): the decision of
//! `deliveries approve` / `reject` (one conditional write per pipeline, so of two
//! concurrent decisions, from two shells or two hosts, exactly one takes effect), the
//! expiry of waits past `approval_deadline`, and `latest_only` among waiting pipelines.
//!
//! A pipeline waits in stage `awaiting_approval`; waiting before its deploy, its delivery
//! waits too (status `awaiting_approval`: not pending, never claimed). Approving makes that
//! delivery pending and due now, or, waiting before a promotion, the pipeline `active` and
//! due to its follower; rejecting or expiring ends both. Written once for both dialects.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::Result;
use super::deploys::{DEPLOY_COLUMNS, DeployRecord, DeployRow, DeployStage};
use super::shared::{Dialect, Queries};

/// What a person decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Approved,
    Rejected,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Rejected => "rejected",
        }
    }
}

/// A decision on deploys waiting for approval: who, when and why.
#[derive(Clone, Debug)]
pub struct Decision {
    pub verdict: Verdict,
    pub by: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// A pipeline a decision took effect on, as it is now; `id` as the person gave it.
#[derive(Clone, Debug, Serialize)]
pub struct Decided {
    pub id: String,
    pub deploy: DeployRow,
}

/// An id that could not be decided, and why (one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecided {
    pub id: String,
    pub why: String,
}

/// Decide one pipeline (`$1` delivery id) still waiting and not past its deadline (`$2`
/// now): `$3` verdict, `$4` by, `$5` reason. Waiting before its deploy (its delivery
/// waits too), approval moves it to `deploying`; waiting before its promotion, to
/// `active`, due to its follower now. A write as the transaction's first statement: on
/// SQLite it takes the write lock at once (waiting its turn), so a concurrent decision is
/// read after it, never beside it.
const DECIDE: &str = "UPDATE deploys SET
    stage = CASE WHEN $3 = 'rejected' THEN 'rejected'
        WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.id = $1
                     AND d.status = 'awaiting_approval') THEN 'deploying'
        ELSE 'active' END,
    follow_next_at = CASE WHEN $3 = 'approved' AND NOT EXISTS (SELECT 1 FROM deliveries d
                     WHERE d.id = $1 AND d.status = 'awaiting_approval') THEN $2
        ELSE NULL END,
    decision = $3, decided_by = $4, decided_at = $2, decision_reason = $5,
    error = CASE WHEN $3 = 'rejected' THEN 'rejected by ' || $4 || COALESCE(': ' || $5, '')
        ELSE NULL END,
    updated_at = $2
    WHERE delivery_id = $1 AND stage = 'awaiting_approval'
      AND (approval_deadline IS NULL OR approval_deadline > $2)";

/// The delivery of a pipeline decided before its deploy: pending and due now (`$2`), or
/// `rejected` (`$3` verdict, `$4` its reason).
const DECIDE_DELIVERY: &str = "UPDATE deliveries SET
    status = CASE WHEN $3 = 'approved' THEN 'pending' ELSE 'rejected' END,
    next_attempt_at = $2, claimed_until = NULL, claim_token = NULL,
    last_error = CASE WHEN $3 = 'approved' THEN NULL ELSE $4 END, updated_at = $2
    WHERE id = $1 AND status = 'awaiting_approval'";

/// `latest_only` among waiting pipelines, inside the write that starts a wait (an
/// attempt's outcome, a follow's): the bounds of every block that writes pipelines.
impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    /// On `tx`, after pipeline `delivery_id` started waiting (`latest_only`): the older
    /// pipelines (by the checkpoint's `created_at`) of the same run and sink still waiting
    /// are superseded, with their deliveries if those wait too: how many deliveries.
    pub(crate) async fn supersede_waiting(
        tx: &mut DB::Connection,
        delivery_id: i64,
        now: i64,
    ) -> Result<u64> {
        let Some(me) = Self::pipeline(tx, delivery_id).await? else {
            return Ok(0);
        };
        let Some(mine) = me.ordering_time() else {
            return Ok(0);
        };
        let waiting: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys
             WHERE sink = $1 AND run_id = $2 AND stage = 'awaiting_approval' AND delivery_id <> $3"
        )))
        .bind(me.sink.as_str())
        .bind(me.run_id.as_str())
        .bind(delivery_id)
        .fetch_all(&mut *tx)
        .await?;
        let reason = format!(
            "superseded by {}, a newer checkpoint of run {} (latest_only)",
            me.checkpoint_name, me.run_id
        );
        let mut superseded = 0;
        for other in waiting {
            let other = other.into_row()?;
            let id = other.delivery_id;
            let older = other.ordering_time().is_some_and(|t| t < mine);
            if !older {
                continue;
            }
            sqlx::query(
                "UPDATE deploys SET stage = 'superseded', error = $2, follow_next_at = NULL,
                 updated_at = $3 WHERE delivery_id = $1 AND stage = 'awaiting_approval'",
            )
            .bind(id)
            .bind(reason.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let r = sqlx::query(
                "UPDATE deliveries SET status = 'superseded', last_error = $2, updated_at = $3
                 WHERE id = $1 AND status = 'awaiting_approval'",
            )
            .bind(id)
            .bind(reason.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
            superseded += DB::rows_affected(&r);
        }
        Ok(superseded)
    }
}

impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    /// Why `id`, which names no pipeline, cannot be decided: a delivery that is not a
    /// deploy (or whose deploy has not started) says its sink and status; anything else is
    /// unknown.
    async fn no_pipeline(conn: &mut DB::Connection, id: &str) -> Result<String> {
        if let Ok(n) = id.parse::<i64>() {
            let delivery: Option<(String, String)> =
                sqlx::query_as("SELECT sink, status FROM deliveries WHERE id = $1")
                    .bind(n)
                    .fetch_optional(&mut *conn)
                    .await?;
            if let Some((sink, status)) = delivery {
                return Ok(format!(
                    "{id}: delivery {n} (sink {sink}) is {status}, not a deploy awaiting approval"
                ));
            }
        }
        Ok(format!(
            "{id}: no deploy pipeline has this delivery id or checkpoint id (see `loopwatch deploys`)"
        ))
    }

    /// The pipelines `id` names: a delivery id, else a checkpoint `id` (one per deploy sink).
    async fn resolve(conn: &mut DB::Connection, id: &str) -> Result<Vec<DeployRow>> {
        let select = |by: &str| format!("SELECT {DEPLOY_COLUMNS} FROM deploys WHERE {by}");
        if let Ok(n) = id.parse::<i64>() {
            let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(select("delivery_id = $1")))
                .bind(n)
                .fetch_all(&mut *conn)
                .await?;
            if !rows.is_empty() {
                return rows.into_iter().map(DeployRecord::into_row).collect();
            }
        }
        let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(select(
            "checkpoint_id = $1 ORDER BY delivery_id",
        )))
        .bind(id)
        .fetch_all(&mut *conn)
        .await?;
        rows.into_iter().map(DeployRecord::into_row).collect()
    }

    /// Decide every pipeline `ids` name that waits for approval, in one transaction: all
    /// of them, or (when any id names nothing waiting) none, with why for each such id.
    pub(crate) async fn decide(
        conn: &mut DB::Connection,
        ids: &[String],
        d: &Decision,
    ) -> Result<std::result::Result<Vec<Decided>, Vec<Undecided>>> {
        let now = d.at.timestamp_millis();
        // Which pipelines each id names is read first, outside the transaction, whose
        // first statement must be a write (above).
        let mut named = Vec::with_capacity(ids.len());
        let mut unknown = std::collections::HashMap::new();
        for id in ids {
            let rows = Self::resolve(conn, id).await?;
            if rows.is_empty() {
                unknown.insert(id.clone(), Self::no_pipeline(conn, id).await?);
            }
            named.push((id.clone(), rows));
        }
        let mut undecided = Vec::new();
        let mut decided_ids = Vec::new();
        // A pipeline named twice (its delivery id and its checkpoint id) is decided once.
        let mut seen = std::collections::HashSet::new();
        let mut tx = conn.begin().await?;
        for (id, rows) in &named {
            if rows.is_empty() {
                // Named twice: said once.
                if let Some(why) = unknown.remove(id) {
                    undecided.push(Undecided {
                        id: id.clone(),
                        why,
                    });
                }
                continue;
            }
            let mut took = Vec::new();
            let mut again = false;
            for row in rows {
                if !seen.insert(row.delivery_id) {
                    again = true;
                    continue;
                }
                let r = sqlx::query(DECIDE)
                    .bind(row.delivery_id)
                    .bind(now)
                    .bind(d.verdict.as_str())
                    .bind(d.by.as_str())
                    .bind(d.reason.clone())
                    .execute(&mut *tx)
                    .await?;
                if DB::rows_affected(&r) == 1 {
                    let why = match &d.reason {
                        Some(reason) => format!("rejected by {}: {reason}", d.by),
                        None => format!("rejected by {}", d.by),
                    };
                    sqlx::query(DECIDE_DELIVERY)
                        .bind(row.delivery_id)
                        .bind(now)
                        .bind(d.verdict.as_str())
                        .bind(why)
                        .execute(&mut *tx)
                        .await?;
                    took.push(row.delivery_id);
                }
            }
            if took.is_empty() && !again {
                // Read again inside the transaction: what a concurrent decision left.
                for row in rows {
                    let now_row = Self::pipeline(&mut tx, row.delivery_id)
                        .await?
                        .ok_or(sqlx::Error::RowNotFound)?;
                    undecided.push(Undecided {
                        id: id.clone(),
                        why: not_waiting(id, &now_row, d.at),
                    });
                }
            }
            decided_ids.push((id.clone(), took));
        }
        if !undecided.is_empty() {
            // Dropped without commit: nothing changes.
            return Ok(Err(undecided));
        }
        let mut out = Vec::new();
        for (id, took) in decided_ids {
            for delivery_id in took {
                let row = Self::pipeline(&mut tx, delivery_id)
                    .await?
                    .ok_or(sqlx::Error::RowNotFound)?;
                out.push(Decided {
                    id: id.clone(),
                    deploy: row,
                });
            }
        }
        tx.commit().await?;
        Ok(Ok(out))
    }

    /// End `sink`'s waits past their deadline at `now` (`expired`, with their deliveries
    /// if those wait): the delivery ids.
    pub(crate) async fn expire_approvals(
        conn: &mut DB::Connection,
        sink: &str,
        now: i64,
    ) -> Result<Vec<i64>> {
        let mut tx = conn.begin().await?;
        let reason = "no decision before approval_deadline";
        let ids: Vec<(i64,)> = sqlx::query_as(
            "UPDATE deploys SET stage = 'expired', follow_next_at = NULL, error = $3,
             updated_at = $2
             WHERE sink = $1 AND stage = 'awaiting_approval' AND approval_deadline <= $2
             RETURNING delivery_id",
        )
        .bind(sink)
        .bind(now)
        .bind(reason)
        .fetch_all(&mut *tx)
        .await?;
        for (id,) in &ids {
            sqlx::query(
                "UPDATE deliveries SET status = 'expired', last_error = $2, updated_at = $3
                 WHERE id = $1 AND status = 'awaiting_approval'",
            )
            .bind(*id)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    /// The soonest approval deadline of each sink with a pipeline waiting (Unix ms).
    pub(crate) async fn approval_deadlines(pool: &Pool<DB>) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT sink, MIN(approval_deadline) FROM deploys
             WHERE stage = 'awaiting_approval' AND approval_deadline IS NOT NULL GROUP BY sink",
        )
        .fetch_all(pool)
        .await?)
    }
}

/// Why pipeline `row` (named by `id`) cannot be decided at `now`: one line naming its
/// stage and, when someone decided it, who and when.
fn not_waiting(id: &str, row: &DeployRow, now: DateTime<Utc>) -> String {
    let what = format!(
        "{id}: the deploy of {} (delivery {}, sink {})",
        row.checkpoint_name, row.delivery_id, row.sink
    );
    if row.stage == DeployStage::AwaitingApproval {
        let at = row.approval_deadline.unwrap_or(now);
        return format!(
            "{what} is past its approval deadline ({}): it expires, and cannot be decided",
            crate::model::rfc3339(at)
        );
    }
    let by = match (&row.decision, &row.decided_by, row.decided_at) {
        (Some(v), Some(by), Some(at)) => {
            format!(", {v} by {by} at {}", crate::model::rfc3339(at))
        }
        _ => String::new(),
    };
    format!(
        "{what} is not awaiting approval: its stage is {}{by}",
        row.stage.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rows::ms_to_time;

    #[test]
    fn a_decided_pipeline_names_its_stage_and_who_decided() {
        let mut row = sample();
        row.stage = DeployStage::Deploying;
        row.decision = Some("approved".into());
        row.decided_by = Some("alice".into());
        row.decided_at = Some(ms_to_time(1_800_000_000_000));
        assert_eq!(
            not_waiting("12", &row, Utc::now()),
            "12: the deploy of step-100 (delivery 12, sink deploy) is not awaiting approval: its stage is deploying, approved by alice at 2027-01-15T08:00:00.000Z"
        );
        row.stage = DeployStage::AwaitingApproval;
        row.approval_deadline = Some(ms_to_time(1_800_000_000_000));
        assert!(not_waiting("12", &row, Utc::now()).contains("past its approval deadline"));
    }

    fn sample() -> DeployRow {
        let t = ms_to_time(0);
        DeployRow {
            delivery_id: 12,
            sink: "deploy".into(),
            target: "qwen".into(),
            run_id: "run-1".into(),
            checkpoint_id: "ck1".into(),
            checkpoint_name: "step-100".into(),
            event_id: "evt_c".into(),
            checkpoint_created_at: None,
            completed_at: t,
            stage: DeployStage::AwaitingApproval,
            model_name: None,
            model_id: None,
            deployment_id: None,
            deployment_status: None,
            environment: None,
            reconciled: false,
            in_doubt_before: None,
            deploy_calls: 0,
            follow_next_at: None,
            follow_deadline: None,
            active_at: None,
            approval_deadline: None,
            decided_by: None,
            decided_at: None,
            decision: None,
            decision_reason: None,
            step_attempts: 0,
            promote_in_doubt: false,
            promoted_at: None,
            deactivated_at: None,
            error: None,
            created_at: t,
            updated_at: t,
        }
    }
}
