//! The store's reachability, watched from every loop that uses it: each failed operation
//! is counted by `op` (`loopwatch_store_errors_total`); an unreachable database (refused,
//! reset, restarting, failing over) makes `/readyz` answer 503 with the reason until an
//! operation started after the outage succeeds, and is logged once when it goes and once
//! when it comes back, whichever loop meets it first. The loops themselves only retry.
//! [`open_store`] waits the same way for a database out of reach at start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::config::StoreConfig;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::TargetState;
use crate::store::{
    self, Access, Claimed, Coordinator, Decided, Decision, DeliveryRow, DeliveryStatus, DeployRow,
    DetailQuery, FollowClaim, FollowOutcome, Inspection, Intent, Outbox, Overview, OverviewQuery,
    Pipelines, PollCommit, PollState, Recorded, Redeliver, Requeued, Result, Role, SinkBacklog,
    Store, StoreError, StoredEvent, TargetDetail, TargetDump, Undecided, Written,
};

/// Counts store errors and keeps readiness and the log in step with the store's reach.
#[derive(Clone)]
pub struct StoreWatch {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl StoreWatch {
    pub fn new(metrics: Arc<Metrics>, health: Arc<Health>) -> Self {
        StoreWatch { metrics, health }
    }

    /// An operation `op` (one of [`crate::metrics::STORE_OPS`]) that started at `started`
    /// failed with `e`.
    pub fn failed(&self, op: &str, started: Instant, e: &StoreError) {
        if matches!(e, StoreError::Fenced { .. }) {
            // The database answered: a lost lease, counted as a fencing rejection.
            return;
        }
        self.metrics.store_errors.with_label_values(&[op]).inc();
        if e.is_unavailable() && self.health.store_unavailable(e.to_string(), started) {
            warn!(op, error = %e,
                "store unavailable; /readyz answers 503 and every loop retries until it is back");
        }
    }

    /// An operation that started at `started` reached the store.
    pub fn reached(&self, started: Instant) {
        if let Some(down) = self.health.store_available(started) {
            info!(
                down_s = down.as_secs_f64(),
                "store reachable again; resuming"
            );
        }
    }

    /// Record the result of `op`, started at `started`, and hand it back.
    pub fn check<T>(&self, op: &str, started: Instant, r: Result<T>) -> Result<T> {
        match &r {
            Ok(_) | Err(StoreError::Fenced { .. }) => self.reached(started),
            Err(e) => self.failed(op, started, e),
        }
        r
    }
}

/// A [`Store`] whose every operation goes through a [`StoreWatch`]: it plays each of the
/// store's roles by handing the call to `inner`.
pub struct Watched {
    inner: Arc<dyn Store>,
    watch: StoreWatch,
}

impl Watched {
    pub fn new(inner: Arc<dyn Store>, watch: StoreWatch) -> Self {
        Watched { inner, watch }
    }
}

macro_rules! watched {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let r = $call.await;
        $self.watch.check($op, started, r)
    }};
}

#[async_trait]
impl PollState for Watched {
    async fn load_target(&self, name: &str) -> Result<TargetState> {
        watched!(self, "load", self.inner.load_target(name))
    }

    async fn load_targets(&self, names: &[&str]) -> Result<Vec<TargetState>> {
        watched!(self, "load", self.inner.load_targets(names))
    }

    async fn checkpoint_raw(&self, target: &str, id: &str) -> Result<Option<String>> {
        watched!(self, "read", self.inner.checkpoint_raw(target, id))
    }

    async fn commit_poll(&self, commit: PollCommit<'_>) -> Result<Vec<StoredEvent>> {
        watched!(self, "commit", self.inner.commit_poll(commit))
    }
}

#[async_trait]
impl Outbox for Watched {
    async fn claim_due(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        ordered: bool,
        lease: std::time::Duration,
    ) -> Result<Vec<Claimed>> {
        watched!(
            self,
            "claim",
            self.inner.claim_due(sink, now, limit, ordered, lease)
        )
    }

    async fn next_due(&self, sink: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>> {
        watched!(self, "claim", self.inner.next_due(sink, now))
    }

    async fn record_attempts(&self, outcomes: &[Recorded], now: DateTime<Utc>) -> Result<Written> {
        watched!(self, "record", self.inner.record_attempts(outcomes, now))
    }

    async fn renew_claims(
        &self,
        held: &[(i64, i64)],
        lease: std::time::Duration,
    ) -> Result<Vec<i64>> {
        watched!(self, "claim", self.inner.renew_claims(held, lease))
    }

    async fn release(&self, claims: &[(i64, i64)]) -> Result<()> {
        watched!(self, "release", self.inner.release(claims))
    }

    async fn release_claims(&self) -> Result<u64> {
        watched!(self, "release", self.inner.release_claims())
    }

    async fn newer_deploy(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        watched!(
            self,
            "read",
            self.inner
                .newer_deploy(sink, run_id, delivery_id, created_at)
        )
    }

    async fn redeliver(&self, which: &Redeliver, now: DateTime<Utc>) -> Result<Requeued> {
        watched!(self, "record", self.inner.redeliver(which, now))
    }

    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<(u64, u64)> {
        watched!(self, "prune", self.inner.prune(cutoff))
    }
}

#[async_trait]
impl Pipelines for Watched {
    async fn deploy_begin(
        &self,
        c: &Claimed,
        sink: &str,
        created_at: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Option<DeployRow>> {
        watched!(
            self,
            "deploy",
            self.inner.deploy_begin(c, sink, created_at, now)
        )
    }

    async fn deploy_intent(
        &self,
        c: &Claimed,
        model_name: &str,
        model_id: Option<&str>,
        before: &[String],
        now: DateTime<Utc>,
    ) -> Result<Intent> {
        watched!(
            self,
            "deploy",
            self.inner
                .deploy_intent(c, model_name, model_id, before, now)
        )
    }

    async fn deploy_clear_intent(&self, c: &Claimed, now: DateTime<Utc>) -> Result<bool> {
        watched!(self, "deploy", self.inner.deploy_clear_intent(c, now))
    }

    async fn recorded_deployments(&self, model_id: &str) -> Result<Vec<(i64, String)>> {
        watched!(self, "deploy", self.inner.recorded_deployments(model_id))
    }

    async fn claim_follows(
        &self,
        sink: &str,
        now: DateTime<Utc>,
        limit: usize,
        lease: std::time::Duration,
    ) -> Result<Vec<FollowClaim>> {
        watched!(
            self,
            "follow",
            self.inner.claim_follows(sink, now, limit, lease)
        )
    }

    async fn record_follow(&self, outcome: &FollowOutcome, now: DateTime<Utc>) -> Result<bool> {
        watched!(self, "follow", self.inner.record_follow(outcome, now))
    }

    async fn decide(
        &self,
        ids: &[String],
        decision: &Decision,
    ) -> Result<std::result::Result<Vec<Decided>, Vec<Undecided>>> {
        watched!(self, "deploy", self.inner.decide(ids, decision))
    }

    async fn expire_approvals(&self, sink: &str, now: DateTime<Utc>) -> Result<Vec<i64>> {
        watched!(self, "follow", self.inner.expire_approvals(sink, now))
    }

    async fn approval_deadlines(&self) -> Result<Vec<(String, DateTime<Utc>)>> {
        watched!(self, "read", self.inner.approval_deadlines())
    }

    async fn promote_intent(&self, claim: &FollowClaim, now: DateTime<Utc>) -> Result<bool> {
        watched!(self, "follow", self.inner.promote_intent(claim, now))
    }

    async fn newer_live(
        &self,
        sink: &str,
        run_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Option<String>> {
        watched!(
            self,
            "read",
            self.inner.newer_live(sink, run_id, delivery_id, created_at)
        )
    }

    async fn cleanup_candidates(
        &self,
        sink: &str,
        model_id: &str,
        delivery_id: i64,
        created_at: DateTime<Utc>,
    ) -> Result<Vec<DeployRow>> {
        watched!(
            self,
            "read",
            self.inner
                .cleanup_candidates(sink, model_id, delivery_id, created_at)
        )
    }

    async fn mark_deactivated(
        &self,
        delivery_id: i64,
        why: &str,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        watched!(
            self,
            "follow",
            self.inner.mark_deactivated(delivery_id, why, now)
        )
    }
}

#[async_trait]
impl Inspection for Watched {
    async fn list_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        watched!(self, "read", self.inner.list_deliveries(status, limit))
    }

    async fn list_sink_deliveries(
        &self,
        status: Option<DeliveryStatus>,
        sink: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>> {
        watched!(
            self,
            "read",
            self.inner.list_sink_deliveries(status, sink, limit)
        )
    }

    async fn backlog(&self) -> Result<Vec<SinkBacklog>> {
        watched!(self, "read", self.inner.backlog())
    }

    async fn dump(&self, target: Option<&str>) -> Result<Vec<TargetDump>> {
        watched!(self, "read", self.inner.dump(target))
    }

    async fn event_counts(&self) -> Result<Vec<(String, i64)>> {
        watched!(self, "read", self.inner.event_counts())
    }

    async fn list_deploys(&self, sink: Option<&str>, limit: i64) -> Result<Vec<DeployRow>> {
        watched!(self, "read", self.inner.list_deploys(sink, limit))
    }

    async fn deploy_stages(&self) -> Result<Vec<(String, String, i64)>> {
        watched!(self, "read", self.inner.deploy_stages())
    }

    async fn overview(&self, q: &OverviewQuery) -> Result<Overview> {
        watched!(self, "read", self.inner.overview(q))
    }

    async fn target_detail(&self, q: &DetailQuery) -> Result<TargetDetail> {
        watched!(self, "read", self.inner.target_detail(q))
    }
}

/// Open the store. With `wait` (the daemon), keep trying while the database is out of
/// reach ([`store::StoreError::is_unavailable`]), backing off from 1 s to 30 s, with
/// `/readyz` answering 503 and why; logged when it starts waiting and when it is back.
/// Any other error (a wrong password, no such database, a locked state file) is final.
pub async fn open_store(
    cfg: &StoreConfig,
    access: Access,
    role: Role,
    watch: &StoreWatch,
    health: &Health,
    wait: bool,
) -> Result<(Arc<dyn Store>, Arc<dyn Coordinator>)> {
    let shown = crate::config::redact_url(&cfg.url);
    if cfg.group_readable && access == Access::ReadWrite {
        store::sqlite::create_group_readable(&cfg.url);
    }
    if wait {
        health.store_unavailable(format!("opening {shown}"), Instant::now());
    }
    let waiting_since = Instant::now();
    let mut backoff = Duration::from_secs(1);
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        match store::open_coordinated(cfg, access, role).await {
            Ok(opened) => {
                health.store_available(started);
                if failures > 0 {
                    info!(store = %shown, waited_s = waiting_since.elapsed().as_secs_f64(), failures,
                        "store reachable; starting");
                }
                return Ok(opened);
            }
            Err(e) if wait && e.is_unavailable() => {
                failures += 1;
                watch.failed("open", started, &e);
                health.store_unavailable(e.to_string(), started);
                if failures == 1 {
                    warn!(error = %e, "store unavailable at start; serving /healthz and /readyz (503) and retrying until it is reachable");
                } else {
                    debug!(error = %e, failures, retry_in_s = backoff.as_secs_f64(), "store still unavailable");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> StoreError {
        StoreError::Db(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))
    }

    #[test]
    fn an_unreachable_store_is_counted_and_not_ready_until_an_operation_succeeds() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new([]));
        let watch = StoreWatch::new(metrics.clone(), health.clone());
        let before = Instant::now();
        for _ in 0..3 {
            watch.failed("claim", before, &refused());
        }
        watch.failed("commit", before, &StoreError::Corrupt("bad row".into()));
        let count = |op: &str| metrics.store_errors.with_label_values(&[op]).get();
        assert_eq!((count("claim"), count("commit"), count("open")), (3, 1, 0));
        let why = health.ready().unwrap_err().to_string();
        assert!(why.contains("connection refused"), "{why}");
        // An answer to an operation started before the outage does not end it.
        watch.reached(before);
        assert!(health.ready().is_err());
        watch.reached(Instant::now());
        assert!(health.ready().is_ok());
        // A query's own error is counted but is no outage.
        watch.failed(
            "commit",
            Instant::now(),
            &StoreError::Corrupt("bad row".into()),
        );
        assert!(health.ready().is_ok());
    }
}
