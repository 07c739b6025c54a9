//! The test kit: a simulated Baseten Loops API and a webhook receiver, both real HTTP
//! servers on loopback sockets.
//!
//! Used by `loopwatch demo`, the integration tests and the benchmarks, so the daemon can be
//! exercised with no account and no network. The simulated API follows
//! `loops-list-checkpoints.openapi.yaml` (one filter, `{"checkpoints": [...]}`, both auth
//! schemes) and, for the other routes (source, files, validate, deploy) and where the
//! two disagree, the pydantic models of Baseten's `baseten` package (`scripts/interop`
//! checks it against them). It can misbehave on demand, per route, through [`Fault`]s, the way real upstreams and the
//! proxies in front of them do. The [`Receiver`] stands at the other end of a webhook sink.
//!
//! - [`SimApi`] (here): starts and stops the simulated API's server.
//! - [`state`]: what the API serves ([`SimHandle`]): checkpoints, training runs, the clock.
//! - [`routes`]: the HTTP routes and the JSON they answer; `answers`: what the routes
//!   beside the listing answer (source, files, validate, deploy) or why they refuse.
//! - [`faults`]: the misbehaviours, queued per [`Route`].
//! - `json`: the JSON answers routes and faults share (error objects).
//! - [`receiver`]: the webhook receiver.
//!
//! Time is the wall clock plus an offset ([`SimHandle::advance_clock`]), and training runs
//! are materialised from it lazily on each request, so tests never need to sleep and the
//! simulator never spawns anything but its server task.

mod answers;
pub mod faults;
mod json;
pub mod models;
pub mod receiver;
pub mod routes;
pub mod state;

#[cfg(test)]
mod tests;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use faults::{Fault, Paging};
pub use models::{Promotion, SimDeployment};
pub use receiver::{Answer, Received, Receiver, ReceiverBuilder, Signature};
pub use routes::CHECKPOINTS_PATH;
pub use state::{DEFAULT_BASE_MODEL, Deploy, LOG_ENV, STEPS_PER_SAVE, SimFile, SimHandle};

/// How long [`SimApi::shutdown`] (and [`Receiver::shutdown`]) wait for open connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// An endpoint of the simulated API, e.g. for a fault that targets it
/// ([`SimHandle::push_fault_to`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// `GET /v1/loops/checkpoints`: the listing.
    Checkpoints,
    /// `GET /v1/loops/checkpoints/{id}/source`: s3 or a volume.
    Source,
    /// `GET /v1/loops/checkpoints/{id}/files?page_size&page_token`: presigned files, paged.
    Files,
    /// `POST /v1/loops/checkpoints/validate`.
    Validate,
    /// `POST /v1/loops/checkpoints/deploy`.
    Deploy,
    /// `GET /v1/models?name=`.
    Models,
    /// `GET /v1/models/{model_id}/deployments`.
    Deployments,
    /// `GET /v1/models/{model_id}/deployments/{deployment_id}`.
    Deployment,
    /// `POST /v1/models/{model_id}/environments/{env}/promote`.
    Promote,
    /// `POST /v1/models/{model_id}/deployments/{deployment_id}/deactivate`.
    Deactivate,
}

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Checkpoints,
        Route::Source,
        Route::Files,
        Route::Validate,
        Route::Deploy,
        Route::Models,
        Route::Deployments,
        Route::Deployment,
        Route::Promote,
        Route::Deactivate,
    ];

    /// The route's path, as the router matches it.
    pub fn path(self) -> &'static str {
        match self {
            Route::Checkpoints => CHECKPOINTS_PATH,
            Route::Source => "/v1/loops/checkpoints/{id}/source",
            Route::Files => "/v1/loops/checkpoints/{id}/files",
            Route::Validate => "/v1/loops/checkpoints/validate",
            Route::Deploy => "/v1/loops/checkpoints/deploy",
            Route::Models => "/v1/models",
            Route::Deployments => "/v1/models/{model_id}/deployments",
            Route::Deployment => "/v1/models/{model_id}/deployments/{deployment_id}",
            Route::Promote => "/v1/models/{model_id}/environments/{environment}/promote",
            Route::Deactivate => "/v1/models/{model_id}/deployments/{deployment_id}/deactivate",
        }
    }

    /// A short name (`list`, `source`, `files`, `validate`, `deploy`), as in the
    /// simulator's log and loopwatch's `endpoint` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Route::Checkpoints => "list",
            Route::Source => "source",
            Route::Files => "files",
            Route::Validate => "validate",
            Route::Deploy => "deploy",
            Route::Models => "models",
            Route::Deployments => "deployments",
            Route::Deployment => "deployment",
            Route::Promote => "promote",
            Route::Deactivate => "deactivate",
        }
    }
}

/// A running simulated API; dropping it stops the server too.
pub struct SimApi {
    addr: SocketAddr,
    handle: SimHandle,
    server: Server,
}

impl SimApi {
    /// Bind 127.0.0.1 on an ephemeral port and serve. With `api_key`, every request must
    /// carry `Authorization: Bearer <key>` or `Authorization: Api-Key <key>`, else 401.
    pub async fn start(api_key: Option<String>) -> io::Result<SimApi> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let handle = SimHandle::new(api_key);
        let stop = CancellationToken::new();
        let app = routes::router(handle.clone(), stop.clone());
        let server = Server::spawn(listener, app, stop, "simulated loops api");
        Ok(SimApi {
            addr,
            handle,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, to be used as the API base URL.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle to change what the API serves while it runs.
    pub fn handle(&self) -> SimHandle {
        self.handle.clone()
    }

    /// Stop accepting, cut short delayed and streaming answers, and wait (at most
    /// [`SHUTDOWN_GRACE`]) for open connections to finish.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// An axum server task with graceful shutdown, bounded by [`SHUTDOWN_GRACE`]; dropping it
/// stops the server (without waiting).
struct Server {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serve `app` on `listener` until `stop` is cancelled. `stop` should also cut short
    /// whatever the handlers wait for, or graceful shutdown waits for it.
    fn spawn(
        listener: TcpListener,
        app: axum::Router,
        stop: CancellationToken,
        name: &'static str,
    ) -> Server {
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%error, "{name} stopped with an error");
            }
        });
        Server {
            stop,
            task: Some(task),
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(mut task) = self.task.take() {
            // A client that stops reading mid-body would otherwise hold shutdown forever.
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
