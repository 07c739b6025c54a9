//! Every metric handle in one struct, and the only place metric names appear
//! (interface.md §7). Labels come from config names and small enums, never ids or URLs.
//! Series for every configured target and sink are created at start, zero-valued, so
//! dashboards and alerts never see gaps.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::Config;
use crate::model::{CheckpointTarget, EventType, SyncClass};

pub struct Metrics {
    pub registry: Registry,
    pub polls: IntCounterVec,
    pub poll_duration: HistogramVec,
    pub api_requests: IntCounterVec,
    pub last_success: GaugeVec,
    pub checkpoints: IntGaugeVec,
    pub latest_created: GaugeVec,
    pub events: IntCounterVec,
    pub sync_duration: HistogramVec,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub pending: IntGaugeVec,
    pub dead: IntGaugeVec,
    pub oldest_pending: GaugeVec,
    pub targets_owned: IntGauge,
    pub lease_takeovers: prometheus::IntCounter,
    pub fencing_rejections: IntCounterVec,
}

const POLL_OUTCOMES: [&str; 3] = ["success", "error", "rate_limited"];
const DELIVERY_OUTCOMES: [&str; 3] = ["success", "retry", "dead"];
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

        Metrics {
            lease_takeovers,
            fencing_rejections: counter(
                "loopwatch_fencing_rejections_total",
                "Polls whose commit was refused because this replica no longer held the target's lease.",
                &["target"],
            ),
            polls: counter(
                "loopwatch_polls_total",
                "Polls of the Loops API per target and outcome.",
                &["target", "outcome"],
            ),
            poll_duration: histogram(
                "loopwatch_poll_duration_seconds",
                "Time to fetch, decode, diff and store one listing.",
                &["target"],
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            api_requests: counter(
                "loopwatch_api_requests_total",
                "Requests to the Loops API by HTTP status, or timeout/connect/decode.",
                &["code"],
            ),
            last_success: gauge(
                "loopwatch_last_successful_poll_timestamp_seconds",
                "Unix time of the last successful poll of a target.",
                &["target"],
            ),
            checkpoints: int_gauge(
                "loopwatch_checkpoints",
                "Checkpoints currently listed, by target, checkpoint target and sync status.",
                &["target", "checkpoint_target", "sync_status"],
            ),
            latest_created: gauge(
                "loopwatch_latest_checkpoint_created_timestamp_seconds",
                "created_at of the newest checkpoint listed, as Unix time.",
                &["target", "checkpoint_target"],
            ),
            events: counter(
                "loopwatch_events_total",
                "Events detected, by target and type.",
                &["target", "type"],
            ),
            sync_duration: histogram(
                "loopwatch_checkpoint_sync_duration_seconds",
                "Time from first sight to COMPLETE of a checkpoint.",
                &["target"],
                vec![
                    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                    14400.0,
                ],
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
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
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
            targets_owned,
            registry,
        }
    }

    /// Create every series a config implies, at zero.
    pub fn init_series(&self, cfg: &Config) {
        for t in &cfg.targets {
            let n = t.name.as_str();
            for o in POLL_OUTCOMES {
                self.polls.with_label_values(&[n, o]);
            }
            self.poll_duration.with_label_values(&[n]);
            self.last_success.with_label_values(&[n]);
            self.sync_duration.with_label_values(&[n]);
            for ct in CheckpointTarget::ALL {
                for s in SYNC_CLASSES {
                    self.checkpoints
                        .with_label_values(&[n, ct.as_str(), s.label()]);
                }
                self.latest_created.with_label_values(&[n, ct.as_str()]);
            }
            for e in EventType::ALL {
                self.events.with_label_values(&[n, e.as_str()]);
            }
            self.fencing_rejections.with_label_values(&[n]);
        }
        for s in &cfg.sinks {
            let n = s.name.as_str();
            for o in DELIVERY_OUTCOMES {
                self.deliveries.with_label_values(&[n, o]);
            }
            self.delivery_duration.with_label_values(&[n]);
            self.pending.with_label_values(&[n]);
            self.dead.with_label_values(&[n]);
            self.oldest_pending.with_label_values(&[n]);
        }
        self.targets_owned.set(cfg.targets.len() as i64);
    }

    /// Set the per-status checkpoint gauges of one target from its live checkpoints.
    pub fn set_checkpoints<'a>(
        &self,
        target: &str,
        live: impl Iterator<Item = (CheckpointTarget, SyncClass, &'a str)>,
    ) {
        let mut counts = [[0i64; 4]; 2];
        let mut latest: [Option<f64>; 2] = [None, None];
        for (ct, class, created) in live {
            let i = ct as usize;
            let j = SYNC_CLASSES.iter().position(|c| *c == class).unwrap_or(3);
            counts[i][j] += 1;
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(created) {
                let ts = t.timestamp_millis() as f64 / 1000.0;
                latest[i] = Some(latest[i].map_or(ts, |l: f64| l.max(ts)));
            }
        }
        for ct in CheckpointTarget::ALL {
            let i = ct as usize;
            for (j, s) in SYNC_CLASSES.iter().enumerate() {
                self.checkpoints
                    .with_label_values(&[target, ct.as_str(), s.label()])
                    .set(counts[i][j]);
            }
            if let Some(ts) = latest[i] {
                self.latest_created
                    .with_label_values(&[target, ct.as_str()])
                    .set(ts);
            }
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
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
}
