//! The per-target series: compact slots per target ([`TargetMetrics`]: atomics and
//! fixed-bucket histograms) and their hand-written renderer, which writes the text
//! exposition exactly as the `prometheus` crate's registry would (families in name
//! order, series by label values), so `Metrics::render` can interleave both. Through the
//! crate's labelled vectors each series holds a copy of its descriptor and label pairs,
//! ~15 KiB per target, 150 MiB for 10,000 targets; here a target costs its slots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::{POLL_OUTCOMES, PollOutcome, ProbeOutcome, SYNC_CLASSES};
use crate::model::{CheckpointTarget, EventType, SyncClass};

pub(super) const POLL_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
pub(super) const SYNC_BUCKETS: &[f64] = &[
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

    /// Polls of this target so far that ended with `outcome`.
    pub fn polls(&self, outcome: PollOutcome) -> u64 {
        self.polls[outcome as usize].load(Ordering::Relaxed)
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
pub(super) struct Family {
    pub(super) name: &'static str,
    pub(super) help: &'static str,
    kind: &'static str,
    series: fn() -> Vec<Series>,
}

/// Labels sorting before `target`, labels after it, and the value.
type Series = (Labels, Labels, Sample);
type Labels = Vec<(&'static str, &'static str)>;

pub(super) const TARGET_FAMILIES: [Family; 10] = [
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
    pub(super) fn render(&self, targets: &BTreeMap<String, Arc<TargetMetrics>>, out: &mut String) {
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
