//! The upstream JSON, and the only place that knows it: the listing, the `source`,
//! `files` and `deploy` answers, and the `validate` and `deploy` request bodies (shapes
//! of the pydantic models in Baseten's `baseten` package, `managementapi._models`).
//! A listing decodes whole or not at all: one bad checkpoint fails the poll, so a broken
//! response can never be mistaken for checkpoints that vanished.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{CheckpointFile, FilesPage, Source};
use crate::model::{Checkpoint, CheckpointTarget, DeployRequest, Deployment};

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
    /// `sampler | trainer | <any string>`: an unknown value passes through.
    target: String,
    checkpoint_type: String,
    #[serde(deserialize_with = "lax_int")]
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

/// An `int` as Baseten's pydantic models validate it in their default (lax) mode, so
/// nothing the SDK accepts fails here: a JSON integer, a float with no fractional part
/// (`123.0`), a string of one (`"123"`, `" 123 "`, `"123.0"`), or a bool (0 or 1).
/// Anything else (`12.5`, `"12a"`, `null`, out of `i64` range) is an error.
fn lax_int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    d.deserialize_any(LaxInt)
}

/// [`lax_int`], with `null` as None (`next_page_token` on the last page).
fn lax_int_or_null<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct OrNull;
    impl<'de> Visitor<'de> for OrNull {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer or null")
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            lax_int(d).map(Some)
        }
    }
    d.deserialize_option(OrNull)
}

struct LaxInt;

impl<'de> Visitor<'de> for LaxInt {
    type Value = i64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer (or a whole number as a float or a string)")
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
        i64::try_from(v).map_err(|_| E::custom(format!("integer {v} out of range")))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
        // 2^63 as f64 is exact; `as` saturates, so compare before converting.
        if v.is_finite() && v.fract() == 0.0 && v >= -(2f64.powi(63)) && v < 2f64.powi(63) {
            Ok(v as i64)
        } else {
            Err(E::custom(format!("{v} is not a whole number")))
        }
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<i64, E> {
        Ok(i64::from(v))
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<i64, E> {
        let t = v.trim();
        // "123.0" and "123.00" are whole numbers too; "123." and "1e3" are not.
        let whole = match t.split_once('.') {
            Some((int, zeros)) if !zeros.is_empty() && zeros.bytes().all(|b| b == b'0') => int,
            _ => t,
        };
        whole.parse::<i64>().map_err(|_| {
            let shown: String = v.chars().take(40).collect();
            E::custom(format!("{shown:?} is not an integer"))
        })
    }
}

/// Two listed versions of one checkpoint carry the same object (spacing and key order
/// aside: the raw text is kept as received).
fn same_object(a: &Checkpoint, b: &Checkpoint) -> bool {
    let parsed = |raw: &str| crate::json::parse(raw).ok();
    a.raw == b.raw || (parsed(&a.raw).is_some() && parsed(&a.raw) == parsed(&b.raw))
}

/// Decode a listing body. Errors name the checkpoint index and the field.
pub fn decode_listing(body: &[u8]) -> Result<Vec<Checkpoint>, String> {
    let listing: WireListing = serde_json::from_slice(body).map_err(|e| format!("listing: {e}"))?;
    let mut all: Vec<Checkpoint> = Vec::with_capacity(listing.checkpoints.len());
    for (i, raw) in listing.checkpoints.iter().enumerate() {
        let text = raw.get();
        // The one depth limit of every stored body's reader (crate::json): what is
        // accepted here is delivered in every format.
        let depth = crate::json::depth(text);
        if depth > crate::json::MAX_DEPTH {
            return Err(format!(
                "checkpoints[{i}]: nested {depth} levels deep; loopwatch accepts at most {}",
                crate::json::MAX_DEPTH
            ));
        }
        let w: WireCheckpoint =
            serde_json::from_str(text).map_err(|e| format!("checkpoints[{i}]: {e}"))?;
        if w.id.is_empty() {
            return Err(format!("checkpoints[{i}]: empty id"));
        }
        // `""` included: an unknown target, kept (the SDK's `Literal[...] | str`).
        let target = CheckpointTarget::parse(&w.target);
        all.push(Checkpoint {
            id: w.id,
            name: w.checkpoint_id,
            run_id: w.run_id,
            target,
            checkpoint_type: w.checkpoint_type,
            size_bytes: w.size_bytes,
            created_at: w.created_at,
            base_model: w.base_model,
            sync_status: w.sync_status,
            // One line whatever the listing's layout (json::compact: content unchanged).
            raw: crate::json::compact(text).into_owned(),
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

/// `LoopsCheckpointSourceResponse`: `source` is an s3 or volume source by its `kind`, or
/// (the model's fallback) any object.
#[derive(Deserialize)]
struct WireSourceResponse {
    source: WireSource,
}

#[derive(Deserialize)]
struct WireSource {
    kind: String,
    #[serde(default)]
    volume_ref: Option<String>,
    #[serde(default)]
    path: Option<String>,
}

/// Decode a `source` answer. A `volume` source must carry its ref and path.
pub fn decode_source(body: &[u8]) -> Result<Source, String> {
    let w: WireSourceResponse = serde_json::from_slice(body).map_err(|e| format!("source: {e}"))?;
    Ok(match w.source.kind.as_str() {
        "s3" => Source::S3,
        "volume" => match (w.source.volume_ref, w.source.path) {
            (Some(volume_ref), Some(path)) => Source::Volume { volume_ref, path },
            _ => return Err("source: a volume source without volume_ref or path".into()),
        },
        _ => Source::Other(w.source.kind),
    })
}

/// `LoopsCheckpointFilesResponse`.
#[derive(Deserialize)]
struct WireFilesResponse {
    presigned_urls: Vec<WireFile>,
    #[serde(default, deserialize_with = "lax_int_or_null")]
    next_page_token: Option<i64>,
    #[serde(deserialize_with = "lax_int")]
    total_count: i64,
}

/// `CheckpointFile`; every field required.
#[derive(Deserialize)]
struct WireFile {
    #[allow(dead_code)] // required by the model; a credential, deliberately not kept
    url: String,
    relative_file_name: String,
    #[serde(deserialize_with = "lax_int")]
    node_rank: i64,
    #[serde(deserialize_with = "lax_int")]
    size_bytes: i64,
    last_modified: String,
}

/// Decode one page of a `files` answer.
pub fn decode_files(body: &[u8]) -> Result<FilesPage, String> {
    let w: WireFilesResponse = serde_json::from_slice(body).map_err(|e| format!("files: {e}"))?;
    Ok(FilesPage {
        files: w
            .presigned_urls
            .into_iter()
            .map(|f| CheckpointFile {
                relative_file_name: f.relative_file_name,
                node_rank: f.node_rank,
                size_bytes: f.size_bytes,
                last_modified: f.last_modified,
            })
            .collect(),
        next_page_token: w.next_page_token,
        total_count: w.total_count,
    })
}

/// `DeployLoopsCheckpointResponse`.
#[derive(Deserialize)]
struct WireDeployed {
    model_id: String,
    deployment_id: String,
}

/// Decode a `deploy` answer.
pub fn decode_deployed(body: &[u8]) -> Result<Deployment, String> {
    let w: WireDeployed = serde_json::from_slice(body).map_err(|e| format!("deploy: {e}"))?;
    Ok(Deployment {
        model_id: w.model_id,
        deployment_id: w.deployment_id,
    })
}

/// `ValidateLoopsCheckpointRequest`; `run_id` is left out when not given.
#[derive(Serialize)]
pub(super) struct WireValidateRequest<'a> {
    checkpoint_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    run_id: Option<&'a str>,
}

pub(super) fn validate_request<'a>(
    checkpoint_path: &'a str,
    run_id: Option<&'a str>,
) -> WireValidateRequest<'a> {
    WireValidateRequest {
        checkpoint_path,
        run_id,
    }
}

/// `DeployLoopsCheckpointRequest`.
#[derive(Serialize)]
pub(super) struct WireDeployRequest<'a> {
    checkpoint_ids: &'a [String],
    model_name: &'a str,
    instance_type_id: &'a str,
    hf_secret_name: &'a str,
}

pub(super) fn deploy_request(r: &DeployRequest) -> WireDeployRequest<'_> {
    WireDeployRequest {
        checkpoint_ids: &r.checkpoint_ids,
        model_name: &r.model_name,
        instance_type_id: &r.instance_type_id,
        hf_secret_name: &r.hf_secret_name,
    }
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
            (c.id.as_str(), c.name.as_str(), &c.target),
            ("ck1", "step-100", &CheckpointTarget::Sampler)
        );
        assert_eq!(c.sync_status.as_deref(), Some("SYNCING"));
        assert!(c.raw.contains("brand_new_field"));
        // Listed over several lines, kept as one: every event body is one line.
        assert!(!c.raw.contains(['\n', ' ']), "{}", c.raw);
        assert!(
            c.raw
                .starts_with(r#"{"checkpoint_id":"step-100","created_at""#)
        );
        assert_eq!(
            c.uri().as_deref(),
            Some("bt://loops:k4q95w5/sampler_weights/step-100")
        );
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

    /// What Baseten's pydantic models accept for an `int` in lax mode decodes; what they
    /// refuse fails the listing.
    #[test]
    fn integers_decode_as_laxly_as_the_sdk_reads_them() {
        let size = |v: &str| {
            decode_listing(
                ONE.replace(r#""size_bytes":123"#, &format!(r#""size_bytes":{v}"#))
                    .as_bytes(),
            )
            .map(|l| l[0].size_bytes)
        };
        for (v, want) in [
            ("123", 123),
            ("123.0", 123),
            (r#""123""#, 123),
            (r#"" 123 ""#, 123),
            (r#""123.00""#, 123),
            (r#""-4""#, -4),
            ("true", 1),
            ("false", 0),
            ("9223372036854775807", i64::MAX),
        ] {
            assert_eq!(size(v), Ok(want), "{v}");
        }
        for v in [
            "12.5",
            r#""12.5""#,
            r#""12a""#,
            r#""""#,
            r#""1e3""#,
            r#""123.""#,
            "null",
            "[1]",
            "9223372036854775808",
            "1e300",
        ] {
            let e = size(v).unwrap_err();
            assert!(e.contains("checkpoints[0]"), "{v}: {e}");
        }
    }

    #[test]
    fn wrong_types_and_garbage_fail() {
        assert!(decode_listing(ONE.replace(r#""sampler""#, "7").as_bytes()).is_err());
        assert!(decode_listing(b"<html>bad gateway</html>").is_err());
        assert!(decode_listing(b"[]").is_err());
        assert!(decode_listing(&ONE.as_bytes()[..ONE.len() / 2]).is_err());
        assert_eq!(decode_listing(br#"{"checkpoints":[]}"#).unwrap().len(), 0);
    }

    #[test]
    fn an_unknown_target_passes_through_and_never_fails_the_listing() {
        let l = decode_listing(ONE.replace(r#""sampler""#, r#""draft""#).as_bytes()).unwrap();
        assert_eq!(l[0].target, CheckpointTarget::Other("draft".into()));
        assert_eq!(l[0].uri(), None);
        assert!(l[0].raw.contains(r#""target":"draft""#));
        // The SDK's `Literal[...] | str` takes "" too: an unknown target, kept.
        let l = decode_listing(ONE.replace(r#""sampler""#, r#""""#).as_bytes()).unwrap();
        assert_eq!(l[0].target, CheckpointTarget::Other("".into()));
        assert_eq!((l[0].target.label(), l[0].uri()), ("other", None));
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

    #[test]
    fn sources_decode_by_kind() {
        assert_eq!(
            decode_source(br#"{"source":{"kind":"s3"}}"#),
            Ok(Source::S3)
        );
        assert_eq!(
            decode_source(br#"{"source":{"kind":"volume","volume_ref":"bdn:ns/v:t","path":"p"}}"#),
            Ok(Source::Volume {
                volume_ref: "bdn:ns/v:t".into(),
                path: "p".into()
            })
        );
        assert_eq!(
            decode_source(br#"{"source":{"kind":"gcs","bucket":"b"}}"#),
            Ok(Source::Other("gcs".into()))
        );
        assert!(decode_source(br#"{"source":{"kind":"volume"}}"#).is_err());
        assert!(decode_source(br#"{"source":{}}"#).is_err());
        assert!(decode_source(b"[]").is_err());
    }

    #[test]
    fn files_pages_decode_and_require_every_field() {
        let page =
            br#"{"presigned_urls":[{"url":"https://s3/x?sig","relative_file_name":"a.safetensors",
            "node_rank":0,"size_bytes":10,"last_modified":"2026-11-26T00:00:00Z","extra":1}],
            "next_page_token":1,"total_count":2}"#;
        let p = decode_files(page).unwrap();
        assert_eq!(p.files.len(), 1);
        assert_eq!((p.next_page_token, p.total_count), (Some(1), 2));
        assert_eq!(p.files[0].size_bytes, 10);
        let last = br#"{"presigned_urls":[],"total_count":0}"#;
        assert_eq!(decode_files(last).unwrap().next_page_token, None);
        let text = std::str::from_utf8(page).unwrap();
        for field in [r#""node_rank":0,"#, r#""url":"https://s3/x?sig","#] {
            assert!(
                decode_files(text.replace(field, "").as_bytes()).is_err(),
                "{field}"
            );
        }
        // Lax integers, as the SDK reads them: next_page_token and the counts too.
        let lax = text
            .replace(r#""next_page_token":1"#, r#""next_page_token":"1""#)
            .replace(r#""total_count":2"#, r#""total_count":2.0"#)
            .replace(r#""node_rank":0"#, r#""node_rank":"0""#)
            .replace(r#""size_bytes":10"#, r#""size_bytes":10.0"#);
        let p = decode_files(lax.as_bytes()).unwrap();
        assert_eq!((p.next_page_token, p.total_count), (Some(1), 2));
        assert_eq!((p.files[0].node_rank, p.files[0].size_bytes), (0, 10));
        let null = text.replace(r#""next_page_token":1"#, r#""next_page_token":null"#);
        assert_eq!(decode_files(null.as_bytes()).unwrap().next_page_token, None);
        for bad in [r#""1.5""#, "1.5", r#""next""#, "[1]"] {
            let body = text.replace(
                r#""next_page_token":1"#,
                &format!(r#""next_page_token":{bad}"#),
            );
            assert!(decode_files(body.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn deploy_answers_and_requests() {
        let d = decode_deployed(br#"{"model_id":"m1","deployment_id":"d1"}"#).unwrap();
        assert_eq!(
            (d.model_id.as_str(), d.deployment_id.as_str()),
            ("m1", "d1")
        );
        assert!(decode_deployed(br#"{"model_id":"m1"}"#).is_err());
        let r = DeployRequest {
            checkpoint_ids: vec!["ck1".into()],
            model_name: "m".into(),
            instance_type_id: "H100".into(),
            hf_secret_name: "hf".into(),
        };
        assert_eq!(
            serde_json::to_value(deploy_request(&r)).unwrap(),
            serde_json::json!({"checkpoint_ids":["ck1"],"model_name":"m","instance_type_id":"H100","hf_secret_name":"hf"})
        );
        assert_eq!(
            serde_json::to_string(&validate_request("bt://loops:r/sampler_weights/s", None))
                .unwrap(),
            r#"{"checkpoint_path":"bt://loops:r/sampler_weights/s"}"#
        );
    }
}
