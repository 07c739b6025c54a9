//! Several replicas on one PostgreSQL database, as real processes: balance, failover
//! after SIGKILL, and fencing of a replica paused past its lease (SIGSTOP).
//! Needs `LOOPWATCH_TEST_PG_URL`; `scripts/test` starts a server and runs these.

mod common;

use std::time::{Duration, Instant};

use common::wait::polls_later;
use common::{
    Answer, COMPLETED_ONLY, Daemon, Env, Receiver, check_exactly_one_id_each, distinct_ids, edit,
    gauge, hook_sink, http_get, never_in_polls, pg, set_store_url, targets, until, wait_for,
};
use loopwatch::sim::Fault;

const T: Duration = Duration::from_secs(60);
const TTL: Duration = Duration::from_secs(3);
const INTERVAL: Duration = Duration::from_secs(1);

/// A config for `n` targets on a fresh PostgreSQL database, with leases of [`TTL`], polls
/// every [`INTERVAL`] and a signed sink to `rx`.
async fn pg_config(env: &Env, rx: &Receiver, n: usize) -> std::path::PathBuf {
    let url = pg::fresh_database().await;
    let sink = hook_sink(
        "hook",
        &rx.url,
        &format!("retry_schedule = [\"200ms\"]\n{COMPLETED_ONLY}"),
    );
    let cfg = env.write_config(&format!("{}{sink}", targets(n)));
    set_store_url(&cfg, &url, &format!("\nlease_ttl = \"{}s\"", TTL.as_secs()));
    edit(&cfg, |text| {
        text.replace(
            "interval = \"200ms\"",
            &format!("interval = \"{}s\"", INTERVAL.as_secs()),
        )
        .replace(
            "syncing_interval = \"100ms\"",
            &format!("syncing_interval = \"{}s\"", INTERVAL.as_secs()),
        )
    });
    cfg
}

fn replica(env: &Env, cfg: &std::path::Path, id: &str) -> Daemon {
    env.spawn_daemon_env(cfg, &[("LOOPWATCH__STORE__REPLICA_ID", id)])
}

/// Replicas named `ids` on `cfg`, with the address each serves on.
async fn replicas(env: &Env, cfg: &std::path::Path, ids: &[&str]) -> (Vec<Daemon>, Vec<String>) {
    let ds: Vec<Daemon> = ids.iter().map(|id| replica(env, cfg, id)).collect();
    let mut addrs = Vec::new();
    for d in &ds {
        addrs.push(d.addr().await);
    }
    (ds, addrs)
}

/// Set `api.max_requests_per_second` of the config at `cfg` to `budget`.
fn set_budget(cfg: &std::path::Path, budget: f64) {
    edit(cfg, |text| {
        text.replace(
            "max_requests_per_second = 200",
            &format!("max_requests_per_second = {budget}"),
        )
    });
}

async fn owned(addrs: &[String]) -> Vec<f64> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(gauge(a, "loopwatch_targets_owned").await.unwrap_or(0.0));
    }
    out
}

/// Wait for a settled split: every target owned, every replica ready, and the same
/// split across more than one lease round (replicas that join mid-way shift targets for a
/// round or two before the fair shares hold).
async fn wait_balanced(addrs: &[String], total: f64) -> Vec<f64> {
    let deadline = Instant::now() + T;
    let mut previous: Option<Vec<f64>> = None;
    loop {
        let o = owned(addrs).await;
        let mut settled = o.iter().sum::<f64>() == total && o.iter().all(|&n| n > 0.0);
        for a in addrs {
            settled &= http_get(&format!("http://{a}/readyz")).await.0 == 200;
        }
        if settled && previous.as_ref() == Some(&o) {
            return o;
        }
        previous = settled.then_some(o.clone());
        assert!(Instant::now() < deadline, "never balanced: {o:?}");
        // Two looks a lease round apart: the same shares across a round is what "balanced" means.
        tokio::time::sleep(TTL / 3 + Duration::from_millis(300)).await;
    }
}

/// How long after `since` the last of `events` was detected, in ms.
fn slowest_after<'a>(
    events: impl IntoIterator<Item = &'a loopwatch::store::StoredEvent>,
    since: chrono::DateTime<chrono::Utc>,
) -> i64 {
    events
        .into_iter()
        .map(|e| (e.detected_at - since).num_milliseconds())
        .max()
        .expect("at least one event")
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn three_replicas_share_thirty_targets_fairly() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    for i in 0..30 {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-100", Some("COMPLETE"));
    }
    let cfg = pg_config(&env, &rx, 30).await;
    let (_ds, addrs) = replicas(&env, &cfg, &["r1", "r2", "r3"]).await;
    let o = wait_balanced(&addrs, 30.0).await;
    assert!(o.iter().all(|&n| n <= 12.0), "unfair split {o:?}");
    let (_, ready) = http_get(&format!("http://{}/readyz", addrs[0])).await;
    assert!(
        ready.contains("replica r1") && ready.contains("owns"),
        "{ready}"
    );
    eprintln!("owned per replica: {o:?}");
    // Each target's checkpoints are reported by its owner alone: a replica that held a
    // target while the others joined gives its gauges up with the lease, so summing the
    // replicas (as a dashboard does) counts each checkpoint once.
    for i in 0..30 {
        let series = format!(
            "loopwatch_checkpoints{{checkpoint_target=\"sampler\",sync_status=\"COMPLETE\",target=\"t{i}\"}}"
        );
        let mut sum = 0.0;
        for a in &addrs {
            sum += gauge(a, &series).await.unwrap_or(0.0);
        }
        assert_eq!(sum, 1.0, "t{i}: {sum} over the replicas");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn sigkill_of_a_replica_mid_burst_loses_nothing_and_its_targets_are_polled_within_ttl_plus_interval()
 {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let mut first = Vec::new();
    for i in 0..30 {
        first.push(h.add_checkpoint(&format!("run-{i}"), "sampler", "step-100", Some("SYNCING")));
    }
    let cfg = pg_config(&env, &rx, 30).await;
    let (mut ds, addrs) = replicas(&env, &cfg, &["r1", "r2", "r3"]).await;
    let before = wait_balanced(&addrs, 30.0).await;

    // The burst: every target completes; kill a replica while deliveries flow.
    h.set_status_many(&first, Some("COMPLETE"));
    wait_for("the burst to start", T, || (rx.count() >= 3).then_some(())).await;
    ds[0].kill9();
    let killed_at = Instant::now();
    let killed_at_utc = chrono::Utc::now();
    // Every target gets a new checkpoint now: each must be polled again to find it.
    for i in 0..30 {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-200", Some("COMPLETE"));
    }
    wait_for("60 completions", T, || {
        (distinct_ids(&rx) >= 60).then_some(())
    })
    .await;
    let took = killed_at.elapsed();
    never_in_polls(&env, 5, "an id beyond the 60", async || {
        distinct_ids(&rx) > 60
    })
    .await;

    // Every logical event under exactly one id.
    check_exactly_one_id_each(&rx, 60);
    // Every step-200 was detected within TTL + interval of the kill (plus 1 s of slack
    // for scheduling on a loaded machine).
    let events = common::stored_events(&pg::url_in(&cfg), None).await;
    let late = slowest_after(
        events.iter().filter(|e| e.checkpoint_name == "step-200"),
        killed_at_utc,
    );
    let bound = (TTL + INTERVAL + Duration::from_secs(1)).as_millis() as i64;
    assert!(
        late <= bound,
        "a target waited {late} ms after the kill (bound {bound} ms)"
    );
    // Every target owned by the survivors once their split settles (a shard handed from
    // one survivor to the other is briefly owned by neither).
    let survivors = wait_balanced(&addrs[1..], 30.0).await;
    eprintln!(
        "owned before {before:?}, after {survivors:?}; slowest target re-polled {late} ms after the kill; all 60 delivered in {took:?}"
    );
}

/// Shard leases at a fleet's scale: three replicas share 1,000 targets (hashed into
/// shards), one is killed, and the survivors poll every one of its targets again within
/// `lease_ttl + interval`. Each target then has a new checkpoint: its detection time is
/// when its run was polled again.
#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn sigkill_of_one_of_three_replicas_holding_1000_targets_hands_every_target_over_within_ttl_plus_interval()
 {
    const N: usize = 1000;
    // Polls every 5 s (200 requests/s for the fleet) keep a debug build on two cores
    // well within its means; the bound is what scales with it.
    const INTERVAL_1000: Duration = Duration::from_secs(5);
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    for i in 0..N {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-100", Some("COMPLETE"));
    }
    let cfg = pg_config(&env, &rx, N).await;
    edit(&cfg, |text| {
        text.replace(
            "interval = \"1s\"",
            &format!("interval = \"{}s\"", INTERVAL_1000.as_secs()),
        )
    });
    set_budget(&cfg, 1000.0);
    let (mut ds, addrs) = replicas(&env, &cfg, &["r1", "r2", "r3"]).await;
    let before = wait_balanced(&addrs, N as f64).await;
    // Fair within a shard's worth of targets: ceil(1000 / 3) = 334, plus at most a few.
    assert!(
        before.iter().all(|&n| n <= 345.0),
        "unfair split {before:?}"
    );
    let lost = before[0];

    ds[0].kill9();
    let killed_at_utc = chrono::Utc::now();
    for i in 0..N {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-200", Some("COMPLETE"));
    }
    let step_200 = async || -> Vec<_> {
        let events = common::stored_events(&pg::url_in(&cfg), None).await;
        events
            .into_iter()
            .filter(|e| e.checkpoint_name == "step-200" && e.kind == "checkpoint.completed")
            .collect()
    };
    let found = until(T, Duration::from_millis(250), async || {
        step_200().await.len() >= N
    })
    .await;
    assert!(
        found,
        "step-200 detected on {} targets of {N}",
        step_200().await.len()
    );
    let events = step_200().await;
    assert_eq!(events.len(), N, "one step-200 completion per target");
    let late = slowest_after(&events, killed_at_utc);
    // Slack for the survivors' own work: each polls and commits ~170 targets it took
    // over at once (a debug build on two cores shared with PostgreSQL and the simulator).
    let bound = (TTL + INTERVAL_1000 + Duration::from_secs(3)).as_millis() as i64;
    assert!(
        late <= bound,
        "a target waited {late} ms after the kill (bound {bound} ms)"
    );
    // Every target owned by the survivors once their split settles (a shard handed from
    // one survivor to the other is briefly owned by neither).
    let survivors = wait_balanced(&addrs[1..], N as f64).await;
    eprintln!(
        "owned before {before:?} ({lost} on the killed replica), after {survivors:?}; slowest target re-polled {late} ms after the kill (bound {bound} ms)"
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn a_replica_paused_past_its_lease_commits_and_emits_nothing() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let ck = h.add_checkpoint("run-0", "sampler", "step-100", Some("SYNCING"));
    let cfg = pg_config(&env, &rx, 1).await;
    // A long API timeout: A's answer must still be awaited when A resumes.
    edit(&cfg, |text| {
        text.replace("timeout = \"2s\"", "timeout = \"30s\"")
    });
    let a = replica(&env, &cfg, "a");
    let addr_a = a.addr().await;
    wait_balanced(std::slice::from_ref(&addr_a), 1.0).await;
    let b = replica(&env, &cfg, "b");
    let addr_b = b.addr().await;

    // A's next request hangs in the simulator; pause A while it waits for the answer.
    let seen = h.requests();
    h.push_fault(Fault::Delay(Duration::from_millis(1500)));
    wait_for("A's delayed poll", T, || {
        (h.requests() > seen).then_some(())
    })
    .await;
    a.signal("STOP");
    h.set_status(&ck, Some("COMPLETE"));

    // B takes over once A's lease expires, detects the completion and delivers it.
    wait_for("B's delivery", T, || (rx.count() >= 1).then_some(())).await;
    assert_eq!(gauge(&addr_b, "loopwatch_targets_owned").await, Some(1.0));
    assert!(
        gauge(&addr_b, "loopwatch_lease_takeovers_total")
            .await
            .unwrap_or(0.0)
            >= 1.0
    );

    // A resumes with the answer showing COMPLETE and its old epoch: fenced.
    a.signal("CONT");
    let fenced = async || {
        let series = "loopwatch_fencing_rejections_total{target=\"t0\"}";
        gauge(&addr_a, series).await.unwrap_or(0.0) >= 1.0
    };
    assert!(
        until(T, Duration::from_millis(50), fenced).await,
        "A never tried to commit: {}",
        a.log_text()
    );
    never_in_polls(&env, 5, "A emitted after losing its lease", async || {
        rx.count() > 1
    })
    .await;
    let events = common::stored_events(&pg::url_in(&cfg), None).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(a.log_text().contains("lease lost before commit"));
}

/// Every shard lease: (shard, owner, epoch, released).
async fn leases(pool: &sqlx::PgPool) -> Vec<(i32, String, i64, bool)> {
    sqlx::query_as("SELECT shard, owner, epoch, released FROM shard_leases ORDER BY shard")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn once_beside_a_running_replica_skips_the_targets_it_holds_and_polls_the_rest_under_a_lease()
{
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.add_many("run-0", 2, Some("COMPLETE"));
    h.add_many("run-1", 2, Some("COMPLETE"));
    let cfg = pg_config(&env, &rx, 2).await;
    edit(&cfg, |text| {
        text.replace("timeout = \"2s\"", "timeout = \"10s\"")
    });
    let pool = sqlx::PgPool::connect(&pg::url_in(&cfg)).await.unwrap();

    // Nobody polls: `once` takes both leases under its own name, commits, gives them back.
    // The API answers after longer than the lease lasts: `once` renews its leases (its
    // commits were fenced off when it did not).
    h.set_fault(Some(Fault::Delay(TTL + Duration::from_secs(1))));
    let out = env.run(&cfg, &["once"]).await;
    h.set_fault(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let after_once = leases(&pool).await;
    // t0 and t1 hash into two shards.
    assert_eq!(after_once.len(), 2, "{after_once:?}");
    for (shard, owner, _, released) in &after_once {
        assert!(owner.contains("/once-"), "shard {shard} leased to {owner}");
        assert!(*released, "`once` kept the lease of shard {shard}");
    }
    let baselined: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM targets")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(baselined, 2);

    // A replica takes both; a `once` beside it leaves them alone.
    let d = replica(&env, &cfg, "r1");
    let addr = d.addr().await;
    wait_balanced(std::slice::from_ref(&addr), 2.0).await;
    let held = leases(&pool).await;
    assert!(held.iter().all(|(_, o, _, _)| o == "r1"), "{held:?}");
    h.add_many("run-0", 1, Some("SYNCING"));
    let out = env.run(&cfg, &["once"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for t in ["t0", "t1"] {
        assert!(
            stderr.contains(&format!(
                "target {t}: skipped, replica \"r1\" holds its lease"
            )),
            "{stderr}"
        );
    }
    let still: Vec<_> = leases(&pool)
        .await
        .into_iter()
        .map(|(t, o, e, _)| (t, o, e))
        .collect();
    let before: Vec<_> = held.into_iter().map(|(t, o, e, _)| (t, o, e)).collect();
    assert_eq!(still, before, "`once` took a lease a live replica holds");

    // A dry run (the replica stopped, so that nothing else writes) polls every target
    // on read-only transactions and changes nothing.
    let events: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    drop(d);
    let out = env.run(&cfg, &["once", "--dry-run"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(after, events, "a dry run wrote events");
}

/// `series` on every replica.
async fn per_replica(addrs: &[String], series: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(gauge(a, series).await.unwrap_or(0.0));
    }
    out
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn three_replicas_backlog_gauges_sum_to_the_database_wide_count() {
    let env = Env::new().await;
    let h = env.sim.handle();
    // "slow" answers 503 (each delivery waits an hour for its retry: pending); "gone"
    // answers 410 (dead at once).
    let slow = Receiver::start().await.unwrap();
    slow.set_default(Some(Answer::status(503)));
    let gone = Receiver::start().await.unwrap();
    gone.set_default(Some(Answer::status(410)));
    let cfg = pg_config(&env, &slow, 6).await;
    edit(&cfg, |text| {
        let text = text.replace("retry_schedule = [\"200ms\"]", "retry_schedule = [\"1h\"]");
        format!("{text}{}", common::sink("gone", &gone.url, COMPLETED_ONLY))
    });
    let (ds, addrs) = replicas(&env, &cfg, &["r1", "r2", "r3"]).await;
    wait_balanced(&addrs, 6.0).await;
    let ids: Vec<String> = (0..6)
        .map(|i| h.add_checkpoint(&format!("run-{i}"), "sampler", "step-1", Some("SYNCING")))
        .collect();
    // Seen syncing first: two listings of each of the 6 targets.
    polls_later(&env, 12).await;
    h.set_status_many(&ids, Some("COMPLETE"));
    // The truth, from the database: 6 pending for "slow", 6 dead for "gone".
    let count = |status: &str, sink: &str| {
        env.deliveries(&cfg, Some(status)).map(|v| {
            (v.as_array().unwrap().iter())
                .filter(|d| d["sink"] == sink)
                .count()
        })
    };
    wait_for("6 pending and 6 dead deliveries", T, || {
        (count("pending", "hook") == Some(6) && count("dead", "gone") == Some(6)).then_some(())
    })
    .await;
    let series = |name: &str, sink: &str| format!("{name}{{sink=\"{sink}\"}}");
    let settled = until(T, Duration::from_millis(300), async || {
        let pending = per_replica(&addrs, &series("loopwatch_deliveries_pending", "hook")).await;
        let dead = per_replica(&addrs, &series("loopwatch_deliveries_dead", "gone")).await;
        let age = per_replica(
            &addrs,
            &series("loopwatch_oldest_pending_delivery_age_seconds", "hook"),
        )
        .await;
        eprintln!("pending {pending:?} dead {dead:?} oldest age {age:?}");
        pending.iter().sum::<f64>() == 6.0
            && dead.iter().sum::<f64>() == 6.0
            && age.iter().filter(|&&a| a > 0.0).count() == 1
            // One replica carries the figures, the others say 0.
            && pending.iter().filter(|&&p| p > 0.0).count() == 1
            && dead.iter().filter(|&&p| p > 0.0).count() == 1
    })
    .await;
    assert!(
        settled,
        "the sums over the replicas never matched the database"
    );
    // The lowest replica id reports; when it leaves, another takes over.
    assert!(gauge(&addrs[0], &series("loopwatch_deliveries_pending", "hook")).await == Some(6.0));
    let mut ds = ds;
    ds[0].signal("TERM");
    assert_eq!(ds[0].wait(Duration::from_secs(15)).await, 0);
    let rest = &addrs[1..];
    let moved = until(T, Duration::from_millis(300), async || {
        let pending = per_replica(rest, &series("loopwatch_deliveries_pending", "hook")).await;
        pending.iter().sum::<f64>() == 6.0 && pending[0] == 6.0
    })
    .await;
    assert!(moved, "no surviving replica took over the backlog gauges");
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn three_replicas_share_one_api_budget() {
    const BUDGET: f64 = 6.0;
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    // 30 targets polled every second want 30 requests a second: far above the budget, so
    // the budget alone sets the pace. Without sharing it, three replicas would send 3x.
    let cfg = pg_config(&env, &rx, 30).await;
    set_budget(&cfg, BUDGET);
    let (ds, addrs) = replicas(&env, &cfg, &["r1", "r2", "r3"]).await;
    // Every replica has seen the others (the fair shares hold for a round or more).
    wait_balanced(&addrs, 30.0).await;
    let window = Duration::from_secs(8);
    let (before, start) = (h.requests(), Instant::now());
    tokio::time::sleep(window).await; // the measured window: a rate is what is tested
    let rate = (h.requests() - before) as f64 / start.elapsed().as_secs_f64();
    eprintln!("fleet rate {rate:.1} req/s for a budget of {BUDGET}");
    // Generous: the bucket's burst and a replica's first round before it sees the others
    // add a little; three budgets would be 18.
    assert!(rate <= BUDGET * 1.5, "the fleet sent {rate:.1} req/s");
    assert!(
        rate >= BUDGET * 0.5,
        "the fleet polled too little: {rate:.1} req/s"
    );
    drop(ds);
}

/// A `once` beside running replicas polls the targets nobody holds with its share of the
/// API budget, and the replicas make room for it while it runs (without moving the fair
/// shares of the targets).
#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn once_beside_replicas_takes_its_share_of_the_api_budget() {
    const BUDGET: f64 = 6.0;
    const GAUGE: &str = "loopwatch_api_budget_requests_per_second";
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let cfg = pg_config(&env, &rx, 2).await;
    set_budget(&cfg, BUDGET);
    edit(&cfg, |text| {
        text.replace("timeout = \"2s\"", "timeout = \"10s\"")
    });
    // `once` has two more targets, which no replica holds.
    let cfg_once = env.dir.path().join("once.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg_once, text.replace(&targets(2), &targets(4))).unwrap();
    let (_ds, addrs) = replicas(&env, &cfg, &["r1", "r2"]).await;
    wait_balanced(&addrs, 2.0).await;
    let halves = until(T, Duration::from_millis(300), async || {
        per_replica(&addrs, GAUGE).await == [BUDGET / 2.0; 2]
    })
    .await;
    assert!(halves, "{:?}", per_replica(&addrs, GAUGE).await);

    // The API answers slowly, so that the run outlasts a few lease rounds.
    h.set_fault(Some(Fault::Delay(TTL + Duration::from_secs(1))));
    let once = env.run(&cfg_once, &["once"]);
    let thirds = until(T, Duration::from_millis(200), async || {
        per_replica(&addrs, GAUGE).await == [BUDGET / 3.0; 2]
    });
    let (out, thirds) = tokio::join!(once, thirds);
    h.set_fault(None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(thirds, "the replicas never made room for `once`");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("sharing the API budget") && l.contains("processes=3")),
        "{stderr}"
    );
    for t in ["t0", "t1"] {
        assert!(stderr.contains(&format!("target {t}: skipped")), "{stderr}");
    }
    assert_eq!(
        owned(&addrs).await.iter().sum::<f64>(),
        2.0,
        "`once` moved the shares"
    );
    // Gone, its heartbeat goes with it: the replicas take their halves back.
    let back = until(T, Duration::from_millis(300), async || {
        per_replica(&addrs, GAUGE).await == [BUDGET / 2.0; 2]
    })
    .await;
    assert!(back, "{:?}", per_replica(&addrs, GAUGE).await);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn a_reload_shares_the_new_target_set_among_the_replicas() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let cfg = pg_config(&env, &rx, 4).await;
    let (ds, addrs) = replicas(&env, &cfg, &["r1", "r2"]).await;
    wait_balanced(&addrs, 4.0).await;
    // Six targets instead of four (t0..t5), then two (t0, t1): every replica reloads.
    edit(&cfg, |text| text.replace(&targets(4), &targets(6)));
    for d in &ds {
        d.signal("HUP");
    }
    let o = wait_balanced(&addrs, 6.0).await;
    assert_eq!(o, [3.0, 3.0]);
    edit(&cfg, |text| text.replace(&targets(6), &targets(2)));
    for d in &ds {
        d.signal("HUP");
    }
    let o = wait_balanced(&addrs, 2.0).await;
    assert_eq!(o, [1.0, 1.0]);
    for d in &ds {
        assert_eq!(
            gauge(&d.addr().await, "loopwatch_config_last_reload_successful").await,
            Some(1.0)
        );
    }
}

/// Two live processes under one `replica_id` poll the same targets under the same leases
/// (each event may go out twice): each finds the other's heartbeat in its row and says
/// so, in its log and in `loopwatch_replica_id_conflicts_total`. A replica restarted
/// under its own id after a SIGKILL (its predecessor's mark still in the row) is not
/// taken for a twin.
#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn two_live_replicas_under_one_id_are_told_and_a_restart_is_not() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let cfg = pg_config(&env, &rx, 4).await;
    let (mut ds, addrs) = replicas(&env, &cfg, &["twin", "twin", "solo"]).await;
    const CONFLICTS: &str = "loopwatch_replica_id_conflicts_total";
    for (d, a) in ds.iter().zip(&addrs).take(2) {
        let told = until(T, Duration::from_millis(100), async || {
            gauge(a, CONFLICTS).await.unwrap_or(0.0) > 0.0
        })
        .await;
        assert!(told, "a twin was never told: {}", d.log_text());
        let log = d.log_text();
        assert!(
            log.contains("another live process uses this store.replica_id"),
            "{log}"
        );
    }
    // The solo replica, killed and started again at once under its id.
    ds[2].kill9();
    let restarted = chrono::Utc::now() - chrono::Duration::milliseconds(200);
    let again = replica(&env, &cfg, "solo");
    let addr = again.ready().await;
    // Its start is the new process's (the row kept the first start).
    let (_, body) = http_get(&format!("http://{addr}/api/v1/status")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let solo = v["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "solo");
    let started: chrono::DateTime<chrono::Utc> = solo.unwrap()["started_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        started > restarted,
        "{started} is not after the restart {restarted}"
    );
    // Three more lease rounds of a twin: the restarted replica ran about as many.
    let told = gauge(&addrs[0], CONFLICTS).await.unwrap_or(0.0);
    let rounds = until(T, Duration::from_millis(100), async || {
        gauge(&addrs[0], CONFLICTS).await.unwrap_or(0.0) >= told + 3.0
    })
    .await;
    assert!(rounds, "the twin stopped counting");
    assert_eq!(gauge(&addr, CONFLICTS).await, Some(0.0));
    assert!(!again.log_text().contains("another live process"));
    // PostgreSQL's notice of the migrations table that exists already is not logged.
    assert!(
        !again.log_text().contains("already exists, skipping"),
        "{}",
        again.log_text()
    );
}
