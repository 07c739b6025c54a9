//! The simulated API's HTTP routes: which paths and methods it serves, how a request is
//! authenticated and its filter read, and the JSON it answers. Every route takes its
//! request's [fault](super::faults) first, as a proxy in front of the API would act.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State as AxumState};
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Route;
use super::answers::Refusal;
use super::faults::Fault;
use super::faults::{self, Effect};
use super::json::{ApiError, json_body, refusal_body};
use super::state::{Filter, SimHandle, State};

/// The path of [`Route::Checkpoints`].
pub const CHECKPOINTS_PATH: &str = "/v1/loops/checkpoints";

/// What every route handler holds.
#[derive(Clone)]
struct Server {
    handle: SimHandle,
    /// Cancelled at shutdown: cuts delays and streaming bodies short.
    stop: CancellationToken,
}

/// Every route of the simulated API; anything else is a JSON 404, or 405 for another method.
pub(super) fn router(handle: SimHandle, stop: CancellationToken) -> Router {
    Router::new()
        .route(
            Route::Checkpoints.path(),
            get(list).fallback(method_not_allowed),
        )
        .route(
            Route::Source.path(),
            get(source).fallback(method_not_allowed),
        )
        .route(Route::Files.path(), get(files).fallback(method_not_allowed))
        .route(Route::Validate.path(), post(validate).fallback(post_only))
        .route(Route::Deploy.path(), post(deploy).fallback(post_only))
        .route(
            Route::Models.path(),
            get(models).fallback(method_not_allowed),
        )
        .route(
            Route::Deployments.path(),
            get(deployments).fallback(method_not_allowed),
        )
        .route(
            Route::Deployment.path(),
            get(deployment).fallback(method_not_allowed),
        )
        .route(Route::Promote.path(), post(promote).fallback(post_only))
        .route(
            Route::Deactivate.path(),
            post(deactivate).fallback(post_only),
        )
        .fallback(not_found)
        .with_state(Server { handle, stop })
}

/// `GET /v1/loops/checkpoints?<one filter>`.
async fn list(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let fault = {
        let mut st = server.handle.lock();
        st.requests += 1;
        st.count(Route::Checkpoints);
        st.last_query = query.clone();
        st.last_authorization = headers
            .get(AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        st.faults.take(Route::Checkpoints)
    };
    let query = query.as_deref();
    match faults::apply(fault, &server.stop).await {
        Effect::Respond(response) => response,
        Effect::Pass => {
            let mut st = server.handle.lock();
            match accept(&mut st, &headers, query) {
                Ok(filter) if st.path_missing(&filter) => ApiError::NO_CHECKPOINT.into_response(),
                Ok(filter) => {
                    let body = st.listing_body(filter);
                    st.log_body(Route::Checkpoints, "response", &body);
                    json_body(body)
                }
                Err(error) => error.into_response(),
            }
        }
        Effect::Alter(fault) => {
            let listing = {
                let mut st = server.handle.lock();
                accept(&mut st, &headers, query)
                    .map(|filter| (!st.path_missing(&filter)).then(|| st.listing(&filter)))
            };
            match listing {
                Ok(Some(listing)) => faults::alter(fault, listing),
                Ok(None) => ApiError::NO_CHECKPOINT.into_response(),
                Err(error) => error.into_response(),
            }
        }
    }
}

/// `GET /v1/loops/checkpoints/{id}/source`.
async fn source(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    answer(&server, Route::Source, &headers, None, |st, _| {
        st.source(&id)
    })
    .await
}

/// `GET /v1/loops/checkpoints/{id}/files?page_size=N&page_token=T`.
async fn files(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    answer(&server, Route::Files, &headers, None, |st, fault| {
        let paging = match fault {
            Some(faults::Fault::Paging(p)) => Some(*p),
            _ => None,
        };
        st.files_page(&id, &query, paging)
    })
    .await
}

/// `POST /v1/loops/checkpoints/validate`.
async fn validate(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    answer(&server, Route::Validate, &headers, Some(&body), |st, _| {
        st.validate(&body)
    })
    .await
}

/// `POST /v1/loops/checkpoints/deploy`.
async fn deploy(AxumState(server): AxumState<Server>, headers: HeaderMap, body: Bytes) -> Response {
    answer(&server, Route::Deploy, &headers, Some(&body), |st, _| {
        st.deploy(&body)
    })
    .await
}

/// `GET /v1/models?name=`.
async fn models(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    answer(&server, Route::Models, &headers, None, |st, _| {
        st.models.list(&query)
    })
    .await
}

/// `GET /v1/models/{model_id}/deployments`.
async fn deployments(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path(model_id): Path<String>,
) -> Response {
    answer(&server, Route::Deployments, &headers, None, |st, _| {
        let now = st.now();
        st.models.deployments_of(&model_id, now)
    })
    .await
}

/// `GET /v1/models/{model_id}/deployments/{deployment_id}`.
async fn deployment(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path((model_id, deployment_id)): Path<(String, String)>,
) -> Response {
    answer(&server, Route::Deployment, &headers, None, |st, _| {
        let now = st.now();
        st.models.deployment(&model_id, &deployment_id, now)
    })
    .await
}

/// `POST /v1/models/{model_id}/environments/{environment}/promote`.
async fn promote(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path((model_id, environment)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    answer(&server, Route::Promote, &headers, Some(&body), |st, _| {
        let now = st.now();
        st.models.promote(&model_id, &environment, &body, now)
    })
    .await
}

/// `POST /v1/models/{model_id}/deployments/{deployment_id}/deactivate`.
async fn deactivate(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    Path((model_id, deployment_id)): Path<(String, String)>,
) -> Response {
    answer(&server, Route::Deactivate, &headers, None, |st, _| {
        st.models.deactivate(&model_id, &deployment_id)
    })
    .await
}

/// The shared path of the routes beside the listing: count the request (and log its
/// body), take its fault, authenticate, bring training runs up to now, then answer with
/// `serve`'s JSON or its refusal.
async fn answer(
    server: &Server,
    route: Route,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    serve: impl FnOnce(&mut State, Option<&faults::Fault>) -> Result<Value, Refusal>,
) -> Response {
    let fault = {
        let mut st = server.handle.lock();
        st.count(route);
        if let Some(body) = body {
            st.log_body(route, "request", body);
        }
        st.faults.take(route)
    };
    let fault = match faults::apply(fault, &server.stop).await {
        Effect::Respond(response) => return response,
        Effect::Pass => None,
        Effect::Alter(fault) => Some(fault),
    };
    let served = {
        let mut st = server.handle.lock();
        if let Some(key) = &st.api_key
            && !authorized(headers, key)
        {
            return ApiError::UNAUTHORIZED.into_response();
        }
        st.tick();
        serve(&mut st, fault.as_ref())
    };
    let fault = match fault {
        // Acted: now the answer waits.
        Some(Fault::ActThenDelay(wait)) => {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = server.stop.cancelled() => {}
            }
            None
        }
        other => other,
    };
    let st = server.handle.lock();
    match served {
        Ok(value) => match fault {
            Some(fault) => faults::alter(fault, value),
            None => {
                let body = serde_json::to_vec(&value).expect("json serializes");
                st.log_body(route, "response", &body);
                json_body(body)
            }
        },
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
            refusal_body(status, &refusal.message, refusal.reason)
        }
    }
}

/// Check the credentials and the filter, and bring training runs up to now.
fn accept(st: &mut State, headers: &HeaderMap, query: Option<&str>) -> Result<Filter, ApiError> {
    if let Some(key) = &st.api_key
        && !authorized(headers, key)
    {
        return Err(ApiError::UNAUTHORIZED);
    }
    let filter = parse_filter(query.unwrap_or(""))?;
    st.tick();
    Ok(filter)
}

fn authorized(headers: &HeaderMap, key: &str) -> bool {
    let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let Some((scheme, credential)) = value.and_then(|v| v.split_once(' ')) else {
        return false;
    };
    // Auth schemes are case-insensitive (RFC 9110 §11.1).
    let known = scheme.eq_ignore_ascii_case("bearer") || scheme.eq_ignore_ascii_case("api-key");
    known && credential.trim() == key
}

fn parse_filter(query: &str) -> Result<Filter, ApiError> {
    let (mut run_id, mut base_model, mut path) = (None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*key {
            "run_id" => &mut run_id,
            "base_model" => &mut base_model,
            "checkpoint_path" => &mut path,
            _ => continue,
        };
        // An empty value is the same as no value; a repeated key keeps its last value.
        *slot = Some(value.into_owned()).filter(|v| !v.is_empty());
    }
    match (run_id, base_model, path) {
        (Some(run), None, None) => Ok(Filter::RunId(run)),
        (None, Some(model), None) => Ok(Filter::BaseModel(model)),
        (None, None, Some(path)) => parse_path(&path).ok_or(ApiError::BAD_PATH),
        _ => Err(ApiError::ONE_FILTER),
    }
}

/// A `bt://loops:<run_id>/(weights|sampler_weights)/<name>` path.
pub(super) fn parse_path(path: &str) -> Option<Filter> {
    let rest = path.strip_prefix("bt://loops:")?;
    let mut parts = rest.splitn(3, '/');
    let (run, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
    let target = match kind {
        "sampler_weights" => "sampler",
        "weights" => "trainer",
        _ => return None,
    };
    (!run.is_empty() && !name.is_empty()).then(|| Filter::Path {
        run: run.into(),
        target,
        name: name.into(),
    })
}

async fn method_not_allowed() -> ApiError {
    ApiError::METHOD_NOT_ALLOWED
}

async fn post_only() -> ApiError {
    ApiError::POST_ONLY
}

async fn not_found() -> ApiError {
    ApiError::NOT_FOUND
}
