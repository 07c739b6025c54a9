//! `log.format = "json"`: one flat JSON object per line, as log pipelines (Loki, Vector,
//! Elasticsearch) index them: `timestamp`, `level`, `module` (the code that logged),
//! `message`, then the event's own fields beside them. tracing-subscriber's JSON layout
//! put the fields under `"fields"` next to a `"target"` of its own (the module path),
//! which collided with loopwatch's `target` field (the configured target's name) as soon
//! as a pipeline flattened the object. A field named like one of the four keys above is
//! written as `field.<name>`, so no key is ever written twice.
//!
//! Imports nothing else of the crate. JSON escapes control characters by itself.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The keys every line has; an event field of the same name is renamed `field.<name>`.
const RESERVED: [&str; 4] = ["timestamp", "level", "module", "message"];

/// The event formatter: `tracing_subscriber::fmt().event_format(JsonLines)`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("module".into(), meta.target().into());
        if let Some(m) = fields.message {
            line.insert("message".into(), m);
        }
        line.extend(fields.rest);
        let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

/// An event's fields: the message apart, the others by name (renamed when reserved).
#[derive(Default)]
struct Fields {
    message: Option<Value>,
    rest: Map<String, Value>,
}

impl Fields {
    fn put(&mut self, field: &Field, value: Value) {
        let name = field.name();
        if name == "message" {
            self.message = Some(value);
            return;
        }
        if name.starts_with("log.") {
            return; // the `log` crate's bridge metadata
        }
        let name = name.strip_prefix("r#").unwrap_or(name);
        let key = if RESERVED.contains(&name) {
            format!("field.{name}")
        } else {
            name.to_string()
        };
        self.rest.insert(key, value);
    }
}

impl Visit for Fields {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The regression: `"target":"loopwatch::poller"` and `"fields":{"target":"t1"}`
    /// became one key when a pipeline flattened the line.
    #[test]
    fn a_target_field_does_not_collide_with_the_module_when_flattened() {
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || buf.clone())
            .finish();
        let name = "step-1\n\x1b[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target = "t1", checkpoint = %name, attempt = 3, level = "x", "poll failed: {}", 503);
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        let o = v.as_object().unwrap();
        assert_eq!(o["target"], "t1", "{text}");
        assert_eq!(o["module"], module_path!(), "{text}");
        assert_eq!(o["level"], "WARN");
        assert_eq!(o["field.level"], "x");
        assert_eq!(o["message"], "poll failed: 503");
        assert_eq!(o["checkpoint"], name);
        assert_eq!(o["attempt"], 3);
        assert!(!o.contains_key("fields"), "{text}");
        assert!(
            chrono::DateTime::parse_from_rfc3339(o["timestamp"].as_str().unwrap()).is_ok(),
            "{text}"
        );
    }
}
