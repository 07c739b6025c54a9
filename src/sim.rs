//! Simulated Baseten Loops API: `GET /v1/loops/checkpoints` over a real socket.
//!
//! Used by `loopwatch demo`, the integration tests and the benchmarks, so the daemon can be
//! exercised with no account and no network. It follows
//! `loops-list-checkpoints.openapi.yaml` (one filter, `{"checkpoints": [...]}`, both auth
//! schemes) and can misbehave on demand through [`Fault`]s, the way real upstreams and the
//! proxies in front of them do.
//!
//! Time is the wall clock plus an offset ([`SimHandle::advance_clock`]), and training runs
//! are materialised from it lazily on each request, so tests never need to sleep and the
//! simulator never spawns anything but its server task.
//!
//! Benchmarks poll thousands of runs, so a `run_id` listing reads only its run (an index)
//! and is encoded once: the body is kept until a checkpoint of that run changes. The
//! simulator then costs about what a real server's HTTP layer costs, and the benchmarks'
//! floors (the same requests with the body discarded) measure HTTP, not JSON encoding here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State as AxumState};
use axum::http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The only endpoint the simulator serves.
pub const CHECKPOINTS_PATH: &str = "/v1/loops/checkpoints";
/// Base model of checkpoints whose run was never given one.
pub const DEFAULT_BASE_MODEL: &str = "Qwen/Qwen3-8B";
/// Training steps between two saves of a training run: save N is named `step-<N*100>`.
pub const STEPS_PER_SAVE: u32 = 100;
/// How long [`SimApi::shutdown`] waits for open connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
const JSON: &str = "application/json";

/// A misbehaviour of the upstream, applied to one request ([`SimHandle::push_fault`]) or to
/// every request ([`SimHandle::set_fault`]).
///
/// Faults that answer on their own (status, HTML, empty, huge, closed, non-object) skip
/// authentication and filter validation, as a proxy in front of the API would. Faults that
/// alter the listing apply only when the request would otherwise get a 200.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer with this status; the body defaults to a JSON error object. A code that is not
    /// a valid HTTP status becomes 500.
    Status {
        code: u16,
        retry_after: Option<String>,
        body: Option<String>,
    },
    /// Sleep, then answer normally (for client timeouts).
    Delay(Duration),
    /// 502 with a proxy's HTML error page.
    Html,
    /// 200 with an HTML page (a captive portal or login page).
    HtmlOk,
    /// 200 with the listing's JSON cut in half.
    Truncated,
    /// 200; the first checkpoint lacks this key.
    MissingField(String),
    /// 200; this key of the first checkpoint has a JSON type the schema does not allow.
    WrongType(String),
    /// 200; the top-level object and every checkpoint carry extra fields.
    UnknownFields,
    /// 200 with `{"checkpoints": []}`.
    Empty,
    /// 200; the first checkpoint appears twice.
    DuplicateId,
    /// 200 with a chunked body of this many bytes and no content-length, generated lazily.
    Huge(u64),
    /// Drop the connection without a complete response.
    CloseConnection,
    /// 200 with the body `[]`.
    NotJsonObject,
}

/// A running simulated API; dropping it stops the server too.
pub struct SimApi {
    addr: std::net::SocketAddr,
    handle: SimHandle,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl SimApi {
    /// Bind 127.0.0.1 on an ephemeral port and serve. With `api_key`, every request must
    /// carry `Authorization: Bearer <key>` or `Authorization: Api-Key <key>`, else 401.
    pub async fn start(api_key: Option<String>) -> io::Result<SimApi> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let handle = SimHandle::new(api_key);
        let stop = CancellationToken::new();
        let server = Server {
            handle: handle.clone(),
            stop: stop.clone(),
        };
        let app = Router::new()
            .route(CHECKPOINTS_PATH, get(list).fallback(method_not_allowed))
            .fallback(not_found)
            .with_state(server);
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::warn!(%error, "simulated loops api stopped with an error");
            }
        });
        Ok(SimApi {
            addr,
            handle,
            stop,
            task: Some(task),
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
    pub async fn shutdown(mut self) {
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

impl Drop for SimApi {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Cloneable control handle over the simulator's state.
#[derive(Clone)]
pub struct SimHandle {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    api_key: Option<String>,
    /// Checkpoint objects by `id`, exactly as served.
    checkpoints: BTreeMap<String, Stored>,
    base_models: HashMap<String, String>,
    runs: Vec<TrainingRun>,
    clock_offset: TimeDelta,
    /// Random per instance so two simulators never hand out the same `id`.
    id_prefix: String,
    next_id: u64,
    faults: VecDeque<Fault>,
    sticky_fault: Option<Fault>,
    requests: u64,
    last_query: Option<String>,
    last_authorization: Option<String>,
    /// Ids of each run's checkpoints, keyed by their `run_id` field as served.
    by_run: HashMap<String, Vec<String>>,
    /// Encoded 200 bodies of `run_id` listings, dropped when a checkpoint of the run changes.
    rendered: HashMap<String, Bytes>,
    /// No pending `complete_at` is earlier than this: requests before it skip the scan.
    next_complete: Option<DateTime<Utc>>,
}

struct Stored {
    object: Map<String, Value>,
    /// When a training run's checkpoint turns COMPLETE by itself; cleared by `set_status`.
    complete_at: Option<DateTime<Utc>>,
}

impl Stored {
    /// A string field as served, or "" when it is absent or not a string.
    fn field(&self, key: &str) -> &str {
        self.object
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// Listings are newest first, ties broken by `id`.
    fn sort_key(&self) -> (&str, &str) {
        (self.field("created_at"), self.field("id"))
    }
}

struct TrainingRun {
    run_id: String,
    started: DateTime<Utc>,
    every: TimeDelta,
    sync_for: TimeDelta,
    max_saves: Option<u32>,
    saves: u32,
}

impl SimHandle {
    fn new(api_key: Option<String>) -> SimHandle {
        let state = State {
            api_key,
            id_prefix: format!("{:04x}", rand::random::<u16>()),
            ..State::default()
        };
        SimHandle {
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock must not take the server down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Add a checkpoint created now; returns its unique `id`. `status` None is JSON null.
    pub fn add_checkpoint(
        &self,
        run_id: &str,
        target: &str,
        name: &str,
        status: Option<&str>,
    ) -> String {
        let mut st = self.lock();
        let now = st.now();
        st.insert(run_id, target, name, now, status, None)
    }

    /// Add `n` sampler checkpoints to `run_id` with unique names; returns their ids.
    pub fn add_many(&self, run_id: &str, n: usize, status: Option<&str>) -> Vec<String> {
        let mut st = self.lock();
        let now = st.now();
        (0..n)
            .map(|_| {
                let name = format!("step-{}", st.next_id + 1);
                st.insert(run_id, "sampler", &name, now, status, None)
            })
            .collect()
    }

    /// Set the `sync_status` of one checkpoint (None is JSON null); unknown ids are ignored.
    pub fn set_status(&self, id: &str, status: Option<&str>) {
        self.set_status_many(&[id], status);
    }

    /// Set the `sync_status` of several checkpoints in one step, as one listing will see it.
    pub fn set_status_many<S: AsRef<str>>(&self, ids: &[S], status: Option<&str>) {
        let mut st = self.lock();
        let st = &mut *st;
        for id in ids {
            if let Some(stored) = st.checkpoints.get_mut(id.as_ref()) {
                stored.object.insert("sync_status".into(), json!(status));
                stored.complete_at = None;
                st.rendered.remove(stored.field("run_id"));
            }
        }
    }

    /// Change or add any field of a checkpoint, unknown ones included.
    pub fn set_field(&self, id: &str, key: &str, value: Value) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(stored) = st.checkpoints.get_mut(id) {
            let before = stored.field("run_id").to_string();
            stored.object.insert(key.into(), value);
            let after = stored.field("run_id").to_string();
            st.rendered.remove(&before);
            st.rendered.remove(&after);
            if before != after {
                st.unindex(&before, id);
                st.by_run.entry(after).or_default().push(id.to_string());
            }
        }
    }

    /// Delete a checkpoint; a training run will not save it again.
    pub fn remove(&self, id: &str) {
        let mut st = self.lock();
        if let Some(stored) = st.checkpoints.remove(id) {
            let run = stored.field("run_id");
            st.rendered.remove(run);
            st.unindex(run, id);
        }
    }

    /// Base model of checkpoints of `run_id` added from now on, and of those it has already.
    pub fn set_base_model(&self, run_id: &str, base_model: &str) {
        let mut st = self.lock();
        st.base_models.insert(run_id.into(), base_model.into());
        st.rendered.remove(run_id);
        for stored in st.checkpoints.values_mut() {
            if stored.object.get("run_id").and_then(Value::as_str) == Some(run_id) {
                stored.object.insert("base_model".into(), json!(base_model));
            }
        }
    }

    /// A training run starting now; see [`SimHandle::start_training_run_at`].
    pub fn start_training_run(
        &self,
        run_id: &str,
        base_model: &str,
        every: Duration,
        sync_for: Duration,
        max_saves: Option<u32>,
    ) {
        let started = self.now();
        self.start_training_run_at(run_id, base_model, every, sync_for, max_saves, started);
    }

    /// A training run that, `every` after `started` (and every `every` after that, up to
    /// `max_saves`), saves a sampler and a trainer checkpoint named `step-<N*100>`, each
    /// SYNCING for `sync_for` then COMPLETE. Computed from the clock on each request.
    pub fn start_training_run_at(
        &self,
        run_id: &str,
        base_model: &str,
        every: Duration,
        sync_for: Duration,
        max_saves: Option<u32>,
        started: DateTime<Utc>,
    ) {
        assert!(
            !every.is_zero(),
            "a training run needs a non-zero save interval"
        );
        let mut st = self.lock();
        st.base_models.insert(run_id.into(), base_model.into());
        st.runs.push(TrainingRun {
            run_id: run_id.into(),
            started,
            every: delta(every),
            sync_for: delta(sync_for),
            max_saves,
            saves: 0,
        });
    }

    /// The simulator's clock: the wall clock plus every [`SimHandle::advance_clock`].
    pub fn now(&self) -> DateTime<Utc> {
        self.lock().now()
    }

    /// Move the simulator's clock forward, so training runs save and sync without waiting.
    pub fn advance_clock(&self, by: Duration) {
        self.lock().clock_offset += delta(by);
    }

    /// Change the API key requests must carry (None: no auth), e.g. to simulate a rotation.
    pub fn set_api_key(&self, api_key: Option<String>) {
        self.lock().api_key = api_key;
    }

    /// Queue a fault for the next request only (FIFO); one-shot faults beat the sticky one.
    pub fn push_fault(&self, fault: Fault) {
        self.lock().faults.push_back(fault);
    }

    /// Apply `fault` to every request until cleared with None.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.lock().sticky_fault = fault;
    }

    /// Requests received on the checkpoints endpoint, faulted and rejected ones included.
    pub fn requests(&self) -> u64 {
        self.lock().requests
    }

    /// Raw query string of the last request to the checkpoints endpoint.
    pub fn last_query(&self) -> Option<String> {
        self.lock().last_query.clone()
    }

    /// Raw `Authorization` header of the last request to the checkpoints endpoint.
    pub fn last_authorization(&self) -> Option<String> {
        self.lock().last_authorization.clone()
    }

    /// Number of checkpoints that exist now (training runs materialised first).
    pub fn checkpoint_count(&self) -> usize {
        let mut st = self.lock();
        st.tick();
        st.checkpoints.len()
    }

    /// The checkpoint object as it would be served now, if it exists.
    pub fn checkpoint(&self, id: &str) -> Option<Value> {
        let mut st = self.lock();
        st.tick();
        st.checkpoints
            .get(id)
            .map(|stored| Value::Object(stored.object.clone()))
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

impl State {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.clock_offset
    }

    fn insert(
        &mut self,
        run_id: &str,
        target: &str,
        name: &str,
        created: DateTime<Utc>,
        status: Option<&str>,
        complete_at: Option<DateTime<Utc>>,
    ) -> String {
        self.next_id += 1;
        let id = format!("ckpt_{}{:06}", self.id_prefix, self.next_id);
        let base_model = self.base_models.get(run_id).map(String::as_str);
        // Trainer checkpoints hold optimizer state as well, hence larger.
        let size_bytes: u64 = if target == "trainer" {
            3 << 27
        } else {
            1 << 27
        };
        let object = json!({
            "checkpoint_id": name,
            "created_at": created.to_rfc3339_opts(SecondsFormat::Millis, true),
            "checkpoint_type": "lora",
            "base_model": base_model.unwrap_or(DEFAULT_BASE_MODEL),
            "lora_adapter_config": {"r": 16, "lora_alpha": 32},
            "size_bytes": size_bytes,
            "sync_status": status,
            "id": id,
            "run_id": run_id,
            "target": target,
        });
        let Value::Object(object) = object else {
            unreachable!("json! of an object literal")
        };
        let stored = Stored {
            object,
            complete_at,
        };
        self.checkpoints.insert(id.clone(), stored);
        self.by_run
            .entry(run_id.to_string())
            .or_default()
            .push(id.clone());
        self.rendered.remove(run_id);
        if let Some(at) = complete_at {
            self.next_complete = Some(self.next_complete.map_or(at, |t| t.min(at)));
        }
        id
    }

    /// Forget `id` in the index of `run`.
    fn unindex(&mut self, run: &str, id: &str) {
        if let Some(ids) = self.by_run.get_mut(run) {
            ids.retain(|i| i != id);
        }
    }

    /// Materialise what training runs have saved by now and complete what has synced.
    fn tick(&mut self) {
        let now = self.now();
        let mut saves = Vec::new();
        for run in &mut self.runs {
            let elapsed_ms = (now - run.started).num_milliseconds().max(0);
            let every_ms = run.every.num_milliseconds().max(1);
            let due = u32::try_from(elapsed_ms / every_ms).unwrap_or(u32::MAX);
            let due = run.max_saves.map_or(due, |max| due.min(max));
            while run.saves < due {
                run.saves += 1;
                let created = run.started + run.every * run.saves as i32;
                saves.push((run.run_id.clone(), run.saves, created, run.sync_for));
            }
        }
        for (run_id, n, created, sync_for) in saves {
            let name = format!("step-{}", u64::from(n) * u64::from(STEPS_PER_SAVE));
            for target in ["sampler", "trainer"] {
                // An overflow (e.g. `Duration::MAX`) means the checkpoint never syncs.
                let complete_at = created.checked_add_signed(sync_for);
                self.insert(
                    &run_id,
                    target,
                    &name,
                    created,
                    Some("SYNCING"),
                    complete_at,
                );
            }
        }
        if self.next_complete.is_none_or(|at| at > now) {
            return;
        }
        let mut next = None;
        for stored in self.checkpoints.values_mut() {
            match stored.complete_at {
                Some(at) if at <= now => {
                    stored
                        .object
                        .insert("sync_status".into(), json!("COMPLETE"));
                    stored.complete_at = None;
                    self.rendered.remove(stored.field("run_id"));
                }
                Some(at) => next = Some(next.map_or(at, |t: DateTime<Utc>| t.min(at))),
                None => {}
            }
        }
        self.next_complete = next;
    }

    /// Check the credentials and the filter, and bring training runs up to now.
    fn accept(&mut self, headers: &HeaderMap, query: Option<&str>) -> Result<Filter, ApiError> {
        if let Some(key) = &self.api_key
            && !authorized(headers, key)
        {
            return Err(ApiError::UNAUTHORIZED);
        }
        let filter = parse_filter(query.unwrap_or(""))?;
        self.tick();
        Ok(filter)
    }

    /// The 200 listing for `query`, or the 400/401 the API would answer instead.
    fn answer(&mut self, headers: &HeaderMap, query: Option<&str>) -> Result<Value, ApiError> {
        let filter = self.accept(headers, query)?;
        Ok(self.listing(&filter))
    }

    /// [`State::answer`] encoded, from the cache for `run_id` listings.
    fn answer_body(&mut self, headers: &HeaderMap, query: Option<&str>) -> Result<Bytes, ApiError> {
        let filter = self.accept(headers, query)?;
        if let Filter::RunId(run) = &filter
            && let Some(body) = self.rendered.get(run)
        {
            return Ok(body.clone());
        }
        let body =
            Bytes::from(serde_json::to_vec(&self.listing(&filter)).expect("json serializes"));
        if let Filter::RunId(run) = filter {
            self.rendered.insert(run, body.clone());
        }
        Ok(body)
    }

    fn listing(&self, filter: &Filter) -> Value {
        let mut matching: Vec<&Stored> = match filter {
            Filter::RunId(run) => self
                .by_run
                .get(run)
                .into_iter()
                .flatten()
                .filter_map(|id| self.checkpoints.get(id))
                .collect(),
            _ => self
                .checkpoints
                .values()
                .filter(|stored| match filter {
                    Filter::RunId(run) => stored.field("run_id") == run,
                    Filter::BaseModel(model) => stored.field("base_model") == model,
                    Filter::Path { run, target, name } => {
                        stored.field("run_id") == run
                            && stored.field("target") == *target
                            && stored.field("checkpoint_id") == name
                    }
                })
                .collect(),
        };
        matching.sort_unstable_by(|a, b| b.sort_key().cmp(&a.sort_key()));
        let checkpoints: Vec<Value> = matching
            .into_iter()
            .map(|stored| Value::Object(stored.object.clone()))
            .collect();
        json!({ "checkpoints": checkpoints })
    }
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

enum Filter {
    RunId(String),
    BaseModel(String),
    Path {
        run: String,
        target: &'static str,
        name: String,
    },
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

fn parse_path(path: &str) -> Option<Filter> {
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

/// An error the API itself answers, with its JSON body `{"code", "message", "details"}`.
struct ApiError(StatusCode, &'static str);

impl ApiError {
    const UNAUTHORIZED: Self = Self(StatusCode::UNAUTHORIZED, "Missing or invalid API key.");
    const ONE_FILTER: Self = Self(StatusCode::BAD_REQUEST, "Provide exactly one filter.");
    const BAD_PATH: Self = Self(
        StatusCode::BAD_REQUEST,
        "Invalid checkpoint_path: expected bt://loops:<run_id>/(weights|sampler_weights)/<name>.",
    );
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

/// The code is the reason phrase in upper snake case, e.g. `BAD_REQUEST`.
fn error_body(status: StatusCode, message: &str) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let code = reason.to_uppercase().replace([' ', '-'], "_");
    let body = json!({"code": code, "message": message, "details": null});
    (status, [(CONTENT_TYPE, JSON)], body.to_string()).into_response()
}

#[derive(Clone)]
struct Server {
    handle: SimHandle,
    stop: CancellationToken,
}

async fn list(
    AxumState(server): AxumState<Server>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let fault = {
        let mut st = server.handle.lock();
        st.requests += 1;
        st.last_query = query.clone();
        st.last_authorization = headers
            .get(AUTHORIZATION)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        st.faults.pop_front().or_else(|| st.sticky_fault.clone())
    };
    if let Some(Fault::Delay(wait)) = &fault {
        tokio::select! {
            () = tokio::time::sleep(*wait) => {}
            () = server.stop.cancelled() => {}
        }
    }
    let listing = || server.handle.lock().answer(&headers, query.as_deref());
    match fault {
        None | Some(Fault::Delay(_)) => {
            match server.handle.lock().answer_body(&headers, query.as_deref()) {
                Ok(body) => ([(CONTENT_TYPE, JSON)], body).into_response(),
                Err(error) => error.into_response(),
            }
        }
        Some(Fault::Status {
            code,
            retry_after,
            body,
        }) => status_fault(code, retry_after, body),
        Some(Fault::Html) => html(StatusCode::BAD_GATEWAY, BAD_GATEWAY_PAGE),
        Some(Fault::HtmlOk) => html(StatusCode::OK, LOGIN_PAGE),
        Some(Fault::Empty) => json_body(br#"{"checkpoints": []}"#.to_vec()),
        Some(Fault::NotJsonObject) => json_body(b"[]".to_vec()),
        Some(Fault::Huge(size)) => huge(size, server.stop.clone()),
        Some(Fault::CloseConnection) => close_connection(),
        Some(fault) => match listing() {
            Ok(listing) => alter(fault, listing),
            Err(error) => error.into_response(),
        },
    }
}

/// Apply a fault that damages an otherwise good listing.
fn alter(fault: Fault, mut listing: Value) -> Response {
    if let Fault::Truncated = fault {
        let mut body = serde_json::to_vec(&listing).expect("json serializes");
        body.truncate(body.len() / 2);
        return json_body(body);
    }
    if let Fault::UnknownFields = fault {
        listing["sim_extra"] = json!({"nested": true});
    }
    let checkpoints = listing["checkpoints"].as_array_mut().expect("a listing");
    match fault {
        Fault::MissingField(key) => {
            if let Some(Value::Object(first)) = checkpoints.first_mut() {
                first.remove(&key);
            }
        }
        Fault::WrongType(key) => {
            if let Some(Value::Object(first)) = checkpoints.first_mut() {
                let wrong = match first.get(&key) {
                    Some(Value::String(_) | Value::Null) | None => json!(42),
                    Some(Value::Number(n)) => json!(n.to_string()),
                    Some(_) => json!("not-the-right-type"),
                };
                first.insert(key, wrong);
            }
        }
        Fault::UnknownFields => {
            for checkpoint in checkpoints.iter_mut().filter_map(Value::as_object_mut) {
                checkpoint.insert("sim_extra".into(), json!({"nested": [1, "two", null]}));
                checkpoint.insert("sim_note".into(), json!("a field added upstream"));
            }
        }
        Fault::DuplicateId => {
            if let Some(first) = checkpoints.first().cloned() {
                checkpoints.insert(0, first);
            }
        }
        _ => unreachable!("faults that answer on their own never reach alter"),
    }
    respond(Ok(listing))
}

fn respond(listing: Result<Value, ApiError>) -> Response {
    match listing {
        Ok(listing) => json_body(serde_json::to_vec(&listing).expect("json serializes")),
        Err(error) => error.into_response(),
    }
}

fn json_body(body: Vec<u8>) -> Response {
    ([(CONTENT_TYPE, JSON)], body).into_response()
}

fn status_fault(code: u16, retry_after: Option<String>, body: Option<String>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match body {
        Some(body) if serde_json::from_str::<Value>(&body).is_ok() => {
            (status, [(CONTENT_TYPE, JSON)], body).into_response()
        }
        Some(body) => (status, [(CONTENT_TYPE, "text/plain")], body).into_response(),
        None => error_body(status, "Simulated fault."),
    };
    if let Some(value) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert(RETRY_AFTER, value);
    }
    response
}

const BAD_GATEWAY_PAGE: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";
const LOGIN_PAGE: &str = "<!DOCTYPE html><html><head><title>Sign in</title></head><body><form method=\"post\"><input name=\"password\" type=\"password\"></form></body></html>";

fn html(status: StatusCode, page: &'static str) -> Response {
    (status, [(CONTENT_TYPE, "text/html; charset=utf-8")], page).into_response()
}

/// A body that never exists in memory: a listing's opening, then spaces up to `size` bytes.
fn huge(size: u64, stop: CancellationToken) -> Response {
    const OPENING: &[u8] = b"{\"checkpoints\": [";
    static PADDING: [u8; 64 * 1024] = [b' '; 64 * 1024];
    let chunks = futures_util::stream::unfold(0u64, move |sent| async move {
        let (source, left) = match sent {
            0 => (OPENING, size),
            _ => (&PADDING[..], size - sent),
        };
        let len = source
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let chunk = Bytes::from_static(&source[..len]);
        (len > 0).then_some((Ok::<_, Infallible>(chunk), sent + len as u64))
    });
    // Stop at shutdown, or graceful shutdown would wait for the whole body.
    let body = Body::from_stream(chunks.take_until(stop.cancelled_owned()));
    ([(CONTENT_TYPE, JSON)], body).into_response()
}

/// A body that fails before its first byte makes hyper abort the connection.
fn close_connection() -> Response {
    let failure = io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "simulated connection drop",
    );
    let body = Body::from_stream(futures_util::stream::once(async {
        Err::<Bytes, _>(failure)
    }));
    body.into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed.")
}

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "Not found.")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GET the checkpoints endpoint with `query` pairs (URL-encoded here).
    async fn get(sim: &SimApi, query: &[(&str, &str)]) -> reqwest::Response {
        get_with(sim, query, None).await.expect("request succeeds")
    }

    async fn get_with(
        sim: &SimApi,
        query: &[(&str, &str)],
        auth: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let query = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query)
            .finish();
        let url = format!("{}{CHECKPOINTS_PATH}?{query}", sim.base_url());
        let mut request = reqwest::Client::new().get(url);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send().await
    }

    async fn json_of(response: reqwest::Response) -> Value {
        serde_json::from_slice(&response.bytes().await.unwrap()).expect("a JSON body")
    }

    /// The checkpoints of a 200 listing.
    async fn listing(sim: &SimApi, query: &[(&str, &str)]) -> Vec<Value> {
        let response = get(sim, query).await;
        assert_eq!(response.status(), 200);
        let body = json_of(response).await;
        body["checkpoints"]
            .as_array()
            .expect("checkpoints array")
            .clone()
    }

    /// One string field of every checkpoint, in listing order.
    fn field(checkpoints: &[Value], key: &str) -> Vec<String> {
        let value = |c: &Value| c[key].as_str().expect("a string field").to_owned();
        checkpoints.iter().map(value).collect()
    }

    #[tokio::test]
    async fn exactly_one_filter_is_required() {
        let sim = SimApi::start(None).await.unwrap();
        let bad = json!({"code": "BAD_REQUEST", "message": "Provide exactly one filter.", "details": null});
        for query in [
            &[][..],
            &[("run_id", "a"), ("base_model", "m")],
            &[("run_id", "")],
        ] {
            let response = get(&sim, query).await;
            assert_eq!(response.status(), 400, "{query:?}");
            assert_eq!(json_of(response).await, bad);
        }
        assert!(
            listing(&sim, &[("run_id", "a"), ("base_model", "")])
                .await
                .is_empty()
        );
        assert_eq!(sim.handle().requests(), 4);
        assert_eq!(
            sim.handle().last_query().as_deref(),
            Some("run_id=a&base_model=")
        );
    }

    #[tokio::test]
    async fn both_auth_schemes_are_accepted_and_others_rejected() {
        let sim = SimApi::start(Some("sekret".into())).await.unwrap();
        let query = [("run_id", "r")];
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("sekret"),
            Some("Basic sekret"),
        ] {
            let response = get_with(&sim, &query, auth).await.unwrap();
            assert_eq!(response.status(), 401, "{auth:?}");
            let body = json_of(response).await;
            assert_eq!(body["code"], "UNAUTHORIZED");
            assert!(body["message"].is_string() && body["details"].is_null());
        }
        for auth in ["Bearer sekret", "Api-Key sekret", "bearer sekret"] {
            let response = get_with(&sim, &query, Some(auth)).await.unwrap();
            assert_eq!(response.status(), 200, "{auth}");
        }
        assert_eq!(
            sim.handle().last_authorization().as_deref(),
            Some("bearer sekret")
        );
    }

    #[tokio::test]
    async fn an_added_checkpoint_has_the_schema_fields_and_follows_changes() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        let id = handle.add_checkpoint("r1", "sampler", "step-100", Some("SYNCING"));
        let checkpoints = listing(&sim, &[("run_id", "r1")]).await;
        let checkpoint = checkpoints[0].as_object().unwrap();
        let mut keys: Vec<_> = checkpoint.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let expected = [
            "base_model",
            "checkpoint_id",
            "checkpoint_type",
            "created_at",
            "id",
            "lora_adapter_config",
            "run_id",
            "size_bytes",
            "sync_status",
            "target",
        ];
        assert_eq!(keys, expected);
        assert_eq!(checkpoint["id"], json!(id));
        assert_eq!(checkpoint["sync_status"], "SYNCING");
        assert_eq!(checkpoint["base_model"], DEFAULT_BASE_MODEL);
        assert!(checkpoint["size_bytes"].is_u64());
        let created_at = checkpoint["created_at"].as_str().unwrap();
        assert!(
            created_at.ends_with('Z') && created_at.len() == 24,
            "{created_at}"
        );
        assert!(DateTime::parse_from_rfc3339(created_at).is_ok());

        handle.set_status(&id, Some("COMPLETE"));
        handle.set_field(&id, "new_field", json!({"a": 1}));
        let checkpoint = &listing(&sim, &[("run_id", "r1")]).await[0];
        assert_eq!(checkpoint["sync_status"], "COMPLETE");
        assert_eq!(checkpoint["new_field"], json!({"a": 1}));
        handle.set_status(&id, None);
        assert_eq!(
            listing(&sim, &[("run_id", "r1")]).await[0]["sync_status"],
            Value::Null
        );

        handle.remove(&id);
        assert_eq!(handle.checkpoint_count(), 0);
        assert!(listing(&sim, &[("run_id", "r1")]).await.is_empty());
    }

    #[tokio::test]
    async fn listings_are_newest_first() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        let added = handle.add_many("r1", 3, None);
        handle.set_field(&added[0], "created_at", json!("2030-01-01T00:00:00.000Z"));
        let got = field(&listing(&sim, &[("run_id", "r1")]).await, "id");
        // Same millisecond for the other two: ties go to the larger (later) id.
        assert_eq!(got, [&added[0], &added[2], &added[1]].map(String::as_str));
    }

    #[tokio::test]
    async fn checkpoint_path_selects_run_target_and_name() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        let sampler = handle.add_checkpoint("r1", "sampler", "step-100", None);
        let trainer = handle.add_checkpoint("r1", "trainer", "step-100", None);
        handle.add_checkpoint("r2", "sampler", "step-100", None);
        handle.add_checkpoint("r1", "sampler", "step-200", None);
        let by_path =
            async |path: &str| field(&listing(&sim, &[("checkpoint_path", path)]).await, "id");
        assert_eq!(
            by_path("bt://loops:r1/sampler_weights/step-100").await,
            [sampler.as_str()]
        );
        assert_eq!(
            by_path("bt://loops:r1/weights/step-100").await,
            [trainer.as_str()]
        );
        assert!(by_path("bt://loops:r3/weights/step-100").await.is_empty());
        for bad in [
            "bt://loops:r1/adapter/step-100",
            "loops:r1/weights/step-100",
            "bt://loops:/weights/x",
            "bt://loops:r1/weights/",
        ] {
            let response = get(&sim, &[("checkpoint_path", bad)]).await;
            assert_eq!(response.status(), 400, "{bad}");
            assert_eq!(json_of(response).await["code"], "BAD_REQUEST");
        }
    }

    #[tokio::test]
    async fn base_model_spans_runs() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        handle.set_base_model("r1", "org/model-a");
        handle.set_base_model("r2", "org/model-a");
        handle.add_checkpoint("r1", "sampler", "step-1", None);
        handle.add_checkpoint("r2", "trainer", "step-2", None);
        handle.add_checkpoint("r3", "sampler", "step-3", None);
        let checkpoints = listing(&sim, &[("base_model", "org/model-a")]).await;
        assert_eq!(field(&checkpoints, "checkpoint_id"), ["step-2", "step-1"]);
        let checkpoints = listing(&sim, &[("base_model", DEFAULT_BASE_MODEL)]).await;
        assert_eq!(field(&checkpoints, "checkpoint_id"), ["step-3"]);
    }

    #[tokio::test]
    async fn a_training_run_saves_and_syncs_by_the_clock() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        let started = handle.now();
        let (every, sync_for) = (Duration::from_secs(10), Duration::from_secs(7));
        handle.start_training_run_at("r1", "org/m", every, sync_for, Some(3), started);
        assert!(listing(&sim, &[("run_id", "r1")]).await.is_empty());

        // 25s in: saves at 10s (synced at 17s) and 20s (syncing until 27s).
        handle.advance_clock(Duration::from_secs(25));
        let checkpoints = listing(&sim, &[("run_id", "r1")]).await;
        let names = field(&checkpoints, "checkpoint_id");
        assert_eq!(names, ["step-200", "step-200", "step-100", "step-100"]);
        let status = field(&checkpoints, "sync_status");
        assert_eq!(status, ["SYNCING", "SYNCING", "COMPLETE", "COMPLETE"]);
        let mut targets = field(&checkpoints[..2], "target");
        targets.sort_unstable();
        assert_eq!(targets, ["sampler", "trainer"]);
        let at = (started + TimeDelta::seconds(20)).to_rfc3339_opts(SecondsFormat::Millis, true);
        assert_eq!(checkpoints[0]["created_at"], json!(at));
        assert_eq!(checkpoints[0]["base_model"], "org/m");

        // A removed save stays removed; `max_saves` caps the run.
        handle.remove(checkpoints[3]["id"].as_str().unwrap());
        handle.advance_clock(Duration::from_secs(600));
        let checkpoints = listing(&sim, &[("base_model", "org/m")]).await;
        assert_eq!(checkpoints.len(), 5);
        assert!(checkpoints.iter().all(|c| c["sync_status"] == "COMPLETE"));
        assert_eq!(handle.checkpoint_count(), 5);
    }

    #[tokio::test]
    async fn status_and_html_faults() {
        let sim = SimApi::start(Some("k".into())).await.unwrap();
        let handle = sim.handle();
        let query = [("run_id", "r")];
        handle.push_fault(Fault::Status {
            code: 503,
            retry_after: Some("2".into()),
            body: None,
        });
        handle.push_fault(Fault::Status {
            code: 429,
            retry_after: None,
            body: Some("slow down".into()),
        });
        handle.push_fault(Fault::Html);
        handle.push_fault(Fault::HtmlOk);
        // Faults answer before auth, as a proxy would.
        let response = get_with(&sim, &query, None).await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        assert_eq!(json_of(response).await["code"], "SERVICE_UNAVAILABLE");
        let response = get_with(&sim, &query, None).await.unwrap();
        assert_eq!(response.status(), 429);
        assert_eq!(response.text().await.unwrap(), "slow down");
        for status in [502, 200] {
            let response = get_with(&sim, &query, None).await.unwrap();
            assert_eq!(response.status(), status);
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/html")
            );
            assert!(response.text().await.unwrap().contains("<html"));
        }
        assert_eq!(get_with(&sim, &query, None).await.unwrap().status(), 401);
        assert_eq!(handle.requests(), 5);
    }

    #[tokio::test]
    async fn listing_faults_damage_the_body_as_described() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        handle.add_checkpoint("r", "sampler", "step-1", Some("COMPLETE"));
        handle.add_checkpoint("r", "trainer", "step-1", None);
        let query = [("run_id", "r")];
        let body = |fault: Fault| {
            handle.push_fault(fault);
            async {
                let response = get(&sim, &query).await;
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap()
            }
        };
        let truncated = body(Fault::Truncated).await;
        assert!(serde_json::from_slice::<Value>(&truncated).is_err());
        assert!(truncated.starts_with(b"{\"checkpoints\":["));

        let value = |bytes: Bytes| serde_json::from_slice::<Value>(&bytes).unwrap();
        let missing = value(body(Fault::MissingField("size_bytes".into())).await);
        assert!(missing["checkpoints"][0].get("size_bytes").is_none());
        assert!(missing["checkpoints"][1].get("size_bytes").is_some());
        let wrong = value(body(Fault::WrongType("size_bytes".into())).await);
        assert!(wrong["checkpoints"][0]["size_bytes"].is_string());
        let wrong = value(body(Fault::WrongType("checkpoint_id".into())).await);
        assert_eq!(wrong["checkpoints"][0]["checkpoint_id"], 42);
        let unknown = value(body(Fault::UnknownFields).await);
        assert!(unknown.get("sim_extra").is_some());
        let all = unknown["checkpoints"].as_array().unwrap();
        assert!(all.len() == 2 && all.iter().all(|c| c.get("sim_extra").is_some()));
        let duplicated = value(body(Fault::DuplicateId).await);
        let ids = field(duplicated["checkpoints"].as_array().unwrap(), "id");
        assert!(ids.len() == 3 && ids[0] == ids[1] && ids[1] != ids[2]);
        assert_eq!(value(body(Fault::Empty).await), json!({"checkpoints": []}));
        assert_eq!(value(body(Fault::NotJsonObject).await), json!([]));
        assert_eq!(listing(&sim, &query).await.len(), 2);
    }

    #[tokio::test]
    async fn delay_trips_client_timeouts_then_answers() {
        let sim = SimApi::start(None).await.unwrap();
        sim.handle()
            .push_fault(Fault::Delay(Duration::from_millis(500)));
        let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
        let client = reqwest::Client::new();
        let error = client
            .get(&url)
            .timeout(Duration::from_millis(100))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error}");
        sim.handle()
            .push_fault(Fault::Delay(Duration::from_millis(20)));
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn huge_streams_without_content_length() {
        let sim = SimApi::start(None).await.unwrap();
        sim.handle().push_fault(Fault::Huge(1 << 40));
        let mut response = get(&sim, &[("run_id", "r")]).await;
        assert!(response.content_length().is_none());
        let mut read = 0;
        while read < 4 << 20 {
            let chunk = response.chunk().await.unwrap();
            read += chunk.expect("the body keeps going").len();
        }
        // A small one ends exactly where it says.
        sim.handle().push_fault(Fault::Huge(100_000));
        let body = get(&sim, &[("run_id", "r")]).await.bytes().await.unwrap();
        assert_eq!(body.len(), 100_000);
        assert!(body.starts_with(b"{\"checkpoints\": ["));
        // The first response is still open and unread: shutdown must not wait for it.
        let shutdown = tokio::time::timeout(Duration::from_secs(5), sim.shutdown());
        shutdown.await.expect("shutdown is bounded");
        drop(response);
    }

    #[tokio::test]
    async fn close_connection_is_a_transport_error() {
        let sim = SimApi::start(None).await.unwrap();
        sim.handle().push_fault(Fault::CloseConnection);
        // No response at all: hyper aborts before it flushes the head.
        let error = get_with(&sim, &[("run_id", "r")], None).await.unwrap_err();
        assert!(error.is_request(), "{error:?}");
        assert_eq!(get(&sim, &[("run_id", "r")]).await.status(), 200);
    }

    #[tokio::test]
    async fn one_shot_faults_come_before_the_sticky_one() {
        let sim = SimApi::start(None).await.unwrap();
        let handle = sim.handle();
        handle.add_checkpoint("r", "sampler", "step-1", None);
        handle.set_fault(Some(Fault::Status {
            code: 500,
            retry_after: None,
            body: None,
        }));
        handle.push_fault(Fault::Empty);
        handle.push_fault(Fault::NotJsonObject);
        let query = [("run_id", "r")];
        assert_eq!(
            json_of(get(&sim, &query).await).await,
            json!({"checkpoints": []})
        );
        assert_eq!(json_of(get(&sim, &query).await).await, json!([]));
        assert_eq!(get(&sim, &query).await.status(), 500);
        assert_eq!(get(&sim, &query).await.status(), 500);
        handle.set_fault(None);
        assert_eq!(listing(&sim, &query).await.len(), 1);
        assert_eq!(handle.requests(), 5);
    }

    #[tokio::test]
    async fn other_paths_and_methods_get_json_errors() {
        let sim = SimApi::start(None).await.unwrap();
        let client = reqwest::Client::new();
        let response = client
            .get(format!("{}/v1/other", sim.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(json_of(response).await["code"], "NOT_FOUND");
        let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
        let response = client.post(url).send().await.unwrap();
        assert_eq!(response.status(), 405);
        assert_eq!(response.headers()["allow"], "GET, HEAD");
        assert_eq!(json_of(response).await["code"], "METHOD_NOT_ALLOWED");
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let sim = SimApi::start(None).await.unwrap();
        let url = format!("{}{CHECKPOINTS_PATH}?run_id=r", sim.base_url());
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
        sim.shutdown().await;
        assert!(reqwest::get(&url).await.unwrap_err().is_connect());
    }
}
