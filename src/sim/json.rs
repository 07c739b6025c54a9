//! The simulated API's JSON answers: bodies with their content type, and the error object
//! `{"code", "message", "details"}` it answers with when it refuses a request. Shared by
//! the routes and the faults.

use axum::body::Body;
use axum::http::header::{ALLOW, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub(super) const JSON: &str = "application/json";

/// A 200 answer with a JSON body.
pub(super) fn json_body(body: impl Into<Body>) -> Response {
    ([(CONTENT_TYPE, JSON)], body.into()).into_response()
}

/// An error answer; the code is the reason phrase in upper snake case, e.g. `BAD_REQUEST`.
pub(super) fn error_body(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = reason.to_uppercase().replace([' ', '-'], "_");
    let body = json!({"code": code, "message": message, "details": null});
    (status, [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

/// An error answer carrying `details.reason`, as the Loops SDK reads it.
pub(super) fn refusal_body(status: StatusCode, message: &str, reason: &str) -> Response {
    let mut response = error_body(status, message);
    let code = status.canonical_reason().unwrap_or("Error");
    let code = code.to_uppercase().replace([' ', '-'], "_");
    let body = json!({"code": code, "message": message, "details": {"reason": reason}});
    *response.body_mut() = Body::from(body.to_string());
    response
}

/// An error the API itself answers, with the headers its status calls for.
pub(super) struct ApiError(pub(super) StatusCode, pub(super) &'static str);

impl ApiError {
    pub(super) const UNAUTHORIZED: Self =
        Self(StatusCode::UNAUTHORIZED, "Missing or invalid API key.");
    pub(super) const ONE_FILTER: Self =
        Self(StatusCode::BAD_REQUEST, "Provide exactly one filter.");
    pub(super) const BAD_PATH: Self = Self(
        StatusCode::BAD_REQUEST,
        "Invalid checkpoint_path: expected bt://loops:<run_id>/(weights|sampler_weights)/<name>.",
    );
    pub(super) const METHOD_NOT_ALLOWED: Self =
        Self(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.");
    pub(super) const NOT_FOUND: Self = Self(StatusCode::NOT_FOUND, "Not found.");
    /// A `checkpoint_path` listing that names no checkpoint: Baseten answers missing and
    /// inaccessible checkpoints with one public error.
    pub(super) const NO_CHECKPOINT: Self = Self(
        StatusCode::NOT_FOUND,
        "Checkpoint not found or not accessible.",
    );
    /// 405 on a route that takes only POST (a different `Allow` than [`Self::METHOD_NOT_ALLOWED`]).
    pub(super) const POST_ONLY: Self = Self(StatusCode::METHOD_NOT_ALLOWED, "Use POST.");
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = error_body(self.0, self.1);
        let headers = response.headers_mut();
        match self.0 {
            StatusCode::UNAUTHORIZED => {
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                let allow = if self.1 == Self::POST_ONLY.1 {
                    "POST"
                } else {
                    "GET, HEAD"
                };
                headers.insert(ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        response
    }
}
