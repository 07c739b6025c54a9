//! The status page's routes: `GET /`, `GET /targets/{name}` (HTML), `GET /api/v1/status`
//! and `GET /api/v1/targets/{name}` (JSON). Only GETs: nothing over HTTP changes anything.
//! Every answer is `no-store`, and HTML goes out with a Content-Security-Policy that runs
//! no script at all (the page has none), so even a string that escaped escaping could not.

use std::sync::Arc;

use askama::Template;
use axum::Json;
use axum::Router;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::page::{IndexPage, MessagePage, TargetPage};
use super::{PageQuery, Status, StatusError, StatusReport, TargetReport};

/// `None` while the store opens (the daemon answers probes before it is open).
type Shared = Option<Arc<Status>>;

pub fn router(status: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/targets/{name}", get(target))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/targets/{name}", get(api_target))
        .with_state(status)
}

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn html(code: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(body) => {
            let mut r = (code, Html(body)).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            );
            r
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the status page: {e}\n"),
        )
            .into_response(),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Response {
    let mut r = Json(v).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// 503 while the store opens or does not answer; HTML or a JSON `{"error"}`.
fn unavailable(why: String, as_json: bool) -> Response {
    if as_json {
        let mut r = json(&serde_json::json!({ "error": why }));
        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        return r;
    }
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        MessagePage::new("Status unavailable", why, "–", "–"),
    )
}

/// The page's query (`JSON`: for the API). One that does not parse is answered 400 saying
/// what is wrong with it, as HTML or as a JSON `{"error"}` (axum's own answer was plain
/// text).
struct PageQ<const JSON: bool>(PageQuery);

impl<S: Send + Sync, const JSON: bool> FromRequestParts<S> for PageQ<JSON> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        let rejection = match Query::<PageQuery>::from_request_parts(parts, state).await {
            Ok(Query(q)) => return Ok(PageQ(q)),
            Err(r) => r,
        };
        let why = format!(
            "{}; e.g. ?offset=0&limit=100&q=qwen",
            super::clean(&rejection.body_text(), &[])
        );
        Err(if JSON {
            let mut r = json(&serde_json::json!({ "error": why }));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        } else {
            html(
                StatusCode::BAD_REQUEST,
                MessagePage::new("Bad query", why, "–", "–"),
            )
        })
    }
}

fn opening() -> String {
    "the store is opening (or out of reach at start); /readyz says why. Try again shortly.".into()
}

fn failed(e: StatusError) -> String {
    format!("{e}; /readyz says whether the store is reachable")
}

async fn index(State(s): State<Shared>, PageQ(q): PageQ<false>) -> Response {
    let Some(s) = s else {
        return unavailable(opening(), false);
    };
    match s.facts(&q).await {
        Ok(f) => html(
            StatusCode::OK,
            IndexPage::build(&StatusReport::build(&f), &q),
        ),
        Err(e) => unavailable(failed(e), false),
    }
}

async fn api_status(State(s): State<Shared>, PageQ(q): PageQ<true>) -> Response {
    let Some(s) = s else {
        return unavailable(opening(), true);
    };
    match s.facts(&q).await {
        Ok(f) => json(&StatusReport::build(&f)),
        Err(e) => unavailable(failed(e), true),
    }
}

async fn target(
    State(s): State<Shared>,
    Path(name): Path<String>,
    PageQ(q): PageQ<false>,
) -> Response {
    let Some(s) = s else {
        return unavailable(opening(), false);
    };
    match s.target_facts(&name, &q).await {
        Ok(Some(f)) => html(
            StatusCode::OK,
            TargetPage::build(&TargetReport::build(&f), s.backend, &f.replica, &q),
        ),
        Ok(None) => html(
            StatusCode::NOT_FOUND,
            MessagePage::new(
                "No such target",
                format!(
                    "{} is neither configured nor stored.",
                    super::clean(&name, &[])
                ),
                &s.ownership.replica,
                s.backend,
            ),
        ),
        Err(e) => unavailable(failed(e), false),
    }
}

async fn api_target(
    State(s): State<Shared>,
    Path(name): Path<String>,
    PageQ(q): PageQ<true>,
) -> Response {
    let Some(s) = s else {
        return unavailable(opening(), true);
    };
    match s.target_facts(&name, &q).await {
        Ok(Some(f)) => json(&TargetReport::build(&f)),
        Ok(None) => {
            let mut r = json(&serde_json::json!({
                "error": format!("no target {:?}: neither configured nor stored", super::clean(&name, &[]))
            }));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
        Err(e) => unavailable(failed(e), true),
    }
}
