//! The store's roles ([`PollState`], [`Outbox`], [`Pipelines`], [`Inspection`]) written
//! once for both backends, over a [`Backend`]: what a backend really does its own way is
//! how it takes a write (SQLite: its write turn, a durable or a lease-grade connection,
//! closed after an error; PostgreSQL: any connection of its pool), the base of its claim
//! clock, and three operations written differently (`claim_due`, `load_targets`,
//! `release_claims`). The SQL itself is the dialect's ([`Dialect`]) and lives in
//! `shared.rs`, `deploys.rs`, `approvals.rs`, `promotions.rs` and `inspect.rs`.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::deploys::DeployRecord;
use super::inspect::{
    self, AttemptRecord, CheckpointRecord, CountsRecord, Inspect, InspectDialect, NameRecord,
};
use super::rows::{DeliveryRecord, EventRecord, TargetRecord, TrackedRecord, ms_to_time};
use super::shared::{Dialect, Queries};
use super::{
    Claimed, Decided, Decision, DeliveryRow, DeliveryStatus, DeployRow, DetailQuery, FollowClaim,
    FollowOutcome, Inspection, Intent, Outbox, Overview, OverviewQuery, Pipelines, PollCommit,
    PollState, Recorded, Redeliver, Requeued, Result, SinkBacklog, StoredEvent, TargetDetail,
    TargetDump, Undecided, Written,
};
use crate::model::TargetState;

/// How much a write must survive, which decides the connection it takes on SQLite
/// (PostgreSQL has one pool, and a claim says for itself that it does not wait for the
/// disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grade {
    /// Synced to disk before it returns: a poll's commit, a deploy's or a promotion's
    /// intent, a decision, a re-queue.
    Durable,
    /// A write whose loss in a power cut costs nothing but a repeat (claims of deliveries
    /// and of follows, renewals, releases, attempts' outcomes): SQLite's `leases` pool
    /// (`synchronous = NORMAL`).
    Lease,
}

/// One write's connection, and the backend's write turn while it lasts (SQLite's). Ends
/// with [`Turn::finish`].
pub(crate) struct Turn<'a, DB: Database> {
    /// Dropped first (back to its pool, or closed), then the turn is given up.
    pub(crate) conn: PoolConnection<DB>,
    _turn: Option<tokio::sync::MutexGuard<'a, ()>>,
    close_on_error: bool,
}

impl<'a, DB: Database> Turn<'a, DB> {
    /// `conn`, held under `turn` when the backend takes turns; with `close_on_error`, a
    /// write that failed closes its connection ([`Turn::finish`]).
    pub(crate) fn new(
        conn: PoolConnection<DB>,
        turn: Option<tokio::sync::MutexGuard<'a, ()>>,
        close_on_error: bool,
    ) -> Self {
        Turn {
            conn,
            _turn: turn,
            close_on_error,
        }
    }

    /// The write's result, after which the connection goes back to its pool, or is closed
    /// when the write failed and the backend asked for it (SQLite). SQLite rolls a
    /// transaction back by itself on some errors (SQLITE_FULL, SQLITE_IOERR), and sqlx
    /// then still counts it as open: its next BEGIN on that connection would be a
    /// SAVEPOINT, whose rollback leaves a transaction, and the write lock, open for good
    /// (every other writer then fails with "database is locked"). A fresh connection has
    /// no such history.
    pub(crate) fn finish<T>(mut self, r: Result<T>) -> Result<T> {
        if r.is_err() && self.close_on_error {
            self.conn.close_on_drop();
        }
        r
    }
}

/// One [`Outbox::claim_due`], as a backend's claim takes it.
pub(crate) struct ClaimAsk<'a> {
    pub(crate) sink: &'a str,
    /// The caller's wall-clock reading: what is due by then (`now_ms`) is claimed, and its
    /// offset from the present ([`super::clock_skew`]) shifts the claim clock.
    pub(crate) now: DateTime<Utc>,
    pub(crate) now_ms: i64,
    pub(crate) limit: usize,
    /// Only the oldest pending delivery of each run is eligible.
    pub(crate) ordered: bool,
    pub(crate) lease_ms: i64,
    /// The fresh fencing token of every delivery this claim takes.
    pub(crate) token: i64,
}

/// What a backend does its own way; everything else of the store's roles is written once
/// below, for any `Backend`.
pub(crate) trait Backend: Send + Sync + 'static {
    /// The dialect of its SQL.
    type DB: Dialect + InspectDialect;

    /// The pool reads go through.
    fn reads(&self) -> &Pool<Self::DB>;

    /// A connection for one write of `grade`, in this backend's write turn.
    fn write(&self, grade: Grade) -> impl Future<Output = Result<Turn<'_, Self::DB>>> + Send;

    /// The claim clock's reading now (Unix ms), to which a claim adds the caller's offset
    /// ([`super::clock_skew`]): SQLite's monotonic process clock; 0 on PostgreSQL, whose
    /// statements read the database's clock themselves ([`Dialect::claim_clock`]).
    fn clock_base(&self) -> i64;

    /// [`Outbox::claim_due`].
    fn claim_deliveries(
        &self,
        ask: &ClaimAsk<'_>,
    ) -> impl Future<Output = Result<Vec<Claimed>>> + Send;

    /// [`PollState::load_targets`].
    fn load_states(&self, names: &[&str]) -> impl Future<Output = Result<Vec<TargetState>>> + Send;

    /// [`Outbox::release_claims`].
    fn release_every_claim(&self) -> impl Future<Output = Result<u64>> + Send;
}

// Each role's implementation states the same bounds, the ones the sqlx drivers of both
// dialects meet (the `Queries` operations need them; Rust does not carry a trait's
// `where` clauses over to its users, so they cannot be named once).
#[async_trait]
impl<B, DB> PollState for B
where
    B: Backend<DB = DB>,
    DB: Dialect + InspectDialect,
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
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> TrackedRecord: FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    async fn load_target(&self, name: &str) -> Result<TargetState> {
        Queries::load_target(self.reads(), name).await
    }

    async fn load_targets(&self, names: &[&str]) -> Result<Vec<TargetState>> {
        self.load_states(names).await
    }

    async fn checkpoint_raw(&self, target: &str, id: &str) -> Result<Option<String>> {
        Queries::checkpoint_raw(self.reads(), target, id).await
    }

    async fn commit_poll(&self, c: PollCommit<'_>) -> Result<Vec<StoredEvent>> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::commit_poll(&mut w.conn, c).await;
        w.finish(r)
    }
}

#[async_trait]
impl<B, DB> Outbox for B
where
    B: Backend<DB = DB>,
    DB: Dialect + InspectDialect,
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
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> TrackedRecord: FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    async fn claim_due(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        ordered: bool,
        lease: Duration,
    ) -> Result<Vec<Claimed>> {
        let ask = ClaimAsk {
            sink,
            now,
            now_ms: now.timestamp_millis(),
            limit,
            ordered,
            lease_ms: lease.as_millis() as i64,
            token: super::claim_token(),
        };
        self.claim_deliveries(&ask).await
    }

    async fn next_due(&self, sink: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        Queries::next_due(self.reads(), sink, now).await
    }

    async fn record_attempts(&self, outcomes: &[Recorded], now: DateTime<Utc>) -> Result<Written> {
        let mut w = self.write(Grade::Lease).await?;
        let r = Queries::<DB>::record_attempts(&mut w.conn, outcomes, now.timestamp_millis()).await;
        w.finish(r)
    }

    async fn renew_claims(&self, held: &[(i64, i64)], lease: Duration) -> Result<Vec<i64>> {
        let mut w = self.write(Grade::Lease).await?;
        let clock = self.clock_base();
        let r =
            Queries::<DB>::renew_claims(&mut w.conn, held, clock, lease.as_millis() as i64).await;
        w.finish(r)
    }

    async fn release(&self, claims: &[(i64, i64)]) -> Result<()> {
        let mut w = self.write(Grade::Lease).await?;
        let now = Utc::now().timestamp_millis();
        let r = Queries::<DB>::release(&mut w.conn, claims, now).await;
        w.finish(r)
    }

    async fn release_claims(&self) -> Result<u64> {
        self.release_every_claim().await
    }

    async fn newer_deploy(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        Queries::newer_deploy(self.reads(), sink, run_id, delivery_id, created_at).await
    }

    async fn redeliver(&self, which: &Redeliver, now: DateTime<Utc>) -> Result<Requeued> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::redeliver(&mut w.conn, which, now.timestamp_millis()).await;
        w.finish(r)
    }

    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<(u64, u64)> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::prune(&mut w.conn, cutoff.timestamp_millis()).await;
        w.finish(r)
    }
}

#[async_trait]
impl<B, DB> Pipelines for B
where
    B: Backend<DB = DB>,
    DB: Dialect + InspectDialect,
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
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> TrackedRecord: FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
{
    async fn deploy_begin(
        &self,
        c: &Claimed,
        sink: &str,
        created_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<DeployRow>> {
        let mut w = self.write(Grade::Durable).await?;
        let r =
            Queries::<DB>::deploy_begin(&mut w.conn, c, sink, created_at, now.timestamp_millis())
                .await;
        w.finish(r)
    }

    async fn deploy_intent(
        &self,
        c: &Claimed,
        model_name: &str,
        model_id: Option<&str>,
        before: &[String],
        now: DateTime<Utc>,
    ) -> Result<Intent> {
        // Synced to disk before the call is sent: a power cut after it must not forget
        // that a deploy may have happened.
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::deploy_intent(
            &mut w.conn,
            c.delivery_id,
            c.token,
            model_name,
            model_id,
            before,
            now.timestamp_millis(),
        )
        .await;
        w.finish(r)
    }

    async fn deploy_clear_intent(&self, c: &Claimed, now: DateTime<Utc>) -> Result<bool> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::deploy_clear_intent(
            &mut w.conn,
            c.delivery_id,
            c.token,
            now.timestamp_millis(),
        )
        .await;
        w.finish(r)
    }

    async fn recorded_deployments(&self, model_id: &str) -> Result<Vec<(i64, String)>> {
        Queries::recorded_deployments(self.reads(), model_id).await
    }

    async fn claim_follows(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<FollowClaim>> {
        let mut w = self.write(Grade::Lease).await?;
        let r = Queries::<DB>::claim_follows(
            &mut w.conn,
            sink,
            now.timestamp_millis(),
            self.clock_base() + super::clock_skew(now),
            lease.as_millis() as i64,
            limit as i64,
            super::claim_token(),
        )
        .await;
        w.finish(r)
    }

    async fn record_follow(&self, outcome: &FollowOutcome, now: DateTime<Utc>) -> Result<bool> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::record_follow(&mut w.conn, outcome, now.timestamp_millis()).await;
        w.finish(r)
    }

    async fn decide(
        &self,
        ids: &[String],
        decision: &Decision,
    ) -> Result<std::result::Result<Vec<Decided>, Vec<Undecided>>> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::decide(&mut w.conn, ids, decision).await;
        w.finish(r)
    }

    async fn expire_approvals(&self, sink: &str, now: DateTime<Utc>) -> Result<Vec<i64>> {
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::expire_approvals(&mut w.conn, sink, now.timestamp_millis()).await;
        w.finish(r)
    }

    async fn approval_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        let rows = Queries::approval_deadlines(self.reads()).await?;
        Ok(rows
            .into_iter()
            .map(|(s, ms)| (s, ms_to_time(ms)))
            .collect())
    }

    async fn promote_intent(&self, claim: &FollowClaim, now: DateTime<Utc>) -> Result<bool> {
        // Synced to disk before the call is sent, as a deploy's intent.
        let mut w = self.write(Grade::Durable).await?;
        let r = Queries::<DB>::promote_intent(
            &mut w.conn,
            claim.deploy.delivery_id,
            claim.token,
            now.timestamp_millis(),
        )
        .await;
        w.finish(r)
    }

    async fn newer_live(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        Queries::newer_live(self.reads(), sink, run_id, delivery_id, created_at).await
    }

    async fn cleanup_candidates(
        &self,
        sink: &str,
        model_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<DeployRow>> {
        Queries::cleanup_candidates(self.reads(), sink, model_id, delivery_id, created_at).await
    }

    async fn mark_deactivated(
        &self,
        delivery_id: i64,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let mut w = self.write(Grade::Durable).await?;
        let r =
            Queries::<DB>::mark_deactivated(&mut w.conn, delivery_id, why, now.timestamp_millis())
                .await;
        w.finish(r)
    }
}

#[async_trait]
impl<B, DB> Inspection for B
where
    B: Backend<DB = DB>,
    DB: Dialect + InspectDialect,
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
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i64, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, Option<String>, Option<String>): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, String): FromRow<'r, DB::Row>,
    for<'r> (String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, i64): FromRow<'r, DB::Row>,
    for<'r> TrackedRecord: FromRow<'r, DB::Row>,
    for<'r> TargetRecord: FromRow<'r, DB::Row>,
    for<'r> EventRecord: FromRow<'r, DB::Row>,
    for<'r> DeliveryRecord: FromRow<'r, DB::Row>,
    for<'r> DeployRecord: FromRow<'r, DB::Row>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
    for<'r> CountsRecord: FromRow<'r, DB::Row>,
    for<'r> CheckpointRecord: FromRow<'r, DB::Row>,
    for<'r> AttemptRecord: FromRow<'r, DB::Row>,
    for<'r> NameRecord: FromRow<'r, DB::Row>,
    for<'r> inspect::EventRecord: FromRow<'r, DB::Row>,
    for<'r> inspect::TargetRecord: FromRow<'r, DB::Row>,
{
    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        Queries::list_deliveries(self.reads(), status, None, limit).await
    }

    async fn list_sink_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        Queries::list_deliveries(self.reads(), status, sink, limit).await
    }

    async fn backlog(&self) -> Result<Vec<SinkBacklog>> {
        Queries::backlog(self.reads()).await
    }

    async fn dump(&self, target: Option<&str>) -> Result<Vec<TargetDump>> {
        Queries::dump(self.reads(), target).await
    }

    async fn event_counts(&self) -> Result<Vec<(String, i64)>> {
        Queries::event_counts(self.reads()).await
    }

    async fn list_deploys(&self, sink: Option<&str>, limit: i64) -> Result<Vec<DeployRow>> {
        Queries::list_deploys(self.reads(), sink, limit).await
    }

    async fn deploy_stages(&self) -> Result<Vec<(String, String, i64)>> {
        Queries::deploy_stages(self.reads()).await
    }

    async fn overview(&self, q: &OverviewQuery) -> Result<Overview> {
        Inspect::<DB>::overview(self.reads(), q).await
    }

    async fn target_detail(&self, q: &DetailQuery) -> Result<TargetDetail> {
        Inspect::<DB>::target_detail(self.reads(), q).await
    }
}
