//! The answers of the routes beside the listing, from the simulator's [`State`]: a
//! checkpoint's `source` and `files` (with the paging faults of [`Paging`]), `validate`
//! and `deploy`, or the [`Refusal`] the API would answer instead. The request log
//! ([`super::LOG_ENV`]) and the per-route request counts live here too.

use chrono::SecondsFormat;
use serde_json::{Map, Value, json};

use super::Route;
use super::faults::Paging;
use super::state::{Deploy, Filter, State, Stored};

/// Why the simulated API refuses a request: status, message and the `details.reason`
/// the Loops SDK reads.
#[derive(Debug)]
pub(super) struct Refusal {
    pub(super) status: u16,
    pub(super) message: String,
    pub(super) reason: &'static str,
}

impl Refusal {
    pub(super) fn new(status: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            message: message.into(),
            reason,
        }
    }
}

/// The largest `page_size` the files route accepts.
pub(super) const MAX_PAGE_SIZE: u64 = 1000;

impl State {
    /// Count a request to `route`.
    pub(super) fn count(&mut self, route: Route) {
        *self.requests_by_route.entry(route).or_default() += 1;
    }

    /// Append one line to the [`LOG_ENV`] file, when there is one. `body` is JSON text
    /// (embedded as is) or anything else (embedded as a string).
    pub(super) fn log_body(&self, route: Route, kind: &str, body: &[u8]) {
        use std::io::Write as _;
        let Some(path) = &self.log else { return };
        let body: Value = serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()));
        let line = json!({"route": route.name(), "kind": kind, "body": body});
        let mut text = line.to_string();
        text.push('\n');
        // One write per line on an O_APPEND file: lines of parallel tests never interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(error) = written {
            tracing::warn!(%error, path = %path.display(), "cannot append to the simulator's log");
        }
    }

    fn stored(&self, id: &str) -> Result<&Stored, Refusal> {
        self.checkpoints
            .get(id)
            .ok_or_else(|| Refusal::new(404, "NOT_FOUND", format!("No checkpoint with id {id}.")))
    }

    /// `LoopsCheckpointSourceResponse` of checkpoint `id`.
    pub(super) fn source(&self, id: &str) -> Result<Value, Refusal> {
        Ok(match &self.stored(id)?.volume {
            None => json!({"source": {"kind": "s3"}}),
            Some((volume_ref, path)) => {
                json!({"source": {"kind": "volume", "volume_ref": volume_ref, "path": path}})
            }
        })
    }

    /// One page of `LoopsCheckpointFilesResponse`: `page_token` is the page's index
    /// (0 first), `next_page_token` the next index or null on the last page; `paging`
    /// makes it page without end.
    pub(super) fn files_page(
        &self,
        id: &str,
        query: &str,
        paging: Option<Paging>,
    ) -> Result<Value, Refusal> {
        let (mut page_size, mut page_token) = (100u64, 0u64);
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match &*key {
                "page_size" => &mut page_size,
                "page_token" => &mut page_token,
                _ => continue,
            };
            *slot = value.parse().map_err(|_| {
                Refusal::new(422, "INVALID_REQUEST", format!("{key} must be an integer."))
            })?;
        }
        if !(1..=MAX_PAGE_SIZE).contains(&page_size) {
            return Err(Refusal::new(
                422,
                "INVALID_REQUEST",
                format!("page_size must be between 1 and {MAX_PAGE_SIZE}."),
            ));
        }
        let stored = self.stored(id)?;
        if stored.volume.is_some() {
            return Err(Refusal::new(
                400,
                "NOT_PRESIGNABLE",
                "This checkpoint's files cannot be presigned; download it from its volume.",
            ));
        }
        let mut total = stored.files.len() as u64;
        let start = page_token.saturating_mul(page_size).min(total);
        let mut end = start.saturating_add(page_size).min(total);
        let mut next = (end < total).then_some(page_token + 1);
        match paging {
            None => {}
            Some(Paging::Cycle) => next = Some(if page_token == 1 { 2 } else { 1 }),
            Some(Paging::Growing) => {
                next = Some(page_token + 1);
                total = total.max(page_token.saturating_add(2).saturating_mul(page_size));
            }
            Some(Paging::EmptyPages) => {
                end = start;
                next = Some(page_token + 1);
            }
        }
        let files: Vec<Value> = stored.files[start as usize..end as usize]
            .iter()
            .map(|f| {
                json!({
                    "url": format!(
                        "https://sim-checkpoints.s3.amazonaws.com/{id}/{}?X-Amz-Signature=simulated",
                        f.name
                    ),
                    "relative_file_name": f.name,
                    "node_rank": f.node_rank,
                    "size_bytes": f.size_bytes,
                    "last_modified": f.last_modified.to_rfc3339_opts(SecondsFormat::Millis, true),
                })
            })
            .collect();
        Ok(json!({"presigned_urls": files, "next_page_token": next, "total_count": total}))
    }

    /// The sampler checkpoint a `bt://loops:<run>/sampler_weights/<name>` path names.
    fn sampler_at(&self, path: &str) -> Result<&Stored, Refusal> {
        let Some(Filter::Path { run, target, name }) = super::routes::parse_path(path) else {
            return Err(Refusal::new(
                422,
                "INVALID_CHECKPOINT_PATH",
                "checkpoint_path must be bt://loops:<run_id>/sampler_weights/<name>.",
            ));
        };
        if target != "sampler" {
            return Err(Refusal::new(
                400,
                "NOT_A_SAMPLER_CHECKPOINT",
                "Only sampler checkpoints (sampler_weights) can be deployed.",
            ));
        }
        self.checkpoints
            .values()
            .find(|s| {
                s.field("run_id") == run
                    && s.field("target") == "sampler"
                    && s.field("checkpoint_id") == name
            })
            .ok_or_else(|| Refusal::new(404, "NOT_FOUND", format!("No checkpoint at {path}.")))
    }

    /// `POST .../validate` with a `ValidateLoopsCheckpointRequest` body.
    pub(super) fn validate(&self, body: &[u8]) -> Result<Value, Refusal> {
        let body = object(body)?;
        let path = required_str(&body, "checkpoint_path")?;
        let run_id = match body.get("run_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(run)) => Some(run.as_str()),
            Some(_) => return Err(invalid("run_id must be a string or null.")),
        };
        let stored = self.sampler_at(path)?;
        if stored.object.get("lora_config").is_none_or(Value::is_null) {
            return Err(Refusal::new(
                400,
                "UNSUPPORTED_CHECKPOINT",
                "The checkpoint has no LoRA config and cannot be loaded.",
            ));
        }
        if let Some(run) = run_id
            && self.by_run.get(run).is_none_or(|ids| ids.is_empty())
        {
            return Err(Refusal::new(404, "NOT_FOUND", format!("No run {run}.")));
        }
        Ok(json!({}))
    }

    /// `POST .../deploy` with a `DeployLoopsCheckpointRequest` body; an accepted deploy is
    /// recorded ([`SimHandle::deploys`]).
    pub(super) fn deploy(&mut self, raw: &[u8]) -> Result<Value, Refusal> {
        let body = object(raw)?;
        let ids = match body.get("checkpoint_ids") {
            Some(Value::Array(ids)) if !ids.is_empty() => ids
                .iter()
                .map(|id| id.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| invalid("checkpoint_ids must be strings."))?,
            Some(Value::Array(_)) => {
                return Err(invalid("checkpoint_ids must name at least one checkpoint."));
            }
            _ => {
                return Err(invalid(
                    "checkpoint_ids: a list of checkpoint ids is required.",
                ));
            }
        };
        let model_name = required_str(&body, "model_name")?.to_owned();
        let hf_secret_name = required_str(&body, "hf_secret_name")?.to_owned();
        let instance_type_id = match body.get("instance_type_id") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(invalid("instance_type_id: a string is required.")),
        };
        for id in &ids {
            if self.stored(id)?.field("target") != "sampler" {
                return Err(Refusal::new(
                    400,
                    "NOT_A_SAMPLER_CHECKPOINT",
                    format!("{id} is not a sampler checkpoint."),
                ));
            }
        }
        let now = self.now();
        let model_id = self.models.model(&model_name, &self.id_prefix, now);
        let deployment_id = self.models.deploy(&model_id, &self.id_prefix, false, now);
        self.deploys.push(Deploy {
            checkpoint_ids: ids,
            model_name,
            instance_type_id,
            hf_secret_name,
            model_id: model_id.clone(),
            deployment_id: deployment_id.clone(),
            body: Value::Object(body),
        });
        Ok(json!({"model_id": model_id, "deployment_id": deployment_id}))
    }
}

fn invalid(message: &str) -> Refusal {
    Refusal::new(422, "INVALID_REQUEST", message)
}

fn object(body: &[u8]) -> Result<Map<String, Value>, Refusal> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(invalid("The body must be a JSON object.")),
    }
}

/// A required, non-empty string field.
fn required_str<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, Refusal> {
    match body.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(invalid(&format!("{key}: a non-empty string is required."))),
    }
}
