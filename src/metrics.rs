//! Every metric handle in one struct, and the only place metric names appear
//! (docs/metrics.md lists them). Labels come from config names and small enums, never ids or URLs.
//! Series for every configured target and sink are created at start, zero-valued, so
//! dashboards and alerts never see gaps.
//!
//! The per-target series live in compact slots ([`TargetMetrics`]) rendered straight to
//! text: through the `prometheus` crate's labelled vectors each series holds a copy of its
//! descriptor and label pairs, ~15 KiB per target, 150 MiB for 10,000 targets.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;
use crate::model::{CheckpointTarget, EventType, SyncClass};

pub struct Metrics {
    pub registry: Registry,
    /// Per-target series, by target name.
    targets: RwLock<BTreeMap<String, Arc<TargetMetrics>>>,
    pub api_requests: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub pending: IntGaugeVec,
    pub dead: IntGaugeVec,
    pub oldest_pending: GaugeVec,
    /// `loopwatch_deploys{sink,stage}`: deploy pipelines per stage, database-wide (on the
    /// backlog reporter only, as the backlog gauges).
    pub deploys: IntGaugeVec,
    /// Checkpoint completed -> deployment ACTIVE.
    pub deploy_to_active: HistogramVec,
    pub deployments_deactivated: IntCounterVec,
    /// 1 per configured sink, by kind: lets dashboards and alerts select deploy sinks.
    pub sink_info: IntGaugeVec,
    pub targets_owned: IntGauge,
    /// `loopwatch_api_budget_requests_per_second`.
    pub api_budget: prometheus::Gauge,
    pub lease_takeovers: prometheus::IntCounter,
    /// 1 when the last reload (or the start) applied the config, 0 when it was refused.
    pub reload_successful: IntGauge,
    pub reload_success_timestamp: prometheus::Gauge,
    /// Whether this process reports the database-wide backlog gauges (`pending`, `dead`,
    /// `oldest_pending`): with several replicas one at a time does, the others export 0,
    /// so a `sum` over replicas is the true figure. Always on a single node.
    backlog_reporter: std::sync::atomic::AtomicBool,
    /// Failed store operations, by [`STORE_OPS`].
    pub store_errors: IntCounterVec,
}

/// The `op` label of `loopwatch_store_errors_total`.
pub const STORE_OPS: [&str; 11] = [
    "open", "load", "commit", "claim", "record", "release", "read", "prune", "leases", "deploy",
    "follow",
];

const DELIVERY_OUTCOMES: [&str; 4] = ["success", "retry", "dead", "superseded"];
const SYNC_CLASSES: [SyncClass; 4] = [
    SyncClass::Syncing,
    SyncClass::Complete,
    SyncClass::Unknown,
    SyncClass::Other,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };

        let build = IntGaugeVec::new(
            Opts::new("loopwatch_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(build.clone()))
            .expect("unique metric");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(PreciseProcessCollector(
                prometheus::process_collector::ProcessCollector::for_self(),
            )))
            .expect("unique metric");

        let api_budget = prometheus::Gauge::new(
            "loopwatch_api_budget_requests_per_second",
            "This process's share of api.max_requests_per_second: the budget divided among the live replicas and the `once` runs beside them.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(api_budget.clone()))
            .expect("unique metric");

        let targets_owned = IntGauge::new(
            "loopwatch_targets_owned",
            "Targets this replica polls (all of them with SQLite).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(targets_owned.clone()))
            .expect("unique metric");

        let lease_takeovers = prometheus::IntCounter::new(
            "loopwatch_lease_takeovers_total",
            "Target leases this replica took over after another replica's lease expired.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lease_takeovers.clone()))
            .expect("unique metric");

        let reload_successful = IntGauge::new(
            "loopwatch_config_last_reload_successful",
            "1 when the last config reload (or the start) applied the config, 0 when it was refused.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(reload_successful.clone()))
            .expect("unique metric");
        let reload_success_timestamp = prometheus::Gauge::new(
            "loopwatch_config_last_reload_success_timestamp_seconds",
            "When the config was last applied (the start, or a successful reload).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(reload_success_timestamp.clone()))
            .expect("unique metric");

        Metrics {
            lease_takeovers,
            reload_successful,
            reload_success_timestamp,
            backlog_reporter: std::sync::atomic::AtomicBool::new(true),
            targets: RwLock::default(),
            api_requests: counter(
                "loopwatch_api_requests_total",
                "Requests to the Loops API by endpoint and HTTP status, or timeout/connect/decode.",
                &["endpoint", "code"],
            ),
            deliveries: counter(
                "loopwatch_deliveries_total",
                "Delivery attempts by sink and outcome.",
                &["sink", "outcome"],
            ),
            delivery_duration: histogram(
                "loopwatch_delivery_duration_seconds",
                "Time of one delivery attempt.",
                &["sink"],
                // Up to minutes: a `baseten_deploy` attempt can take that long.
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0, 600.0,
                ],
            ),
            pending: int_gauge(
                "loopwatch_deliveries_pending",
                "Deliveries waiting to be sent.",
                &["sink"],
            ),
            dead: int_gauge(
                "loopwatch_deliveries_dead",
                "Deliveries that gave up; replayable.",
                &["sink"],
            ),
            oldest_pending: gauge(
                "loopwatch_oldest_pending_delivery_age_seconds",
                "Age of the oldest pending delivery (0 when none).",
                &["sink"],
            ),
            deploys: int_gauge(
                "loopwatch_deploys",
                "Deploy pipelines by sink and stage (awaiting_approval, deploying, following, deployed, active, promoted, failed, rejected, expired, superseded, unknown).",
                &["sink", "stage"],
            ),
            deploy_to_active: histogram(
                "loopwatch_deploy_to_active_seconds",
                "Time from a checkpoint's completion to its deployment being ACTIVE.",
                &["sink"],
                vec![
                    30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0,
                    14400.0,
                ],
            ),
            deployments_deactivated: counter(
                "loopwatch_deployments_deactivated_total",
                "Deployments a baseten_deploy sink deactivated because a newer one is live.",
                &["sink"],
            ),
            sink_info: int_gauge(
                "loopwatch_sink_info",
                "Configured sinks, 1 each, by kind (webhook, exec, baseten_deploy).",
                &["sink", "kind"],
            ),
            store_errors: {
                let c = counter(
                    "loopwatch_store_errors_total",
                    "Failed store operations (the database unreachable, or a query error), by operation.",
                    &["op"],
                );
                for op in STORE_OPS {
                    c.with_label_values(&[op]);
                }
                c
            },
            targets_owned,
            api_budget,
            registry,
        }
    }

    /// Create every series a config implies, at zero.
    pub fn init_series(&self, cfg: &Config) {
        for t in &cfg.targets {
            self.target(&t.name);
        }
        // Only the configured sinks are described: a reload that removed (or re-kinded) a
        // sink leaves no stale `sink_info` series behind.
        self.sink_info.reset();
        for s in &cfg.sinks {
            let n = s.name.as_str();
            for o in DELIVERY_OUTCOMES {
                self.deliveries.with_label_values(&[n, o]);
            }
            self.delivery_duration.with_label_values(&[n]);
            self.pending.with_label_values(&[n]);
            self.dead.with_label_values(&[n]);
            self.oldest_pending.with_label_values(&[n]);
            self.sink_info.with_label_values(&[n, s.kind.name()]).set(1);
            if s.deploy().is_some() {
                for stage in crate::store::DeployStage::ALL {
                    self.deploys.with_label_values(&[n, stage.as_str()]);
                }
                self.deploy_to_active.with_label_values(&[n]);
                self.deployments_deactivated.with_label_values(&[n]);
            }
        }
        self.targets_owned.set(cfg.targets.len() as i64);
    }

    /// Record the outcome of applying a config (at start, and on each reload).
    pub fn config_applied(&self, ok: bool) {
        self.reload_successful.set(ok as i64);
        if ok {
            self.reload_success_timestamp
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Drop the series of a target no longer configured (a reload removed it).
    pub fn remove_target(&self, name: &str) {
        self.targets.write().expect("not poisoned").remove(name);
    }

    /// Whether this process exports the database-wide backlog figures (see the field).
    pub fn reports_backlog(&self) -> bool {
        self.backlog_reporter
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_reports_backlog(&self, on: bool) {
        self.backlog_reporter
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Count one request to the Loops API: `endpoint` is its route's label
    /// (`list`, `source`, `files`, `validate`, `deploy`), `code` its HTTP status or
    /// `timeout`, `connect`, `decode`.
    pub fn api_request(&self, endpoint: &str, code: &str) {
        self.api_requests.with_label_values(&[endpoint, code]).inc();
    }

    /// The series of one target (created at zero if the config did not name it).
    pub fn target(&self, name: &str) -> Arc<TargetMetrics> {
        if let Some(t) = self.targets.read().expect("not poisoned").get(name) {
            return t.clone();
        }
        self.targets
            .write()
            .expect("not poisoned")
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The Prometheus text exposition (format 0.0.4): the registry's families and the
    /// per-target ones, in name order as the registry alone would give them.
    pub fn render(&self) -> String {
        let targets = self.targets.read().expect("not poisoned");
        let mut out = String::with_capacity(4096 + targets.len() * 4096);
        let mut mine = TARGET_FAMILIES.iter().peekable();
        for family in self.registry.gather() {
            while let Some(f) = mine.next_if(|f| f.name < family.name()) {
                f.render(&targets, &mut out);
            }
            TextEncoder::new()
                .encode_utf8(std::slice::from_ref(&family), &mut out)
                .expect("text encoding cannot fail");
        }
        for f in mine {
            f.render(&targets, &mut out);
        }
        out
    }
}

const POLL_OUTCOMES: [PollOutcome; 3] = [
    PollOutcome::Success,
    PollOutcome::Error,
    PollOutcome::RateLimited,
];

/// The `outcome` label of `loopwatch_polls_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    Success,
    Error,
    RateLimited,
}

impl PollOutcome {
    pub fn label(self) -> &'static str {
        match self {
            PollOutcome::Success => "success",
            PollOutcome::Error => "error",
            PollOutcome::RateLimited => "rate_limited",
        }
    }
}

/// The `outcome` of `loopwatch_readiness_probes_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The checkpoint was found ready (and completes).
    Ready,
    /// Its files do not add up yet (or did not stay the same long enough).
    NotReady,
    /// A request failed (any error, `NOT_PRESIGNABLE` included): retried later.
    Error,
}

impl ProbeOutcome {
    pub const ALL: [ProbeOutcome; 3] = [
        ProbeOutcome::Ready,
        ProbeOutcome::NotReady,
        ProbeOutcome::Error,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProbeOutcome::Ready => "ready",
            ProbeOutcome::NotReady => "not_ready",
            ProbeOutcome::Error => "error",
        }
    }
}

const POLL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const SYNC_BUCKETS: &[f64] = &[
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Every per-target series of one target: a few hundred bytes of atomics.
pub struct TargetMetrics {
    polls: [AtomicU64; 3],
    poll_duration: Histogram,
    last_success: AtomicF64,
    /// By [`CheckpointTarget::label_index`], then [`SYNC_CLASSES`] order.
    checkpoints: [[AtomicI64; 4]; 3],
    latest_created: [AtomicF64; 3],
    /// By [`EventType::ALL`] order.
    events: [AtomicU64; EventType::ALL.len()],
    sync_duration: Histogram,
    fencing_rejections: AtomicU64,
    /// Checkpoints whose `created_at` lay past the horizon when first seen.
    created_ahead: AtomicU64,
    /// By [`ProbeOutcome::ALL`] order.
    probes: [AtomicU64; 3],
}

impl Default for TargetMetrics {
    fn default() -> Self {
        TargetMetrics {
            polls: Default::default(),
            poll_duration: Histogram::new(POLL_BUCKETS),
            last_success: AtomicF64::default(),
            checkpoints: Default::default(),
            latest_created: Default::default(),
            events: Default::default(),
            sync_duration: Histogram::new(SYNC_BUCKETS),
            fencing_rejections: AtomicU64::new(0),
            created_ahead: AtomicU64::new(0),
            probes: Default::default(),
        }
    }
}

impl TargetMetrics {
    pub fn poll(&self, outcome: PollOutcome) {
        self.polls[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn poll_duration(&self, seconds: f64) {
        self.poll_duration.observe(seconds);
    }

    pub fn last_success(&self, unix_seconds: f64) {
        self.last_success.set(unix_seconds);
    }

    pub fn event(&self, kind: EventType) {
        let i = EventType::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        self.events[i].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sync_duration(&self, seconds: f64) {
        self.sync_duration.observe(seconds);
    }

    pub fn probe(&self, outcome: ProbeOutcome) {
        self.probes[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint whose `created_at` lies more than a day past the daemon's clock.
    pub fn created_ahead(&self) {
        self.created_ahead.fetch_add(1, Ordering::Relaxed);
    }

    pub fn fencing_rejection(&self) {
        self.fencing_rejections.fetch_add(1, Ordering::Relaxed);
    }

    /// Set the per-status checkpoint gauges from the target's live checkpoints, each with
    /// the time it is ordered by (`crate::model::ordering_time`), when it has one.
    pub fn set_checkpoints(
        &self,
        live: impl Iterator<
            Item = (
                CheckpointTarget,
                SyncClass,
                Option<chrono::DateTime<chrono::Utc>>,
            ),
        >,
    ) {
        let mut counts = [[0i64; 4]; 3];
        let mut latest: [Option<f64>; 3] = [None; 3];
        for (ct, class, created) in live {
            let i = ct.label_index();
            let j = SYNC_CLASSES.iter().position(|c| *c == class).unwrap_or(3);
            counts[i][j] += 1;
            if let Some(t) = created {
                let ts = t.timestamp_millis() as f64 / 1000.0;
                latest[i] = Some(latest[i].map_or(ts, |l: f64| l.max(ts)));
            }
        }
        for i in 0..CheckpointTarget::LABELS.len() {
            for (gauge, count) in self.checkpoints[i].iter().zip(counts[i]) {
                gauge.store(count, Ordering::Relaxed);
            }
            if let Some(ts) = latest[i] {
                self.latest_created[i].set(ts);
            }
        }
    }
}

/// An f64 in an atomic, as the `prometheus` crate keeps its gauges.
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    fn add(&self, v: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + v).to_bits())
            });
    }
}

/// A Prometheus histogram: a count per bucket (`le`, inclusive; the last is +Inf) and a
/// sum. The exposed count is the sum of the buckets, so a scrape never sees them disagree.
struct Histogram {
    bounds: &'static [f64],
    counts: Box<[AtomicU64]>,
    sum: AtomicF64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicF64::default(),
        }
    }

    fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.add(v);
    }
}

/// What a sample's value is read from.
enum Sample {
    Polls(PollOutcome),
    PollDuration,
    LastSuccess,
    /// By [`CheckpointTarget::label_index`].
    Checkpoints(usize, SyncClass),
    LatestCreated(usize),
    Events(EventType),
    SyncDuration,
    FencingRejections,
    CreatedAhead,
    Probes(ProbeOutcome),
}

/// A per-target family: name, help, type, and its series per target in the order the
/// registry sorts them (by label values, labels in name order). `before` labels sort ahead
/// of `target`; `after` labels behind it.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    series: fn() -> Vec<Series>,
}

/// Labels sorting before `target`, labels after it, and the value.
type Series = (Labels, Labels, Sample);
type Labels = Vec<(&'static str, &'static str)>;

const TARGET_FAMILIES: [Family; 10] = [
    Family {
        name: "loopwatch_checkpoint_sync_duration_seconds",
        help: "Time from first sight to COMPLETE of a checkpoint.",
        kind: "histogram",
        series: || vec![(vec![], vec![], Sample::SyncDuration)],
    },
    Family {
        name: "loopwatch_checkpoints",
        help: "Checkpoints currently listed, by target, checkpoint target and sync status.",
        kind: "gauge",
        series: || {
            let mut by_label = SYNC_CLASSES.to_vec();
            by_label.sort_by_key(|c| c.label());
            checkpoint_target_labels()
                .flat_map(|(i, label)| {
                    by_label.iter().map(move |c| {
                        (
                            vec![("checkpoint_target", label), ("sync_status", c.label())],
                            vec![],
                            Sample::Checkpoints(i, *c),
                        )
                    })
                })
                .collect()
        },
    },
    Family {
        name: "loopwatch_created_at_ahead_total",
        help: "Checkpoints whose created_at lay more than a day past the daemon's clock when first seen: ordered as if created then (logged once each).",
        kind: "counter",
        series: || vec![(vec![], vec![], Sample::CreatedAhead)],
    },
    Family {
        name: "loopwatch_events_total",
        help: "Events detected, by target and type.",
        kind: "counter",
        series: || {
            let mut kinds = EventType::ALL.to_vec();
            kinds.sort_by_key(|k| k.as_str());
            kinds
                .into_iter()
                .map(|k| (vec![], vec![("type", k.as_str())], Sample::Events(k)))
                .collect()
        },
    },
    Family {
        name: "loopwatch_fencing_rejections_total",
        help: "Polls whose commit was refused because this replica no longer held the target's lease.",
        kind: "counter",
        series: || vec![(vec![], vec![], Sample::FencingRejections)],
    },
    Family {
        name: "loopwatch_last_successful_poll_timestamp_seconds",
        help: "Unix time of the last successful poll of a target.",
        kind: "gauge",
        series: || vec![(vec![], vec![], Sample::LastSuccess)],
    },
    Family {
        name: "loopwatch_latest_checkpoint_created_timestamp_seconds",
        help: "created_at of the newest checkpoint listed, as Unix time.",
        kind: "gauge",
        series: || {
            checkpoint_target_labels()
                .map(|(i, label)| {
                    (
                        vec![("checkpoint_target", label)],
                        vec![],
                        Sample::LatestCreated(i),
                    )
                })
                .collect()
        },
    },
    Family {
        name: "loopwatch_poll_duration_seconds",
        help: "Time to fetch, decode, diff and store one listing.",
        kind: "histogram",
        series: || vec![(vec![], vec![], Sample::PollDuration)],
    },
    Family {
        name: "loopwatch_polls_total",
        help: "Polls of the Loops API per target and outcome.",
        kind: "counter",
        series: || {
            let mut outcomes = POLL_OUTCOMES.to_vec();
            outcomes.sort_by_key(|o| o.label());
            outcomes
                .into_iter()
                .map(|o| (vec![("outcome", o.label())], vec![], Sample::Polls(o)))
                .collect()
        },
    },
    Family {
        name: "loopwatch_readiness_probes_total",
        help: "Readiness probes of checkpoints whose sync_status is null, by target and outcome.",
        kind: "counter",
        series: || {
            let mut outcomes = ProbeOutcome::ALL.to_vec();
            outcomes.sort_by_key(|o| o.label());
            outcomes
                .into_iter()
                .map(|o| (vec![("outcome", o.label())], vec![], Sample::Probes(o)))
                .collect()
        },
    },
];

/// The `checkpoint_target` labels with their index, in label order (as the registry
/// sorts series): other, sampler, trainer.
fn checkpoint_target_labels() -> impl Iterator<Item = (usize, &'static str)> {
    let mut labels: Vec<(usize, &'static str)> =
        CheckpointTarget::LABELS.into_iter().enumerate().collect();
    labels.sort_by_key(|(_, l)| *l);
    labels.into_iter()
}

impl Family {
    /// Append this family in the text format, exactly as `prometheus::TextEncoder` would.
    fn render(&self, targets: &BTreeMap<String, Arc<TargetMetrics>>, out: &mut String) {
        if targets.is_empty() {
            return;
        }
        let _ = writeln!(out, "# HELP {} {}", self.name, self.help);
        let _ = writeln!(out, "# TYPE {} {}", self.name, self.kind);
        let series = (self.series)();
        let line = |out: &mut String, suffix: &str, labels: &str, value: f64| {
            let _ = writeln!(out, "{}{suffix}{{{labels}}} {value}", self.name);
        };
        // Series whose labels sort before `target` vary slowest, as in the registry.
        let (outer, inner): (Vec<_>, Vec<_>) =
            series.iter().partition(|(before, _, _)| !before.is_empty());
        let groups: Vec<Vec<_>> = if outer.is_empty() {
            vec![inner]
        } else {
            outer.into_iter().map(|s| vec![s]).collect()
        };
        let mut labels = String::new();
        for group in &groups {
            for (name, t) in targets {
                for (before, after, sample) in group {
                    labels.clear();
                    for (k, v) in before {
                        let _ = write!(labels, "{k}=\"{}\",", escape(v));
                    }
                    let _ = write!(labels, "target=\"{}\"", escape(name));
                    for (k, v) in after {
                        let _ = write!(labels, ",{k}=\"{}\"", escape(v));
                    }
                    match sample {
                        Sample::PollDuration | Sample::SyncDuration => {
                            let h = match sample {
                                Sample::PollDuration => &t.poll_duration,
                                _ => &t.sync_duration,
                            };
                            let mut cumulative = 0;
                            for (i, bound) in h.bounds.iter().enumerate() {
                                cumulative += h.counts[i].load(Ordering::Relaxed);
                                line(
                                    out,
                                    "_bucket",
                                    &format!("{labels},le=\"{bound}\""),
                                    cumulative as f64,
                                );
                            }
                            cumulative += h.counts[h.bounds.len()].load(Ordering::Relaxed);
                            line(
                                out,
                                "_bucket",
                                &format!("{labels},le=\"+Inf\""),
                                cumulative as f64,
                            );
                            line(out, "_sum", &labels, h.sum.get());
                            line(out, "_count", &labels, cumulative as f64);
                        }
                        other => line(out, "", &labels, t.value(other)),
                    }
                }
            }
        }
    }
}

impl TargetMetrics {
    fn value(&self, sample: &Sample) -> f64 {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        match sample {
            Sample::Polls(o) => load(&self.polls[*o as usize]),
            Sample::LastSuccess => self.last_success.get(),
            Sample::Checkpoints(ct, c) => {
                let j = SYNC_CLASSES.iter().position(|x| x == c).unwrap_or(3);
                self.checkpoints[*ct][j].load(Ordering::Relaxed) as f64
            }
            Sample::LatestCreated(ct) => self.latest_created[*ct].get(),
            Sample::Events(k) => {
                let i = EventType::ALL.iter().position(|x| x == k).unwrap_or(0);
                load(&self.events[i])
            }
            Sample::FencingRejections => load(&self.fencing_rejections),
            Sample::CreatedAhead => load(&self.created_ahead),
            Sample::Probes(o) => load(&self.probes[*o as usize]),
            Sample::PollDuration | Sample::SyncDuration => f64::NAN,
        }
    }
}

/// Label values escaped as the text format requires.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\\', '\n', '"']) {
        v.replace('\\', "\\\\")
            .replace('\n', "\\n")
            .replace('"', "\\\"")
            .into()
    } else {
        v.into()
    }
}

/// The `prometheus` crate's process collector, except that `process_cpu_seconds_total`
/// keeps its fraction: the crate rounds it down to whole seconds (rust-prometheus #451),
/// which makes `rate()` read 0 for a daemon using a few percent of a core.
#[cfg(target_os = "linux")]
struct PreciseProcessCollector(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for PreciseProcessCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        if let Some(secs) = cpu_seconds() {
            for f in families
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
            {
                for m in f.mut_metric().iter_mut() {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(secs);
                    m.set_counter(c);
                }
            }
        }
        families
    }
}

/// utime + stime of this process from `/proc/self/stat`, in seconds (USER_HZ is 100 in
/// the userspace ABI of every Linux architecture).
#[cfg(target_os = "linux")]
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod target_tests {
    use super::*;
    use prometheus::Encoder;

    /// The compact per-target series render byte for byte what the `prometheus` crate's
    /// labelled vectors rendered before them, for the same observations.
    #[test]
    fn per_target_series_render_like_the_registry() {
        let reg = Registry::new();
        let counter = |n: &str, h: &str, l: &[&str]| {
            let c = IntCounterVec::new(Opts::new(n, h), l).unwrap();
            reg.register(Box::new(c.clone())).unwrap();
            c
        };
        let gauge = |n: &str, h: &str, l: &[&str]| {
            let g = GaugeVec::new(Opts::new(n, h), l).unwrap();
            reg.register(Box::new(g.clone())).unwrap();
            g
        };
        let hist = |n: &str, h: &str, b: &[f64]| {
            let v = HistogramVec::new(HistogramOpts::new(n, h).buckets(b.to_vec()), &["target"])
                .unwrap();
            reg.register(Box::new(v.clone())).unwrap();
            v
        };
        let f = &TARGET_FAMILIES;
        let sync = hist(f[0].name, f[0].help, SYNC_BUCKETS);
        let cks = IntGaugeVec::new(
            Opts::new(f[1].name, f[1].help),
            &["target", "checkpoint_target", "sync_status"],
        )
        .unwrap();
        reg.register(Box::new(cks.clone())).unwrap();
        let ahead = counter(f[2].name, f[2].help, &["target"]);
        let events = counter(f[3].name, f[3].help, &["target", "type"]);
        let fencing = counter(f[4].name, f[4].help, &["target"]);
        let last = gauge(f[5].name, f[5].help, &["target"]);
        let latest = gauge(f[6].name, f[6].help, &["target", "checkpoint_target"]);
        let poll = hist(f[7].name, f[7].help, POLL_BUCKETS);
        let polls = counter(f[8].name, f[8].help, &["target", "outcome"]);
        let probes = counter(f[9].name, f[9].help, &["target", "outcome"]);

        let m = Metrics::new();
        let names = ["qwen-b", "a \"quoted\" \\ name", "qwen-a"];
        for (i, n) in names.iter().enumerate() {
            // the old init_series
            for o in POLL_OUTCOMES {
                polls.with_label_values(&[n, o.label()]);
            }
            poll.with_label_values(&[n]);
            last.with_label_values(&[n]);
            sync.with_label_values(&[n]);
            for ct in CheckpointTarget::LABELS {
                for c in SYNC_CLASSES {
                    cks.with_label_values(&[n, ct, c.label()]);
                }
                latest.with_label_values(&[n, ct]);
            }
            for e in EventType::ALL {
                events.with_label_values(&[n, e.as_str()]);
            }
            fencing.with_label_values(&[n]);
            ahead.with_label_values(&[n]);
            for o in ProbeOutcome::ALL {
                probes.with_label_values(&[n, o.label()]);
            }
            let t = m.target(n);
            if i == 2 {
                continue; // created at zero, never used
            }
            for _ in 0..=i {
                polls.with_label_values(&[n, "success"]).inc();
                t.poll(PollOutcome::Success);
            }
            polls.with_label_values(&[n, "rate_limited"]).inc();
            t.poll(PollOutcome::RateLimited);
            probes.with_label_values(&[n, "error"]).inc();
            t.probe(ProbeOutcome::Error);
            for v in [0.004, 0.005, 0.3, 7.5, 99.0] {
                poll.with_label_values(&[n]).observe(v);
                t.poll_duration(v);
            }
            last.with_label_values(&[n]).set(1_800_000_000.123);
            t.last_success(1_800_000_000.123);
            events.with_label_values(&[n, "checkpoint.completed"]).inc();
            t.event(EventType::Completed);
            events.with_label_values(&[n, "checkpoint.deleted"]).inc();
            t.event(EventType::Deleted);
            sync.with_label_values(&[n]).observe(82.3);
            t.sync_duration(82.3);
            fencing.with_label_values(&[n]).inc();
            t.fencing_rejection();
            ahead.with_label_values(&[n]).inc();
            t.created_ahead();
            let live = [
                (
                    CheckpointTarget::Sampler,
                    SyncClass::Complete,
                    "2026-11-26T23:01:02.345Z",
                ),
                (
                    CheckpointTarget::Sampler,
                    SyncClass::Syncing,
                    "2026-11-26T23:05:00.000Z",
                ),
                (CheckpointTarget::Trainer, SyncClass::Other, "not a time"),
                (
                    CheckpointTarget::Other("draft".into()),
                    SyncClass::Complete,
                    "not a time either",
                ),
            ];
            t.set_checkpoints(
                (live.iter().cloned())
                    .map(|(ct, c, at)| (ct, c, crate::model::parse_created_at(at))),
            );
            let mut counts = std::collections::HashMap::new();
            for (ct, c, _) in &live {
                *counts.entry((ct.label(), c.label())).or_insert(0) += 1;
            }
            for ((ct, c), k) in counts {
                cks.with_label_values(&[n, ct, c]).set(k);
            }
            let newest = chrono::DateTime::parse_from_rfc3339(live[1].2).unwrap();
            latest
                .with_label_values(&[n, "sampler"])
                .set(newest.timestamp() as f64);
        }
        let mut want = Vec::new();
        TextEncoder::new().encode(&reg.gather(), &mut want).unwrap();
        let want = String::from_utf8(want).unwrap();
        let got: String = m
            .render()
            .lines()
            .filter(|l| f.iter().any(|f| l.contains(f.name)))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(got, want);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_seconds_keep_their_fraction() {
        let m = Metrics::new();
        // Burn CPU until the process has used a non-whole number of seconds.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds().is_some_and(|s| s.fract() == 0.0)
            || start.elapsed() < std::time::Duration::from_millis(50)
        {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        assert_ne!(x, 1);
        let text = m.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .expect("cpu metric");
        let v: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(v > 0.0 && v.fract() != 0.0, "{line}");
        assert!(text.contains("process_resident_memory_bytes"));
    }

    #[test]
    fn sink_info_describes_only_the_sinks_of_the_last_config() {
        let env = crate::config::Environment::from_pairs([("K", "key")]);
        let load = |sinks: &str| {
            let toml = format!(
                "[api]\napi_key_env = \"K\"\n[[targets]]\nname = \"t\"\nrun_id = \"r\"\n{sinks}"
            );
            crate::config::load_str(&toml, crate::config::FileFormat::Toml, "test", &env).unwrap()
        };
        let sink = |name: &str| {
            format!("[[sinks]]\nname = \"{name}\"\nkind = \"exec\"\ncommand = [\"true\"]\n")
        };
        let m = Metrics::new();
        m.init_series(&load(&format!("{}{}", sink("kept"), sink("gone"))));
        assert!(
            m.render()
                .contains(r#"loopwatch_sink_info{kind="exec",sink="gone"} 1"#)
        );
        m.init_series(&load(&sink("kept")));
        let text = m.render();
        assert!(
            text.contains(r#"loopwatch_sink_info{kind="exec",sink="kept"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"sink_info{kind="exec",sink="gone"}"#),
            "{text}"
        );
    }
}
