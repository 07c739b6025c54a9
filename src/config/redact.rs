//! The effective config as `check-config` prints it: a serializable view of [`Config`]
//! in the file's own keys, with every secret shown only by where it came from and URL
//! passwords and queries hidden. Two forms: [`Config::to_redacted_toml`] describes each
//! secret (`secret = "[redacted] (secret_env = HOOK_SECRET)"`), for `-o json` and the
//! reload's comparison; [`Config::to_loadable_toml`] writes the key it is read from
//! (`secret_env = "HOOK_SECRET"`), so that the printed config loads again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use url::Url;

use super::sinks::PUBLIC_KEY_NOTE;
use super::{AuthScheme, Config, Filter, LogFormat, SinkConfig, SinkKind};

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

impl Config {
    /// The effective config as TOML, secrets shown only by where they come from:
    /// `api_key = "[redacted] (api_key_env = BASETEN_API_KEY)"`.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&Redacted::new(self, Secrets::Described)).unwrap_or_default()
    }

    /// The effective config as TOML that loads again: each secret as the key it is read
    /// from, `api_key_env = "BASETEN_API_KEY"` (what `check-config` prints).
    pub fn to_loadable_toml(&self) -> String {
        toml::to_string(&Redacted::new(self, Secrets::BySource)).unwrap_or_default()
    }
}

/// How a secret is shown; never by its value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Secrets {
    /// `secret = "[redacted] (secret_env = HOOK_SECRET)"`: not a valid config.
    Described,
    /// `secret_env = "HOOK_SECRET"`: the config key naming its source.
    BySource,
}

impl Secrets {
    /// The entry of secret `key`, read from `source` (`"secret_env = HOOK_SECRET"`; a
    /// signing key's adds its public key, which the loadable form leaves out).
    fn entry(self, key: &str, source: &str) -> (String, String) {
        match (self, source.split_once(" = ")) {
            (Secrets::BySource, Some((k, v))) => {
                let v = match v.rsplit_once(PUBLIC_KEY_NOTE) {
                    Some((v, _)) if key == "signing_key" => v,
                    _ => v,
                };
                (k.to_string(), v.to_string())
            }
            _ => (key.to_string(), redacted(source)),
        }
    }
}

/// A duration as a config writes it: one unit where one fits exactly (`"250ms"`, `"30s"`,
/// `"5m"`, `"24h"`, `"30d"`; days from two on, so a day stays `"24h"`), else in ms.
fn human(d: Duration) -> String {
    const DAY: u128 = 86_400_000;
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) || ms == 0 {
        return humantime::format_duration(d).to_string();
    }
    let exact = |unit: u128| ms.is_multiple_of(unit).then_some(ms / unit);
    match (exact(DAY), exact(3_600_000), exact(60_000), exact(1000)) {
        (Some(days), ..) if days >= 2 => format!("{days}d"),
        (_, Some(h), ..) => format!("{h}h"),
        (_, _, Some(m), _) => format!("{m}m"),
        (_, _, _, Some(s)) => format!("{s}s"),
        _ => format!("{ms}ms"),
    }
}

/// An optional duration: `"0"` turns it off.
fn human_or_off(d: Option<Duration>) -> String {
    d.map_or_else(|| "0".into(), human)
}

fn redacted(source: &str) -> String {
    format!("[redacted] ({source})")
}

#[derive(Serialize)]
struct Redacted<'a> {
    api: Api,
    poll: Poll,
    store: Store<'a>,
    server: Server,
    log: Log<'a>,
    delivery: Delivery,
    targets: Vec<Target<'a>>,
    sinks: Vec<Sink<'a>>,
}

#[derive(Serialize)]
struct Api {
    base_url: String,
    /// `api_key` or `api_key_env`/`api_key_file` ([`Secrets`]).
    #[serde(flatten)]
    api_key: BTreeMap<String, String>,
    auth_scheme: &'static str,
    timeout: String,
    max_requests_per_second: f64,
    max_response_bytes: u64,
    max_buffered_bytes: u64,
}

#[derive(Serialize)]
struct Poll {
    interval: String,
    syncing_interval: String,
    jitter: f64,
    concurrency: usize,
    emit_existing: bool,
    adaptive: bool,
    delete_after_missing_polls: u32,
    stalled_after: String,
    null_status: &'static str,
}

#[derive(Serialize)]
struct Store<'a> {
    url: String,
    retention: String,
    /// SQLite only.
    #[serde(skip_serializing_if = "Option::is_none")]
    group_readable: Option<bool>,
    /// PostgreSQL only.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease_ttl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replica_id: Option<&'a str>,
}

#[derive(Serialize)]
struct Server {
    listen: String,
    max_connections: usize,
    header_read_timeout: String,
    idle_timeout: String,
}

#[derive(Serialize)]
struct Log<'a> {
    format: &'static str,
    level: &'a str,
}

#[derive(Serialize)]
struct Delivery {
    shutdown_grace: String,
}

#[derive(Serialize)]
struct Target<'a> {
    name: &'a str,
    /// `run_id = ...`, `base_model = ...` or `checkpoint_path = ...`.
    #[serde(flatten)]
    filter: BTreeMap<&'static str, &'a str>,
    /// Absent: every checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_targets: Option<Vec<&'a str>>,
    interval: String,
    syncing_interval: String,
}

#[derive(Serialize)]
struct Sink<'a> {
    name: &'a str,
    #[serde(flatten)]
    kind: Kind<'a>,
    events: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    targets: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_targets: Option<Vec<&'a str>>,
    timeout: String,
    retry_schedule: Vec<String>,
    concurrency: usize,
    ordered: bool,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Kind<'a> {
    Webhook {
        /// `None` when the URL is itself a secret (`url_env`/`url_file`): it is then among
        /// `secrets`, by where it came from.
        #[serde(skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        /// `secret`, `previous_secret`, `url`, `signing_key`: where each came from
        /// ([`Secrets`]).
        #[serde(flatten)]
        secrets: BTreeMap<String, String>,
        format: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        template: Option<&'a str>,
        content_type: &'a str,
        /// As written, `${VAR}` unexpanded.
        headers: BTreeMap<&'a str, &'a str>,
    },
    Exec {
        command: &'a [String],
    },
    BasetenDeploy {
        model_name: &'a str,
        instance_type_id: &'a str,
        hf_secret_name: &'a str,
        latest_only: bool,
        validate: bool,
        follow: bool,
        follow_interval: String,
        follow_timeout: String,
        approval: &'a str,
        approval_deadline: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        promote_to: Option<&'a str>,
        deactivate_superseded: bool,
    },
}

impl<'a> Redacted<'a> {
    fn new(c: &'a Config, secrets: Secrets) -> Self {
        let postgres = c.store.is_postgres();
        Redacted {
            api: Api {
                base_url: redact_url(c.api.base_url.as_str()),
                api_key: BTreeMap::from([secrets.entry("api_key", &c.api.api_key_source)]),
                auth_scheme: match c.api.auth_scheme {
                    AuthScheme::Bearer => "bearer",
                    AuthScheme::ApiKey => "api-key",
                },
                timeout: human(c.api.timeout),
                max_requests_per_second: c.api.max_requests_per_second,
                max_response_bytes: c.api.max_response_bytes,
                max_buffered_bytes: c.api.max_buffered_bytes,
            },
            poll: Poll {
                interval: human(c.poll.interval),
                syncing_interval: human(c.poll.syncing_interval),
                jitter: c.poll.jitter,
                concurrency: c.poll.concurrency.get(),
                emit_existing: c.poll.emit_existing,
                adaptive: c.poll.adaptive,
                delete_after_missing_polls: c.poll.delete_after_missing_polls,
                stalled_after: human_or_off(c.poll.stalled_after),
                null_status: c.poll.null_status.as_str(),
            },
            store: Store {
                url: redact_url(&c.store.url),
                retention: human_or_off(c.store.retention),
                group_readable: (!postgres).then_some(c.store.group_readable),
                lease_ttl: postgres.then(|| human(c.store.lease_ttl)),
                replica_id: postgres.then_some(c.store.replica_id.as_str()),
            },
            server: Server {
                listen: c.server.listen.to_string(),
                max_connections: c.server.max_connections,
                header_read_timeout: human(c.server.header_read_timeout),
                idle_timeout: human(c.server.idle_timeout),
            },
            log: Log {
                format: match c.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: &c.log.level,
            },
            delivery: Delivery {
                shutdown_grace: human(c.delivery.shutdown_grace),
            },
            targets: c
                .targets
                .iter()
                .map(|t| Target {
                    name: &t.name,
                    filter: filter(&t.filter),
                    checkpoint_targets: names(t.checkpoint_targets.as_ref()),
                    interval: human(t.interval),
                    syncing_interval: human(t.syncing_interval),
                })
                .collect(),
            sinks: c.sinks.iter().map(|s| Sink::new(s, secrets)).collect(),
        }
    }
}

/// A `checkpoint_targets` filter as listed (None: absent, every checkpoint).
fn names(
    f: Option<&std::collections::BTreeSet<crate::model::CheckpointTarget>>,
) -> Option<Vec<&str>> {
    f.map(|set| set.iter().map(|t| t.as_str()).collect())
}

fn filter(f: &Filter) -> BTreeMap<&'static str, &str> {
    BTreeMap::from([(f.query_key(), f.value())])
}

impl<'a> Sink<'a> {
    fn new(s: &'a SinkConfig, shown: Secrets) -> Self {
        let kind = match &s.kind {
            SinkKind::Webhook {
                url,
                format,
                template,
                content_type,
                headers,
                ..
            } => Kind::Webhook {
                url: (!s.secret_sources.iter().any(|(k, _)| k == "url"))
                    .then(|| redact_url(url.as_str())),
                secrets: s
                    .secret_sources
                    .iter()
                    .map(|(k, src)| shown.entry(k, src))
                    .collect(),
                format: format.as_str(),
                template: template.as_deref(),
                content_type,
                headers: headers
                    .iter()
                    .map(|h| (h.name.as_str(), h.template.as_str()))
                    .collect(),
            },
            SinkKind::Exec { command } => Kind::Exec { command },
            SinkKind::BasetenDeploy(d) => Kind::BasetenDeploy {
                model_name: &d.model_name,
                instance_type_id: &d.instance_type_id,
                hf_secret_name: &d.hf_secret_name,
                latest_only: d.latest_only,
                validate: d.validate,
                follow: d.follow,
                follow_interval: human(d.follow_interval),
                follow_timeout: human(d.follow_timeout),
                approval: d.approval.as_str(),
                approval_deadline: human(d.approval_deadline),
                promote_to: d.promote_to.as_deref(),
                deactivate_superseded: d.deactivate_superseded,
            },
        };
        Sink {
            name: &s.name,
            kind,
            events: s.events.iter().map(|e| e.as_str()).collect(),
            targets: s
                .targets
                .as_ref()
                .map(|t| t.iter().map(String::as_str).collect()),
            checkpoint_targets: names(s.checkpoint_targets.as_ref()),
            timeout: human(s.timeout),
            retry_schedule: s.retry_schedule.iter().map(|d| human(*d)).collect(),
            concurrency: s.concurrency.get(),
            ordered: s.ordered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations print as a config writes them, and parse back to themselves
    /// (`humantime` printed `"1day"`, `"30days"`, `"1s 500ms"`).
    #[test]
    fn durations_print_in_one_unit_and_parse_back() {
        for (d, text) in [
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(60), "1m"),
            (Duration::from_secs(90 * 60), "90m"),
            (Duration::from_secs(86_400), "24h"),
            (Duration::from_secs(30 * 86_400), "30d"),
        ] {
            assert_eq!(human(d), text);
            assert_eq!(crate::config::parse_duration(text), Some(d), "{text}");
        }
    }
}
