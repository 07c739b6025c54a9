//! When a target is polled next: `interval`, `syncing_interval` while a checkpoint is
//! pending, and with `poll.adaptive` the target's save cadence or a backoff after changes.
//! Pure functions of the state and the clock reading they are given.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::TargetConfig;

/// The rhythm in which a target's checkpoints appear: a training run saves every so many
/// steps, so its saves come at a near-constant period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    pub period: Duration,
    /// When the last save was first seen.
    pub last: DateTime<Utc>,
}

/// Saves this far apart or less are one save (a sampler and a trainer checkpoint saved
/// together may be first seen one poll apart), in multiples of `syncing_interval`.
const SAME_SAVE: u32 = 3;
/// Gaps between the last saves that must agree to make a cadence.
const CADENCE_GAPS: usize = 3;
/// How far each of those gaps may be from their median.
const CADENCE_TOLERANCE: f64 = 0.2;
/// Saves missed in a row after which a cadence is no longer expected (the run stopped).
const CADENCE_MISSES: i32 = 3;

/// The cadence of a target's saves, from when its checkpoints were first seen: the
/// median of the last [`CADENCE_GAPS`] gaps between saves, if every one of them is within
/// [`CADENCE_TOLERANCE`] of it and it is long enough (at least 4 `syncing_interval`) to
/// be worth predicting. `None` for irregular targets (a base model with many runs).
pub fn cadence(
    first_seen: impl Iterator<Item = DateTime<Utc>>,
    t: &TargetConfig,
) -> Option<Cadence> {
    let mut seen: Vec<DateTime<Utc>> = first_seen.collect();
    seen.sort_unstable();
    let same = t.syncing_interval * SAME_SAVE;
    let mut saves: Vec<DateTime<Utc>> = Vec::new();
    for s in seen {
        match saves.last() {
            Some(&l) if (s - l).to_std().unwrap_or_default() <= same => {}
            _ => saves.push(s),
        }
    }
    if saves.len() <= CADENCE_GAPS {
        return None;
    }
    let mut gaps: Vec<Duration> = saves[saves.len() - CADENCE_GAPS - 1..]
        .windows(2)
        .map(|w| (w[1] - w[0]).to_std().unwrap_or_default())
        .collect();
    gaps.sort_unstable();
    let period = gaps[CADENCE_GAPS / 2];
    let regular = gaps.iter().all(|g| {
        (g.as_secs_f64() - period.as_secs_f64()).abs() <= CADENCE_TOLERANCE * period.as_secs_f64()
    });
    (regular && period >= t.syncing_interval * 4).then(|| Cadence {
        period,
        last: *saves.last().expect("more than CADENCE_GAPS saves"),
    })
}

/// The wait before the next poll of a target whose last poll succeeded (before jitter).
///
/// `syncing_interval` while a checkpoint is pending. Otherwise `interval`, or with
/// `poll.adaptive`:
/// - if the target saves at a [`Cadence`]: `interval`, but `syncing_interval` from one
///   `syncing_interval` before the next save is due until it appears (or a quarter period
///   after it was due; after [`CADENCE_MISSES`] missed saves the run is taken as stopped);
/// - else a backoff from `syncing_interval` doubling with every poll that changed nothing,
///   up to `interval`: a target that just changed is watched closely.
///
/// A quiet target never costs more than `interval`.
pub fn next_wait(
    pending: bool,
    unchanged_polls: u32,
    cadence: Option<&Cadence>,
    now: DateTime<Utc>,
    t: &TargetConfig,
    adaptive: bool,
) -> Duration {
    if pending {
        return t.syncing_interval;
    }
    if !adaptive {
        return t.interval;
    }
    if let Some(c) = cadence {
        let lead = chrono::Duration::from_std(t.syncing_interval).unwrap_or_default();
        let period = chrono::Duration::from_std(c.period).unwrap_or_default();
        let grace = period / 4;
        for k in 1..=CADENCE_MISSES {
            let due = c.last + period * k;
            if now > due + grace {
                continue;
            }
            if now >= due - lead {
                return t.syncing_interval;
            }
            let until = (due - lead - now).to_std().unwrap_or_default();
            return until
                .min(t.interval)
                .max(t.syncing_interval.min(Duration::from_secs(1)));
        }
    }
    let factor = 1u32 << unchanged_polls.min(20);
    t.syncing_interval
        .saturating_mul(factor)
        .clamp(t.syncing_interval.min(t.interval), t.interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Filter;

    fn target() -> TargetConfig {
        TargetConfig {
            name: "t".into(),
            filter: Filter::RunId("r".into()),
            checkpoint_targets: None,
            interval: Duration::from_secs(60),
            syncing_interval: Duration::from_secs(10),
        }
    }

    #[test]
    fn pending_targets_poll_at_syncing_interval() {
        assert_eq!(
            next_wait(true, 9, None, now(), &target(), false),
            Duration::from_secs(10)
        );
        assert_eq!(
            next_wait(true, 9, None, now(), &target(), true),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn fixed_polling_uses_interval() {
        assert_eq!(
            next_wait(false, 0, None, now(), &target(), false),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn adaptive_polling_backs_off_from_syncing_interval_to_interval() {
        let waits: Vec<u64> = (0..6)
            .map(|n| next_wait(false, n, None, now(), &target(), true).as_secs())
            .collect();
        assert_eq!(waits, [10, 20, 40, 60, 60, 60]);
        assert_eq!(
            next_wait(false, u32::MAX, None, now(), &target(), true),
            Duration::from_secs(60)
        );
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn at(s: i64) -> DateTime<Utc> {
        now() + chrono::Duration::seconds(s)
    }

    /// First-seen times of checkpoints, in seconds from `now()`.
    fn learn(secs: &[i64]) -> Option<Cadence> {
        cadence(secs.iter().map(|&s| at(s)), &target())
    }

    #[test]
    fn a_run_saving_every_ten_minutes_has_a_cadence() {
        // Sampler and trainer pairs, seen up to 20 s apart, discovery off by up to 60 s.
        let c = learn(&[0, 0, 640, 655, 1190, 1200, 1820, 1800, 2400]).unwrap();
        assert_eq!(c.period, Duration::from_secs(600));
        assert_eq!(c.last, at(2400));
    }

    #[test]
    fn irregular_few_or_fast_saves_have_no_cadence() {
        assert_eq!(learn(&[0, 600, 1200]), None, "three saves are two gaps");
        assert_eq!(learn(&[0, 600, 1200, 2400]), None, "a gap twice the others");
        assert_eq!(
            learn(&[0, 30, 60, 90, 120]),
            None,
            "one save (3 x syncing_interval)"
        );
        assert_eq!(
            learn(&[0, 35, 70, 105, 140]),
            None,
            "faster than 4 x syncing_interval"
        );
        assert_eq!(learn(&[]), None);
    }

    #[test]
    fn adaptive_polling_with_a_cadence_watches_closely_only_around_the_next_save() {
        let c = learn(&[0, 600, 1200, 1800]).unwrap();
        let wait = |t: i64| next_wait(false, 5, Some(&c), at(t), &target(), true).as_secs();
        // Long before the next save (due at 2400): interval, not the backoff.
        assert_eq!(wait(1801), 60);
        // Never past the window's start (2390).
        assert_eq!(wait(2350), 40);
        // From one syncing_interval before it is due to a quarter period after.
        assert_eq!(wait(2390), 10);
        assert_eq!(wait(2400 + 150), 10);
        // A missed save: wait for the next one (due at 3000).
        assert_eq!(wait(2400 + 151), 60);
        assert_eq!(wait(2960), 30);
        // After three missed saves the run is taken as stopped: the plain backoff.
        assert_eq!(wait(1800 + 3 * 600 + 151), 60);
        assert_eq!(
            next_wait(false, 0, Some(&c), at(4000), &target(), true),
            Duration::from_secs(10),
            "a target that just changed backs off as before"
        );
        // A pending checkpoint always wins; adaptive off ignores the cadence.
        assert_eq!(
            next_wait(true, 5, Some(&c), at(1801), &target(), true).as_secs(),
            10
        );
        assert_eq!(
            next_wait(false, 5, Some(&c), at(2395), &target(), false).as_secs(),
            60
        );
    }
}
