//! The events of a deploy pipeline (`checkpoint.deployed`, `.awaiting_approval`,
//! `.deployment_active`, `.deployment_failed`, `.promoted`): each derived from the
//! completed event it follows, its id from that event's, the sink and the kind, its `data`
//! the completed event's (fields in their order, as stored) plus `deployment`.

use serde::Serialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde_json::value::RawValue;

use super::deploy::{Deployed, DeploymentData};
use crate::model::{EventType, lifecycle_event_id, rfc3339};
use crate::store::StoredEvent;

/// The `checkpoint.deployed` event `sink` announces for the completed event `completed`.
pub fn deployed_event(
    completed: &StoredEvent,
    sink: &str,
    d: &Deployed,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredEvent, String> {
    deployed_event_by(completed, sink, d, None, now)
}

/// [`deployed_event`] of a deploy `approved_by` someone.
pub fn deployed_event_by(
    completed: &StoredEvent,
    sink: &str,
    d: &Deployed,
    approved_by: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredEvent, String> {
    let data = DeploymentData {
        approved_by,
        ..DeploymentData::deployed(sink, d)
    };
    lifecycle_event(completed, EventType::Deployed, &data, now)
}

/// A deploy lifecycle event of `kind` for the completed event `completed`: its id
/// derived from the completed event's, the sink and the kind, its `data` the completed
/// event's plus `deployment`, fields in the same order.
pub fn lifecycle_event(
    completed: &StoredEvent,
    kind: EventType,
    deployment: &DeploymentData,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredEvent, String> {
    lifecycle_event_with(completed, kind, deployment, Vec::new(), now)
}

/// [`lifecycle_event`] with `extra` members of `data` after `deployment` (an approval's
/// commands and deadline).
pub fn lifecycle_event_with(
    completed: &StoredEvent,
    kind: EventType,
    deployment: &DeploymentData,
    extra: Vec<(&str, serde_json::Value)>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<StoredEvent, String> {
    let id = lifecycle_event_id(&completed.id, &deployment.sink, kind);
    let old: Body = serde_json::from_str(&completed.body)
        .map_err(|e| format!("stored event body is not as written: {e}"))?;
    let deployment = serde_json::to_value(deployment).expect("plain fields serialize");
    let mut data: Vec<(String, Box<RawValue>)> = old
        .data
        .0
        .into_iter()
        .filter(|(k, _)| k != "deployment")
        .collect();
    let raw = |v: &serde_json::Value| RawValue::from_string(v.to_string()).expect("valid JSON");
    match data.iter_mut().find(|(k, _)| k == "event_id") {
        Some((_, v)) => *v = raw(&serde_json::Value::String(id.clone())),
        None => data.insert(0, ("event_id".into(), raw(&id.clone().into()))),
    }
    data.push(("deployment".into(), raw(&deployment)));
    for (k, v) in extra {
        data.retain(|(have, _)| have != k);
        data.push((k.to_string(), raw(&v)));
    }
    let body = serde_json::to_string(&OutBody {
        kind: kind.as_str(),
        timestamp: rfc3339(now),
        data: Ordered(data),
    })
    .map_err(|e| e.to_string())?;
    Ok(StoredEvent {
        seq: 0,
        id,
        kind: kind.as_str().into(),
        target: completed.target.clone(),
        checkpoint_id: completed.checkpoint_id.clone(),
        checkpoint_name: completed.checkpoint_name.clone(),
        run_id: completed.run_id.clone(),
        checkpoint_target: completed.checkpoint_target.clone(),
        detected_at: now,
        body,
    })
}

/// The checkpoint's `created_at` as the upstream wrote it, from a stored standard body.
pub fn checkpoint_created_at_text(event: &StoredEvent) -> Option<String> {
    let v = crate::json::parse(&event.body).ok()?;
    v["data"]["checkpoint"]["created_at"]
        .as_str()
        .map(str::to_string)
}

/// The time a stored standard body's checkpoint is ordered by for `latest_only`: its
/// `created_at`, or its first sight when `created_at` lies more than a day past it
/// ([`crate::model::ordering_time`]).
pub fn checkpoint_created_at(event: &StoredEvent) -> Option<chrono::DateTime<chrono::Utc>> {
    let v = crate::json::parse(&event.body).ok()?;
    let created = crate::model::parse_created_at(v["data"]["checkpoint"]["created_at"].as_str()?)?;
    let seen = (v["data"]["first_seen_at"].as_str())
        .and_then(crate::model::parse_created_at)
        .unwrap_or(event.detected_at);
    Some(crate::model::ordering_time(created, seen))
}

#[derive(serde::Deserialize)]
struct Body {
    data: Ordered,
}

#[derive(Serialize)]
struct OutBody {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: String,
    data: Ordered,
}

/// A JSON object's members in their order (serde_json's map sorts them).
struct Ordered(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Ordered {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}
