//! The Loops client: the listing (`GET /v1/loops/checkpoints`, once per poll) and the
//! routes beside it (a checkpoint's `source` and `files`, `validate`, `deploy`), all
//! through one request path: one global token bucket, the request timeout and a cap on
//! the body size. Errors say whether waiting helps ([`Error::is_transient`]), carry the
//! server's `Retry-After` and the error body's `details.reason`. Callers count each
//! request in `loopwatch_api_requests_total` under its [`Endpoint`] label.

pub mod models;
pub mod wire;

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{AUTHORIZATION, HeaderValue};
use url::Url;

use crate::config::{ApiConfig, AuthScheme, Filter};
use crate::http::{self, root_cause};
use crate::model::{Checkpoint, DeployRequest, Deployment};

/// The routes of the Loops API loopwatch calls: the `endpoint` label of
/// `loopwatch_api_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `GET /v1/loops/checkpoints`
    List,
    /// `GET /v1/loops/checkpoints/{id}/source`
    Source,
    /// `GET /v1/loops/checkpoints/{id}/files`
    Files,
    /// `POST /v1/loops/checkpoints/validate`
    Validate,
    /// `POST /v1/loops/checkpoints/deploy`
    Deploy,
    /// `GET /v1/models?name=`
    Models,
    /// `GET /v1/models/{id}/deployments`
    Deployments,
    /// `GET /v1/models/{id}/deployments/{id}`
    Deployment,
    /// `POST /v1/models/{id}/environments/{env}/promote`
    Promote,
    /// `POST /v1/models/{id}/deployments/{id}/deactivate`
    Deactivate,
}

impl Endpoint {
    pub const ALL: [Endpoint; 10] = [
        Endpoint::List,
        Endpoint::Source,
        Endpoint::Files,
        Endpoint::Validate,
        Endpoint::Deploy,
        Endpoint::Models,
        Endpoint::Deployments,
        Endpoint::Deployment,
        Endpoint::Promote,
        Endpoint::Deactivate,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::List => "list",
            Endpoint::Source => "source",
            Endpoint::Files => "files",
            Endpoint::Validate => "validate",
            Endpoint::Deploy => "deploy",
            Endpoint::Models => "models",
            Endpoint::Deployments => "deployments",
            Endpoint::Deployment => "deployment",
            Endpoint::Promote => "promote",
            Endpoint::Deactivate => "deactivate",
        }
    }
}

/// Where a checkpoint's files come from (`GET .../{id}/source`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The files route serves presigned URLs for it.
    S3,
    /// Its files sit in a volume version (`bdn:<ns>/<volume>:<tag>`), under `path`; the
    /// files route answers `NOT_PRESIGNABLE`.
    Volume { volume_ref: String, path: String },
    /// A `kind` this client does not know, kept as received.
    Other(String),
}

/// One page of a checkpoint's files (`GET .../{id}/files`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilesPage {
    pub files: Vec<CheckpointFile>,
    /// The `page_token` of the next page; None on the last one.
    pub next_page_token: Option<i64>,
    pub total_count: i64,
}

/// A file of a checkpoint. The presigned `url` is deliberately not kept: it is a bearer
/// credential and nothing here downloads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointFile {
    pub relative_file_name: String,
    pub node_rank: i64,
    pub size_bytes: i64,
    pub last_modified: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("HTTP {code}: {message}")]
    Status {
        code: u16,
        retry_after: Option<Duration>,
        message: String,
        /// The error body's `details.reason` (e.g. `NOT_PRESIGNABLE`), when it has one.
        reason: Option<String>,
        /// The body was a JSON object, as the API's own errors are (a proxy's page is not).
        from_api: bool,
    },
    #[error("response is not valid: {0}")]
    Decode(String),
    #[error("response is larger than api.max_response_bytes ({0} bytes)")]
    TooLarge(u64),
    /// The process's response bodies filled `api.max_buffered_bytes` for the whole
    /// request timeout: this body was not read (the poll waits for its turn next time).
    #[error(
        "no room for the response within api.timeout: responses held at once fill api.max_buffered_bytes ({0} bytes)"
    )]
    OverBudget(u64),
}

impl Error {
    /// Worth trying again soon: the fault is likely on the way or upstream.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Timeout | Error::Connect(_) | Error::Transport(_) | Error::OverBudget(_) => true,
            Error::Status { code, .. } => *code == 408 || *code == 429 || *code >= 500,
            Error::Decode(_) | Error::TooLarge(_) => false,
        }
    }

    /// Something only the operator can fix (a bad key, a wrong filter).
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Error::Status {
                code: 401 | 403 | 404,
                ..
            }
        )
    }

    /// What the operator can do about it, for the one-line error of a command: the key,
    /// the filter or the base URL to check.
    pub fn fix(&self) -> Option<&'static str> {
        match self {
            Error::Status {
                code: 401 | 403, ..
            } => Some(
                "the API key was refused: check api.api_key_env or api.api_key_file, and api.auth_scheme",
            ),
            Error::Status { code: 404, .. } => {
                Some("check the target's run_id, base_model or checkpoint_path, and api.base_url")
            }
            Error::Decode(m) if m.starts_with(NOT_THE_SHAPE) => Some(
                "check api.base_url (another API?), or whether this loopwatch is older than the API",
            ),
            Error::Decode(_) => {
                Some("the answer is not the Loops API's JSON (a proxy's page?): check api.base_url")
            }
            _ => None,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error body's `details.reason`, e.g. `NOT_PRESIGNABLE` from the files route.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Error::Status { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// The files route's answer for a checkpoint whose files cannot be presigned.
    pub fn is_not_presignable(&self) -> bool {
        self.reason() == Some(NOT_PRESIGNABLE)
    }

    pub fn is_rate_limited(&self) -> bool {
        matches!(self, Error::Status { code: 429, .. })
    }

    /// The `code` label of `loopwatch_api_requests_total`.
    pub fn code_label(&self) -> String {
        match self {
            Error::Timeout => "timeout".into(),
            Error::Connect(_) | Error::Transport(_) => "connect".into(),
            Error::Status { code, .. } => code.to_string(),
            Error::Decode(_) | Error::TooLarge(_) => "decode".into(),
            Error::OverBudget(_) => "budget".into(),
        }
    }
}

/// The `details.reason` of the files route for a volume-backed checkpoint.
pub const NOT_PRESIGNABLE: &str = "NOT_PRESIGNABLE";

pub struct Client {
    http: reqwest::Client,
    endpoint: Url,
    /// `.../v1/models` under the same base.
    models: Url,
    auth: HeaderValue,
    /// This process's share of `api.max_requests_per_second` ([`Client::share_budget`]).
    limiter: RwLock<Arc<DefaultDirectRateLimiter>>,
    /// `api.max_requests_per_second`: what the whole deployment may send.
    budget: f64,
    /// How many processes share the budget now.
    sharing: AtomicI64,
    max_bytes: u64,
    /// `api.timeout`: also how long a body waits for room in the [`http::budget`].
    timeout: Duration,
}

/// The listing endpoint under `base`: a path prefix (a gateway's `/loops-proxy`) is
/// kept, with or without its trailing slash (URL resolution would drop its last segment).
fn endpoint(base: &Url) -> Result<Url, url::ParseError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v1/loops/checkpoints")
}

/// The models API under `base` (`.../v1/models`), a path prefix kept as for [`endpoint`].
fn models_endpoint(base: &Url) -> Result<Url, url::ParseError> {
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    base.join("v1/models")
}

impl Client {
    pub fn new(cfg: &ApiConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("loopwatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let endpoint = endpoint(&cfg.base_url)?;
        let models = models_endpoint(&cfg.base_url)?;
        let scheme = match cfg.auth_scheme {
            AuthScheme::Bearer => "Bearer",
            AuthScheme::ApiKey => "Api-Key",
        };
        let mut auth = HeaderValue::from_str(&format!("{scheme} {}", cfg.api_key.expose()))
            .map_err(|_| {
                anyhow::anyhow!("the API key contains characters not allowed in a header")
            })?;
        auth.set_sensitive(true);
        // One client per process (the pollers' and the deploy sinks'): its config sets
        // the process's budget of response bytes.
        http::budget().resize(cfg.max_buffered_bytes);
        Ok(Client {
            http,
            endpoint,
            models,
            auth,
            limiter: RwLock::new(Arc::new(RateLimiter::direct(quota(
                cfg.max_requests_per_second,
            )))),
            budget: cfg.max_requests_per_second,
            sharing: AtomicI64::new(1),
            max_bytes: cfg.max_response_bytes,
            timeout: cfg.timeout,
        })
    }

    /// `api.timeout`.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Share the budget with `replicas` live replicas (itself included): from now on this
    /// client sends at most `max_requests_per_second / replicas`, so the fleet sends the
    /// budget whatever its size. A change of count rebuilds the token bucket.
    pub fn share_budget(&self, replicas: i64) {
        let n = replicas.max(1);
        let was = self.sharing.swap(n, Ordering::Relaxed);
        if was != n {
            let rate = self.budget / n as f64;
            let limiter = RateLimiter::direct(quota(rate));
            *self.limiter.write().expect("not poisoned") = Arc::new(limiter);
            tracing::info!(
                processes = n,
                requests_per_second = rate,
                "sharing the API budget"
            );
        }
    }

    /// The requests per second this client may send now (its share of the budget).
    pub fn rate(&self) -> f64 {
        self.budget / self.sharing.load(Ordering::Relaxed) as f64
    }

    /// Wait for a token of this client's share of the budget.
    async fn until_ready(&self) {
        let limiter = self.limiter.read().expect("not poisoned").clone();
        limiter.until_ready().await;
    }

    /// The whole listing for one filter; the request waits for a token first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Checkpoint>, Error> {
        self.fetch(filter).await?.decode()
    }

    /// The listing's body for one filter, not yet decoded: a poller that has seen the same
    /// body before ([`Body::digest`]) need not decode it again.
    ///
    /// A `checkpoint_path` answered 404 by the API (its JSON error, not a proxy's page) is
    /// an empty listing ([`Body::path_not_found`]): Baseten's "missing and inaccessible
    /// checkpoints share one public error", and the Loops SDK reads it as "no such
    /// checkpoint". For `run_id` and `base_model` a 404 stays an error.
    pub async fn fetch(&self, filter: &Filter) -> Result<Body, Error> {
        let mut url = self.endpoint.clone();
        url.query_pairs_mut()
            .append_pair(filter.query_key(), filter.value());
        match self.send(self.http.get(url)).await {
            Ok((bytes, share)) => Ok(Body::new(bytes, share, false)),
            Err(Error::Status {
                code: 404,
                from_api: true,
                ..
            }) if matches!(filter, Filter::CheckpointPath(..)) => {
                Ok(Body::new(EMPTY_LISTING.to_vec(), http::Share::none(), true))
            }
            Err(e) => Err(e),
        }
    }

    /// Where the files of checkpoint `id` (its `id`, not its name) come from.
    pub async fn source(&self, id: &str) -> Result<Source, Error> {
        let url = self.checkpoint_url(id, "source");
        let (bytes, _share) = self.send(self.http.get(url)).await?;
        wire::decode_source(&bytes).map_err(|m| decode_error_of(&bytes, m))
    }

    /// One page of the files of checkpoint `id`; the first page is `page_token` 0. A
    /// volume-backed checkpoint answers 4xx with [`Error::is_not_presignable`].
    pub async fn files_page(
        &self,
        id: &str,
        page_size: u32,
        page_token: i64,
    ) -> Result<FilesPage, Error> {
        let mut url = self.checkpoint_url(id, "files");
        url.query_pairs_mut()
            .append_pair("page_size", &page_size.to_string())
            .append_pair("page_token", &page_token.to_string());
        let (bytes, _share) = self.send(self.http.get(url)).await?;
        wire::decode_files(&bytes).map_err(|m| decode_error_of(&bytes, m))
    }

    /// Ask whether the sampler checkpoint at `checkpoint_path`
    /// (`bt://loops:<run>/sampler_weights/<name>`) is deployable (for `run_id`'s LoRA
    /// config, when given): Ok when it is, a 4xx [`Error::Status`] with the reason when not.
    pub async fn validate(&self, checkpoint_path: &str, run_id: Option<&str>) -> Result<(), Error> {
        let body = wire::validate_request(checkpoint_path, run_id);
        let url = self.action_url("validate");
        self.send(post_json(self.http.post(url), &body)).await?;
        Ok(())
    }

    /// Deploy sampler checkpoints. Not idempotent: every successful call deploys.
    pub async fn deploy(&self, request: &DeployRequest) -> Result<Deployment, Error> {
        let body = wire::deploy_request(request);
        let url = self.action_url("deploy");
        let (bytes, _share) = self.send(post_json(self.http.post(url), &body)).await?;
        wire::decode_deployed(&bytes).map_err(|m| decode_error_of(&bytes, m))
    }

    /// `.../checkpoints/{id}/{leaf}`, the id percent-encoded as one path segment.
    fn checkpoint_url(&self, id: &str, leaf: &str) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .push(id)
            .push(leaf);
        url
    }

    /// `.../checkpoints/{action}`.
    fn action_url(&self, action: &str) -> Url {
        let mut url = self.endpoint.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .push(action);
        url
    }

    /// The one request path of every route: wait for a token, send with the key, read a
    /// bounded body (and its share of the process's [`http::budget`], held as long as the
    /// caller keeps it); a non-2xx answer becomes [`Error::Status`].
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(Vec<u8>, http::Share), Error> {
        self.until_ready().await;
        let resp = request
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if !status.is_success() {
            let retry_after = http::retry_after(resp.headers());
            // Never the whole of an error body: a proxy's page, or a hostile endless one.
            let body = http::error_body(resp).await;
            return Err(Error::Status {
                code: status.as_u16(),
                retry_after,
                message: error_message(&body),
                reason: error_reason(&body),
                from_api: serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(
                    &body,
                )
                .is_ok(),
            });
        }
        self.read_body(resp).await
    }

    /// Read at most `max_bytes`, chunk by chunk: an endless body costs a bounded buffer.
    /// A body larger than [`http::UNBUDGETED`] (or of unannounced size) first takes its
    /// room in the process's budget, waiting at most `api.timeout`; its buffer never grows
    /// past that room.
    async fn read_body(
        &self,
        mut resp: reqwest::Response,
    ) -> Result<(Vec<u8>, http::Share), Error> {
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > self.max_bytes) {
            return Err(Error::TooLarge(self.max_bytes));
        }
        let max = usize::try_from(self.max_bytes).unwrap_or(usize::MAX);
        let expect = announced.map_or(max, |n| usize::try_from(n).unwrap_or(max));
        let budget = http::budget();
        let mut share = if expect <= http::UNBUDGETED {
            http::Share::none()
        } else {
            tokio::time::timeout(self.timeout, budget.take(expect))
                .await
                .map_err(|_| Error::OverBudget(budget.total() as u64))?
        };
        // Never more than the room held (or the small size), whatever the peer sends.
        let room = share.bytes().max(expect.min(http::UNBUDGETED));
        let mut buf = Vec::with_capacity(expect.min(room).min(1 << 20));
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if buf.len() + chunk.len() > room {
                return Err(Error::TooLarge(self.max_bytes.min(room as u64)));
            }
            if buf.len() + chunk.len() > buf.capacity() {
                // Doubling, but within the room: the buffer is what the budget counts.
                let want = (buf.capacity() * 2).max(buf.len() + chunk.len()).min(room);
                buf.reserve_exact(want - buf.len());
            }
            buf.extend_from_slice(&chunk);
        }
        share.shrink_to(buf.capacity());
        Ok((buf, share))
    }
}

/// What a `checkpoint_path` listing answered 404 stands for.
const EMPTY_LISTING: &[u8] = br#"{"checkpoints":[]}"#;

/// A successful (2xx) listing body, or the empty listing a missing `checkpoint_path` is,
/// holding its share of the process's response budget for as long as it lives (a poll
/// keeps it to the end: the decoded listing is as large).
pub struct Body {
    bytes: Vec<u8>,
    digest: u128,
    _share: http::Share,
    path_not_found: bool,
}

impl Body {
    fn new(bytes: Vec<u8>, share: http::Share, path_not_found: bool) -> Body {
        Body {
            digest: xxhash_rust::xxh3::xxh3_128(&bytes),
            bytes,
            _share: share,
            path_not_found,
        }
    }

    /// The `checkpoint_path` was answered 404: no such checkpoint, an empty listing.
    pub fn path_not_found(&self) -> bool {
        self.path_not_found
    }

    /// A 128-bit digest (XXH3) of the exact bytes: equal digests mean the same listing.
    pub fn digest(&self) -> u128 {
        self.digest
    }

    /// Decode the listing; a body that does not decode fails the poll as a whole.
    pub fn decode(&self) -> Result<Vec<Checkpoint>, Error> {
        wire::decode_listing(&self.bytes).map_err(|m| decode_error_of(&self.bytes, m))
    }
}

/// `rps` requests a second with a bucket of a tenth of a second's worth: a full bucket of
/// a whole second's worth let twice `rps` through in the first second (and after any
/// pause); this way no one-second window sees more than ~1.1x `rps`, and at high rates
/// waiters still wake in batches rather than one timer tick (1 ms) each.
fn quota(rps: f64) -> Quota {
    let per = Duration::from_secs_f64(1.0 / rps.max(1e-6));
    let burst =
        NonZeroU32::new((rps / 10.0).ceil().clamp(1.0, 1000.0) as u32).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(per)
        .expect("period > 0")
        .allow_burst(burst)
}

/// A JSON request body (reqwest's `json` feature would do the same).
fn post_json(
    request: reqwest::RequestBuilder,
    body: &impl serde::Serialize,
) -> reqwest::RequestBuilder {
    let bytes = serde_json::to_vec(body).expect("request bodies serialize");
    request
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes)
}

/// An answer that does not decode. serde quotes what it found (`invalid type: string
/// "..."`), which may be a secret a hostile peer echoed: redacted like an error body.
fn decode_error(message: String) -> Error {
    Error::Decode(crate::redact::secrets(&message).into_owned())
}

/// What [`decode_error_of`] puts before the message of a body that is JSON, just not of
/// the shape the route answers with.
const NOT_THE_SHAPE: &str = "JSON, but not the Loops API's shape: ";

/// A body that does not decode: JSON of another shape (another API, or a field the
/// schema requires missing) is told apart from a body that is not JSON at all (a
/// proxy's page), since what to check differs.
fn decode_error_of(body: &[u8], message: String) -> Error {
    if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
        decode_error(format!("{NOT_THE_SHAPE}{message}"))
    } else {
        decode_error(message)
    }
}

fn transport(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else if e.is_connect() {
        Error::Connect(root_cause(&e))
    } else {
        Error::Transport(root_cause(&e))
    }
}

/// The stable `details.reason` of a JSON error body, as the Loops SDK reads it.
fn error_reason(body: &[u8]) -> Option<String> {
    let v = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let reason = v.get("details")?.get("reason")?.as_str()?;
    Some(reason.chars().take(200).collect())
}

/// A short, single-line description of an error body: its JSON `message`, `detail` or
/// `error` (the keys the Loops SDK reads, in its order; a non-string one as compact JSON,
/// e.g. FastAPI's list of validation errors, or an `error` object's own `message`),
/// otherwise the first 200 characters of text.
fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        let text = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            serde_json::Value::Object(o) => Some(match o.get("message") {
                Some(serde_json::Value::String(m)) => m.clone(),
                _ => v.to_string(),
            }),
            other => Some(other.to_string()),
        };
        if let Some(m) = ["message", "detail", "error"]
            .iter()
            .find_map(|k| v.get(k).and_then(text))
            .filter(|m| !m.trim().is_empty())
        {
            return http::one_line_snippet(m.as_bytes(), 200);
        }
    }
    let flat = http::one_line_snippet(body, 200);
    if flat.is_empty() {
        "(empty body)".into()
    } else {
        flat
    }
}

#[cfg(test)]
mod tests;
