//! The upstream JSON, and the only place that knows it. A listing decodes whole or not
//! at all: one bad checkpoint fails the poll, so a broken response can never be mistaken
//! for checkpoints that vanished.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::model::{Checkpoint, CheckpointTarget};

/// The listing's envelope. Each checkpoint is first taken as its raw text (a slice of the
/// body, no copy), then decoded from that text: the raw object is kept exactly as
/// received, unknown fields included, without building a `serde_json::Value` tree.
#[derive(Deserialize)]
struct WireListing<'a> {
    #[serde(borrow)]
    checkpoints: Vec<&'a RawValue>,
}

/// `LoopsCheckpointV1`. Nullable-but-required fields use `deserialize_with` so that a
/// missing key is an error while `null` is accepted.
#[derive(Deserialize)]
struct WireCheckpoint {
    id: String,
    checkpoint_id: String,
    run_id: String,
    target: WireTarget,
    checkpoint_type: String,
    size_bytes: i64,
    created_at: String,
    #[serde(deserialize_with = "Option::deserialize")]
    base_model: Option<String>,
    #[serde(deserialize_with = "Option::deserialize")]
    #[allow(dead_code)] // required by the spec; carried through in `raw`
    lora_adapter_config: Option<AnyObject>,
    #[serde(default)]
    sync_status: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireTarget {
    Sampler,
    Trainer,
}

/// A JSON object whose content is not needed here (it travels in `raw`): checked to be an
/// object, skipped without allocating.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

/// Two listed versions of one checkpoint carry the same object (spacing and key order
/// aside: the raw text is kept as received).
fn same_object(a: &Checkpoint, b: &Checkpoint) -> bool {
    let parsed = |raw: &str| serde_json::from_str::<serde_json::Value>(raw).ok();
    a.raw == b.raw || (parsed(&a.raw).is_some() && parsed(&a.raw) == parsed(&b.raw))
}

/// Decode a listing body. Errors name the checkpoint index and the field.
pub fn decode_listing(body: &[u8]) -> Result<Vec<Checkpoint>, String> {
    let listing: WireListing = serde_json::from_slice(body).map_err(|e| format!("listing: {e}"))?;
    let mut all: Vec<Checkpoint> = Vec::with_capacity(listing.checkpoints.len());
    for (i, raw) in listing.checkpoints.iter().enumerate() {
        let text = raw.get();
        let w: WireCheckpoint =
            serde_json::from_str(text).map_err(|e| format!("checkpoints[{i}]: {e}"))?;
        if w.id.is_empty() {
            return Err(format!("checkpoints[{i}]: empty id"));
        }
        all.push(Checkpoint {
            id: w.id,
            name: w.checkpoint_id,
            run_id: w.run_id,
            target: match w.target {
                WireTarget::Sampler => CheckpointTarget::Sampler,
                WireTarget::Trainer => CheckpointTarget::Trainer,
            },
            checkpoint_type: w.checkpoint_type,
            size_bytes: w.size_bytes,
            created_at: w.created_at,
            base_model: w.base_model,
            sync_status: w.sync_status,
            raw: text.to_owned(),
        });
    }
    // The same object twice is harmless; two versions of one id is a broken listing.
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(all.len());
    let mut repeats = Vec::new();
    for (i, c) in all.iter().enumerate() {
        match first.get(c.id.as_str()) {
            Some(&j) if same_object(&all[j], c) => repeats.push(i),
            Some(_) => {
                return Err(format!(
                    "checkpoints[{i}]: id {:?} appears twice with different content",
                    c.id
                ));
            }
            None => {
                first.insert(&c.id, i);
            }
        }
    }
    drop(first);
    for i in repeats.into_iter().rev() {
        all.remove(i);
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"{"checkpoints":[{"checkpoint_id":"step-100","created_at":"2026-11-26T22:59:40.001Z",
        "checkpoint_type":"lora","base_model":"Qwen/Qwen3-8B","lora_adapter_config":{"r":16},
        "size_bytes":123,"sync_status":"SYNCING","id":"ck1","run_id":"k4q95w5","target":"sampler",
        "brand_new_field":{"x":1}}]}"#;

    #[test]
    fn decodes_and_keeps_unknown_fields() {
        let l = decode_listing(ONE.as_bytes()).unwrap();
        assert_eq!(l.len(), 1);
        let c = &l[0];
        assert_eq!(
            (c.id.as_str(), c.name.as_str(), c.target),
            ("ck1", "step-100", CheckpointTarget::Sampler)
        );
        assert_eq!(c.sync_status.as_deref(), Some("SYNCING"));
        assert!(c.raw.contains("brand_new_field"));
        assert_eq!(c.uri(), "bt://loops:k4q95w5/sampler_weights/step-100");
    }

    #[test]
    fn sync_status_may_be_absent_or_null() {
        let l = decode_listing(ONE.replace(r#""sync_status":"SYNCING","#, "").as_bytes()).unwrap();
        assert_eq!(l[0].sync_status, None);
        let l = decode_listing(ONE.replace(r#""SYNCING""#, "null").as_bytes()).unwrap();
        assert_eq!(l[0].sync_status, None);
    }

    #[test]
    fn missing_required_fields_fail_the_whole_listing() {
        for field in [
            r#""id":"ck1","#,
            r#""checkpoint_id":"step-100","#,
            r#""run_id":"k4q95w5","#,
            r#""size_bytes":123,"#,
            r#""base_model":"Qwen/Qwen3-8B","#,
            r#""lora_adapter_config":{"r":16},"#,
        ] {
            let body = ONE.replace(field, "");
            assert_ne!(body, ONE, "{field}");
            let e = decode_listing(body.as_bytes()).unwrap_err();
            assert!(
                e.contains("checkpoints[0]") && e.contains("missing field"),
                "{field}: {e}"
            );
        }
        let nullable = ONE
            .replace(r#""Qwen/Qwen3-8B""#, "null")
            .replace(r#"{"r":16}"#, "null");
        assert!(decode_listing(nullable.as_bytes()).is_ok());
    }

    #[test]
    fn wrong_types_and_garbage_fail() {
        assert!(decode_listing(ONE.replace("123", "\"123\"").as_bytes()).is_err());
        assert!(decode_listing(ONE.replace(r#""sampler""#, r#""critic""#).as_bytes()).is_err());
        assert!(decode_listing(b"<html>bad gateway</html>").is_err());
        assert!(decode_listing(b"[]").is_err());
        assert!(decode_listing(&ONE.as_bytes()[..ONE.len() / 2]).is_err());
        assert_eq!(decode_listing(br#"{"checkpoints":[]}"#).unwrap().len(), 0);
    }

    #[test]
    fn duplicate_ids_collapse_when_identical_and_fail_when_not() {
        let obj = &ONE[r#"{"checkpoints":["#.len()..ONE.len() - 2];
        let twice = format!(r#"{{"checkpoints":[{obj},{obj}]}}"#);
        assert_eq!(decode_listing(twice.as_bytes()).unwrap().len(), 1);
        let other = obj.replace("SYNCING", "COMPLETE");
        let conflict = format!(r#"{{"checkpoints":[{obj},{other}]}}"#);
        assert!(
            decode_listing(conflict.as_bytes())
                .unwrap_err()
                .contains("twice")
        );
    }
}
