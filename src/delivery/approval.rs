//! Deploys that wait for a person (docs/events.md, "Approval"): what a wait records and
//! announces (`checkpoint.awaiting_approval`, whose `data.approve_command` is the exact
//! command line that lets it go on), the end of waits past `approval_deadline`
//! (`expired`), and the gauge an alert on waits about to expire reads. The decision
//! itself is the store's ([`crate::store::Pipelines::decide`], called by `deliveries
//! approve` / `reject`).

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::deploy::{DeploymentData, lifecycle_event_with};
use super::{Outbox, Sink};
use crate::config::{Approval, DeployConfig, Invocation};
use crate::model::{EventType, rfc3339};
use crate::store::deploys::{approve_command, reject_command};
use crate::store::{Claimed, DeployStage, DeployUpdate, FollowUp, StoredEvent};

/// `checkpoint.awaiting_approval` for pipeline `delivery_id` of the completed event
/// `completed`: `data.deployment` as known, plus `approval` (which gate), `approve_command`,
/// `reject_command` (naming the config file as `how` does) and `approval_deadline`.
pub fn waiting_event(
    how: &Invocation,
    completed: &StoredEvent,
    delivery_id: i64,
    deployment: &DeploymentData,
    gate: Approval,
    deadline: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<StoredEvent, String> {
    lifecycle_event_with(
        completed,
        EventType::AwaitingApproval,
        deployment,
        vec![
            ("approval", gate.as_str().into()),
            ("approve_command", approve_command(how, delivery_id).into()),
            ("reject_command", reject_command(how, delivery_id).into()),
            ("approval_deadline", rfc3339(deadline).into()),
        ],
        now,
    )
}

/// When a wait that starts at `now` expires.
pub(super) fn deadline(cfg: &DeployConfig, now: DateTime<Utc>) -> DateTime<Utc> {
    now + chrono::Duration::from_std(cfg.approval_deadline).unwrap_or(chrono::Duration::MAX)
}

impl Outbox {
    /// A deploy attempt found its pipeline needs approval first (`before_deploy`): what
    /// its pipeline becomes, and the event that announces the wait, both recorded with
    /// the delivery's new status.
    pub(super) fn waiting(
        &self,
        sink: &Sink,
        cfg: &DeployConfig,
        c: &Claimed,
        model_name: String,
        now: DateTime<Utc>,
    ) -> (DeployUpdate, Option<FollowUp>) {
        let until = deadline(cfg, now);
        let data = DeploymentData {
            sink: sink.name().to_string(),
            model_name: Some(model_name.clone()),
            ..Default::default()
        };
        let how = &self.invocation;
        let event = match waiting_event(
            how,
            &c.event,
            c.delivery_id,
            &data,
            cfg.approval,
            until,
            now,
        ) {
            Ok(event) => {
                let sinks = self.lifecycle_routes(&event);
                Some(FollowUp { event, sinks })
            }
            Err(e) => {
                warn!(sink = sink.name(), error = %e, "cannot build checkpoint.awaiting_approval; the deploy waits unannounced");
                None
            }
        };
        info!(sink = sink.name(), delivery_id = c.delivery_id, uri = %c.event.uri().unwrap_or_default(),
            deadline = %rfc3339(until), approve = %approve_command(how, c.delivery_id),
            "deploy waits for approval");
        let update = DeployUpdate {
            stage: Some(DeployStage::AwaitingApproval),
            model_name: Some(model_name),
            approval_deadline: Some(until),
            supersede_waiting: cfg.latest_only,
            ..Default::default()
        };
        (update, event)
    }

    /// End `sink`'s waits whose deadline passed (`expired`, nothing deployed or promoted).
    pub(super) async fn expire_round(&self, sink: &Sink) {
        match self.store.expire_approvals(sink.name(), Utc::now()).await {
            Ok(ids) => {
                for id in ids {
                    warn!(
                        sink = sink.name(),
                        delivery_id = id,
                        "approval_deadline passed with no decision: the deploy expired, nothing more is done"
                    );
                }
            }
            Err(e) => {
                tracing::debug!(sink = sink.name(), error = %e, "cannot expire overdue approvals; will retry");
            }
        }
    }

    /// `loopwatch_deploy_approval_deadline_timestamp_seconds`, as `refresh_deploys`: the
    /// database-wide figure on the backlog reporter, 0 elsewhere and where none waits.
    pub(super) async fn refresh_approvals(&self) {
        let rows = if self.metrics.reports_backlog() {
            match self.store.approval_deadlines().await {
                Ok(rows) => rows,
                Err(_) => return,
            }
        } else {
            Vec::new()
        };
        let gauge = &self.metrics.approval_deadline;
        gauge.reset();
        for sink in self.sinks().iter().filter(|s| s.deploy.is_some()) {
            gauge.with_label_values(&[sink.name()]).set(0.0);
        }
        for (sink, at) in rows {
            gauge
                .with_label_values(&[&sink])
                .set(at.timestamp_millis() as f64 / 1000.0);
        }
    }
}
