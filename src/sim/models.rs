//! The simulated models API (`/v1/models/...`): the models a deploy creates, their
//! deployments moving through statuses on the simulated clock (a script per deployment:
//! `BUILDING` -> `DEPLOYING` -> `ACTIVE`, or to a failure), promotion to an environment
//! and deactivation. Bodies have the shapes of the `baseten` package's models (`Models`,
//! `Deployments`, `Deployment`, `DeactivateResponse`), every required field present, so
//! `scripts/interop` can validate them.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Value, json};

use super::answers::Refusal;

/// The statuses a new deployment moves through by default, each from its offset after
/// creation: live a few seconds after the deploy.
pub const DEFAULT_SCRIPT: [(&str, Duration); 3] = [
    ("BUILDING", Duration::ZERO),
    ("DEPLOYING", Duration::from_millis(1500)),
    ("ACTIVE", Duration::from_secs(3)),
];

/// A model of the simulated team.
#[derive(Clone, Debug)]
pub(super) struct SimModel {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) created_at: DateTime<Utc>,
}

/// A deployment of a simulated model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDeployment {
    pub id: String,
    pub model_id: String,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub environment: Option<String>,
    pub is_production: bool,
    /// Not made by `POST .../checkpoints/deploy` (someone else's).
    pub foreign: bool,
    /// Deactivated through the API.
    pub deactivated: bool,
    script: Vec<(String, Duration)>,
    /// Set by a test: wins over the script.
    forced: Option<String>,
}

impl SimDeployment {
    /// The status at `now` by the script, unless forced or deactivated.
    pub fn status_at(&self, now: DateTime<Utc>) -> String {
        if let Some(s) = &self.forced {
            return s.clone();
        }
        if self.deactivated {
            return "INACTIVE".into();
        }
        let age = (now - self.created_at).to_std().unwrap_or_default();
        self.script
            .iter()
            .rev()
            .find(|(_, at)| *at <= age)
            .or(self.script.first())
            .map(|(s, _)| s.clone())
            .unwrap_or_else(|| "BUILDING".into())
    }
}

/// A promotion the simulated API accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub model_id: String,
    pub environment: String,
    pub deployment_id: String,
    pub scale_down_previous_deployment: bool,
}

/// Models, deployments, promotions and deactivations.
pub(super) struct Models {
    pub(super) models: Vec<SimModel>,
    pub(super) deployments: Vec<SimDeployment>,
    pub(super) script: Vec<(String, Duration)>,
    pub(super) promotions: Vec<Promotion>,
    pub(super) deactivations: Vec<(String, String)>,
    next: u64,
}

impl Default for Models {
    fn default() -> Self {
        Models {
            models: Vec::new(),
            deployments: Vec::new(),
            script: DEFAULT_SCRIPT
                .iter()
                .map(|(s, d)| (s.to_string(), *d))
                .collect(),
            promotions: Vec::new(),
            deactivations: Vec::new(),
            next: 0,
        }
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn not_found(what: &str) -> Refusal {
    Refusal::new(404, "NOT_FOUND", format!("{what} not found."))
}

impl Models {
    /// The model named `name`, created at `now` if missing: its id.
    pub(super) fn model(&mut self, name: &str, prefix: &str, now: DateTime<Utc>) -> String {
        if let Some(m) = self.models.iter().find(|m| m.name == name) {
            return m.id.clone();
        }
        self.next += 1;
        let id = format!("model_{prefix}{:04}", self.next);
        self.models.push(SimModel {
            id: id.clone(),
            name: name.into(),
            created_at: now,
        });
        id
    }

    /// A new deployment of `model_id` on the current script: its id.
    pub(super) fn deploy(
        &mut self,
        model_id: &str,
        prefix: &str,
        foreign: bool,
        now: DateTime<Utc>,
    ) -> String {
        self.next += 1;
        let id = format!("dep_{prefix}{:04}", self.next);
        let n = self
            .deployments
            .iter()
            .filter(|d| d.model_id == model_id)
            .count();
        self.deployments.push(SimDeployment {
            id: id.clone(),
            model_id: model_id.into(),
            name: format!("deployment-{}", n + 1),
            // Strictly later than any earlier one, even within a millisecond.
            created_at: now + TimeDelta::microseconds(self.next as i64),
            environment: None,
            is_production: false,
            foreign,
            deactivated: false,
            script: self.script.clone(),
            forced: None,
        });
        id
    }

    pub(super) fn force(&mut self, deployment_id: &str, status: Option<&str>) {
        if let Some(d) = self.deployments.iter_mut().find(|d| d.id == deployment_id) {
            d.forced = status.map(str::to_owned);
        }
    }

    pub(super) fn remove(&mut self, deployment_id: &str) {
        self.deployments.retain(|d| d.id != deployment_id);
    }

    fn deployment_json(&self, d: &SimDeployment, now: DateTime<Utc>) -> Value {
        let status = d.status_at(now);
        json!({
            "id": d.id,
            "created_at": time(d.created_at),
            "name": d.name,
            "model_id": d.model_id,
            "is_production": d.is_production,
            "is_development": false,
            "status": status,
            "active_replica_count": if status == "ACTIVE" { 1 } else { 0 },
            "autoscaling_settings": if status == "ACTIVE" {
                json!({"min_replica": 0, "max_replica": 1, "autoscaling_window": 60,
                    "scale_down_delay": 900, "concurrency_target": 1,
                    "target_utilization_percentage": 70, "target_in_flight_tokens": null})
            } else {
                Value::Null
            },
            "instance_type_name": "H100",
            "environment": d.environment,
            "labels": null,
            "request_backpressure_settings": {"policy": null},
        })
    }

    /// `GET /v1/models?name=`: the model named exactly so, or every model.
    pub(super) fn list(&self, query: &str) -> Result<Value, Refusal> {
        let name = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "name")
            .map(|(_, v)| v.into_owned());
        let models: Vec<Value> = self
            .models
            .iter()
            .filter(|m| name.as_ref().is_none_or(|n| *n == m.name))
            .map(|m| {
                let production = self
                    .deployments
                    .iter()
                    .find(|d| d.model_id == m.id && d.is_production)
                    .map(|d| d.id.clone());
                json!({
                    "id": m.id,
                    "created_at": time(m.created_at),
                    "name": m.name,
                    "deployments_count": self.deployments.iter().filter(|d| d.model_id == m.id).count(),
                    "production_deployment_id": production,
                    "development_deployment_id": null,
                    "instance_type_name": "H100",
                    "team_name": "Default Team",
                })
            })
            .collect();
        Ok(json!({ "models": models }))
    }

    fn model_exists(&self, model_id: &str) -> Result<(), Refusal> {
        if self.models.iter().any(|m| m.id == model_id) {
            Ok(())
        } else {
            Err(not_found("Model"))
        }
    }

    /// `GET /v1/models/{model_id}/deployments`.
    pub(super) fn deployments_of(
        &self,
        model_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        self.model_exists(model_id)?;
        let list: Vec<Value> = self
            .deployments
            .iter()
            .filter(|d| d.model_id == model_id)
            .map(|d| self.deployment_json(d, now))
            .collect();
        Ok(json!({ "deployments": list }))
    }

    /// `GET /v1/models/{model_id}/deployments/{deployment_id}`.
    pub(super) fn deployment(
        &self,
        model_id: &str,
        deployment_id: &str,
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        self.model_exists(model_id)?;
        self.deployments
            .iter()
            .find(|d| d.model_id == model_id && d.id == deployment_id)
            .map(|d| self.deployment_json(d, now))
            .ok_or_else(|| not_found("Deployment"))
    }

    /// `POST /v1/models/{model_id}/environments/{env}/promote` with a
    /// `PromoteToEnvironmentRequest`: the deployment takes the environment (and
    /// production, for `production`); the one that had it loses it.
    pub(super) fn promote(
        &mut self,
        model_id: &str,
        environment: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Value, Refusal> {
        self.model_exists(model_id)?;
        let body: Value = serde_json::from_slice(body)
            .map_err(|_| Refusal::new(422, "INVALID_REQUEST", "The body is not JSON."))?;
        let Some(deployment_id) = body.get("deployment_id").and_then(Value::as_str) else {
            return Err(Refusal::new(
                422,
                "INVALID_REQUEST",
                "deployment_id: a string is required.",
            ));
        };
        let scale_down = match body.get("scale_down_previous_deployment") {
            None => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Refusal::new(
                    422,
                    "INVALID_REQUEST",
                    "scale_down_previous_deployment: a boolean is required.",
                ));
            }
        };
        let Some(i) = self
            .deployments
            .iter()
            .position(|d| d.model_id == model_id && d.id == deployment_id)
        else {
            return Err(not_found("Deployment"));
        };
        if self.deployments[i].status_at(now) != "ACTIVE" {
            return Err(Refusal::new(
                400,
                "DEPLOYMENT_NOT_ACTIVE",
                "Only an active deployment can be promoted.",
            ));
        }
        // The one that held the environment loses it (promoting the holder again moves
        // nothing).
        for d in self.deployments.iter_mut().filter(|d| {
            d.model_id == model_id
                && d.id != deployment_id
                && d.environment.as_deref() == Some(environment)
        }) {
            d.environment = None;
            d.is_production = false;
            if scale_down {
                d.forced = Some("SCALED_TO_ZERO".into());
            }
        }
        let d = &mut self.deployments[i];
        d.environment = Some(environment.into());
        d.is_production = environment == "production";
        self.promotions.push(Promotion {
            model_id: model_id.into(),
            environment: environment.into(),
            deployment_id: deployment_id.into(),
            scale_down_previous_deployment: scale_down,
        });
        Ok(self.deployment_json(&self.deployments[i], now))
    }

    /// `POST /v1/models/{model_id}/deployments/{deployment_id}/deactivate`.
    pub(super) fn deactivate(
        &mut self,
        model_id: &str,
        deployment_id: &str,
    ) -> Result<Value, Refusal> {
        self.model_exists(model_id)?;
        let Some(d) = self
            .deployments
            .iter_mut()
            .find(|d| d.model_id == model_id && d.id == deployment_id)
        else {
            return Err(not_found("Deployment"));
        };
        let no_op = d.deactivated;
        d.deactivated = true;
        d.environment = None;
        d.is_production = false;
        self.deactivations
            .push((model_id.to_string(), deployment_id.to_string()));
        Ok(json!({"success": true, "no_op": no_op}))
    }
}
