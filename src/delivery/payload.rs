//! Request bodies in each `format`: the stored `standard` body as is, CloudEvents
//! (structured or binary mode), or a MiniJinja template rendered from the same fields.
//! Templates see only the event, never a secret.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::config::PayloadFormat;
use crate::store::StoredEvent;
use crate::template::Template;

/// What goes on the wire for one attempt (before signing).
#[derive(Clone, Debug, PartialEq)]
pub struct Payload {
    pub content_type: String,
    /// Extra headers (`ce-*` in binary mode).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What CloudEvents takes of a stored `standard` body: `data` as its stored text (the
/// checkpoint as received: big integers and `1.10` stay as they are), and its time.
#[derive(Deserialize)]
struct Standard<'a> {
    timestamp: Option<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

/// A structured-mode CloudEvent (`application/cloudevents+json`).
#[derive(Serialize)]
struct Structured<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: String,
    source: String,
    /// None for an unknown checkpoint target: no subject, rather than a null one.
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: Option<String>,
    datacontenttype: &'static str,
    data: &'a RawValue,
}

/// Build the payload of `event` in `format`.
pub fn build(
    event: &StoredEvent,
    format: PayloadFormat,
    template: Option<&Template>,
    content_type: &str,
) -> Result<Payload, String> {
    let standard = || -> Result<Value, String> {
        // Any depth the listing accepted (crate::json), past serde_json's 128 levels.
        crate::json::parse(&event.body).map_err(|e| format!("stored event body is not JSON: {e}"))
    };
    match format {
        PayloadFormat::Standard => Ok(Payload {
            content_type: content_type.to_string(),
            headers: Vec::new(),
            body: event.body.clone().into_bytes(),
        }),
        PayloadFormat::CloudEvents => {
            let s = stored(event)?;
            let ce = Structured {
                specversion: "1.0",
                id: &event.id,
                kind: format!("loopwatch.{}", event.kind),
                source: format!("bt://loops:{}", event.run_id),
                subject: event.uri(),
                time: s.timestamp,
                datacontenttype: "application/json",
                data: s.data,
            };
            Ok(Payload {
                content_type: content_type.to_string(),
                headers: Vec::new(),
                body: serde_json::to_vec(&ce).map_err(|e| e.to_string())?,
            })
        }
        PayloadFormat::CloudEventsBinary => {
            let s = stored(event)?;
            Ok(Payload {
                content_type: content_type.to_string(),
                headers: [
                    ("ce-specversion", Some("1.0".to_string())),
                    ("ce-id", Some(event.id.clone())),
                    ("ce-type", Some(format!("loopwatch.{}", event.kind))),
                    ("ce-source", Some(format!("bt://loops:{}", event.run_id))),
                    ("ce-subject", event.uri()),
                    ("ce-time", Some(s.timestamp.unwrap_or_default())),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), ce_header_value(&v?))))
                .collect(),
                body: s.data.get().as_bytes().to_vec(),
            })
        }
        PayloadFormat::Template => {
            let t = template.ok_or("format = \"template\" without a template")?;
            let body = t
                .render(&standard()?)
                .map_err(|e| format!("the template does not render: {e}"))?;
            Ok(Payload {
                content_type: content_type.to_string(),
                headers: Vec::new(),
                body: body.into_bytes(),
            })
        }
    }
}

/// The parts of `event`'s stored body that CloudEvents carries.
fn stored(event: &StoredEvent) -> Result<Standard<'_>, String> {
    crate::json::parse_as(&event.body).map_err(|e| format!("stored event body is not JSON: {e}"))
}

/// A CloudEvents attribute as an HTTP header value (HTTP binding 1.0, 3.1.3.2): space,
/// `"`, `%` and everything outside printable ASCII are percent-encoded, so a checkpoint
/// name in any script survives as the receiver's SDK decodes it.
fn ce_header_value(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::compile_template;
    use chrono::Utc;

    fn event() -> StoredEvent {
        StoredEvent {
            seq: 1,
            id: "evt_1".into(),
            kind: "checkpoint.completed".into(),
            target: "qwen".into(),
            checkpoint_id: "ck1".into(),
            checkpoint_name: "step-100".into(),
            run_id: "k4".into(),
            checkpoint_target: "sampler".into(),
            detected_at: Utc::now(),
            body: r#"{"type":"checkpoint.completed","timestamp":"2026-11-26T23:01:02.345Z","data":{"event_id":"evt_1","uri":"bt://loops:k4/sampler_weights/step-100"}}"#.into(),
        }
    }

    #[test]
    fn standard_is_the_stored_body() {
        let p = build(&event(), PayloadFormat::Standard, None, "application/json").unwrap();
        assert_eq!(p.body, event().body.into_bytes());
    }

    #[test]
    fn cloudevents_structured_and_binary() {
        let p = build(
            &event(),
            PayloadFormat::CloudEvents,
            None,
            "application/cloudevents+json",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["type"], "loopwatch.checkpoint.completed");
        assert_eq!(v["source"], "bt://loops:k4");
        assert_eq!(v["subject"], "bt://loops:k4/sampler_weights/step-100");
        assert_eq!(v["data"]["event_id"], "evt_1");
        let p = build(
            &event(),
            PayloadFormat::CloudEventsBinary,
            None,
            "application/json",
        )
        .unwrap();
        assert_eq!(p.content_type, "application/json");
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "evt_1"),
            ("ce-type", "loopwatch.checkpoint.completed"),
            ("ce-source", "bt://loops:k4"),
            ("ce-subject", "bt://loops:k4/sampler_weights/step-100"),
            ("ce-time", "2026-11-26T23:01:02.345Z"),
        ] {
            assert!(p.headers.contains(&(k.into(), v.into())), "{k}: {p:?}");
        }
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["event_id"], "evt_1");
    }

    /// A checkpoint with a field nested ~126 levels deep passed the listing, then every
    /// format that re-reads the stored body failed on serde_json's 128-level limit:
    /// dead. Every format now delivers what the listing accepts (crate::json::MAX_DEPTH).
    #[test]
    fn a_body_nested_past_serde_jsons_limit_is_delivered_in_every_format() {
        let mut e = event();
        let levels = crate::json::MAX_DEPTH - 1;
        let deep = format!("{}1{}", "[".repeat(levels), "]".repeat(levels));
        e.body = format!(
            r#"{{"type":"checkpoint.completed","timestamp":"t","data":{{"checkpoint":{{"x":{deep}}}}}}}"#
        );
        let t = compile_template("{{ data.checkpoint | tojson }}").unwrap();
        for format in [
            PayloadFormat::Standard,
            PayloadFormat::CloudEvents,
            PayloadFormat::CloudEventsBinary,
            PayloadFormat::Template,
        ] {
            let p = build(&e, format, Some(&t), "application/json").unwrap();
            let text = String::from_utf8(p.body).unwrap();
            assert!(text.contains(&deep), "{format:?}");
        }
    }

    /// `data` goes out as stored: the checkpoint's fields exactly as the API sent them,
    /// as in the standard body (a re-encoded tree turned the integer into 1.2345e29).
    #[test]
    fn cloudevents_carry_the_checkpoint_as_received() {
        let mut e = event();
        let checkpoint =
            r#"{"id":"ck1","big":123456789012345678901234567890,"f":1.10,"s":"\u00e9"}"#;
        e.body = format!(
            r#"{{"type":"checkpoint.completed","timestamp":"t","data":{{"event_id":"evt_1","checkpoint":{checkpoint}}}}}"#
        );
        for format in [PayloadFormat::CloudEvents, PayloadFormat::CloudEventsBinary] {
            let p = build(&e, format, None, "application/json").unwrap();
            let text = String::from_utf8(p.body).unwrap();
            assert!(text.contains(checkpoint), "{format:?}: {text}");
        }
    }

    #[test]
    fn binary_mode_percent_encodes_header_values() {
        assert_eq!(
            ce_header_value("bt://loops:k4/weights/step-1"),
            "bt://loops:k4/weights/step-1"
        );
        assert_eq!(ce_header_value("a b\"c%d\u{e9}"), "a%20b%22c%25d%C3%A9");
        let mut e = event();
        e.checkpoint_name = "étape 1".into();
        let p = build(
            &e,
            PayloadFormat::CloudEventsBinary,
            None,
            "application/json",
        )
        .unwrap();
        let subject = &p.headers.iter().find(|(k, _)| k == "ce-subject").unwrap().1;
        assert_eq!(subject, "bt://loops:k4/sampler_weights/%C3%A9tape%201");
        assert!(reqwest::header::HeaderValue::from_str(subject).is_ok());
    }

    #[test]
    fn templates_render_and_escape_with_tojson() {
        let t = compile_template(r#"{"text": {{ ("done: " ~ data.uri) | tojson }}}"#).unwrap();
        let p = build(
            &event(),
            PayloadFormat::Template,
            Some(&t),
            "application/json",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["text"], "done: bt://loops:k4/sampler_weights/step-100");
        assert!(compile_template("{{ broken").is_err());
    }

    /// A sink holding every kind of secret: a template that dumps its whole context
    /// (`debug()`) must show the event and nothing else.
    #[test]
    fn templates_never_see_secrets() {
        let signing_key = "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("signing.key");
        std::fs::write(&key_file, format!("{signing_key}\n")).unwrap();
        let config = format!(
            r#"
[[targets]]
name = "qwen"
run_id = "k4"
[[sinks]]
name = "dump"
url = "https://hooks.example/x?token=url-token-6d1"
secret_env = "CUR"
previous_secret_env = "OLD"
signing_key_file = "{}"
headers = {{ Authorization = "Bearer ${{TOKEN}}" }}
format = "template"
template = "{{{{ debug() }}}} {{{{ secret }}}}{{{{ headers }}}}{{{{ env }}}}{{{{ config }}}}"
"#,
            key_file.display()
        );
        let env = crate::config::Environment::from_pairs([
            ("BASETEN_API_KEY", "api-key-9a2"),
            ("CUR", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            ("OLD", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            ("TOKEN", "header-token-3c7"),
        ]);
        let cfg =
            crate::config::load_str(&config, ::config::FileFormat::Toml, "t.toml", &env).unwrap();
        let sink =
            crate::delivery::Sink::new(cfg.sinks[0].clone(), crate::delivery::webhook::client())
                .unwrap();
        let debug = format!("{cfg:?}");
        for secret in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "C2FVsBQIhrscChlQIMV",
            "6Xb/dCcHpPea21PS1N9VY",
            "header-token-3c7",
        ] {
            assert!(!debug.contains(secret), "{secret} in Debug: {debug}");
        }
        let body = String::from_utf8(sink.payload(&event()).unwrap().body).unwrap();
        assert!(
            body.contains("evt_1") && body.contains("step-100"),
            "{body}"
        );
        for secret in [
            "api-key-9a2",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "C2FVsBQIhrscChlQIMV",
            "6Xb/dCcHpPea21PS1N9VY",
            "header-token-3c7",
            "url-token-6d1",
            "hooks.example",
            "Authorization",
        ] {
            assert!(!body.contains(secret), "{secret} leaked into {body}");
        }
        assert!(body.contains("ctx:"), "debug() dumps the context: {body}");
        let t = compile_template(
            "{{ [secret, secret_env, previous_secret, signing_key, headers, url, env, config, sink] \
             | select('defined') | list | length }}",
        )
        .unwrap();
        let p = build(&event(), PayloadFormat::Template, Some(&t), "").unwrap();
        assert_eq!(p.body, b"0");
        let control =
            compile_template("{{ [data, type, nope] | select('defined') | list | length }}")
                .unwrap();
        let p = build(&event(), PayloadFormat::Template, Some(&control), "").unwrap();
        assert_eq!(p.body, b"2");
    }
}
