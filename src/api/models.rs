//! The models API beside the Loops routes (`baseten` package 0.13.1: `Models`,
//! `Deployments`, `Deployment`, `PromoteToEnvironmentRequest`, `DeactivateResponse`):
//! what the deploy lifecycle reads and changes. The same request path as every route
//! ([`Client::send`]: one token bucket, the timeout, the body cap), and only the fields
//! loopwatch uses are read; the rest of each object passes unread.

use serde::{Deserialize, Serialize};
use url::Url;

use super::{Client, Error};
use crate::model::ModelDeployment;

/// A model of `GET /v1/models` (`Model`), the fields loopwatch reads.
#[derive(Deserialize)]
struct WireModel {
    id: String,
    name: String,
}

#[derive(Deserialize)]
struct WireModels {
    models: Vec<WireModel>,
}

/// `Deployment`, the fields loopwatch reads. `status` is any string (`Literal[...] | str`).
#[derive(Deserialize)]
struct WireDeployment {
    id: String,
    model_id: String,
    status: String,
    #[serde(default)]
    environment: Option<String>,
    #[serde(default)]
    is_production: bool,
    created_at: String,
}

impl From<WireDeployment> for ModelDeployment {
    fn from(w: WireDeployment) -> Self {
        ModelDeployment {
            id: w.id,
            model_id: w.model_id,
            status: w.status,
            environment: w.environment,
            is_production: w.is_production,
            created_at: w.created_at,
        }
    }
}

#[derive(Deserialize)]
struct WireDeployments {
    deployments: Vec<WireDeployment>,
}

/// `PromoteToEnvironmentRequest`: the deployment, and the previous one scaled down.
#[derive(Serialize)]
struct WirePromote<'a> {
    deployment_id: &'a str,
    scale_down_previous_deployment: bool,
}

/// The id of the model named exactly `name` in `body` (`Models`), if any.
pub fn decode_model_id(body: &[u8], name: &str) -> Result<Option<String>, String> {
    let w: WireModels = serde_json::from_slice(body).map_err(|e| format!("models: {e}"))?;
    Ok(w.models.into_iter().find(|m| m.name == name).map(|m| m.id))
}

pub fn decode_deployments(body: &[u8]) -> Result<Vec<ModelDeployment>, String> {
    let w: WireDeployments =
        serde_json::from_slice(body).map_err(|e| format!("deployments: {e}"))?;
    Ok(w.deployments.into_iter().map(Into::into).collect())
}

pub fn decode_deployment(body: &[u8]) -> Result<ModelDeployment, String> {
    let w: WireDeployment = serde_json::from_slice(body).map_err(|e| format!("deployment: {e}"))?;
    Ok(w.into())
}

impl Client {
    /// `.../v1/models/{segments...}`, each segment percent-encoded.
    fn models_url(&self, segments: &[&str]) -> Url {
        let mut url = self.models.clone();
        {
            let mut path = url
                .path_segments_mut()
                .expect("an http(s) URL has path segments");
            for s in segments {
                path.push(s);
            }
        }
        url
    }

    /// The id of the model named exactly `name`, or `None` when there is none yet.
    pub async fn find_model(&self, name: &str) -> Result<Option<String>, Error> {
        let mut url = self.models_url(&[]);
        url.query_pairs_mut().append_pair("name", name);
        let (bytes, _share) = self.send(self.http.get(url)).await?;
        decode_model_id(&bytes, name).map_err(Error::Decode)
    }

    /// Every deployment of model `model_id`.
    pub async fn deployments(&self, model_id: &str) -> Result<Vec<ModelDeployment>, Error> {
        let url = self.models_url(&[model_id, "deployments"]);
        let (bytes, _share) = self.send(self.http.get(url)).await?;
        decode_deployments(&bytes).map_err(Error::Decode)
    }

    /// One deployment; a vanished one is a 404 [`Error::Status`].
    pub async fn deployment(
        &self,
        model_id: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, Error> {
        let url = self.models_url(&[model_id, "deployments", deployment_id]);
        let (bytes, _share) = self.send(self.http.get(url)).await?;
        decode_deployment(&bytes).map_err(Error::Decode)
    }

    /// Promote `deployment_id` to `environment`, scaling the previous one down.
    pub async fn promote(
        &self,
        model_id: &str,
        environment: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, Error> {
        let url = self.models_url(&[model_id, "environments", environment, "promote"]);
        let body = WirePromote {
            deployment_id,
            scale_down_previous_deployment: true,
        };
        let (bytes, _share) = self
            .send(super::post_json(self.http.post(url), &body))
            .await?;
        decode_deployment(&bytes).map_err(Error::Decode)
    }

    /// Deactivate a deployment (`DeactivateResponse`; its body is not needed).
    pub async fn deactivate(&self, model_id: &str, deployment_id: &str) -> Result<(), Error> {
        let url = self.models_url(&[model_id, "deployments", deployment_id, "deactivate"]);
        self.send(self.http.post(url)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"{"id":"d1","created_at":"2026-12-04T10:00:00Z","name":"deployment-1",
        "model_id":"m1","is_production":false,"is_development":false,"status":"BRAND_NEW_STATUS",
        "active_replica_count":0,"autoscaling_settings":null,"instance_type_name":"H100",
        "environment":null,"request_backpressure_settings":{"policy":null}}"#;

    #[test]
    fn a_deployment_decodes_with_any_status_and_extra_fields() {
        let d = decode_deployment(DEPLOYMENT.as_bytes()).unwrap();
        assert_eq!(
            (d.id.as_str(), d.model_id.as_str(), d.status.as_str()),
            ("d1", "m1", "BRAND_NEW_STATUS")
        );
        assert_eq!(d.environment, None);
        let list = format!(r#"{{"deployments":[{DEPLOYMENT}]}}"#);
        assert_eq!(decode_deployments(list.as_bytes()).unwrap().len(), 1);
        assert!(decode_deployment(br#"{"id":"d1"}"#).is_err());
    }

    #[test]
    fn only_the_exact_name_is_the_model() {
        let body = br#"{"models":[{"id":"m0","name":"qwen-2"},{"id":"m1","name":"qwen"}]}"#;
        assert_eq!(decode_model_id(body, "qwen").unwrap(), Some("m1".into()));
        assert_eq!(decode_model_id(body, "qwe").unwrap(), None);
        assert_eq!(decode_model_id(br#"{"models":[]}"#, "qwen").unwrap(), None);
    }
}
