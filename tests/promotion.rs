//! Promotion with a person in the loop, end to end (docs/events.md, "Approval", "Promote",
//! "Clean up"): the real daemon and the real `loopwatch deliveries approve|reject`
//! commands against the simulated Loops and models APIs over HTTP and a real receiver.
//! Each test counts the effect on the other side: deploy, promote and deactivate calls
//! the API received, and what its deployments look like, not only what loopwatch recorded.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{Env, QWEN, Receiver, hook_sink, wait_for};
use loopwatch::sim::{Fault, Route, SimHandle};
use serde_json::Value;

const T: Duration = Duration::from_secs(40);

/// A deploy sink "deploy" on every target, with `extra` TOML lines.
fn deploy_sink(extra: &str) -> String {
    format!(
        "[[sinks]]\nname = \"deploy\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf_access_token\"\nmodel_name = \"{{{{ data.target }}}}-{{{{ data.checkpoint.checkpoint_id }}}}\"\nretry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\nfollow_interval = \"200ms\"\n{extra}\n"
    )
}

/// The same, with one model for every checkpoint ("qwen"), as a team that promotes
/// each new checkpoint over the last has.
fn one_model_sink(extra: &str) -> String {
    deploy_sink(extra).replace(
        "model_name = \"{{ data.target }}-{{ data.checkpoint.checkpoint_id }}\"",
        "model_name = \"qwen\"",
    )
}

/// A receiver sink for every lifecycle event.
fn lifecycle_hook(url: &str) -> String {
    hook_sink(
        "hook",
        url,
        "events = [\"checkpoint.deployed\", \"checkpoint.awaiting_approval\", \"checkpoint.deployment_active\", \"checkpoint.deployment_failed\", \"checkpoint.promoted\"]",
    )
}

/// `loopwatch deploys -o json`.
async fn deploys(env: &Env, cfg: &Path) -> Vec<Value> {
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

/// The pipeline of checkpoint `id` in `deploys -o json`.
async fn pipeline(env: &Env, cfg: &Path, id: &str) -> Value {
    deploys(env, cfg)
        .await
        .into_iter()
        .find(|r| r["checkpoint_id"] == id)
        .unwrap_or_else(|| panic!("no pipeline for {id}"))
}

/// Wait until checkpoint `id`'s pipeline is in `stage`; returns it.
async fn wait_stage(env: &Env, cfg: &Path, id: &str, stage: &str) -> Value {
    let deadline = std::time::Instant::now() + T;
    loop {
        let rows = deploys(env, cfg).await;
        if let Some(r) = rows
            .iter()
            .find(|r| r["checkpoint_id"] == id && r["stage"] == stage)
        {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never reached {stage}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

/// Wait for the first `kind` event about checkpoint `id`.
async fn event_of(rx: &Receiver, kind: &str, id: &str) -> Value {
    wait_for(kind, T, || {
        received_of(rx, kind)
            .into_iter()
            .find(|b| b["data"]["checkpoint"]["id"] == id)
    })
    .await
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Run a command line exactly as printed (`data.approve_command`), with `sh -c` in
/// directory `cwd`, as `user` (`$USER` unset for `None`, as in a container's shell), the
/// binary on `PATH` and no `LOOPWATCH_CONFIG`: the line names the config file itself.
async fn run_line(cwd: &Path, line: &str, user: Option<&str>) -> Output {
    let bin_dir = Path::new(common::bin()).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = std::process::Command::new("sh");
    c.arg("-c")
        .arg(line)
        .current_dir(cwd)
        .env("PATH", path)
        .env_remove("USER")
        .env_remove("LOOPWATCH_CONFIG")
        .env("BASETEN_API_KEY", common::API_KEY)
        .env("HOOK_SECRET", common::SECRET)
        .env_remove("RUST_LOG");
    if let Some(user) = user {
        c.env("USER", user);
    }
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// The line `checkpoint.awaiting_approval` carries for `delivery`, from a daemon that read
/// the config file `cfg` (an absolute path).
fn approve_line(cfg: &Path, delivery: i64) -> String {
    let c = loopwatch::text::shell_word(&cfg.display().to_string());
    format!("loopwatch deliveries approve {delivery} --by \"${{USER:-$(id -un)}}\" -c {c}")
}

fn deploy_calls(h: &SimHandle) -> u64 {
    h.requests_to(Route::Deploy) + h.requests_to(Route::Validate)
}

#[tokio::test]
async fn before_deploy_nothing_is_called_until_the_printed_command_approves_it() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let waiting = event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    let row = pipeline(&env, &cfg, &id).await;
    let delivery = row["delivery_id"].as_i64().unwrap();
    let line = approve_line(&cfg, delivery);
    assert_eq!(waiting["data"]["approve_command"], line.as_str());
    assert_eq!(
        waiting["data"]["reject_command"],
        line.replace(" approve ", " reject ").as_str()
    );
    assert_eq!(waiting["data"]["approval"], "before_deploy");
    assert_eq!(waiting["data"]["deployment"]["model_name"], "qwen-step-100");
    assert_eq!(row["stage"], "awaiting_approval");
    assert_eq!(row["approve_command"], line.as_str());
    assert!(row["approval_deadline"].is_string(), "{row}");
    // Waiting: listed as such, not pending, and nothing is validated or deployed.
    let listed = env.deliveries(&cfg, Some("awaiting_approval")).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let pending = env.deliveries(&cfg, Some("pending")).unwrap();
    assert!(
        pending
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["sink"] != "deploy"),
        "{pending}"
    );
    never_within("a call before approval", Duration::from_secs(1), || {
        deploy_calls(&h) > 0
    })
    .await;

    // The line exactly as the event printed it.
    let out = run_line(env.dir.path(), &line, Some("alice")).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("approved delivery {delivery} (bt://loops:run-1/sampler_weights/step-100, sink deploy) by alice")),
        "{stdout}"
    );
    let deployed = event_of(&rx, "checkpoint.deployed", &id).await;
    assert_eq!(deployed["data"]["deployment"]["approved_by"], "alice");
    assert_eq!(h.requests_to(Route::Deploy), 1);
    assert_eq!(h.deployments_of("qwen-step-100").len(), 1);
    let row = wait_stage(&env, &cfg, &id, "deployed").await;
    assert_eq!(row["decision"], "approved");
    assert_eq!(row["decided_by"], "alice");
    assert!(row["decided_at"].is_string(), "{row}");
    assert!(row.get("approve_command").is_none(), "{row}");

    // Deciding it again: exit 1 naming its stage and who decided, nothing changes.
    let again = env
        .run(
            &cfg,
            &[
                "deliveries",
                "approve",
                &delivery.to_string(),
                "--by",
                "mallory",
            ],
        )
        .await;
    let (_, stderr) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is not awaiting approval: its stage is deployed, approved by alice"),
        "{stderr}"
    );
    assert_eq!(pipeline(&env, &cfg, &id).await["decided_by"], "alice");
    assert_eq!(h.requests_to(Route::Deploy), 1);
    drop(d);
}

/// `data.approve_command` runs as printed from anywhere: the daemon started from its
/// directory as `loopwatch run -c a/lw.toml`, the line run with `sh -c` from another
/// directory and no `LOOPWATCH_CONFIG` approves the deploy (it named no config file and
/// exited 78). The status page shows the same line.
#[tokio::test]
async fn the_printed_approve_command_names_the_daemons_config_and_runs_from_another_directory() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let written = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let cfg = env.dir.path().join("a/lw.toml");
    std::fs::create_dir(env.dir.path().join("a")).unwrap();
    std::fs::rename(&written, &cfg).unwrap();
    let d = env.spawn_daemon_in(env.dir.path(), Path::new("a/lw.toml"));
    let addr = d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let waiting = event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    let line = waiting["data"]["approve_command"]
        .as_str()
        .unwrap()
        .to_string();
    let delivery = pipeline(&env, &cfg, &id).await["delivery_id"]
        .as_i64()
        .unwrap();
    assert_eq!(line, approve_line(&cfg, delivery));
    let status: Value = serde_json::from_str(
        &common::http_get(&format!("http://{addr}/api/v1/status"))
            .await
            .1,
    )
    .unwrap();
    assert_eq!(
        status["deploys"][0]["approve_command"],
        line.as_str(),
        "{status}"
    );

    let elsewhere = tempfile::tempdir().unwrap();
    // Pasted into a shell without `$USER` (a container's `sh`, `kubectl exec`): the
    // line names whoever `id` says runs it ("$USER" alone was empty there: exit 2).
    let out = run_line(elsewhere.path(), &line, None).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{line}: {stderr}");
    assert!(
        stdout.starts_with(&format!("approved delivery {delivery} ")),
        "{stdout}"
    );
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8(me.stdout).unwrap().trim().to_string();
    let deployed = event_of(&rx, "checkpoint.deployed", &id).await;
    assert_eq!(deployed["data"]["deployment"]["approved_by"], me.as_str());
    assert_eq!(h.requests_to(Route::Deploy), 1);
    drop(d);
}

/// With `store.url` naming a SQLite file relative to the daemon's directory (as every
/// recipe does), the printed line carries the store's absolute URL too: pasted from
/// another directory, `-c` alone found no state there.
#[tokio::test]
async fn the_printed_line_finds_a_relative_store_from_another_directory() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let db = env.db();
    common::edit(&cfg, |t| {
        t.replace(
            &format!("url = \"sqlite://{}\"", db.display()),
            "url = \"sqlite://rel.db\"",
        )
    });
    let d = env.spawn_daemon_in(env.dir.path(), &cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let waiting = event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    let line = waiting["data"]["approve_command"]
        .as_str()
        .unwrap()
        .to_string();
    let abs = env.dir.path().join("rel.db");
    assert!(
        line.ends_with(&format!(" --store-url sqlite://{}", abs.display())),
        "{line}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_line(elsewhere.path(), &line, Some("alice")).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{line}: {stderr}");
    assert!(stdout.starts_with("approved delivery "), "{stdout}");
    let deployed = event_of(&rx, "checkpoint.deployed", &id).await;
    assert_eq!(deployed["data"]["deployment"]["approved_by"], "alice");
    assert!(
        !elsewhere.path().join("rel.db").exists(),
        "no store made there"
    );
    drop(d);
}

#[tokio::test]
async fn a_rejected_deploy_is_never_deployed_and_anything_not_waiting_exits_1() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\""),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &id).await;

    // An id that names nothing, beside one that waits: nothing is decided.
    let out = env
        .run(
            &cfg,
            &["deliveries", "reject", &id, "no-such-id", "--by", "bob"],
        )
        .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-id: no deploy pipeline"),
        "{stderr}"
    );
    assert_eq!(
        pipeline(&env, &cfg, &id).await["stage"],
        "awaiting_approval"
    );

    // By checkpoint id, with a reason.
    let out = env
        .run(
            &cfg,
            &[
                "deliveries",
                "reject",
                &id,
                "--by",
                "bob",
                "--reason",
                "eval regressed",
            ],
        )
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.starts_with("rejected delivery "), "{stdout}");
    let row = pipeline(&env, &cfg, &id).await;
    assert_eq!(row["stage"], "rejected");
    assert_eq!(row["decision"], "rejected");
    assert_eq!(row["decided_by"], "bob");
    assert_eq!(row["decision_reason"], "eval regressed");
    let rejected = env.deliveries(&cfg, Some("rejected")).unwrap();
    assert_eq!(
        rejected[0]["last_error"], "rejected by bob: eval regressed",
        "{rejected}"
    );
    never_within(
        "a deploy call after rejection",
        Duration::from_secs(1),
        || deploy_calls(&h) > 0,
    )
    .await;
    let out = env
        .run(
            &cfg,
            &["deliveries", "approve", &id, "--by", "alice", "-o", "json"],
        )
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("its stage is rejected, rejected by bob"),
        "{stderr}"
    );
    // A bad --by is a usage error, nothing opened.
    let out = env
        .run(&cfg, &["deliveries", "approve", &id, "--by", " "])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(deploy_calls(&h), 0);
    drop(d);
}

/// Spec §2: approving or rejecting anything not waiting "exits 1 naming its status", and
/// an error is one readable line. A webhook delivery's id named its sink and status nowhere
/// (`no deploy pipeline has this delivery id`), and a refused decision printed two lines
/// (why, then `nothing was approved`).
#[tokio::test]
async fn deciding_what_is_not_waiting_names_its_status_in_one_line() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\""),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    // The receiver's delivery of that event: a webhook delivery, delivered.
    let hook = wait_for("the hook's delivery to be recorded", T, || {
        env.deliveries(&cfg, Some("delivered"))?
            .as_array()?
            .iter()
            .find(|x| x["sink"] == "hook")
            .and_then(|x| x["id"].as_i64())
    })
    .await;
    let decide = async |verb: &str, what: &str| {
        let out = env
            .run(&cfg, &["deliveries", verb, what, "--by", "alice"])
            .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{verb} {what}: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        stderr.trim_end().to_string()
    };
    for verb in ["approve", "reject"] {
        let past = if verb == "approve" {
            "approved"
        } else {
            "rejected"
        };
        assert_eq!(
            decide(verb, &hook.to_string()).await,
            format!(
                "error: {hook}: delivery {hook} (sink hook) is delivered, not a deploy awaiting approval; nothing was {past} (`loopwatch deploys` shows each pipeline's stage)"
            )
        );
    }
    // An id that names nothing at all keeps saying so.
    assert!(
        decide("approve", "999999")
            .await
            .starts_with("error: 999999: no deploy pipeline has this delivery id or checkpoint id"),
    );

    // Decided already: why and that nothing was decided, on one line.
    let out = env
        .run(&cfg, &["deliveries", "reject", &id, "--by", "bob"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let line = decide("approve", &id).await;
    assert!(
        line.starts_with(&format!("error: {id}: the deploy of step-100 (delivery ")),
        "{line}"
    );
    assert!(
        line.contains("is not awaiting approval: its stage is rejected, rejected by bob at ")
            && line.ends_with(
                "; nothing was approved (`loopwatch deploys` shows each pipeline's stage)"
            ),
        "{line}"
    );
    assert_eq!(pipeline(&env, &cfg, &id).await["stage"], "rejected");
    assert_eq!(deploy_calls(&h), 0);
    drop(d);
}

#[tokio::test]
async fn an_approval_nobody_gives_expires_at_its_deadline() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\"\napproval_deadline = \"3s\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let waiting = event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    let deadline = waiting["data"]["approval_deadline"]
        .as_str()
        .unwrap()
        .to_string();
    // The gauge an alert reads: the soonest deadline, as a Unix time.
    let series = r#"loopwatch_deploy_approval_deadline_timestamp_seconds{sink="deploy"}"#;
    let at = chrono::DateTime::parse_from_rfc3339(&deadline)
        .unwrap()
        .timestamp() as f64;
    let g = common::gauge(&addr, series).await.unwrap();
    assert!((g - at).abs() < 1.0, "{g} vs {deadline}");
    let row = wait_stage(&env, &cfg, &id, "expired").await;
    assert_eq!(row["decision"], Value::Null);
    let expired = env.deliveries(&cfg, Some("expired")).unwrap();
    assert_eq!(expired.as_array().unwrap().len(), 1, "{expired}");
    assert_eq!(common::gauge(&addr, series).await, Some(0.0));
    let out = env
        .run(&cfg, &["deliveries", "approve", &id, "--by", "late"])
        .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("its stage is expired"), "{stderr}");
    assert_eq!(deploy_calls(&h), 0, "nothing validated or deployed");
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deploys{sink="deploy",stage="expired"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn before_promote_deploys_and_follows_then_promotes_only_once_approved() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_promote\"\npromote_to = \"production\""),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    event_of(&rx, "checkpoint.deployed", &id).await;
    event_of(&rx, "checkpoint.deployment_active", &id).await;
    let waiting = event_of(&rx, "checkpoint.awaiting_approval", &id).await;
    assert_eq!(waiting["data"]["approval"], "before_promote");
    assert_eq!(waiting["data"]["deployment"]["status"], "ACTIVE");
    let dep = h.deployments_of("qwen-step-100")[0].id.clone();
    assert_eq!(waiting["data"]["deployment"]["deployment_id"], dep.as_str());
    assert_eq!(
        pipeline(&env, &cfg, &id).await["stage"],
        "awaiting_approval"
    );
    never_within(
        "a promotion before approval",
        Duration::from_secs(1),
        || h.requests_to(Route::Promote) > 0,
    )
    .await;

    // Deployed, it is listed as waiting for approval, as a deploy waiting is.
    let delivery = pipeline(&env, &cfg, &id).await["delivery_id"].to_string();
    let listed = |status: &str| -> Vec<String> {
        env.deliveries(&cfg, Some(status))
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|d| d["sink"] == "deploy")
            .map(|d| d["id"].to_string())
            .collect()
    };
    assert_eq!(listed("awaiting_approval"), std::slice::from_ref(&delivery));
    assert!(listed("delivered").is_empty());

    // Named twice (checkpoint id and delivery id): decided once.
    let out = env
        .run(
            &cfg,
            &["deliveries", "approve", &id, &delivery, "--by", "carol"],
        )
        .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.contains("promotes it now"), "{stdout}");
    let promoted = event_of(&rx, "checkpoint.promoted", &id).await;
    let deployment = &promoted["data"]["deployment"];
    assert_eq!(deployment["environment"], "production");
    assert_eq!(deployment["deployment_id"], dep.as_str());
    assert_eq!(deployment["approved_by"], "carol");
    let p = h.promotions();
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(
        (p[0].deployment_id.as_str(), p[0].environment.as_str()),
        (dep.as_str(), "production")
    );
    assert!(p[0].scale_down_previous_deployment);
    let row = wait_stage(&env, &cfg, &id, "promoted").await;
    assert_eq!(row["environment"], "production");
    assert_eq!(h.deploys().len(), 1);
    never_within("a second promotion", Duration::from_secs(1), || {
        h.requests_to(Route::Promote) > 1
    })
    .await;
    assert_eq!(received_of(&rx, "checkpoint.promoted").len(), 1);
    assert_eq!(listed("delivered"), std::slice::from_ref(&delivery));
    assert!(listed("awaiting_approval").is_empty());

    // A newer checkpoint's promotion, rejected: listed as rejected, never promoted.
    let newer = h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &newer).await;
    let second = pipeline(&env, &cfg, &newer).await["delivery_id"].to_string();
    let out = env
        .run(
            &cfg,
            &[
                "deliveries",
                "reject",
                &newer,
                "--by",
                "dave",
                "--reason",
                "evals regressed",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    wait_stage(&env, &cfg, &newer, "rejected").await;
    assert_eq!(listed("rejected"), std::slice::from_ref(&second));
    // Listed with the decision as its last error, as a deploy rejected before deploying.
    let rows = env.deliveries(&cfg, Some("rejected")).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"].as_i64().map(|i| i.to_string()).as_ref() == Some(&second));
    assert_eq!(
        row.unwrap()["last_error"],
        "rejected by dave: evals regressed",
        "{rows}"
    );
    assert_eq!(listed("delivered"), [delivery]);
    assert_eq!(h.promotions().len(), 1);
    drop(d);
}

#[tokio::test]
async fn a_newer_live_deployment_is_promoted_and_the_older_one_deactivated_never_a_foreign_one() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    // Someone else's deployment of the same model, in no environment.
    let foreign = h.add_foreign_deployment("qwen");
    let first = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        one_model_sink("promote_to = \"production\"\ndeactivate_superseded = true"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&first, Some("COMPLETE"));
    event_of(&rx, "checkpoint.promoted", &first).await;
    let old = pipeline(&env, &cfg, &first).await["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing older of this sink to clean up yet; the foreign one stays.
    never_within(
        "a deactivation with nothing older",
        Duration::from_secs(1),
        || !h.deactivations().is_empty(),
    )
    .await;

    h.advance_clock(Duration::from_secs(1));
    let second = h.add_checkpoint("run-1", "sampler", "step-200", Some("SYNCING"));
    h.set_status(&second, Some("COMPLETE"));
    let promoted = event_of(&rx, "checkpoint.promoted", &second).await;
    let new = promoted["data"]["deployment"]["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_for("the older deployment deactivated", T, || {
        (!h.deactivations().is_empty()).then_some(())
    })
    .await;
    let p = h.promotions();
    let promoted_ids: Vec<&str> = p.iter().map(|p| p.deployment_id.as_str()).collect();
    assert_eq!(promoted_ids, [old.as_str(), new.as_str()]);
    let model = h.deployments_of("qwen")[0].model_id.clone();
    never_within("another deactivation", Duration::from_secs(1), || {
        h.deactivations().len() > 1
    })
    .await;
    assert_eq!(h.deactivations(), vec![(model, old.clone())]);
    let deps = h.deployments_of("qwen");
    let of = |id: &str| deps.iter().find(|d| d.id == id).unwrap().clone();
    assert!(
        !of(&foreign).deactivated,
        "a foreign deployment is never touched"
    );
    assert!(of(&old).deactivated);
    assert_eq!(of(&new).environment.as_deref(), Some("production"));
    let row = pipeline(&env, &cfg, &first).await;
    assert_eq!(row["stage"], "superseded");
    assert!(row["deactivated_at"].is_string(), "{row}");
    // Shown as it is now: in no environment, deactivated.
    assert_eq!(row["environment"], Value::Null, "{row}");
    assert_eq!(row["deployment_status"], "INACTIVE", "{row}");
    assert_eq!(pipeline(&env, &cfg, &second).await["stage"], "promoted");
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deployments_deactivated_total{sink="deploy"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"loopwatch_api_requests_total{code="200",endpoint="promote"} 2"#),
        "{m}"
    );
    drop(d);
}

/// Without clean-up, a newer deployment promoted to the environment replaces the older
/// one there: the older pipeline no longer shows the environment and ends `superseded`,
/// so one environment has one promoted pipeline.
#[tokio::test]
async fn a_promotion_replaces_the_older_promoted_deployment_in_its_environment() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    let first = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        one_model_sink("promote_to = \"production\""),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&first, Some("COMPLETE"));
    event_of(&rx, "checkpoint.promoted", &first).await;
    h.advance_clock(Duration::from_secs(1));
    let second = h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    event_of(&rx, "checkpoint.promoted", &second).await;
    let older = wait_stage(&env, &cfg, &first, "superseded").await;
    assert_eq!(older["environment"], Value::Null, "{older}");
    assert_eq!(older["error"], "replaced in production by step-200");
    let newer = pipeline(&env, &cfg, &second).await;
    assert_eq!(
        (&newer["stage"], &newer["environment"]),
        (&Value::from("promoted"), &Value::from("production"))
    );
    let m = common::metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_deploys{sink="deploy",stage="promoted"} 1"#),
        "{m}"
    );
    assert!(h.deactivations().is_empty(), "no clean-up asked for");
    drop(d);
}

#[tokio::test]
async fn a_newer_checkpoint_supersedes_an_older_one_still_waiting_for_approval() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let older = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    h.advance_clock(Duration::from_secs(1));
    let newer = h.add_checkpoint("run-1", "sampler", "step-200", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("approval = \"before_deploy\"\nfollow = false"),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    h.set_status(&older, Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &older).await;
    h.set_status(&newer, Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &newer).await;
    let row = wait_stage(&env, &cfg, &older, "superseded").await;
    assert!(
        row["error"]
            .as_str()
            .unwrap()
            .contains("superseded by step-200"),
        "{row}"
    );
    let superseded = env.deliveries(&cfg, Some("superseded")).unwrap();
    assert_eq!(superseded.as_array().unwrap().len(), 1, "{superseded}");
    // Counted as every superseded delivery is, though never attempted (just after the
    // write that superseded it).
    let counted = r#"loopwatch_deliveries_total{outcome="superseded",sink="deploy"}"#;
    assert!(
        common::until(T, Duration::from_millis(20), async || {
            common::metric(&addr, counted).await > 0.0
        })
        .await,
        "the superseded delivery was never counted"
    );
    assert_eq!(common::metric(&addr, counted).await, 1.0);
    let out = env
        .run(&cfg, &["deliveries", "approve", &older, "--by", "alice"])
        .await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("its stage is superseded"), "{stderr}");
    let out = env
        .run(&cfg, &["deliveries", "approve", &newer, "--by", "alice"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    event_of(&rx, "checkpoint.deployed", &newer).await;
    let deploys = h.deploys();
    assert_eq!(deploys.len(), 1, "{deploys:?}");
    assert_eq!(h.deployments_of("qwen-step-100").len(), 0);
    assert_eq!(h.deployments_of("qwen-step-200").len(), 1);
    drop(d);
}

#[tokio::test]
async fn two_shells_approving_one_deploy_at_once_deploy_it_once() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let ids: Vec<String> = (1..=3)
        .map(|i| {
            h.advance_clock(Duration::from_millis(10));
            h.add_checkpoint("run-1", "sampler", &format!("step-{i}00"), Some("SYNCING"))
        })
        .collect();
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink(
            "approval = \"before_deploy\"\nfollow = false\nlatest_only = false\nconcurrency = 3"
        ),
        lifecycle_hook(&rx.url)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    for id in &ids {
        h.set_status(id, Some("COMPLETE"));
    }
    for id in &ids {
        event_of(&rx, "checkpoint.awaiting_approval", id).await;
    }
    for id in &ids {
        // Two processes started together, each deciding the same pipeline.
        let a = env
            .cmd(&cfg, &["deliveries", "approve", id, "--by", "shell-a"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let b = env
            .cmd(&cfg, &["deliveries", "approve", id, "--by", "shell-b"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (a, b) = tokio::task::spawn_blocking(move || {
            (a.wait_with_output().unwrap(), b.wait_with_output().unwrap())
        })
        .await
        .unwrap();
        let codes = [a.status.code(), b.status.code()];
        assert!(
            codes == [Some(0), Some(1)] || codes == [Some(1), Some(0)],
            "{codes:?}: {} | {}",
            text(&a).1,
            text(&b).1
        );
        let (winner, loser) = if codes[0] == Some(0) {
            ("shell-a", &b)
        } else {
            ("shell-b", &a)
        };
        assert!(
            text(loser).1.contains(&format!("approved by {winner}")),
            "{}",
            text(loser).1
        );
        let deployed = event_of(&rx, "checkpoint.deployed", id).await;
        assert_eq!(deployed["data"]["deployment"]["approved_by"], winner);
    }
    never_within("a second deploy", Duration::from_secs(1), || {
        h.requests_to(Route::Deploy) > 3
    })
    .await;
    assert_eq!(h.deploys().len(), 3);
    drop(d);
}

#[tokio::test]
async fn a_promote_whose_answer_is_lost_is_found_by_reading_and_never_sent_again() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        deploy_sink("promote_to = \"production\""),
        lifecycle_hook(&rx.url)
    ));
    // The promotion acts, then the connection drops before the body.
    h.push_fault_to(Route::Promote, Fault::ActThenClose);
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    let promoted = event_of(&rx, "checkpoint.promoted", &id).await;
    assert_eq!(promoted["data"]["deployment"]["environment"], "production");
    assert_eq!(
        h.requests_to(Route::Promote),
        1,
        "never promoted blindly again"
    );
    assert_eq!(h.promotions().len(), 1);
    let row = wait_stage(&env, &cfg, &id, "promoted").await;
    assert_eq!(row["promote_in_doubt"], false);
    never_within("a second promotion", Duration::from_secs(1), || {
        h.requests_to(Route::Promote) > 1
    })
    .await;
    assert_eq!(received_of(&rx, "checkpoint.promoted").len(), 1);
    drop(d);
}

/// A daemon promoting every active deployment to production (`latest_only = false`),
/// with `retry_schedule` replaced by `schedule` when given; its lifecycle events to `rx`.
async fn promoting(env: &Env, rx: &Receiver, schedule: Option<&str>) -> common::Daemon {
    env.sim.handle().set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    let mut sink = deploy_sink("promote_to = \"production\"\nlatest_only = false");
    if let Some(schedule) = schedule {
        sink = sink.replace(
            "retry_schedule = [\"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]",
            &format!("retry_schedule = {schedule}"),
        );
    }
    let cfg = env.write_config(&format!("{QWEN}{sink}{}", lifecycle_hook(&rx.url)));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    d
}

/// An answer of `code` with the API's default error body.
fn status(code: u16) -> Fault {
    Fault::Status {
        code,
        retry_after: None,
        body: None,
    }
}

#[tokio::test]
async fn a_promote_answered_503_is_retried_and_a_400_fails_it() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let d = promoting(&env, &rx, None).await;
    // A 503 before acting: read again, not there, promoted on the next attempt.
    h.push_fault_to(Route::Promote, status(503));
    let ok = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    event_of(&rx, "checkpoint.promoted", &ok).await;
    assert_eq!(h.requests_to(Route::Promote), 2);
    assert_eq!(h.promotions().len(), 1);
    // A 400: refused, failed at once, nothing promoted.
    h.push_fault_to(Route::Promote, status(400));
    promotion_fails(&env, &h, "step-200", "promote refused (HTTP 400)", 3).await;
    drop(d);
}

/// Checkpoint `name` of run-1 completes, and its promotion ends `failed` with an error
/// starting with `why`, after `calls` promote calls in all (the first checkpoint's
/// included), never one more; one promotion in all.
async fn promotion_fails(env: &Env, h: &SimHandle, name: &str, why: &str, calls: u64) {
    let cfg = env.dir.path().join("loopwatch.toml");
    h.advance_clock(Duration::from_secs(1));
    let bad = h.add_checkpoint("run-1", "sampler", name, Some("COMPLETE"));
    let row = wait_stage(env, &cfg, &bad, "failed").await;
    assert!(row["error"].as_str().unwrap().starts_with(why), "{row}");
    assert_eq!(h.requests_to(Route::Promote), calls);
    assert_eq!(h.promotions().len(), 1);
    never_within("another promote call", Duration::from_secs(1), || {
        h.requests_to(Route::Promote) > calls
    })
    .await;
}

/// The last promote attempt's answer lost is reconciled as a deploy call's is: the
/// deployment is read, promoted when it is in the environment (it ended `failed` while
/// the deployment was in production), failed when it is not, and never called again.
#[tokio::test]
async fn the_last_promote_attempts_lost_answer_is_read_not_taken_for_a_failure() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let d = promoting(&env, &rx, Some("[\"300ms\"]")).await;
    let cfg = env.dir.path().join("loopwatch.toml");
    // Two attempts: a 503, then one that acts and loses its answer.
    h.push_fault_to(Route::Promote, status(503));
    h.push_fault_to(Route::Promote, Fault::ActThenClose);
    let ok = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    let promoted = event_of(&rx, "checkpoint.promoted", &ok).await;
    assert_eq!(promoted["data"]["deployment"]["environment"], "production");
    let row = wait_stage(&env, &cfg, &ok, "promoted").await;
    assert_eq!(row["promote_in_doubt"], false, "{row}");
    assert_eq!(h.requests_to(Route::Promote), 2);
    // Two attempts answered 503 that did not act: read, not there, failed; no third call.
    h.push_fault_to(Route::Promote, status(503));
    h.push_fault_to(Route::Promote, status(503));
    promotion_fails(&env, &h, "step-200", "not promoted after 2 attempts", 4).await;
    drop(d);
}

/// The sum of `loopwatch_store_errors_total` over its `op`s: a query a dialect rejects
/// shows here.
fn store_errors(page: &str) -> f64 {
    page.lines()
        .filter(|l| l.starts_with("loopwatch_store_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_two_hosts_approving_at_once_and_two_replicas_deploy_promote_and_clean_up_once() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    h.set_deploy_script(&[
        ("BUILDING", Duration::ZERO),
        ("ACTIVE", Duration::from_millis(400)),
    ]);
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        one_model_sink(
            "approval = \"before_deploy\"\npromote_to = \"production\"\ndeactivate_superseded = true"
        ),
        lifecycle_hook(&rx.url)
    ));
    let url = common::pg::fresh_database().await;
    common::set_store_url(&cfg, &url, "\nlease_ttl = \"3s\"");
    let replica =
        |name: &str| env.spawn_daemon_env(&cfg, &[("LOOPWATCH__STORE__REPLICA_ID", name)]);
    let (a, b) = (replica("a"), replica("b"));
    let addr_a = a.ready().await;
    let addr_b = b.addr().await;
    // Each host decides with its own process (and replica id), both at once.
    let approve_from_two_hosts = async |id: &str| {
        let host = |name: &str| {
            env.cmd(&cfg, &["deliveries", "approve", id, "--by", name])
                .env("LOOPWATCH__STORE__REPLICA_ID", name)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (x, y) = (host("host-a"), host("host-b"));
        let (x, y) = tokio::task::spawn_blocking(move || {
            (x.wait_with_output().unwrap(), y.wait_with_output().unwrap())
        })
        .await
        .unwrap();
        let mut codes = [x.status.code(), y.status.code()];
        codes.sort();
        assert_eq!(codes, [Some(0), Some(1)], "{} | {}", text(&x).1, text(&y).1);
    };
    let first = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &first).await;
    approve_from_two_hosts(&first).await;
    event_of(&rx, "checkpoint.promoted", &first).await;
    assert_eq!(h.deploys().len(), 1);

    // A second checkpoint waits, a third supersedes it while it waits; the third is
    // approved, promoted, and the first one's deployment deactivated.
    h.advance_clock(Duration::from_secs(1));
    let second = h.add_checkpoint("run-1", "sampler", "step-200", Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &second).await;
    h.advance_clock(Duration::from_secs(1));
    let third = h.add_checkpoint("run-1", "sampler", "step-300", Some("COMPLETE"));
    event_of(&rx, "checkpoint.awaiting_approval", &third).await;
    wait_stage(&env, &cfg, &second, "superseded").await;
    approve_from_two_hosts(&third).await;
    event_of(&rx, "checkpoint.promoted", &third).await;
    wait_for("the first deployment deactivated", T, || {
        (!h.deactivations().is_empty()).then_some(())
    })
    .await;
    never_within(
        "a second deploy, promotion or deactivation",
        Duration::from_secs(2),
        || {
            h.requests_to(Route::Deploy) > 2
                || h.requests_to(Route::Promote) > 2
                || h.deactivations().len() > 1
        },
    )
    .await;
    assert_eq!(h.deploys().len(), 2);
    assert_eq!(h.promotions().len(), 2);
    let old = pipeline(&env, &cfg, &first).await;
    assert_eq!(
        h.deactivations()[0].1,
        old["deployment_id"].as_str().unwrap()
    );
    for addr in [&addr_a, &addr_b] {
        let m = common::metrics(addr).await;
        assert_eq!(store_errors(&m), 0.0, "{m}");
    }
    drop((a, b));
}
