//! The process's own liveness, end to end (the real binary): every target loop and sink
//! worker has its own heartbeat, `/healthz` names one that died (a panic, logged with
//! where it happened), and heartbeats run on the monotonic clock, so a step of the
//! system time fails nothing (the wall clock stepped for real, by libfaketime).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Env, http_get, never_within, targets, wait_for};
use loopwatch::sim::Route;

const T: Duration = Duration::from_secs(30);

/// A panic in one target's loop: `/healthz` fails at once naming it (not a minute later,
/// and not as a shared "poller"), the log has the panic's location, and the other
/// target's loop goes on polling.
#[tokio::test]
async fn healthz_names_the_loop_that_panicked() {
    let env = Env::new().await;
    let cfg = env.write_config(&targets(2));
    let d = env.spawn_daemon_env(&cfg, &[("LOOPWATCH_TEST_PANIC_IN", "target t1")]);
    let addr = d.addr().await;
    let healthz = format!("http://{addr}/healthz");
    let mut body = String::new();
    let stopped = common::until(T, Duration::from_millis(20), async || {
        let (code, text) = http_get(&healthz).await;
        body = text;
        code == 503
    })
    .await;
    assert!(stopped, "/healthz never failed: {}", d.log_text());
    assert!(
        body.contains("target t1 stopped: panicked: LOOPWATCH_TEST_PANIC_IN"),
        "{body}"
    );
    assert!(!body.contains("target t0"), "{body}");
    // The panic hook logged where it happened, as one line.
    let log = wait_for("the panic's log line", T, || {
        let log = d.log_text();
        log.contains("location=src/health.rs:").then_some(log)
    })
    .await;
    assert!(log.contains("a loop panicked"), "{log}");
    // The other loop lives on: run-0 is still listed, again and again.
    let h = env.sim.handle();
    let before = h.requests_to(Route::Checkpoints);
    wait_for("more polls of t0", T, || {
        (h.requests_to(Route::Checkpoints) >= before + 3).then_some(())
    })
    .await;
}

/// libfaketime, where it is installed (`apt-get install faketime`; scripts/test installs
/// it as root).
fn libfaketime() -> Option<&'static str> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
}

/// The system time jumps two hours forward, then four back (NTP stepping a bad clock, an
/// operator's `date -s`) under a running daemon: `/healthz` stays 200 throughout while
/// the daemon goes on polling. Heartbeats read the monotonic clock, which the step leaves
/// alone (libfaketime fakes only the wall clock here, as a real step does); measured on
/// the wall clock, every loop would read as silent for two hours.
#[tokio::test]
async fn a_wall_clock_step_does_not_fail_healthz() {
    let Some(lib) = libfaketime() else {
        eprintln!("SKIPPED: libfaketime is not installed (apt-get install faketime)");
        return;
    };
    let env = Env::new().await;
    let cfg = env.write_config(&targets(1));
    let offset = env.dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let vars = [
        ("LD_PRELOAD", lib),
        ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
        ("FAKETIME_NO_CACHE", "1"),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
    ];
    let d = env.spawn_daemon_env(&cfg, &vars);
    let addr = d.ready().await;
    let healthz = format!("http://{addr}/healthz");
    let h = env.sim.handle();
    for step in ["+2h", "-2h"] {
        std::fs::write(&offset, format!("{step}\n")).unwrap();
        let before = h.requests_to(Route::Checkpoints);
        never_within(
            &format!("/healthz failed after a wall-clock step of {step}"),
            async || http_get(&healthz).await.0 != 200,
            "five more polls",
            T,
            async || h.requests_to(Route::Checkpoints) >= before + 5,
        )
        .await;
    }
    let log = d.log_text();
    assert!(!log.contains("silent for"), "{log}");
}
