//! The deploy pipelines (docs/events.md, "Deploys"): one `deploys` row per completed
//! sampler checkpoint and `baseten_deploy` sink, keyed by its delivery. The row is what
//! makes a deploy happen once: the deployments its model had before a call are written
//! *before* the call is sent (fenced by the delivery's claim token), so whoever attempts
//! it next, after a timeout, a crash or on another replica, reconciles against them
//! instead of deploying blindly. Its stage moves with the delivery's outcome (in the same
//! transaction) and then with the follow of the deployment (claimed like a delivery,
//! fenced by its own token).
//!
//! Written once for both dialects, as `shared.rs`; the backends hold their write turn
//! (SQLite) and pick the clock of claims (PostgreSQL: the database's).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{AssertSqlSafe, Connection, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use crate::config::Invocation;

use super::rows::{DeliveryRecord, EventRecord, TargetRecord, TrackedRecord, ms_to_time};
use super::shared::{Dialect, Queries};
use super::{FollowUp, Result, StoredEvent};

/// Where a deploy pipeline is (docs/events.md). `awaiting_approval` -> `deploying` ->
/// `following` -> `active` (-> `promoted`); `deployed` without follow; the rest terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStage {
    AwaitingApproval,
    Deploying,
    Following,
    Deployed,
    Active,
    Promoted,
    Failed,
    Rejected,
    Expired,
    Superseded,
    Unknown,
}

impl DeployStage {
    pub const ALL: [DeployStage; 11] = [
        DeployStage::AwaitingApproval,
        DeployStage::Deploying,
        DeployStage::Following,
        DeployStage::Deployed,
        DeployStage::Active,
        DeployStage::Promoted,
        DeployStage::Failed,
        DeployStage::Rejected,
        DeployStage::Expired,
        DeployStage::Superseded,
        DeployStage::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeployStage::AwaitingApproval => "awaiting_approval",
            DeployStage::Deploying => "deploying",
            DeployStage::Following => "following",
            DeployStage::Deployed => "deployed",
            DeployStage::Active => "active",
            DeployStage::Promoted => "promoted",
            DeployStage::Failed => "failed",
            DeployStage::Rejected => "rejected",
            DeployStage::Expired => "expired",
            DeployStage::Superseded => "superseded",
            DeployStage::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        DeployStage::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// One deploy pipeline, as `loopwatch deploys` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct DeployRow {
    pub delivery_id: i64,
    pub sink: String,
    pub target: String,
    pub run_id: String,
    /// The checkpoint's `id`.
    pub checkpoint_id: String,
    /// Its name (`checkpoint_id` upstream, e.g. `step-100`).
    pub checkpoint_name: String,
    /// The `checkpoint.completed` event the pipeline started from.
    pub event_id: String,
    pub checkpoint_created_at: Option<String>,
    pub completed_at: DateTime<Utc>,
    pub stage: DeployStage,
    pub model_name: Option<String>,
    pub model_id: Option<String>,
    pub deployment_id: Option<String>,
    /// The deployment's last status read (`BUILDING`, `ACTIVE`, ..., `NOT_FOUND`, `TIMEOUT`).
    pub deployment_status: Option<String>,
    pub environment: Option<String>,
    /// The deployment was found by reconciliation after an unknown outcome.
    pub reconciled: bool,
    /// A deploy call was sent and its outcome is not known yet: the model's deployments
    /// before it (reconciliation compares against them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_doubt_before: Option<Vec<String>>,
    /// Deploy calls sent (a reconciled retry that found none sends another).
    pub deploy_calls: i64,
    pub follow_next_at: Option<DateTime<Utc>>,
    pub follow_deadline: Option<DateTime<Utc>>,
    pub active_at: Option<DateTime<Utc>>,
    /// Waiting for approval: when the wait ends `expired` unless decided. The line that
    /// approves it is [`approve_command`]'s, made where the row is shown (it names that
    /// process's config file).
    pub approval_deadline: Option<DateTime<Utc>>,
    /// Who decided (`approved` or `rejected`), when and why.
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision: Option<String>,
    pub decision_reason: Option<String>,
    /// Attempts of the step after the deploy (promote, clean-up) that did not settle it.
    pub step_attempts: i64,
    /// A promote call was sent and its outcome is not known yet: the deployment is read
    /// before another is sent.
    pub promote_in_doubt: bool,
    pub promoted_at: Option<DateTime<Utc>>,
    /// The deployment was deactivated by the clean-up of a newer one (`deactivate_superseded`).
    pub deactivated_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeployRow {
    /// The time this pipeline's checkpoint is ordered by (`latest_only`, clean-up): its
    /// `created_at`, or its completion when `created_at` lies beyond the horizon
    /// ([`crate::model::ordering_time`]). `None` when `created_at` cannot be read.
    pub fn ordering_time(&self) -> Option<DateTime<Utc>> {
        let created = crate::model::parse_created_at(self.checkpoint_created_at.as_deref()?)?;
        Some(crate::model::ordering_time(created, self.completed_at))
    }
}

/// The exact command line that approves the deploy pipeline of delivery `delivery_id`
/// (`checkpoint.awaiting_approval`'s `data.approve_command`), naming the config file as
/// `how` does: [`BY_WHOEVER_RUNS_IT`] is the shell's user, so pasted as is it records who
/// ran it.
pub fn approve_command(how: &Invocation, delivery_id: i64) -> String {
    how.line(&format!(
        "deliveries approve {delivery_id} --by {BY_WHOEVER_RUNS_IT}"
    ))
}

/// `--by` of the printed lines: `$USER`, or where a shell has none (a container's `sh`,
/// `kubectl exec`, cron) the name `id` gives; `"$USER"` alone was empty there, and the
/// line exited 2.
pub const BY_WHOEVER_RUNS_IT: &str = "\"${USER:-$(id -un)}\"";

/// The command line that rejects it (`data.reject_command`).
pub fn reject_command(how: &Invocation, delivery_id: i64) -> String {
    how.line(&format!(
        "deliveries reject {delivery_id} --by {BY_WHOEVER_RUNS_IT}"
    ))
}

/// `row` as `deploys -o json` and `deliveries approve -o json` show it: the pipeline, and
/// while it waits for approval the line that approves it.
#[derive(Clone, Debug, Serialize)]
pub struct DeployView<'a> {
    #[serde(flatten)]
    pub row: &'a DeployRow,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approve_command: Option<String>,
}

impl<'a> DeployView<'a> {
    pub fn of(row: &'a DeployRow, how: &Invocation) -> Self {
        DeployView {
            row,
            approve_command: (row.stage == DeployStage::AwaitingApproval)
                .then(|| approve_command(how, row.delivery_id)),
        }
    }
}

/// What [`super::Pipelines::deploy_intent`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Recorded: the call may be sent.
    Recorded,
    /// The claim is no longer held: the call must not be sent.
    Stale,
    /// Another pipeline's call to the same model is in doubt (not reconciled yet): two
    /// calls in doubt at once could not be told apart, so this one waits. That
    /// delivery was made due now, so it reconciles soon.
    Blocked {
        delivery_id: i64,
        checkpoint: String,
    },
}

/// What an attempt's outcome does to its deploy pipeline, written in the same
/// transaction as the delivery's outcome.
#[derive(Clone, Debug, Default)]
pub struct DeployUpdate {
    pub stage: Option<DeployStage>,
    pub model_name: Option<String>,
    pub model_id: Option<String>,
    pub deployment_id: Option<String>,
    pub deployment_status: Option<String>,
    pub reconciled: bool,
    /// The outcome of the call is known (delivered, or final): no call is in doubt.
    pub settled: bool,
    /// Follow from `.0` until `.1`.
    pub follow: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// With stage `awaiting_approval`: when the wait expires. Entering the wait forgets
    /// an earlier decision (a rejected deploy re-queued asks again).
    pub approval_deadline: Option<DateTime<Utc>>,
    /// With stage `awaiting_approval` and `latest_only`: older pipelines of the same run
    /// and sink still waiting are superseded in the same transaction.
    pub supersede_waiting: bool,
    pub error: Option<String>,
}

/// A deployment handed to a follower: its pipeline, the completed event it came from,
/// and the token its outcome must carry.
#[derive(Clone, Debug)]
pub struct FollowClaim {
    pub deploy: DeployRow,
    pub completed: StoredEvent,
    pub token: i64,
}

/// What one step of a pipeline after its deploy (a read of a followed deployment, a
/// promotion, a clean-up) changed. Recorded only while the claim's token and the stage it
/// was claimed in (`claimed`) still hold.
#[derive(Clone, Debug)]
pub struct FollowOutcome {
    pub delivery_id: i64,
    pub token: i64,
    /// The stage the pipeline was claimed in.
    pub claimed: DeployStage,
    pub stage: DeployStage,
    pub deployment_status: Option<String>,
    /// More to do (read again, promote, clean up): at this time; `None`: nothing more.
    pub next_at: Option<DateTime<Utc>>,
    pub active_at: Option<DateTime<Utc>>,
    pub environment: Option<String>,
    /// Entering `awaiting_approval` (before a promotion): when the wait expires.
    pub approval_deadline: Option<DateTime<Utc>>,
    /// Older pipelines of the run still waiting for approval are superseded (`latest_only`).
    pub supersede_waiting: bool,
    /// The step's attempts so far (0 when it settled).
    pub step_attempts: i64,
    /// A promotion's outcome is known (promoted, refused, or found by a read).
    pub promote_settled: bool,
    pub promoted_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The lifecycle event this brings about, with its deliveries.
    pub event: Option<FollowUp>,
}

impl FollowOutcome {
    /// Nothing changed yet: the claim's pipeline as it stands, nothing more to do.
    pub fn of(claim: &FollowClaim) -> Self {
        let row = &claim.deploy;
        FollowOutcome {
            delivery_id: row.delivery_id,
            token: claim.token,
            claimed: row.stage,
            stage: row.stage,
            deployment_status: None,
            next_at: None,
            active_at: None,
            environment: None,
            approval_deadline: None,
            supersede_waiting: false,
            step_attempts: row.step_attempts,
            promote_settled: false,
            promoted_at: None,
            error: None,
            event: None,
        }
    }
}

/// The `deploys` columns of [`DeployRecord`].
pub(crate) const DEPLOY_COLUMNS: &str = "delivery_id, sink, target, run_id, checkpoint_id,
    checkpoint_name, event_id, checkpoint_created_at, completed_at, stage, model_name,
    model_id, deployment_id, deployment_status, environment, reconciled, before_ids,
    deploy_calls, follow_next_at, follow_deadline, active_at, approval_deadline, decided_by,
    decided_at, decision, decision_reason, step_attempts, promote_in_doubt, promoted_at,
    deactivated_at, error, created_at, updated_at";

#[derive(sqlx::FromRow)]
pub(crate) struct DeployRecord {
    delivery_id: i64,
    sink: String,
    target: String,
    run_id: String,
    checkpoint_id: String,
    checkpoint_name: String,
    event_id: String,
    checkpoint_created_at: Option<String>,
    completed_at: i64,
    stage: String,
    model_name: Option<String>,
    model_id: Option<String>,
    deployment_id: Option<String>,
    deployment_status: Option<String>,
    environment: Option<String>,
    reconciled: i64,
    before_ids: Option<String>,
    deploy_calls: i64,
    follow_next_at: Option<i64>,
    follow_deadline: Option<i64>,
    active_at: Option<i64>,
    approval_deadline: Option<i64>,
    decided_by: Option<String>,
    decided_at: Option<i64>,
    decision: Option<String>,
    decision_reason: Option<String>,
    step_attempts: i64,
    promote_in_doubt: i64,
    promoted_at: Option<i64>,
    deactivated_at: Option<i64>,
    error: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl DeployRecord {
    pub(crate) fn into_row(self) -> Result<DeployRow> {
        let stage = DeployStage::parse(&self.stage)
            .ok_or_else(|| super::StoreError::Corrupt(format!("deploy stage {:?}", self.stage)))?;
        Ok(DeployRow {
            delivery_id: self.delivery_id,
            sink: self.sink,
            target: self.target,
            run_id: self.run_id,
            checkpoint_id: self.checkpoint_id,
            checkpoint_name: self.checkpoint_name,
            event_id: self.event_id,
            checkpoint_created_at: self.checkpoint_created_at,
            completed_at: ms_to_time(self.completed_at),
            stage,
            model_name: self.model_name,
            model_id: self.model_id,
            deployment_id: self.deployment_id,
            deployment_status: self.deployment_status,
            environment: self.environment,
            reconciled: self.reconciled != 0,
            in_doubt_before: self
                .before_ids
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            deploy_calls: self.deploy_calls,
            follow_next_at: self.follow_next_at.map(ms_to_time),
            follow_deadline: self.follow_deadline.map(ms_to_time),
            active_at: self.active_at.map(ms_to_time),
            approval_deadline: self.approval_deadline.map(ms_to_time),
            decided_by: self.decided_by,
            decided_at: self.decided_at.map(ms_to_time),
            decision: self.decision,
            decision_reason: self.decision_reason,
            step_attempts: self.step_attempts,
            promote_in_doubt: self.promote_in_doubt != 0,
            promoted_at: self.promoted_at.map(ms_to_time),
            deactivated_at: self.deactivated_at.map(ms_to_time),
            error: self.error,
            created_at: ms_to_time(self.created_at),
            updated_at: ms_to_time(self.updated_at),
        })
    }
}

/// The delivery `$1` is still held by the claim whose token is `$2` (and pending): the
/// fence of every write an attempt makes before its outcome. `{lock}` is the dialect's
/// row lock, so a concurrent claim waits for the write.
fn held(lock: &str) -> String {
    format!(
        "SELECT id FROM deliveries WHERE id = $1 AND claim_token = $2 AND status = 'pending'{lock}"
    )
}

/// The pipeline of a deploy delivery: `$1` delivery id, then sink, target, run id,
/// checkpoint id and name, completed event id, the checkpoint's `created_at`, completed at,
/// now. Nothing if it exists.
const INSERT_DEPLOY: &str = "INSERT INTO deploys (delivery_id, sink, target, run_id,
    checkpoint_id, checkpoint_name, event_id, checkpoint_created_at, completed_at, stage,
    created_at, updated_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'deploying', $10, $10)
    ON CONFLICT (delivery_id) DO NOTHING";

/// A deploy call about to be sent: `$1` delivery, `$2` the model's deployment ids before
/// it (JSON), `$3` model name, `$4` model id (if the model exists), `$5` now.
const INTENT: &str = "UPDATE deploys SET before_ids = $2, model_name = $3, model_id = $4,
    deploy_calls = deploy_calls + 1, stage = 'deploying', updated_at = $5
    WHERE delivery_id = $1";

/// A reconciliation that found no new deployment: no call is in doubt any more.
const CLEAR_INTENT: &str =
    "UPDATE deploys SET before_ids = NULL, updated_at = $2 WHERE delivery_id = $1";

/// Every deployment id recorded for model `$1`, with its delivery.
const RECORDED: &str = "SELECT delivery_id, deployment_id FROM deploys WHERE model_id = $1 AND deployment_id IS NOT NULL";

impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    /// Pipeline `delivery_id` as it stands on `conn` (inside a transaction: what it wrote
    /// so far); None when there is none.
    pub(crate) async fn pipeline(
        conn: &mut DB::Connection,
        delivery_id: i64,
    ) -> Result<Option<DeployRow>> {
        let row: Option<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys WHERE delivery_id = $1"
        )))
        .bind(delivery_id)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(DeployRecord::into_row).transpose()
    }
}

impl<DB: Dialect> Queries<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
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
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    /// The pipeline of the claimed deploy delivery `c`, created at its first attempt;
    /// `None` when the claim is no longer held (the attempt must stop).
    pub(crate) async fn deploy_begin(
        conn: &mut DB::Connection,
        c: &super::Claimed,
        sink: &str,
        created_at: Option<&str>,
        now: i64,
    ) -> Result<Option<DeployRow>> {
        let mut tx = conn.begin().await?;
        let held: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(held(DB::LOCK_ROW)))
            .bind(c.delivery_id)
            .bind(c.token)
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_none() {
            return Ok(None);
        }
        let e = &c.event;
        sqlx::query(INSERT_DEPLOY)
            .bind(c.delivery_id)
            .bind(sink)
            .bind(e.target.as_str())
            .bind(e.run_id.as_str())
            .bind(e.checkpoint_id.as_str())
            .bind(e.checkpoint_name.as_str())
            .bind(e.id.as_str())
            .bind(created_at)
            .bind(e.detected_at.timestamp_millis())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let row = Self::pipeline(&mut tx, c.delivery_id).await?;
        tx.commit().await?;
        Ok(row)
    }

    /// Record, before a deploy call is sent, what the model had before it. Nothing is
    /// written when the claim is no longer held, or when another pipeline's call to the
    /// same model is in doubt (at most one call in doubt per model: reconciliation can
    /// tell whose a new deployment is). `before` empty and `model_id` None: the model
    /// does not exist yet.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deploy_intent(
        conn: &mut DB::Connection,
        delivery_id: i64,
        token: i64,
        model_name: &str,
        model_id: Option<&str>,
        before: &[String],
        now: i64,
    ) -> Result<Intent> {
        let mut tx = conn.begin().await?;
        let held: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(held(DB::LOCK_ROW)))
            .bind(delivery_id)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_none() {
            return Ok(Intent::Stale);
        }
        // One intent per model at a time, across replicas (SQLite has one writer).
        if let Some(lock) = DB::MODEL_LOCK {
            sqlx::query(lock).bind(model_name).execute(&mut *tx).await?;
        }
        let other: Option<(i64, String)> = sqlx::query_as(
            "SELECT delivery_id, checkpoint_name FROM deploys
             WHERE model_name = $1 AND before_ids IS NOT NULL AND stage = 'deploying'
               AND delivery_id <> $2 LIMIT 1",
        )
        .bind(model_name)
        .bind(delivery_id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((other, checkpoint)) = other {
            sqlx::query(
                "UPDATE deliveries SET next_attempt_at = $2 WHERE id = $1 AND status = 'pending'
                   AND next_attempt_at > $2",
            )
            .bind(other)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok(Intent::Blocked {
                delivery_id: other,
                checkpoint,
            });
        }
        sqlx::query(INTENT)
            .bind(delivery_id)
            .bind(serde_json::to_string(before).expect("strings serialize"))
            .bind(model_name)
            .bind(model_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Intent::Recorded)
    }

    /// Reconciliation found no new deployment: the call in doubt did not deploy.
    pub(crate) async fn deploy_clear_intent(
        conn: &mut DB::Connection,
        delivery_id: i64,
        token: i64,
        now: i64,
    ) -> Result<bool> {
        let mut tx = conn.begin().await?;
        let held: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(held(DB::LOCK_ROW)))
            .bind(delivery_id)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_none() {
            return Ok(false);
        }
        sqlx::query(CLEAR_INTENT)
            .bind(delivery_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The deployment ids loopwatch recorded for `model_id`, with their deliveries.
    pub(crate) async fn recorded_deployments(
        pool: &Pool<DB>,
        model_id: &str,
    ) -> Result<Vec<(i64, String)>> {
        Ok(sqlx::query_as(RECORDED)
            .bind(model_id)
            .fetch_all(pool)
            .await?)
    }

    /// On `tx`, with an attempt's outcome: move the pipeline of `delivery_id`; how many
    /// deliveries waiting for approval it superseded ([`DeployUpdate::supersede_waiting`]).
    pub(crate) async fn apply_deploy_update(
        tx: &mut DB::Connection,
        delivery_id: i64,
        u: &DeployUpdate,
        now: i64,
    ) -> Result<u64> {
        let (follow_next, deadline) = match u.follow {
            Some((next, deadline)) => (
                Some(next.timestamp_millis()),
                Some(deadline.timestamp_millis()),
            ),
            None => (None, None),
        };
        sqlx::query(
            "UPDATE deploys SET stage = COALESCE($2, stage),
                model_name = COALESCE($3, model_name), model_id = COALESCE($4, model_id),
                deployment_id = COALESCE($5, deployment_id),
                deployment_status = COALESCE($6, deployment_status),
                reconciled = CASE WHEN $7 = 1 THEN 1 ELSE reconciled END,
                before_ids = CASE WHEN $8 = 1 THEN NULL ELSE before_ids END,
                follow_next_at = COALESCE($9, follow_next_at),
                follow_deadline = COALESCE($10, follow_deadline),
                error = $11, updated_at = $12,
                approval_deadline = COALESCE($13, approval_deadline),
                decision = CASE WHEN $2 = 'awaiting_approval' THEN NULL ELSE decision END,
                decided_by = CASE WHEN $2 = 'awaiting_approval' THEN NULL ELSE decided_by END,
                decided_at = CASE WHEN $2 = 'awaiting_approval' THEN NULL ELSE decided_at END,
                decision_reason = CASE WHEN $2 = 'awaiting_approval' THEN NULL
                    ELSE decision_reason END
             WHERE delivery_id = $1",
        )
        .bind(delivery_id)
        .bind(u.stage.map(|s| s.as_str().to_string()))
        .bind(u.model_name.clone())
        .bind(u.model_id.clone())
        .bind(u.deployment_id.clone())
        .bind(u.deployment_status.clone())
        .bind(i64::from(u.reconciled))
        .bind(i64::from(u.settled))
        .bind(follow_next)
        .bind(deadline)
        .bind(u.error.clone())
        .bind(now)
        .bind(u.approval_deadline.map(|t| t.timestamp_millis()))
        .execute(&mut *tx)
        .await?;
        if u.supersede_waiting {
            return Self::supersede_waiting(tx, delivery_id, now).await;
        }
        Ok(0)
    }

    /// Claim up to `limit` followed deployments of `sink` due at `now` (wall clock, as
    /// `follow_next_at` was set) until `claim_now + lease` (the claim clock of the
    /// dialect, `DB::CLAIM_NOW` bound to `claim_now`).
    pub(crate) async fn claim_follows(
        conn: &mut DB::Connection,
        sink: &str,
        now: i64,
        claim_now: i64,
        lease_ms: i64,
        limit: i64,
        token: i64,
    ) -> Result<Vec<FollowClaim>> {
        let mut tx = conn.begin().await?;
        let clock = DB::claim_clock("$5");
        let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE deploys SET follow_claimed_until = {clock} + $3, follow_token = $4
             WHERE delivery_id IN (
                SELECT delivery_id FROM deploys
                WHERE sink = $1 AND stage IN ('following', 'active', 'promoted')
                  AND follow_next_at <= $2
                  AND (follow_claimed_until IS NULL OR follow_claimed_until <= {clock})
                ORDER BY follow_next_at LIMIT $6{skip})
             RETURNING {DEPLOY_COLUMNS}",
            skip = DB::SKIP_LOCKED,
        )))
        .bind(sink)
        .bind(now)
        .bind(lease_ms)
        .bind(token)
        .bind(claim_now)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let deploy = r.into_row()?;
            let event: Option<EventRecord> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT {} FROM events e WHERE e.id = $1",
                super::sql::EVENT_COLUMNS
            )))
            .bind(deploy.event_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            match event {
                Some(e) => out.push(FollowClaim {
                    deploy,
                    completed: e.into(),
                    token,
                }),
                // The completed event was pruned (after `store.retention`): nothing to
                // announce from; the follow ends as it stands (a deployment still being
                // followed as `deployed`), nothing more is done.
                None => {
                    sqlx::query(
                        "UPDATE deploys SET follow_claimed_until = NULL, follow_next_at = NULL,
                         stage = CASE WHEN stage = 'following' THEN 'deployed' ELSE stage END,
                         error = 'the completed event was pruned before the pipeline settled'
                         WHERE delivery_id = $1",
                    )
                    .bind(deploy.delivery_id)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Record a follow's outcome, with the event it brings about, unless another
    /// follower took the deployment since (its token changed): false then.
    pub(crate) async fn record_follow(
        conn: &mut DB::Connection,
        o: &FollowOutcome,
        now: i64,
    ) -> Result<bool> {
        let mut tx = conn.begin().await?;
        let r = sqlx::query(
            "UPDATE deploys SET stage = $3, deployment_status = COALESCE($4, deployment_status),
                follow_next_at = $5, active_at = COALESCE($6, active_at),
                error = $7, follow_claimed_until = NULL, updated_at = $8,
                environment = COALESCE($10, environment),
                approval_deadline = COALESCE($11, approval_deadline),
                step_attempts = $12,
                promote_in_doubt = CASE WHEN $13 = 1 THEN 0 ELSE promote_in_doubt END,
                promoted_at = COALESCE($14, promoted_at)
             WHERE delivery_id = $1 AND follow_token = $2 AND stage = $9",
        )
        .bind(o.delivery_id)
        .bind(o.token)
        .bind(o.stage.as_str())
        .bind(o.deployment_status.clone())
        .bind(o.next_at.map(|t| t.timestamp_millis()))
        .bind(o.active_at.map(|t| t.timestamp_millis()))
        .bind(o.error.clone())
        .bind(now)
        .bind(o.claimed.as_str())
        .bind(o.environment.clone())
        .bind(o.approval_deadline.map(|t| t.timestamp_millis()))
        .bind(o.step_attempts)
        .bind(i64::from(o.promote_settled))
        .bind(o.promoted_at.map(|t| t.timestamp_millis()))
        .execute(&mut *tx)
        .await?;
        if DB::rows_affected(&r) == 0 {
            return Ok(false);
        }
        if o.supersede_waiting {
            // Before a promotion: the deliveries did deploy and stay as they are.
            Self::supersede_waiting(&mut tx, o.delivery_id, now).await?;
        }
        if o.stage == DeployStage::Promoted {
            Self::replaced_in_environment(&mut tx, o.delivery_id, now).await?;
        }
        if let Some(f) = &o.event {
            Self::insert_follow_up(&mut tx, f, now).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The pipelines (of `sink`, when given), newest first, at most `limit`.
    pub(crate) async fn list_deploys(
        pool: &Pool<DB>,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeployRow>> {
        let rows: Vec<DeployRecord> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys
             WHERE (CAST($1 AS TEXT) IS NULL OR sink = $1)
             ORDER BY delivery_id DESC LIMIT $2"
        )))
        .bind(sink)
        .bind(limit)
        .fetch_all(pool)
        .await?;
        rows.into_iter().map(DeployRecord::into_row).collect()
    }

    /// How many pipelines each sink has in each stage.
    pub(crate) async fn deploy_stages(pool: &Pool<DB>) -> Result<Vec<(String, String, i64)>> {
        Ok(
            sqlx::query_as("SELECT sink, stage, COUNT(*) FROM deploys GROUP BY sink, stage")
                .fetch_all(pool)
                .await?,
        )
    }
}
