//! The answer of `GET /api/v1/status` (and what the HTML page renders): field names are
//! a contract, documented in docs/status.md; a field may be added, none renamed.
//! Times are RFC 3339 UTC, ages and durations in seconds or milliseconds as named.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Facts, TargetFacts, clean, leases, shell_word};
use crate::config::Invocation;
use crate::health::PollSeen;
use crate::store::inspect::{
    AttemptLine, CheckpointCounts, CheckpointLine, DeliveryLine, EventLine,
};

#[derive(Clone, Debug, Serialize)]
pub struct StatusReport {
    pub version: &'static str,
    pub generated_at: DateTime<Utc>,
    pub replica: ReplicaInfo,
    /// The replicas sharing a PostgreSQL store (empty on SQLite).
    pub replicas: Vec<ReplicaItem>,
    pub summary: Summary,
    pub targets: TargetPage,
    pub sinks: Vec<SinkItem>,
    /// Each sink's newest dead deliveries (at most 10 each), newest first.
    pub dead_deliveries: Vec<DeliveryItem>,
    /// The newest 50 events, newest first.
    pub events: Vec<EventItem>,
    /// The deploy pipelines of the `baseten_deploy` sinks: every open one (waiting for
    /// approval, or with a step left), then the newest 50 settled ones; each group newest
    /// first.
    pub deploys: Vec<DeployItem>,
    /// Open pipelines not in `deploys`: past the bound of 1,000 (0 in practice).
    pub open_deploys_not_listed: i64,
}

/// One deploy pipeline (docs/events.md, "Deploys").
#[derive(Clone, Debug, Serialize)]
pub struct DeployItem {
    /// Its delivery's id: what `deliveries approve` takes.
    pub delivery_id: i64,
    pub sink: String,
    pub target: String,
    pub run_id: String,
    pub checkpoint_id: String,
    pub checkpoint_name: String,
    pub uri: Option<String>,
    /// `awaiting_approval`, `deploying`, `following`, `deployed`, `active`, `promoted`,
    /// `failed`, `rejected`, `expired`, `superseded` or `unknown`.
    pub stage: &'static str,
    pub model_name: Option<String>,
    pub model_id: Option<String>,
    pub deployment_id: Option<String>,
    /// The deployment's last status read (`BUILDING`, `ACTIVE`, ..., `NOT_FOUND`, `TIMEOUT`).
    pub deployment_status: Option<String>,
    pub environment: Option<String>,
    pub reconciled: bool,
    pub decided_by: Option<String>,
    pub completed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub error: Option<String>,
    /// While it waits for a person: the command that lets it go on.
    pub approve_command: Option<String>,
}

fn deploy_item(d: &crate::store::DeployRow, secrets: &[String], how: &Invocation) -> DeployItem {
    let c = |s: &Option<String>| s.as_deref().map(|v| clean(v, secrets));
    DeployItem {
        delivery_id: d.delivery_id,
        sink: d.sink.clone(),
        target: clean(&d.target, secrets),
        run_id: clean(&d.run_id, secrets),
        checkpoint_id: clean(&d.checkpoint_id, secrets),
        checkpoint_name: clean(&d.checkpoint_name, secrets),
        uri: crate::model::checkpoint_uri(
            &d.run_id,
            &crate::model::CheckpointTarget::Sampler,
            &d.checkpoint_name,
        )
        .map(|u| clean(&u, secrets)),
        stage: d.stage.as_str(),
        model_name: c(&d.model_name),
        model_id: c(&d.model_id),
        deployment_id: c(&d.deployment_id),
        deployment_status: c(&d.deployment_status),
        environment: c(&d.environment),
        reconciled: d.reconciled,
        decided_by: c(&d.decided_by),
        completed_at: d.completed_at,
        updated_at: d.updated_at,
        error: c(&d.error),
        // The line `checkpoint.awaiting_approval` carries, while the pipeline waits.
        approve_command: (d.stage == crate::store::DeployStage::AwaitingApproval)
            .then(|| crate::store::deploys::approve_command(how, d.delivery_id)),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplicaInfo {
    /// This process's `store.replica_id`.
    pub id: String,
    /// `sqlite` or `postgres`.
    pub store: &'static str,
    /// How many of the configured targets this process polls now.
    pub owned_targets: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ReplicaItem {
    pub id: String,
    pub heartbeat_age_seconds: f64,
    pub started_at: DateTime<Utc>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub configured_targets: usize,
    pub stored_targets: i64,
    /// Targets this process polls whose last poll failed.
    pub failing_targets: usize,
    pub pending_deliveries: i64,
    pub dead_deliveries: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetPage {
    /// Configured targets matching `q` (all of them without it).
    pub total: usize,
    pub offset: usize,
    pub limit: usize,
    /// Failing (here) first, then by name.
    pub items: Vec<TargetItem>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetItem {
    pub name: String,
    /// As configured: `run_id=...`, `base_model=...` or `checkpoint_path=...`.
    pub filter: String,
    /// This process polls it now.
    pub owned_here: bool,
    /// Who holds its lease (PostgreSQL); null on SQLite (the one daemon polls it).
    pub owner: Option<String>,
    /// Its first successful listing; null until then.
    pub baselined_at: Option<DateTime<Utc>>,
    pub poll: PollItem,
    pub checkpoints: CheckpointCounts,
    pub newest_completed: Option<CheckpointItem>,
    /// The path of its detail page.
    pub detail: String,
}

/// What this process saw of a target's polls; all null where it never polled it (another
/// replica does).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PollItem {
    pub seen_here: bool,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_success_age_seconds: Option<f64>,
    pub failing: Option<bool>,
    /// Failed polls in a row.
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointItem {
    pub id: String,
    pub name: String,
    pub run_id: String,
    pub checkpoint_target: String,
    pub sync_status: Option<String>,
    /// `complete`, `syncing`, `pending`, `stalled`, `deleted`, or `other`.
    pub state: &'static str,
    pub created_at: String,
    pub first_seen_at: DateTime<Utc>,
    pub uri: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SinkItem {
    pub name: String,
    /// `webhook`, `exec` or `baseten_deploy`; `removed` for a sink no longer configured
    /// whose deliveries are still in the store.
    pub kind: &'static str,
    /// A webhook's scheme, host and port; an exec's program; never a path or a secret.
    pub destination: String,
    pub pending: i64,
    pub dead: i64,
    pub oldest_pending_at: Option<DateTime<Utc>>,
    pub oldest_pending_age_seconds: Option<f64>,
    pub last_error: Option<AttemptItem>,
    /// The command that re-queues its dead deliveries (every sink has one, with or
    /// without dead deliveries now).
    pub replay_command: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeliveryItem {
    pub id: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub checkpoint_name: String,
    pub uri: Option<String>,
    pub sink: String,
    /// `pending`, `delivered`, `dead` or `superseded`.
    pub status: &'static str,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// For a dead delivery, the command that re-queues it.
    pub replay_command: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AttemptItem {
    pub delivery_id: i64,
    pub attempt: i64,
    pub at: DateTime<Utc>,
    pub status: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `delivered`, `retry` or `dead`.
    pub outcome: String,
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventItem {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub target: String,
    pub checkpoint_id: String,
    pub checkpoint_name: String,
    pub checkpoint_target: String,
    pub uri: Option<String>,
    pub detected_at: DateTime<Utc>,
}

/// The answer of `GET /api/v1/targets/{name}` (what `/targets/NAME` renders).
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub version: &'static str,
    pub generated_at: DateTime<Utc>,
    pub name: String,
    /// None when the target is no longer configured (its stored state is kept).
    pub filter: Option<String>,
    pub configured: bool,
    pub owned_here: bool,
    pub owner: Option<String>,
    pub baselined_at: Option<DateTime<Utc>>,
    pub poll: PollItem,
    pub checkpoints: CheckpointPage,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointPage {
    pub total: i64,
    pub offset: i64,
    pub limit: i64,
    /// Newest (by `created_at`) first.
    pub items: Vec<CheckpointHistory>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointHistory {
    #[serde(flatten)]
    pub checkpoint: CheckpointItem,
    /// Its events, newest first.
    pub events: Vec<EventHistory>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventHistory {
    #[serde(flatten)]
    pub event: EventItem,
    pub deliveries: Vec<DeliveryHistory>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DeliveryHistory {
    #[serde(flatten)]
    pub delivery: DeliveryItem,
    /// Its logged attempts (the newest 20), oldest first (`attempts` is their count
    /// since it was last queued).
    pub attempt_log: Vec<AttemptItem>,
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    secs((now - t).num_milliseconds()).max(0.0)
}

fn poll_item(now: DateTime<Utc>, seen: Option<&PollSeen>, secrets: &[String]) -> PollItem {
    let Some(p) = seen else {
        return PollItem::default();
    };
    let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap_or_default();
    PollItem {
        seen_here: true,
        last_success_at: p.last_success_ms.map(at),
        last_success_age_seconds: p.last_success_ms.map(|ms| age(now, at(ms))),
        failing: Some(p.failures > 0),
        failures: p.failures,
        last_error: p.last_error.as_ref().map(|(_, e)| clean(e, secrets)),
        last_error_at: p.last_error.as_ref().map(|(ms, _)| at(*ms)),
    }
}

/// The state word of a stored checkpoint.
pub fn checkpoint_state(c: &CheckpointLine) -> &'static str {
    if c.deleted {
        "deleted"
    } else if c.completed {
        "complete"
    } else if c.stalled {
        "stalled"
    } else {
        match c.sync_status.as_deref() {
            None => "pending",
            Some("SYNCING") => "syncing",
            Some(_) => "other",
        }
    }
}

fn checkpoint_item(c: &CheckpointLine, secrets: &[String]) -> CheckpointItem {
    CheckpointItem {
        id: clean(&c.id, secrets),
        name: clean(&c.name, secrets),
        run_id: clean(&c.run_id, secrets),
        checkpoint_target: clean(&c.checkpoint_target, secrets),
        sync_status: c.sync_status.as_deref().map(|s| clean(s, secrets)),
        state: checkpoint_state(c),
        created_at: clean(&c.created_at, secrets),
        first_seen_at: c.first_seen_at,
        uri: c.uri.as_deref().map(|u| clean(u, secrets)),
    }
}

fn event_item(e: &EventLine, secrets: &[String]) -> EventItem {
    EventItem {
        id: e.id.clone(),
        kind: e.kind.clone(),
        target: clean(&e.target, secrets),
        checkpoint_id: clean(&e.checkpoint_id, secrets),
        checkpoint_name: clean(&e.checkpoint_name, secrets),
        checkpoint_target: clean(&e.checkpoint_target, secrets),
        uri: e.uri.as_deref().map(|u| clean(u, secrets)),
        detected_at: e.detected_at,
    }
}

fn delivery_item(line: &DeliveryLine, secrets: &[String], how: &Invocation) -> DeliveryItem {
    let d = &line.row;
    DeliveryItem {
        id: d.id,
        event_id: d.event_id.clone(),
        kind: d.kind.clone(),
        target: clean(&d.target, secrets),
        checkpoint_name: clean(&line.checkpoint_name, secrets),
        uri: d.uri.as_deref().map(|u| clean(u, secrets)),
        sink: d.sink.clone(),
        status: d.status.as_str(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error.as_deref().map(|e| clean(e, secrets)),
        created_at: d.created_at,
        updated_at: d.updated_at,
        replay_command: (d.status == crate::store::DeliveryStatus::Dead)
            .then(|| how.line(&format!("deliveries redeliver {}", d.id))),
    }
}

fn attempt_item(a: &AttemptLine, secrets: &[String]) -> AttemptItem {
    AttemptItem {
        delivery_id: a.delivery_id,
        attempt: a.attempt,
        at: a.at,
        status: a.status,
        duration_ms: a.duration_ms,
        outcome: a.outcome.clone(),
        error: a.error.as_deref().map(|e| clean(e, secrets)),
    }
}

/// The command that re-queues every dead delivery of `sink`, naming the config file as
/// `how` does.
pub fn replay_dead(how: &Invocation, sink: &str) -> String {
    how.line(&format!(
        "deliveries redeliver --dead --sink {}",
        shell_word(sink)
    ))
}

impl StatusReport {
    pub fn build(f: &Facts) -> StatusReport {
        let o = &f.overview;
        let s = f.secrets.as_slice();
        let leases = leases(o);
        let items = f
            .page
            .iter()
            .map(|(name, filter, seen, owned)| {
                let stored = o.targets.iter().find(|t| &t.name == name);
                TargetItem {
                    name: clean(name, s),
                    filter: clean(filter, s),
                    owned_here: *owned,
                    owner: leases.get(name.as_str()).map(|l| l.owner.clone()),
                    baselined_at: stored.map(|t| t.baselined_at),
                    poll: poll_item(f.now, seen.as_ref(), s),
                    checkpoints: stored.map(|t| t.checkpoints).unwrap_or_default(),
                    newest_completed: stored
                        .and_then(|t| t.newest_completed.as_ref())
                        .map(|c| checkpoint_item(c, s)),
                    detail: format!("/targets/{}", path_segment(name)),
                }
            })
            .collect();
        // A sink's backlog, last error and replay line, by name: of a configured sink, or
        // of one removed from the config whose deliveries are still in the store (waiting
        // for it to come back: shown, not hidden behind "no sink configured").
        let sink_item = |name: &str, kind: &'static str, destination: String| {
            let b = o.backlog.iter().find(|b| b.sink == name);
            let oldest = b.and_then(|b| b.oldest_pending);
            SinkItem {
                name: clean(name, s),
                kind,
                destination,
                pending: b.map_or(0, |b| b.pending),
                dead: b.map_or(0, |b| b.dead),
                oldest_pending_at: oldest,
                oldest_pending_age_seconds: oldest.map(|t| age(f.now, t)),
                last_error: (o.last_errors.iter())
                    .find(|a| a.sink == name)
                    .map(|a| attempt_item(a, s)),
                replay_command: replay_dead(&f.invocation, name),
            }
        };
        let removed = "not in the config: its deliveries wait until it is back";
        let sinks: Vec<SinkItem> = (f.sinks.iter())
            .map(|v| sink_item(&v.name, v.kind, clean(&v.destination, s)))
            .chain(
                (o.backlog.iter())
                    .filter(|b| !f.sinks.iter().any(|v| v.name == b.sink))
                    .map(|b| sink_item(&b.sink, "removed", removed.into())),
            )
            .collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION"),
            generated_at: f.now,
            replica: ReplicaInfo {
                id: f.replica.clone(),
                store: f.backend,
                owned_targets: f.owned,
            },
            replicas: o
                .replicas
                .iter()
                .map(|r| ReplicaItem {
                    id: clean(&r.id, s),
                    heartbeat_age_seconds: secs(r.heartbeat_age_ms.max(0)),
                    started_at: r.started_at,
                })
                .collect(),
            summary: Summary {
                configured_targets: f.configured_targets,
                stored_targets: o.stored_targets,
                failing_targets: f.failing_here,
                pending_deliveries: o.backlog.iter().map(|b| b.pending).sum(),
                dead_deliveries: o.backlog.iter().map(|b| b.dead).sum(),
            },
            targets: TargetPage {
                total: f.matching,
                offset: f.offset,
                limit: f.limit,
                items,
            },
            sinks,
            dead_deliveries: o
                .dead
                .iter()
                .map(|d| delivery_item(d, s, &f.invocation))
                .collect(),
            events: o.events.iter().map(|e| event_item(e, s)).collect(),
            deploys: o
                .deploys
                .open
                .iter()
                .chain(&o.deploys.settled)
                .map(|d| deploy_item(d, s, &f.invocation))
                .collect(),
            open_deploys_not_listed: o.deploys.open_total - o.deploys.open.len() as i64,
        }
    }
}

/// `name` as one URL path segment (percent-encoded where needed).
pub fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl TargetReport {
    pub fn build(f: &TargetFacts) -> TargetReport {
        let s = f.secrets.as_slice();
        let d = &f.detail;
        let attempts_of = |id: i64| -> Vec<AttemptItem> {
            d.attempts
                .iter()
                .filter(|a| a.delivery_id == id)
                .map(|a| attempt_item(a, s))
                .collect()
        };
        let items = d
            .checkpoints
            .iter()
            .map(|c| CheckpointHistory {
                checkpoint: checkpoint_item(c, s),
                events: d
                    .events
                    .iter()
                    .filter(|e| e.checkpoint_id == c.id)
                    .map(|e| EventHistory {
                        event: event_item(e, s),
                        deliveries: d
                            .deliveries
                            .iter()
                            .filter(|r| r.row.event_id == e.id)
                            .map(|r| DeliveryHistory {
                                delivery: delivery_item(r, s, &f.invocation),
                                attempt_log: attempts_of(r.row.id),
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        TargetReport {
            version: env!("CARGO_PKG_VERSION"),
            generated_at: f.now,
            name: clean(&f.name, s),
            filter: f
                .configured_filter
                .as_deref()
                .or(d.target.as_ref().map(|t| t.filter.as_str()))
                .map(|x| clean(x, s)),
            configured: f.configured_filter.is_some(),
            owned_here: f.owned_here,
            owner: d.lease.as_ref().map(|l| l.owner.clone()),
            baselined_at: d.target.as_ref().map(|t| t.baselined_at),
            poll: poll_item(f.now, f.poll.as_ref(), s),
            checkpoints: CheckpointPage {
                total: d.total_checkpoints,
                offset: f.offset,
                limit: super::CHECKPOINTS_PAGE,
                items,
            },
        }
    }
}
