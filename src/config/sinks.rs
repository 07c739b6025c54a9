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
    Approval, DEFAULT_MODEL_NAME, DEFAULT_RETRY_SCHEDULE, DeployConfig, HeaderConfig,
    PayloadFormat, Secret, SinkConfig, SinkKind, join, one_line, parse_duration, redact_url,
};
use crate::model::{CheckpointTarget, EventType};
use crate::signing::{Ed25519Key, SigningKey};
use crate::template::compile_template;

/// Follows where a `signing_key` came from in its source: `signing_key_file = PATH; public key whpk_...`.
pub(super) const PUBLIC_KEY_NOTE: &str = "; public key ";

/// One sink; `None` when a problem leaves nothing to build (already reported).
pub(super) fn sink(
    w: &mut Problems<'_>,
    s: RawSink,
    sec: &str,
    target_names: &BTreeSet<String>,
    sink_names: &mut BTreeSet<String>,
    api_timeout: Duration,
) -> Option<SinkConfig> {
    let name = w.string(&s.name, &join(sec, "name")).unwrap_or_default();
    if matches!(s.name, Field::Wrong(_)) {
        // Reported as of the wrong type: not "missing" as well.
    } else if name.trim().is_empty() {
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
    let deploying = kind_name == "baseten_deploy";
    if !deploying {
        not_for_webhook_or_exec(w, &s, sec);
    }
    let sink_kind = match kind_name.as_str() {
        "webhook" => webhook(w, &s, sec, &name),
        "exec" => exec(w, &s, sec),
        "baseten_deploy" => deploy(w, &s, sec),
        other => {
            w.err(
                &join(sec, "kind"),
                format!(
                    "{other:?} is not a sink kind; use \"webhook\", \"exec\" or \"baseten_deploy\""
                ),
            );
            None
        }
    };

    let events = match w.string_list(&s.events, &join(sec, "events")) {
        None if deploying => BTreeSet::from([EventType::Completed]),
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
    let targets: Option<BTreeSet<String>> =
        w.string_list(&s.targets, &join(sec, "targets"))
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
    let mut checkpoint_targets = w.checkpoint_targets(&s.checkpoint_targets, sec);
    if deploying {
        // Only sampler checkpoints are served, so only they deploy.
        if events.iter().any(|e| *e != EventType::Completed) {
            w.err(
                &join(sec, "events"),
                "a baseten_deploy sink deploys on \"checkpoint.completed\" only; omit events or set [\"checkpoint.completed\"]",
            );
        }
        if s.checkpoint_targets.is_set()
            && checkpoint_targets != Some(BTreeSet::from([CheckpointTarget::Sampler]))
        {
            w.err(
                &join(sec, "checkpoint_targets"),
                "a baseten_deploy sink deploys sampler checkpoints only; omit checkpoint_targets or set [\"sampler\"]",
            );
        }
        checkpoint_targets = Some(BTreeSet::from([CheckpointTarget::Sampler]));
    }
    // A deploy attempt is up to four API calls (validate, two reads of the model, the
    // deploy), each bounded by `api.timeout`; a sink timeout shorter than one of them cut
    // answers short and made unknown outcomes of plain slow ones: the default is four
    // times `api.timeout`.
    let default_timeout = if deploying {
        api_timeout.saturating_mul(4)
    } else {
        Duration::from_secs(15)
    };
    let timeout = w.positive_duration(&s.timeout, &join(sec, "timeout"), default_timeout);
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
    if deploying {
        // Checked even when another key of the sink is wrong: every problem at once.
        let model_name = match &s.model_name {
            Field::Value(m) => m.as_str(),
            _ => DEFAULT_MODEL_NAME,
        };
        let names: Vec<&str> = match &targets {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => target_names.iter().map(String::as_str).collect(),
        };
        model_name_renders(w, model_name, sec, &names);
    }
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
        let u = Url::parse(u)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())?;
        super::secrets::register_url(&u);
        Some(u)
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
    // A key this load does not read (ReadSecrets) is `(None, source)`: configured, listed
    // by check-config, signing nothing.
    let reads = w.reads_secrets_of(sec);
    let signing = |w: &mut Problems<'_>, stem: &str, env: &Field<String>, file: &Field<String>| {
        let (secret, source) = w.secret(sec, stem, env, file, None)?;
        if !reads {
            return Some((None, source));
        }
        match SigningKey::parse(secret.expose()) {
            Ok(k) => Some((Some(k), source)),
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
        .and_then(|(key, source)| {
            if !reads {
                return Some((None, source));
            }
            match Ed25519Key::parse(key.expose()) {
                Ok(k) => {
                    let source = format!("{source}{PUBLIC_KEY_NOTE}{}", k.public_key());
                    Some((Some(k), source))
                }
                Err(e) => {
                    // The key itself is never echoed back.
                    w.err(&join(sec, "signing_key"), format!("the key ({source}) {e}"));
                    None
                }
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
        (PayloadFormat::Template, Some(t)) => match compile_template(t) {
            Err(e) => w.err(
                &join(sec, "template"),
                format!(
                    "the template of sink {name:?} does not compile: {}",
                    one_line(&e.to_string())
                ),
            ),
            Ok(t) => {
                if let Some(e) = t.unknown_name(&sample_body("t")) {
                    w.err(
                        &join(sec, "template"),
                        format!(
                            "the template of sink {name:?} cannot render any event: {}",
                            one_line(&e)
                        ),
                    );
                }
            }
        },
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
                if let Some(why) = reserved_header(k) {
                    w.err(&key, why);
                    continue;
                }
                let Value::String(template) = v else {
                    w.err(&key, format!("expected a string, found {}", kind(v)));
                    continue;
                };
                let value = w.interpolate(sec, &key, template);
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
        secret: secret.and_then(|(k, _)| k),
        previous_secret: previous.and_then(|(k, _)| k),
        signing_key: ed25519.and_then(|(k, _)| k),
        format,
        template,
        content_type,
        headers,
    };
    Some((kind, secret_sources))
}

/// The keys only a webhook sink takes, and whether each is set.
fn webhook_keys(s: &RawSink) -> [(&'static str, bool); 13] {
    [
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
    ]
}

/// The keys of an exec sink: a command, and none of a webhook's keys.
fn exec(w: &mut Problems<'_>, s: &RawSink, sec: &str) -> Option<(SinkKind, Vec<(String, String)>)> {
    for (k, set) in webhook_keys(s) {
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

/// The keys only a `baseten_deploy` sink takes.
fn not_for_webhook_or_exec(w: &mut Problems<'_>, s: &RawSink, sec: &str) {
    for (k, set) in [
        ("model_name", s.model_name.is_set()),
        ("instance_type_id", s.instance_type_id.is_set()),
        ("hf_secret_name", s.hf_secret_name.is_set()),
        ("latest_only", s.latest_only.is_set()),
        ("validate", s.validate.is_set()),
        ("follow", s.follow.is_set()),
        ("follow_interval", s.follow_interval.is_set()),
        ("follow_timeout", s.follow_timeout.is_set()),
        ("approval", s.approval.is_set()),
        ("approval_deadline", s.approval_deadline.is_set()),
        ("promote_to", s.promote_to.is_set()),
        ("deactivate_superseded", s.deactivate_superseded.is_set()),
    ] {
        if set {
            w.err(&join(sec, k), "is for kind = \"baseten_deploy\"");
        }
    }
}

/// The keys of a `baseten_deploy` sink: what to deploy as, and none of a webhook's or an
/// exec sink's keys (it deploys through `[api]`, with its base URL, key and auth scheme).
fn deploy(
    w: &mut Problems<'_>,
    s: &RawSink,
    sec: &str,
) -> Option<(SinkKind, Vec<(String, String)>)> {
    let command = [("command", s.command.is_set())];
    for (k, set) in webhook_keys(s).into_iter().chain(command) {
        if set {
            w.err(
                &join(sec, k),
                "is not used by kind = \"baseten_deploy\": it deploys through the [api] base URL and key; remove it",
            );
        }
    }
    let model_name = w
        .string(&s.model_name, &join(sec, "model_name"))
        .unwrap_or_else(|| DEFAULT_MODEL_NAME.into());
    let mut ok = true;
    if let Err(e) = compile_template(&model_name) {
        ok = false;
        w.err(
            &join(sec, "model_name"),
            format!(
                "the template does not compile: {}",
                one_line(&e.to_string())
            ),
        );
    }
    let mut required = |key: &str, f: &Field<String>, what: &str| match w.string(f, &join(sec, key))
    {
        Some(v) if !v.trim().is_empty() => Some(v),
        Some(_) => {
            w.err(&join(sec, key), format!("is empty; set {what}"));
            None
        }
        None => {
            w.err(
                &join(sec, key),
                format!("is missing; a baseten_deploy sink needs {what}"),
            );
            None
        }
    };
    let instance_type_id = required(
        "instance_type_id",
        &s.instance_type_id,
        "the instance type to deploy on (e.g. \"H100\")",
    );
    let hf_secret_name = required(
        "hf_secret_name",
        &s.hf_secret_name,
        "the name of the Baseten secret holding HF_TOKEN (e.g. \"hf_access_token\")",
    );
    let latest_only = w.bool(&s.latest_only, &join(sec, "latest_only"), true);
    let validate = w.bool(&s.validate, &join(sec, "validate"), true);
    let follow = w.bool(&s.follow, &join(sec, "follow"), true);
    let follow_interval = w.positive_duration(
        &s.follow_interval,
        &join(sec, "follow_interval"),
        Duration::from_secs(30),
    );
    let follow_timeout = w.positive_duration(
        &s.follow_timeout,
        &join(sec, "follow_timeout"),
        Duration::from_secs(2 * 3600),
    );
    let approval = match w.string(&s.approval, &join(sec, "approval")).as_deref() {
        None | Some("none") => Approval::None,
        Some("before_deploy") => Approval::BeforeDeploy,
        Some("before_promote") => Approval::BeforePromote,
        Some(other) => {
            w.err(
                &join(sec, "approval"),
                format!("{other:?} is not an approval; use \"none\", \"before_deploy\" or \"before_promote\""),
            );
            Approval::None
        }
    };
    let approval_deadline = w.positive_duration(
        &s.approval_deadline,
        &join(sec, "approval_deadline"),
        Duration::from_secs(24 * 3600),
    );
    let promote_to = w
        .string(&s.promote_to, &join(sec, "promote_to"))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty());
    if let Some(env) = &promote_to {
        if !follow {
            w.err(
                &join(sec, "promote_to"),
                "needs follow = true: a deployment is promoted once it is ACTIVE",
            );
        }
        if env.contains(['/', '?', '#']) || env.chars().any(char::is_control) {
            w.err(
                &join(sec, "promote_to"),
                format!("{env:?} is not an environment name (e.g. \"production\")"),
            );
        }
    }
    if approval == Approval::BeforePromote && promote_to.is_none() {
        w.err(
            &join(sec, "approval"),
            "\"before_promote\" needs promote_to (the environment to promote to)",
        );
    }
    let deactivate_superseded = w.bool(
        &s.deactivate_superseded,
        &join(sec, "deactivate_superseded"),
        false,
    );
    if deactivate_superseded && !follow {
        w.err(
            &join(sec, "deactivate_superseded"),
            "needs follow = true: older deployments are deactivated once a newer one is live",
        );
    }
    let cfg = DeployConfig {
        model_name,
        instance_type_id: instance_type_id?,
        hf_secret_name: hf_secret_name?,
        latest_only,
        validate,
        follow,
        follow_interval,
        follow_timeout,
        approval,
        approval_deadline,
        promote_to,
        deactivate_superseded,
    };
    ok.then_some((SinkKind::BasetenDeploy(cfg), Vec::new()))
}

/// Why a header a sink's `headers` names cannot be set there: loopwatch sets it on every
/// request itself (a value there was dropped without a word), or it belongs to the body.
fn reserved_header(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        "webhook-id" | "webhook-timestamp" | "webhook-signature" => Some(
            "is set by loopwatch on every request (the Standard Webhooks signature); remove it",
        ),
        "content-type" => Some("is set from content_type; remove it and set content_type instead"),
        "content-length" | "host" | "transfer-encoding" | "connection" => {
            Some("is set by the HTTP client; remove it")
        }
        n if n.starts_with("ce-") => Some(
            "is a CloudEvents attribute, set by loopwatch with format = \"cloudevents-binary\"; remove it",
        ),
        _ => None,
    }
}

/// Render `model_name` for a sample checkpoint of each target the sink may deploy for:
/// one that renders empty (or fails) would fail every deploy.
fn model_name_renders(w: &mut Problems<'_>, model_name: &str, sec: &str, targets: &[&str]) {
    let Ok(t) = compile_template(model_name) else {
        return; // reported
    };
    for target in targets
        .iter()
        .copied()
        .chain(targets.is_empty().then_some("t"))
    {
        let problem = match t.render(&sample_body(target)) {
            Ok(r) if r.trim().is_empty() => format!(
                "{model_name:?} renders empty for a checkpoint of target {target:?}; it must name the model, e.g. \"{{{{ data.target }}}}\""
            ),
            Ok(_) => continue,
            Err(e) => format!(
                "the template fails for a sample checkpoint of target {target:?}: {}",
                one_line(&e.to_string())
            ),
        };
        w.err(&join(sec, "model_name"), problem);
        return;
    }
}

/// A standard body of a completed sampler checkpoint of `target`, for trying templates.
pub fn sample_body(target: &str) -> Value {
    serde_json::json!({
        "type": "checkpoint.completed",
        "timestamp": "2026-11-26T23:01:02.345Z",
        "data": {
            "event_id": "evt_0000000000000000000000000a",
            "target": target,
            "uri": "bt://loops:k4q95w5/sampler_weights/step-100",
            "previous_sync_status": "SYNCING",
            "sync_status": "COMPLETE",
            "first_seen_at": "2026-11-26T22:59:40.001Z",
            "sync_seconds": 82.3,
            "ready_by": "sync_status",
            "checkpoint": {
                "id": "ckpt_0a1b2c",
                "checkpoint_id": "step-100",
                "run_id": "k4q95w5",
                "target": "sampler",
                "checkpoint_type": "lora",
                "base_model": "Qwen/Qwen3-8B",
                "size_bytes": 123456789,
                "created_at": "2026-11-26T22:59:30.000Z",
                "sync_status": "COMPLETE",
            },
        },
    })
}
