//! adaptive: API calls and detection latency over a realistic day, in virtual time.
//!
//! One target watches one training run for 24 hours. The run trains from 01:00 to 17:00
//! and saves every 10 minutes a sampler and a trainer checkpoint; each appears SYNCING and
//! becomes COMPLETE after 30 s to 4 min (uniform, seeded). Each policy polls the run; a
//! poll sees exactly the checkpoints saved by then, with their status at that instant. A
//! completion is detected by the first poll at or after it, an appearance likewise.
//!
//! Policies: loopwatch's scheduling, the daemon's own [`next_wait`] with +-10% jitter (the
//! default `interval` 60 s and `syncing_interval` 10 s), with `poll.adaptive` off and on;
//! and polling at one fixed interval chosen to spend the same number of calls as each of
//! them (the fair comparison: same API budget, where do the calls go). Every figure is
//! the median over 5 seeds; the day is simulated, so the figures do not depend on the
//! machine.
//!
//! `cargo bench --bench adaptive`

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use loopwatch::config::{Filter, TargetConfig};
use loopwatch::poller::{cadence, next_wait};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use support::{median, percentile, table};

const DAY: f64 = 86_400.0;
const TRAIN_FROM: f64 = 3_600.0;
const TRAIN_UNTIL: f64 = 17.0 * 3_600.0;
const SAVE_EVERY: f64 = 600.0;
const JITTER: f64 = 0.1;
const SEEDS: u64 = 5;

/// One checkpoint of the day: when it appears (SYNCING) and when it becomes COMPLETE.
#[derive(Clone, Copy)]
struct Ckpt {
    appears: f64,
    completes: f64,
}

fn day(rng: &mut StdRng) -> Vec<Ckpt> {
    let mut out = Vec::new();
    let mut t = TRAIN_FROM + SAVE_EVERY;
    while t <= TRAIN_UNTIL {
        for _ in 0..2 {
            out.push(Ckpt {
                appears: t,
                completes: t + rng.random_range(30.0..=240.0),
            });
        }
        t += SAVE_EVERY;
    }
    out
}

#[derive(Clone, Copy, PartialEq)]
enum Policy {
    Loopwatch { adaptive: bool },
    Fixed(f64),
}

/// What one policy did over one day.
struct Outcome {
    calls: usize,
    calls_training: usize,
    /// Completion -> the poll that saw it, seconds, one per checkpoint.
    completed: Vec<f64>,
    /// Appearance -> the poll that saw it.
    discovered: Vec<f64>,
}

fn simulate(policy: Policy, ckpts: &[Ckpt], rng: &mut StdRng) -> Outcome {
    let target = TargetConfig {
        name: "run".into(),
        filter: Filter::RunId("run-1".into()),
        checkpoint_targets: None,
        interval: Duration::from_secs(60),
        syncing_interval: Duration::from_secs(10),
    };
    let clock =
        |t: f64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds((t * 1e3) as i64);
    let mut polls = Vec::new();
    // Start at a random phase, as a daemon started at any moment would.
    let mut t = rng.random_range(0.0..60.0);
    let mut seen: (usize, usize) = (0, 0); // (appeared, completed) at the last poll
    let mut first_seen: Vec<DateTime<Utc>> = Vec::new();
    let mut unchanged = 0u32;
    let mut pace = None;
    while t < DAY {
        polls.push(t);
        let appeared = ckpts.iter().filter(|c| c.appears <= t).count();
        let completed = ckpts.iter().filter(|c| c.completes <= t).count();
        let changed = (appeared, completed) != seen;
        first_seen.resize(appeared, clock(t));
        seen = (appeared, completed);
        unchanged = if changed { 0 } else { unchanged + 1 };
        let wait = match policy {
            Policy::Loopwatch { adaptive } => {
                // As the poller: the cadence is learned again after every change.
                if adaptive && changed {
                    pace = cadence(first_seen.iter().copied(), &target);
                }
                let pending = appeared > completed;
                let w = next_wait(
                    pending,
                    unchanged,
                    pace.as_ref(),
                    clock(t),
                    &target,
                    adaptive,
                );
                w.as_secs_f64() * (1.0 + rng.random_range(-JITTER..=JITTER))
            }
            Policy::Fixed(every) => every,
        };
        t += wait;
    }
    let next_poll = |at: f64| {
        let i = polls.partition_point(|&p| p < at);
        polls.get(i).map(|p| p - at)
    };
    Outcome {
        calls: polls.len(),
        calls_training: polls
            .iter()
            .filter(|&&p| (TRAIN_FROM..TRAIN_UNTIL + SAVE_EVERY).contains(&p))
            .count(),
        completed: ckpts
            .iter()
            .filter_map(|c| next_poll(c.completes))
            .collect(),
        discovered: ckpts.iter().filter_map(|c| next_poll(c.appears)).collect(),
    }
}

/// Medians over the seeds of: calls/day, calls/hour, calls/hour training, calls/hour idle,
/// completion p50/p99/max, discovery p50/p99.
fn figures(policy: Policy) -> [f64; 9] {
    let mut per_seed: Vec<[f64; 9]> = Vec::new();
    for seed in 0..SEEDS {
        let mut rng = StdRng::seed_from_u64(seed);
        let ckpts = day(&mut rng);
        let o = simulate(policy, &ckpts, &mut rng);
        let training_h = (TRAIN_UNTIL + SAVE_EVERY - TRAIN_FROM) / 3_600.0;
        per_seed.push([
            o.calls as f64,
            o.calls as f64 / 24.0,
            o.calls_training as f64 / training_h,
            (o.calls - o.calls_training) as f64 / (24.0 - training_h),
            percentile(&o.completed, 50.0),
            percentile(&o.completed, 99.0),
            o.completed.iter().cloned().fold(0.0, f64::max),
            percentile(&o.discovered, 50.0),
            percentile(&o.discovered, 99.0),
        ]);
    }
    std::array::from_fn(|i| median(&per_seed.iter().map(|f| f[i]).collect::<Vec<_>>()))
}

fn main() {
    if support::opts().is_none() {
        return;
    }
    println!(
        "adaptive: one run saving 2 checkpoints every 10 min from 01:00 to 17:00 (192 checkpoints), \
         each SYNCING 30 s - 4 min; 24 h in virtual time; medians of {SEEDS} seeds"
    );
    let mut rows = Vec::new();
    let mut row = |name: String, f: [f64; 9]| {
        rows.push(vec![
            name,
            format!("{:.0}", f[0]),
            format!("{:.0}", f[1]),
            format!("{:.0}", f[2]),
            format!("{:.0}", f[3]),
            format!("{:.1}", f[4]),
            format!("{:.1}", f[5]),
            format!("{:.1}", f[6]),
            format!("{:.1}", f[7]),
            format!("{:.1}", f[8]),
        ]);
    };
    for adaptive in [false, true] {
        let lw = figures(Policy::Loopwatch { adaptive });
        let name = if adaptive {
            "loopwatch, poll.adaptive = true"
        } else {
            "loopwatch, poll.adaptive = false (default)"
        };
        row(name.into(), lw);
        // The same number of calls, spread evenly over the day.
        let every = DAY / lw[0];
        row(
            format!("fixed every {every:.1} s (same calls)"),
            figures(Policy::Fixed(every)),
        );
    }
    for every in [10.0, 60.0] {
        row(
            format!("fixed every {every:.0} s"),
            figures(Policy::Fixed(every)),
        );
    }
    table(
        &[
            "policy",
            "calls/day",
            "calls/h",
            "calls/h training",
            "calls/h idle",
            "completed p50 s",
            "completed p99 s",
            "completed max s",
            "discovered p50 s",
            "discovered p99 s",
        ],
        &rows,
    );
}
