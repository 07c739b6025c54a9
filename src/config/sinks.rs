//! `[[sinks]]`: one [`RawSink`] -> one [`SinkConfig`]. A webhook sink's URL, signing
//! secrets (checked as keys here, so a bad one is a config error), payload format and
//! template (compiled here), content type and headers; an exec sink's command; and what
//! both kinds share (events, targets, timeout, retry schedule, concurrency).

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::raw::{Field, RawSink};
use super::validate::{Problems, kind};
use super::{
    DEFAULT_RETRY_SCHEDULE, HeaderConfig, PayloadFormat, Secret, SinkConfig, SinkKind, join,
    one_line, parse_duration, redact_url,
};
use crate::model::EventType;
use crate::signing::{Ed25519Key, SigningKey};
use crate::template::compile_template;

/// One sink; `None` when a problem leaves nothing to build (already reported).
pub(super) fn sink(
    w: &mut Problems<'_>,
    s: RawSink,
    sec: &str,
    target_names: &BTreeSet<String>,
    sink_names: &mut BTreeSet<String>,
) -> Option<SinkConfig> {
    let name = w.string(&s.name, &join(sec, "name")).unwrap_or_default();
    if name.trim().is_empty() {
        w.err(
            &join(sec, "name"),
            "is missing; every sink needs a unique name",
        );
    } else if !sink_names.insert(name.clone()) {
        w.err(
            &join(sec, "name"),
            format!("duplicate sink name {name:?}; names must be unique"),
        );
    }
    let kind_name = w
        .string(&s.kind, &join(sec, "kind"))
        .unwrap_or_else(|| "webhook".into());
    let sink_kind = match kind_name.as_str() {
        "webhook" => webhook(w, &s, sec, &name),
        "exec" => exec(w, &s, sec),
        other => {
            w.err(
                &join(sec, "kind"),
                format!("{other:?} is not a sink kind; use \"webhook\" or \"exec\""),
            );
            None
        }
    };

    let events = match w.string_list(&s.events, &join(sec, "events")) {
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
                            &join(sec, "events"),
                            format!("unknown event type {e:?}; known: {}", known.join(", ")),
                        );
                    }
                }
            }
            if list.is_empty() {
                w.err(&join(sec, "events"), "is empty; omit it for every type");
            }
            out
        }
    };
    let targets = w
        .string_list(&s.targets, &join(sec, "targets"))
        .map(|list| {
            for t in &list {
                if !target_names.contains(t) {
                    w.err(
                        &join(sec, "targets"),
                        format!("names unknown target {t:?}; it must match a [[targets]] name"),
                    );
                }
            }
            if list.is_empty() {
                // An empty set would match nothing: a sink that silently never fires.
                w.err(&join(sec, "targets"), "is empty; omit it for every target");
            }
            list.into_iter().collect()
        });
    let checkpoint_targets = w.checkpoint_targets(&s.checkpoint_targets, sec);
    let timeout = w.positive_duration(&s.timeout, &join(sec, "timeout"), Duration::from_secs(15));
    let retry_schedule = match &s.retry_schedule {
        Field::Missing => DEFAULT_RETRY_SCHEDULE
            .iter()
            .map(|d| parse_duration(d).expect("valid"))
            .collect(),
        Field::Value(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, item)| {
                let key = format!("{sec}.retry_schedule[{i}]");
                match item {
                    Field::Missing => None,
                    Field::Value(d) => w.parse_duration(d, &key),
                    Field::Wrong(other) => {
                        w.err(
                            &key,
                            format!(
                                "expected a duration string like \"30s\", found {}",
                                kind(other)
                            ),
                        );
                        None
                    }
                }
            })
            .collect(),
        Field::Wrong(other) => {
            w.err(
                &join(sec, "retry_schedule"),
                format!("expected a list of durations, found {}", kind(other)),
            );
            Vec::new()
        }
    };
    let concurrency = w.integer(&s.concurrency, &join(sec, "concurrency"), 4, 1, 1024);
    let ordered = w.bool(&s.ordered, &join(sec, "ordered"), false);
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

/// The keys of a webhook sink, with where its secrets came from.
fn webhook(
    w: &mut Problems<'_>,
    s: &RawSink,
    sec: &str,
    name: &str,
) -> Option<(SinkKind, Vec<(String, String)>)> {
    if s.command.is_set() {
        w.err(
            &join(sec, "command"),
            "is for kind = \"exec\"; a webhook sink takes url",
        );
    }
    let http_url = |u: &str| {
        Url::parse(u)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    };
    // A URL that is itself a credential (Slack's, say) comes from url_env/url_file.
    let from_secret = s.url_env.is_set() || s.url_file.is_set();
    let mut url_source = None;
    let url = match w.string(&s.url, &join(sec, "url")) {
        Some(_) if from_secret => {
            w.err(
                &join(sec, "url"),
                "set either url or url_env/url_file, not both",
            );
            None
        }
        None if from_secret => match w.secret(sec, "url", &s.url_env, &s.url_file, None) {
            Some((u, source)) => {
                let parsed = http_url(u.expose());
                if parsed.is_none() {
                    // The URL may carry a token: it is not echoed back.
                    w.err(
                        &join(sec, "url"),
                        format!("the URL ({source}) is not an http(s) URL"),
                    );
                }
                url_source = Some(source);
                parsed
            }
            None => None,
        },
        None => {
            w.err(
                &join(sec, "url"),
                "is missing; a webhook sink needs the URL to POST to (url, url_env or url_file)",
            );
            None
        }
        Some(u) => match http_url(&u) {
            Some(u) => Some(u),
            None => {
                w.err(
                    &join(sec, "url"),
                    format!("{:?} is not an http(s) URL", redact_url(&u)),
                );
                None
            }
        },
    };
    let signing = |w: &mut Problems<'_>, stem: &str, env: &Field<String>, file: &Field<String>| {
        let (secret, source) = w.secret(sec, stem, env, file, None)?;
        match SigningKey::parse(secret.expose()) {
            Ok(k) => Some((k, source)),
            Err(e) => {
                // The secret itself is never echoed back.
                w.err(&join(sec, stem), format!("the secret ({source}) {e}"));
                None
            }
        }
    };
    let secret = signing(w, "secret", &s.secret_env, &s.secret_file);
    let previous = signing(
        w,
        "previous_secret",
        &s.previous_secret_env,
        &s.previous_secret_file,
    );
    let ed25519 = w
        .secret(
            sec,
            "signing_key",
            &s.signing_key_env,
            &s.signing_key_file,
            None,
        )
        .and_then(|(key, source)| match Ed25519Key::parse(key.expose()) {
            Ok(k) => {
                let source = format!("{source}; public key {}", k.public_key());
                Some((k, source))
            }
            Err(e) => {
                // The key itself is never echoed back.
                w.err(&join(sec, "signing_key"), format!("the key ({source}) {e}"));
                None
            }
        });
    if previous.is_some() && secret.is_none() && !s.secret_env.is_set() && !s.secret_file.is_set() {
        w.err(
            &join(sec, "previous_secret_env"),
            "needs a current secret too; set secret_env or secret_file",
        );
    }
    let format = match w.string(&s.format, &join(sec, "format")).as_deref() {
        None | Some("standard") => PayloadFormat::Standard,
        Some("cloudevents") => PayloadFormat::CloudEvents,
        Some("cloudevents-binary") => PayloadFormat::CloudEventsBinary,
        Some("template") => PayloadFormat::Template,
        Some(other) => {
            w.err(&join(sec, "format"), format!("{other:?} is not a format; use \"standard\", \"cloudevents\", \"cloudevents-binary\" or \"template\""));
            PayloadFormat::Standard
        }
    };
    let template = w
        .string(&s.template, &join(sec, "template"))
        .filter(|t| !t.is_empty());
    match (format, &template) {
        (PayloadFormat::Template, None) => w.err(
            &join(sec, "template"),
            "is missing; format = \"template\" needs a MiniJinja template of the body",
        ),
        (PayloadFormat::Template, Some(t)) => {
            if let Err(e) = compile_template(t) {
                w.err(
                    &join(sec, "template"),
                    format!(
                        "the template of sink {name:?} does not compile: {}",
                        one_line(&e.to_string())
                    ),
                );
            }
        }
        (_, Some(_)) => w.err(
            &join(sec, "template"),
            "is only used with format = \"template\"; remove it or set the format",
        ),
        (_, None) => {}
    }
    let default_ct = match format {
        PayloadFormat::CloudEvents => "application/cloudevents+json",
        _ => "application/json",
    };
    let content_type = w
        .string(&s.content_type, &join(sec, "content_type"))
        .unwrap_or_else(|| default_ct.into());
    if content_type.trim().is_empty()
        || reqwest::header::HeaderValue::from_str(&content_type).is_err()
    {
        w.err(
            &join(sec, "content_type"),
            format!("{content_type:?} is not a header value; e.g. \"application/json\""),
        );
    }
    let mut headers = Vec::new();
    match &s.headers {
        Field::Missing => {}
        Field::Value(h) => {
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
                    w.err(
                        &key,
                        "is not a valid header value after ${VAR} expansion (control characters?)",
                    );
                }
                headers.push(HeaderConfig {
                    name: k.clone(),
                    template: template.clone(),
                    value: Secret::new(value),
                });
            }
        }
        Field::Wrong(other) => w.err(
            &join(sec, "headers"),
            format!(
                "expected a table of header = \"value\", found {}",
                kind(other)
            ),
        ),
    }
    let mut secret_sources = Vec::new();
    if let Some(src) = &url_source {
        secret_sources.push(("url".to_string(), src.clone()));
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
    if let Some(u) = &url
        && let Some(host) = super::validate::cleartext_to_remote(u)
    {
        let carries = [
            (
                secret.is_some() || previous.is_some() || ed25519.is_some(),
                "a signature",
            ),
            (!headers.is_empty(), "its headers (tokens?)"),
        ]
        .iter()
        .filter(|(yes, _)| *yes)
        .map(|(_, what)| *what)
        .collect::<Vec<_>>();
        if !carries.is_empty() {
            // The host only when the URL is not itself a secret.
            let to = if url_source.is_some() {
                "plain http://".to_string()
            } else {
                format!("plain http:// to {host}")
            };
            w.warn(
                &join(sec, "url"),
                format!(
                    "{to}, which is not a loopback address, with {}: anyone on the way reads the body and headers, and can replay it; use https://",
                    carries.join(" and ")
                ),
            );
        }
    }
    let kind = SinkKind::Webhook {
        url: url?,
        secret: secret.map(|(k, _)| k),
        previous_secret: previous.map(|(k, _)| k),
        signing_key: ed25519.map(|(k, _)| k),
        format,
        template,
        content_type,
        headers,
    };
    Some((kind, secret_sources))
}

/// The keys of an exec sink: a command, and none of a webhook's keys.
fn exec(w: &mut Problems<'_>, s: &RawSink, sec: &str) -> Option<(SinkKind, Vec<(String, String)>)> {
    for (k, set) in [
        ("url", s.url.is_set()),
        ("url_env", s.url_env.is_set()),
        ("url_file", s.url_file.is_set()),
        ("secret_env", s.secret_env.is_set()),
        ("secret_file", s.secret_file.is_set()),
        ("previous_secret_env", s.previous_secret_env.is_set()),
        ("previous_secret_file", s.previous_secret_file.is_set()),
        ("signing_key_env", s.signing_key_env.is_set()),
        ("signing_key_file", s.signing_key_file.is_set()),
        ("headers", s.headers.is_set()),
        ("template", s.template.is_set()),
        ("format", s.format.is_set()),
        ("content_type", s.content_type.is_set()),
    ] {
        if set {
            w.err(
                &join(sec, k),
                "is for kind = \"webhook\"; an exec sink takes command",
            );
        }
    }
    match w.string_list(&s.command, &join(sec, "command")) {
        Some(cmd) if !cmd.is_empty() && !cmd[0].is_empty() => {
            Some((SinkKind::Exec { command: cmd }, Vec::new()))
        }
        _ => {
            w.err(
                &join(sec, "command"),
                "is missing; an exec sink needs command = [\"/path/to/program\", \"arg\", ...]",
            );
            None
        }
    }
}
