//! The HTML of the status page: askama templates (`templates/status/`, compiled into the
//! binary, HTML-escaped by default) over view rows built here from a
//! [`StatusReport`] / [`TargetReport`], so the templates only lay out text: every age,
//! badge and command is decided in Rust. No JavaScript; an optional `<meta refresh>`.
//!
//! A status always shows as a word and a glyph (✓ ok, ✗ failing, ◔ waiting ...) and a
//! colour, so that it reads in grey and to a screen reader.

use askama::Template;
use chrono::{DateTime, Utc};

use super::report::{
    AttemptItem, CheckpointItem, DeliveryItem, EventItem, PollItem, StatusReport, TargetItem,
    TargetReport, path_segment,
};
use super::{CHECKPOINTS_PAGE, PageQuery};

/// A status as colour class, glyph and word.
pub struct Badge {
    pub class: &'static str,
    pub icon: &'static str,
    pub label: String,
}

fn badge(class: &'static str, icon: &'static str, label: impl Into<String>) -> Badge {
    Badge {
        class,
        icon,
        label: label.into(),
    }
}

/// A time as "5m ago", with the exact time for a tooltip and `<time datetime>`.
pub struct When {
    pub ago: String,
    pub iso: String,
}

impl When {
    fn at(now: DateTime<Utc>, t: Option<DateTime<Utc>>) -> When {
        match t {
            Some(t) => When {
                ago: ago(now, t),
                iso: t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            },
            None => When {
                ago: String::new(),
                iso: String::new(),
            },
        }
    }

    pub fn is_some(&self) -> bool {
        !self.iso.is_empty()
    }
}

/// A relative age: `just now`, `42s ago`, `5m ago`, `3h 10m ago`, `2d ago`, or `in 5m`.
pub fn ago(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 {
        (-secs, true)
    } else {
        (secs, false)
    };
    let span = match n {
        0..=4 if !future => return "just now".into(),
        0..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 if n % 3600 >= 60 => format!("{}h {}m", n / 3600, (n % 3600) / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

/// The page head every page shares.
pub struct Head {
    pub title: String,
    pub version: &'static str,
    pub replica: String,
    pub store: &'static str,
    pub generated: When,
    /// `<meta refresh>` seconds.
    pub refresh: Option<u32>,
    /// (label, href, current) of the refresh choices.
    pub refresh_links: Vec<(&'static str, String, bool)>,
}

fn head(
    title: String,
    report_replica: &str,
    store: &'static str,
    now: DateTime<Utc>,
    q: &PageQuery,
    path: &str,
) -> Head {
    let refresh = q.refresh.map(|r| r.clamp(5, 3600));
    let keep =
        q.q.as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| format!("q={}&", path_segment(s)))
            .unwrap_or_default();
    let link = |n: Option<u32>| match n {
        Some(n) => format!("{path}?{keep}refresh={n}"),
        None if keep.is_empty() => path.to_string(),
        None => format!("{path}?{}", keep.trim_end_matches('&')),
    };
    Head {
        title,
        version: env!("CARGO_PKG_VERSION"),
        replica: report_replica.to_string(),
        store,
        generated: When::at(now, Some(now)),
        refresh,
        refresh_links: vec![
            ("off", link(None), refresh.is_none()),
            ("10 s", link(Some(10)), refresh == Some(10)),
            ("60 s", link(Some(60)), refresh == Some(60)),
        ],
    }
}

pub struct Tile {
    pub label: &'static str,
    pub value: String,
    pub badge: Badge,
}

pub struct TargetRow {
    pub badge: Badge,
    pub name: String,
    pub href: String,
    pub filter: String,
    pub owner: String,
    pub last_poll: When,
    pub error: Option<(String, When)>,
    /// (label, count, class) of the non-zero counts.
    pub counts: Vec<(&'static str, i64, &'static str)>,
    pub newest: Option<(String, String, When)>,
}

pub struct SinkRow {
    pub badge: Badge,
    pub name: String,
    pub kind: &'static str,
    pub destination: String,
    pub pending: i64,
    pub dead: i64,
    pub oldest: When,
    pub last_error: Option<(String, When)>,
    /// The line that re-queues its dead deliveries: every sink has one.
    pub replay: String,
}

pub struct DeliveryRowView {
    pub id: i64,
    pub badge: Badge,
    pub sink: String,
    pub kind: String,
    pub target: String,
    pub target_href: String,
    pub checkpoint: String,
    pub uri: String,
    pub attempts: u32,
    pub error: String,
    pub when: When,
    pub next: When,
    pub replay: Option<String>,
    /// One successful attempt, said in a line (`HTTP 204 in 5 ms`) instead of a table.
    pub single: Option<String>,
    pub log: Vec<AttemptRow>,
}

pub struct AttemptRow {
    pub n: i64,
    pub badge: Badge,
    pub when: When,
    pub status: String,
    pub duration: String,
    pub error: String,
}

pub struct EventRow {
    pub badge: Badge,
    pub when: When,
    pub target: String,
    pub target_href: String,
    pub checkpoint: String,
    pub uri: String,
    pub id: String,
    pub deliveries: Vec<DeliveryRowView>,
}

pub struct Pager {
    pub shown: String,
    pub prev: Option<String>,
    pub next: Option<String>,
}

#[derive(Template)]
#[template(path = "status/index.html")]
pub struct IndexPage {
    pub head: Head,
    pub tiles: Vec<Tile>,
    pub q: String,
    pub targets: Vec<TargetRow>,
    pub targets_total: usize,
    pub pager: Pager,
    pub sinks: Vec<SinkRow>,
    pub dead: Vec<DeliveryRowView>,
    pub events: Vec<EventRow>,
    pub replicas: Vec<(String, String, When)>,
    pub deploys: Vec<DeployRowView>,
    /// Open pipelines past the page's bound, not listed (0 in practice).
    pub deploys_not_listed: i64,
}

/// One deploy pipeline's row.
pub struct DeployRowView {
    pub id: i64,
    pub badge: Badge,
    pub sink: String,
    pub target: String,
    pub target_href: String,
    pub checkpoint: String,
    pub uri: String,
    pub model: String,
    pub deployment: String,
    pub status: String,
    pub note: String,
    pub when: When,
    pub approve: Option<String>,
}

/// A deploy stage as a badge: colour and a shape, so it reads in grey too.
fn stage_badge(stage: &str) -> Badge {
    match stage {
        "active" | "promoted" | "deployed" => badge("ok", "✓", stage),
        "failed" | "unknown" => badge("bad", "✗", stage),
        "awaiting_approval" => badge("warn", "◷", "awaiting approval"),
        "deploying" | "following" => badge("info", "…", stage),
        _ => badge("idle", "–", stage),
    }
}

fn deploy_row(now: DateTime<Utc>, d: &super::report::DeployItem) -> DeployRowView {
    let mut note = Vec::new();
    if d.reconciled {
        note.push("reconciled after a lost answer".to_string());
    }
    // A rejection's error names who decided already ("rejected by carol: ...").
    if let Some(by) = &d.decided_by
        && d.stage != "rejected"
    {
        note.push(format!("decided by {by}"));
    }
    if let Some(e) = &d.error {
        note.push(e.clone());
    }
    DeployRowView {
        id: d.delivery_id,
        badge: stage_badge(d.stage),
        sink: d.sink.clone(),
        target: d.target.clone(),
        target_href: target_href(&d.target),
        checkpoint: d.checkpoint_name.clone(),
        uri: d.uri.clone().unwrap_or_default(),
        model: d.model_name.clone().unwrap_or_default(),
        deployment: d.deployment_id.clone().unwrap_or_default(),
        status: match (&d.deployment_status, &d.environment) {
            (Some(s), Some(env)) => format!("{s} in {env}"),
            (Some(s), None) => s.clone(),
            (None, _) => String::new(),
        },
        note: note.join("; "),
        when: When::at(now, Some(d.updated_at)),
        approve: d.approve_command.clone(),
    }
}

pub struct CheckpointRow {
    pub badge: Badge,
    pub name: String,
    pub id: String,
    pub kind: String,
    pub created_at: String,
    pub first_seen: When,
    pub uri: String,
    pub events: Vec<EventRow>,
}

#[derive(Template)]
#[template(path = "status/target.html")]
pub struct TargetPage {
    pub head: Head,
    pub name: String,
    pub badge: Badge,
    pub filter: String,
    pub owner: String,
    pub baselined: When,
    pub last_poll: When,
    pub error: Option<(String, When)>,
    pub checkpoints: Vec<CheckpointRow>,
    pub pager: Pager,
}

#[derive(Template)]
#[template(path = "status/message.html")]
pub struct MessagePage {
    pub head: Head,
    pub heading: String,
    pub message: String,
}

fn poll_badge(p: &PollItem, owned_here: bool, owner: Option<&str>) -> Badge {
    match (p.seen_here, p.failing) {
        (true, Some(true)) => badge("bad", "✗", format!("failing ×{}", p.failures)),
        (true, _) if p.last_success_at.is_some() => badge("ok", "✓", "ok"),
        _ if !owned_here && owner.is_some() => badge("idle", "⇄", "other replica"),
        _ if !owned_here => badge("idle", "–", "not polled here"),
        _ => badge("warn", "○", "not polled yet"),
    }
}

fn poll_error(now: DateTime<Utc>, p: &PollItem) -> Option<(String, When)> {
    if p.failing != Some(true) {
        return None;
    }
    Some((
        p.last_error.clone().unwrap_or_default(),
        When::at(now, p.last_error_at),
    ))
}

fn state_badge(state: &str) -> Badge {
    match state {
        "complete" => badge("ok", "✓", "complete"),
        "syncing" => badge("info", "◔", "syncing"),
        "pending" => badge("warn", "○", "pending"),
        "stalled" => badge("bad", "◷", "stalled"),
        "deleted" => badge("idle", "⌫", "deleted"),
        other => badge("warn", "?", other.to_string()),
    }
}

fn event_badge(kind: &str) -> Badge {
    let short = kind.strip_prefix("checkpoint.").unwrap_or(kind).to_string();
    match short.as_str() {
        "completed" | "deployed" | "deployment_active" | "promoted" => badge("ok", "✓", short),
        "discovered" => badge("info", "+", short),
        "stalled" | "deployment_failed" => badge("bad", "✗", short),
        "awaiting_approval" => badge("warn", "⏳", short),
        "deleted" => badge("idle", "⌫", short),
        _ => badge("info", "•", short),
    }
}

fn delivery_badge(status: &str) -> Badge {
    match status {
        "delivered" => badge("ok", "✓", "delivered"),
        "pending" => badge("warn", "◔", "pending"),
        "dead" => badge("bad", "✗", "dead"),
        "superseded" => badge("idle", "↷", "superseded"),
        other => badge("idle", "?", other.to_string()),
    }
}

fn attempt_row(now: DateTime<Utc>, a: &AttemptItem) -> AttemptRow {
    AttemptRow {
        n: a.attempt,
        badge: match a.outcome.as_str() {
            "delivered" => badge("ok", "✓", "delivered"),
            "retry" => badge("warn", "↻", "retry"),
            "dead" => badge("bad", "✗", "dead"),
            other => badge("idle", "?", other.to_string()),
        },
        when: When::at(now, Some(a.at)),
        status: a
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "–".into()),
        duration: a
            .duration_ms
            .map(duration_text)
            .unwrap_or_else(|| "–".into()),
        error: a.error.clone().unwrap_or_default(),
    }
}

fn duration_text(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn target_href(name: &str) -> String {
    format!("/targets/{}", path_segment(name))
}

fn delivery_row(now: DateTime<Utc>, d: &DeliveryItem, log: &[AttemptItem]) -> DeliveryRowView {
    DeliveryRowView {
        id: d.id,
        badge: delivery_badge(d.status),
        sink: d.sink.clone(),
        kind: d
            .kind
            .strip_prefix("checkpoint.")
            .unwrap_or(&d.kind)
            .to_string(),
        target: d.target.clone(),
        target_href: target_href(&d.target),
        checkpoint: d.checkpoint_name.clone(),
        uri: d.uri.clone().unwrap_or_default(),
        attempts: d.attempts,
        error: d.last_error.clone().unwrap_or_default(),
        when: When::at(now, Some(d.updated_at)),
        next: When::at(now, d.next_attempt_at),
        replay: d.replay_command.clone(),
        single: match log {
            [a] if a.outcome == "delivered" => Some(match (a.status, a.duration_ms) {
                (Some(s), Some(ms)) => format!("HTTP {s} in {}", duration_text(ms)),
                (None, Some(ms)) => format!("in {}", duration_text(ms)),
                (Some(s), None) => format!("HTTP {s}"),
                (None, None) => String::new(),
            }),
            _ => None,
        },
        log: log.iter().map(|a| attempt_row(now, a)).collect(),
    }
}

fn event_row(now: DateTime<Utc>, e: &EventItem, deliveries: Vec<DeliveryRowView>) -> EventRow {
    EventRow {
        badge: event_badge(&e.kind),
        when: When::at(now, Some(e.detected_at)),
        target: e.target.clone(),
        target_href: target_href(&e.target),
        checkpoint: e.checkpoint_name.clone(),
        uri: e.uri.clone().unwrap_or_default(),
        id: e.id.clone(),
        deliveries,
    }
}

fn counts(t: &TargetItem) -> Vec<(&'static str, i64, &'static str)> {
    let c = &t.checkpoints;
    [
        ("complete", c.complete, "ok"),
        ("syncing", c.syncing, "info"),
        ("pending", c.pending, "warn"),
        ("other", c.other, "warn"),
        ("stalled", c.stalled, "bad"),
        ("deleted", c.deleted, "idle"),
    ]
    .into_iter()
    .filter(|(_, n, _)| *n > 0)
    .collect()
}

fn newest(now: DateTime<Utc>, c: &CheckpointItem) -> (String, String, When) {
    (
        c.name.clone(),
        c.uri.clone().unwrap_or_default(),
        When::at(now, Some(c.first_seen_at)),
    )
}

fn pager(
    path: &str,
    q: &PageQuery,
    offset: usize,
    limit: usize,
    total: usize,
    what: &str,
) -> Pager {
    let mut keep = String::new();
    if let Some(s) = q.q.as_deref().filter(|s| !s.is_empty()) {
        keep.push_str(&format!("q={}&", path_segment(s)));
    }
    if let Some(r) = q.refresh {
        keep.push_str(&format!("refresh={r}&"));
    }
    let at = |o: usize| format!("{path}?{keep}offset={o}&limit={limit}");
    let end = (offset + limit).min(total);
    Pager {
        shown: if total == 0 {
            format!("no {what}")
        } else {
            format!("{}–{} of {total} {what}", offset + 1, end)
        },
        prev: (offset > 0).then(|| at(offset.saturating_sub(limit))),
        next: (end < total).then(|| at(end)),
    }
}

impl IndexPage {
    pub fn build(r: &StatusReport, q: &PageQuery) -> IndexPage {
        let now = r.generated_at;
        let s = &r.summary;
        let failing = s.failing_targets;
        let tiles = vec![
            Tile {
                label: "Targets",
                value: format!("{}", s.configured_targets),
                badge: if failing > 0 {
                    badge("bad", "✗", format!("{failing} failing"))
                } else {
                    badge("ok", "✓", "none failing here")
                },
            },
            Tile {
                label: "Pending deliveries",
                value: s.pending_deliveries.to_string(),
                badge: if s.pending_deliveries > 0 {
                    badge("warn", "◔", "in the outbox")
                } else {
                    badge("ok", "✓", "outbox empty")
                },
            },
            Tile {
                label: "Dead deliveries",
                value: s.dead_deliveries.to_string(),
                badge: if s.dead_deliveries > 0 {
                    badge("bad", "✗", "need a replay")
                } else {
                    badge("ok", "✓", "none")
                },
            },
            Tile {
                label: "This replica",
                value: format!("{} owned", r.replica.owned_targets),
                badge: badge("info", "⛁", r.replica.store),
            },
        ];
        let targets = r
            .targets
            .items
            .iter()
            .map(|t| TargetRow {
                badge: poll_badge(&t.poll, t.owned_here, t.owner.as_deref()),
                name: t.name.clone(),
                href: t.detail.clone(),
                filter: t.filter.clone(),
                owner: match (&t.owner, t.owned_here) {
                    (Some(o), _) => o.clone(),
                    (None, true) => "this replica".into(),
                    (None, false) => String::new(),
                },
                last_poll: When::at(now, t.poll.last_success_at),
                error: poll_error(now, &t.poll),
                counts: counts(t),
                newest: t.newest_completed.as_ref().map(|c| newest(now, c)),
            })
            .collect();
        let sinks = r
            .sinks
            .iter()
            .map(|k| SinkRow {
                badge: if k.dead > 0 {
                    badge("bad", "✗", format!("{} dead", k.dead))
                } else if k.pending > 0 {
                    badge("warn", "◔", "backlog")
                } else {
                    badge("ok", "✓", "ok")
                },
                name: k.name.clone(),
                kind: k.kind,
                destination: k.destination.clone(),
                pending: k.pending,
                dead: k.dead,
                oldest: When::at(now, k.oldest_pending_at),
                last_error: k.last_error.as_ref().map(|a| {
                    let status = a.status.map(|s| format!("HTTP {s} · ")).unwrap_or_default();
                    let text = a.error.clone().unwrap_or_default();
                    // The error text names the status already when it has one.
                    let line = if text.starts_with("HTTP ") {
                        text
                    } else {
                        format!("{status}{text}")
                    };
                    (line, When::at(now, Some(a.at)))
                }),
                replay: k.replay_command.clone(),
            })
            .collect();
        IndexPage {
            head: head(
                "loopwatch status".into(),
                &r.replica.id,
                r.replica.store,
                now,
                q,
                "/",
            ),
            tiles,
            q: q.q.clone().unwrap_or_default(),
            targets,
            targets_total: r.targets.total,
            pager: pager(
                "/",
                q,
                r.targets.offset,
                r.targets.limit,
                r.targets.total,
                "targets",
            ),
            sinks,
            dead: r
                .dead_deliveries
                .iter()
                .map(|d| delivery_row(now, d, &[]))
                .collect(),
            deploys: r.deploys.iter().map(|d| deploy_row(now, d)).collect(),
            deploys_not_listed: r.open_deploys_not_listed,
            events: r
                .events
                .iter()
                .map(|e| event_row(now, e, Vec::new()))
                .collect(),
            replicas: r
                .replicas
                .iter()
                .map(|x| {
                    let beat =
                        chrono::Duration::milliseconds((x.heartbeat_age_seconds * 1000.0) as i64);
                    (
                        x.id.clone(),
                        ago(now, now - beat),
                        When::at(now, Some(x.started_at)),
                    )
                })
                .collect(),
        }
    }
}

impl TargetPage {
    pub fn build(r: &TargetReport, store: &'static str, replica: &str, q: &PageQuery) -> Self {
        let now = r.generated_at;
        let path = format!("/targets/{}", path_segment(&r.name));
        let checkpoints = r
            .checkpoints
            .items
            .iter()
            .map(|c| CheckpointRow {
                badge: state_badge(c.checkpoint.state),
                name: c.checkpoint.name.clone(),
                id: c.checkpoint.id.clone(),
                kind: c.checkpoint.checkpoint_target.clone(),
                created_at: c.checkpoint.created_at.clone(),
                first_seen: When::at(now, Some(c.checkpoint.first_seen_at)),
                uri: c.checkpoint.uri.clone().unwrap_or_default(),
                events: c
                    .events
                    .iter()
                    .map(|e| {
                        let deliveries = e
                            .deliveries
                            .iter()
                            .map(|d| delivery_row(now, &d.delivery, &d.attempt_log))
                            .collect();
                        event_row(now, &e.event, deliveries)
                    })
                    .collect(),
            })
            .collect();
        let cp = &r.checkpoints;
        let mut pg = pager(
            &path,
            &PageQuery {
                q: None,
                ..q.clone()
            },
            cp.offset.max(0) as usize,
            CHECKPOINTS_PAGE as usize,
            cp.total.max(0) as usize,
            "checkpoints",
        );
        // This page pages with `checkpoints_offset`.
        for link in [&mut pg.prev, &mut pg.next].into_iter().flatten() {
            *link = link
                .replace("offset=", "checkpoints_offset=")
                .replace(&format!("&limit={CHECKPOINTS_PAGE}"), "");
        }
        TargetPage {
            head: head(
                format!("{} · loopwatch", r.name),
                replica,
                store,
                now,
                &PageQuery {
                    q: None,
                    ..q.clone()
                },
                &path,
            ),
            name: r.name.clone(),
            badge: if r.configured {
                poll_badge(&r.poll, r.owned_here, r.owner.as_deref())
            } else {
                badge("idle", "–", "not configured")
            },
            filter: r.filter.clone().unwrap_or_default(),
            owner: match (&r.owner, r.owned_here) {
                (Some(o), _) => o.clone(),
                (None, true) => "this replica".into(),
                (None, false) => "–".into(),
            },
            baselined: When::at(now, r.baselined_at),
            last_poll: When::at(now, r.poll.last_success_at),
            error: poll_error(now, &r.poll),
            checkpoints,
            pager: pg,
        }
    }
}

impl MessagePage {
    pub fn new(heading: &str, message: String, replica: &str, store: &'static str) -> Self {
        let now = Utc::now();
        MessagePage {
            head: head(
                format!("{heading} · loopwatch"),
                replica,
                store,
                now,
                &PageQuery::default(),
                "/",
            ),
            heading: heading.to_string(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_say_them() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let before = |s: i64| ago(now, now - chrono::Duration::seconds(s));
        assert_eq!(before(2), "just now");
        assert_eq!(before(42), "42s ago");
        assert_eq!(before(300), "5m ago");
        assert_eq!(before(3600), "1h ago");
        assert_eq!(before(3600 * 3 + 600), "3h 10m ago");
        assert_eq!(before(86_400 * 2 + 5), "2d ago");
        assert_eq!(before(-300), "in 5m");
    }
}
