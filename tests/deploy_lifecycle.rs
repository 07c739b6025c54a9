//! The deploy lifecycle, end to end (docs/events.md, "Deploys"): the real daemon, the
//! simulated Loops and models APIs over HTTP (deployments that move through statuses,
//! answer late after acting, drop the connection after acting) and a real receiver.
//! Each test counts the effect on the other side: deploy calls the API received and
//! deployments it holds, not only what loopwatch recorded.

mod common;

use std::time::Duration;

use common::{Env, QWEN, Receiver, hook_sink, wait_for};
use loopwatch::sim::{Fault, Route};
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

/// A deploy sink "deploy" on every target, with `extra` TOML lines.
fn deploy_sink(extra: &str) -> String {
    deploy_sink_retrying(
        r#"["300ms", "300ms", "300ms", "300ms", "300ms", "300ms"]"#,
        extra,
    )
}

/// [`deploy_sink`] with this `retry_schedule` (a TOML array).
fn deploy_sink_retrying(schedule: &str, extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"deploy\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf_access_token\"\nmodel_name = \"{{{{ data.target }}}}-{{{{ data.checkpoint.checkpoint_id }}}}\"\nretry_schedule = {schedule}\nfollow_interval = \"200ms\"\n{extra}\n"
    )
}

/// Three attempts in all, a second apart.
const TWO_RETRIES: &str = r#"["1s", "1s"]"#;

/// The deploy sink's delivery, as `deliveries list -o json` shows it.
async fn deploy_delivery(env: &Env, cfg: &std::path::Path) -> Option<Value> {
    let out = env.run(cfg, &["deliveries", "list", "-o", "json"]).await;
    let all: Value = serde_json::from_slice(&out.stdout).ok()?;
    all.as_array()?
        .iter()
        .find(|d| d["sink"] == "deploy")
        .cloned()
}

/// The deploy sink's delivery once it is no longer pending.
async fn deploy_delivery_settled(env: &Env, cfg: &std::path::Path) -> Value {
    let end = std::time::Instant::now() + T;
    loop {
        if let Some(d) = deploy_delivery(env, cfg).await
            && d["status"] != "pending"
        {
            return d;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out waiting for the deploy delivery to settle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn status_503() -> Fault {
    Fault::Status {
        code: 503,
        retry_after: None,
        body: None,
    }
}

/// A receiver sink for every lifecycle event.
fn lifecycle_hook(url: &str) -> String {
    hook_sink(
        "hook",
        url,
        "events = [\"checkpoint.deployed\", \"checkpoint.deployment_active\", \"checkpoint.deployment_failed\"]",
    )
}

/// `loopwatch deploys -o json`.
async fn deploys(env: &Env, cfg: &std::path::Path) -> Vec<Value> {
    let out = env.run(cfg, &["deploys", "-o", "json"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// Fails if `f` becomes true within `window`: the absence of an effect over a bounded
/// window (several poll, retry and follow intervals of these configs).
async fn never_within(what: &str, window: Duration, mut f: impl FnMut() -> bool) {
    let end = std::time::Instant::now() + window;
    while std::time::Instant::now() < end {
        assert!(!f(), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn received_of(rx: &Receiver, kind: &str) -> Vec<Value> {
    rx.got()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["type"] == kind)
        .collect()
}

#[tokio::test]
async fn a_deploy_answered_after_the_sink_timeout_is_adopted_by_reconciliation_not_repeated() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("timeout = \"1s\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    // The API deploys, then answers after 5 s: the sink gave up after 1 s.
    h.push_fault_to(Route::Deploy, Fault::ActThenDelay(Duration::from_secs(5)));
    h.set_status(&id, Some("COMPLETE"));
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    assert_eq!(h.requests_to(Route::Deploy), 1, "no second deploy call");
    let made = h.deployments_of("qwen-step-100");
    assert_eq!(made.len(), 1, "{made:?}");
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], true);
    assert_eq!(
        b["data"]["deployment"]["deployment_id"],
        made[0].id.as_str()
    );
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["stage"], "deployed");
    assert_eq!(rows[0]["reconciled"], true);
    assert_eq!(rows[0]["deployment_id"], made[0].id.as_str());
    assert_eq!(rows[0]["deploy_calls"], 1);
    // The call the sink timeout cut short is counted too.
    let addr = d.addr().await;
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_api_requests_total{code="timeout",endpoint="deploy"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_deploy_answered_503_before_acting_deploys_once_on_a_later_attempt() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("follow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.push_fault_to(
        Route::Deploy,
        Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        },
    );
    h.set_status(&id, Some("COMPLETE"));
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    // The 503 is an unknown outcome: reconciled (the model's deployments read again,
    // none new), then deployed again.
    assert_eq!(h.requests_to(Route::Deploy), 2);
    assert_eq!(h.deploys().len(), 1);
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], false);
    assert!(h.requests_to(Route::Models) >= 2, "read before each call");
}

#[tokio::test]
async fn a_200_cut_off_after_acting_is_adopted_not_repeated() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("follow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.push_fault_to(Route::Deploy, Fault::ActThenClose);
    h.set_status(&id, Some("COMPLETE"));
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    assert_eq!(h.requests_to(Route::Deploy), 1);
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], true);
}

#[tokio::test]
async fn a_foreign_deployment_during_an_unknown_outcome_ends_unknown_and_nothing_is_sent_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("timeout = \"1s\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    // The API deploys but answers too late; meanwhile someone else deploys the same model.
    h.push_fault_to(Route::Deploy, Fault::ActThenDelay(Duration::from_secs(5)));
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the deploy call", T, || {
        (h.requests_to(Route::Deploy) == 1).then_some(())
    })
    .await;
    wait_for("the API acted", T, || {
        (!h.deployments_of("qwen-step-100").is_empty()).then_some(())
    })
    .await;
    h.add_foreign_deployment("qwen-step-100");
    let unknown = wait_for("the delivery ends unknown", T, || {
        env.deliveries(&cfg, Some("unknown"))
            .and_then(|v| v.as_array().cloned())
            .filter(|v| !v.is_empty())
    })
    .await;
    assert_eq!(
        unknown[0]["last_error"],
        "ambiguous: 2 new deployments of qwen-step-100"
    );
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows[0]["stage"], "unknown");
    // Nothing is deployed again, not by retries, not after a restart.
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    never_within("a second deploy call", Duration::from_secs(2), || {
        h.requests_to(Route::Deploy) > 1
    })
    .await;
    assert_eq!(rx.count(), 0, "nothing announced");
    assert_eq!(h.deployments_of("qwen-step-100").len(), 2);
    let m = common::metrics(&d.addr().await).await;
    for series in [
        r#"loopwatch_deploys{sink="deploy",stage="unknown"} 1"#,
        // "stage unknown, dead with reason ambiguous: ...": counted as dead.
        r#"loopwatch_deliveries_dead{sink="deploy"} 1"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
}

#[tokio::test]
async fn followed_deployments_end_active_or_failed_with_one_event_each() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("DEPLOYING", Duration::from_millis(400)),
        ("ACTIVE", Duration::from_millis(800)),
    ]);
    let ok = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let bad = h.add_checkpoint("run-2", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink(""),
        lifecycle_hook(&rx.url)
    ));
    // The QWEN target watches run-1 only: watch run-2 as well.
    common::edit(&cfg, |t| {
        format!("{t}\n[[targets]]\nname = \"other\"\nrun_id = \"run-2\"\n")
    });
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&ok, Some("COMPLETE"));
    h.set_status(&bad, Some("COMPLETE"));
    let failing = wait_for("run-2's deployment", T, || {
        h.deployments_of("other-step-100")
            .first()
            .map(|d| d.id.clone())
    })
    .await;
    h.set_deployment_status(&failing, Some("DEPLOY_FAILED"));
    wait_for("active and failed", T, || {
        (received_of(&rx, "checkpoint.deployment_active").len() == 1
            && received_of(&rx, "checkpoint.deployment_failed").len() == 1)
            .then_some(())
    })
    .await;
    let active = &received_of(&rx, "checkpoint.deployment_active")[0];
    assert_eq!(active["data"]["deployment"]["status"], "ACTIVE");
    assert_eq!(active["data"]["checkpoint"]["id"], ok.as_str());
    let failed = &received_of(&rx, "checkpoint.deployment_failed")[0];
    assert_eq!(failed["data"]["deployment"]["status"], "DEPLOY_FAILED");
    assert_eq!(
        failed["data"]["deployment"]["deployment_id"],
        failing.as_str()
    );
    let rows = deploys(&env, &cfg).await;
    let stage = |ck: &str| {
        rows.iter()
            .find(|r| r["checkpoint_id"] == ck)
            .map(|r| r["stage"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(stage(&ok), "active");
    assert_eq!(stage(&bad), "failed");
    // Settled: read no more, announced once.
    let reads = h.requests_to(Route::Deployment);
    never_within(
        "more reads of settled deployments",
        Duration::from_secs(1),
        || h.requests_to(Route::Deployment) > reads,
    )
    .await;
    assert_eq!(received_of(&rx, "checkpoint.deployment_active").len(), 1);
    let m = common::metrics(&d.addr().await).await;
    assert!(
        m.contains(r#"loopwatch_deploy_to_active_seconds_count{sink="deploy"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_deploys{sink="deploy",stage="active"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn a_follow_interrupted_by_sigkill_carries_on_and_announces_active_once() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    // Building until the test lets it go live.
    h.set_deploy_script(&[("BUILDING", Duration::ZERO)]);
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink(""),
        lifecycle_hook(&rx.url)
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    let dep = h.deployments_of("qwen-step-100")[0].id.clone();
    let reads = h.requests_to(Route::Deployment);
    wait_for("the deployment followed", T, || {
        (h.requests_to(Route::Deployment) > reads + 1).then_some(())
    })
    .await;
    d.kill9();
    h.set_deployment_status(&dep, Some("ACTIVE"));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    wait_for("checkpoint.deployment_active", T, || {
        (!received_of(&rx, "checkpoint.deployment_active").is_empty()).then_some(())
    })
    .await;
    never_within("a second deployment_active", Duration::from_secs(1), || {
        received_of(&rx, "checkpoint.deployment_active").len() > 1
    })
    .await;
    assert_eq!(h.deploys().len(), 1, "one deploy across the kill");
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows[0]["stage"], "active");
    drop(d);
}

#[tokio::test]
async fn sigkill_after_the_api_acted_is_reconciled_at_restart_not_deployed_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("follow = false"),
        lifecycle_hook(&rx.url)
    ));
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    // The API deploys at once and answers after 10 s; the daemon dies before that.
    h.push_fault_to(Route::Deploy, Fault::ActThenDelay(Duration::from_secs(10)));
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the API acted", T, || {
        (!h.deployments_of("qwen-step-100").is_empty()).then_some(())
    })
    .await;
    d.kill9();
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    assert_eq!(h.requests_to(Route::Deploy), 1, "never called again");
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], true);
    drop(d);
}

#[tokio::test]
async fn a_second_deploy_to_the_same_model_waits_until_the_first_is_reconciled() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let first = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let second = h.add_checkpoint("run-1", "sampler", "step-200", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("timeout = \"1s\"\nfollow = false\nlatest_only = false\nconcurrency = 2"),
        lifecycle_hook(&rx.url)
    ));
    // One model for both: a call in doubt and a second call would leave two new
    // deployments that reconciliation could not tell apart.
    common::edit(&cfg, |t| {
        t.lines()
            .map(|l| {
                if l.starts_with("model_name") {
                    "model_name = \"qwen\"".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    // The first call deploys but its answer comes after the sink gave up.
    h.push_fault_to(Route::Deploy, Fault::ActThenDelay(Duration::from_secs(4)));
    h.set_status(&first, Some("COMPLETE"));
    wait_for("the first call", T, || {
        (h.requests_to(Route::Deploy) == 1).then_some(())
    })
    .await;
    h.set_status(&second, Some("COMPLETE"));
    wait_for("two checkpoint.deployed", T, || {
        (rx.count() >= 2).then_some(())
    })
    .await;
    assert_eq!(h.requests_to(Route::Deploy), 2, "one call per checkpoint");
    let made = h.deployments_of("qwen");
    assert_eq!(made.len(), 2, "{made:?}");
    let rows = deploys(&env, &cfg).await;
    let mut ids: Vec<&str> = rows
        .iter()
        .map(|r| r["deployment_id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want: Vec<&str> = made.iter().map(|d| d.id.as_str()).collect();
    want.sort();
    assert_eq!(ids, want, "each pipeline has its own deployment");
    assert!(rows.iter().all(|r| r["stage"] == "deployed"), "{rows:?}");
    drop(d);
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_replicas_deploy_once_and_a_follow_survives_their_deaths() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[("BUILDING", Duration::ZERO)]);
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("timeout = \"1s\""),
        lifecycle_hook(&rx.url)
    ));
    let url = common::pg::fresh_database().await;
    common::set_store_url(&cfg, &url, "\nlease_ttl = \"3s\"");
    let replica =
        |name: &str| env.spawn_daemon_env(&cfg, &[("LOOPWATCH__STORE__REPLICA_ID", name)]);
    let (mut a, mut b) = (replica("a"), replica("b"));
    a.ready().await;
    b.addr().await;
    // The first call deploys and answers too late: whichever replica retries reconciles.
    h.push_fault_to(Route::Deploy, Fault::ActThenDelay(Duration::from_secs(4)));
    h.set_status(&id, Some("COMPLETE"));
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    assert_eq!(h.requests_to(Route::Deploy), 1);
    let dep = h.deployments_of("qwen-step-100");
    assert_eq!(dep.len(), 1);
    let reads = h.requests_to(Route::Deployment);
    wait_for("the deployment followed", T, || {
        (h.requests_to(Route::Deployment) > reads + 2).then_some(())
    })
    .await;
    // Both replicas die mid-follow; a third takes the follow over once its claim lapses.
    a.kill9();
    b.kill9();
    h.set_deployment_status(&dep[0].id, Some("ACTIVE"));
    let c = replica("c");
    c.ready().await;
    wait_for(
        "checkpoint.deployment_active",
        Duration::from_secs(90),
        || (!received_of(&rx, "checkpoint.deployment_active").is_empty()).then_some(()),
    )
    .await;
    never_within("a second deployment_active", Duration::from_secs(2), || {
        received_of(&rx, "checkpoint.deployment_active").len() > 1
    })
    .await;
    assert_eq!(h.deploys().len(), 1);
    drop(c);
}

#[tokio::test]
async fn the_last_attempts_200_without_a_deployment_id_is_reconciled_and_adopted_not_left_unknown()
{
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink_retrying(TWO_RETRIES, "follow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    // Two 503s before acting, then the last allowed attempt deploys and answers
    // `{"model_id": ...}` without its `deployment_id`: an unknown outcome.
    h.push_fault_to(Route::Deploy, status_503());
    h.push_fault_to(Route::Deploy, status_503());
    h.push_fault_to(Route::Deploy, Fault::MissingField("deployment_id".into()));
    h.set_status(&id, Some("COMPLETE"));
    let done = deploy_delivery_settled(&env, &cfg).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(
        done["attempts"], 3,
        "the reconciliation is no attempt of its own"
    );
    assert_eq!(h.requests_to(Route::Deploy), 3);
    let made = h.deployments_of("qwen-step-100");
    assert_eq!(made.len(), 1, "{made:?}");
    // The model's deployments were read after the last call: each attempt reads the
    // models before its call (and, after an unknown outcome, before that again to
    // reconcile); the pass after the third reads them once more and finds the deployment.
    assert_eq!(h.requests_to(Route::Models), 1 + 2 + 2 + 1);
    assert_eq!(
        h.requests_to(Route::Deployments),
        1,
        "the model exists after call 3"
    );
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], true);
    assert_eq!(
        b["data"]["deployment"]["deployment_id"],
        made[0].id.as_str()
    );
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows[0]["stage"], "deployed");
    assert_eq!(rows[0]["reconciled"], true);
    assert_eq!(rows[0]["deploy_calls"], 3);
    never_within("a fourth deploy call", Duration::from_secs(2), || {
        h.requests_to(Route::Deploy) > 3
    })
    .await;
    let m = common::metrics(&d.addr().await).await;
    for series in [
        r#"loopwatch_deliveries_total{outcome="retry",sink="deploy"} 3"#,
        r#"loopwatch_deliveries_total{outcome="success",sink="deploy"} 1"#,
        r#"loopwatch_deploys{sink="deploy",stage="unknown"} 0"#,
        r#"loopwatch_deliveries_total{outcome="dead",sink="deploy"} 0"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
}

#[tokio::test]
async fn the_last_attempts_503_is_reconciled_and_dead_when_nothing_was_deployed() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}",
        deploy_sink_retrying(TWO_RETRIES, "follow = false")
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_fault_on(Route::Deploy, Some(status_503()));
    h.set_status(&id, Some("COMPLETE"));
    let dead = deploy_delivery_settled(&env, &cfg).await;
    assert_eq!(dead["status"], "dead", "{dead}");
    assert_eq!(dead["attempts"], 3);
    let why = dead["last_error"].as_str().unwrap();
    assert!(
        why.starts_with("no deployment was made after 3 attempts"),
        "{why}"
    );
    assert_eq!(h.requests_to(Route::Deploy), 3, "no blind fourth call");
    assert!(h.deployments_of("qwen-step-100").is_empty());
    // Read before each call, before each retry to reconcile, and once more after the last.
    assert_eq!(h.requests_to(Route::Models), 1 + 2 + 2 + 1);
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows[0]["stage"], "failed");
    assert_eq!(rows[0]["deploy_calls"], 3);
    assert!(rows[0].get("in_doubt_before").is_none(), "{}", rows[0]);
    never_within("a fourth deploy call", Duration::from_secs(2), || {
        h.requests_to(Route::Deploy) > 3
    })
    .await;
    let m = common::metrics(&d.addr().await).await;
    for series in [
        r#"loopwatch_deliveries_total{outcome="retry",sink="deploy"} 3"#,
        r#"loopwatch_deliveries_total{outcome="dead",sink="deploy"} 1"#,
        r#"loopwatch_deliveries_dead{sink="deploy"} 1"#,
        r#"loopwatch_deploys{sink="deploy",stage="failed"} 1"#,
        r#"loopwatch_deploys{sink="deploy",stage="unknown"} 0"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
    // Dead, so `redeliver --dead` takes it: once the API is back it deploys, once.
    h.set_fault_on(Route::Deploy, None);
    let out = env.run(&cfg, &["deliveries", "redeliver", "--dead"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = deploy_delivery_settled(&env, &cfg).await;
    assert_eq!(again["status"], "delivered", "{again}");
    assert_eq!(h.requests_to(Route::Deploy), 4);
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
}

#[tokio::test]
async fn the_last_attempts_unknown_outcome_with_a_foreign_deployment_ends_unknown() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}",
        deploy_sink_retrying(r#"["2s"]"#, "follow = false")
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    // The first attempt's 503 is reconciled (nothing) and the second, the last, deploys
    // and drops the connection; someone else deploys the same model meanwhile.
    h.push_fault_to(Route::Deploy, status_503());
    h.push_fault_to(Route::Deploy, Fault::ActThenClose);
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the last call acted", T, || {
        (!h.deployments_of("qwen-step-100").is_empty()).then_some(())
    })
    .await;
    h.add_foreign_deployment("qwen-step-100");
    let done = deploy_delivery_settled(&env, &cfg).await;
    assert_eq!(done["status"], "unknown", "{done}");
    assert_eq!(
        done["last_error"],
        "ambiguous: 2 new deployments of qwen-step-100"
    );
    assert_eq!(done["attempts"], 2);
    assert_eq!(h.requests_to(Route::Deploy), 2);
    assert_eq!(
        h.requests_to(Route::Deployments),
        1,
        "read after the last call"
    );
    never_within("a third deploy call", Duration::from_secs(2), || {
        h.requests_to(Route::Deploy) > 2
    })
    .await;
    drop(d);
}

#[tokio::test]
async fn failing_reconciliation_reads_are_retried_past_the_attempts_never_a_blind_deploy() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink_retrying(TWO_RETRIES, "follow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    // The first call deploys and drops the connection; from then on the model lookup
    // answers 502.
    h.push_fault_to(Route::Deploy, Fault::ActThenClose);
    h.set_status(&id, Some("COMPLETE"));
    wait_for("the deploy call", T, || {
        (h.requests_to(Route::Deploy) == 1).then_some(())
    })
    .await;
    h.set_fault_on(
        Route::Models,
        Some(Fault::Status {
            code: 502,
            retry_after: None,
            body: None,
        }),
    );
    let reads = h.requests_to(Route::Models);
    // Twice as many failed reads as attempts are left.
    let end = std::time::Instant::now() + T;
    while h.requests_to(Route::Models) < reads + 4 {
        let d = deploy_delivery(&env, &cfg).await.unwrap();
        assert_eq!(d["status"], "pending", "gave up while the reads fail: {d}");
        assert!(std::time::Instant::now() < end, "no reconciliation reads");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pending = deploy_delivery(&env, &cfg).await.unwrap();
    assert_eq!(pending["status"], "pending", "{pending}");
    assert_eq!(pending["attempts"], 1, "reads are no attempts");
    let why = pending["last_error"].as_str().unwrap();
    assert!(
        why.contains("reconciling") && why.contains("cannot read the model's models"),
        "{why}"
    );
    assert_eq!(h.requests_to(Route::Deploy), 1, "no blind deploy");
    let rows = deploys(&env, &cfg).await;
    assert_eq!(rows[0]["stage"], "deploying");
    assert!(rows[0]["in_doubt_before"].is_array(), "{}", rows[0]);
    let out = env.run(&cfg, &["deploys"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("in doubt"), "{table}");
    assert!(
        rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot read the model's models"),
        "{}",
        rows[0]
    );
    let m = common::metrics(&addr).await;
    for series in [
        r#"loopwatch_deliveries_total{outcome="dead",sink="deploy"} 0"#,
        r#"loopwatch_deliveries_pending{sink="deploy"} 1"#,
        r#"loopwatch_deploys{sink="deploy",stage="deploying"} 1"#,
        r#"loopwatch_deploys{sink="deploy",stage="unknown"} 0"#,
    ] {
        assert!(m.contains(series), "{series}\n{m}");
    }
    // The reads come back: the one deployment is adopted, nothing is deployed again.
    h.set_fault_on(Route::Models, None);
    let done = deploy_delivery_settled(&env, &cfg).await;
    assert_eq!(done["status"], "delivered", "{done}");
    assert_eq!(done["attempts"], 1);
    assert_eq!(h.requests_to(Route::Deploy), 1);
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    wait_for("checkpoint.deployed", T, || (rx.count() >= 1).then_some(())).await;
    let b = &received_of(&rx, "checkpoint.deployed")[0];
    assert_eq!(b["data"]["deployment"]["reconciled"], true);
}
