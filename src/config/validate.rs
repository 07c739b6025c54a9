//! Stage two: [`RawConfig`] -> [`Config`]. Every key is checked and turned into its typed
//! value (`Duration`, `Url`, `NonZeroUsize`, [`Secret`]); each problem is collected as
//! `file: key: reason and fix` (with `(set by LOOPWATCH__...)` when an override set it),
//! and all of them are returned at once. Sinks are checked in `sinks.rs`, secrets are
//! read in `secrets.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::raw::{Environment, Field, Flag, List, Number, RawConfig, RawDuration, Table};
use super::{
    ApiConfig, AuthScheme, Config, ConfigError, DeliveryConfig, Filter, LogConfig, LogFormat,
    NullStatus, PollConfig, ReadSecrets, ServerConfig, StoreConfig, TargetConfig, join, one_line,
    parse_checkpoint_path, parse_duration, printable, redact_url,
};
use crate::model::CheckpointTarget;

/// The longest duration a config may set.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Collects problems while validating; the `env` also resolves secrets and `${VAR}`.
pub(super) struct Problems<'a> {
    pub file: &'a str,
    pub env: &'a Environment,
    pub list: Vec<String>,
    /// Unsafe settings that are accepted, one `file: key: what and why` line each.
    pub warnings: Vec<String>,
    /// Which secrets to read; the others are listed in `skipped`.
    pub secrets: ReadSecrets,
    pub skipped: Vec<String>,
}

impl Problems<'_> {
    /// An unsafe but working setting: warned about (at start and by `check-config`),
    /// never refused.
    pub fn warn(&mut self, key: &str, msg: impl fmt::Display) {
        let from = match self.env.override_of(key) {
            Some(var) => format!(" (set by {var})"),
            None => String::new(),
        };
        self.warnings
            .push(printable(&format!("{}: {key}: {msg}{from}", self.file)));
    }

    pub fn err(&mut self, key: &str, msg: impl fmt::Display) {
        let from = match self.env.override_of(key) {
            Some(var) => format!(" (set by {var})"),
            None => String::new(),
        };
        self.list
            .push(printable(&format!("{}: {key}: {msg}{from}", self.file)));
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// The table at `key` (its default when absent or not a table), reporting its
    /// unknown keys.
    pub fn table<T: Table>(&mut self, f: Field<T>, key: &str) -> T {
        match f {
            Field::Missing => T::default(),
            Field::Value(t) => {
                for k in t.unknown().keys() {
                    self.err(
                        &join(key, k),
                        format!("unknown key; known keys here: {}", T::KEYS.join(", ")),
                    );
                }
                t
            }
            Field::Wrong(other) => {
                self.err(key, format!("expected a table, found {}", kind(&other)));
                T::default()
            }
        }
    }

    /// One table of a list (`targets[0]`); `None` when it is not a table (reported, and
    /// an empty item is reported too: `- ~` in YAML must not vanish).
    pub fn item<T: Table>(&mut self, f: Field<T>, key: &str, what: &str) -> Option<T> {
        match f {
            Field::Missing => {
                self.err(key, format!("is empty; expected a {what} table"));
                None
            }
            Field::Wrong(_) => {
                self.table(f, key);
                None
            }
            Field::Value(_) => Some(self.table(f, key)),
        }
    }

    /// The value of `f`, reporting a wrong type as "expected `what`".
    fn get<'f, T>(&mut self, f: &'f Field<T>, key: &str, what: &str) -> Option<&'f T> {
        match f {
            Field::Missing => None,
            Field::Value(v) => Some(v),
            Field::Wrong(other) => {
                self.err(key, format!("expected {what}, found {}", kind(other)));
                None
            }
        }
    }

    pub fn string(&mut self, f: &Field<String>, key: &str) -> Option<String> {
        self.get(f, key, "a string").cloned()
    }

    pub fn bool(&mut self, f: &Field<Flag>, key: &str, default: bool) -> bool {
        self.get(f, key, "true or false")
            .map_or(default, |Flag(b)| *b)
    }

    pub fn number(&mut self, f: &Field<Number>, key: &str) -> Option<f64> {
        self.get(f, key, "a number").map(|Number(n)| *n)
    }

    /// An integer in `min..=max`.
    pub fn integer(
        &mut self,
        f: &Field<Number>,
        key: &str,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        let Some(n) = self.number(f, key) else {
            return default;
        };
        if n.fract() != 0.0 || n < min as f64 || n > max as f64 {
            self.err(
                key,
                format!("must be a whole number from {min} to {max}, found {n}"),
            );
            return default;
        }
        n as u64
    }

    pub fn opt_duration(&mut self, f: &Field<RawDuration>, key: &str) -> Option<Duration> {
        let raw = self.get(f, key, "a duration string like \"30s\"")?;
        self.parse_duration(raw, key)
    }

    pub fn duration(&mut self, f: &Field<RawDuration>, key: &str, default: Duration) -> Duration {
        self.opt_duration(f, key).unwrap_or(default)
    }

    pub fn parse_duration(&mut self, raw: &RawDuration, key: &str) -> Option<Duration> {
        let s = match raw {
            RawDuration::Zero => return Some(Duration::ZERO),
            RawDuration::Text(s) => s,
        };
        match parse_duration(s) {
            // Larger waits overflow `Duration` arithmetic in the poller and the health
            // checks (a panic at start), and no sane schedule needs them.
            Some(d) if d > MAX_DURATION => {
                self.err(key, format!("{s:?} is too long; at most 365 days"));
                None
            }
            Some(d) => Some(d),
            None => {
                self.err(
                    key,
                    format!(
                        "{s:?} is not a duration; write e.g. \"250ms\", \"30s\", \"5m\" or \"24h\""
                    ),
                );
                None
            }
        }
    }

    pub fn positive_duration(
        &mut self,
        f: &Field<RawDuration>,
        key: &str,
        default: Duration,
    ) -> Duration {
        let d = self.duration(f, key, default);
        if d.is_zero() {
            self.err(key, "must be greater than zero");
            return default;
        }
        d
    }

    pub fn string_list(&mut self, f: &List<String>, key: &str) -> Option<Vec<String>> {
        let items = self.get(f, key, "a list of strings")?;
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item {
                Field::Value(s) => out.push(s.clone()),
                Field::Missing => {
                    self.err(&format!("{key}[{i}]"), "expected a string, found nothing")
                }
                Field::Wrong(other) => self.err(
                    &format!("{key}[{i}]"),
                    format!("expected a string, found {}", kind(other)),
                ),
            }
        }
        Some(out)
    }

    /// `checkpoint_targets`: `None` when absent (every checkpoint, unknown targets
    /// included); a list takes only the values it names.
    pub fn checkpoint_targets(
        &mut self,
        f: &List<String>,
        section: &str,
    ) -> Option<BTreeSet<CheckpointTarget>> {
        let key = join(section, "checkpoint_targets");
        let list = self.string_list(f, &key)?;
        let mut out = BTreeSet::new();
        for s in &list {
            match s.as_str() {
                "" => self.err(
                    &key,
                    "has an empty value; name a checkpoint target: \"sampler\", \"trainer\" or another value the API sends",
                ),
                _ => {
                    out.insert(CheckpointTarget::parse(s));
                }
            }
        }
        if list.is_empty() {
            // An empty set would match nothing: a filter that silently takes no checkpoint.
            self.err(
                &key,
                "is empty; omit it for every checkpoint, or list \"sampler\" and/or \"trainer\"",
            );
            return None;
        }
        Some(out)
    }
}

/// What a value is, for "expected X, found Y".
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a table",
    }
}

const NO_TARGETS: &str = "no targets; add at least one [[targets]] with a name and a run_id, base_model or checkpoint_path";

/// Check every key of `raw`; `Ok` only when there is no problem at all.
pub(super) fn validate(
    raw: RawConfig,
    file: &str,
    env: &Environment,
    require_targets: bool,
    secrets: ReadSecrets,
) -> Result<Config, ConfigError> {
    let mut w = Problems {
        file,
        env,
        list: Vec::new(),
        warnings: Vec::new(),
        secrets,
        skipped: Vec::new(),
    };
    let raw = w.table(Field::Value(raw), "");

    // [api]
    let api = w.table(raw.api, "api");
    let base_url = w
        .string(&api.base_url, "api.base_url")
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
    // `https://user:pass@host` made reqwest send `Authorization: Basic` beside the key's
    // `Bearer`: two headers, and a proxy or the API picks one. The password never shows.
    let base_url = match base_url {
        Some(u) if !u.username().is_empty() || u.password().is_some() => {
            super::secrets::register_url(&u);
            w.err(
                "api.base_url",
                format!(
                    "{:?} carries a user or password; the API key is the one credential sent (api.api_key_env or api.api_key_file): remove the user:password@ part",
                    redact_url(u.as_str())
                ),
            );
            None
        }
        other => other,
    };
    if let Some(u) = &base_url
        && let Some(host) = cleartext_to_remote(u)
    {
        w.warn(
            "api.base_url",
            format!("plain http:// to {host}, which is not a loopback address: the API key goes out in cleartext; use https://"),
        );
    }
    let api_key = w.secret(
        "api",
        "api_key",
        &api.api_key_env,
        &api.api_key_file,
        Some("BASETEN_API_KEY"),
    );
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
    let auth_scheme = match w.string(&api.auth_scheme, "api.auth_scheme").as_deref() {
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
    let api_timeout = w.positive_duration(&api.timeout, "api.timeout", Duration::from_secs(30));
    let rps = w
        .number(&api.max_requests_per_second, "api.max_requests_per_second")
        .unwrap_or(10.0);
    // A token bucket's period is 1/rps: under a nanosecond it cannot be timed, and a
    // period of hours would leave every target but one unpolled.
    if !(0.001..=1_000_000.0).contains(&rps) {
        w.err(
            "api.max_requests_per_second",
            format!("must be between 0.001 and 1000000 (requests a second), found {rps:.3e}"),
        );
    }
    let max_response_bytes = w.integer(
        &api.max_response_bytes,
        "api.max_response_bytes",
        64 << 20,
        1024,
        1 << 40,
    );
    // Room for two of the largest responses at once by default; never less than one.
    let max_buffered_bytes = w.integer(
        &api.max_buffered_bytes,
        "api.max_buffered_bytes",
        max_response_bytes.saturating_mul(2),
        1024,
        1 << 42,
    );
    if max_buffered_bytes < max_response_bytes {
        w.err(
            "api.max_buffered_bytes",
            format!("is {max_buffered_bytes}, below api.max_response_bytes ({max_response_bytes}): a response of the largest allowed size could never be read; raise it or lower api.max_response_bytes"),
        );
    }

    // [poll]
    let poll = w.table(raw.poll, "poll");
    let interval = w.positive_duration(&poll.interval, "poll.interval", Duration::from_secs(60));
    let syncing_interval = w.positive_duration(
        &poll.syncing_interval,
        "poll.syncing_interval",
        Duration::from_secs(10),
    );
    let jitter = w.number(&poll.jitter, "poll.jitter").unwrap_or(0.1);
    if !(0.0..1.0).contains(&jitter) {
        w.err(
            "poll.jitter",
            format!("must be at least 0 and below 1 (a fraction, 0.1 = +-10%), found {jitter}"),
        );
    }
    let concurrency = w.integer(&poll.concurrency, "poll.concurrency", 8, 1, 10_000);
    let emit_existing = w.bool(&poll.emit_existing, "poll.emit_existing", false);
    let adaptive = w.bool(&poll.adaptive, "poll.adaptive", false);
    let null_status = match w.string(&poll.null_status, "poll.null_status").as_deref() {
        None | Some("probe") => NullStatus::Probe,
        Some("pending") => NullStatus::Pending,
        Some(other) => {
            w.err(
                "poll.null_status",
                format!("{other:?} is not a choice; use \"probe\" or \"pending\""),
            );
            NullStatus::Probe
        }
    };
    let delete_after = w.integer(
        &poll.delete_after_missing_polls,
        "poll.delete_after_missing_polls",
        2,
        1,
        1_000_000,
    );
    let stalled_after = w.duration(
        &poll.stalled_after,
        "poll.stalled_after",
        Duration::from_secs(30 * 60),
    );

    // [store]
    let store = w.table(raw.store, "store");
    let retention = w.duration(
        &store.retention,
        "store.retention",
        Duration::from_secs(30 * 24 * 3600),
    );
    let lease_ttl =
        w.positive_duration(&store.lease_ttl, "store.lease_ttl", Duration::from_secs(15));
    let replica_id = w
        .string(&store.replica_id, "store.replica_id")
        .unwrap_or_else(super::default_replica_id);
    if replica_id.is_empty() || replica_id.contains('/') {
        w.err(
            "store.replica_id",
            "must be non-empty and without '/' (owner names with '/' are `loopwatch once` runs); use the pod or host name",
        );
    }
    let store_url = w
        .string(&store.url, "store.url")
        .unwrap_or_else(|| "sqlite://loopwatch.db".into());
    if let Err(e) = check_store_url(&store_url) {
        w.err("store.url", e);
    }
    let group_readable = w.bool(&store.group_readable, "store.group_readable", false);
    if group_readable && !store_url.starts_with("sqlite:") {
        w.err(
            "store.group_readable",
            "sets the mode of SQLite state files; PostgreSQL keeps no files here: remove it, or grant read access in the database",
        );
    }

    // [server]
    let server = w.table(raw.server, "server");
    let listen = w
        .string(&server.listen, "server.listen")
        .unwrap_or_else(|| "127.0.0.1:9464".into());
    let listen = match listen.parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            w.err("server.listen", format!("{listen:?} is not an address; write ip:port, e.g. \"127.0.0.1:9464\" or \"0.0.0.0:9464\""));
            None
        }
    };

    let max_connections = w.integer(
        &server.max_connections,
        "server.max_connections",
        512,
        4,
        1 << 20,
    ) as usize;
    let header_read_timeout = w.positive_duration(
        &server.header_read_timeout,
        "server.header_read_timeout",
        Duration::from_secs(10),
    );
    let idle_timeout = w.positive_duration(
        &server.idle_timeout,
        "server.idle_timeout",
        Duration::from_secs(60),
    );

    if let Some(a) = listen
        && !a.ip().is_loopback()
    {
        w.warn(
            "server.listen",
            format!("{a} is not a loopback address: /metrics, /healthz and /readyz (target and sink names, error counts) answer anyone who can reach it; listen on 127.0.0.1 unless a scraper elsewhere needs it, and firewall it then"),
        );
    }

    // [log]
    let log = w.table(raw.log, "log");
    let log_format = match w.string(&log.format, "log.format").as_deref() {
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
        .string(&log.level, "log.level")
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
    let delivery = w.table(raw.delivery, "delivery");
    let shutdown_grace = w.duration(
        &delivery.shutdown_grace,
        "delivery.shutdown_grace",
        Duration::from_secs(10),
    );

    // [[targets]]
    let mut targets = Vec::new();
    let mut names = BTreeSet::new();
    match raw.targets {
        Field::Missing if !require_targets => {}
        Field::Missing => w.err("targets", NO_TARGETS),
        Field::Value(items) => {
            if items.is_empty() && require_targets {
                w.err("targets", NO_TARGETS);
            }
            for (i, item) in items.into_iter().enumerate() {
                let sec = format!("targets[{i}]");
                let Some(t) = w.item(item, &sec, "[[targets]]") else {
                    continue;
                };
                if let Some(target) =
                    target(&mut w, t, &sec, interval, syncing_interval, &mut names)
                {
                    targets.push(target);
                }
            }
        }
        Field::Wrong(other) => w.err(
            "targets",
            format!(
                "expected a list of [[targets]] tables, found {}",
                kind(&other)
            ),
        ),
    }

    // [[sinks]]
    let mut sinks = Vec::new();
    let mut sink_names = BTreeSet::new();
    match raw.sinks {
        Field::Missing => {}
        Field::Value(items) => {
            for (i, item) in items.into_iter().enumerate() {
                let sec = format!("sinks[{i}]");
                let Some(s) = w.item(item, &sec, "[[sinks]]") else {
                    continue;
                };
                if let Some(sink) =
                    super::sinks::sink(&mut w, s, &sec, &names, &mut sink_names, api_timeout)
                {
                    sinks.push(sink);
                }
            }
        }
        Field::Wrong(other) => w.err(
            "sinks",
            format!(
                "expected a list of [[sinks]] tables, found {}",
                kind(&other)
            ),
        ),
    }

    if !w.list.is_empty() {
        return Err(ConfigError { problems: w.list });
    }
    let (api_key, api_key_source) = api_key.expect("no problems implies a key");
    Ok(Config {
        source: file.to_string(),
        file: None,
        warnings: w.warnings,
        skipped_secrets: w.skipped,
        api: ApiConfig {
            base_url: base_url.expect("checked"),
            api_key,
            api_key_source,
            auth_scheme,
            timeout: api_timeout,
            max_requests_per_second: rps,
            max_response_bytes,
            max_buffered_bytes,
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
            null_status,
        },
        store: StoreConfig {
            url: store_url,
            lease_ttl,
            replica_id,
            retention: (!retention.is_zero()).then_some(retention),
            group_readable,
        },
        server: ServerConfig {
            listen: listen.expect("checked"),
            max_connections,
            header_read_timeout,
            idle_timeout,
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

/// The host of a plain `http://` URL that leaves this machine (not `localhost`, not a
/// loopback address): what goes there can be read and changed on the way.
pub(super) fn cleartext_to_remote(u: &Url) -> Option<String> {
    if u.scheme() != "http" {
        return None;
    }
    let loopback = match u.host()? {
        url::Host::Domain(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    };
    (!loopback).then(|| u.host_str().unwrap_or_default().to_string())
}

/// One `[[targets]]`; `None` when it has no usable filter (already reported).
fn target(
    w: &mut Problems<'_>,
    t: super::raw::RawTarget,
    sec: &str,
    interval: Duration,
    syncing_interval: Duration,
    names: &mut BTreeSet<String>,
) -> Option<TargetConfig> {
    let name = w.string(&t.name, &join(sec, "name")).unwrap_or_default();
    if matches!(t.name, Field::Wrong(_)) {
        // Reported as of the wrong type: not "missing" as well.
    } else if name.trim().is_empty() {
        w.err(
            &join(sec, "name"),
            "is missing; every target needs a unique name",
        );
    } else if !names.insert(name.clone()) {
        w.err(
            &join(sec, "name"),
            format!("duplicate target name {name:?}; names must be unique"),
        );
    }
    let mut filters = Vec::new();
    let reported = w.len();
    for (key, field) in [
        ("run_id", &t.run_id),
        ("base_model", &t.base_model),
        ("checkpoint_path", &t.checkpoint_path),
    ] {
        if let Some(v) = w.string(field, &join(sec, key)) {
            if v.trim().is_empty() {
                w.err(&join(sec, key), "is empty");
            } else {
                filters.push((key, v));
            }
        }
    }
    let filter = match filters.as_slice() {
        [(k, v)] => {
            if *k == "checkpoint_path" && parse_checkpoint_path(v).is_none() {
                w.err(&join(sec, "checkpoint_path"), format!("{v:?} is not a checkpoint URI; write bt://loops:<run_id>/(weights|sampler_weights)/<name>"));
            }
            Some(match *k {
                "run_id" => Filter::RunId(v.clone()),
                "base_model" => Filter::BaseModel(v.clone()),
                _ => Filter::CheckpointPath(v.clone()),
            })
        }
        // An empty or mistyped filter was reported above; "no filter" would be the same
        // problem twice.
        [] if w.len() > reported => None,
        [] => {
            w.err(sec, format!("target {name:?} has no filter; set exactly one of run_id, base_model, checkpoint_path"));
            None
        }
        many => {
            let keys: Vec<&str> = many.iter().map(|(k, _)| *k).collect();
            w.err(sec, format!("target {name:?} has {} filters ({}); keep exactly one of run_id, base_model, checkpoint_path", many.len(), keys.join(", ")));
            None
        }
    };
    let checkpoint_targets = w.checkpoint_targets(&t.checkpoint_targets, sec);
    let t_interval = w.positive_duration(&t.interval, &join(sec, "interval"), interval);
    let t_syncing = w.positive_duration(
        &t.syncing_interval,
        &join(sec, "syncing_interval"),
        syncing_interval.min(t_interval),
    );
    Some(TargetConfig {
        name,
        filter: filter?,
        checkpoint_targets,
        interval: t_interval,
        syncing_interval: t_syncing,
    })
}

/// What the store will accept, checked here so that a bad URL is a config error (exit 78)
/// and not a failure at start. sqlx's messages name the parameter, never the password.
fn check_store_url(url: &str) -> Result<(), String> {
    use std::str::FromStr;
    if let Ok(u) = Url::parse(url) {
        super::secrets::register_url(&u);
    }
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
