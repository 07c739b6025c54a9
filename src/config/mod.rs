//! Configuration in two stages, as ripgrep (LowArgs -> HiArgs) and vector do:
//!
//! 1. `raw.rs`: the `config` crate merges the file (TOML or YAML) with
//!    `LOOPWATCH__SECTION__KEY` overrides, and serde deserializes it into [`RawConfig`].
//! 2. `validate.rs` (with `sinks.rs` and `secrets.rs`): [`RawConfig`] -> the typed
//!    [`Config`], collecting *every* problem as `file: key: reason and fix` in one
//!    [`ConfigError`] instead of stopping at the first.
//!
//! `redact.rs` turns a [`Config`] back into the TOML `check-config` prints. This file
//! holds the typed config and the entry points ([`load`], [`load_str`], [`locate`]).
//!
//! Secrets never come from the file: `*_env` names a variable, `*_file` a path. Resolved
//! secrets live in [`Secret`], whose `Debug` and `Display` print `[redacted]`.

mod file;
mod invocation;
pub mod raw;
mod redact;
mod secrets;
mod sinks;
mod validate;

pub(crate) use invocation::store_url_override;
pub use invocation::{Invocation, absolute_sqlite_url, set_store_url};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::model::{CheckpointTarget, EventType};
use crate::signing::{Ed25519Key, SigningKey};

pub use ::config::FileFormat;
pub use file::MAX_CONFIG_BYTES;
pub use raw::{Environment, RawConfig};
pub use redact::redact_url;
pub use secrets::Secret;

/// Every problem found in a config, one `file: key: reason and fix` line each.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: String,
    /// The absolute path of the file it was read from; `None` for a config made from a
    /// string (the demo's, tests'). The command lines loopwatch prints name it
    /// ([`Config::invocation`]).
    pub file: Option<PathBuf>,
    /// Unsafe settings that were accepted (plain HTTP carrying a key, a public listen
    /// address, files others may write or read), one `file: key: what and why` line each:
    /// logged at WARN by `run` and `once`, printed by `check-config`.
    pub warnings: Vec<String>,
    /// The secrets this load did not read ([`ReadSecrets`]), one `key = source` line
    /// each (`api.api_key_file = /run/credentials/loopwatch/baseten-api-key`). Empty for a
    /// config that may run: [`crate::app::App`] refuses one with skipped secrets.
    pub skipped_secrets: Vec<String>,
    pub api: ApiConfig,
    pub poll: PollConfig,
    pub store: StoreConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub delivery: DeliveryConfig,
    pub targets: Vec<TargetConfig>,
    pub sinks: Vec<SinkConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    Bearer,
    ApiKey,
}

/// `Debug` hides a password in `base_url` (`https://user:pass@host`).
#[derive(Clone)]
pub struct ApiConfig {
    pub base_url: Url,
    pub api_key: Secret,
    pub api_key_source: String,
    pub auth_scheme: AuthScheme,
    pub timeout: Duration,
    pub max_requests_per_second: f64,
    pub max_response_bytes: u64,
    /// Response bodies held in memory at once, across targets, probes and sinks.
    pub max_buffered_bytes: u64,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ApiConfig {
            base_url,
            api_key,
            api_key_source,
            auth_scheme,
            timeout,
            max_requests_per_second,
            max_response_bytes,
            max_buffered_bytes,
        } = self;
        f.debug_struct("ApiConfig")
            .field("base_url", &redact_url(base_url.as_str()))
            .field("api_key", api_key)
            .field("api_key_source", api_key_source)
            .field("auth_scheme", auth_scheme)
            .field("timeout", timeout)
            .field("max_requests_per_second", max_requests_per_second)
            .field("max_response_bytes", max_response_bytes)
            .field("max_buffered_bytes", max_buffered_bytes)
            .finish()
    }
}

#[derive(Clone, Debug)]
pub struct PollConfig {
    pub interval: Duration,
    pub syncing_interval: Duration,
    pub jitter: f64,
    pub concurrency: NonZeroUsize,
    pub emit_existing: bool,
    pub delete_after_missing_polls: u32,
    pub stalled_after: Option<Duration>,
    /// Quiet targets back off from `syncing_interval` toward `interval`.
    pub adaptive: bool,
    /// How a checkpoint whose `sync_status` stays null completes (docs/events.md).
    pub null_status: NullStatus,
}

/// `poll.null_status`: what to do with a checkpoint whose `sync_status` is null.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NullStatus {
    /// Probe its source and files; ready files complete it (the default).
    Probe,
    /// Wait for a `sync_status`: null stays pending (and may stall).
    Pending,
}

impl NullStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NullStatus::Probe => "probe",
            NullStatus::Pending => "pending",
        }
    }
}

/// `Debug` by hand: a `postgres://` URL may carry a password.
#[derive(Clone)]
pub struct StoreConfig {
    pub url: String,
    /// PostgreSQL only: how long a target's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// PostgreSQL only: this replica's name in `replicas` and `shard_leases`.
    pub replica_id: String,
    /// Delivered deliveries (and events with none left) older than this are pruned;
    /// `None` keeps everything.
    pub retention: Option<Duration>,
    /// SQLite only: state files are created 0640 (the group may read them), not 0600.
    pub group_readable: bool,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let StoreConfig {
            url,
            lease_ttl,
            replica_id,
            retention,
            group_readable,
        } = self;
        f.debug_struct("StoreConfig")
            .field("url", &redact_url(url))
            .field("lease_ttl", lease_ttl)
            .field("replica_id", replica_id)
            .field("retention", retention)
            .field("group_readable", group_readable)
            .finish()
    }
}

impl StoreConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Open connections at most (lowered at start to half the descriptor limit).
    pub max_connections: usize,
    /// A request's headers must arrive within this, from the connection's start or the
    /// end of the previous response.
    pub header_read_timeout: Duration,
    /// A connection that moves no byte for this long is closed.
    pub idle_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// How long shutdown waits for in-flight deliveries.
    pub shutdown_grace: Duration,
}

/// The one filter of a target (the API takes exactly one per request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    RunId(String),
    BaseModel(String),
    CheckpointPath(String),
}

impl Filter {
    pub fn query_key(&self) -> &'static str {
        match self {
            Filter::RunId(_) => "run_id",
            Filter::BaseModel(_) => "base_model",
            Filter::CheckpointPath(_) => "checkpoint_path",
        }
    }
    pub fn value(&self) -> &str {
        match self {
            Filter::RunId(v) | Filter::BaseModel(v) | Filter::CheckpointPath(v) => v,
        }
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.query_key(), self.value())
    }
}

#[derive(Clone, Debug)]
pub struct TargetConfig {
    pub name: String,
    pub filter: Filter,
    /// `None`: every checkpoint, unknown targets included; a set: only those values.
    pub checkpoint_targets: Option<BTreeSet<CheckpointTarget>>,
    pub interval: Duration,
    pub syncing_interval: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    Standard,
    CloudEvents,
    CloudEventsBinary,
    Template,
}

impl PayloadFormat {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadFormat::Standard => "standard",
            PayloadFormat::CloudEvents => "cloudevents",
            PayloadFormat::CloudEventsBinary => "cloudevents-binary",
            PayloadFormat::Template => "template",
        }
    }
}

/// A header value with `${VAR}` already read from the environment; redacted in `Debug`
/// because header values are typically tokens.
#[derive(Clone, Debug)]
pub struct HeaderConfig {
    pub name: String,
    /// As written in the config (with `${VAR}` unexpanded): safe to print.
    pub template: String,
    pub value: Secret,
}

/// `Debug` by hand: a webhook `url` may carry a password or a token in its query.
#[derive(Clone)]
pub enum SinkKind {
    Webhook {
        url: Url,
        secret: Option<SigningKey>,
        previous_secret: Option<SigningKey>,
        /// `signing_key_file`/`signing_key_env`: adds a `v1a` (ed25519) signature.
        signing_key: Option<Ed25519Key>,
        format: PayloadFormat,
        template: Option<String>,
        content_type: String,
        headers: Vec<HeaderConfig>,
    },
    Exec {
        command: Vec<String>,
    },
    /// Deploys completed sampler checkpoints through the Loops API (`[api]`).
    BasetenDeploy(DeployConfig),
}

impl fmt::Debug for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkKind::Webhook {
                url,
                secret,
                previous_secret,
                signing_key,
                format,
                template,
                content_type,
                headers,
            } => f
                .debug_struct("Webhook")
                .field("url", &redact_url(url.as_str()))
                .field("secret", secret)
                .field("previous_secret", previous_secret)
                .field("signing_key", signing_key)
                .field("format", format)
                .field("template", template)
                .field("content_type", content_type)
                .field("headers", headers)
                .finish(),
            SinkKind::Exec { command } => f.debug_struct("Exec").field("command", command).finish(),
            SinkKind::BasetenDeploy(d) => f.debug_tuple("BasetenDeploy").field(d).finish(),
        }
    }
}

impl SinkKind {
    /// As written in the config (`kind = ...`).
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Exec { .. } => "exec",
            SinkKind::BasetenDeploy(_) => "baseten_deploy",
        }
    }
}

/// The keys of a `kind = "baseten_deploy"` sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeployConfig {
    /// A MiniJinja template over the standard body (compiled at validation).
    pub model_name: String,
    pub instance_type_id: String,
    pub hf_secret_name: String,
    /// A newer completed sampler checkpoint of the same run supersedes a waiting deploy.
    pub latest_only: bool,
    /// `POST .../validate` before each deploy attempt.
    pub validate: bool,
    /// Follow each deployment until ACTIVE or failed (`follow_interval`, `follow_timeout`).
    pub follow: bool,
    pub follow_interval: std::time::Duration,
    pub follow_timeout: std::time::Duration,
    /// Where a human decides (`deliveries approve`).
    pub approval: Approval,
    pub approval_deadline: std::time::Duration,
    /// An environment to promote an ACTIVE deployment to (`None`: no promotion).
    pub promote_to: Option<String>,
    /// Deactivate this sink's older deployments of the model once a newer one is live.
    pub deactivate_superseded: bool,
}

/// `approval` of a `baseten_deploy` sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Approval {
    #[default]
    None,
    BeforeDeploy,
    BeforePromote,
}

impl Approval {
    pub fn as_str(self) -> &'static str {
        match self {
            Approval::None => "none",
            Approval::BeforeDeploy => "before_deploy",
            Approval::BeforePromote => "before_promote",
        }
    }
}

impl DeployConfig {
    /// A config with every lifecycle key at its default (tests, tools).
    pub fn new(model_name: &str, instance_type_id: &str, hf_secret_name: &str) -> Self {
        DeployConfig {
            model_name: model_name.into(),
            instance_type_id: instance_type_id.into(),
            hf_secret_name: hf_secret_name.into(),
            latest_only: true,
            validate: true,
            follow: true,
            follow_interval: std::time::Duration::from_secs(30),
            follow_timeout: std::time::Duration::from_secs(2 * 3600),
            approval: Approval::None,
            approval_deadline: std::time::Duration::from_secs(24 * 3600),
            promote_to: None,
            deactivate_superseded: false,
        }
    }
}

/// The default `model_name` of a `baseten_deploy` sink.
pub const DEFAULT_MODEL_NAME: &str = "{{ data.target }}";

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub events: BTreeSet<EventType>,
    /// `None`: every target.
    pub targets: Option<BTreeSet<String>>,
    /// `None`: every checkpoint, unknown targets included; a set: only those values.
    pub checkpoint_targets: Option<BTreeSet<CheckpointTarget>>,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub concurrency: NonZeroUsize,
    pub ordered: bool,
    /// Where the secrets came from (`secret_env = X` ...), for `check-config`.
    pub secret_sources: Vec<(String, String)>,
}

impl SinkConfig {
    /// The deploy settings of a `baseten_deploy` sink.
    pub fn deploy(&self) -> Option<&DeployConfig> {
        match &self.kind {
            SinkKind::BasetenDeploy(d) => Some(d),
            _ => None,
        }
    }

    /// Whether an event of this kind for this target/checkpoint target goes to this sink.
    pub fn wants(
        &self,
        kind: EventType,
        target: &str,
        checkpoint_target: &CheckpointTarget,
    ) -> bool {
        self.events.contains(&kind)
            && self.targets.as_ref().is_none_or(|t| t.contains(target))
            && takes(self.checkpoint_targets.as_ref(), checkpoint_target)
    }
}

/// Whether a `checkpoint_targets` filter takes a checkpoint of target `t`: absent takes
/// every checkpoint (unknown targets included), a list only what it names.
pub fn takes(filter: Option<&BTreeSet<CheckpointTarget>>, t: &CheckpointTarget) -> bool {
    filter.is_none_or(|only| only.contains(t))
}

pub const DEFAULT_RETRY_SCHEDULE: [&str; 9] =
    ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"];

/// Which secrets a load reads. A command reads only those it uses: `state` and
/// `deliveries` open the store and need none, `checkpoints` needs the API key, `run`,
/// `once` and `test-sink` need all. A secret not read is neither looked up in the
/// environment nor opened as a file; it is listed in [`Config::skipped_secrets`] and
/// stands in the config as a placeholder that signs nothing (see `secrets.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadSecrets {
    All,
    /// `[api]`'s key only.
    ApiKey,
    None,
}

/// Load and validate a config file, with `LOOPWATCH__*` overrides from `env`.
pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
    load_reading(path, env, ReadSecrets::All)
}

/// [`load`], reading only the secrets `secrets` names.
pub fn load_reading(
    path: &Path,
    env: &Environment,
    secrets: ReadSecrets,
) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let one = |msg: String| ConfigError {
        problems: vec![printable(&format!("{name}: {msg}"))],
    };
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => FileFormat::Toml,
        Some("yaml" | "yml") => FileFormat::Yaml,
        _ => {
            return Err(one(
                "unknown config format; name the file *.toml, *.yaml or *.yml".into(),
            ));
        }
    };
    let text = read_config_file(path).map_err(one)?;
    let mut cfg = load_str_with(&text, format, &name, env, true, secrets)?;
    warn_if_writable(&mut cfg, path);
    // Against the directory it was started in: a line printed for a person to run elsewhere
    // (`approve_command`) names the same file.
    cfg.file = Some(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()));
    Ok(cfg)
}

/// `<hostname>-<pid>-<4 random hex digits>`: unique per process, readable in `replicas`
/// and `shard_leases`. The random part because the first two repeat where containers
/// run with the host's name (host networking) as pid 1: two replicas under one id would
/// both poll the same targets. Drawn once per process, so a reload sees the same id.
pub(crate) fn default_replica_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        use rand::RngExt;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "loopwatch".into());
        let salt: u16 = rand::rng().random();
        format!("{host}-{}-{salt:04x}", std::process::id())
    })
    .clone()
}

/// The config file's text: a regular file of at most [`MAX_CONFIG_BYTES`], read without
/// ever blocking on a FIFO or reading a device (docs/configuration.md, "The file").
fn read_config_file(path: &Path) -> Result<String, String> {
    file::read_regular(path, MAX_CONFIG_BYTES).map_err(|e| {
        let fix = if e.kind() == std::io::ErrorKind::NotFound {
            "`loopwatch init` writes a minimal one (config/loopwatch.example.toml lists every key)"
        } else {
            "point -c or LOOPWATCH_CONFIG at a regular file"
        };
        format!("cannot read the config file: {e}; {fix}")
    })
}

/// First among `cfg.warnings`: the config file at `path` is writable by others.
fn warn_if_writable(cfg: &mut Config, path: &Path) {
    let name = path.display();
    if let Some(w) = writable_by_others(path) {
        cfg.warnings.insert(0, printable(&format!(
            "{name}: the config file is {w}: whoever can change it can run commands as this daemon (an exec sink's command) and redirect its webhooks; chmod go-w {name}"
        )));
    }
}

/// `Some("writable by group and others (mode 0666)")` when a file's mode lets anyone but
/// its owner write it. Symlinks are followed (Kubernetes mounts are links).
pub(crate) fn writable_by_others(path: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => "group and others",
        (true, false) => "its group",
        (false, true) => "others",
        (false, false) => return None,
    };
    Some(format!("writable by {who} (mode {mode:04o})"))
}

/// Validate config text; `name` is used in messages.
pub fn load_str(
    text: &str,
    format: FileFormat,
    name: &str,
    env: &Environment,
) -> Result<Config, ConfigError> {
    load_str_with(text, format, name, env, true, ReadSecrets::All)
}

/// The config for commands that only talk to the API (`checkpoints`): targets are not
/// required, no secret but the API key is read, and without a file the defaults plus
/// `LOOPWATCH__*` overrides apply. The same warnings as [`load`] (a config file others
/// may write, a secret others may read).
pub fn load_for_api(path: Option<&Path>, env: &Environment) -> Result<Config, ConfigError> {
    match path {
        Some(p) => {
            let format = match p.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => FileFormat::Yaml,
                _ => FileFormat::Toml,
            };
            let name = p.display().to_string();
            let text = read_config_file(p).map_err(|e| ConfigError {
                problems: vec![printable(&format!("{name}: {e}"))],
            })?;
            let mut cfg = load_str_with(&text, format, &name, env, false, ReadSecrets::ApiKey)?;
            warn_if_writable(&mut cfg, p);
            Ok(cfg)
        }
        None => load_str_with(
            "",
            FileFormat::Toml,
            "(defaults)",
            env,
            false,
            ReadSecrets::ApiKey,
        ),
    }
}

fn load_str_with(
    text: &str,
    format: FileFormat,
    name: &str,
    env: &Environment,
    require_targets: bool,
    secrets: ReadSecrets,
) -> Result<Config, ConfigError> {
    let raw::Sourced { raw, non_finite } = raw::read(text, format, name, env)?;
    let result = validate::validate(raw, name, env, require_targets, secrets);
    if non_finite.is_empty() {
        return result;
    }
    let mut w = validate::Problems {
        file: name,
        env,
        list: Vec::new(),
        warnings: Vec::new(),
        secrets,
        skipped: Vec::new(),
    };
    for (key, f) in non_finite {
        w.err(&key, format!("must be a finite number, found {f}"));
    }
    if let Err(e) = result {
        w.list.extend(e.problems);
    }
    Err(ConfigError { problems: w.list })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Control characters (a newline in a quoted key, an escape sequence) escaped, so that
/// every problem stays one line and cannot rewrite the operator's terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// `"250ms"`, `"30s"`, `"5m"`, `"24h"`, `"1h 30m"`, or `"0"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    humantime::parse_duration(s).ok()
}

/// Split `bt://loops:<run_id>/(weights|sampler_weights)/<name>`.
pub fn parse_checkpoint_path(uri: &str) -> Option<(&str, CheckpointTarget, &str)> {
    let rest = uri.strip_prefix("bt://loops:")?;
    let mut parts = rest.splitn(3, '/');
    let run = parts.next().filter(|s| !s.is_empty())?;
    let target = CheckpointTarget::from_uri_segment(parts.next()?)?;
    let name = parts.next().filter(|s| !s.is_empty() && !s.contains('/'))?;
    Some((run, target, name))
}

impl Config {
    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

/// Where the config comes from: `-c`, then `LOOPWATCH_CONFIG`, then the first that exists
/// of `./loopwatch.toml`, `./loopwatch.yaml`, `/etc/loopwatch/loopwatch.toml`.
pub fn locate(explicit: Option<PathBuf>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let candidates = [
        "loopwatch.toml",
        "loopwatch.yaml",
        "/etc/loopwatch/loopwatch.toml",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| ConfigError {
            problems: vec![format!(
                "no config file: pass -c FILE or set LOOPWATCH_CONFIG (looked for {}); `loopwatch init` writes a minimal one to start from",
                candidates.join(", ")
            )],
        })
}

/// Group sinks by name, for lookups in hot paths.
pub fn sinks_by_name(cfg: &Config) -> BTreeMap<&str, &SinkConfig> {
    cfg.sinks.iter().map(|s| (s.name.as_str(), s)).collect()
}

#[cfg(test)]
mod tests;
