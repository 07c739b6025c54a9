//! `poll.adaptive` through the real binary: the poller learns a run's save cadence from
//! the state it commits (the rules themselves are unit tests of `poller::cadence` and
//! `poller::next_wait`).

mod common;

use std::time::Duration;

use common::{Env, QWEN, wait_for};

const T: Duration = Duration::from_secs(30);

/// The period the daemon logged when it learned the target's cadence, if it did.
fn learned_period(log: &str) -> Option<f64> {
    let line = log.lines().find(|l| l.contains("save cadence learned"))?;
    let v = line.split("period_s=").nth(1)?;
    v.split_whitespace().next()?.parse().ok()
}

#[tokio::test]
async fn a_run_saving_at_a_steady_cadence_is_learned() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-1", "sampler", "step-0", Some("COMPLETE"));
    // Before a cadence is known a save is seen within `interval` (250 ms, an eighth of the
    // 2 s period below), so the gaps between first sightings agree within the 20% rule.
    let cfg = env.write_config(&format!("{QWEN}interval = \"250ms\"\n"));
    let d = env.spawn_daemon_env(&cfg, &[("LOOPWATCH__POLL__ADAPTIVE", "true")]);
    d.ready().await;
    assert_eq!(
        learned_period(&d.log_text()),
        None,
        "one save is no cadence"
    );
    // The training run: a save every 2 s (this loop is the run's clock).
    let period = Duration::from_secs(2);
    for step in 1..=5 {
        tokio::time::sleep(period).await; // the run's saves in real time: under test
        h.add_checkpoint(
            "run-1",
            "sampler",
            &format!("step-{step}"),
            Some("COMPLETE"),
        );
    }
    let learned = wait_for("a cadence learned from saves every 2 s", T, || {
        learned_period(&d.log_text())
    })
    .await;
    assert!(
        (1.6..=2.4).contains(&learned),
        "learned a period of {learned} s for saves every 2 s"
    );
}
