//! Stage one: the sources. The `config` crate merges the file (TOML or YAML) with
//! `LOOPWATCH__SECTION__KEY` overrides from the [`Environment`], and serde deserializes
//! the result into [`RawConfig`]: the file's shape, nothing checked yet.
//!
//! Every key is a [`Field`], which never fails to deserialize: a value of the wrong type
//! is kept (as JSON) for the message, and keys that are not ours land in each table's
//! `unknown` map. So one serde pass accepts any tree and validation (`validate.rs`) can
//! report every problem at once, which `deny_unknown_fields` and typed fields cannot:
//! serde stops at the first error.

use std::collections::HashMap;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::{ConfigError, printable};

/// The process environment as seen by the config loader; tests and `demo` pass their own.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    vars: HashMap<String, String>,
}

impl Environment {
    /// The process's environment, with `--store-url` as `LOOPWATCH__STORE__URL`.
    pub fn from_process() -> Self {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        if let Some(url) = super::store_url_override() {
            vars.insert("LOOPWATCH__STORE__URL".into(), url.to_string());
        }
        Environment { vars }
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
    pub(super) fn override_of(&self, key: &str) -> Option<&str> {
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

/// One key as written: absent (or null), of the expected type, or of another type (the
/// value kept, so the problem can say what was found).
#[derive(Clone, Debug, Default)]
pub enum Field<T> {
    #[default]
    Missing,
    Value(T),
    Wrong(Value),
}

impl<T> Field<T> {
    /// Set to anything, even of the wrong type.
    pub fn is_set(&self) -> bool {
        !matches!(self, Field::Missing)
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        if value.is_null() {
            return Ok(Field::Missing);
        }
        Ok(match T::deserialize(&value) {
            Ok(t) => Field::Value(t),
            // A number or boolean where text is expected is taken as its text, as the
            // `config` crate converts them (`replica_id: 7` in YAML, `run_id = 1234567`).
            Err(_) if value.is_number() || value.is_boolean() => {
                match T::deserialize(&Value::String(value.to_string())) {
                    Ok(t) => Field::Value(t),
                    Err(_) => Field::Wrong(value),
                }
            }
            Err(_) => Field::Wrong(value),
        })
    }
}

/// A boolean, also written as text as the `config` crate reads one (an environment
/// override is text): `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`, in any case.
#[derive(Clone, Copy, Debug)]
pub struct Flag(pub bool);

impl<'de> Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = match Value::deserialize(d)? {
            Value::Bool(b) => return Ok(Flag(b)),
            Value::String(s) => s.trim().to_ascii_lowercase(),
            _ => String::new(),
        };
        match text.as_str() {
            "true" | "yes" | "on" | "1" => Ok(Flag(true)),
            "false" | "no" | "off" | "0" => Ok(Flag(false)),
            _ => Err(serde::de::Error::custom("not a boolean")),
        }
    }
}

/// A number, also written as a string that parses as one.
#[derive(Clone, Copy, Debug)]
pub struct Number(pub f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = match Value::deserialize(d)? {
            Value::Number(n) => n.as_f64(),
            // Text that parses as a finite number ("NaN" from the environment is no number).
            Value::String(s) => s.trim().parse().ok().filter(|n: &f64| n.is_finite()),
            _ => None,
        };
        n.map(Number)
            .ok_or_else(|| serde::de::Error::custom("not a number"))
    }
}

/// A duration as written: a string (`"30s"`, parsed in validation so that its problem
/// names the key) or the bare number `0`.
#[derive(Clone, Debug)]
pub enum RawDuration {
    Text(String),
    Zero,
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(RawDuration::Text(s)),
            Value::Number(n) if n.as_u64() == Some(0) => Ok(RawDuration::Zero),
            _ => Err(serde::de::Error::custom("not a duration")),
        }
    }
}

/// A list whose items are checked one by one (`events[1]: expected a string`).
pub type List<T> = Field<Vec<Field<T>>>;

/// A table of the config: its keys (for "known keys here") and what else it held.
pub trait Table: Default {
    const KEYS: &'static [&'static str];
    fn unknown(&self) -> &Map<String, Value>;
}

/// Declares a raw table: the struct with every key a [`Field`] and a flattened map of
/// unknown keys, and its [`Table`] impl, so the list of known keys cannot drift.
macro_rules! raw_table {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(pub $field: $ty,)*
            /// Keys that are not ours, each reported as unknown.
            #[serde(flatten)]
            pub unknown: Map<String, Value>,
        }
        impl Table for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn unknown(&self) -> &Map<String, Value> {
                &self.unknown
            }
        }
    };
}

raw_table!(
    /// The whole file, as written.
    RawConfig {
        api: Field<RawApi>,
        poll: Field<RawPoll>,
        store: Field<RawStore>,
        server: Field<RawServer>,
        log: Field<RawLog>,
        delivery: Field<RawDelivery>,
        targets: List<RawTarget>,
        sinks: List<RawSink>,
    }
);

raw_table!(
    /// `[api]`
    RawApi {
        base_url: Field<String>,
        api_key_env: Field<String>,
        api_key_file: Field<String>,
        auth_scheme: Field<String>,
        timeout: Field<RawDuration>,
        max_requests_per_second: Field<Number>,
        max_response_bytes: Field<Number>,
        max_buffered_bytes: Field<Number>,
    }
);

raw_table!(
    /// `[poll]`
    RawPoll {
        interval: Field<RawDuration>,
        syncing_interval: Field<RawDuration>,
        jitter: Field<Number>,
        concurrency: Field<Number>,
        emit_existing: Field<Flag>,
        delete_after_missing_polls: Field<Number>,
        stalled_after: Field<RawDuration>,
        adaptive: Field<Flag>,
        null_status: Field<String>,
    }
);

raw_table!(
    /// `[store]`
    RawStore {
        url: Field<String>,
        lease_ttl: Field<RawDuration>,
        replica_id: Field<String>,
        retention: Field<RawDuration>,
        group_readable: Field<Flag>,
    }
);

raw_table!(
    /// `[server]`
    RawServer {
        listen: Field<String>,
        max_connections: Field<Number>,
        header_read_timeout: Field<RawDuration>,
        idle_timeout: Field<RawDuration>,
    }
);

raw_table!(
    /// `[log]`
    RawLog {
        format: Field<String>,
        level: Field<String>,
    }
);

raw_table!(
    /// `[delivery]`
    RawDelivery {
        shutdown_grace: Field<RawDuration>,
    }
);

raw_table!(
    /// One `[[targets]]`.
    RawTarget {
        name: Field<String>,
        run_id: Field<String>,
        base_model: Field<String>,
        checkpoint_path: Field<String>,
        checkpoint_targets: List<String>,
        interval: Field<RawDuration>,
        syncing_interval: Field<RawDuration>,
    }
);

raw_table!(
    /// One `[[sinks]]`, of any kind; validation checks which keys fit the kind.
    RawSink {
        name: Field<String>,
        kind: Field<String>,
        url: Field<String>,
        url_env: Field<String>,
        url_file: Field<String>,
        secret_env: Field<String>,
        secret_file: Field<String>,
        previous_secret_env: Field<String>,
        previous_secret_file: Field<String>,
        signing_key_env: Field<String>,
        signing_key_file: Field<String>,
        format: Field<String>,
        template: Field<String>,
        content_type: Field<String>,
        headers: Field<Map<String, Value>>,
        events: List<String>,
        targets: List<String>,
        checkpoint_targets: List<String>,
        timeout: Field<RawDuration>,
        retry_schedule: List<RawDuration>,
        concurrency: Field<Number>,
        ordered: Field<Flag>,
        command: List<String>,
        model_name: Field<String>,
        instance_type_id: Field<String>,
        hf_secret_name: Field<String>,
        latest_only: Field<Flag>,
        validate: Field<Flag>,
        follow: Field<Flag>,
        follow_interval: Field<RawDuration>,
        follow_timeout: Field<RawDuration>,
        approval: Field<String>,
        approval_deadline: Field<RawDuration>,
        promote_to: Field<String>,
        deactivate_superseded: Field<Flag>,
    }
);

/// What the sources produced: the raw config and the keys whose floats were NaN or
/// infinite (JSON has neither, so serde would see them as absent, i.e. the default).
pub struct Sourced {
    pub raw: RawConfig,
    pub non_finite: Vec<(String, f64)>,
}

/// Merge `text` with the `LOOPWATCH__*` overrides of `env` and deserialize the result.
/// Syntax errors are the one problem that stops here: `name: <parser's message>`.
pub fn read(
    text: &str,
    format: ::config::FileFormat,
    name: &str,
    env: &Environment,
) -> Result<Sourced, ConfigError> {
    let parse_error = |msg: &str| ConfigError {
        problems: vec![printable(&format!(
            "{name}: {}{}",
            parse_message(msg),
            key_of_line(text, msg).map_or(String::new(), |k| format!(" ({k})"))
        ))],
    };
    if matches!(format, ::config::FileFormat::Yaml) {
        yaml_expansion_guard(text, MAX_YAML_NODES).map_err(|m| parse_error(&m))?;
    }
    let built = ::config::Config::builder()
        .add_source(::config::File::from_str(text, format))
        .add_source(
            ::config::Environment::with_prefix("LOOPWATCH")
                .prefix_separator("__")
                .separator("__")
                // Values stay text: parsed, "007" would become 7 and then "7". Numbers and
                // booleans are read from text by the fields that take them.
                .try_parsing(false)
                .source(Some(env.overrides().into_iter().collect())),
        )
        .build()
        .map_err(|e| parse_error(&e.to_string()))?;
    // Found in the `config` crate's own tree, before serde loses them.
    let mut non_finite = Vec::new();
    find_non_finite(&built.cache, "", &mut non_finite);
    let raw = built
        .try_deserialize::<RawConfig>()
        .map_err(|e| parse_error(&e.to_string()))?;
    Ok(Sourced { raw, non_finite })
}

/// The key (or `[table]` header) on the line a TOML "duplicate key" message points at
/// (`at line 3`), for the one-line message that drops the source snippet: it named none.
/// Only the part before `=`: a value may be a misplaced secret.
fn key_of_line(text: &str, msg: &str) -> Option<String> {
    if !msg.contains("duplicate") {
        return None;
    }
    let rest = &msg[msg.find("at line ")? + "at line ".len()..];
    let n: usize = rest
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let line = text.lines().nth(n.checked_sub(1)?)?.trim();
    let key = if line.starts_with('[') {
        line.split(']').next().map(|h| format!("{h}]"))?
    } else {
        format!("key {}", line.split_once('=')?.0.trim())
    };
    Some(key.chars().take(100).collect())
}

/// A parser's message on one line, without the source snippet TOML errors carry
/// (`4 | [poll` / `  |      ^`): it echoes the file, which may be long or hold a
/// misplaced secret. "TOML parse error at line 4, column 6: unclosed table, expected `]`".
fn parse_message(msg: &str) -> String {
    // serde_yaml names a key as `String("interval")`.
    let msg = &msg.replace("String(\"", "\"").replace("\"):", "\":");
    let is_snippet = |l: &str| {
        l.trim_start()
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start()
            .starts_with('|')
    };
    let mut lines = msg
        .lines()
        .filter(|l| !is_snippet(l))
        .map(super::one_line)
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
fn find_non_finite(v: &::config::Value, path: &str, out: &mut Vec<(String, f64)>) {
    match &v.kind {
        ::config::ValueKind::Float(f) if !f.is_finite() => out.push((path.to_string(), *f)),
        ::config::ValueKind::Table(t) => {
            for (k, v) in t {
                find_non_finite(v, &super::join(path, k), out);
            }
        }
        ::config::ValueKind::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                find_non_finite(v, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
