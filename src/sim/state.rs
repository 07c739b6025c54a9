//! What the simulated API serves: checkpoints as JSON objects with their files and source
//! (s3, or a volume), training runs that save and sync by the simulated clock (some never
//! setting a `sync_status`), the deploys it accepted, and a log of the requests it saw. [`SimHandle`] is the
//! control handle tests and the demo hold; the HTTP routes read the same state.
//!
//! Benchmarks poll thousands of runs, so a `run_id` listing reads only its run (an index)
//! and is encoded once: the body is kept until a checkpoint of that run changes. The
//! simulator then costs about what a real server's HTTP layer costs, and the benchmarks'
//! floors (the same requests with the body discarded) measure HTTP, not JSON encoding here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use serde_json::{Map, Value, json};

use super::Route;
use super::faults::{Fault, Faults};
use super::models::{Models, Promotion, SimDeployment};

/// Base model of checkpoints whose run was never given one.
pub const DEFAULT_BASE_MODEL: &str = "Qwen/Qwen3-8B";
/// Training steps between two saves of a training run: save N is named `step-<N*100>`.
pub const STEPS_PER_SAVE: u32 = 100;

/// Cloneable control handle over the simulator's state.
#[derive(Clone)]
pub struct SimHandle {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) api_key: Option<String>,
    /// Checkpoint objects by `id`, exactly as served.
    pub(super) checkpoints: BTreeMap<String, Stored>,
    base_models: HashMap<String, String>,
    runs: Vec<TrainingRun>,
    clock_offset: TimeDelta,
    /// Random per instance so two simulators never hand out the same `id`.
    pub(super) id_prefix: String,
    next_id: u64,
    pub(super) faults: Faults,
    /// Requests to the checkpoints endpoint, faulted and rejected ones included.
    pub(super) requests: u64,
    /// Requests per route, faulted and rejected ones included.
    pub(super) requests_by_route: HashMap<Route, u64>,
    /// Deploys accepted, in order.
    pub(super) deploys: Vec<Deploy>,
    /// The models API: models, deployments, promotions, deactivations.
    pub(super) models: Models,
    /// Where to append request and response bodies ([`LOG_ENV`]), if anywhere.
    pub(super) log: Option<std::path::PathBuf>,
    pub(super) last_query: Option<String>,
    pub(super) last_authorization: Option<String>,
    /// Ids of each run's checkpoints, keyed by their `run_id` field as served.
    pub(super) by_run: HashMap<String, Vec<String>>,
    /// Encoded 200 bodies of `run_id` listings, dropped when a checkpoint of the run changes.
    rendered: HashMap<String, Bytes>,
    /// No pending `complete_at` is earlier than this: requests before it skip the scan.
    next_complete: Option<DateTime<Utc>>,
}

pub(super) struct Stored {
    pub(super) object: Map<String, Value>,
    /// When a training run's checkpoint turns COMPLETE by itself; cleared by `set_status`.
    complete_at: Option<DateTime<Utc>>,
    /// At `complete_at` only the files become whole: `sync_status` is never set (a run
    /// whose checkpoints stay null).
    keeps_null: bool,
    /// The files the files route lists, in (node_rank, name) order.
    pub(super) files: Vec<SimFile>,
    /// `Some((volume_ref, path))`: volume-backed, the files route answers `NOT_PRESIGNABLE`.
    pub(super) volume: Option<(String, String)>,
}

/// One file of a checkpoint, as the files route lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFile {
    pub name: String,
    pub node_rank: u32,
    pub size_bytes: u64,
    pub last_modified: DateTime<Utc>,
}

/// A deploy the simulated API accepted (`POST /v1/loops/checkpoints/deploy`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deploy {
    pub checkpoint_ids: Vec<String>,
    pub model_name: String,
    pub instance_type_id: String,
    pub hf_secret_name: String,
    /// What the API answered.
    pub model_id: String,
    pub deployment_id: String,
    /// The request body as received.
    pub body: Value,
}

/// Environment variable naming a file the simulator appends one JSON line to for every
/// request body it receives on `validate` and `deploy` and every 2xx body it answers
/// unfaulted on any route (`{"route", "kind": "request"|"response", "body"}`):
/// `scripts/interop` checks them against Baseten's own models.
pub const LOG_ENV: &str = "LOOPWATCH_SIM_LOG";

/// Size of the small file every checkpoint has from the start (its adapter config).
const CONFIG_FILE_BYTES: u64 = 512;

/// The files of a checkpoint of `size` bytes: whole, or (while syncing) only the config.
fn default_files(size: u64, at: DateTime<Utc>, whole: bool) -> Vec<SimFile> {
    let file = |name: &str, size_bytes| SimFile {
        name: name.into(),
        node_rank: 0,
        size_bytes,
        last_modified: at,
    };
    let mut files = vec![file("adapter_config.json", CONFIG_FILE_BYTES.min(size))];
    if whole && size > CONFIG_FILE_BYTES {
        files.push(file("adapter_model.safetensors", size - CONFIG_FILE_BYTES));
    }
    files
}

impl Stored {
    /// A string field as served, or "" when it is absent or not a string.
    pub(super) fn field(&self, key: &str) -> &str {
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

impl Stored {
    /// The files of a checkpoint done syncing: the default whole set, unless a test set
    /// its own files (then they stay as set).
    fn make_whole(&mut self, at: DateTime<Utc>) {
        let size = self
            .object
            .get("size_bytes")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let partial = default_files(size, at, false);
        let untouched = self.files.len() == partial.len()
            && self
                .files
                .iter()
                .zip(&partial)
                .all(|(a, b)| a.name == b.name && a.size_bytes == b.size_bytes);
        if untouched {
            self.files = default_files(size, at, true);
        }
    }

    fn sort_files(&mut self) {
        self.files
            .sort_by(|a, b| (a.node_rank, &a.name).cmp(&(b.node_rank, &b.name)));
    }
}

struct TrainingRun {
    run_id: String,
    /// Its checkpoints never get a `sync_status`; their files become whole after `sync_for`.
    keeps_null: bool,
    started: DateTime<Utc>,
    every: TimeDelta,
    sync_for: TimeDelta,
    max_saves: Option<u32>,
    saves: u32,
}

/// The one filter of a listing request.
pub(super) enum Filter {
    RunId(String),
    BaseModel(String),
    Path {
        run: String,
        target: &'static str,
        name: String,
    },
}

impl SimHandle {
    pub(super) fn new(api_key: Option<String>) -> SimHandle {
        let state = State {
            api_key,
            log: std::env::var_os(LOG_ENV)
                .filter(|v| !v.is_empty())
                .map(Into::into),
            id_prefix: format!("{:04x}", rand::random::<u16>()),
            ..State::default()
        };
        SimHandle {
            state: Arc::new(Mutex::new(state)),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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
    /// A checkpoint set COMPLETE has its whole files.
    pub fn set_status_many<S: AsRef<str>>(&self, ids: &[S], status: Option<&str>) {
        let mut st = self.lock();
        let now = st.now();
        let st = &mut *st;
        for id in ids {
            if let Some(stored) = st.checkpoints.get_mut(id.as_ref()) {
                stored.object.insert("sync_status".into(), json!(status));
                stored.complete_at = None;
                if matches!(status, Some("COMPLETE" | "COMPLETED")) {
                    stored.make_whole(now);
                }
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

    /// Replace the files of a checkpoint: `(relative_file_name, size_bytes)`, all on node
    /// rank 0 and modified now. Unknown ids are ignored.
    pub fn set_files(&self, id: &str, files: &[(&str, u64)]) {
        let mut st = self.lock();
        let now = st.now();
        if let Some(stored) = st.checkpoints.get_mut(id) {
            stored.files = files
                .iter()
                .map(|&(name, size_bytes)| SimFile {
                    name: name.into(),
                    node_rank: 0,
                    size_bytes,
                    last_modified: now,
                })
                .collect();
            stored.sort_files();
        }
    }

    /// Add a file to a checkpoint, or grow (or shrink) the file of that name; either way
    /// it is modified now.
    pub fn put_file(&self, id: &str, name: &str, size_bytes: u64) {
        let mut st = self.lock();
        let now = st.now();
        if let Some(stored) = st.checkpoints.get_mut(id) {
            match stored.files.iter_mut().find(|f| f.name == name) {
                Some(f) => {
                    f.size_bytes = size_bytes;
                    f.last_modified = now;
                }
                None => stored.files.push(SimFile {
                    name: name.into(),
                    node_rank: 0,
                    size_bytes,
                    last_modified: now,
                }),
            }
            stored.sort_files();
        }
    }

    /// The files of a checkpoint as the files route would list them now.
    pub fn files(&self, id: &str) -> Vec<SimFile> {
        let mut st = self.lock();
        st.tick();
        st.checkpoints
            .get(id)
            .map(|s| s.files.clone())
            .unwrap_or_default()
    }

    /// Set a checkpoint's `size_bytes` (its files are left as they are).
    pub fn set_size_bytes(&self, id: &str, size_bytes: u64) {
        self.set_field(id, "size_bytes", json!(size_bytes));
    }

    /// Make a checkpoint volume-backed: its source is `volume` with this ref
    /// (`bdn:<ns>/<volume>:<tag>`) and path, and its files cannot be presigned.
    pub fn set_volume(&self, id: &str, volume_ref: &str, path: &str) {
        if let Some(stored) = self.lock().checkpoints.get_mut(id) {
            stored.volume = Some((volume_ref.into(), path.into()));
        }
    }

    /// Append request and response bodies to `path` (None: stop), as [`LOG_ENV`] does.
    pub fn log_to(&self, path: Option<std::path::PathBuf>) {
        self.lock().log = path;
    }

    /// The statuses each new deployment moves through, from its offset after creation
    /// (on the simulated clock); the default is `BUILDING`, `DEPLOYING`, then `ACTIVE`
    /// after 3 s ([`super::models::DEFAULT_SCRIPT`]).
    pub fn set_deploy_script(&self, script: &[(&str, Duration)]) {
        self.lock().models.script = script.iter().map(|(s, d)| (s.to_string(), *d)).collect();
    }

    /// A deployment someone else made of the model `model_name` (created if missing),
    /// outside loopwatch: its id.
    pub fn add_foreign_deployment(&self, model_name: &str) -> String {
        let mut st = self.lock();
        let now = st.now();
        let prefix = st.id_prefix.clone();
        let model_id = st.models.model(model_name, &prefix, now);
        st.models.deploy(&model_id, &prefix, true, now)
    }

    /// Force a deployment's status (`None`: back to its script).
    pub fn set_deployment_status(&self, deployment_id: &str, status: Option<&str>) {
        self.lock().models.force(deployment_id, status);
    }

    /// Delete a deployment: reads of it answer 404.
    pub fn remove_deployment(&self, deployment_id: &str) {
        self.lock().models.remove(deployment_id);
    }

    /// Every deployment of the model named `model_name`, oldest first.
    pub fn deployments_of(&self, model_name: &str) -> Vec<SimDeployment> {
        let st = self.lock();
        let Some(m) = st.models.models.iter().find(|m| m.name == model_name) else {
            return Vec::new();
        };
        st.models
            .deployments
            .iter()
            .filter(|d| d.model_id == m.id)
            .cloned()
            .collect()
    }

    /// The status of a deployment now, by its script (or forced).
    pub fn deployment_status(&self, deployment_id: &str) -> Option<String> {
        let st = self.lock();
        let now = st.now();
        st.models
            .deployments
            .iter()
            .find(|d| d.id == deployment_id)
            .map(|d| d.status_at(now))
    }

    /// The promotions the API accepted, oldest first.
    pub fn promotions(&self) -> Vec<Promotion> {
        self.lock().models.promotions.clone()
    }

    /// The deactivations the API accepted (model id, deployment id), oldest first.
    pub fn deactivations(&self) -> Vec<(String, String)> {
        self.lock().models.deactivations.clone()
    }

    /// The deploys the API accepted, oldest first.
    pub fn deploys(&self) -> Vec<Deploy> {
        self.lock().deploys.clone()
    }

    /// Requests received on `route`, faulted and rejected ones included.
    pub fn requests_to(&self, route: Route) -> u64 {
        self.lock()
            .requests_by_route
            .get(&route)
            .copied()
            .unwrap_or(0)
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
        self.push_run(
            run_id, base_model, every, sync_for, max_saves, started, false,
        );
    }

    /// A training run like [`SimHandle::start_training_run`] whose checkpoints never get
    /// a `sync_status` (it stays JSON null, as the Loops SDK warns it may): their files
    /// grow from the config alone to whole `sync_for` after each save, and only the
    /// files route shows it.
    pub fn start_null_status_run(
        &self,
        run_id: &str,
        base_model: &str,
        every: Duration,
        sync_for: Duration,
        max_saves: Option<u32>,
    ) {
        let started = self.now();
        self.push_run(
            run_id, base_model, every, sync_for, max_saves, started, true,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn push_run(
        &self,
        run_id: &str,
        base_model: &str,
        every: Duration,
        sync_for: Duration,
        max_saves: Option<u32>,
        started: DateTime<Utc>,
        keeps_null: bool,
    ) {
        assert!(
            !every.is_zero(),
            "a training run needs a non-zero save interval"
        );
        let mut st = self.lock();
        st.base_models.insert(run_id.into(), base_model.into());
        st.runs.push(TrainingRun {
            run_id: run_id.into(),
            keeps_null,
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

    /// Queue a fault for the next request to the checkpoints endpoint only (FIFO); one-shot
    /// faults beat the sticky one.
    pub fn push_fault(&self, fault: Fault) {
        self.push_fault_to(Route::Checkpoints, fault);
    }

    /// Apply `fault` to every request to the checkpoints endpoint until cleared with None.
    pub fn set_fault(&self, fault: Option<Fault>) {
        self.set_fault_on(Route::Checkpoints, fault);
    }

    /// [`SimHandle::push_fault`] for any route.
    pub fn push_fault_to(&self, route: Route, fault: Fault) {
        self.lock().faults.push(route, fault);
    }

    /// [`SimHandle::set_fault`] for any route.
    pub fn set_fault_on(&self, route: Route, fault: Option<Fault>) {
        self.lock().faults.set(route, fault);
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
    pub(super) fn now(&self) -> DateTime<Utc> {
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
            "lora_config": {
                "config_version": "v1",
                "targets": ["q_proj", "k_proj", "v_proj", "o_proj"],
                "expert_layout": null,
            },
            "size_bytes": size_bytes,
            "sync_status": status,
            "id": id,
            "run_id": run_id,
            "target": target,
        });
        let Value::Object(object) = object else {
            unreachable!("json! of an object literal")
        };
        let whole = matches!(status, Some("COMPLETE" | "COMPLETED"));
        let stored = Stored {
            object,
            complete_at,
            keeps_null: false,
            files: default_files(size_bytes, created, whole),
            volume: None,
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
    pub(super) fn tick(&mut self) {
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
                saves.push((
                    run.run_id.clone(),
                    run.saves,
                    created,
                    run.sync_for,
                    run.keeps_null,
                ));
            }
        }
        for (run_id, n, created, sync_for, keeps_null) in saves {
            let name = format!("step-{}", u64::from(n) * u64::from(STEPS_PER_SAVE));
            for target in ["sampler", "trainer"] {
                // An overflow (e.g. `Duration::MAX`) means the checkpoint never syncs.
                let complete_at = created.checked_add_signed(sync_for);
                let status = (!keeps_null).then_some("SYNCING");
                let id = self.insert(&run_id, target, &name, created, status, complete_at);
                if let Some(stored) = self.checkpoints.get_mut(&id) {
                    stored.keeps_null = keeps_null;
                }
            }
        }
        if self.next_complete.is_none_or(|at| at > now) {
            return;
        }
        let mut next = None;
        for stored in self.checkpoints.values_mut() {
            match stored.complete_at {
                Some(at) if at <= now => {
                    if !stored.keeps_null {
                        stored
                            .object
                            .insert("sync_status".into(), json!("COMPLETE"));
                    }
                    stored.complete_at = None;
                    stored.make_whole(at);
                    self.rendered.remove(stored.field("run_id"));
                }
                Some(at) => next = Some(next.map_or(at, |t: DateTime<Utc>| t.min(at))),
                None => {}
            }
        }
        self.next_complete = next;
    }

    /// The listing `{"checkpoints": [...]}` for `filter`, newest first, as of the last
    /// [`State::tick`].
    pub(super) fn listing(&self, filter: &Filter) -> Value {
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

    /// A `checkpoint_path` filter that names no checkpoint: the API answers it 404, not an
    /// empty listing (`run_id` and `base_model` listings may be empty).
    pub(super) fn path_missing(&self, filter: &Filter) -> bool {
        let Filter::Path { run, target, name } = filter else {
            return false;
        };
        !self.checkpoints.values().any(|s| {
            s.field("run_id") == run
                && s.field("target") == *target
                && s.field("checkpoint_id") == name
        })
    }

    /// [`State::listing`] encoded, from the cache for `run_id` listings.
    pub(super) fn listing_body(&mut self, filter: Filter) -> Bytes {
        if let Filter::RunId(run) = &filter
            && let Some(body) = self.rendered.get(run)
        {
            return body.clone();
        }
        let body =
            Bytes::from(serde_json::to_vec(&self.listing(&filter)).expect("json serializes"));
        if let Filter::RunId(run) = filter {
            self.rendered.insert(run, body.clone());
        }
        body
    }
}
