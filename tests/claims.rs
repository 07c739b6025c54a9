//! Claims that cannot lapse under a live attempt (docs/reliability.md): an exec sink
//! whose command runs close to its long `timeout`, with deliveries claimed ahead waiting
//! for a slot. Before claims were renewed, a delivery that waited one attempt for its
//! slot and then ran one lost its claim (`timeout + 30 s`) mid-attempt and was claimed
//! and run again: two completions, three runs. Each test counts the runs the command
//! itself recorded (one line per start), on SQLite and on two PostgreSQL replicas.
//!
//! These run for about a minute and a quarter: the bug needs attempts longer than the
//! claim's 30 s margin.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::{Env, QWEN, edit, pg, set_store_url, wait_for};

/// A command's run, then the sink's `timeout`: the attempt runs 36 s of a 40 s timeout.
const RUN: &str = "36";
const TIMEOUT: &str = "40s";
const T: Duration = Duration::from_secs(240);

/// An exec sink whose command appends its event id to `log` at start, then runs [`RUN`] s.
fn slow_exec_sink(log: &Path, concurrency: usize) -> String {
    let script = format!(
        "echo \"$LOOPWATCH_EVENT_ID\" >> {}; sleep {RUN}",
        log.display()
    );
    format!(
        "[[sinks]]\nname = \"slow\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\nevents = [\"checkpoint.completed\"]\ntimeout = \"{TIMEOUT}\"\nconcurrency = {concurrency}\nretry_schedule = [\"1s\"]\n"
    )
}

/// How many times each event id was run.
fn runs(log: &Path) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for id in std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
    {
        *out.entry(id.to_string()).or_default() += 1;
    }
    out
}

/// Complete `n` checkpoints of run-1 and wait until every delivery is delivered; then
/// every event must have run exactly once.
async fn every_event_runs_once(env: &Env, cfg: &Path, log: &Path, n: usize) {
    let h = env.sim.handle();
    let ids: Vec<String> = (0..n)
        .map(|i| h.add_checkpoint("run-1", "sampler", &format!("step-{i}"), Some("SYNCING")))
        .collect();
    for id in &ids {
        h.set_status(id, Some("COMPLETE"));
    }
    wait_for("every delivery delivered", T, || {
        let delivered = env
            .deliveries(cfg, Some("delivered"))
            .and_then(|v| v.as_array().map(Vec::len))
            .unwrap_or(0);
        (delivered == n).then_some(())
    })
    .await;
    let runs = runs(log);
    assert_eq!(runs.len(), n, "{runs:?}");
    assert!(
        runs.values().all(|&k| k == 1),
        "an event ran more than once: {runs:?}"
    );
}

async fn sqlite_case(concurrency: usize, n: usize) {
    let env = Env::new().await;
    let log = env.dir.path().join("runs.log");
    let cfg = env.write_config(&format!("{QWEN}{}", slow_exec_sink(&log, concurrency)));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    every_event_runs_once(&env, &cfg, &log, n).await;
    drop(d);
}

#[tokio::test]
async fn attempts_near_a_long_timeout_run_once_each_at_concurrency_1() {
    // The second delivery waits one whole attempt for the only slot, then runs one.
    sqlite_case(1, 2).await;
}

#[tokio::test]
async fn attempts_near_a_long_timeout_run_once_each_at_concurrency_4() {
    // Four run, four wait claimed ahead for a slot, then run.
    sqlite_case(4, 8).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn attempts_near_a_long_timeout_run_once_each_on_two_postgres_replicas() {
    let env = Env::new().await;
    let log = env.dir.path().join("runs.log");
    let cfg = env.write_config(&format!("{QWEN}{}", slow_exec_sink(&log, 2)));
    let url = pg::fresh_database().await;
    set_store_url(&cfg, &url, "\nlease_ttl = \"3s\"");
    edit(&cfg, |t| {
        t.replace("interval = \"200ms\"", "interval = \"500ms\"")
    });
    let a = env.spawn_daemon_env(&cfg, &[("LOOPWATCH__STORE__REPLICA_ID", "a")]);
    let b = env.spawn_daemon_env(&cfg, &[("LOOPWATCH__STORE__REPLICA_ID", "b")]);
    a.ready().await;
    b.addr().await;
    // Both replicas claim (two slots and two ahead each); what waits must not be taken
    // by the other replica when an attempt runs long.
    every_event_runs_once(&env, &cfg, &log, 8).await;
    drop((a, b));
}
