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
                headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            }
            _ => {}
        }
        response
    }
}
