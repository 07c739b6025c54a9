//! What a finished attempt means and how it is written: the outcome of each attempt
//! (counted, logged, with its deploy pipeline's new stage) and the one fenced write of a
//! batch of them, retried until it lands (the slots stay busy meanwhile).

use super::*;

impl Outbox {
    /// Record the outcomes of finished attempts, in one write; returns what they were.
    /// A write that fails is tried again (the claims are renewed meanwhile) until it
    /// succeeds or `stop` is cancelled: the slots stay busy until then, so nothing is
    /// attempted twice because an outcome was lost.
    pub(super) async fn record(
        &self,
        sink: &Sink,
        done: Vec<Finished>,
        stop: &CancellationToken,
    ) -> DeliverySummary {
        let now = Utc::now();
        let outcomes: Vec<Recorded> = done
            .into_iter()
            .filter_map(|f| self.outcome(sink, f, now))
            .collect();
        let mut summary = DeliverySummary::default();
        for r in &outcomes {
            match &r.outcome {
                AttemptOutcome::Delivered => summary.delivered += 1,
                AttemptOutcome::DeliveredWith(_) => {
                    summary.delivered += 1;
                    summary.follow_ups += 1;
                }
                AttemptOutcome::Retry { .. } => summary.retrying += 1,
                AttemptOutcome::Dead { .. } | AttemptOutcome::Unknown { .. } => summary.dead += 1,
                AttemptOutcome::Superseded { .. } => summary.superseded += 1,
                AttemptOutcome::Deferred { .. } => summary.retrying += 1,
                AttemptOutcome::AwaitingApproval(_) => summary.awaiting_approval += 1,
            }
        }
        if outcomes.is_empty() {
            return summary;
        }
        let mut wait = Duration::from_millis(250);
        let written = loop {
            match self.store.record_attempts(&outcomes, now).await {
                Ok(written) => break written,
                Err(e) => {
                    if !e.is_unavailable() {
                        error!(sink = sink.name(), deliveries = outcomes.len(), error = %e,
                            "cannot record delivery outcomes; will try again");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => {
                            // Not written: the claims lapse and the deliveries are sent
                            // again under the same ids (at-least-once holds).
                            warn!(sink = sink.name(), deliveries = outcomes.len(),
                                "stopping before delivery outcomes could be recorded; they will be attempted again");
                            return summary;
                        }
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        // Older deploys waiting for approval that a newer one starting to wait
        // superseded (`latest_only`): never attempted, counted here.
        if written.superseded > 0 {
            self.metrics
                .deliveries
                .with_label_values(&[sink.name(), "superseded"])
                .inc_by(written.superseded);
            summary.superseded += written.superseded;
        }
        let stale = written.stale;
        for id in &stale {
            warn!(
                sink = sink.name(),
                delivery_id = id,
                "an attempt's outcome was discarded: its claim had lapsed and was taken again"
            );
        }
        let mut routed = false;
        for r in outcomes.iter().filter(|r| !stale.contains(&r.delivery_id)) {
            if let AttemptOutcome::DeliveredWith(f) | AttemptOutcome::AwaitingApproval(Some(f)) =
                &r.outcome
            {
                if let Some(kind) = f.event.event_type() {
                    self.metrics.target(&f.event.target).event(kind);
                }
                routed |= !f.sinks.is_empty();
            }
        }
        if routed {
            self.wake.notify();
        }
        summary
    }

    /// What an attempt's result means, counted and logged; `None` for an attempt that
    /// stopped because its claim was taken again (nothing to record).
    pub(super) fn outcome(&self, sink: &Sink, f: Finished, now: DateTime<Utc>) -> Option<Recorded> {
        let name = sink.name();
        let jitter = rand::rng().random_range(-1.0..=1.0);
        let c = &f.claimed;
        let ev = &c.event;
        let deploy_cfg = sink.deploy.as_ref().map(|d| &d.cfg);
        let schedule = &sink.cfg.retry_schedule;
        // A deploy pass that only reconciled an earlier attempt's call (every pass after
        // the last attempt is one) completes that attempt: not counted, unless a crash lost
        // that attempt's own outcome (none counted yet), when it stands in for it.
        let after_last = deploy_cfg.is_some() && c.attempts as usize > schedule.len();
        let reconciliation = (f.reconciled_only || after_last) && c.attempts > 0;
        let facts = AttemptFacts {
            reconciliation,
            ..facts(&f.result, f.took)
        };
        // The attempt this pass is (or completes).
        let attempt = c.attempts + u32::from(!reconciliation);
        let mut update: Option<DeployUpdate> = None;
        let outcome = match f.result {
            Err(Failure::Stale) => {
                warn!(sink = name, event_id = %ev.id, "claim taken again; this attempt stopped before acting");
                return None;
            }
            Err(Failure::Deferred(reason)) => {
                debug!(sink = name, event_id = %ev.id, %reason, "deploy put off");
                return Some(Recorded {
                    delivery_id: c.delivery_id,
                    token: c.token,
                    outcome: AttemptOutcome::Deferred {
                        next: now + chrono::Duration::seconds(2),
                        reason,
                    },
                    deploy: None,
                    facts,
                });
            }
            Ok(Sent::Superseded(reason)) => {
                update = Some(DeployUpdate {
                    stage: Some(DeployStage::Superseded),
                    settled: true,
                    error: Some(reason.clone()),
                    ..Default::default()
                });
                AttemptOutcome::Superseded { reason }
            }
            Ok(Sent::AwaitingApproval(model_name)) => {
                let cfg = deploy_cfg.expect("only a deploy sink waits for approval");
                let (deploy, event) = self.waiting(sink, cfg, c, model_name, now);
                update = Some(deploy);
                AttemptOutcome::AwaitingApproval(event.map(Box::new))
            }
            Ok(Sent::Ambiguous(error)) => {
                update = Some(DeployUpdate {
                    stage: Some(DeployStage::Unknown),
                    error: Some(error.clone()),
                    ..Default::default()
                });
                AttemptOutcome::Unknown { error }
            }
            Ok(Sent::Deployed(d)) => {
                let follow = deploy_cfg.is_some_and(|c| c.follow);
                update = Some(DeployUpdate {
                    stage: Some(if follow {
                        DeployStage::Following
                    } else {
                        DeployStage::Deployed
                    }),
                    model_name: Some(d.model_name.clone()),
                    model_id: Some(d.model_id.clone()),
                    deployment_id: Some(d.deployment_id.clone()),
                    reconciled: d.reconciled,
                    settled: true,
                    follow: deploy_cfg.filter(|c| c.follow).map(|c| {
                        (
                            now + chrono::Duration::from_std(c.follow_interval).unwrap_or_default(),
                            now + chrono::Duration::from_std(c.follow_timeout).unwrap_or_default(),
                        )
                    }),
                    ..Default::default()
                });
                match deploy::deployed_event_by(ev, name, &d, f.approved_by.clone(), now) {
                    Ok(event) => {
                        info!(sink = name, event_id = %ev.id, uri = %ev.uri().unwrap_or_default(), model_name = %d.model_name,
                            model_id = %d.model_id, deployment_id = %d.deployment_id, reconciled = d.reconciled, "checkpoint deployed");
                        let sinks = self.lifecycle_routes(&event);
                        AttemptOutcome::DeliveredWith(Box::new(FollowUp { event, sinks }))
                    }
                    Err(e) => {
                        error!(sink = name, event_id = %ev.id, error = %e,
                            "deployed, but cannot build the checkpoint.deployed event");
                        AttemptOutcome::Delivered
                    }
                }
            }
            Ok(Sent::Status(code)) => {
                decide(&Ok(code), c.attempts, &sink.cfg.retry_schedule, now, jitter)
            }
            Err(failure) => {
                // A call in doubt is reconciled before the delivery ends, the last
                // attempt's too, and a failed read of that reconciliation (or any pass
                // after the last attempt, which sends nothing) is tried again: never dead
                // or unknown for want of attempts.
                let o = if deploy_cfg.is_some()
                    && (f.in_doubt || after_last)
                    && !failure.is_permanent()
                {
                    reconcile_at(&failure, c.attempts, schedule, now, jitter)
                } else {
                    decide(&Err(failure), c.attempts, schedule, now, jitter)
                };
                match o {
                    AttemptOutcome::Dead { error, .. } if deploy_cfg.is_some() && f.in_doubt => {
                        // A call may have deployed and nobody could tell: never sent again
                        // by itself (`deliveries redeliver` reconciles first).
                        update = Some(DeployUpdate {
                            stage: Some(DeployStage::Unknown),
                            error: Some(error.clone()),
                            ..Default::default()
                        });
                        AttemptOutcome::Unknown { error }
                    }
                    AttemptOutcome::Dead { status, error } if deploy_cfg.is_some() => {
                        update = Some(DeployUpdate {
                            stage: Some(DeployStage::Failed),
                            settled: true,
                            error: Some(error.clone()),
                            ..Default::default()
                        });
                        AttemptOutcome::Dead { status, error }
                    }
                    AttemptOutcome::Retry {
                        next,
                        status,
                        error,
                    } if deploy_cfg.is_some() => {
                        update = Some(DeployUpdate {
                            error: Some(error.clone()),
                            ..Default::default()
                        });
                        AttemptOutcome::Retry {
                            next,
                            status,
                            error,
                        }
                    }
                    other => other,
                }
            }
        };
        if !matches!(
            outcome,
            AttemptOutcome::Superseded { .. } | AttemptOutcome::AwaitingApproval(_)
        ) {
            self.metrics
                .delivery_duration
                .with_label_values(&[name])
                .observe(f.took.as_secs_f64());
        }
        let label = match &outcome {
            // Not an attempt: nothing was sent (logged by `waiting`).
            AttemptOutcome::AwaitingApproval(_) => None,
            AttemptOutcome::Delivered | AttemptOutcome::DeliveredWith(_) => {
                debug!(sink = name, event_id = %ev.id, attempt, "delivered");
                Some("success")
            }
            AttemptOutcome::Superseded { reason } => {
                info!(sink = name, event_id = %ev.id, uri = %ev.uri().unwrap_or_default(), %reason, "deploy superseded");
                Some("superseded")
            }
            AttemptOutcome::Retry { next, error, .. } => {
                let in_secs = (*next - now).num_milliseconds() as f64 / 1000.0;
                if reconciliation {
                    warn!(sink = name, event_id = %ev.id, attempt, %error, retry_in_s = in_secs,
                        "cannot reconcile the deploy call in doubt; nothing is deployed until the model's deployments are read, will read again");
                } else if f.in_doubt
                    && deploy_cfg.is_some()
                    && c.attempts as usize >= schedule.len()
                {
                    warn!(sink = name, event_id = %ev.id, attempt, %error, reconcile_in_s = in_secs,
                        "the last deploy attempt's outcome is unknown; the model's deployments are read before the delivery ends");
                } else {
                    warn!(sink = name, event_id = %ev.id, attempt, %error, retry_in_s = in_secs, "delivery failed, will retry");
                }
                Some("retry")
            }
            AttemptOutcome::Dead { error, .. } => {
                error!(sink = name, event_id = %ev.id, attempt, %error,
                    "delivery failed for good; kept as dead, replay with `loopwatch deliveries redeliver`");
                Some("dead")
            }
            AttemptOutcome::Deferred { .. } => Some("retry"),
            AttemptOutcome::Unknown { error } => {
                error!(sink = name, event_id = %ev.id, attempt, %error,
                    "deploy outcome unknown; kept with status unknown and never deployed again by itself: check the model's deployments, then `loopwatch deliveries redeliver` to reconcile again");
                Some("dead")
            }
        };
        if let Some(label) = label {
            self.metrics
                .deliveries
                .with_label_values(&[name, label])
                .inc();
        }
        Some(Recorded {
            delivery_id: c.delivery_id,
            token: c.token,
            outcome,
            deploy: update,
            facts,
        })
    }
}
