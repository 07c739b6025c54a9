//! The Loops API as `baseten_deploy` sinks need it ([`LoopsDeployer`]), over the one
//! shared client: its token bucket, timeout, error classification and
//! `loopwatch_api_requests_total`. Wiring between `api` and `delivery`, which may not
//! know each other, so it lives with `app`.

use std::future::Future;
use std::sync::Arc;

use crate::api;
use crate::delivery::deploy::{CallError, LoopsDeployer};
use crate::metrics::Metrics;
use crate::model::{DeployRequest, Deployment, ModelDeployment};

/// The Loops API as `baseten_deploy` sinks need it, over the shared client (its token
/// bucket, timeout and `loopwatch_api_requests_total`).
pub fn deployer(client: Arc<api::Client>, metrics: Arc<Metrics>) -> Arc<dyn LoopsDeployer> {
    Arc::new(ApiDeployer { client, metrics })
}

struct ApiDeployer {
    client: Arc<api::Client>,
    metrics: Arc<Metrics>,
}

/// Counts one request in `loopwatch_api_requests_total` when it ends, and as `timeout`
/// when it never does (the sink's timeout dropped it mid-call): every call is counted.
struct Counted<'a> {
    metrics: &'a Metrics,
    endpoint: api::Endpoint,
    code: Option<String>,
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let code = self.code.take().unwrap_or_else(|| "timeout".into());
        self.metrics.api_request(self.endpoint.label(), &code);
    }
}

impl ApiDeployer {
    /// Run one call of `endpoint`, counted whatever becomes of it.
    async fn call<T>(
        &self,
        endpoint: api::Endpoint,
        request: impl Future<Output = Result<T, api::Error>>,
    ) -> Result<T, CallError> {
        let mut counted = Counted {
            metrics: &self.metrics,
            endpoint,
            code: None,
        };
        let r = request.await;
        counted.code = Some(match &r {
            Ok(_) => "200".to_string(),
            Err(e) => e.code_label(),
        });
        r.map_err(call_error)
    }
}

#[async_trait::async_trait]
impl LoopsDeployer for ApiDeployer {
    async fn validate(&self, path: &str, run_id: Option<&str>) -> Result<(), CallError> {
        self.call(api::Endpoint::Validate, self.client.validate(path, run_id))
            .await
    }

    async fn deploy(&self, request: &DeployRequest) -> Result<Deployment, CallError> {
        self.call(api::Endpoint::Deploy, self.client.deploy(request))
            .await
    }

    async fn find_model(&self, name: &str) -> Result<Option<String>, CallError> {
        self.call(api::Endpoint::Models, self.client.find_model(name))
            .await
    }

    async fn deployments(&self, model_id: &str) -> Result<Vec<ModelDeployment>, CallError> {
        self.call(
            api::Endpoint::Deployments,
            self.client.deployments(model_id),
        )
        .await
    }

    async fn deployment(
        &self,
        model_id: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, CallError> {
        self.call(
            api::Endpoint::Deployment,
            self.client.deployment(model_id, deployment_id),
        )
        .await
    }

    async fn promote(
        &self,
        model_id: &str,
        environment: &str,
        deployment_id: &str,
    ) -> Result<ModelDeployment, CallError> {
        self.call(
            api::Endpoint::Promote,
            self.client.promote(model_id, environment, deployment_id),
        )
        .await
    }

    async fn deactivate(&self, model_id: &str, deployment_id: &str) -> Result<(), CallError> {
        self.call(
            api::Endpoint::Deactivate,
            self.client.deactivate(model_id, deployment_id),
        )
        .await
    }
}

/// The outbox's classification of a client error (docs/events.md, "baseten_deploy").
fn call_error(e: api::Error) -> CallError {
    match e {
        // The stable `details.reason` (`NO_LORA`) kept beside the message: it is what
        // the Loops SDK matches on, and what says why a checkpoint cannot deploy.
        api::Error::Status {
            code,
            retry_after,
            message,
            reason,
            ..
        } => {
            let message = match reason {
                Some(r) if !message.contains(r.as_str()) => format!("{message} ({r})"),
                _ => message,
            };
            CallError::status(code, retry_after, message)
        }
        api::Error::Timeout => CallError::timeout(e.to_string()),
        api::Error::Connect(_) | api::Error::Transport(_) => CallError::transport(e.to_string()),
        // A 2xx that is not the documented answer (or one not read for want of room: a
        // deploy's answer is small and never waits for room): the call may have acted; a
        // deploy reconciles before anything else is sent.
        api::Error::Decode(_) | api::Error::TooLarge(_) | api::Error::OverBudget(_) => {
            CallError::invalid(200, format!("the answer is not as documented: {e}"))
        }
    }
}
