//! Every metric handle in one struct, and the only place metric names appear
//! (docs/metrics.md lists them). Labels come from config names and small enums, never ids or URLs.
//! Series for every configured target and sink are created at start, zero-valued, so
//! dashboards and alerts never see gaps.
//!
//! The per-target series live in compact slots ([`TargetMetrics`]) rendered straight to
//! text by `metrics/targets.rs` (their names are there); the rest are the `prometheus`
//! crate's, in [`Metrics::registry`].

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::config::Config;
use crate::model::SyncClass;

mod targets;
use targets::TARGET_FAMILIES;
pub use targets::TargetMetrics;

pub struct Metrics {
    pub registry: Registry,
    /// The labelled families, kept to describe those without a series yet (a deploy
    /// family with no deploy sink): the registry's `gather` leaves them out.
    families: Vec<Box<dyn prometheus::core::Collector>>,
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
    /// The soonest approval deadline of a sink's waiting deploys (Unix seconds, 0 when
    /// none waits); on the backlog reporter only, as `deploys`.
    pub approval_deadline: GaugeVec,
    /// 1 per configured sink, by kind: lets dashboards and alerts select deploy sinks.
    pub sink_info: IntGaugeVec,
    pub targets_owned: IntGauge,
    /// `loopwatch_api_budget_requests_per_second`.
    pub api_budget: prometheus::Gauge,
    pub lease_takeovers: prometheus::IntCounter,
    /// Lease rounds that found another live process heartbeating under this replica's id.
    pub replica_id_conflicts: prometheus::IntCounter,
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
        let families = std::cell::RefCell::new(Vec::<Box<dyn prometheus::core::Collector>>::new());
        let register = |c: Box<dyn prometheus::core::Collector>, copy| {
            families.borrow_mut().push(copy);
            registry.register(c).expect("unique metric");
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(c.clone()), Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(g.clone()), Box::new(g.clone()));
            g
        };
        let int_gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            register(Box::new(g.clone()), Box::new(g.clone()));
            g
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                .expect("valid metric");
            register(Box::new(h.clone()), Box::new(h.clone()));
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

        let replica_id_conflicts = prometheus::IntCounter::new(
            "loopwatch_replica_id_conflicts_total",
            "Lease rounds that found another live process heartbeating under this replica's store.replica_id (both poll the same targets: give each replica its own id).",
        )
        .expect("valid metric");
        registry
            .register(Box::new(replica_id_conflicts.clone()))
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

        let mut metrics = Metrics {
            lease_takeovers,
            replica_id_conflicts,
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
            approval_deadline: gauge(
                "loopwatch_deploy_approval_deadline_timestamp_seconds",
                "The soonest approval_deadline among a deploy sink's pipelines awaiting approval, as a Unix time (0 when none waits).",
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
            registry: registry.clone(),
            families: Vec::new(),
        };
        metrics.families = families.take();
        metrics
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
                self.approval_deadline.with_label_values(&[n]);
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
    /// A family without a series yet is described (`# HELP`, `# TYPE`) with no samples, so
    /// every documented name is on the page from the start.
    pub fn render(&self) -> String {
        let targets = self.targets.read().expect("not poisoned");
        let mut out = String::with_capacity(4096 + targets.len() * 4096);
        let mut mine = TARGET_FAMILIES.iter().peekable();
        let mut families = self.registry.gather();
        let gathered: std::collections::HashSet<String> =
            families.iter().map(|f| f.name().to_string()).collect();
        for c in &self.families {
            families.extend(
                c.collect()
                    .into_iter()
                    .filter(|f| f.get_metric().is_empty() && !gathered.contains(f.name())),
            );
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        for family in families {
            while let Some(f) = mine.next_if(|f| f.name < family.name()) {
                f.render(&targets, &mut out);
            }
            if family.get_metric().is_empty() {
                let kind = match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => "counter",
                    prometheus::proto::MetricType::GAUGE => "gauge",
                    prometheus::proto::MetricType::HISTOGRAM => "histogram",
                    prometheus::proto::MetricType::SUMMARY => "summary",
                    prometheus::proto::MetricType::UNTYPED => "untyped",
                };
                let help = family.help().replace('\\', "\\\\").replace('\n', "\\n");
                let name = family.name();
                out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
                continue;
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
    use super::targets::{POLL_BUCKETS, SYNC_BUCKETS};
    use super::*;
    use crate::model::{CheckpointTarget, EventType};
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

#[cfg(test)]
mod render_tests {
    use super::*;

    /// Every family is named on the page before it has a series (a deploy family without a
    /// deploy sink, the API counter before the first request), once, in name order, and
    /// one with series is not described twice.
    #[test]
    fn families_without_series_are_described_once() {
        let m = Metrics::new();
        m.deliveries.with_label_values(&["hook", "success"]).inc();
        let text = m.render();
        for (name, kind) in [
            ("loopwatch_deploys", "gauge"),
            ("loopwatch_deploy_to_active_seconds", "histogram"),
            ("loopwatch_deployments_deactivated_total", "counter"),
            ("loopwatch_api_requests_total", "counter"),
            ("loopwatch_deliveries_total", "counter"),
        ] {
            let typed = format!("# TYPE {name} {kind}\n");
            assert_eq!(text.matches(&typed).count(), 1, "{name}\n{text}");
            assert_eq!(
                text.matches(&format!("# HELP {name} ")).count(),
                1,
                "{name}"
            );
        }
        assert!(!text.contains("loopwatch_deploys{"), "{text}");
        assert!(text.contains("loopwatch_deliveries_total{outcome=\"success\",sink=\"hook\"} 1"));
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "families in name order, each once");
    }
}
