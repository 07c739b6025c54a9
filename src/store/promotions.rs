//! What a deploy pipeline does once its deployment is live (docs/events.md, "Promote",
//! "Clean up"): the record of a promote call about to be sent (fenced by the follow
//! claim, so whoever carries on reads the deployment before promoting again), which
//! pipeline of the run is newer and live (`latest_only`), and which older deployments of
//! the sink are candidates for deactivation: only those a pipeline recorded, since
//! loopwatch never touches a deployment it did not create. Written once for both dialects.

use chrono::{DateTime, Utc};
use sqlx::{AssertSqlSafe, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::Result;
use super::deploys::{DEPLOY_COLUMNS, DeployRecord, DeployRow};
use super::shared::{Dialect, Queries};

impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    /// Before a promote call of pipeline `delivery_id` is sent: it may act without its
    /// answer arriving, so the next attempt reads the deployment first. False (nothing
    /// written, the call must not be sent) when another follower holds the pipeline now.
    pub(crate) async fn promote_intent(
        conn: &mut DB::Connection,
        delivery_id: i64,
        token: i64,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE deploys SET promote_in_doubt = 1, updated_at = $3
             WHERE delivery_id = $1 AND follow_token = $2 AND stage = 'active'",
        )
        .bind(delivery_id)
        .bind(token)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        Ok(DB::rows_affected(&r) == 1)
    }

    /// With `latest_only`: the name of a checkpoint of `run_id` newer than `created_at`
    /// whose pipeline at `sink` is live (active, promoted, or active and waiting for
    /// approval to be promoted), other than `delivery_id`.
    pub(crate) async fn newer_live(
        pool: &Pool<DB>,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys
             WHERE sink = $1 AND run_id = $2 AND delivery_id <> $3
               AND (stage IN ('active', 'promoted')
                    OR (stage = 'awaiting_approval' AND deployment_status = 'ACTIVE'))"
        )))
        .bind(sink)
        .bind(run_id)
        .bind(delivery_id)
        .fetch_all(pool)
        .await?;
        let mut newest: Option<(DateTime<Utc>, String)> = None;
        for r in rows {
            let row = r.into_row()?;
            if let Some(at) = row.ordering_time().filter(|at| *at > created_at)
                && newest.as_ref().is_none_or(|(n, _)| at > *n)
            {
                newest = Some((at, row.checkpoint_name));
            }
        }
        Ok(newest.map(|(_, name)| name))
    }

    /// The pipelines of `sink` whose deployments of model `model_id` loopwatch recorded and
    /// has not deactivated, for checkpoints older (by `created_at`) than `created_at`,
    /// other than `delivery_id`'s: what its clean-up may deactivate. Oldest first.
    pub(crate) async fn cleanup_candidates(
        pool: &Pool<DB>,
        sink: &str,
        model_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<DeployRow>> {
        let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys
             WHERE sink = $1 AND model_id = $2 AND delivery_id <> $3
               AND deployment_id IS NOT NULL AND deactivated_at IS NULL
             ORDER BY delivery_id"
        )))
        .bind(sink)
        .bind(model_id)
        .bind(delivery_id)
        .fetch_all(pool)
        .await?;
        let mut out: Vec<(DateTime<Utc>, DeployRow)> = Vec::new();
        for r in rows {
            let row = r.into_row()?;
            // A checkpoint whose age cannot be told is never taken for an older one.
            if let Some(at) = row.ordering_time().filter(|at| *at < created_at) {
                out.push((at, row));
            }
        }
        out.sort_by_key(|(at, row)| (*at, row.delivery_id));
        Ok(out.into_iter().map(|(_, row)| row).collect())
    }

    /// On `tx`, once pipeline `delivery_id` is promoted: the promotion moved its
    /// environment off every other deployment of the sink's model, so those pipelines no
    /// longer hold it, and a promoted one ends `superseded` (replaced), not promoted
    /// beside it. Idempotent: a later step of the same pipeline changes nothing more.
    pub(crate) async fn replaced_in_environment(
        tx: &mut DB::Connection,
        delivery_id: i64,
        now: i64,
    ) -> Result<()> {
        let Some(me) = Self::pipeline(tx, delivery_id).await? else {
            return Ok(());
        };
        let (Some(model_id), Some(environment)) = (me.model_id, me.environment) else {
            return Ok(());
        };
        let (sink, name) = (me.sink, me.checkpoint_name);
        sqlx::query(
            "UPDATE deploys SET environment = NULL, updated_at = $5,
                error = CASE WHEN stage = 'promoted' THEN $6 ELSE error END,
                follow_next_at = CASE WHEN stage = 'promoted' THEN NULL ELSE follow_next_at END,
                stage = CASE WHEN stage = 'promoted' THEN 'superseded' ELSE stage END
             WHERE sink = $1 AND model_id = $2 AND environment = $3 AND delivery_id <> $4",
        )
        .bind(sink.as_str())
        .bind(model_id.as_str())
        .bind(environment.as_str())
        .bind(delivery_id)
        .bind(now)
        .bind(format!("replaced in {environment} by {name}"))
        .execute(&mut *tx)
        .await?;
        Ok(())
    }

    /// Pipeline `delivery_id`'s deployment was deactivated by a newer one's clean-up
    /// (`why`): a pipeline still under way (following, active, waiting, promoted) ends
    /// `superseded`; an ended one keeps its stage. Its deployment is `INACTIVE` in no
    /// environment (the clean-up deactivates only one it read in none). False when it was
    /// marked already (by another clean-up): counted once.
    pub(crate) async fn mark_deactivated(
        conn: &mut DB::Connection,
        delivery_id: i64,
        why: &str,
        now: i64,
    ) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE deploys SET deactivated_at = $2, updated_at = $2, follow_next_at = NULL,
                deployment_status = 'INACTIVE', environment = NULL,
                error = CASE WHEN stage IN ('following', 'deployed', 'active', 'promoted',
                    'awaiting_approval') THEN $3 ELSE error END,
                stage = CASE WHEN stage IN ('following', 'deployed', 'active', 'promoted',
                    'awaiting_approval') THEN 'superseded' ELSE stage END
             WHERE delivery_id = $1 AND deactivated_at IS NULL",
        )
        .bind(delivery_id)
        .bind(now)
        .bind(why)
        .execute(&mut *conn)
        .await?;
        Ok(DB::rows_affected(&r) == 1)
    }
}
