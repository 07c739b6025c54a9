//! Configuration in two stages: the `config` crate merges the file (TOML or YAML) with
//! `LOOPWATCH__SECTION__KEY` overrides into a loose tree, then [`validate`] walks that tree
//! once and turns it into the typed [`Config`], collecting *every* problem as
//! `file: key: reason and fix` instead of stopping at the first.
//!
//! Secrets never come from the file: `*_env` names a variable, `*_file` a path. Resolved
//! secrets live in [`Secret`], whose `Debug` and `Display` print `[redacted]`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};
use url::Url;

use crate::model::{CheckpointTarget, EventType};

pub use ::config::FileFormat;

/// A secret value. Never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A Standard Webhooks signing key (the bytes after `whsec_`), redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(Vec<u8>);

impl SigningKey {
    /// Parse `whsec_<base64>` of 24 to 64 bytes.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some(b64) = s.strip_prefix("whsec_") else {
            return Err("is not a whsec_ secret (expected whsec_ followed by base64)".into());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "is not valid base64 after whsec_".to_string())?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(format!(
                "decodes to {} bytes; use 24 to 64 random bytes (e.g. `openssl rand -base64 32`)",
                bytes.len()
            ));
        }
        Ok(SigningKey(bytes))
    }
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The process environment as seen by the config loader; tests and `demo` pass their own.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    pub fn from_process() -> Self {
        Environment {
            vars: std::env::vars().collect(),
        }
    }
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Environment {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(name.into(), value.into());
    }
    /// The `LOOPWATCH__*` variable that sets `key` (e.g. `poll.jitter`), if any.
    fn override_of(&self, key: &str) -> Option<&str> {
        self.vars.keys().map(String::as_str).find(|var| {
            var.strip_prefix("LOOPWATCH__").is_some_and(|rest| {
                // The key itself, or a table the variable sets a key in.
                let path = rest.split("__").collect::<Vec<_>>().join(".");
                !key.is_empty()
                    && path.len() >= key.len()
                    && path.is_char_boundary(key.len())
                    && path[..key.len()].eq_ignore_ascii_case(key)
                    && matches!(path.as_bytes().get(key.len()), None | Some(b'.'))
            })
        })
    }
    fn overrides(&self) -> HashMap<String, String> {
        self.vars
            .iter()
            .filter(|(k, _)| k.starts_with("LOOPWATCH__"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Every problem found in a config, one line each.
#[derive(Debug)]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.problems.join("\n"))
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from, for messages.
    pub source: String,
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

#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub base_url: Url,
    pub api_key: Secret,
    pub api_key_source: String,
    pub auth_scheme: AuthScheme,
    pub timeout: Duration,
    pub max_requests_per_second: f64,
    pub max_response_bytes: u64,
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
}

#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub url: String,
    /// PostgreSQL only: how long a target's lease lasts without renewal.
    pub lease_ttl: Duration,
    /// PostgreSQL only: this replica's name in `replicas` and `leases`.
    pub replica_id: String,
    /// Delivered deliveries (and events with none left) older than this are pruned;
    /// `None` keeps everything.
    pub retention: Option<Duration>,
}

impl StoreConfig {
    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres://") || self.url.starts_with("postgresql://")
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
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

/// The one filter of a target (interface.md §1: exactly one per request).
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
    pub checkpoint_targets: BTreeSet<CheckpointTarget>,
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
    fn as_str(self) -> &'static str {
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

#[derive(Clone, Debug)]
pub enum SinkKind {
    Webhook {
        url: Url,
        secret: Option<SigningKey>,
        previous_secret: Option<SigningKey>,
        /// `signing_key_file`/`signing_key_env`: adds a `v1a` (ed25519) signature.
        signing_key: Option<crate::delivery::sign::Ed25519Key>,
        format: PayloadFormat,
        template: Option<String>,
        content_type: String,
        headers: Vec<HeaderConfig>,
    },
    Exec {
        command: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub events: BTreeSet<EventType>,
    /// `None`: every target.
    pub targets: Option<BTreeSet<String>>,
    pub checkpoint_targets: BTreeSet<CheckpointTarget>,
    pub timeout: Duration,
    pub retry_schedule: Vec<Duration>,
    pub concurrency: NonZeroUsize,
    pub ordered: bool,
    /// Where the secrets came from (`secret_env = X` ...), for `check-config`.
    pub secret_sources: Vec<(String, String)>,
}

impl SinkConfig {
    /// Whether an event of this kind for this target/checkpoint target goes to this sink.
    pub fn wants(
        &self,
        kind: EventType,
        target: &str,
        checkpoint_target: CheckpointTarget,
    ) -> bool {
        self.events.contains(&kind)
            && self.targets.as_ref().is_none_or(|t| t.contains(target))
            && self.checkpoint_targets.contains(&checkpoint_target)
    }
}

pub const DEFAULT_RETRY_SCHEDULE: [&str; 9] =
    ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"];

/// Load and validate a config file, with `LOOPWATCH__*` overrides from `env`.
pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigError> {
    let name = path.display().to_string();
    let one = |msg: String| ConfigError {
        problems: vec![printable(&format!("{name}: {msg}"))],
    };
    let format = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => config::FileFormat::Toml,
        Some("yaml" | "yml") => config::FileFormat::Yaml,
        _ => {
            return Err(one(
                "unknown config format; name the file *.toml, *.yaml or *.yml".into(),
            ));
        }
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| one(format!("cannot read the config file: {e}")))?;
    load_str(&text, format, &name, env)
}

/// Validate config text; `name` is used in messages.
pub fn load_str(
    text: &str,
    format: config::FileFormat,
    name: &str,
    env: &Environment,
) -> Result<Config, ConfigError> {
    load_str_with(text, format, name, env, true)
}

/// The config for commands that only talk to the API (`checkpoints`): targets are not
/// required, and without a file the defaults plus `LOOPWATCH__*` overrides apply.
pub fn load_for_api(path: Option<&Path>, env: &Environment) -> Result<Config, ConfigError> {
    match path {
        Some(p) => {
            let format = match p.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => config::FileFormat::Yaml,
                _ => config::FileFormat::Toml,
            };
            let name = p.display().to_string();
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError {
                problems: vec![format!("{name}: cannot read the config file: {e}")],
            })?;
            load_str_with(&text, format, &name, env, false)
        }
        None => load_str_with("", config::FileFormat::Toml, "(defaults)", env, false),
    }
}

fn load_str_with(
    text: &str,
    format: config::FileFormat,
    name: &str,
    env: &Environment,
    require_targets: bool,
) -> Result<Config, ConfigError> {
    let parse_error = |msg: &str| ConfigError {
        problems: vec![printable(&format!("{name}: {}", parse_message(msg)))],
    };
    if matches!(format, config::FileFormat::Yaml) {
        yaml_expansion_guard(text, MAX_YAML_NODES).map_err(|m| parse_error(&m))?;
    }
    let built = config::Config::builder()
        .add_source(config::File::from_str(text, format))
        .add_source(
            config::Environment::with_prefix("LOOPWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env.overrides().into_iter().collect())),
        )
        .build()
        .map_err(|e| parse_error(&e.to_string()))?;
    // serde_json has no NaN or infinity: they would arrive as null, i.e. "not set", and
    // silently become the default. Find them in the `config` crate's own tree first.
    let mut non_finite = Vec::new();
    find_non_finite(&built.cache, "", &mut non_finite);
    let tree = built
        .try_deserialize::<Value>()
        .map_err(|e| parse_error(&e.to_string()))?;
    let result = validate(&tree, name, env, require_targets);
    if non_finite.is_empty() {
        return result;
    }
    let mut w = Walk {
        file: name,
        env,
        problems: Vec::new(),
    };
    for (key, f) in non_finite {
        w.err(&key, format!("must be a finite number, found {f}"));
    }
    if let Err(e) = result {
        w.problems.extend(e.problems);
    }
    Err(ConfigError {
        problems: w.problems,
    })
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

/// A parser's message on one line, without the source snippet TOML errors carry
/// (`4 | [poll` / `  |      ^`): it echoes the file, which may be long or hold a
/// misplaced secret. "TOML parse error at line 4, column 6: unclosed table, expected `]`".
fn parse_message(msg: &str) -> String {
    let is_snippet = |l: &str| {
        l.trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start()
            .starts_with('|')
    };
    let mut lines = msg
        .lines()
        .filter(|l| !is_snippet(l))
        .map(one_line)
        .filter(|l| !l.is_empty());
    let mut out = lines.next().unwrap_or_default();
    let rest: Vec<String> = lines.collect();
    if !rest.is_empty() {
        out = format!("{out}: {}", rest.join(" "));
    }
    const MAX: usize = 300;
    if out.chars().count() > MAX {
        out = format!("{}...", out.chars().take(MAX).collect::<String>());
    }
    out
}

/// More values than any real config has; see [`yaml_expansion_guard`].
const MAX_YAML_NODES: u64 = 100_000;

/// Refuse YAML whose aliases expand past `limit` values. yaml-rust2 copies the anchored
/// node at every alias, so ten lines of nested aliases ("billion laughs") would take
/// minutes and gigabytes before validation even starts. Counting needs only the event
/// stream: the size of each anchor, added at every alias. Syntax errors are left to the
/// real parse, which reports them.
fn yaml_expansion_guard(text: &str, limit: u64) -> Result<(), String> {
    use yaml_rust2::parser::{Event, Parser};
    let mut parser = Parser::new_from_str(text);
    let mut anchors: HashMap<usize, u64> = HashMap::new();
    // (anchor id of the open collection, values in it so far); the bottom is the stream.
    let mut open: Vec<(usize, u64)> = vec![(0, 0)];
    while let Ok((event, _)) = parser.next_token() {
        let size = match event {
            Event::StreamEnd => break,
            Event::Scalar(_, _, anchor, _) => {
                if anchor > 0 {
                    anchors.insert(anchor, 1);
                }
                1
            }
            Event::Alias(id) => anchors.get(&id).copied().unwrap_or(1),
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                open.push((anchor, 1));
                continue;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some((anchor, n)) = open.pop().filter(|_| !open.is_empty()) else {
                    break;
                };
                if anchor > 0 {
                    anchors.insert(anchor, n);
                }
                n
            }
            _ => continue,
        };
        let Some(parent) = open.last_mut() else { break };
        parent.1 = parent.1.saturating_add(size);
        if parent.1 > limit {
            return Err(format!(
                "the YAML aliases (*name) expand to more than {limit} values; write the values out instead"
            ));
        }
    }
    Ok(())
}

/// Paths of NaN and infinite floats, e.g. `poll.jitter = nan`.
fn find_non_finite(v: &config::Value, path: &str, out: &mut Vec<(String, f64)>) {
    match &v.kind {
        config::ValueKind::Float(f) if !f.is_finite() => out.push((path.to_string(), *f)),
        config::ValueKind::Table(t) => {
            for (k, v) in t {
                find_non_finite(v, &join(path, k), out);
            }
        }
        config::ValueKind::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                find_non_finite(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Collects problems while walking the tree.
struct Walk<'a> {
    file: &'a str,
    env: &'a Environment,
    problems: Vec<String>,
}

impl Walk<'_> {
    fn err(&mut self, key: &str, msg: impl fmt::Display) {
        let from = match self.env.override_of(key) {
            Some(var) => format!(" (set by {var})"),
            None => String::new(),
        };
        self.problems
            .push(printable(&format!("{}: {key}: {msg}{from}", self.file)));
    }

    /// The table at `key`, reporting keys not in `allowed`.
    fn table<'v>(
        &mut self,
        v: Option<&'v Value>,
        key: &str,
        allowed: &[&str],
    ) -> Option<&'v Map<String, Value>> {
        match v {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => {
                for k in m.keys() {
                    if !allowed.contains(&k.as_str()) {
                        let full = if key.is_empty() {
                            k.clone()
                        } else {
                            format!("{key}.{k}")
                        };
                        self.err(
                            &full,
                            format!("unknown key; known keys here: {}", allowed.join(", ")),
                        );
                    }
                }
                Some(m)
            }
            Some(other) => {
                self.err(key, format!("expected a table, found {}", kind(other)));
                None
            }
        }
    }

    fn string(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
    ) -> Option<String> {
        let full = join(section, key);
        match m.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(&full, format!("expected a string, found {}", kind(other)));
                None
            }
        }
    }

    fn bool(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
        default: bool,
    ) -> bool {
        match m.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(other) => {
                self.err(
                    &join(section, key),
                    format!("expected true or false, found {}", kind(other)),
                );
                default
            }
        }
    }

    fn number(&mut self, m: Option<&Map<String, Value>>, section: &str, key: &str) -> Option<f64> {
        match m.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) if s.trim().parse::<f64>().is_ok() => s.trim().parse().ok(),
            Some(other) => {
                self.err(
                    &join(section, key),
                    format!("expected a number, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn integer(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(n) = self.number(m, section, key) else {
            return default;
        };
        if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
            self.err(
                &join(section, key),
                format!("must be a whole number from {min} to {max}, found {n}"),
            );
            return default;
        }
        n as u64
    }

    fn duration(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
        default: Duration,
    ) -> Duration {
        self.opt_duration(m, section, key).unwrap_or(default)
    }

    fn opt_duration(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
    ) -> Option<Duration> {
        let raw = m.and_then(|m| m.get(key))?;
        let full = join(section, key);
        self.parse_duration(raw, &full)
    }

    fn parse_duration(&mut self, raw: &Value, full: &str) -> Option<Duration> {
        match raw {
            Value::Null => None,
            Value::String(s) => match parse_duration(s) {
                // Larger waits overflow `Duration` arithmetic in the poller and the
                // health checks (a panic at start), and no sane schedule needs them.
                Some(d) if d > MAX_DURATION => {
                    self.err(full, format!("{s:?} is too long; at most 365 days"));
                    None
                }
                Some(d) => Some(d),
                None => {
                    self.err(full, format!("{s:?} is not a duration; write e.g. \"250ms\", \"30s\", \"5m\" or \"24h\""));
                    None
                }
            },
            Value::Number(n) if n.as_u64() == Some(0) => Some(Duration::ZERO),
            other => {
                self.err(
                    full,
                    format!(
                        "expected a duration string like \"30s\", found {}",
                        kind(other)
                    ),
                );
                None
            }
        }
    }

    fn positive_duration(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(m, section, key, default);
        if d.is_zero() {
            self.err(&join(section, key), "must be greater than zero");
            return default;
        }
        d
    }

    fn string_list(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        key: &str,
    ) -> Option<Vec<String>> {
        let full = join(section, key);
        match m.and_then(|m| m.get(key)) {
            None | Some(Value::Null) => None,
            Some(Value::Array(items)) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        other => self.err(
                            &format!("{full}[{i}]"),
                            format!("expected a string, found {}", kind(other)),
                        ),
                    }
                }
                Some(out)
            }
            Some(other) => {
                self.err(
                    &full,
                    format!("expected a list of strings, found {}", kind(other)),
                );
                None
            }
        }
    }

    /// A secret from `<stem>_env` or `<stem>_file`. `default_env` applies when neither is set.
    fn secret(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
        stem: &str,
        default_env: Option<&str>,
    ) -> Option<(Secret, String)> {
        let env_key = format!("{stem}_env");
        let file_key = format!("{stem}_file");
        let from_env = self.string(m, section, &env_key);
        let from_file = self.string(m, section, &file_key);
        match (from_env, from_file) {
            (Some(_), Some(_)) => {
                self.err(
                    &join(section, stem),
                    format!("set either {env_key} or {file_key}, not both"),
                );
                None
            }
            (None, Some(path)) => match read_secret_file(&path) {
                Ok(s) => {
                    let s = s.trim_end_matches(['\n', '\r']).to_string();
                    if s.is_empty() {
                        self.err(
                            &join(section, &file_key),
                            format!("{path} is empty; put the secret in it"),
                        );
                        None
                    } else {
                        Some((Secret(s), format!("{file_key} = {path}")))
                    }
                }
                Err(e) => {
                    self.err(
                        &join(section, &file_key),
                        format!("cannot read {path}: {e}; check the path and permissions"),
                    );
                    None
                }
            },
            (env_name, None) => {
                let explicit = env_name.is_some();
                let var = env_name.or(default_env.map(str::to_string))?;
                match self.env.var(&var) {
                    Some(v) if !v.is_empty() => {
                        Some((Secret(v.to_string()), format!("{env_key} = {var}")))
                    }
                    _ => {
                        let key = join(section, &env_key);
                        let hint = if explicit { "" } else { " (the default)" };
                        self.err(&key, format!("environment variable {var}{hint} is not set; export it or use {file_key}"));
                        None
                    }
                }
            }
        }
    }

    fn checkpoint_targets(
        &mut self,
        m: Option<&Map<String, Value>>,
        section: &str,
    ) -> BTreeSet<CheckpointTarget> {
        let Some(list) = self.string_list(m, section, "checkpoint_targets") else {
            return CheckpointTarget::ALL.into_iter().collect();
        };
        let mut out = BTreeSet::new();
        for s in &list {
            match CheckpointTarget::parse(s) {
                Some(t) => {
                    out.insert(t);
                }
                None => self.err(
                    &join(section, "checkpoint_targets"),
                    format!("unknown checkpoint target {s:?}; use \"sampler\" or \"trainer\""),
                ),
            }
        }
        if list.is_empty() {
            self.err(
                &join(section, "checkpoint_targets"),
                "is empty; omit it for both, or list \"sampler\" and/or \"trainer\"",
            );
            return CheckpointTarget::ALL.into_iter().collect();
        }
        out
    }

    /// Expand `${VAR}` from the environment.
    fn interpolate(&mut self, key: &str, s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                self.err(key, "has an unterminated ${; write ${VAR}");
                return out;
            };
            let var = &after[..end];
            match self.env.var(var) {
                Some(v) => out.push_str(v),
                None => self.err(
                    key,
                    format!("uses ${{{var}}} but environment variable {var} is not set; export it"),
                ),
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        out
    }
}

fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

/// A secret file: a regular file (symlinks followed, as Kubernetes mounts secrets) of at
/// most 64 KiB. The path of the wrong file must not hang the start (opening a FIFO blocks
/// until something writes to it) nor be read into memory whole (a log, `/dev/zero`).
fn read_secret_file(path: &str) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    const MAX: u64 = 64 * 1024;
    let file_type = std::fs::metadata(path)?.file_type();
    if !file_type.is_file() {
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_fifo() {
            "a FIFO"
        } else if file_type.is_socket() {
            "a socket"
        } else if file_type.is_char_device() || file_type.is_block_device() {
            "a device"
        } else {
            "something else"
        };
        return Err(std::io::Error::other(format!(
            "it is {what}, not a regular file"
        )));
    }
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(MAX + 1)
        .read_to_string(&mut s)?;
    if s.len() as u64 > MAX {
        return Err(std::io::Error::other("larger than 64 KiB, not a secret"));
    }
    Ok(s)
}

/// What the store will accept, checked here so that a bad URL is a config error (exit 78)
/// and not a failure at start. sqlx's messages name the parameter, never the password.
fn check_store_url(url: &str) -> Result<(), String> {
    use std::str::FromStr;
    let scrub = |e: sqlx::Error| {
        let mut msg = one_line(&e.to_string());
        if let Some(pw) = Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_string))
        {
            msg = msg.replace(&pw, "redacted");
        }
        format!("is not a usable database URL: {msg}")
    };
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let (file, params) = rest
            .trim_start_matches("//")
            .split_once('?')
            .unwrap_or((rest.trim_start_matches("//"), ""));
        // An empty name is a private temporary database per connection: the daemon
        // would migrate one and fail on the others ("no such table"), forever.
        if file.is_empty() && !params.contains("mode=memory") {
            return Err("names no database file; write e.g. sqlite://loopwatch.db or sqlite:///var/lib/loopwatch/loopwatch.db".into());
        }
        sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(scrub)?;
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        sqlx::postgres::PgConnectOptions::from_str(url).map_err(scrub)?;
    } else {
        return Err("must start with sqlite:// (a file) or postgres:// (a database URL)".into());
    }
    Ok(())
}

/// A level (`info`) or an EnvFilter of `target=level` directives. EnvFilter alone also takes
/// a bare word as a target to log at TRACE, so a typo (`"warning"`, `"loud"`) would
/// silently log only that non-existent target, i.e. nothing.
fn is_log_filter(level: &str) -> bool {
    use tracing_subscriber::filter::LevelFilter;
    let directives: Vec<&str> = level
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    !directives.is_empty()
        && directives
            .iter()
            .all(|d| d.contains('=') || d.parse::<LevelFilter>().is_ok())
        && tracing_subscriber::EnvFilter::try_new(level).is_ok()
}

/// The longest duration a config may set.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `"250ms"`, `"30s"`, `"5m"`, `"24h"`, `"1h 30m"`, or `"0"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s == "0" {
        return Some(Duration::ZERO);
    }
    humantime::parse_duration(s).ok()
}

fn validate(
    tree: &Value,
    file: &str,
    env: &Environment,
    require_targets: bool,
) -> Result<Config, ConfigError> {
    let mut w = Walk {
        file,
        env,
        problems: Vec::new(),
    };
    let root = w.table(
        Some(tree),
        "",
        &[
            "api", "poll", "store", "server", "log", "delivery", "targets", "sinks",
        ],
    );
    let get = |k: &str| root.and_then(|r| r.get(k));

    // [api]
    let api = w.table(
        get("api"),
        "api",
        &[
            "base_url",
            "api_key_env",
            "api_key_file",
            "auth_scheme",
            "timeout",
            "max_requests_per_second",
            "max_response_bytes",
        ],
    );
    let base_url = w
        .string(api, "api", "base_url")
        .unwrap_or_else(|| "https://api.baseten.co".into());
    let base_url = match Url::parse(&base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Some(u),
        _ => {
            w.err(
                "api.base_url",
                format!(
                    "{:?} is not an http(s) URL; e.g. \"https://api.baseten.co\"",
                    redact_url(&base_url)
                ),
            );
            None
        }
    };
    let api_key = w.secret(api, "api", "api_key", Some("BASETEN_API_KEY"));
    // Otherwise every poll fails at start with exit 1; the key itself is never echoed.
    if let Some((key, source)) = &api_key
        && reqwest::header::HeaderValue::from_str(key.expose()).is_err()
    {
        let from = source.split_once(" = ").map_or("api_key_env", |(k, _)| k);
        w.err(
            &format!("api.{from}"),
            format!(
                "the key ({source}) has characters an HTTP header cannot carry (a second line?)"
            ),
        );
    }
    let auth_scheme = match w.string(api, "api", "auth_scheme").as_deref() {
        None | Some("bearer") => AuthScheme::Bearer,
        Some("api-key") => AuthScheme::ApiKey,
        Some(other) => {
            w.err(
                "api.auth_scheme",
                format!("{other:?} is not a scheme; use \"bearer\" or \"api-key\""),
            );
            AuthScheme::Bearer
        }
    };
    let api_timeout = w.positive_duration(api, "api", "timeout", Duration::from_secs(30));
    let rps = w
        .number(api, "api", "max_requests_per_second")
        .unwrap_or(10.0);
    if !(rps > 0.0 && rps.is_finite()) {
        w.err(
            "api.max_requests_per_second",
            format!("must be a finite number greater than 0, found {rps}"),
        );
    }
    let max_response_bytes = w.integer(api, "api", "max_response_bytes", 64 << 20, 1024, 1 << 40);

    // [poll]
    let poll = w.table(
        get("poll"),
        "poll",
        &[
            "interval",
            "syncing_interval",
            "jitter",
            "concurrency",
            "emit_existing",
            "delete_after_missing_polls",
            "stalled_after",
            "adaptive",
        ],
    );
    let interval = w.positive_duration(poll, "poll", "interval", Duration::from_secs(60));
    let syncing_interval =
        w.positive_duration(poll, "poll", "syncing_interval", Duration::from_secs(10));
    let jitter = w.number(poll, "poll", "jitter").unwrap_or(0.1);
    if !(0.0..1.0).contains(&jitter) {
        w.err(
            "poll.jitter",
            format!("must be at least 0 and below 1 (a fraction, 0.1 = +-10%), found {jitter}"),
        );
    }
    let concurrency = w.integer(poll, "poll", "concurrency", 8, 1, 10_000);
    let emit_existing = w.bool(poll, "poll", "emit_existing", false);
    let adaptive = w.bool(poll, "poll", "adaptive", false);
    let delete_after = w.integer(poll, "poll", "delete_after_missing_polls", 2, 1, 1_000_000);
    let stalled_after = w.duration(poll, "poll", "stalled_after", Duration::from_secs(30 * 60));

    // [store]
    let store = w.table(
        get("store"),
        "store",
        &["url", "lease_ttl", "replica_id", "retention"],
    );
    let retention = w.duration(
        store,
        "store",
        "retention",
        Duration::from_secs(30 * 24 * 3600),
    );
    let lease_ttl = w.positive_duration(store, "store", "lease_ttl", Duration::from_secs(15));
    let replica_id = w
        .string(store, "store", "replica_id")
        .unwrap_or_else(default_replica_id);
    let store_url = w
        .string(store, "store", "url")
        .unwrap_or_else(|| "sqlite://loopwatch.db".into());
    if let Err(e) = check_store_url(&store_url) {
        w.err("store.url", e);
    }

    // [server]
    let server = w.table(get("server"), "server", &["listen"]);
    let listen = w
        .string(server, "server", "listen")
        .unwrap_or_else(|| "127.0.0.1:9464".into());
    let listen = match listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            w.err("server.listen", format!("{listen:?} is not an address; write ip:port, e.g. \"127.0.0.1:9464\" or \"0.0.0.0:9464\""));
            None
        }
    };

    // [log]
    let log = w.table(get("log"), "log", &["format", "level"]);
    let log_format = match w.string(log, "log", "format").as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            w.err(
                "log.format",
                format!("{other:?} is not a format; use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = w
        .string(log, "log", "level")
        .unwrap_or_else(|| "info".into());
    if !is_log_filter(&level) {
        w.err(
            "log.level",
            format!(
                "{level:?} is not a level or filter; use e.g. \"info\" or \"loopwatch=debug,info\""
            ),
        );
    }

    // [delivery]
    let delivery = w.table(get("delivery"), "delivery", &["shutdown_grace"]);
    let shutdown_grace = w.duration(
        delivery,
        "delivery",
        "shutdown_grace",
        Duration::from_secs(10),
    );

    // [[targets]]
    let mut targets = Vec::new();
    let mut names = BTreeSet::new();
    match get("targets") {
        None | Some(Value::Null) if !require_targets => {}
        None | Some(Value::Null) => w.err("targets", "no targets; add at least one [[targets]] with a name and a run_id, base_model or checkpoint_path"),
        Some(Value::Array(items)) => {
            if items.is_empty() && require_targets {
                w.err("targets", "no targets; add at least one [[targets]] with a name and a run_id, base_model or checkpoint_path");
            }
            for (i, item) in items.iter().enumerate() {
                let sec = format!("targets[{i}]");
                let Some(t) = w.table(Some(item), &sec, &[
                    "name", "run_id", "base_model", "checkpoint_path", "checkpoint_targets", "interval", "syncing_interval",
                ]) else {
                    // `w.table` reports every other non-table; `- ~` in YAML must not vanish.
                    if item.is_null() {
                        w.err(&sec, "is empty; expected a [[targets]] table");
                    }
                    continue;
                };
                let t = Some(t);
                let name = w.string(t, &sec, "name").unwrap_or_default();
                if name.trim().is_empty() {
                    w.err(&format!("{sec}.name"), "is missing; every target needs a unique name");
                } else if !names.insert(name.clone()) {
                    w.err(&format!("{sec}.name"), format!("duplicate target name {name:?}; names must be unique"));
                }
                let mut filters = Vec::new();
                let reported = w.problems.len();
                for key in ["run_id", "base_model", "checkpoint_path"] {
                    if let Some(v) = w.string(t, &sec, key) {
                        if v.trim().is_empty() {
                            w.err(&format!("{sec}.{key}"), "is empty");
                        } else {
                            filters.push((key, v));
                        }
                    }
                }
                let filter = match filters.as_slice() {
                    [(k, v)] => {
                        if *k == "checkpoint_path" && parse_checkpoint_path(v).is_none() {
                            w.err(&format!("{sec}.checkpoint_path"), format!("{v:?} is not a checkpoint URI; write bt://loops:<run_id>/(weights|sampler_weights)/<name>"));
                        }
                        Some(match *k {
                            "run_id" => Filter::RunId(v.clone()),
                            "base_model" => Filter::BaseModel(v.clone()),
                            _ => Filter::CheckpointPath(v.clone()),
                        })
                    }
                    // An empty or mistyped filter was reported above; "no filter" would be the same problem twice.
                    [] if w.problems.len() > reported => None,
                    [] => {
                        w.err(&sec, format!("target {name:?} has no filter; set exactly one of run_id, base_model, checkpoint_path"));
                        None
                    }
                    many => {
                        let keys: Vec<&str> = many.iter().map(|(k, _)| *k).collect();
                        w.err(&sec, format!("target {name:?} has {} filters ({}); keep exactly one of run_id, base_model, checkpoint_path", many.len(), keys.join(", ")));
                        None
                    }
                };
                let checkpoint_targets = w.checkpoint_targets(t, &sec);
                let t_interval = w.positive_duration(t, &sec, "interval", interval);
                let t_syncing = w.positive_duration(t, &sec, "syncing_interval", syncing_interval.min(t_interval));
                if let Some(filter) = filter {
                    targets.push(TargetConfig { name, filter, checkpoint_targets, interval: t_interval, syncing_interval: t_syncing });
                }
            }
        }
        Some(other) => w.err("targets", format!("expected a list of [[targets]] tables, found {}", kind(other))),
    }

    // [[sinks]]
    let mut sinks = Vec::new();
    let mut sink_names = BTreeSet::new();
    match get("sinks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let sec = format!("sinks[{i}]");
                let Some(s) = w.table(
                    Some(item),
                    &sec,
                    &[
                        "name",
                        "kind",
                        "url",
                        "url_env",
                        "url_file",
                        "secret_env",
                        "secret_file",
                        "previous_secret_env",
                        "previous_secret_file",
                        "signing_key_env",
                        "signing_key_file",
                        "format",
                        "template",
                        "content_type",
                        "headers",
                        "events",
                        "targets",
                        "checkpoint_targets",
                        "timeout",
                        "retry_schedule",
                        "concurrency",
                        "ordered",
                        "command",
                    ],
                ) else {
                    if item.is_null() {
                        w.err(&sec, "is empty; expected a [[sinks]] table");
                    }
                    continue;
                };
                if let Some(sink) = sink(&mut w, Some(s), &sec, &names, &mut sink_names) {
                    sinks.push(sink);
                }
            }
        }
        Some(other) => w.err(
            "sinks",
            format!("expected a list of [[sinks]] tables, found {}", kind(other)),
        ),
    }

    if !w.problems.is_empty() {
        return Err(ConfigError {
            problems: w.problems,
        });
    }
    let (api_key, api_key_source) = api_key.expect("no problems implies a key");
    Ok(Config {
        source: file.to_string(),
        api: ApiConfig {
            base_url: base_url.expect("checked"),
            api_key,
            api_key_source,
            auth_scheme,
            timeout: api_timeout,
            max_requests_per_second: rps,
            max_response_bytes,
        },
        poll: PollConfig {
            interval,
            syncing_interval,
            jitter,
            concurrency: NonZeroUsize::new(concurrency as usize).expect("checked"),
            emit_existing,
            delete_after_missing_polls: delete_after as u32,
            stalled_after: (!stalled_after.is_zero()).then_some(stalled_after),
            adaptive,
        },
        store: StoreConfig {
            url: store_url,
            lease_ttl,
            replica_id,
            retention: (!retention.is_zero()).then_some(retention),
        },
        server: ServerConfig {
            listen: listen.expect("checked"),
        },
        log: LogConfig {
            format: log_format,
            level,
        },
        delivery: DeliveryConfig { shutdown_grace },
        targets,
        sinks,
    })
}

fn sink(
    w: &mut Walk<'_>,
    s: Option<&Map<String, Value>>,
    sec: &str,
    target_names: &BTreeSet<String>,
    sink_names: &mut BTreeSet<String>,
) -> Option<SinkConfig> {
    let name = w.string(s, sec, "name").unwrap_or_default();
    if name.trim().is_empty() {
        w.err(
            &format!("{sec}.name"),
            "is missing; every sink needs a unique name",
        );
    } else if !sink_names.insert(name.clone()) {
        w.err(
            &format!("{sec}.name"),
            format!("duplicate sink name {name:?}; names must be unique"),
        );
    }
    let has = |k: &str| s.is_some_and(|m| m.get(k).is_some_and(|v| !v.is_null()));
    let kind_name = w.string(s, sec, "kind").unwrap_or_else(|| "webhook".into());
    let sink_kind = match kind_name.as_str() {
        "webhook" => {
            if has("command") {
                w.err(
                    &format!("{sec}.command"),
                    "is for kind = \"exec\"; a webhook sink takes url",
                );
            }
            let http_url = |u: &str| {
                Url::parse(u)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            };
            // A URL that is itself a credential (Slack's, say) comes from url_env/url_file.
            let mut url_source = None;
            let url = match w.string(s, sec, "url") {
                Some(_) if has("url_env") || has("url_file") => {
                    w.err(
                        &format!("{sec}.url"),
                        "set either url or url_env/url_file, not both",
                    );
                    None
                }
                None if has("url_env") || has("url_file") => {
                    match w.secret(s, sec, "url", None) {
                        Some((u, source)) => {
                            let parsed = http_url(u.expose());
                            if parsed.is_none() {
                                // The URL may carry a token: it is not echoed back.
                                w.err(
                                    &format!("{sec}.url"),
                                    format!("the URL ({source}) is not an http(s) URL"),
                                );
                            }
                            url_source = Some(source);
                            parsed
                        }
                        None => None,
                    }
                }
                None => {
                    w.err(
                        &format!("{sec}.url"),
                        "is missing; a webhook sink needs the URL to POST to (url, url_env or url_file)",
                    );
                    None
                }
                Some(u) => match http_url(&u) {
                    Some(u) => Some(u),
                    None => {
                        w.err(
                            &format!("{sec}.url"),
                            format!("{:?} is not an http(s) URL", redact_url(&u)),
                        );
                        None
                    }
                },
            };
            let signing = |w: &mut Walk<'_>, stem: &str| {
                let (secret, source) = w.secret(s, sec, stem, None)?;
                match SigningKey::parse(secret.expose()) {
                    Ok(k) => Some((k, source)),
                    Err(e) => {
                        // The secret itself is never echoed back.
                        w.err(
                            &format!("{sec}.{stem}"),
                            format!("the secret ({source}) {e}"),
                        );
                        None
                    }
                }
            };
            let secret = signing(w, "secret");
            let previous = signing(w, "previous_secret");
            let ed25519 = w
                .secret(s, sec, "signing_key", None)
                .and_then(|(key, source)| {
                    match crate::delivery::sign::Ed25519Key::parse(key.expose()) {
                        Ok(k) => {
                            let source = format!("{source}; public key {}", k.public_key());
                            Some((k, source))
                        }
                        Err(e) => {
                            // The key itself is never echoed back.
                            w.err(
                                &format!("{sec}.signing_key"),
                                format!("the key ({source}) {e}"),
                            );
                            None
                        }
                    }
                });
            if previous.is_some() && secret.is_none() && !has("secret_env") && !has("secret_file") {
                w.err(
                    &format!("{sec}.previous_secret_env"),
                    "needs a current secret too; set secret_env or secret_file",
                );
            }
            let format = match w.string(s, sec, "format").as_deref() {
                None | Some("standard") => PayloadFormat::Standard,
                Some("cloudevents") => PayloadFormat::CloudEvents,
                Some("cloudevents-binary") => PayloadFormat::CloudEventsBinary,
                Some("template") => PayloadFormat::Template,
                Some(other) => {
                    w.err(&format!("{sec}.format"), format!("{other:?} is not a format; use \"standard\", \"cloudevents\", \"cloudevents-binary\" or \"template\""));
                    PayloadFormat::Standard
                }
            };
            let template = w.string(s, sec, "template").filter(|t| !t.is_empty());
            match (format, &template) {
                (PayloadFormat::Template, None) => w.err(
                    &format!("{sec}.template"),
                    "is missing; format = \"template\" needs a MiniJinja template of the body",
                ),
                (PayloadFormat::Template, Some(t)) => {
                    if let Err(e) = crate::delivery::payload::compile_template(t) {
                        w.err(
                            &format!("{sec}.template"),
                            format!(
                                "the template of sink {name:?} does not compile: {}",
                                one_line(&e)
                            ),
                        );
                    }
                }
                (_, Some(_)) => w.err(
                    &format!("{sec}.template"),
                    "is only used with format = \"template\"; remove it or set the format",
                ),
                (_, None) => {}
            }
            let default_ct = match format {
                PayloadFormat::CloudEvents => "application/cloudevents+json",
                _ => "application/json",
            };
            let content_type = w
                .string(s, sec, "content_type")
                .unwrap_or_else(|| default_ct.into());
            if content_type.trim().is_empty()
                || reqwest::header::HeaderValue::from_str(&content_type).is_err()
            {
                w.err(
                    &format!("{sec}.content_type"),
                    format!("{content_type:?} is not a header value; e.g. \"application/json\""),
                );
            }
            let mut headers = Vec::new();
            match s.and_then(|m| m.get("headers")) {
                None | Some(Value::Null) => {}
                Some(Value::Object(h)) => {
                    for (k, v) in h {
                        let key = format!("{sec}.headers.{k}");
                        if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                            w.err(&key, "is not a valid HTTP header name");
                            continue;
                        }
                        let Value::String(template) = v else {
                            w.err(&key, format!("expected a string, found {}", kind(v)));
                            continue;
                        };
                        let value = w.interpolate(&key, template);
                        if reqwest::header::HeaderValue::from_str(&value).is_err() {
                            w.err(&key, "is not a valid header value after ${VAR} expansion (control characters?)");
                        }
                        headers.push(HeaderConfig {
                            name: k.clone(),
                            template: template.clone(),
                            value: Secret(value),
                        });
                    }
                }
                Some(other) => w.err(
                    &format!("{sec}.headers"),
                    format!(
                        "expected a table of header = \"value\", found {}",
                        kind(other)
                    ),
                ),
            }
            let mut secret_sources = Vec::new();
            if let Some(src) = url_source {
                secret_sources.push(("url".to_string(), src));
            }
            if let Some((_, src)) = &secret {
                secret_sources.push(("secret".to_string(), src.clone()));
            }
            if let Some((_, src)) = &previous {
                secret_sources.push(("previous_secret".to_string(), src.clone()));
            }
            if let Some((_, src)) = &ed25519 {
                secret_sources.push(("signing_key".to_string(), src.clone()));
            }
            let webhook = url.map(|url| SinkKind::Webhook {
                url,
                secret: secret.map(|(k, _)| k),
                previous_secret: previous.map(|(k, _)| k),
                signing_key: ed25519.map(|(k, _)| k),
                format,
                template,
                content_type,
                headers,
            });
            webhook.map(|k| (k, secret_sources))
        }
        "exec" => {
            for k in [
                "url",
                "url_env",
                "url_file",
                "secret_env",
                "secret_file",
                "previous_secret_env",
                "previous_secret_file",
                "signing_key_env",
                "signing_key_file",
                "headers",
                "template",
                "format",
                "content_type",
            ] {
                if has(k) {
                    w.err(
                        &format!("{sec}.{k}"),
                        "is for kind = \"webhook\"; an exec sink takes command",
                    );
                }
            }
            match w.string_list(s, sec, "command") {
                Some(cmd) if !cmd.is_empty() && !cmd[0].is_empty() => {
                    Some((SinkKind::Exec { command: cmd }, Vec::new()))
                }
                _ => {
                    w.err(&format!("{sec}.command"), "is missing; an exec sink needs command = [\"/path/to/program\", \"arg\", ...]");
                    None
                }
            }
        }
        other => {
            w.err(
                &format!("{sec}.kind"),
                format!("{other:?} is not a sink kind; use \"webhook\" or \"exec\""),
            );
            None
        }
    };

    let events = match w.string_list(s, sec, "events") {
        None => EventType::ALL.into_iter().collect(),
        Some(list) => {
            let mut out = BTreeSet::new();
            for e in &list {
                match EventType::parse(e) {
                    Some(t) => {
                        out.insert(t);
                    }
                    None => {
                        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                        w.err(
                            &format!("{sec}.events"),
                            format!("unknown event type {e:?}; known: {}", known.join(", ")),
                        );
                    }
                }
            }
            if list.is_empty() {
                w.err(&format!("{sec}.events"), "is empty; omit it for every type");
            }
            out
        }
    };
    let targets = w.string_list(s, sec, "targets").map(|list| {
        for t in &list {
            if !target_names.contains(t) {
                w.err(
                    &format!("{sec}.targets"),
                    format!("names unknown target {t:?}; it must match a [[targets]] name"),
                );
            }
        }
        if list.is_empty() {
            // An empty set would match nothing: a sink that silently never fires.
            w.err(
                &format!("{sec}.targets"),
                "is empty; omit it for every target",
            );
        }
        list.into_iter().collect()
    });
    let checkpoint_targets = w.checkpoint_targets(s, sec);
    let timeout = w.positive_duration(s, sec, "timeout", Duration::from_secs(15));
    let retry_schedule = match s.and_then(|m| m.get("retry_schedule")) {
        None | Some(Value::Null) => DEFAULT_RETRY_SCHEDULE
            .iter()
            .map(|d| parse_duration(d).expect("valid"))
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| w.parse_duration(v, &format!("{sec}.retry_schedule[{i}]")))
            .collect(),
        Some(other) => {
            w.err(
                &format!("{sec}.retry_schedule"),
                format!("expected a list of durations, found {}", kind(other)),
            );
            Vec::new()
        }
    };
    let concurrency = w.integer(s, sec, "concurrency", 4, 1, 1024);
    let ordered = w.bool(s, sec, "ordered", false);
    let (kind, secret_sources) = sink_kind?;
    Some(SinkConfig {
        name,
        kind,
        events,
        targets,
        checkpoint_targets,
        timeout,
        retry_schedule,
        concurrency: NonZeroUsize::new(concurrency as usize).unwrap_or(NonZeroUsize::MIN),
        ordered,
        secret_sources,
    })
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
    /// The effective config as TOML, secrets shown only by where they come from.
    pub fn to_redacted_toml(&self) -> String {
        let dur = |d: Duration| humantime::format_duration(d).to_string();
        let mut root = toml::Table::new();
        let mut api = toml::Table::new();
        api.insert("base_url".into(), self.api.base_url.to_string().into());
        api.insert(
            "api_key".into(),
            format!("[redacted] ({})", self.api.api_key_source).into(),
        );
        api.insert(
            "auth_scheme".into(),
            match self.api.auth_scheme {
                AuthScheme::Bearer => "bearer",
                AuthScheme::ApiKey => "api-key",
            }
            .into(),
        );
        api.insert("timeout".into(), dur(self.api.timeout).into());
        api.insert(
            "max_requests_per_second".into(),
            self.api.max_requests_per_second.into(),
        );
        api.insert(
            "max_response_bytes".into(),
            (self.api.max_response_bytes as i64).into(),
        );
        root.insert("api".into(), api.into());

        let mut poll = toml::Table::new();
        poll.insert("interval".into(), dur(self.poll.interval).into());
        poll.insert(
            "syncing_interval".into(),
            dur(self.poll.syncing_interval).into(),
        );
        poll.insert("jitter".into(), self.poll.jitter.into());
        poll.insert(
            "concurrency".into(),
            (self.poll.concurrency.get() as i64).into(),
        );
        poll.insert("emit_existing".into(), self.poll.emit_existing.into());
        poll.insert("adaptive".into(), self.poll.adaptive.into());
        poll.insert(
            "delete_after_missing_polls".into(),
            i64::from(self.poll.delete_after_missing_polls).into(),
        );
        poll.insert(
            "stalled_after".into(),
            self.poll
                .stalled_after
                .map(dur)
                .unwrap_or_else(|| "0".into())
                .into(),
        );
        root.insert("poll".into(), poll.into());

        let mut store = toml::Table::new();
        store.insert("url".into(), redact_url(&self.store.url).into());
        store.insert(
            "retention".into(),
            self.store
                .retention
                .map(dur)
                .unwrap_or_else(|| "0".into())
                .into(),
        );
        if self.store.is_postgres() {
            store.insert("lease_ttl".into(), dur(self.store.lease_ttl).into());
            store.insert("replica_id".into(), self.store.replica_id.clone().into());
        }
        root.insert("store".into(), store.into());
        let mut server = toml::Table::new();
        server.insert("listen".into(), self.server.listen.to_string().into());
        root.insert("server".into(), server.into());
        let mut log = toml::Table::new();
        log.insert(
            "format".into(),
            (if self.log.format == LogFormat::Json {
                "json"
            } else {
                "text"
            })
            .into(),
        );
        log.insert("level".into(), self.log.level.clone().into());
        root.insert("log".into(), log.into());
        let mut delivery = toml::Table::new();
        delivery.insert(
            "shutdown_grace".into(),
            dur(self.delivery.shutdown_grace).into(),
        );
        root.insert("delivery".into(), delivery.into());

        let list =
            |it: Vec<String>| toml::Value::Array(it.into_iter().map(toml::Value::from).collect());
        let ckpt = |s: &BTreeSet<CheckpointTarget>| {
            list(s.iter().map(|t| t.as_str().to_string()).collect())
        };
        let targets: Vec<toml::Value> = self
            .targets
            .iter()
            .map(|t| {
                let mut m = toml::Table::new();
                m.insert("name".into(), t.name.clone().into());
                m.insert(t.filter.query_key().into(), t.filter.value().into());
                m.insert("checkpoint_targets".into(), ckpt(&t.checkpoint_targets));
                m.insert("interval".into(), dur(t.interval).into());
                m.insert("syncing_interval".into(), dur(t.syncing_interval).into());
                m.into()
            })
            .collect();
        root.insert("targets".into(), targets.into());
        let sinks: Vec<toml::Value> = self
            .sinks
            .iter()
            .map(|s| {
                let mut m = toml::Table::new();
                m.insert("name".into(), s.name.clone().into());
                match &s.kind {
                    SinkKind::Webhook {
                        url,
                        format,
                        template,
                        content_type,
                        headers,
                        ..
                    } => {
                        m.insert("kind".into(), "webhook".into());
                        m.insert("url".into(), redact_url(url.as_str()).into());
                        for (k, src) in &s.secret_sources {
                            m.insert(k.clone(), format!("[redacted] ({src})").into());
                        }
                        m.insert("format".into(), format.as_str().into());
                        if let Some(t) = template {
                            m.insert("template".into(), t.clone().into());
                        }
                        m.insert("content_type".into(), content_type.clone().into());
                        let mut h = toml::Table::new();
                        for hc in headers {
                            h.insert(hc.name.clone(), hc.template.clone().into());
                        }
                        m.insert("headers".into(), h.into());
                    }
                    SinkKind::Exec { command } => {
                        m.insert("kind".into(), "exec".into());
                        m.insert("command".into(), list(command.clone()));
                    }
                }
                m.insert(
                    "events".into(),
                    list(s.events.iter().map(|e| e.as_str().to_string()).collect()),
                );
                if let Some(t) = &s.targets {
                    m.insert("targets".into(), list(t.iter().cloned().collect()));
                }
                m.insert("checkpoint_targets".into(), ckpt(&s.checkpoint_targets));
                m.insert("timeout".into(), dur(s.timeout).into());
                m.insert(
                    "retry_schedule".into(),
                    list(s.retry_schedule.iter().map(|d| dur(*d)).collect()),
                );
                m.insert("concurrency".into(), (s.concurrency.get() as i64).into());
                m.insert("ordered".into(), s.ordered.into());
                m.into()
            })
            .collect();
        root.insert("sinks".into(), sinks.into());
        toml::to_string(&root).unwrap_or_default()
    }

    pub fn target(&self, name: &str) -> Option<&TargetConfig> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

/// `<hostname>-<pid>`: unique per process, readable in `leases`.
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "loopwatch".into());
    format!("{host}-{}", std::process::id())
}

/// Hide a password or query token in a URL.
pub fn redact_url(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            if u.query().is_some() {
                u.set_query(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => s.to_string(),
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
                "no config file: pass -c FILE or set LOOPWATCH_CONFIG (looked for {})",
                candidates.join(", ")
            )],
        })
}

/// Group sinks by name, for lookups in hot paths.
pub fn sinks_by_name(cfg: &Config) -> BTreeMap<&str, &SinkConfig> {
    cfg.sinks.iter().map(|s| (s.name.as_str(), s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn env() -> Environment {
        Environment::from_pairs([
            ("BASETEN_API_KEY", "k-123"),
            ("HOOK_SECRET", SECRET),
            ("TOKEN", "tok-xyz"),
        ])
    }

    fn toml_cfg(text: &str) -> Result<Config, ConfigError> {
        load_str(text, config::FileFormat::Toml, "test.toml", &env())
    }

    fn problems(text: &str) -> Vec<String> {
        toml_cfg(text).expect_err("should be rejected").problems
    }

    const MINIMAL: &str = "[[targets]]\nname = \"a\"\nrun_id = \"r1\"\n";

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = toml_cfg(MINIMAL).unwrap();
        assert_eq!(c.api.base_url.as_str(), "https://api.baseten.co/");
        assert_eq!(c.api.api_key.expose(), "k-123");
        assert_eq!(c.poll.interval, Duration::from_secs(60));
        assert_eq!(c.poll.syncing_interval, Duration::from_secs(10));
        assert_eq!(c.poll.concurrency.get(), 8);
        assert_eq!(c.poll.delete_after_missing_polls, 2);
        assert_eq!(c.poll.stalled_after, Some(Duration::from_secs(1800)));
        assert_eq!(c.store.url, "sqlite://loopwatch.db");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(c.targets[0].filter, Filter::RunId("r1".into()));
        assert_eq!(c.targets[0].checkpoint_targets.len(), 2);
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let p = problems(
            r#"
[poll]
interval = "5x"
[[targets]]
name = "a"
run_id = "r1"
base_model = "m"
[[targets]]
name = "a"
run_id = "r2"
"#,
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p.iter()
                .any(|l| l.contains("poll.interval") && l.contains("\"5x\""))
        );
        assert!(
            p.iter()
                .any(|l| l.contains("targets[0]") && l.contains("2 filters"))
        );
        assert!(
            p.iter()
                .any(|l| l.contains("targets[1].name") && l.contains("duplicate"))
        );
        assert!(
            p.iter()
                .all(|l| l.starts_with("test.toml: ") && !l.contains('\n'))
        );
    }

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        let p = problems(
            "[poll]\nintervall = \"5s\"\n[[targets]]\nname = \"a\"\nrun_id = \"r\"\nfoo = 1\n[bogus]\n",
        );
        assert!(p.iter().any(|l| l.contains("poll.intervall: unknown key")));
        assert!(p.iter().any(|l| l.contains("targets[0].foo: unknown key")));
        assert!(p.iter().any(|l| l.contains("bogus: unknown key")));
    }

    #[test]
    fn secrets_come_from_env_or_file_and_are_checked() {
        let p = problems(&format!(
            "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"http://x/h\"\nsecret_env = \"NOPE\"\n[[sinks]]\nname = \"t\"\nurl = \"http://x/h\"\nsecret_env = \"TOKEN\"\n"
        ));
        assert!(
            p.iter()
                .any(|l| l.contains("sinks[0].secret_env") && l.contains("NOPE"))
        );
        assert!(
            p.iter()
                .any(|l| l.contains("sinks[1].secret") && l.contains("whsec_"))
        );
        assert!(
            !p.iter().any(|l| l.contains("tok-xyz")),
            "secret echoed: {p:?}"
        );

        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("key");
        std::fs::write(&f, "file-key\n").unwrap();
        let c = toml_cfg(&format!(
            "[api]\napi_key_file = \"{}\"\n{MINIMAL}",
            f.display()
        ))
        .unwrap();
        assert_eq!(c.api.api_key.expose(), "file-key");
    }

    #[test]
    fn missing_default_api_key_is_reported() {
        let e = load_str(
            MINIMAL,
            config::FileFormat::Toml,
            "x.toml",
            &Environment::default(),
        )
        .unwrap_err();
        assert!(
            e.problems[0].contains("api.api_key_env") && e.problems[0].contains("BASETEN_API_KEY")
        );
    }

    #[test]
    fn sink_rules() {
        let p = problems(&format!(
            r#"{MINIMAL}
[[sinks]]
name = "s"
url = "not a url"
events = ["checkpoint.completed", "checkpoint.exploded"]
targets = ["ghost"]
format = "template"
template = "{{{{ unclosed"
[[sinks]]
name = "s"
kind = "exec"
"#
        ));
        for needle in [
            "sinks[0].url",
            "checkpoint.exploded",
            "ghost",
            "sinks[0].template",
            "sinks[1].name",
            "sinks[1].command",
        ] {
            assert!(
                p.iter().any(|l| l.contains(needle)),
                "{needle} not in {p:#?}"
            );
        }
    }

    #[test]
    fn headers_interpolate_env_and_redact() {
        let c = toml_cfg(&format!(
            "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\nsecret_env = \"HOOK_SECRET\"\nheaders = {{ Authorization = \"Bearer ${{TOKEN}}\" }}\n"
        ))
        .unwrap();
        let SinkKind::Webhook {
            headers, secret, ..
        } = &c.sinks[0].kind
        else {
            panic!()
        };
        assert_eq!(headers[0].name, "Authorization");
        assert_eq!(headers[0].value.expose(), "Bearer tok-xyz");
        assert!(secret.is_some());
        let dump = format!("{c:?}\n{}", c.to_redacted_toml());
        assert!(
            !dump.contains("tok-xyz") && !dump.contains("k-123") && !dump.contains("MfKQ9r8"),
            "{dump}"
        );
        assert!(dump.contains("${TOKEN}"));
    }

    #[test]
    fn env_overrides_scalar_keys() {
        let mut e = env();
        e.set("LOOPWATCH__POLL__INTERVAL", "30s");
        e.set("LOOPWATCH__POLL__CONCURRENCY", "3");
        let c = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e).unwrap();
        assert_eq!(c.poll.interval, Duration::from_secs(30));
        assert_eq!(c.poll.concurrency.get(), 3);
        e.set("LOOPWATCH__POLL__JITTER", "lots");
        let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
            .unwrap_err()
            .problems;
        assert!(p[0].contains("poll.jitter"), "{p:?}");
    }

    #[test]
    fn yaml_is_read_the_same() {
        let c = load_str(
            "poll:\n  interval: 45s\ntargets:\n  - name: a\n    checkpoint_path: bt://loops:r1/sampler_weights/step-1\n",
            config::FileFormat::Yaml,
            "t.yaml",
            &env(),
        )
        .unwrap();
        assert_eq!(c.poll.interval, Duration::from_secs(45));
        assert_eq!(c.targets[0].filter.query_key(), "checkpoint_path");
    }

    #[test]
    fn syntax_errors_are_one_line() {
        let p = problems("[poll\ninterval=");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("test.toml: ") && !p[0].contains('\n'));
    }

    #[test]
    fn checkpoint_path_is_parsed() {
        assert_eq!(
            parse_checkpoint_path("bt://loops:k4/sampler_weights/step-1"),
            Some(("k4", CheckpointTarget::Sampler, "step-1"))
        );
        assert!(parse_checkpoint_path("bt://loops:k4/bogus/step-1").is_none());
        assert!(parse_checkpoint_path("s3://x").is_none());
    }

    #[test]
    fn signing_key_bounds() {
        assert!(SigningKey::parse(SECRET).is_ok());
        assert!(SigningKey::parse("whsec_AAAA").is_err());
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
    }

    // Regressions found by tests/bad_config.rs and the config_load fuzz target.

    #[test]
    fn nan_and_infinity_are_rejected_not_taken_for_unset() {
        // serde_json turns them into null, which used to mean "use the default".
        for (text, key) in [
            ("[poll]\njitter = nan\n", "poll.jitter"),
            (
                "[api]\nmax_requests_per_second = inf\n",
                "api.max_requests_per_second",
            ),
            ("[poll]\nconcurrency = -inf\n", "poll.concurrency"),
        ] {
            let p = problems(&format!("{text}{MINIMAL}"));
            assert!(
                p.len() == 1 && p[0].contains(key) && p[0].contains("finite"),
                "{p:?}"
            );
        }
        let mut e = env();
        e.set("LOOPWATCH__POLL__JITTER", "NaN");
        let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
            .unwrap_err()
            .problems;
        assert!(p[0].contains("poll.jitter"), "{p:?}");
    }

    #[test]
    fn durations_that_would_overflow_the_daemon_are_rejected() {
        // `interval = "300000000000y"` passed check-config, then `run` panicked on
        // Duration overflow (health deadline, jitter).
        let p = problems(&format!(
            "[poll]\ninterval = \"300000000000y\"\n[api]\ntimeout = \"2y\"\n{MINIMAL}"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("api.timeout") && p[1].contains("poll.interval"));
        assert!(toml_cfg(&format!("[poll]\nstalled_after = \"365d\"\n{MINIMAL}")).is_ok());
    }

    #[test]
    fn control_characters_in_keys_stay_on_one_line() {
        let p = problems(&format!(
            "\"a\\nb\" = 1\n[poll]\n\"c\\u001b[31m\" = 2\n{MINIMAL}"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|l| !l.chars().any(char::is_control)), "{p:?}");
        assert!(p.iter().any(|l| l.contains("a\\nb: unknown key")), "{p:?}");
    }

    #[test]
    fn syntax_errors_drop_the_source_snippet() {
        // The snippet echoed the offending line (any length, any content) into the message.
        let p = problems(&format!("{MINIMAL}[poll\nx = 1\n"));
        assert_eq!(
            p,
            ["test.toml: TOML parse error at line 4, column 6: unclosed table, expected `]`"]
        );
        let deep = format!("a = {}{}\n", "[".repeat(5000), "]".repeat(5000));
        let p = problems(&deep);
        assert!(p[0].len() < 400 && !p[0].contains("[[[["), "{p:?}");
    }

    #[test]
    fn yaml_alias_bomb_is_refused_before_it_expands() {
        // Seven lines of nested aliases took 7 s and 1.7 GB; one more level, 10x that.
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
            .windows(2)
            .map(|w| (w[0], w[1]))
        {
            text += &format!(
                "{name}: &{name} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            );
        }
        let started = std::time::Instant::now();
        let e = load_str(&text, config::FileFormat::Yaml, "t.yaml", &env()).unwrap_err();
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(e.problems[0].contains("aliases"), "{:?}", e.problems);
        // Ordinary aliases still work.
        let c = load_str(
            "targets:\n  - {name: a, run_id: r1, checkpoint_targets: &ct [sampler]}\n  - {name: b, run_id: r2, checkpoint_targets: *ct}\n",
            config::FileFormat::Yaml,
            "t.yaml",
            &env(),
        )
        .unwrap();
        assert_eq!(
            c.targets[1].checkpoint_targets,
            c.targets[0].checkpoint_targets
        );
    }

    #[test]
    fn empty_yaml_list_items_are_reported_not_dropped() {
        // `targets: [~]` used to pass with zero targets.
        for (text, key) in [
            ("targets:\n  - ~\n", "targets[0]"),
            (
                "targets:\n  - {name: a, run_id: r}\nsinks:\n  -\n",
                "sinks[0]",
            ),
        ] {
            let e = load_str(text, config::FileFormat::Yaml, "t.yaml", &env()).unwrap_err();
            assert!(
                e.problems.iter().any(|p| p.contains(key)),
                "{:?}",
                e.problems
            );
        }
    }

    #[test]
    fn misspelled_log_level_is_rejected() {
        // EnvFilter takes a bare word as a target name: "warning" logged nothing at all.
        for bad in ["warning", "loud!", "", " , ", "loopwatch=loud"] {
            let p = problems(&format!("[log]\nlevel = \"{bad}\"\n{MINIMAL}"));
            assert!(p.len() == 1 && p[0].contains("log.level"), "{bad:?}: {p:?}");
        }
        for good in [
            "warn",
            "INFO",
            "loopwatch=debug,info",
            "off",
            "sqlx=warn, debug",
        ] {
            assert!(
                toml_cfg(&format!("[log]\nlevel = \"{good}\"\n{MINIMAL}")).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn store_urls_the_store_cannot_open_are_config_errors() {
        // "sqlite://" passed and the daemon logged "no such table" forever; a postgres URL
        // with an empty host passed and `run` exited 1 instead of 78.
        for bad in [
            "sqlite://",
            "sqlite:",
            "sqlite://x.db?bogus=1",
            "postgres://u@:x/db",
            "mysql://db/x",
        ] {
            let p = problems(&format!("[store]\nurl = \"{bad}\"\n{MINIMAL}"));
            assert!(p.len() == 1 && p[0].contains("store.url"), "{bad}: {p:?}");
        }
        let p = problems(&format!(
            "[store]\nurl = \"postgres://u:pw-hidden@h:99999/db\"\n{MINIMAL}"
        ));
        assert!(!p[0].contains("pw-hidden"), "{p:?}");
        for good in [
            "sqlite://loopwatch.db",
            "sqlite:///var/lib/loopwatch/x.db",
            "sqlite::memory:",
            "postgres://lw:pw@db.internal:5432/loopwatch?sslmode=require",
            "postgresql:///loopwatch?host=/run/postgresql",
        ] {
            assert!(
                toml_cfg(&format!("[store]\nurl = \"{good}\"\n{MINIMAL}")).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn invalid_urls_are_echoed_without_their_password() {
        let p = problems(&format!(
            "[api]\nbase_url = \"ftp://u:pw-hidden@x/\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"ftp://u:pw-hidden@x/h?token=t-hidden\"\n"
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|l| !l.contains("hidden")), "{p:?}");
    }

    #[test]
    fn values_that_fail_every_request_are_config_errors() {
        // An API key file with a second line passed check-config; `once` then exited 1.
        let dir = tempfile::tempdir().unwrap();
        let two = dir.path().join("two-lines");
        std::fs::write(&two, "key-line-one\nkey-line-two\n").unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, "x".repeat(100_000)).unwrap();
        let p = problems(&format!(
            "[api]\napi_key_file = \"{}\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\ncontent_type = \"a\\nb\"\nsecret_file = \"{}\"\n",
            two.display(),
            big.display()
        ));
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(
            p[0].contains("api.api_key_file") && !p[0].contains("key-line"),
            "{p:?}"
        );
        assert!(
            p[1].contains("sinks[0].secret_file") && p[1].contains("64 KiB"),
            "{p:?}"
        );
        assert!(p[2].contains("sinks[0].content_type"), "{p:?}");
    }

    #[test]
    fn a_secret_file_that_is_not_a_regular_file_is_a_config_error_not_a_hang() {
        // Opening a FIFO blocks until a writer comes: check-config hung forever on one.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let key = dir.path().join("key");
        std::fs::write(&key, "file-key\n").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        let p = problems(&format!(
            "[api]\napi_key_file = \"{}\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\nsecret_file = \"{}\"\n",
            fifo.display(),
            dir.path().display()
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("api.api_key_file") && p[0].contains("a FIFO, not a regular file"),
            "{p:?}"
        );
        assert!(
            p[1].contains("sinks[0].secret_file") && p[1].contains("a directory"),
            "{p:?}"
        );
        // A symlink to a regular file (how Kubernetes mounts a secret) is followed.
        let c = toml_cfg(&format!(
            "[api]\napi_key_file = \"{}\"\n{MINIMAL}",
            link.display()
        ))
        .unwrap();
        assert_eq!(c.api.api_key.expose(), "file-key");
    }

    #[test]
    fn a_sink_with_an_empty_target_list_is_rejected() {
        // `targets = []` matched no target: a sink that silently never fired.
        let p = problems(&format!(
            "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\ntargets = []\n"
        ));
        assert!(p.len() == 1 && p[0].contains("sinks[0].targets"), "{p:?}");
    }

    #[test]
    fn problems_from_overrides_name_the_variable() {
        let mut e = env();
        e.set("LOOPWATCH__POLL__CONCURRENCY", "0");
        let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
            .unwrap_err()
            .problems;
        assert!(
            p[0].contains("poll.concurrency")
                && p[0].ends_with("(set by LOOPWATCH__POLL__CONCURRENCY)"),
            "{p:?}"
        );
    }
}
