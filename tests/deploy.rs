//! The `baseten_deploy` sink, end to end: the real daemon, the simulated Loops API (its
//! `validate` and `deploy` routes check the bodies as the SDK's models do and record
//! the deploys they accept) and a real receiver for `checkpoint.deployed`, over HTTP.

mod common;

use std::time::Duration;

use common::{Env, QWEN, Receiver, SECRET, hook_sink, never_in_polls, wait_for};
use loopwatch::signing::{self as sign, SigningKey};
use loopwatch::sim::{Fault, Route};

const T: Duration = Duration::from_secs(30);

/// A deploy sink "deploy" on every target, with `extra` TOML lines.
fn deploy_sink(extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"deploy\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf_access_token\"\nmodel_name = \"{{{{ data.target }}}}-{{{{ data.checkpoint.checkpoint_id }}}}\"\nretry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\n{extra}\n"
    )
}

fn verify(r: &common::Received) -> bool {
    let key = SigningKey::parse(SECRET).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    sign::verify(&key, &r.id(), ts, &r.body, &r.header("webhook-signature"))
}

fn of_status(env: &Env, cfg: &std::path::Path, status: &str) -> Vec<serde_json::Value> {
    env.deliveries(cfg, Some(status))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d["sink"] == "deploy")
        .collect()
}

#[tokio::test]
async fn a_sampler_and_a_trainer_completion_deploy_the_sampler_once_and_announce_it_signed() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let sampler = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let trainer = h.add_checkpoint("run-1", "trainer", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink(""),
        hook_sink("hook", &rx.url, "events = [\"checkpoint.deployed\"]")
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&sampler, Some("COMPLETE"));
    h.set_status(&trainer, Some("COMPLETE"));
    wait_for("one checkpoint.deployed", T, || {
        (rx.count() >= 1).then_some(())
    })
    .await;
    never_in_polls(&env, 10, "a second deploy or event", async || {
        h.deploys().len() > 1 || rx.count() > 1
    })
    .await;

    let deploys = h.deploys();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    let dep = &deploys[0];
    assert_eq!(dep.checkpoint_ids, vec![sampler.clone()]);
    assert_eq!(dep.model_name, "qwen-step-100");
    assert_eq!(dep.instance_type_id, "H100");
    assert_eq!(dep.hf_secret_name, "hf_access_token");
    assert_eq!(h.requests_to(Route::Validate), 1);

    assert_eq!(rx.count(), 1);
    let r = &rx.got()[0];
    assert!(verify(r), "signature does not verify");
    let b = r.json();
    assert_eq!(b["type"], "checkpoint.deployed");
    let data = &b["data"];
    assert_eq!(data["event_id"], r.id().as_str());
    assert_eq!(data["uri"], "bt://loops:run-1/sampler_weights/step-100");
    assert_eq!(data["sync_status"], "COMPLETE");
    assert_eq!(data["checkpoint"], h.checkpoint(&sampler).unwrap());
    assert_eq!(
        data["deployment"],
        serde_json::json!({"sink": "deploy", "model_name": "qwen-step-100",
            "model_id": dep.model_id, "deployment_id": dep.deployment_id, "status": null,
            "environment": null, "reconciled": false, "approved_by": null})
    );
    // The id is the completed event's and the sink's.
    let events = env.events().await;
    let completed = events
        .iter()
        .find(|e| e.kind == "checkpoint.completed" && e.checkpoint_id == sampler)
        .unwrap();
    assert_eq!(
        r.id(),
        loopwatch::model::deployed_event_id(&completed.id, "deploy")
    );
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deliveries_total{outcome="success",sink="deploy"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_events_total{target="qwen",type="checkpoint.deployed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_api_requests_total{code="200",endpoint="deploy"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn three_completions_while_deploy_fails_deploy_only_the_newest() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.set_fault_on(
        Route::Deploy,
        Some(Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        }),
    );
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(h.add_checkpoint("run-1", "sampler", &format!("step-{i}00"), Some("SYNCING")));
        // Distinct created_at (milliseconds): latest_only orders by it.
        h.advance_clock(Duration::from_millis(5));
    }
    let cfg = env.write_config(&format!("{QWEN}{}", deploy_sink("concurrency = 2")));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    for id in &ids {
        let before = h.requests_to(Route::Deploy);
        h.set_status(id, Some("COMPLETE"));
        // A failed attempt or two for each before the next completes.
        wait_for("two deploy attempts since this completion", T, || {
            (h.requests_to(Route::Deploy) >= before + 2).then_some(())
        })
        .await;
    }
    wait_for("two superseded", T, || {
        (of_status(&env, &cfg, "superseded").len() == 2).then_some(())
    })
    .await;
    h.set_fault_on(Route::Deploy, None);
    wait_for("one deploy", T, || (!h.deploys().is_empty()).then_some(())).await;
    wait_for("the newest delivered", T, || {
        (of_status(&env, &cfg, "delivered").len() == 1).then_some(())
    })
    .await;
    never_in_polls(&env, 10, "a second deploy", async || h.deploys().len() > 1).await;
    let deploys = h.deploys();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert_eq!(deploys[0].checkpoint_ids, vec![ids[2].clone()]);
    let superseded = of_status(&env, &cfg, "superseded");
    assert_eq!(superseded.len(), 2, "{superseded:?}");
    for s in &superseded {
        assert!(
            s["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("superseded by step-"),
            "{s}"
        );
    }
    assert!(of_status(&env, &cfg, "dead").is_empty());
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deliveries_total{outcome="superseded",sink="deploy"} 2"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_deliveries_dead{sink="deploy"} 0"#),
        "{m}"
    );
    // Listed as such by the CLI's table too.
    let out = env
        .run(&cfg, &["deliveries", "list", "--status", "superseded"])
        .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("superseded").count() >= 2, "{text}");
}

#[tokio::test]
async fn a_validate_400_is_dead_with_its_reason_and_nothing_is_deployed() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.set_fault_on(
        Route::Validate,
        Some(Fault::Status {
            code: 400,
            retry_after: None,
            body: Some(
                r#"{"code":"BAD_REQUEST","message":"checkpoint uses another LoRA config","details":{"reason":"LORA_MISMATCH"}}"#.into(),
            ),
        }),
    );
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!("{QWEN}{}", deploy_sink("")));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let dead = wait_for("a dead deploy", T, || {
        let dead = of_status(&env, &cfg, "dead");
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["attempts"], 1);
    let why = dead[0]["last_error"].as_str().unwrap();
    assert!(
        why.contains("validate")
            && why.contains("400")
            && why.contains("LoRA")
            && why.contains("(LORA_MISMATCH)"),
        "{why}"
    );
    assert_eq!(h.requests_to(Route::Deploy), 0);
    assert!(h.deploys().is_empty());
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deliveries_total{outcome="dead",sink="deploy"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_api_requests_total{code="400",endpoint="validate"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_deploy_400_is_dead_after_one_attempt_and_announces_nothing() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_fault_on(
        Route::Deploy,
        Some(Fault::Status {
            code: 400,
            retry_after: None,
            body: Some(r#"{"code":"BAD_REQUEST","message":"unknown instance type"}"#.into()),
        }),
    );
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink(""),
        hook_sink("hook", &rx.url, "events = [\"checkpoint.deployed\"]")
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let dead = wait_for("a dead deploy", T, || {
        let dead = of_status(&env, &cfg, "dead");
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(dead[0]["attempts"], 1);
    let why = dead[0]["last_error"].as_str().unwrap();
    assert!(
        why.contains("deploy") && why.contains("unknown instance type"),
        "{why}"
    );
    never_in_polls(&env, 10, "a dead deploy was tried again", async || {
        h.requests_to(Route::Deploy) > 1 || rx.count() > 0
    })
    .await;
    assert_eq!(h.requests_to(Route::Deploy), 1);
    assert!(
        env.events()
            .await
            .iter()
            .all(|e| e.kind != "checkpoint.deployed")
    );
}

/// The crash bound: a SIGKILL between the API's 200 and the outcome commit repeats the
/// deploy after the restart, at most `concurrency` times, under one `checkpoint.deployed`
/// id. The deploy answers slowly, so the kill lands while it is in flight.
#[tokio::test]
async fn sigkill_around_the_deploy_call_deploys_once_under_one_id() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("concurrency = 1"),
        hook_sink("hook", &rx.url, "events = [\"checkpoint.deployed\"]")
    ));
    // The slow deploy below must not time out.
    common::edit(&cfg, |t| {
        t.replacen("timeout = \"2s\"", "timeout = \"10s\"", 1)
    });
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    // Each kill lands while a deploy is in flight (slow: the simulator answers after
    // 5 s, the kill comes 100 ms after the request is seen): three rounds, each repeating
    // the deploy the round before never recorded, then one that runs to the end.
    h.set_fault_on(
        Route::Deploy,
        Some(Fault::Delay(Duration::from_millis(5000))),
    );
    h.set_status(&id, Some("COMPLETE"));
    for round in 1..=3 {
        // The round-th call: the first attempt, then each restart's repeat.
        wait_for("a deploy in flight", T, || {
            (h.requests_to(Route::Deploy) >= round).then_some(())
        })
        .await;
        // In flight: the API holds the call for 5 s.
        d.kill9();
        d = env.spawn_daemon(&cfg);
        d.ready().await;
    }
    h.set_fault_on(Route::Deploy, None);
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    never_in_polls(&env, 10, "a fifth deploy call", async || {
        h.requests_to(Route::Deploy) > 4
    })
    .await;
    // Every kill left a call in doubt; each next run reconciled first (the killed call's
    // connection dropped before the API acted: nothing new) and called again: 1 + 3
    // calls, and one deployment.
    assert_eq!(h.requests_to(Route::Deploy), 4);
    let deploys = h.deploys();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    assert!(deploys.iter().all(|d| d.checkpoint_ids == vec![id.clone()]));
    // One checkpoint.deployed, under one id, whatever repeated.
    let ids: std::collections::HashSet<String> = rx.got().iter().map(|r| r.id()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let stored: Vec<_> = env
        .events()
        .await
        .into_iter()
        .filter(|e| e.kind == "checkpoint.deployed")
        .collect();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].id, *ids.iter().next().unwrap());
    let delivered = of_status(&env, &cfg, "delivered");
    assert_eq!(delivered.len(), 1);
}

#[tokio::test]
async fn test_sink_validates_the_newest_complete_sampler_checkpoint_and_never_deploys() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    h.advance_clock(Duration::from_millis(5));
    let newest = h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    h.advance_clock(Duration::from_millis(5));
    h.add_checkpoint("run-1", "trainer", "step-300", Some("COMPLETE"));
    h.add_checkpoint("run-1", "sampler", "step-400", Some("SYNCING"));
    let cfg = env.write_config(&format!("{QWEN}{}", deploy_sink("")));
    // No state yet: nothing to validate, and a clear error.
    let out = env.run(&cfg, &["test-sink", "deploy"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no complete sampler checkpoint"),
        "{out:?}"
    );
    // A baseline records them silently; then test-sink validates step-200.
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = env.run(&cfg, &["test-sink", "deploy", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(
        v["checkpoint_path"],
        "bt://loops:run-1/sampler_weights/step-200"
    );
    assert_eq!(v["checkpoint_id"], newest.as_str());
    assert_eq!(h.requests_to(Route::Validate), 1);
    assert_eq!(h.requests_to(Route::Deploy), 0);
    // A refusal is shown, with its reason, and exits 1.
    h.push_fault_to(
        Route::Validate,
        Fault::Status {
            code: 422,
            retry_after: None,
            body: Some(r#"{"message":"not deployable"}"#.into()),
        },
    );
    let out = env.run(&cfg, &["test-sink", "deploy"]).await;
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("422") && text.contains("not deployable"),
        "{text}"
    );
    assert_eq!(h.requests_to(Route::Deploy), 0);
}

/// test-sink picks the newest complete sampler checkpoint as `latest_only` orders them: a
/// `created_at` more than a day ahead counts as its first sight, and a null checkpoint the
/// readiness probe completed is complete.
#[tokio::test]
async fn test_sink_orders_checkpoints_as_latest_only_and_counts_probe_completions() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let at = |d: chrono::Duration| serde_json::json!((chrono::Utc::now() + d).to_rfc3339());
    let ahead = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    h.set_field(
        &ahead,
        "created_at",
        serde_json::json!("2099-01-01T00:00:00Z"),
    );
    let newer = h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    h.set_field(&newer, "created_at", at(chrono::Duration::hours(1)));
    let probed = h.add_checkpoint("run-1", "sampler", "step-300", None);
    h.set_field(&probed, "created_at", at(chrono::Duration::hours(2)));
    h.set_volume(&probed, "bdn:team/vol:v1", "step-300");
    let cfg = env.write_config(&format!(
        "{QWEN}{}",
        deploy_sink("approval = \"before_deploy\"")
    ));
    let validated = async || {
        let out = env.run(&cfg, &["test-sink", "deploy", "-o", "json"]).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["checkpoint_id"].as_str().unwrap().to_string()
    };
    // The baseline records all three; step-300 is null, not complete yet.
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(validated().await, newer, "not the one dated 2099");
    // The next run's probe finds step-300's volume: complete, and the newest.
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(h.requests_to(Route::Source), 1);
    assert_eq!(validated().await, probed, "completed by the probe");
    assert_eq!(h.requests_to(Route::Deploy), 0, "waiting for approval");
}

/// `deliveries redeliver` never deploys a checkpoint again by itself: a deploy that
/// deployed is left alone (by delivery id: exit 1 naming `--deploy-again`; by event id:
/// the event's other deliveries are re-queued); `--deploy-again` deploys it again.
#[tokio::test]
async fn redeliver_leaves_a_deployed_deploy_alone_unless_told_to_deploy_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let ck = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("follow = false"),
        hook_sink("hook", &rx.url, "events = [\"checkpoint.completed\"]")
    ));
    let once = async || {
        let out = env.run(&cfg, &["once"]).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
    };
    once().await;
    h.set_status(&ck, Some("COMPLETE"));
    once().await;
    assert_eq!((h.deploys().len(), rx.count()), (1, 1));
    let deploy = &of_status(&env, &cfg, "delivered")[0];
    let (id, event) = (
        deploy["id"].to_string(),
        deploy["event_id"].as_str().unwrap(),
    );

    let out = env.run(&cfg, &["deliveries", "redeliver", &id]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("already deployed")
            && err.contains("--deploy-again")
            && err.lines().count() == 1,
        "{err}"
    );
    let out = env
        .run(&cfg, &["deliveries", "redeliver", event, "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["requeued"], 1, "the webhook only");
    assert_eq!(v["left_deployed"], serde_json::json!([deploy["id"]]));
    once().await;
    assert_eq!((h.deploys().len(), rx.count()), (1, 2), "no second deploy");

    let out = env
        .run(&cfg, &["deliveries", "redeliver", "--deploy-again", &id])
        .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    once().await;
    assert_eq!(h.deploys().len(), 2, "deployed again when told to");
}

#[tokio::test]
async fn once_dry_run_says_what_would_be_deployed() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    h.advance_clock(Duration::from_millis(5));
    h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    h.add_checkpoint("run-1", "trainer", "step-200", Some("COMPLETE"));
    let cfg = env.write_config(&format!("{QWEN}{}", deploy_sink("")));
    // The baseline emits what exists, so the dry run has completions to show.
    let mut c = env.cmd(&cfg, &["once", "--dry-run"]);
    c.env("LOOPWATCH__POLL__EMIT_EXISTING", "true");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "sink deploy would validate and deploy bt://loops:run-1/sampler_weights/step-200"
        ) && err.contains("\"qwen-step-200\""),
        "{err}"
    );
    assert!(
        err.contains(
            "would not deploy bt://loops:run-1/sampler_weights/step-100: superseded by step-200"
        ),
        "{err}"
    );
    assert!(
        !err.contains("bt://loops:run-1/weights/"),
        "trainer checkpoints do not deploy: {err}"
    );
    assert_eq!(h.requests_to(Route::Deploy), 0);
    assert_eq!(h.requests_to(Route::Validate), 0);
    assert!(!env.db().exists());
    // Waiting for approval first, it says so (it said it would deploy).
    let cfg = env.write_config(&format!(
        "{QWEN}{}",
        deploy_sink("approval = \"before_deploy\"")
    ));
    let mut c = env.cmd(&cfg, &["once", "--dry-run"]);
    c.env("LOOPWATCH__POLL__EMIT_EXISTING", "true");
    let out = tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sink deploy would wait for approval (loopwatch deliveries approve), then validate and deploy bt://loops:run-1/sampler_weights/step-200"),
        "{err}"
    );
}

/// The dry run applies `latest_only` as the sink does, against the deploys already made
/// too: an older checkpoint completing after a newer one was deployed would not deploy.
#[tokio::test]
async fn once_dry_run_knows_the_deploys_already_made() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.advance_clock(Duration::from_secs(60));
    let newer = h.add_checkpoint("run-1", "sampler", "step-200", Some("SYNCING"));
    let cfg = env.write_config(&format!("{QWEN}{}", deploy_sink("follow = false")));
    let once = async |args: &[&str]| {
        let out = env.run(&cfg, args).await;
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    once(&["once"]).await;
    h.set_status(&newer, Some("COMPLETE"));
    once(&["once"]).await;
    assert_eq!(h.deploys().len(), 1);
    // An older one, dated a minute before, completes now.
    let older = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let at = chrono::DateTime::parse_from_rfc3339(
        h.checkpoint(&newer).unwrap()["created_at"]
            .as_str()
            .unwrap(),
    )
    .unwrap()
        - chrono::Duration::seconds(60);
    h.set_field(&older, "created_at", serde_json::json!(at.to_rfc3339()));
    once(&["once"]).await;
    h.set_status(&older, Some("COMPLETE"));
    let err = once(&["once", "--dry-run"]).await;
    assert!(
        err.contains(
            "would not deploy bt://loops:run-1/sampler_weights/step-100: superseded by step-200"
        ),
        "{err}"
    );
    // And the sink agrees.
    once(&["once"]).await;
    assert_eq!(h.deploys().len(), 1);
}

/// A deploy sink added by a reload (SIGHUP) deploys through the daemon's API client like
/// one present at start.
#[tokio::test]
async fn a_deploy_sink_added_by_a_reload_deploys() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(QWEN);
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    common::edit(&cfg, |t| format!("{t}{}", deploy_sink("")));
    d.signal("HUP");
    wait_for("the reload", T, || {
        d.log_text().contains("config reloaded").then_some(())
    })
    .await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("one deploy", T, || (!h.deploys().is_empty()).then_some(())).await;
    assert_eq!(h.deploys()[0].checkpoint_ids, vec![id]);
    assert!(!d.log_text().contains("needs the Loops API client"));
}
