//! Loops as the SDK describes it, end to end (the real binary, the simulated API over
//! HTTP, real SQLite): checkpoints of an unknown `target` pass through, and checkpoints
//! whose `sync_status` stays null complete by the readiness probe (docs/events.md).

mod common;

use std::time::Duration;

use common::{Env, Receiver, hook_sink, metric, never_in_polls, qwen_to, wait_for};
use loopwatch::sim::{Fault, Route};
use serde_json::Value;

const T: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);
/// Size of a simulated sampler checkpoint, and of its config file (sim/state.rs).
const SAMPLER_BYTES: u64 = 1 << 27;
const CONFIG_BYTES: u64 = 512;

fn completions(rx: &Receiver) -> Vec<Value> {
    rx.got()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["type"] == "checkpoint.completed")
        .collect()
}

#[tokio::test]
async fn an_unknown_target_next_to_a_completing_sampler_fails_no_poll() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let drafts = Receiver::start().await.unwrap();
    let known = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let sampler = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    h.add_checkpoint("run-1", "draft", "step-100", Some("SYNCING"));
    let sinks = format!(
        "{}{}{}",
        qwen_to(&rx.url, "events = [\"checkpoint.completed\"]"),
        hook_sink(
            "drafts",
            &drafts.url,
            "checkpoint_targets = [\"draft\"]\nordered = true"
        ),
        hook_sink(
            "known",
            &known.url,
            "events = [\"checkpoint.completed\"]\ncheckpoint_targets = [\"sampler\", \"trainer\"]"
        ),
    );
    let cfg = env.write_config(&sinks);

    // Listed live, as a new user would try first.
    let out = env
        .run(&cfg, &["checkpoints", "--run-id", "run-1", "-o", "json"])
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&sampler, Some("COMPLETE"));
    let late = h.add_checkpoint("run-1", "draft", "step-200", Some("COMPLETE"));
    wait_for("both completions at the unfiltered sink", T, || {
        (completions(&rx).len() >= 2).then_some(())
    })
    .await;
    wait_for("the draft's events", T, || {
        (drafts.count() >= 2).then_some(())
    })
    .await;
    wait_for("the sampler's completion at the listing sink", T, || {
        (!completions(&known).is_empty()).then_some(())
    })
    .await;
    never_in_polls(&env, 5, "a sink got more than its events", async || {
        completions(&rx).len() > 2 || drafts.count() > 2 || known.count() > 1
    })
    .await;

    // A sink without checkpoint_targets takes every checkpoint, the draft included; a
    // list naming both known values takes only those.
    let mut done: Vec<String> = (completions(&rx).iter())
        .map(|b| b["data"]["checkpoint"]["id"].as_str().unwrap().to_string())
        .collect();
    done.sort();
    let mut want = vec![sampler.clone(), late.clone()];
    want.sort();
    assert_eq!(done, want);
    let only_known = completions(&known);
    assert_eq!(only_known[0]["data"]["checkpoint"]["id"], sampler.as_str());
    assert_eq!(only_known[0]["data"]["ready_by"], "sync_status");
    // The sink naming "draft" gets that checkpoint, as received, with no URI.
    for r in drafts.got() {
        let b = r.json();
        assert_eq!(b["data"]["checkpoint"], h.checkpoint(&late).unwrap());
        assert_eq!(b["data"]["uri"], Value::Null);
    }
    let kinds: Vec<String> = drafts
        .got()
        .iter()
        .map(|r| r.json()["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["checkpoint.discovered", "checkpoint.completed"]);
    let errors = r#"loopwatch_polls_total{outcome="error",target="qwen"}"#;
    assert_eq!(metric(&addr, errors).await, 0.0);
    let other =
        r#"loopwatch_checkpoints{checkpoint_target="other",sync_status="COMPLETE",target="qwen"}"#;
    assert_eq!(metric(&addr, other).await, 1.0);
    let state = env.run(&cfg, &["state", "-o", "json"]).await;
    assert!(String::from_utf8_lossy(&state.stdout).contains("\"draft\""));
}

#[tokio::test]
async fn a_null_checkpoint_completes_once_by_files_and_a_later_complete_fires_nothing() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    // Recorded by the baseline while its files are partial.
    let id = h.add_checkpoint("run-1", "sampler", "step-100", None);
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    wait_for("a few probes", T, || {
        (h.requests_to(Route::Files) >= 3).then_some(())
    })
    .await;
    assert_eq!(rx.count(), 0, "partial files are not ready");

    h.put_file(
        &id,
        "adapter_model.safetensors",
        SAMPLER_BYTES - CONFIG_BYTES,
    );
    wait_for("the completion", T, || (rx.count() >= 1).then_some(())).await;
    let b = rx.got()[0].json();
    assert_eq!(b["type"], "checkpoint.completed");
    assert_eq!(b["data"]["ready_by"], "files");
    assert_eq!(b["data"]["sync_status"], Value::Null);
    assert_eq!(b["data"]["checkpoint"], h.checkpoint(&id).unwrap());
    // `state` says so while the API still says null.
    let state = env.run(&cfg, &["state"]).await;
    let table = String::from_utf8_lossy(&state.stdout);
    let row = table
        .lines()
        .find(|l| l.contains("step-100"))
        .unwrap_or_default();
    assert!(row.contains("ready(probe)"), "{table}");
    let probes = h.requests_to(Route::Source);
    never_in_polls(
        &env,
        5,
        "a complete checkpoint was probed again",
        async || h.requests_to(Route::Source) > probes,
    )
    .await;

    // The API catches up: nothing more, neither completed nor status_changed.
    h.set_status(&id, Some("COMPLETE"));
    never_in_polls(
        &env,
        5,
        "a second event for a complete checkpoint",
        async || rx.count() > 1,
    )
    .await;
    let ready = r#"loopwatch_readiness_probes_total{outcome="ready",target="qwen"}"#;
    assert_eq!(metric(&addr, ready).await, 1.0);
    let files = r#"loopwatch_api_requests_total{code="200",endpoint="files"}"#;
    assert!(metric(&addr, files).await >= 4.0);
}

#[tokio::test]
async fn a_null_checkpoint_in_a_volume_completes_by_source() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let cfg = env.write_config(&qwen_to(&rx.url, "events = [\"checkpoint.completed\"]"));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    let id = h.add_checkpoint("run-1", "sampler", "step-100", None);
    h.set_volume(&id, "bdn:team/loops:v1", "run-1/step-100");
    wait_for("the completion", T, || (rx.count() >= 1).then_some(())).await;
    let b = rx.got()[0].json();
    assert_eq!(b["data"]["ready_by"], "source");
    assert_eq!(b["data"]["checkpoint"]["id"], id.as_str());
    assert_eq!(h.requests_to(Route::Files), 0, "a volume is not listed");
}

#[tokio::test]
async fn null_status_pending_sends_no_probe_at_all() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", None);
    h.set_files(&id, &[("adapter_model.safetensors", SAMPLER_BYTES)]);
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    common::edit(&cfg, |t| {
        t.replace("jitter = 0.0", "jitter = 0.0\nnull_status = \"pending\"")
    });
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.add_checkpoint("run-1", "sampler", "step-200", None);
    wait_for("the discovery", T, || (rx.count() >= 1).then_some(())).await;
    never_in_polls(&env, 5, "a request other than the listing", async || {
        [Route::Source, Route::Files, Route::Validate, Route::Deploy]
            .iter()
            .any(|r| h.requests_to(*r) > 0)
    })
    .await;
    assert!(completions(&rx).is_empty());
}

#[tokio::test]
async fn probe_errors_of_every_kind_emit_nothing_and_are_probed_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    // Ready as soon as a probe gets through.
    let id = h.add_checkpoint("run-1", "sampler", "step-100", None);
    h.set_files(&id, &[("adapter_model.safetensors", SAMPLER_BYTES)]);
    let status = |code: u16, body: Option<&str>| Fault::Status {
        code,
        retry_after: None,
        body: body.map(str::to_string),
    };
    let source_faults = [
        status(500, None),
        status(404, None),
        status(429, None),
        Fault::Html,
        Fault::HtmlOk,
        Fault::Truncated,
        Fault::NotJsonObject,
        Fault::WrongType("kind".into()),
        Fault::CloseConnection,
    ];
    let files_faults = [
        status(
            400,
            Some(r#"{"code":"BAD_REQUEST","details":{"reason":"NOT_PRESIGNABLE"}}"#),
        ),
        status(503, None),
        Fault::Truncated,
        Fault::MissingField("size_bytes".into()),
        Fault::WrongType("size_bytes".into()),
        Fault::MissingField("total_count".into()),
        Fault::Empty,
    ];
    let failures = (source_faults.len() + files_faults.len()) as f64;
    for f in source_faults {
        h.push_fault_to(Route::Source, f);
    }
    for f in files_faults {
        h.push_fault_to(Route::Files, f);
    }
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    wait_for("the completion after the faults", T, || {
        (rx.count() >= 1).then_some(())
    })
    .await;
    // Every fault cost one probe and emitted nothing; the first clean probe completed it.
    assert_eq!(h.requests_to(Route::Files) as f64, 7.0 + 1.0);
    let errors = r#"loopwatch_readiness_probes_total{outcome="error",target="qwen"}"#;
    assert_eq!(metric(&addr, errors).await, failures);
    never_in_polls(&env, 5, "a second completion", async || rx.count() > 1).await;
    let got: Vec<Value> = rx.got().iter().map(|r| r.json()).collect();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["data"]["ready_by"], "files");
    let errors = r#"loopwatch_polls_total{outcome="error",target="qwen"}"#;
    assert_eq!(
        metric(&addr, errors).await,
        0.0,
        "a probe failure is no poll failure"
    );
}

/// How many checkpoints of `qwen` have what a probe saw stored.
async fn stored_probes(env: &Env) -> usize {
    use loopwatch::store::{Access, PollState};
    let url = format!("sqlite://{}", env.db().display());
    let store = loopwatch::store::sqlite::SqliteStore::open_with(&url, Access::ReadOnly)
        .await
        .unwrap();
    store.load_target("qwen").await.unwrap().probes.len()
}

/// What a probe saw, stored with the checkpoints of the state file, made `by` older: as
/// if the runs that follow came that much later (the runs read their own clock; the
/// interval under test is an hour, so no run ever falls on the wrong side of it by being
/// slow).
async fn age_probes(env: &Env, by: Duration) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", env.db().display());
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let ms = by.as_millis() as i64;
    for aged in [
        "UPDATE checkpoints SET probe = json_set(probe, '$.probed_at', \
         json_extract(probe, '$.probed_at') - ?1) WHERE probe IS NOT NULL",
        // Only a memo that saw files has their first sight (one without has `files: null`).
        "UPDATE checkpoints SET probe = json_set(probe, '$.files.since', \
         json_extract(probe, '$.files.since') - ?1) WHERE json_type(probe, '$.files') = 'object'",
    ] {
        sqlx::query(aged).bind(ms).execute(&mut db).await.unwrap();
    }
    db.close().await.unwrap();
}

/// The probe interval holds across `loopwatch once` runs whatever a probe saw: after a
/// failed probe, after the first sight of partial files and after the same files again, a
/// run within `syncing_interval` probes nothing; one after it probes.
#[tokio::test]
async fn once_runs_probe_a_null_checkpoint_at_most_once_per_interval() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    // Its files stay partial: never ready.
    h.add_checkpoint("run-1", "sampler", "step-100", None);
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    let config = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\ninterval = \"200ms\"", "\ninterval = \"1h\"")
        .replace("syncing_interval = \"100ms\"", "syncing_interval = \"1h\"");
    assert!(config.contains("syncing_interval = \"1h\""));
    std::fs::write(&cfg, config).unwrap();
    let once = async || {
        let out = env.run(&cfg, &["once"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (h.requests_to(Route::Source), h.requests_to(Route::Files))
    };
    assert_eq!(once().await, (0, 0), "the baseline probes nothing");
    h.push_fault_to(
        Route::Source,
        Fault::Status {
            code: 500,
            retry_after: None,
            body: None,
        },
    );
    assert_eq!(once().await, (1, 0), "a failed probe");
    assert_eq!(once().await, (1, 0), "not due after a failed probe");
    age_probes(&env, HOUR).await;
    assert_eq!(once().await, (2, 1), "the first sight of the files");
    assert_eq!(once().await, (2, 1), "not due after it");
    age_probes(&env, HOUR).await;
    assert_eq!(once().await, (3, 2), "the same files again");
    assert_eq!(once().await, (3, 2), "not due after the same files");
    assert_eq!(stored_probes(&env).await, 1);
    assert!(
        env.events().await.is_empty(),
        "partial files are never ready"
    );
}

/// The stable-listing rule of a checkpoint whose `size_bytes` is 0 holds across processes:
/// `loopwatch once` run from cron keeps what its probe saw with the checkpoint, and a run
/// `syncing_interval` later completes it. With `null_status = "pending"` nothing is probed
/// and nothing of a probe is written.
#[tokio::test]
async fn a_null_checkpoint_of_size_0_completes_across_two_once_runs() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", None);
    h.set_size_bytes(&id, 0);
    h.set_files(
        &id,
        &[
            ("adapter_model.safetensors", 1000),
            ("adapter_config.json", 512),
        ],
    );
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    // An hour between probes (syncing_interval is capped at interval, so both).
    let probe = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\ninterval = \"200ms\"", "\ninterval = \"1h\"")
        .replace("syncing_interval = \"100ms\"", "syncing_interval = \"1h\"");
    assert!(probe.contains("\ninterval = \"1h\"") && probe.contains("syncing_interval = \"1h\""));
    let pending = probe.replace("jitter = 0.0", "jitter = 0.0\nnull_status = \"pending\"");
    let once = async |config: &str| {
        std::fs::write(&cfg, config).unwrap();
        let out = env.run(&cfg, &["once"]).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // Pending: the baseline, then a run more than an interval later probes and stores
    // nothing.
    once(&pending).await;
    age_probes(&env, HOUR).await;
    once(&pending).await;
    assert_eq!(h.requests_to(Route::Source), 0);
    assert_eq!(stored_probes(&env).await, 0);
    assert!(env.events().await.is_empty());

    // Probe: the first run sees the files and keeps them; a run within the interval
    // probes nothing; one an interval after the first completes it.
    once(&probe).await;
    assert_eq!(h.requests_to(Route::Files), 1);
    assert_eq!(stored_probes(&env).await, 1, "the first probe is stored");
    assert!(env.events().await.is_empty(), "one probe is not ready");
    once(&probe).await;
    assert_eq!(h.requests_to(Route::Files), 1, "not due yet");
    age_probes(&env, HOUR).await;
    once(&probe).await;
    assert_eq!(h.requests_to(Route::Files), 2);
    let events = env.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "checkpoint.completed");
    assert_eq!(events[0].checkpoint_id, id);
    let body: Value = serde_json::from_str(&events[0].body).unwrap();
    assert_eq!(body["data"]["ready_by"], "files");
    assert_eq!(stored_probes(&env).await, 0, "forgotten once complete");

    // Complete: later runs probe it no more.
    age_probes(&env, HOUR).await;
    once(&probe).await;
    assert_eq!(h.requests_to(Route::Files), 2);
    assert_eq!(env.events().await.len(), 1);
}

/// A poll's probes run at once: with every `source` hanging, the eight due probes are all
/// sent before the first of them times out (one after another, each waited out
/// `api.timeout`, and the poll, the target's other events and its cadence with it, took
/// eight timeouts).
#[tokio::test]
async fn a_polls_probes_run_at_once_so_a_hanging_source_costs_one_timeout() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    for i in 0..8 {
        h.add_checkpoint("run-1", "sampler", &format!("step-{i}00"), None);
    }
    h.set_fault_on(Route::Source, Some(Fault::Delay(HOUR)));
    let cfg = env.write_config(&qwen_to(&rx.url, ""));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    wait_for("eight probes sent", T, || {
        (h.requests_to(Route::Source) >= 8).then_some(())
    })
    .await;
    let done = r#"loopwatch_readiness_probes_total{outcome="error",target="qwen"}"#;
    let cut = r#"loopwatch_readiness_probes_total{outcome="not_ready",target="qwen"}"#;
    assert_eq!(
        metric(&addr, done).await + metric(&addr, cut).await,
        0.0,
        "a probe ended before the eighth was sent: they ran one after another"
    );
    // A completion listed meanwhile is announced though every probe hangs.
    h.add_checkpoint("run-1", "sampler", "step-900", Some("COMPLETE"));
    wait_for("the completion", T, || {
        (!completions(&rx).is_empty()).then_some(())
    })
    .await;
    assert_eq!(rx.count(), 2, "discovered and completed of step-900 only");
}
