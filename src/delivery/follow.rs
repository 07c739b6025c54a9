//! Following a deployment until it is live or failed (docs/events.md, "Deploys"): a
//! `baseten_deploy` sink's delivered deploy waits in stage `following`; this loop claims
//! the due ones (one follower at a time, whichever replica), reads each deployment
//! through the shared API client (its token bucket), and records what it saw: `ACTIVE`
//! -> `active` and `checkpoint.deployment_active`; a failure status or a 404 -> `failed`
//! and `checkpoint.deployment_failed`; `follow_timeout` passed -> `failed` (`TIMEOUT`);
//! anything else, unknown statuses and failed reads included, -> read again after
//! `follow_interval`. The stage and the claim are in the store, so a restart, a crash or
//! another replica carries on; the outcome write is fenced by the follow claim's token.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::deploy::{DeploymentData, LoopsDeployer, lifecycle_event};
use super::{Outbox, Sink};
use crate::health::Heartbeat;
use crate::model::EventType;
use crate::store::{DeployStage, FollowClaim, FollowOutcome, FollowUp};

/// Statuses that end a deployment's life as a failure (`Deployment.status`).
const FAILED: [&str; 6] = [
    "DEPLOY_FAILED",
    "BUILD_FAILED",
    "BUILD_STOPPED",
    "FAILED",
    "INACTIVE",
    "DEACTIVATING",
];

/// Follows claimed at once, per round.
const BATCH: usize = 16;

/// What one read of a followed deployment means.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Active,
    /// Failed, with the status reported (`NOT_FOUND` for a 404, `TIMEOUT`).
    Failed(String),
    /// Keep following; the status, when the read succeeded.
    Pending(Option<String>),
}

/// Decide on one read: `status` is the deployment's status, `Err(Some(404))` a vanished
/// deployment, `Err(_)` a failed read; `overdue` once `follow_timeout` has passed.
pub(crate) fn judge(status: Result<&str, Option<u16>>, overdue: bool) -> Seen {
    match status {
        Ok("ACTIVE") => Seen::Active,
        Ok(s) if FAILED.contains(&s) => Seen::Failed(s.to_string()),
        Err(Some(404)) => Seen::Failed("NOT_FOUND".into()),
        _ if overdue => Seen::Failed("TIMEOUT".into()),
        Ok(s) => Seen::Pending(Some(s.to_string())),
        Err(_) => Seen::Pending(None),
    }
}

impl Outbox {
    /// Follow `sink`'s deployments until `token` is cancelled.
    pub(super) async fn run_follow(
        &self,
        sink: Arc<Sink>,
        token: CancellationToken,
        beat: Heartbeat,
    ) {
        let Some(d) = sink.deploy.as_ref() else {
            return;
        };
        // Due follows are looked for at least every second (a deploy just delivered
        // wakes the outbox, not this loop), at most every `follow_interval`.
        let every = d.cfg.follow_interval.min(Duration::from_secs(1));
        let mut waiter = self.wake.subscribe();
        loop {
            beat.beat();
            let busy = self.follow_round(&sink).await;
            if busy {
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = waiter.wait() => {}
                () = token.cancelled() => return,
            }
        }
    }

    /// One round: claim due follows, read each, record; whether a whole batch was due
    /// (there may be more now).
    pub(super) async fn follow_round(&self, sink: &Sink) -> bool {
        let (Some(d), Some(api)) = (sink.deploy.as_ref(), sink.deployer.as_ref()) else {
            return false;
        };
        let now = Utc::now();
        // Long enough for a batch of reads (each within the sink's timeout at worst);
        // renewed by nobody: a follower that dies frees its batch after this.
        let lease = Duration::from_secs(30) + sink.cfg.timeout;
        let claims = match self
            .store
            .claim_follows(sink.name(), now, BATCH, lease)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                debug!(sink = sink.name(), error = %e, "cannot claim deployments to follow; will retry");
                return false;
            }
        };
        let full = claims.len() == BATCH;
        for claim in claims {
            let outcome = self
                .follow_one(sink, &d.cfg, api.as_ref(), &claim, Utc::now())
                .await;
            let active = outcome.stage == DeployStage::Active;
            match self.store.record_follow(&outcome, Utc::now()).await {
                Ok(true) => {
                    if let Some(f) = &outcome.event {
                        if let Some(kind) = f.event.event_type() {
                            self.metrics.target(&f.event.target).event(kind);
                        }
                        if !f.sinks.is_empty() {
                            self.wake.notify();
                        }
                    }
                    if active {
                        let took = (Utc::now() - claim.deploy.completed_at)
                            .num_milliseconds()
                            .max(0) as f64
                            / 1000.0;
                        self.metrics
                            .deploy_to_active
                            .with_label_values(&[sink.name()])
                            .observe(took);
                    }
                }
                Ok(false) => {
                    debug!(
                        sink = sink.name(),
                        delivery_id = claim.deploy.delivery_id,
                        "another follower took this deployment; its read is discarded"
                    );
                }
                Err(e) => {
                    warn!(sink = sink.name(), error = %e, "cannot record a followed deployment; it is read again when its claim lapses");
                }
            }
        }
        full
    }

    /// Read one followed deployment and decide.
    async fn follow_one(
        &self,
        sink: &Sink,
        cfg: &crate::config::DeployConfig,
        api: &dyn LoopsDeployer,
        claim: &FollowClaim,
        now: DateTime<Utc>,
    ) -> FollowOutcome {
        let row = &claim.deploy;
        let (Some(model_id), Some(deployment_id)) =
            (row.model_id.as_deref(), row.deployment_id.as_deref())
        else {
            return FollowOutcome {
                delivery_id: row.delivery_id,
                token: claim.token,
                stage: DeployStage::Deployed,
                deployment_status: None,
                next_at: None,
                active_at: None,
                error: Some("nothing to follow: no deployment id was recorded".into()),
                event: None,
            };
        };
        let read = api.deployment(model_id, deployment_id).await;
        let overdue = row.follow_deadline.is_some_and(|d| now >= d);
        let seen = match &read {
            Ok(dep) => judge(Ok(dep.status.as_str()), overdue),
            Err(e) => judge(Err(e.status), overdue),
        };
        let error = read.as_ref().err().map(|e| e.message.clone());
        let environment = read.as_ref().ok().and_then(|d| d.environment.clone());
        let data = |status: &str| DeploymentData {
            sink: sink.name().to_string(),
            model_name: row.model_name.clone(),
            model_id: Some(model_id.to_string()),
            deployment_id: Some(deployment_id.to_string()),
            status: Some(status.to_string()),
            environment: environment.clone(),
            reconciled: row.reconciled,
            approved_by: row.decided_by.clone(),
        };
        let event = |kind: EventType, status: &str| match lifecycle_event(
            &claim.completed,
            kind,
            &data(status),
            now,
        ) {
            Ok(event) => {
                let sinks = self.lifecycle_routes(&event);
                Some(FollowUp { event, sinks })
            }
            Err(e) => {
                warn!(sink = sink.name(), error = %e, "cannot build the lifecycle event");
                None
            }
        };
        let base = FollowOutcome {
            delivery_id: row.delivery_id,
            token: claim.token,
            stage: DeployStage::Following,
            deployment_status: None,
            next_at: None,
            active_at: None,
            error: None,
            event: None,
        };
        match seen {
            Seen::Active => {
                info!(sink = sink.name(), model_id, deployment_id, uri = %claim.completed.uri().unwrap_or_default(),
                    "deployment active");
                FollowOutcome {
                    stage: DeployStage::Active,
                    deployment_status: Some("ACTIVE".into()),
                    active_at: Some(now),
                    event: event(EventType::DeploymentActive, "ACTIVE"),
                    ..base
                }
            }
            Seen::Failed(status) => {
                warn!(sink = sink.name(), model_id, deployment_id, %status, uri = %claim.completed.uri().unwrap_or_default(),
                    "deployment failed");
                FollowOutcome {
                    stage: DeployStage::Failed,
                    event: event(EventType::DeploymentFailed, &status),
                    error: Some(match &error {
                        Some(e) if status != "TIMEOUT" => format!("{status}: {e}"),
                        _ => status.clone(),
                    }),
                    deployment_status: Some(status),
                    ..base
                }
            }
            Seen::Pending(status) => FollowOutcome {
                deployment_status: status,
                next_at: Some(
                    now + chrono::Duration::from_std(cfg.follow_interval).unwrap_or_default(),
                ),
                error,
                ..base
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_judged_as_the_contract_says() {
        assert_eq!(judge(Ok("ACTIVE"), false), Seen::Active);
        for s in FAILED {
            assert_eq!(judge(Ok(s), false), Seen::Failed(s.into()), "{s}");
        }
        assert_eq!(
            judge(Err(Some(404)), false),
            Seen::Failed("NOT_FOUND".into())
        );
        // Unknown and transitional statuses keep following, as do failed reads.
        for s in [
            "BUILDING",
            "DEPLOYING",
            "LOADING_MODEL",
            "UNHEALTHY",
            "SCALED_TO_ZERO",
            "NEW",
        ] {
            assert_eq!(judge(Ok(s), false), Seen::Pending(Some(s.into())), "{s}");
        }
        assert_eq!(judge(Err(Some(503)), false), Seen::Pending(None));
        assert_eq!(judge(Err(None), false), Seen::Pending(None));
        // Past the deadline, whatever is not ACTIVE or failed is a timeout.
        assert_eq!(judge(Ok("BUILDING"), true), Seen::Failed("TIMEOUT".into()));
        assert_eq!(judge(Err(None), true), Seen::Failed("TIMEOUT".into()));
        assert_eq!(judge(Ok("ACTIVE"), true), Seen::Active);
    }
}
