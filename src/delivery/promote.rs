//! A pipeline once its deployment is `ACTIVE` (docs/events.md, "Promote", "Clean up"),
//! one step per follow claim:
//!
//! - **Promote** (`promote_to`): read the deployment first: already in the environment
//!   -> `promoted` (a promote call whose answer was lost is reconciled this way, never
//!   sent blindly again); a failure status -> `failed`; with `latest_only`, a newer
//!   checkpoint of the run live at this sink -> `superseded`; with `before_promote` and
//!   no decision -> `awaiting_approval` (`checkpoint.awaiting_approval`); else record that
//!   a call may be in doubt (fenced by the claim), then `POST .../promote`: 200 ->
//!   `promoted` (`checkpoint.promoted`); a final 4xx -> `failed`; 408/429/5xx, timeouts,
//!   failed reads -> again per `retry_schedule` (at least `Retry-After`), then `failed`.
//! - **Clean up** (`deactivate_superseded`, once `promoted`, or `active` without
//!   `promote_to`): the deployments this sink recorded for older checkpoints of the same
//!   model, each read first, are deactivated when in no environment and not production.
//!   A deployment no pipeline recorded is never a candidate.

use chrono::{DateTime, Utc};
use rand::RngExt;
use tracing::{error, info, warn};

use super::approval::{deadline, waiting_event};
use super::deploy::{DeploymentData, LoopsDeployer, failure, read_failure};
use super::follow::{Seen, judge};
use super::retry::{RECONCILE_AFTER_THE_LAST_AT_MOST, reconcile_at};
use super::{Failure, Outbox, Sink, decide};
use crate::config::{Approval, DeployConfig};
use crate::model::EventType;
use crate::store::{AttemptOutcome, DeployStage, FollowClaim, FollowOutcome, FollowUp};

impl Outbox {
    /// The step of a live pipeline: promote it, or clean up after it.
    pub(super) async fn after_live(
        &self,
        sink: &Sink,
        cfg: &DeployConfig,
        api: &dyn LoopsDeployer,
        claim: &FollowClaim,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let live = claim.deploy.stage == DeployStage::Promoted || cfg.promote_to.is_none();
        if live {
            self.clean_up(sink, cfg, api, claim, now).await
        } else {
            self.promote_step(sink, cfg, api, claim, now).await
        }
    }

    /// `data.deployment` of this pipeline's events, with `status` and `environment`.
    fn data_of(
        sink: &Sink,
        claim: &FollowClaim,
        status: Option<&str>,
        environment: Option<&str>,
    ) -> DeploymentData {
        let row = &claim.deploy;
        DeploymentData {
            sink: sink.name().to_string(),
            model_name: row.model_name.clone(),
            model_id: row.model_id.clone(),
            deployment_id: row.deployment_id.clone(),
            status: status.map(str::to_string),
            environment: environment.map(str::to_string),
            reconciled: row.reconciled,
            approved_by: row
                .decided_by
                .clone()
                .filter(|_| row.decision.as_deref() == Some("approved")),
        }
    }

    /// The step did not settle (`f`): again after the sink's `retry_schedule` (at least
    /// `Retry-After`), or, when it is spent or `f` is final, `gave_up` (`failed` for a
    /// promotion; a clean-up ends as it stands).
    fn step_failed(
        sink: &Sink,
        claim: &FollowClaim,
        f: Failure,
        gave_up: DeployStage,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let base = FollowOutcome::of(claim);
        let before = u32::try_from(claim.deploy.step_attempts).unwrap_or(u32::MAX);
        let jitter = rand::rng().random_range(-1.0..=1.0);
        match decide(&Err(f), before, &sink.cfg.retry_schedule, now, jitter) {
            AttemptOutcome::Retry { next, error, .. } => {
                warn!(sink = sink.name(), delivery_id = claim.deploy.delivery_id, %error,
                    "pipeline step failed; will retry");
                FollowOutcome {
                    next_at: Some(next),
                    step_attempts: claim.deploy.step_attempts + 1,
                    error: Some(error),
                    ..base
                }
            }
            other => {
                let error = match other {
                    AttemptOutcome::Dead { error, .. } => error,
                    _ => "gave up".into(),
                };
                error!(sink = sink.name(), delivery_id = claim.deploy.delivery_id, %error,
                    "pipeline step failed for good");
                FollowOutcome {
                    stage: gave_up,
                    next_at: None,
                    step_attempts: claim.deploy.step_attempts + 1,
                    promote_settled: gave_up == DeployStage::Failed,
                    error: Some(error),
                    ..base
                }
            }
        }
    }

    /// One step toward promoting an active deployment to `promote_to`.
    async fn promote_step(
        &self,
        sink: &Sink,
        cfg: &DeployConfig,
        api: &dyn LoopsDeployer,
        claim: &FollowClaim,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let row = &claim.deploy;
        let base = FollowOutcome::of(claim);
        let env = cfg.promote_to.as_deref().unwrap_or_default();
        let (Some(model_id), Some(deployment_id)) =
            (row.model_id.as_deref(), row.deployment_id.as_deref())
        else {
            return FollowOutcome {
                stage: DeployStage::Failed,
                error: Some("nothing to promote: no deployment id was recorded".into()),
                ..base
            };
        };
        let uri = claim.completed.uri().unwrap_or_default();
        // What the deployment is now: it may have been promoted by a call whose answer
        // was lost (or by someone else), or have failed since it was ACTIVE.
        let dep = match api.deployment(model_id, deployment_id).await {
            Ok(d) => d,
            Err(e) if e.status == Some(404) => {
                let data = Self::data_of(sink, claim, Some("NOT_FOUND"), None);
                return FollowOutcome {
                    stage: DeployStage::Failed,
                    deployment_status: Some("NOT_FOUND".into()),
                    promote_settled: true,
                    error: Some(format!("NOT_FOUND: {}", e.message)),
                    event: self.pipeline_event(
                        sink,
                        claim,
                        EventType::DeploymentFailed,
                        &data,
                        now,
                    ),
                    ..base
                };
            }
            Err(e) => {
                let f = read_failure("deployment", e);
                // The last call's outcome is still to be read: a failing read is tried
                // again, never taken for an answer.
                if last_call_in_doubt(sink, row) {
                    return Self::reconcile_promote(sink, claim, &f, now);
                }
                return Self::step_failed(sink, claim, f, DeployStage::Failed, now);
            }
        };
        let status = Some(dep.status.clone());
        if dep.environment.as_deref() == Some(env) {
            info!(sink = sink.name(), model_id, deployment_id, environment = env, %uri,
                found_by_reading = row.promote_in_doubt, "deployment promoted");
            return self.promoted(sink, cfg, claim, &dep.status, env, now);
        }
        if let Seen::Failed(s) = judge(Ok(dep.status.as_str()), false) {
            warn!(sink = sink.name(), model_id, deployment_id, status = %s, %uri,
                "deployment failed before it was promoted");
            let data = Self::data_of(sink, claim, Some(&s), dep.environment.as_deref());
            return FollowOutcome {
                stage: DeployStage::Failed,
                deployment_status: Some(s.clone()),
                promote_settled: true,
                error: Some(s),
                event: self.pipeline_event(sink, claim, EventType::DeploymentFailed, &data, now),
                ..base
            };
        }
        if cfg.latest_only
            && let Some(created) = row.ordering_time()
        {
            match self
                .store
                .newer_live(sink.name(), &row.run_id, row.delivery_id, created)
                .await
            {
                Ok(Some(newer)) => {
                    let reason = format!(
                        "not promoted: {newer}, a newer checkpoint of run {}, is live (latest_only)",
                        row.run_id
                    );
                    info!(sink = sink.name(), %uri, %reason, "promotion superseded");
                    return FollowOutcome {
                        stage: DeployStage::Superseded,
                        deployment_status: status,
                        promote_settled: true,
                        error: Some(reason),
                        ..base
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    let f = Failure::Store(e.to_string());
                    return Self::step_failed(sink, claim, f, DeployStage::Failed, now);
                }
            }
        }
        if cfg.approval == Approval::BeforePromote && row.decision.as_deref() != Some("approved") {
            let until = deadline(cfg, now);
            let data = Self::data_of(sink, claim, Some(&dep.status), dep.environment.as_deref());
            let event = waiting_event(
                &self.invocation,
                &claim.completed,
                row.delivery_id,
                &data,
                cfg.approval,
                until,
                now,
            )
            .map_err(|e| warn!(sink = sink.name(), error = %e, "cannot build checkpoint.awaiting_approval"))
            .ok()
            .map(|event| {
                let sinks = self.lifecycle_routes(&event);
                FollowUp { event, sinks }
            });
            info!(sink = sink.name(), delivery_id = row.delivery_id, %uri, environment = env,
                approve = %crate::store::deploys::approve_command(&self.invocation, row.delivery_id),
                "promotion waits for approval");
            return FollowOutcome {
                stage: DeployStage::AwaitingApproval,
                deployment_status: status,
                approval_deadline: Some(until),
                supersede_waiting: cfg.latest_only,
                event,
                ..base
            };
        }
        if last_call_in_doubt(sink, row) {
            // The read above was the last call's reconciliation: it did not promote.
            let attempts = sink.cfg.retry_schedule.len() + 1;
            let reason = format!(
                "not promoted after {attempts} attempts: the last one's answer was lost, and the deployment is not in {env}"
            );
            error!(sink = sink.name(), delivery_id = row.delivery_id, %uri, %reason,
                "pipeline step failed for good");
            return FollowOutcome {
                stage: DeployStage::Failed,
                deployment_status: status,
                promote_settled: true,
                error: Some(reason),
                ..base
            };
        }
        // The call may act without its answer arriving: recorded first, so that whoever
        // carries on reads the deployment (above) before promoting again.
        match self.store.promote_intent(claim, now).await {
            Ok(true) => {}
            // Another follower holds the pipeline now: this step's outcome is discarded.
            Ok(false) => return base,
            Err(e) => {
                let f = Failure::Store(e.to_string());
                return Self::step_failed(sink, claim, f, DeployStage::Failed, now);
            }
        }
        match api.promote(model_id, env, deployment_id).await {
            Ok(d) => {
                info!(sink = sink.name(), model_id, deployment_id, environment = env, %uri,
                    "deployment promoted");
                self.promoted(sink, cfg, claim, &d.status, env, now)
            }
            Err(e) => {
                let known = !e.retryable;
                let f = failure("promote", e);
                let last = row.step_attempts >= sink.cfg.retry_schedule.len() as i64;
                if !known && last {
                    // Outcomes as for deploy calls: the last call in doubt is reconciled
                    // (the deployment read again), not taken for a failure.
                    return Self::reconcile_promote(sink, claim, &f, now);
                }
                let mut out = Self::step_failed(sink, claim, f, DeployStage::Failed, now);
                // A refusal is an answer: nothing was promoted.
                out.promote_settled |= known;
                out
            }
        }
    }

    /// The last promote call's answer was lost (or the read that reconciles it failed):
    /// read the deployment again at [`reconcile_at`]'s time, the attempts spent for good
    /// (the next step promotes nothing; it reads and settles).
    fn reconcile_promote(
        sink: &Sink,
        claim: &FollowClaim,
        f: &Failure,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let row = &claim.deploy;
        let schedule = &sink.cfg.retry_schedule;
        let spent = schedule.len() as i64 + 1;
        let before = u32::try_from(row.step_attempts).unwrap_or(u32::MAX);
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let (next, error) = match reconcile_at(f, before, schedule, now, jitter) {
            AttemptOutcome::Retry { next, error, .. } => (next, error),
            _ => (now + RECONCILE_AFTER_THE_LAST_AT_MOST, f.to_string()),
        };
        warn!(sink = sink.name(), delivery_id = row.delivery_id, %error,
            "the last promote call's outcome is unknown; the deployment will be read again");
        FollowOutcome {
            next_at: Some(next),
            step_attempts: row.step_attempts.max(spent),
            error: Some(format!("{error}; in doubt, to be read again")),
            ..FollowOutcome::of(claim)
        }
    }

    /// Pipeline `claim` is promoted to `env`: `checkpoint.promoted`, then its clean-up.
    fn promoted(
        &self,
        sink: &Sink,
        cfg: &DeployConfig,
        claim: &FollowClaim,
        status: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let data = Self::data_of(sink, claim, Some(status), Some(env));
        FollowOutcome {
            stage: DeployStage::Promoted,
            deployment_status: Some(status.to_string()),
            environment: Some(env.to_string()),
            promoted_at: Some(now),
            promote_settled: true,
            step_attempts: 0,
            next_at: cfg.deactivate_superseded.then_some(now),
            error: None,
            event: self.pipeline_event(sink, claim, EventType::Promoted, &data, now),
            ..FollowOutcome::of(claim)
        }
    }

    /// Deactivate the older deployments this sink made of the model that are in no
    /// environment, now that `claim`'s is live.
    async fn clean_up(
        &self,
        sink: &Sink,
        cfg: &DeployConfig,
        api: &dyn LoopsDeployer,
        claim: &FollowClaim,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let row = &claim.deploy;
        let done = FollowOutcome {
            step_attempts: 0,
            ..FollowOutcome::of(claim)
        };
        let created = row.ordering_time();
        let (true, Some(model_id), Some(created)) =
            (cfg.deactivate_superseded, row.model_id.as_deref(), created)
        else {
            return done;
        };
        let candidates = match self
            .store
            .cleanup_candidates(sink.name(), model_id, row.delivery_id, created)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                let f = Failure::Store(e.to_string());
                return Self::step_failed(sink, claim, f, row.stage, now);
            }
        };
        let why = format!(
            "deactivated: {} (delivery {}) is live",
            row.checkpoint_name, row.delivery_id
        );
        let mut unsettled: Option<Failure> = None;
        for old in candidates {
            let Some(dep_id) = old.deployment_id.as_deref() else {
                continue;
            };
            let gone = match api.deployment(model_id, dep_id).await {
                // Gone already: nothing to deactivate, nothing to count.
                Err(e) if e.status == Some(404) => true,
                Err(e) => {
                    unsettled = Some(read_failure("deployment", e));
                    continue;
                }
                // Serving an environment (production, staging, ...): kept.
                Ok(d) if d.environment.is_some() || d.is_production => continue,
                Ok(d) => matches!(d.status.as_str(), "INACTIVE" | "DEACTIVATING"),
            };
            if !gone {
                match api.deactivate(model_id, dep_id).await {
                    Ok(()) => {}
                    Err(e) if e.retryable => {
                        // Read again (above) before another call.
                        unsettled = Some(failure("deactivate", e));
                        continue;
                    }
                    Err(e) => {
                        warn!(sink = sink.name(), model_id, deployment_id = dep_id, error = %e.message,
                            "deactivate refused; the deployment is left as it is");
                        continue;
                    }
                }
            }
            match self
                .store
                .mark_deactivated(old.delivery_id, &why, now)
                .await
            {
                Ok(true) if !gone => {
                    info!(sink = sink.name(), model_id, deployment_id = dep_id,
                        checkpoint = %old.checkpoint_name, superseded_by = %row.checkpoint_name,
                        "older deployment deactivated");
                    self.metrics
                        .deployments_deactivated
                        .with_label_values(&[sink.name()])
                        .inc();
                }
                Ok(_) => {}
                Err(e) => unsettled = Some(Failure::Store(e.to_string())),
            }
        }
        match unsettled {
            Some(f) => Self::step_failed(sink, claim, f, row.stage, now),
            None => done,
        }
    }
}

/// Every promote attempt was made and the last one's answer was lost: the pipeline's
/// next step only reads the deployment, and settles.
fn last_call_in_doubt(sink: &Sink, row: &crate::store::DeployRow) -> bool {
    row.promote_in_doubt && row.step_attempts > sink.cfg.retry_schedule.len() as i64
}
