//! The recipes in config/examples/: each passes `loopwatch check-config` with the
//! variables it names, templates render the saved bodies for a fixed event (the native
//! deploy recipe's Slack note for a fixed `checkpoint.deployed`). Also how the binary
//! reports bad sink templates and signing keys (exit 78, one line per problem, no secret
//! echoed).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Utc};
use loopwatch::config::{Environment, load};
use loopwatch::delivery::Sink;
use loopwatch::model::{CheckpointTarget, Event, EventType};
use loopwatch::store::StoredEvent;
use serde_json::{Value, json};

const EX_CONFIG: i32 = 78;

/// Each recipe and the environment variables it names, with sample values.
const RECIPES: &[(&str, &[(&str, &str)])] = &[
    (
        "deploy-service.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "DEPLOYER_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ],
    ),
    (
        "slack.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0000/B0000/slacksecret42",
            ),
        ],
    ),
    (
        "github-actions.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            ("GITHUB_TOKEN", "github_pat_recipe_secret_7"),
        ],
    ),
    (
        "argo-events.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            ("ARGO_WEBHOOK_TOKEN", "argo-token-recipe-3"),
        ],
    ),
    (
        "approve-in-slack.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0000/B0000/slacksecret42",
            ),
        ],
    ),
    (
        "discord.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "DISCORD_WEBHOOK_URL",
                "https://discord.com/api/webhooks/1234/discordsecret5",
            ),
        ],
    ),
    (
        "teams.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "TEAMS_WEBHOOK_URL",
                "https://prod-00.westus.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=teamssecret6",
            ),
        ],
    ),
    (
        "ntfy.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            ("NTFY_TOPIC_URL", "https://ntfy.sh/loopwatch-ntfysecret8"),
        ],
    ),
    (
        "baseten-deploy.toml",
        &[
            ("BASETEN_API_KEY", "bt-key-recipe-1"),
            (
                "SLACK_WEBHOOK_URL",
                "https://hooks.slack.com/services/T0000/B0000/slacksecret42",
            ),
        ],
    ),
];

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples")
}

/// `loopwatch ARGS` with exactly `vars` among the variables any recipe names.
fn loopwatch(args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(common::bin());
    c.args(args)
        .env_remove("LOOPWATCH_CONFIG")
        .env_remove("RUST_LOG");
    for (_, recipe_vars) in RECIPES {
        for (k, _) in *recipe_vars {
            c.env_remove(k);
        }
    }
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOOPWATCH__")) {
        c.env_remove(k);
    }
    c.envs(vars.iter().copied()).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().into()
}

/// The fixed event the saved bodies in config/examples/expected/ were rendered from.
fn sample_event(kind: EventType) -> StoredEvent {
    let checkpoint = json!({
        "id": "ckpt_7f3a9c2e41", "checkpoint_id": "step-100", "run_id": "k4q95w5",
        "target": "sampler", "checkpoint_type": "lora", "base_model": "Qwen/Qwen3-8B",
        "lora_adapter_config": {"r": 16, "lora_alpha": 32}, "size_bytes": 134217728,
        "created_at": "2026-11-26T22:59:38.120Z", "sync_status": "COMPLETE"
    });
    let e = Event {
        id: "evt_4be1c0de5a7f9b3d2e1c0a9b8f".into(),
        kind,
        target: "qwen-sft".into(),
        checkpoint_id: "ckpt_7f3a9c2e41".into(),
        checkpoint_name: "step-100".into(),
        run_id: "k4q95w5".into(),
        checkpoint_target: CheckpointTarget::Sampler,
        detected_at: at("2026-11-26T23:01:02.345Z"),
        previous_sync_status: Some("SYNCING".into()),
        sync_status: Some("COMPLETE".into()),
        first_seen_at: at("2026-11-26T22:59:40.001Z"),
        sync_seconds: Some(82.344),
        ready_by: None,
        checkpoint: checkpoint.to_string(),
    };
    StoredEvent::from_event(1, &e)
}

/// [`sample_event`] with another checkpoint name (in the event and in its object).
fn sample_event_named(kind: EventType, name: &str) -> StoredEvent {
    let mut e = sample_event(kind);
    let mut body: Value = serde_json::from_str(&e.body).unwrap();
    body["data"]["checkpoint"]["checkpoint_id"] = name.into();
    e.body = body.to_string();
    e
}

fn recipe_sink(file: &str, vars: &[(&str, &str)]) -> Sink {
    let cfg = load(
        &examples().join(file),
        &Environment::from_pairs(vars.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("{file}: {e}"));
    assert_eq!(cfg.sinks.len(), 1, "{file}: one sink per recipe");
    Sink::new(cfg.sinks[0].clone(), loopwatch::delivery::webhook::client()).unwrap()
}

fn vars_of(file: &str) -> &'static [(&'static str, &'static str)] {
    RECIPES.iter().find(|(f, _)| *f == file).unwrap().1
}

#[test]
fn every_recipe_passes_check_config_with_the_variables_it_names() {
    let mut on_disk: Vec<String> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = RECIPES.iter().map(|(f, _)| f.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "every recipe is checked here");

    for (file, vars) in RECIPES {
        let path = examples().join(file);
        let path = path.to_str().unwrap();
        let out = loopwatch(&["check-config", "-c", path], vars);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        for (_, value) in vars.iter() {
            assert!(
                !stdout.contains(value) && !stderr.contains(value),
                "{file}: a secret was printed:\n{stdout}{stderr}"
            );
        }
        // Every variable it names is really needed: without them, 78 naming each one.
        let out = loopwatch(&["check-config", "-c", path], &[]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{file}");
        for (name, _) in vars.iter() {
            assert!(
                stderr.contains(name),
                "{file}: {name} not named in {stderr}"
            );
        }
    }
}

#[test]
fn recipe_templates_render_the_saved_bodies() {
    for (file, expected) in [
        ("slack.toml", "expected/slack.json"),
        ("github-actions.toml", "expected/github-actions.json"),
        ("discord.toml", "expected/discord.json"),
        ("teams.toml", "expected/teams.json"),
    ] {
        let sink = recipe_sink(file, vars_of(file));
        let p = sink
            .payload(&sample_event(EventType::Completed))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(p.content_type, "application/json", "{file}");
        let rendered = String::from_utf8(p.body).unwrap();
        let got: Value = serde_json::from_str(&rendered)
            .unwrap_or_else(|e| panic!("{file} renders invalid JSON ({e}):\n{rendered}"));
        let want: Value =
            serde_json::from_str(&std::fs::read_to_string(examples().join(expected)).unwrap())
                .unwrap();
        assert_eq!(
            got, want,
            "{file} no longer renders {expected}; it renders:\n{rendered}"
        );
    }
    // Slack's other event: still one JSON object with a text.
    let sink = recipe_sink("slack.toml", vars_of("slack.toml"));
    let p = sink.payload(&sample_event(EventType::Stalled)).unwrap();
    let v: Value = serde_json::from_slice(&p.body).unwrap();
    assert!(
        v["text"]
            .as_str()
            .unwrap()
            .contains("is still COMPLETE since 2026-11-26T22:59:40.001Z"),
        "{v}"
    );
}

#[test]
fn recipes_without_templates_send_their_documented_format() {
    let ev = sample_event(EventType::Completed);
    let p = recipe_sink("deploy-service.toml", vars_of("deploy-service.toml"))
        .payload(&ev)
        .unwrap();
    assert_eq!(p.content_type, "application/json");
    assert_eq!(p.body, ev.body.as_bytes());
    let p = recipe_sink("argo-events.toml", vars_of("argo-events.toml"))
        .payload(&ev)
        .unwrap();
    assert_eq!(p.content_type, "application/cloudevents+json");
    let v: Value = serde_json::from_slice(&p.body).unwrap();
    assert_eq!(v["type"], "loopwatch.checkpoint.completed");
    assert_eq!(v["source"], "bt://loops:k4q95w5");
    assert_eq!(v["subject"], "bt://loops:k4q95w5/sampler_weights/step-100");
    assert_eq!(v["data"]["checkpoint"]["id"], "ckpt_7f3a9c2e41");
}

/// The native deploy recipe: the deploy sink as documented, and its Slack sink renders
/// the saved note for a fixed `checkpoint.deployed` (and takes nothing else).
#[test]
fn the_native_deploy_recipe_deploys_samplers_and_announces_them_on_slack() {
    let file = "baseten-deploy.toml";
    let cfg = load(
        &examples().join(file),
        &Environment::from_pairs(vars_of(file).iter().copied()),
    )
    .unwrap();
    let deploy = cfg.sink("deploy").unwrap();
    let d = deploy.deploy().expect("a baseten_deploy sink");
    assert_eq!(
        (d.instance_type_id.as_str(), d.latest_only, d.validate),
        ("H100", true, true)
    );
    assert_eq!(deploy.concurrency.get(), 1);
    assert!(deploy.wants(EventType::Completed, "qwen-sft", &CheckpointTarget::Sampler));
    assert!(!deploy.wants(EventType::Completed, "qwen-sft", &CheckpointTarget::Trainer));
    let slack_cfg = cfg.sink("slack").unwrap();
    assert!(slack_cfg.wants(EventType::Deployed, "qwen-sft", &CheckpointTarget::Sampler));
    assert!(!slack_cfg.wants(EventType::Completed, "qwen-sft", &CheckpointTarget::Sampler));

    let completed = sample_event(EventType::Completed);
    let request = loopwatch::delivery::deploy::DeploySink::new(d.clone())
        .unwrap()
        .request(&completed)
        .unwrap();
    assert_eq!(request.model_name, "qwen-sft");
    assert_eq!(request.checkpoint_ids, vec!["ckpt_7f3a9c2e41".to_string()]);
    let deployed = loopwatch::delivery::deploy::deployed_event(
        &completed,
        "deploy",
        &loopwatch::delivery::deploy::Deployed {
            model_name: request.model_name,
            model_id: "mdl_4q7x2".into(),
            deployment_id: "dep_9k3m1".into(),
            reconciled: false,
        },
        at("2026-11-26T23:04:10.500Z"),
    )
    .unwrap();
    let slack = Sink::new(slack_cfg.clone(), loopwatch::delivery::webhook::client()).unwrap();
    let rendered = String::from_utf8(slack.payload(&deployed).unwrap().body).unwrap();
    let got: Value = serde_json::from_str(&rendered)
        .unwrap_or_else(|e| panic!("{file} renders invalid JSON ({e}):\n{rendered}"));
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("expected/baseten-deploy-slack.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, want, "{file} renders:\n{rendered}");
}

/// "Deploy every checkpoint, approve in Slack, promote to production": the deploy sink
/// waits before promoting, and its Slack note for a fixed `checkpoint.awaiting_approval`
/// is the saved one, with the exact approve and reject commands; the promotion's note
/// names who approved.
#[test]
fn the_approve_in_slack_recipe_shows_the_approve_command_and_announces_the_promotion() {
    use loopwatch::config::Approval;
    use loopwatch::delivery::deploy::{DeploymentData, lifecycle_event};
    let file = "approve-in-slack.toml";
    let cfg = load(
        &examples().join(file),
        &Environment::from_pairs(vars_of(file).iter().copied()),
    )
    .unwrap();
    let d = cfg
        .sink("deploy")
        .unwrap()
        .deploy()
        .expect("a baseten_deploy sink");
    assert_eq!(d.approval, Approval::BeforePromote);
    assert_eq!(d.promote_to.as_deref(), Some("production"));
    assert!(d.deactivate_superseded && d.follow && d.latest_only);
    let slack_cfg = cfg.sink("slack").unwrap();
    for kind in [
        EventType::AwaitingApproval,
        EventType::Promoted,
        EventType::DeploymentFailed,
    ] {
        assert!(
            slack_cfg.wants(kind, "qwen-sft", &CheckpointTarget::Sampler),
            "{kind:?}"
        );
    }
    assert!(!slack_cfg.wants(EventType::Completed, "qwen-sft", &CheckpointTarget::Sampler));
    let slack = Sink::new(slack_cfg.clone(), loopwatch::delivery::webhook::client()).unwrap();

    let completed = sample_event(EventType::Completed);
    let mut data = DeploymentData {
        sink: "deploy".into(),
        model_name: Some("qwen-sft".into()),
        model_id: Some("mdl_4q7x2".into()),
        deployment_id: Some("dep_9k3m1".into()),
        status: Some("ACTIVE".into()),
        ..Default::default()
    };
    let waiting = loopwatch::delivery::approval::waiting_event(
        // As a daemon that read /etc/loopwatch/loopwatch.toml prints it.
        &loopwatch::config::Invocation::with_config("/etc/loopwatch/loopwatch.toml".into()),
        &completed,
        12,
        &data,
        Approval::BeforePromote,
        at("2026-11-27T23:09:41.000Z"),
        at("2026-11-26T23:09:41.000Z"),
    )
    .unwrap();
    let rendered = String::from_utf8(slack.payload(&waiting).unwrap().body).unwrap();
    let got: Value = serde_json::from_str(&rendered)
        .unwrap_or_else(|e| panic!("{file} renders invalid JSON ({e}):\n{rendered}"));
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("expected/approve-in-slack.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(got, want, "{file} renders:\n{rendered}");
    assert!(
        got["text"].as_str().unwrap().contains(
            "`loopwatch deliveries approve 12 --by \"${USER:-$(id -un)}\" -c /etc/loopwatch/loopwatch.toml`"
        ),
        "{got}"
    );

    data.environment = Some("production".into());
    data.approved_by = Some("alice".into());
    let promoted = lifecycle_event(
        &completed,
        EventType::Promoted,
        &data,
        at("2026-11-26T23:30:00.000Z"),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&slack.payload(&promoted).unwrap().body).unwrap();
    assert_eq!(
        v["text"],
        ":rocket: *qwen-sft*: checkpoint `step-100` is in production (deployment dep_9k3m1, approved by alice)\n`bt://loops:k4q95w5/sampler_weights/step-100`"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

const TARGET: &str = "[[targets]]\nname = \"qwen\"\nrun_id = \"k4\"\n";

#[test]
fn a_template_that_does_not_compile_exits_78_naming_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "lw.toml",
        &format!(
            "{TARGET}[[sinks]]\nname = \"team-chat\"\nurl = \"https://x.example/h\"\nformat = \"template\"\ntemplate = '''{{\"text\": {{{{ data.uri | tojson }}\n{{% if %}}'''\n"
        ),
    );
    for cmd in ["check-config", "run", "once"] {
        let out = loopwatch(&[cmd, "-c", &cfg], &[("BASETEN_API_KEY", "k")]);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{cmd}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("sinks[0].template"))
            .unwrap_or_else(|| panic!("{cmd}: {stderr}"));
        assert!(
            line.contains("\"team-chat\"") && line.contains("lw.toml"),
            "{line}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_signing_keys_exit_78_naming_the_key_and_never_echo_it() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/standard-webhooks-vectors.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let good = vectors["v1a_vectors"][0]["secret_key"].as_str().unwrap();
    let public = vectors["v1a_vectors"][0]["public_key"].as_str().unwrap();
    let b64 = good.strip_prefix("whsk_").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sink = |key_file: &str| {
        format!(
            "{TARGET}[[sinks]]\nname = \"deployer\"\nurl = \"https://x.example/h\"\nsigning_key_file = \"{key_file}\"\n"
        )
    };

    // A good key: accepted; check-config shows the public key, never the private one.
    let key = write(dir.path(), "good.key", &format!("{good}\n"));
    let cfg = write(dir.path(), "good.toml", &sink(&key));
    let out = loopwatch(&["check-config", "-c", &cfg], &[("BASETEN_API_KEY", "k")]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stdout.contains(public), "{stdout}");
    assert!(!stdout.contains(&b64[..16]), "{stdout}");

    let missing = dir.path().join("missing.key");
    let cases = [
        (
            "bad prefix",
            write(dir.path(), "prefix.key", &format!("whsec_{b64}")),
            "not a whsk_ key",
        ),
        (
            "wrong length",
            write(dir.path(), "short.key", &format!("whsk_{}", &b64[..44])),
            "decodes to 33 bytes",
        ),
        (
            "unreadable file",
            missing.to_str().unwrap().to_string(),
            "cannot read",
        ),
    ];
    for (what, key_file, reason) in cases {
        let cfg = write(dir.path(), "bad.toml", &sink(&key_file));
        let out = loopwatch(&["check-config", "-c", &cfg], &[("BASETEN_API_KEY", "k")]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{what}: {stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains("sinks[0].signing_key"))
            .unwrap_or_else(|| panic!("{what}: {stderr}"));
        assert!(line.contains(reason), "{what}: {line}");
        assert!(
            !format!("{stdout}{stderr}").contains(&b64[..16]),
            "{what}: {stderr}"
        );
    }
}

/// Discord's execute-webhook body: `content` of 1 to 2,000 characters, nothing Discord
/// does not take, and no mention parsed (a name like "@everyone" pings nobody).
fn assert_discord_shape(v: &Value, what: &str) {
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {v}"));
    for k in o.keys() {
        assert!(
            ["content", "allowed_mentions"].contains(&k.as_str()),
            "{what}: Discord has no field {k}"
        );
    }
    let content = o["content"].as_str().expect("content is a string");
    let n = content.chars().count();
    assert!((1..=2000).contains(&n), "{what}: content of {n} characters");
    assert_eq!(v["allowed_mentions"], json!({ "parse": [] }), "{what}");
}

/// A Teams workflow's "post to a channel" message: one Adaptive Card attachment, schema
/// version at most 1.5, a body of TextBlocks (with text) and FactSets (title and value
/// strings).
fn assert_teams_shape(v: &Value, what: &str) {
    assert_eq!(v["type"], "message", "{what}");
    let attachments = v["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 1, "{what}");
    let a = &attachments[0];
    assert_eq!(
        a["contentType"], "application/vnd.microsoft.card.adaptive",
        "{what}"
    );
    let card = &a["content"];
    assert_eq!(card["type"], "AdaptiveCard", "{what}");
    let version: f64 = card["version"].as_str().unwrap().parse().unwrap();
    assert!((1.0..=1.5).contains(&version), "{what}: version {version}");
    let body = card["body"].as_array().expect("a card body");
    assert!(!body.is_empty(), "{what}");
    for el in body {
        match el["type"].as_str() {
            Some("TextBlock") => assert!(el["text"].is_string(), "{what}: {el}"),
            Some("FactSet") => {
                for f in el["facts"].as_array().expect("facts") {
                    assert!(
                        f["title"].is_string() && f["value"].is_string(),
                        "{what}: {f}"
                    );
                }
            }
            other => panic!("{what}: an element of type {other:?}"),
        }
    }
}

#[test]
fn chat_recipes_render_what_discord_teams_and_ntfy_accept() {
    let long = format!("@everyone {}", "x".repeat(5000));
    let events = [
        ("completed", sample_event(EventType::Completed)),
        ("stalled", sample_event(EventType::Stalled)),
        (
            "a 5,010-character name",
            sample_event_named(EventType::Completed, &long),
        ),
        (
            "a name with quotes",
            sample_event_named(EventType::Completed, "a\"b\n}{"),
        ),
    ];
    let discord = recipe_sink("discord.toml", vars_of("discord.toml"));
    let teams = recipe_sink("teams.toml", vars_of("teams.toml"));
    let ntfy = recipe_sink("ntfy.toml", vars_of("ntfy.toml"));
    for (what, e) in &events {
        let p = discord
            .payload(e)
            .unwrap_or_else(|err| panic!("discord, {what}: {err}"));
        assert_eq!(p.content_type, "application/json");
        assert_discord_shape(&serde_json::from_slice(&p.body).unwrap(), what);

        let p = teams
            .payload(e)
            .unwrap_or_else(|err| panic!("teams, {what}: {err}"));
        assert_eq!(p.content_type, "application/json");
        let v: Value = serde_json::from_slice(&p.body)
            .unwrap_or_else(|err| panic!("teams, {what}: invalid JSON ({err})"));
        assert_teams_shape(&v, what);

        // ntfy: the message is the plain-text body, at most 4,096 bytes (a longer one
        // would arrive as an attachment), never empty.
        let p = ntfy
            .payload(e)
            .unwrap_or_else(|err| panic!("ntfy, {what}: {err}"));
        assert!(
            p.content_type.starts_with("text/plain"),
            "{}",
            p.content_type
        );
        let text = String::from_utf8(p.body).unwrap();
        assert!(
            !text.trim().is_empty() && text.len() <= 4096,
            "ntfy, {what}: {} bytes",
            text.len()
        );
    }
    let p = ntfy.payload(&events[0].1).unwrap();
    let want = std::fs::read_to_string(examples().join("expected/ntfy.txt")).unwrap();
    assert_eq!(String::from_utf8(p.body).unwrap(), want.trim_end());
    let stalled: Value =
        serde_json::from_slice(&discord.payload(&events[1].1).unwrap().body).unwrap();
    assert!(
        stalled["content"]
            .as_str()
            .unwrap()
            .contains("is still COMPLETE since"),
        "{stalled}"
    );
    // ntfy reads the title and tags from headers, which the recipe sets.
    let cfg = load(
        &examples().join("ntfy.toml"),
        &Environment::from_pairs(vars_of("ntfy.toml").iter().copied()),
    )
    .unwrap();
    let loopwatch::config::SinkKind::Webhook { headers, .. } = &cfg.sinks[0].kind else {
        panic!("a webhook sink");
    };
    let names: Vec<&str> = headers.iter().map(|h| h.name.as_str()).collect();
    assert!(
        names.contains(&"Title") && names.contains(&"Tags"),
        "{names:?}"
    );
}
