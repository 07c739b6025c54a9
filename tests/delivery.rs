//! Delivery, end to end: the real daemon, the simulated API, a real receiver over HTTP.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{
    Answer, Env, QWEN, Receiver, SECRET, check_exactly_one_id_each, distinct_ids, http_get,
    never_in_polls, qwen_to, wait_for,
};
use loopwatch::signing::{self as sign, SigningKey};

const T: Duration = Duration::from_secs(30);

fn verify(r: &common::Received) -> bool {
    let key = SigningKey::parse(SECRET).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    sign::verify(&key, &r.id(), ts, &r.body, &r.header("webhook-signature"))
}

#[tokio::test]
async fn one_transition_gives_one_signed_webhook_matching_the_contract() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(&rx.url, "events = [\"checkpoint.completed\"]"));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("one webhook", T, || (rx.count() >= 1).then_some(())).await;

    let r = &rx.got()[0];
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(
        r.header("user-agent"),
        format!("loopwatch/{}", env!("CARGO_PKG_VERSION"))
    );
    assert!(r.id().starts_with("evt_"));
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 10);
    assert!(r.header("webhook-signature").starts_with("v1,"));
    assert!(verify(r), "signature does not verify");

    let b = r.json();
    assert_eq!(b["type"], "checkpoint.completed");
    assert!(chrono::DateTime::parse_from_rfc3339(b["timestamp"].as_str().unwrap()).is_ok());
    let data = &b["data"];
    assert_eq!(data["event_id"], r.id().as_str());
    assert_eq!(data["target"], "qwen");
    assert_eq!(data["uri"], "bt://loops:run-1/sampler_weights/step-100");
    assert_eq!(data["previous_sync_status"], "SYNCING");
    assert_eq!(data["sync_status"], "COMPLETE");
    assert!(data["sync_seconds"].as_f64().unwrap() >= 0.0);
    assert!(chrono::DateTime::parse_from_rfc3339(data["first_seen_at"].as_str().unwrap()).is_ok());
    // Every field of the API object, as received.
    assert_eq!(data["checkpoint"], h.checkpoint(&id).unwrap());

    // Exactly one, and the metrics saw it.
    let (_, metrics) = http_get(&format!("http://{addr}/metrics")).await;
    wait_for("the success metric", T, || {
        metrics
            .contains(r#"loopwatch_deliveries_total{outcome="success",sink="hook"} 1"#)
            .then_some(())
    })
    .await;
    assert!(
        metrics.contains(r#"loopwatch_events_total{target="qwen",type="checkpoint.completed"} 1"#),
        "{metrics}"
    );
    never_in_polls(&env, 5, "a second delivery", async || rx.count() > 1).await;
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_it_on_the_fourth_attempt_with_the_same_id() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.script([
        Answer::status(500),
        Answer::status(502),
        Answer::status(500),
    ]);
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(&rx.url, "events = [\"checkpoint.completed\"]\nretry_schedule = [\"100ms\", \"100ms\", \"100ms\", \"100ms\"]"));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("four attempts", T, || (rx.count() >= 4).then_some(())).await;
    let got = rx.got();
    let ids: HashSet<String> = got.iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), 1, "webhook-id changed between attempts");
    assert!(
        got.iter().all(verify),
        "every attempt is signed with its own timestamp"
    );
    // The waits follow the 100 ms schedule (+-20%), not the worker's 1 s idle wait.
    for w in got.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(80) && gap < Duration::from_millis(900),
            "waited {gap:?} between attempts on a 100ms schedule"
        );
    }
    let out = env.run(&cfg, &["deliveries", "list", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    wait_for("delivered status", T, || {
        let v = env.deliveries(&cfg, None)?;
        (v[0]["status"] == "delivered").then_some(())
    })
    .await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    never_in_polls(&env, 5, "an attempt after success", async || rx.count() > 4).await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.script([Answer {
        status: 429,
        retry_after: Some("2".into()),
        delay: Duration::ZERO,
    }]);
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\nretry_schedule = [\"100ms\"]",
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the retry", T, || (rx.count() >= 2).then_some(())).await;
    let got = rx.got();
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert_eq!(got[0].id(), got[1].id());
}

#[tokio::test]
async fn gone_is_dead_at_once_and_redeliver_dead_sends_it_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    // The replay fails once more: it has the whole retry schedule again, not what was
    // left of it (it used to go dead at the first failure).
    rx.script([Answer::status(410), Answer::status(500)]);
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\nretry_schedule = [\"100ms\"]",
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the 410", T, || (rx.count() >= 1).then_some(())).await;
    let list = |status: &'static str| env.deliveries(&cfg, Some(status)).unwrap();
    wait_for("a dead delivery", T, || {
        (list("dead").as_array()?.len() == 1).then_some(())
    })
    .await;
    never_in_polls(&env, 5, "a 410 was retried", async || rx.count() > 1).await;
    let (_, m) = http_get(&format!("http://{addr}/metrics")).await;
    assert!(
        m.contains(r#"loopwatch_deliveries_dead{sink="hook"} 1"#),
        "{m}"
    );

    // Replayed while the daemon runs, with the original webhook-id.
    let out = env.run(&cfg, &["deliveries", "redeliver", "--dead"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the redelivery and its retry", T, || {
        (rx.count() >= 3).then_some(())
    })
    .await;
    let got = rx.got();
    assert!(got.iter().all(|r| r.id() == got[0].id()));
    wait_for("delivered", T, || {
        (list("delivered").as_array()?.len() == 1).then_some(())
    })
    .await;
    assert!(list("dead").as_array().unwrap().is_empty());
}

/// After an outage, `deliveries redeliver --pending` sends what waits for a later retry
/// now, under its webhook-id, instead of at the next step of the schedule (an hour here).
#[tokio::test]
async fn redeliver_pending_sends_a_waiting_retry_now() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_default(Some(Answer::status(503)));
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\nretry_schedule = [\"1h\", \"1h\"]",
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("a retry an hour away", T, || {
        let v = env.deliveries(&cfg, Some("pending"))?;
        (v.as_array()?.len() == 1 && v[0]["attempts"] == 1).then_some(())
    })
    .await;
    assert_eq!(rx.count(), 1);
    rx.set_default(None);

    let out = env
        .run(
            &cfg,
            &["deliveries", "redeliver", "--pending", "--sink", "hook"],
        )
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("made 1 pending deliveries due now"),
        "{stdout}"
    );
    wait_for("the retry, now", T, || (rx.count() >= 2).then_some(())).await;
    let got = rx.got();
    assert_eq!(got[0].id(), got[1].id());
    wait_for("delivered", T, || {
        let v = env.deliveries(&cfg, Some("delivered"))?;
        (v.as_array()?.len() == 1 && v[0]["attempts"] == 2).then_some(())
    })
    .await;
    // Nothing is waiting now: a second call changes nothing.
    let out = env
        .run(
            &cfg,
            &["deliveries", "redeliver", "--pending", "-o", "json"],
        )
        .await;
    // Pretty-printed, as every `-o json`.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "{\n  \"requeued\": 0\n}"
    );
    let out = env
        .run(
            &cfg,
            &["deliveries", "redeliver", "--pending", "--sink", "nope"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("\"nope\" is not a configured sink"));
}

#[tokio::test]
async fn kill_9_mid_burst_then_restart_delivers_every_event_under_one_id() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    // A slowish receiver, so the kill lands while deliveries are in flight.
    rx.set_default(Some(Answer {
        status: 204,
        retry_after: None,
        delay: Duration::from_millis(15),
    }));
    let h = env.sim.handle();
    let ids = h.add_many("run-1", 150, Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\nconcurrency = 4\nretry_schedule = [\"100ms\"]",
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status_many(&ids, Some("COMPLETE"));
    wait_for("the burst to start", T, || (rx.count() >= 20).then_some(())).await;
    d.kill9();
    let at_kill = rx.count();
    assert!(
        at_kill < 150,
        "the burst finished before the kill ({at_kill})"
    );

    let d2 = env.spawn_daemon(&cfg);
    d2.ready().await;
    wait_for("150 distinct events", Duration::from_secs(60), || {
        (distinct_ids(&rx) >= 150).then_some(())
    })
    .await;
    never_in_polls(&env, 5, "an id beyond the 150", async || {
        distinct_ids(&rx) > 150
    })
    .await;

    assert!(rx.got().iter().all(verify));
    // Every checkpoint's completion arrived, none under two ids.
    let dupes = check_exactly_one_id_each(&rx, 150);
    assert_eq!(distinct_ids(&rx), 150);
    // At-least-once: duplicates are bounded by what was in flight at the kill.
    assert!(dupes <= 4, "{dupes} duplicates with concurrency 4");
    assert_eq!(env.events().await.len(), 150);
}

/// After a sink outage and a restart, a new completion does not queue behind the whole
/// backlog of due retries: claims keep half their room for deliveries never attempted.
#[tokio::test]
async fn after_an_outage_a_new_completion_goes_out_while_the_backlog_drains() {
    const BACKLOG: usize = 200;
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_default(Some(Answer::status(503)));
    let h = env.sim.handle();
    // Every retry comes due within 3 s, and none goes dead during the test.
    let schedule = vec!["\"3s\""; 20].join(", ");
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        &format!(
            "events = [\"checkpoint.completed\"]\nconcurrency = 1\nretry_schedule = [{schedule}]"
        ),
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.add_many("run-1", BACKLOG, Some("COMPLETE"));
    wait_for("every completion refused once", T, || {
        (distinct_ids(&rx) >= BACKLOG).then_some(())
    })
    .await;
    d.signal("TERM");
    assert_eq!(d.wait(T).await, 0);
    // The whole backlog is due before the new completion is even seen.
    wait_for("every retry due", T, || {
        let v = env.deliveries(&cfg, Some("pending"))?;
        let rows = v.as_array()?;
        let now = chrono::Utc::now();
        let due = rows.iter().all(|r| {
            r["next_attempt_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| t < now)
        });
        (rows.len() == BACKLOG && due).then_some(())
    })
    .await;
    rx.set_default(Some(Answer {
        status: 204,
        retry_after: None,
        delay: Duration::from_millis(10),
    }));
    h.add_checkpoint("run-1", "sampler", "fresh", Some("COMPLETE"));
    let back = Instant::now();
    let d2 = env.spawn_daemon(&cfg);
    d2.ready().await;
    wait_for(
        "the backlog and the new completion",
        Duration::from_secs(60),
        || (distinct_ids(&rx) > BACKLOG).then_some(()),
    )
    .await;
    let after: Vec<_> = rx.got().into_iter().filter(|r| r.at >= back).collect();
    let fresh = after
        .iter()
        .position(|r| r.json()["data"]["checkpoint"]["checkpoint_id"] == "fresh")
        .expect("the new completion was delivered");
    // Strictly by due time it would come last, after all 200.
    assert!(
        fresh < BACKLOG / 4,
        "the new completion went out {fresh}th of {} after the restart",
        after.len()
    );
    check_exactly_one_id_each(&rx, BACKLOG + 1);
}

#[tokio::test]
async fn an_exec_sink_gets_the_event_on_stdin_and_in_the_environment() {
    let env = Env::new().await;
    let out_dir = env.dir.path().join("exec-out");
    std::fs::create_dir(&out_dir).unwrap();
    let script = format!(
        "cat > {d}/$LOOPWATCH_EVENT_ID.json && env | grep ^LOOPWATCH_ | sort > {d}/env.tmp && mv {d}/env.tmp {d}/$LOOPWATCH_EVENT_ID.env",
        d = out_dir.display()
    );
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}[[sinks]]\nname = \"deploy\"\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\nevents = [\"checkpoint.completed\"]\n"
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let env_file = wait_for("the exec sink's output", T, || {
        std::fs::read_dir(&out_dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "env"))
    })
    .await;
    let vars = std::fs::read_to_string(&env_file).unwrap();
    let event_id = env_file.file_stem().unwrap().to_str().unwrap().to_string();
    for want in [
        format!("LOOPWATCH_EVENT_ID={event_id}"),
        "LOOPWATCH_EVENT_TYPE=checkpoint.completed".into(),
        format!("LOOPWATCH_CHECKPOINT_ID={id}"),
        "LOOPWATCH_CHECKPOINT_NAME=step-100".into(),
        "LOOPWATCH_CHECKPOINT_URI=bt://loops:run-1/sampler_weights/step-100".into(),
        "LOOPWATCH_RUN_ID=run-1".into(),
    ] {
        assert!(vars.lines().any(|l| l == want), "{want} not in {vars}");
    }
    let body: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out_dir.join(format!("{event_id}.json"))).unwrap(),
    )
    .unwrap();
    assert_eq!(body["type"], "checkpoint.completed");
    assert_eq!(body["data"]["event_id"], event_id.as_str());
}

/// A template that does not render, and an environment the OS refuses (a NUL byte in the
/// checkpoint's name), fail the same way on every attempt: dead after the first, with the
/// reason in `deliveries list`. They used to follow the retry schedule, for days.
#[tokio::test]
async fn errors_no_retry_can_fix_are_dead_after_one_attempt_with_their_reason() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-\u{0}-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{}retry_schedule = [\"100ms\", \"100ms\", \"100ms\"]\nformat = \"template\"\ntemplate = \"{{{{ data.nope.deeper }}}}\"\n\
         [[sinks]]\nname = \"deploy\"\nkind = \"exec\"\ncommand = [\"true\"]\nevents = [\"checkpoint.completed\"]\nretry_schedule = [\"100ms\", \"100ms\", \"100ms\"]\n",
        qwen_to(&rx.url, "events = [\"checkpoint.completed\"]")
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let dead = wait_for("two dead deliveries", T, || {
        let out = env
            .cmd(
                &cfg,
                &["deliveries", "list", "--status", "dead", "-o", "json"],
            )
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let rows = v.as_array()?.clone();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    for r in &dead {
        assert_eq!(r["attempts"], 1, "{r}");
        let err = r["last_error"].as_str().unwrap();
        assert!(err.starts_with("cannot build the payload: "), "{r}");
        let why = if r["sink"] == "hook" {
            "the template does not render"
        } else {
            "LOOPWATCH_CHECKPOINT_NAME would contain a NUL byte"
        };
        assert!(err.contains(why), "{r}");
    }
    never_in_polls(&env, 5, "something was sent", async || rx.count() > 0).await;
    assert!(d.log_text().contains("delivery failed for good"));
}

#[tokio::test]
async fn an_ordered_sink_gets_a_runs_events_in_detection_order() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.script([Answer::status(500), Answer::status(500)]);
    let h = env.sim.handle();
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "ordered = true\nconcurrency = 4\nretry_schedule = [\"150ms\", \"150ms\", \"150ms\"]",
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    for i in 1..=5 {
        h.add_checkpoint("run-1", "sampler", &format!("step-{i}00"), Some("COMPLETE"));
    }
    wait_for("10 events acknowledged", T, || {
        (rx.count() >= 12).then_some(())
    })
    .await;
    let stored: Vec<String> = env.events().await.into_iter().map(|e| e.id).collect();
    assert_eq!(stored.len(), 10);
    let mut first_seen = Vec::new();
    for r in rx.got() {
        if !first_seen.contains(&r.id()) {
            first_seen.push(r.id());
        }
    }
    assert_eq!(
        first_seen, stored,
        "an ordered sink must see events in detection order"
    );
    // Each delivered head frees the next event of the run at once (this took one idle
    // second per event).
    let got = rx.got();
    let after_failures = got[got.len() - 1].at - got[2].at;
    assert!(
        after_failures < Duration::from_secs(3),
        "10 ordered events took {after_failures:?} once the receiver recovered"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_deliveries_finish_and_exits_zero() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_default(Some(Answer {
        status: 204,
        retry_after: None,
        delay: Duration::from_millis(800),
    }));
    let h = env.sim.handle();
    let ids = h.add_many("run-1", 6, Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\nconcurrency = 2",
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status_many(&ids, Some("COMPLETE"));
    wait_for("the first attempts", T, || (rx.count() >= 2).then_some(())).await;
    d.signal("TERM");
    let start = Instant::now();
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
    assert!(start.elapsed() < Duration::from_secs(5));

    // The in-flight pair finished and was recorded; the rest are pending, not lost.
    let out = env.run(&cfg, &["deliveries", "list", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 6);
    let delivered = rows.iter().filter(|r| r["status"] == "delivered").count();
    let pending = rows.iter().filter(|r| r["status"] == "pending").count();
    assert!(delivered >= 2, "in-flight deliveries were cut: {v}");
    assert_eq!(delivered + pending, 6);
    assert_eq!(
        delivered,
        rx.count(),
        "every acknowledged delivery is recorded"
    );
}

#[tokio::test]
async fn test_sink_sends_a_signed_sample_and_reports_failure() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    let out = env.run(&cfg, &["test-sink", "hook"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 204"));
    assert_eq!(rx.count(), 1);
    assert!(verify(&rx.got()[0]));
    rx.script([Answer::status(500)]);
    let out = env.run(&cfg, &["test-sink", "hook"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 500"));
    let out = env.run(&cfg, &["test-sink", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn the_demo_shows_events_within_15s_and_exits_zero() {
    let start = Instant::now();
    let out = tokio::task::spawn_blocking(|| {
        std::process::Command::new(common::bin())
            .args(["demo", "--duration", "12s"])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(start.elapsed() < Duration::from_secs(20));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("checkpoint.completed") && text.contains("signature ok"),
        "{text}"
    );
    assert!(
        text.contains("summary:") && text.contains("0 dead"),
        "{text}"
    );
    assert!(text.contains("/metrics"));
    let state = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("state"))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the demo prints its state directory");
    assert!(state.contains("loopwatch-demo-"), "{state}");
    assert!(
        !std::path::Path::new(state).exists(),
        "the demo left {state} behind"
    );
}

#[tokio::test]
async fn once_refuses_to_poll_beside_the_running_daemon_and_touches_nothing() {
    // `once` used to release every delivery claim at start: the daemon's attempt in
    // flight became due again and `once` sent it a second time. And two pollers on one
    // state file could record one new checkpoint under two event ids. Now one process
    // polls a state file at a time; read-only commands and dry runs still work.
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_default(Some(Answer {
        status: 204,
        retry_after: None,
        delay: Duration::from_secs(20),
    }));
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(
        &rx.url,
        "events = [\"checkpoint.completed\"]\ntimeout = \"30s\"",
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the daemon's attempt", T, || {
        (rx.count() >= 1).then_some(())
    })
    .await;
    let out = env.run(&cfg, &["once"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("another loopwatch process polls into") && err.trim().lines().count() == 1,
        "{err}"
    );
    for args in [
        &["once", "--dry-run"][..],
        &["state"],
        &["deliveries", "list"],
    ] {
        let out = env.run(&cfg, args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        rx.count(),
        1,
        "the daemon's in-flight delivery went out again"
    );
}

#[tokio::test]
async fn once_reports_delivered_retrying_and_dead_deliveries_apart() {
    // It said "N failed (will retry per retry_schedule)" of deliveries that had died.
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.script([Answer::status(410), Answer::status(500)]);
    let h = env.sim.handle();
    let ids = h.add_many("run-1", 3, Some("SYNCING"));
    let cfg = env.write_config(&qwen_to(&rx.url, "events = [\"checkpoint.completed\"]"));
    assert!(env.run(&cfg, &["once"]).await.status.success());
    h.set_status_many(&ids, Some("COMPLETE"));
    let out = env.run(&cfg, &["once"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains(
            "deliveries: 1 delivered, 1 failed and will be retried per retry_schedule, 1 dead"
        ),
        "{stderr}"
    );
}
