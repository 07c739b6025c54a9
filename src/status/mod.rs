//! The status page (`GET /`, `GET /targets/NAME`) and `GET /api/v1/status`: what the
//! daemon watches, what it saw, what is stuck and what waits for an operator, in one
//! read-only view (docs/status.md).
//!
//! [`Status`] gathers the facts of one request: the store's database-wide picture
//! ([`crate::store::inspect`], the same on every replica), the current config's targets
//! and sinks, and what this process saw of its own polls ([`crate::health::PollSeen`]) and
//! owns ([`Ownership`]). [`report`] turns them into the JSON of `/api/v1/status`, whose
//! field names are a contract; [`page`] renders the same report as HTML.
//!
//! Safe by construction: no handler writes; every query is bounded (a page of targets,
//! fixed limits); outside text (checkpoint names, error bodies) goes out escaped (control
//! characters made visible, HTML escaped by the templates), cut to a bounded length, with
//! every configured secret and any URL password replaced by `[redacted]`; a sink shows
//! only where it delivers (a webhook's scheme, host and port, an exec's program name).

pub mod page;
pub mod report;
pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::{Config, Invocation, SinkKind};
use crate::health::{Health, PollSeen};
use crate::replicas::Ownership;
use crate::store::{DetailQuery, Overview, OverviewQuery, Store, StoreError, TargetDetail};

pub use crate::text::shell_word;
pub use report::{StatusReport, TargetReport};

/// Targets on one page unless `limit` says otherwise, and at most.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 500;
/// Checkpoints on one page of `/targets/NAME`.
pub const CHECKPOINTS_PAGE: i64 = 50;
/// Newest events shown.
pub const EVENTS: i64 = 50;
/// Newest dead deliveries shown per sink.
pub const DEAD_PER_SINK: i64 = 10;
/// How long a request waits for the store before answering 503.
const STORE_WAIT: Duration = Duration::from_secs(5);

/// Which targets a request shows.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    /// Skip this many targets (in the page's order: failing first, then by name).
    pub offset: Option<usize>,
    pub limit: Option<usize>,
    /// Only targets whose name contains this.
    pub q: Option<String>,
    /// `/targets/NAME`: skip this many checkpoints.
    pub checkpoints_offset: Option<i64>,
    /// HTML only: reload the page every this many seconds (5 to 3600).
    pub refresh: Option<u32>,
}

/// A configured target as the page shows it.
#[derive(Clone, Debug)]
struct TargetView {
    name: String,
    filter: String,
}

/// A configured sink as the page shows it: never its URL path, headers or secrets.
#[derive(Clone, Debug)]
pub struct SinkView {
    pub name: String,
    pub kind: &'static str,
    /// Where it delivers: `https://host:port`, an exec's program name, or the Loops API.
    pub destination: String,
}

/// What the page needs of the running config; replaced on reload.
struct View {
    targets: Vec<TargetView>,
    sinks: Vec<SinkView>,
    /// Every configured secret value, never to be shown.
    secrets: Vec<String>,
    /// How the lines the page shows (approve, replay) name the config file.
    invocation: Invocation,
}

impl View {
    fn of(cfg: &Config) -> View {
        let mut secrets = vec![cfg.api.api_key.expose().to_string()];
        if let Some(pw) = cfg.api.base_url.password() {
            secrets.push(pw.to_string());
        }
        let sinks = cfg
            .sinks
            .iter()
            .map(|s| {
                let destination = match &s.kind {
                    SinkKind::Webhook {
                        url,
                        secret,
                        previous_secret,
                        headers,
                        ..
                    } => {
                        for key in [secret, previous_secret].into_iter().flatten() {
                            secrets.push(signing_secret_text(key.bytes()));
                        }
                        secrets.extend(headers.iter().map(|h| h.value.expose().to_string()));
                        if let Some(pw) = url.password() {
                            secrets.push(pw.to_string());
                        }
                        origin(url)
                    }
                    SinkKind::Exec { command } => command
                        .first()
                        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                        .unwrap_or_default(),
                    SinkKind::BasetenDeploy(d) => {
                        format!("Loops API deploy ({})", d.instance_type_id)
                    }
                };
                SinkView {
                    name: s.name.clone(),
                    kind: s.kind.name(),
                    destination,
                }
            })
            .collect();
        // A short value would blank out ordinary words; config secrets are long.
        secrets.retain(|s| s.len() >= 6);
        View {
            targets: cfg
                .targets
                .iter()
                .map(|t| TargetView {
                    name: t.name.clone(),
                    filter: t.filter.to_string(),
                })
                .collect(),
            sinks,
            secrets,
            invocation: cfg.invocation(),
        }
    }
}

/// A webhook secret as it is written (`whsec_` + base64), and its base64 alone.
fn signing_secret_text(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `scheme://host[:port]` of `url`: no user, password, path or query (a webhook's path
/// often is its token).
fn origin(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{}://{h}:{p}", url.scheme()),
        (Some(h), None) => format!("{}://{h}", url.scheme()),
        _ => url.scheme().to_string(),
    }
}

/// The longest outside string shown, in characters.
pub const MAX_TEXT: usize = 512;

/// Outside text as the page and the API show it: control characters made visible, cut to
/// [`MAX_TEXT`], secrets and URL passwords replaced by `[redacted]`.
pub fn clean(s: &str, secrets: &[String]) -> String {
    let mut out = crate::text::escape(s).into_owned();
    for secret in secrets {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "[redacted]");
        }
    }
    out = redact_userinfo(&out);
    if let Some((i, _)) = out.char_indices().nth(MAX_TEXT) {
        out.truncate(i);
        out.push('…');
    }
    out
}

/// `scheme://user:password@host` -> `scheme://[redacted]@host`, anywhere in `s`.
fn redact_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || "\"'<>?#".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("[redacted]");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The status page's source of facts, shared by its handlers.
pub struct Status {
    store: Arc<dyn Store>,
    health: Arc<Health>,
    ownership: Arc<Ownership>,
    /// `sqlite` or `postgres`.
    backend: &'static str,
    view: RwLock<Arc<View>>,
}

/// Why a request has no answer.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("the store did not answer within {}s", STORE_WAIT.as_secs())]
    Timeout,
    #[error("cannot read the store: {0}")]
    Store(#[from] StoreError),
}

/// What one request read: the facts [`report`] builds its answer from.
pub struct Facts {
    pub now: DateTime<Utc>,
    pub replica: String,
    pub backend: &'static str,
    pub owned: usize,
    pub configured_targets: usize,
    pub failing_here: usize,
    /// The page's targets (config order: failing here first, then by name), each with what
    /// this process saw of its polls and whether it owns it.
    pub page: Vec<(String, String, Option<PollSeen>, bool)>,
    /// Configured targets matching the query (before the page's offset and limit).
    pub matching: usize,
    pub offset: usize,
    pub limit: usize,
    pub sinks: Vec<SinkView>,
    /// With the deploy pipelines to list (every open one, the newest [`DEPLOYS`] settled).
    pub overview: Overview,
    pub secrets: Vec<String>,
    /// How the command lines shown name the config file.
    pub invocation: Invocation,
}

/// How many settled deploy pipelines the page shows (the newest), after the open ones.
pub const DEPLOYS: i64 = 50;
/// At most how many open deploy pipelines (waiting for approval, or with a step left) the
/// page shows: every one in practice; past it, the page says how many it left out.
pub const OPEN_DEPLOYS: i64 = 1000;

impl Status {
    pub fn new(
        store: Arc<dyn Store>,
        health: Arc<Health>,
        ownership: Arc<Ownership>,
        cfg: &Config,
    ) -> Status {
        Status {
            store,
            health,
            ownership,
            backend: if cfg.store.is_postgres() {
                "postgres"
            } else {
                "sqlite"
            },
            view: RwLock::new(Arc::new(View::of(cfg))),
        }
    }

    /// A reload applied `cfg`.
    pub fn configure(&self, cfg: &Config) {
        *self.view.write().expect("not poisoned") = Arc::new(View::of(cfg));
    }

    fn view(&self) -> Arc<View> {
        self.view.read().expect("not poisoned").clone()
    }

    /// The facts of the overview (`/`, `/api/v1/status`).
    pub async fn facts(&self, q: &PageQuery) -> Result<Facts, StatusError> {
        let view = self.view();
        let polls = self.health.polls();
        let failing = |name: &str| polls.get(name).is_some_and(|p| p.failures > 0);
        let needle = q.q.as_deref().unwrap_or("").trim();
        let mut order: Vec<&TargetView> = view
            .targets
            .iter()
            .filter(|t| needle.is_empty() || t.name.contains(needle))
            .collect();
        // Failing first: on page one with 10,000 targets.
        order.sort_by(|a, b| (!failing(&a.name), &a.name).cmp(&(!failing(&b.name), &b.name)));
        let limit = q.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        let offset = q.offset.unwrap_or(0).min(order.len());
        let page: Vec<&TargetView> = order.iter().skip(offset).take(limit).copied().collect();
        let query = OverviewQuery {
            targets: page.iter().map(|t| t.name.clone()).collect(),
            sinks: view.sinks.iter().map(|s| s.name.clone()).collect(),
            events: EVENTS,
            dead_per_sink: DEAD_PER_SINK,
            settled_deploys: DEPLOYS,
            open_deploys: OPEN_DEPLOYS,
        };
        let overview = self.read(self.store.overview(&query)).await?;
        Ok(Facts {
            now: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
            replica: self.ownership.replica.clone(),
            backend: self.backend,
            owned: self.ownership.count(),
            configured_targets: view.targets.len(),
            failing_here: view.targets.iter().filter(|t| failing(&t.name)).count(),
            matching: order.len(),
            offset,
            limit,
            page: page
                .iter()
                .map(|t| {
                    (
                        t.name.clone(),
                        t.filter.clone(),
                        polls.get(&t.name).cloned(),
                        self.ownership.fence(&t.name).is_some(),
                    )
                })
                .collect(),
            sinks: view.sinks.clone(),
            overview,
            secrets: view.secrets.clone(),
            invocation: view.invocation.clone(),
        })
    }

    /// The facts of `/targets/NAME`; None when the target is neither configured nor stored.
    pub async fn target_facts(
        &self,
        name: &str,
        q: &PageQuery,
    ) -> Result<Option<TargetFacts>, StatusError> {
        let view = self.view();
        let configured = view.targets.iter().find(|t| t.name == name);
        let offset = q.checkpoints_offset.unwrap_or(0).max(0);
        let detail = self
            .read(self.store.target_detail(&DetailQuery {
                target: name.to_string(),
                limit: CHECKPOINTS_PAGE,
                offset,
            }))
            .await?;
        if configured.is_none() && detail.target.is_none() {
            return Ok(None);
        }
        Ok(Some(TargetFacts {
            now: chrono::SubsecRound::trunc_subsecs(Utc::now(), 3),
            name: name.to_string(),
            configured_filter: configured.map(|t| t.filter.clone()),
            poll: self.health.poll_seen(name),
            owned_here: self.ownership.fence(name).is_some(),
            replica: self.ownership.replica.clone(),
            offset,
            detail,
            secrets: view.secrets.clone(),
            invocation: view.invocation.clone(),
        }))
    }

    async fn read<T>(
        &self,
        f: impl Future<Output = crate::store::Result<T>>,
    ) -> Result<T, StatusError> {
        match tokio::time::timeout(STORE_WAIT, f).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(StatusError::Timeout),
        }
    }
}

/// What one request of `/targets/NAME` read.
pub struct TargetFacts {
    pub now: DateTime<Utc>,
    pub name: String,
    /// None when the target is no longer configured (its state is kept).
    pub configured_filter: Option<String>,
    pub poll: Option<PollSeen>,
    pub owned_here: bool,
    pub replica: String,
    pub offset: i64,
    pub detail: TargetDetail,
    pub secrets: Vec<String>,
    /// How the command lines shown name the config file.
    pub invocation: Invocation,
}

/// Lookup of an overview's leases by target.
fn leases(o: &Overview) -> HashMap<&str, &crate::store::inspect::LeaseLine> {
    o.leases.iter().map(|l| (l.target.as_str(), l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_shows_controls_cuts_and_redacts() {
        let secrets = vec!["tok-123456".to_string()];
        assert_eq!(
            clean(
                "bad\u{1b}[31m tok-123456 at https://u:pw@h.example/x?y",
                &secrets
            ),
            "bad\\u{1b}[31m [redacted] at https://[redacted]@h.example/x?y"
        );
        assert_eq!(clean(&"x".repeat(600), &[]).chars().count(), MAX_TEXT + 1);
        assert_eq!(redact_userinfo("a://h/b c://d"), "a://h/b c://d");
    }
}
