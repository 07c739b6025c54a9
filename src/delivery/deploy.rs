//! The `baseten_deploy` sink: for a `checkpoint.completed` of a sampler checkpoint,
//! `POST /v1/loops/checkpoints/validate` (with `validate`), then
//! `POST /v1/loops/checkpoints/deploy`, through the same outbox, claims and retry
//! schedule as every sink (docs/events.md, "Deploys").
//!
//! Delivery sits below the API client, so it states what it needs ([`LoopsDeployer`])
//! and the wiring passes an implementation over the shared client (its token bucket,
//! timeouts and request metrics).
//!
//! The deploy route is not idempotent, and a lost answer is not a failure: so each
//! attempt reads the model's deployments and writes them to the deploy's pipeline row
//! *before* it sends the call (fenced by the delivery's claim token), and an attempt that
//! finds such a record left by an earlier one (a timeout, a 5xx, a cut-off body, a
//! crash) reconciles before anything else: exactly one new deployment that no other
//! pipeline recorded is the deploy (adopted, `reconciled`); none -> deploy again, or dead
//! when that was the last attempt; several -> `unknown`, never sent again by itself. The
//! last attempt's call is reconciled like any other (the outbox schedules a pass for it),
//! and a pass that only reconciles is no attempt of its own: a failing read is retried,
//! without end and without using up attempts, and never leads to a blind deploy.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use super::lifecycle::{
    checkpoint_created_at, checkpoint_created_at_text, deployed_event, deployed_event_by,
    lifecycle_event, lifecycle_event_with,
};
use super::{Failure, Sent};
use crate::config::{Approval, DeployConfig};
use crate::model::{CheckpointTarget, DeployRequest, Deployment, ModelDeployment, checkpoint_uri};
use crate::store::{Claimed, DeployRow, Intent, Pipelines, Store, StoredEvent};
use crate::template::{Template, compile_template};

/// A failed call to the Loops API, classified for the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// Another attempt may succeed (408, 429, 5xx, a timeout, a connection error).
    pub retryable: bool,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// `Retry-After`, when the answer carried one.
    pub retry_after: Option<Duration>,
    /// One line: the API's message or the transport's.
    pub message: String,
    /// No answer within the client's timeout.
    pub timed_out: bool,
}

impl CallError {
    /// An answer with a non-2xx `status`: 408, 429 and 5xx are worth another attempt; any
    /// other 4xx is final (the request itself is wrong); 1xx/3xx are retried like 5xx
    /// (a proxy in the way, not an answer about the checkpoint).
    pub fn status(status: u16, retry_after: Option<Duration>, message: String) -> Self {
        let final_ = (400..500).contains(&status) && !matches!(status, 408 | 429);
        CallError {
            retryable: !final_,
            status: Some(status),
            retry_after,
            message,
            timed_out: false,
        }
    }

    /// No answer (a refused or dropped connection): worth another attempt.
    pub fn transport(message: String) -> Self {
        CallError {
            retryable: true,
            status: None,
            retry_after: None,
            message,
            timed_out: false,
        }
    }

    /// No answer in time: worth another attempt.
    pub fn timeout(message: String) -> Self {
        CallError {
            timed_out: true,
            ..CallError::transport(message)
        }
    }

    /// A 2xx whose body is not what the route answers (cut off, unreadable): the call may
    /// have acted, so its outcome is unknown; a deploy reconciles before anything else.
    pub fn invalid(status: u16, message: String) -> Self {
        CallError {
            retryable: true,
            status: Some(status),
            retry_after: None,
            message,
            timed_out: false,
        }
    }

    /// The outbox's view: a final error makes the delivery dead at once.
    fn into_failure(self, step: &'static str) -> Failure {
        let timeout = self.timed_out;
        match (self.retryable, self.status) {
            (false, code) => Failure::Rejected {
                step,
                code,
                reason: self.message,
            },
            (true, Some(code)) => Failure::Status {
                code,
                retry_after: self.retry_after,
                body: format!("{step}: {}", self.message),
            },
            (true, None) if timeout => Failure::Timeout,
            (true, None) => Failure::Connect(format!("{step}: {}", self.message)),
        }
    }
}

/// What a deploy sink needs of the Loops API; the wiring implements it over the shared
/// client.
#[async_trait]
pub trait LoopsDeployer: Send + Sync {
    /// `POST /v1/loops/checkpoints/validate` for `checkpoint_path` (a sampler `bt://` URI),
    /// optionally for the run whose sampler would load it.
    async fn validate(&self, checkpoint_path: &str, run_id: Option<&str>) -> Result<(), CallError>;
    /// `POST /v1/loops/checkpoints/deploy`. Not idempotent.
    async fn deploy(&self, request: &DeployRequest) -> Result<Deployment, CallError>;
    /// `GET /v1/models?name=`: the id of the model named exactly `name`, if it exists.
    async fn find_model(&self, name: &str) -> Result<Option<String>, CallError>;
    /// `GET /v1/models/{model_id}/deployments`.
    async fn deployments(&self, model_id: &str) -> Result<Vec<ModelDeployment>, CallError>;
    /// `GET /v1/models/{model_id}/deployments/{deployment_id}` (404 when it vanished).
    async fn deployment(
        &self,
        model_id: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, CallError>;
    /// `POST /v1/models/{model_id}/environments/{environment}/promote`.
    async fn promote(
        &self,
        model_id: &str,
        environment: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, CallError>;
    /// `POST /v1/models/{model_id}/deployments/{deployment_id}/deactivate`.
    async fn deactivate(&self, model_id: &str, deployment_id: &str) -> Result<(), CallError>;
}

/// A configured deploy sink's settings, with its `model_name` template compiled.
pub struct DeploySink {
    pub cfg: DeployConfig,
    model_name: Template,
}

/// A deploy that happened: what `checkpoint.deployed` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployed {
    pub model_name: String,
    pub model_id: String,
    pub deployment_id: String,
    /// Found by reconciliation after an unknown outcome, not from the call's answer.
    pub reconciled: bool,
}

/// `data.deployment` of a lifecycle event (null where not known yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeploymentData {
    pub sink: String,
    pub model_name: Option<String>,
    pub model_id: Option<String>,
    pub deployment_id: Option<String>,
    pub status: Option<String>,
    pub environment: Option<String>,
    pub reconciled: bool,
    pub approved_by: Option<String>,
}

impl DeploymentData {
    pub fn deployed(sink: &str, d: &Deployed) -> Self {
        DeploymentData {
            sink: sink.into(),
            model_name: Some(d.model_name.clone()),
            model_id: Some(d.model_id.clone()),
            deployment_id: Some(d.deployment_id.clone()),
            reconciled: d.reconciled,
            ..Default::default()
        }
    }
}

/// How a deploy attempt ended, and whether a deploy call may have acted without its
/// outcome being known (a dead end then is `unknown`, not `failed`).
pub struct DeployAttempt {
    pub result: Result<Sent, Failure>,
    pub in_doubt: bool,
    /// Who approved the deploy (`approval = "before_deploy"`), for `checkpoint.deployed`.
    pub approved_by: Option<String>,
    /// It only reconciled a call an earlier attempt left in doubt, and sent nothing: it
    /// completes that attempt and is not counted as one.
    pub reconciled_only: bool,
}

impl DeployAttempt {
    fn known(result: Result<Sent, Failure>) -> Self {
        DeployAttempt {
            result,
            in_doubt: false,
            approved_by: None,
            reconciled_only: false,
        }
    }

    /// The end of an attempt that only reconciled an earlier call.
    fn reconciled(self) -> Self {
        DeployAttempt {
            reconciled_only: true,
            ..self
        }
    }

    /// Deployed (by the call, or found by reconciliation) for pipeline `row`.
    fn deployed(d: Deployed, row: &DeployRow) -> Self {
        DeployAttempt {
            approved_by: row
                .decided_by
                .clone()
                .filter(|_| row.decision.as_deref() == Some("approved")),
            ..DeployAttempt::known(Ok(Sent::Deployed(d)))
        }
    }
}

/// How far a deploy attempt got, for the outbox when the sink's `timeout` cuts the attempt
/// short: a cut during the reads of a reconciliation leaves the earlier call in doubt and
/// sends nothing; one before the deploy intent leaves nothing in doubt.
#[derive(Debug, Default)]
pub struct Progress(AtomicU8);

/// The steps of [`Progress`], in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Reading the pipeline (a call may be in doubt from an earlier attempt).
    Starting,
    /// Reading the model's deployments to reconcile an earlier call in doubt.
    Reconciling,
    /// No call in doubt: superseding, approval, validate, the reads before a call.
    Preparing,
    /// Recording the intent and calling deploy: the call may act.
    Calling,
}

impl Progress {
    fn set(&self, step: Step) {
        self.0.store(step as u8, Ordering::SeqCst);
    }

    /// The step the attempt reached.
    pub fn step(&self) -> Step {
        match self.0.load(Ordering::SeqCst) {
            0 => Step::Starting,
            1 => Step::Reconciling,
            2 => Step::Preparing,
            _ => Step::Calling,
        }
    }
}

/// The error kept while a call in doubt cannot be reconciled because `why`.
pub fn reconciling(why: impl std::fmt::Display) -> String {
    format!(
        "reconciling the deploy call in doubt: {why}; nothing is deployed until the model's deployments are read"
    )
}

/// What reconciliation found after a call whose outcome is unknown.
enum Reconciled {
    /// Exactly one new deployment: the call deployed it.
    Adopt(Deployed),
    /// No new deployment: the call did not deploy.
    Nothing,
    /// Several: which one is ours cannot be told.
    Ambiguous(String),
}

impl DeploySink {
    pub fn new(cfg: DeployConfig) -> anyhow::Result<Self> {
        let model_name =
            compile_template(&cfg.model_name).map_err(|e| anyhow::anyhow!("model_name: {e}"))?;
        Ok(DeploySink { cfg, model_name })
    }

    /// The deploy request for `event` (a completed sampler checkpoint); an error is final.
    pub fn request(&self, event: &StoredEvent) -> Result<DeployRequest, Failure> {
        let rejected = |reason: String| Failure::Rejected {
            step: "model_name",
            code: None,
            reason,
        };
        if event.checkpoint_target != CheckpointTarget::Sampler.as_str() {
            return Err(Failure::Rejected {
                step: "deploy",
                code: None,
                reason: format!(
                    "checkpoint {} is a {} checkpoint; only sampler checkpoints deploy",
                    event.checkpoint_id, event.checkpoint_target
                ),
            });
        }
        let body = crate::json::parse(&event.body)
            .map_err(|e| rejected(format!("stored event body is not JSON: {e}")))?;
        let model_name = self
            .model_name
            .render(&body)
            .map_err(|e| rejected(format!("cannot render: {e}")))?
            .trim()
            .to_string();
        if model_name.is_empty() {
            return Err(rejected(format!(
                "{:?} renders empty for checkpoint {}",
                self.cfg.model_name, event.checkpoint_id
            )));
        }
        Ok(DeployRequest {
            checkpoint_ids: vec![event.checkpoint_id.clone()],
            model_name,
            instance_type_id: self.cfg.instance_type_id.clone(),
            hf_secret_name: self.cfg.hf_secret_name.clone(),
        })
    }

    /// One attempt of the claimed delivery `c` at sink `sink`, of at most `budget`:
    /// reconcile a call left in doubt, then supersede (`latest_only`), validate, read the
    /// model's deployments, record them, and only then deploy. A pass after the last
    /// attempt only reconciles. `progress` tells the outbox how far it got.
    pub async fn attempt(
        &self,
        api: &dyn LoopsDeployer,
        store: &dyn Store,
        sink: &str,
        c: &Claimed,
        budget: u32,
        progress: &Progress,
    ) -> DeployAttempt {
        let now = chrono::Utc::now();
        let created = checkpoint_created_at_text(&c.event);
        let row = match store.deploy_begin(c, sink, created.as_deref(), now).await {
            Ok(Some(row)) => row,
            Ok(None) => return DeployAttempt::known(Err(Failure::Stale)),
            Err(e) => return DeployAttempt::known(Err(Failure::Store(e.to_string()))),
        };
        let in_doubt = row.in_doubt_before.is_some();
        let request = match self.request(&c.event) {
            Ok(r) => r,
            Err(f) => {
                return DeployAttempt {
                    in_doubt,
                    ..DeployAttempt::known(Err(f))
                };
            }
        };
        if let Some(before) = &row.in_doubt_before {
            progress.set(Step::Reconciling);
            let model = row.model_name.as_deref().unwrap_or(&request.model_name);
            match reconcile(api, store, c.delivery_id, model, before).await {
                Ok(Reconciled::Adopt(d)) => {
                    return DeployAttempt::deployed(d, &row).reconciled();
                }
                Ok(Reconciled::Ambiguous(why)) => {
                    return DeployAttempt {
                        in_doubt: true,
                        ..DeployAttempt::known(Ok(Sent::Ambiguous(why)))
                    }
                    .reconciled();
                }
                // Nothing was deployed: from here on this attempt is a first one.
                Ok(Reconciled::Nothing) => match store.deploy_clear_intent(c, now).await {
                    Ok(true) => {}
                    Ok(false) => return DeployAttempt::known(Err(Failure::Stale)),
                    Err(e) => {
                        return DeployAttempt {
                            in_doubt,
                            ..DeployAttempt::known(Err(Failure::Store(e.to_string())))
                        }
                        .reconciled();
                    }
                },
                // Still in doubt: read again later, whatever attempts are left; nothing
                // is sent meanwhile.
                Err(f) => {
                    return DeployAttempt {
                        in_doubt,
                        ..DeployAttempt::known(Err(Failure::Unknown(reconciling(f))))
                    }
                    .reconciled();
                }
            }
        }
        progress.set(Step::Preparing);
        if self.cfg.latest_only
            && let Some(created) = checkpoint_created_at(&c.event)
        {
            match store
                .newer_deploy(sink, &c.event.run_id, c.delivery_id, created)
                .await
            {
                Ok(Some(name)) => {
                    return DeployAttempt::known(Ok(Sent::Superseded(format!(
                        "superseded by {name}, a newer checkpoint of run {}",
                        c.event.run_id
                    ))));
                }
                Ok(None) => {}
                Err(e) => return DeployAttempt::known(Err(Failure::Store(e.to_string()))),
            }
        }
        // The last attempt's call was in doubt and did not deploy: no attempt is left.
        if c.attempts >= budget {
            let last = row.error.as_deref().map(|e| format!(" (last error: {e})"));
            return DeployAttempt::known(Err(Failure::Exhausted(format!(
                "no deployment was made after {} attempts: the model's deployments show none new since the last call{}",
                c.attempts,
                last.unwrap_or_default()
            ))))
            .reconciled();
        }
        // The gate: nothing is validated or deployed before a person approves (a rejected
        // deploy re-queued with `deliveries redeliver` asks again).
        if self.cfg.approval == Approval::BeforeDeploy
            && row.decision.as_deref() != Some("approved")
        {
            return DeployAttempt::known(Ok(Sent::AwaitingApproval(request.model_name)));
        }
        if self.cfg.validate {
            let path = checkpoint_uri(
                &c.event.run_id,
                &CheckpointTarget::Sampler,
                &c.event.checkpoint_name,
            )
            .expect("a sampler checkpoint has a URI");
            // Without `run_id`: that asks whether a run's live sampler can load it; a
            // deploy creates its own deployment (the path names the run).
            if let Err(e) = api.validate(&path, None).await {
                return DeployAttempt::known(Err(failure("validate", e)));
            }
        }
        // What the model has before the call, written before the call is sent.
        let (model_id, before) = match model_deployments(api, &request.model_name).await {
            Ok(found) => found,
            Err(f) => return DeployAttempt::known(Err(f)),
        };
        let before: Vec<String> = before.into_iter().map(|d| d.id).collect();
        progress.set(Step::Calling);
        match store
            .deploy_intent(c, &request.model_name, model_id.as_deref(), &before, now)
            .await
        {
            Ok(Intent::Recorded) => {}
            Ok(Intent::Stale) => return DeployAttempt::known(Err(Failure::Stale)),
            Ok(Intent::Blocked { checkpoint, .. }) => {
                return DeployAttempt::known(Err(Failure::Deferred(format!(
                    "waiting: the deploy of {checkpoint} to model {} is being reconciled",
                    request.model_name
                ))));
            }
            Err(e) => return DeployAttempt::known(Err(Failure::Store(e.to_string()))),
        }
        match api.deploy(&request).await {
            Ok(d) => DeployAttempt::deployed(
                Deployed {
                    model_name: request.model_name,
                    model_id: d.model_id,
                    deployment_id: d.deployment_id,
                    reconciled: false,
                },
                &row,
            ),
            // A final 4xx: the request was refused, nothing was deployed.
            Err(e) if !e.retryable => DeployAttempt::known(Err(failure("deploy", e))),
            // 408, 429, 5xx, a timeout, a lost connection, a cut-off answer: reconciled
            // at the next attempt before anything else (which waits as any retry does,
            // `Retry-After` included).
            Err(e) => DeployAttempt {
                in_doubt: true,
                ..DeployAttempt::known(Err(failure(
                    "deploy (outcome unknown, reconciled before any retry)",
                    e,
                )))
            },
        }
    }
}

/// The id of the model named `name` and its deployments (none when it does not exist).
async fn model_deployments(
    api: &dyn LoopsDeployer,
    name: &str,
) -> Result<(Option<String>, Vec<ModelDeployment>), Failure> {
    let model_id = api
        .find_model(name)
        .await
        .map_err(|e| read_failure("models", e))?;
    let Some(id) = model_id else {
        return Ok((None, Vec::new()));
    };
    let deployments = api
        .deployments(&id)
        .await
        .map_err(|e| read_failure("deployments", e))?;
    Ok((Some(id), deployments))
}

/// After a call whose outcome is unknown: which deployments of `model_name` are new
/// since `before`, leaving out those another pipeline recorded.
async fn reconcile(
    api: &dyn LoopsDeployer,
    store: &dyn Pipelines,
    delivery_id: i64,
    model_name: &str,
    before: &[String],
) -> Result<Reconciled, Failure> {
    let (Some(model_id), now) = model_deployments(api, model_name).await? else {
        return Ok(Reconciled::Nothing);
    };
    let recorded = store
        .recorded_deployments(&model_id)
        .await
        .map_err(|e| Failure::Store(e.to_string()))?;
    let others: std::collections::HashSet<&str> = recorded
        .iter()
        .filter(|(d, _)| *d != delivery_id)
        .map(|(_, id)| id.as_str())
        .collect();
    let new: Vec<&ModelDeployment> = now
        .iter()
        .filter(|d| !before.contains(&d.id) && !others.contains(d.id.as_str()))
        .collect();
    Ok(match new.as_slice() {
        [] => Reconciled::Nothing,
        [one] => Reconciled::Adopt(Deployed {
            model_name: model_name.into(),
            model_id,
            deployment_id: one.id.clone(),
            reconciled: true,
        }),
        many => Reconciled::Ambiguous(format!(
            "ambiguous: {} new deployments of {model_name}",
            many.len()
        )),
    })
}

/// A read of the models API that failed: never final (an attempt that cannot read the
/// model's deployments sends nothing, and tries again per the schedule).
pub(super) fn read_failure(step: &'static str, e: CallError) -> Failure {
    Failure::Unknown(format!("cannot read the model's {step}: {}", e.message))
}

pub(super) fn failure(step: &'static str, e: CallError) -> Failure {
    e.into_failure(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn completed() -> StoredEvent {
        StoredEvent {
            seq: 7,
            id: "evt_c".into(),
            kind: "checkpoint.completed".into(),
            target: "qwen".into(),
            checkpoint_id: "ck1".into(),
            checkpoint_name: "step-100".into(),
            run_id: "k4".into(),
            checkpoint_target: "sampler".into(),
            detected_at: Utc::now(),
            body: r#"{"type":"checkpoint.completed","timestamp":"2026-11-26T23:01:02.345Z","data":{"event_id":"evt_c","target":"qwen","uri":"bt://loops:k4/sampler_weights/step-100","checkpoint":{"id":"ck1","created_at":"2026-11-26T23:00:00Z","z":1,"a":2}}}"#.into(),
        }
    }

    fn sink(model_name: &str) -> DeploySink {
        DeploySink::new(DeployConfig::new(model_name, "H100", "hf")).unwrap()
    }

    #[test]
    fn the_request_names_the_checkpoint_and_renders_the_model_name() {
        let r = sink("{{ data.target }}-{{ data.checkpoint.id }}")
            .request(&completed())
            .unwrap();
        assert_eq!(r.checkpoint_ids, vec!["ck1".to_string()]);
        assert_eq!(r.model_name, "qwen-ck1");
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"checkpoint_ids": ["ck1"], "model_name": "qwen-ck1",
                "instance_type_id": "H100", "hf_secret_name": "hf"})
        );
        assert!(matches!(
            sink("{{ data.nothing }}").request(&completed()),
            Err(Failure::Rejected { .. })
        ));
        let mut trainer = completed();
        trainer.checkpoint_target = "trainer".into();
        assert!(sink("x").request(&trainer).is_err());
    }

    #[test]
    fn the_deployed_event_keeps_the_data_in_order_and_adds_the_deployment() {
        let d = Deployed {
            model_name: "qwen".into(),
            model_id: "m1".into(),
            deployment_id: "d1".into(),
            reconciled: false,
        };
        let e = deployed_event(&completed(), "deploy", &d, Utc::now()).unwrap();
        assert_eq!(e.id, crate::model::deployed_event_id("evt_c", "deploy"));
        assert_eq!(
            e.id,
            deployed_event(&completed(), "deploy", &d, Utc::now())
                .unwrap()
                .id
        );
        assert_ne!(e.id, crate::model::deployed_event_id("evt_c", "other"));
        assert_eq!(e.kind, "checkpoint.deployed");
        let v: serde_json::Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(v["type"], "checkpoint.deployed");
        assert_eq!(v["data"]["event_id"], e.id.as_str());
        assert_eq!(v["data"]["uri"], "bt://loops:k4/sampler_weights/step-100");
        assert_eq!(
            v["data"]["deployment"],
            serde_json::json!({"sink": "deploy", "model_name": "qwen", "model_id": "m1",
                "deployment_id": "d1", "status": null, "environment": null, "reconciled": false,
                "approved_by": null})
        );
        // Members in their order, the checkpoint object as received.
        assert!(
            e.body.contains(r#"{"event_id":"#) && e.body.contains(r#""z":1,"a":2"#),
            "{}",
            e.body
        );
        assert_eq!(
            checkpoint_created_at(&completed()).unwrap().to_rfc3339(),
            "2026-11-26T23:00:00+00:00"
        );
    }

    #[test]
    fn api_errors_are_classified_per_status() {
        for (code, retry) in [
            (400, false),
            (404, false),
            (410, false),
            (422, false),
            (408, true),
            (429, true),
            (500, true),
            (503, true),
        ] {
            assert_eq!(
                CallError::status(code, None, String::new()).retryable,
                retry,
                "{code}"
            );
        }
        assert!(matches!(
            failure("validate", CallError::status(400, None, "bad".into())),
            Failure::Rejected {
                step: "validate",
                code: Some(400),
                ..
            }
        ));
        assert!(matches!(
            failure("deploy", CallError::timeout("request timed out".into())),
            Failure::Timeout
        ));
    }
}
