//! `/metrics`, `/healthz` and `/readyz` over axum, and the status page's routes
//! ([`crate::status::routes`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::delivery::Outbox;
use crate::health::Health;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ServerState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// `None` while the store opens (the backlog gauges are not read then).
    pub outbox: Option<Arc<Outbox>>,
    /// The status page's facts; `None` while the store opens (it answers 503 then).
    pub status: Option<Arc<crate::status::Status>>,
}

pub fn router(state: ServerState) -> Router {
    let status = crate::status::routes::router(state.status.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(status)
}

async fn metrics(State(s): State<ServerState>) -> Response {
    // The backlog gauges are read from the store at scrape time, so they are never stale.
    if let Some(outbox) = &s.outbox {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), outbox.refresh_backlog()).await;
    }
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        s.metrics.render(),
    )
        .into_response()
}

async fn healthz(State(s): State<ServerState>) -> Response {
    match s.health.live() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(s): State<ServerState>) -> Response {
    match s.health.ready() {
        Ok(msg) => (StatusCode::OK, format!("{msg}\n")).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
