//! The foundation, end to end: the real binary against the simulated Loops API.

mod common;

use std::time::Duration;

use common::{API_KEY, Env, QWEN, SECRET, bin, edit};
use loopwatch::sim::Fault;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn example_configs_pass_check_config_and_redact_secrets() {
    for file in [
        "config/loopwatch.example.toml",
        "config/loopwatch.example.yaml",
    ] {
        let out = std::process::Command::new(bin())
            .args(["check-config", "-c", file])
            .env("BASETEN_API_KEY", "sk-live-abcdef")
            .env("DEPLOYER_WEBHOOK_SECRET", SECRET)
            .env("DEPLOY_TOKEN", "deploy-token-123")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
        let text = stdout(&out);
        assert!(text.contains("[redacted]"), "{text}");
        for secret in [
            "sk-live-abcdef",
            "deploy-token-123",
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ] {
            assert!(!text.contains(secret), "{file} leaks {secret}");
        }
    }
}

/// What `check-config` prints loads again as a config: each secret as the `*_env` or
/// `*_file` key it is read from (it printed `api_key = "[redacted] (...)"`, not a key),
/// and the reloaded config prints the same. `-o json` still describes each secret.
#[tokio::test]
async fn check_config_output_loads_again_as_a_config() {
    let env = Env::new().await;
    let dir = env.dir.path();
    let file = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path.display().to_string()
    };
    let api_key = file("api.key", API_KEY);
    let old = file("old.secret", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    let ed = file(
        "ed.key",
        "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==",
    );
    let cfg = env.write_config(&format!(
        r#"{QWEN}
[[sinks]]
name = "hook"
url_env = "HOOK_URL"
secret_env = "HOOK_SECRET"
previous_secret_file = "{old}"
signing_key_file = "{ed}"
headers = {{ Authorization = "Bearer ${{HOOK_TOKEN}}" }}
[[sinks]]
name = "script"
kind = "exec"
command = ["/bin/true"]
"#
    ));
    edit(&cfg, |t| {
        t.replacen(
            "[api]\n",
            &format!("[api]\napi_key_file = \"{api_key}\"\n"),
            1,
        )
        .replace(
            "url = \"sqlite://",
            "url = \"postgres://lw:pgpw-3f9a@db.example.com/lw\"\n# was sqlite://",
        )
    });
    let check = |path: &std::path::Path, json: bool| {
        let mut c = env.cmd(path, &["check-config"]);
        if json {
            c.args(["-o", "json"]);
        }
        let out = c
            .env("HOOK_URL", "https://hooks.example.com/h?token=qtok-9")
            .env("HOOK_TOKEN", "tok-xyz")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        stdout(&out)
    };
    let printed = check(&cfg, false);
    for (key, value) in [
        ("api_key_file", api_key.as_str()),
        ("url_env", "HOOK_URL"),
        ("secret_env", "HOOK_SECRET"),
        ("previous_secret_file", old.as_str()),
        ("signing_key_file", ed.as_str()),
    ] {
        assert!(
            printed.contains(&format!("\n{key} = \"{value}\"\n")),
            "{key}: {printed}"
        );
    }
    for secret in [
        API_KEY,
        SECRET,
        "qtok-9",
        "tok-xyz",
        "pgpw-3f9a",
        "C2FVsBQ",
        "6Xb/dC",
    ] {
        assert!(!printed.contains(secret), "leaks {secret}: {printed}");
    }
    let again = dir.join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let reprinted = check(&again, false);
    let body = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(body(&reprinted), body(&printed));

    let json: serde_json::Value = serde_json::from_str(&check(&cfg, true)).unwrap();
    assert_eq!(
        json["config"]["api"]["api_key"].as_str(),
        Some(format!("[redacted] (api_key_file = {api_key})").as_str())
    );
    assert_eq!(
        json["config"]["sinks"][0]["secret"].as_str(),
        Some("[redacted] (secret_env = HOOK_SECRET)")
    );
}

/// `test-sink` of a name no sink has is a usage error (exit 2, it was 1 like a failed
/// send), one line naming the sinks there are.
#[tokio::test]
async fn test_sink_of_an_unknown_name_is_a_usage_error_naming_the_sinks() {
    let env = Env::new().await;
    let cfg = env.write_config(&format!(
        "{QWEN}[[sinks]]\nname = \"hook\"\nurl = \"http://127.0.0.1:9/h\"\n[[sinks]]\nname = \"script\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n"
    ));
    let out = env.run(&cfg, &["test-sink", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "error: no sink named \"nope\"; configured: hook, script; see `loopwatch test-sink --help`\n"
    );
    assert_eq!(stdout(&out), "");

    let cfg = env.write_config(QWEN);
    let out = env.run(&cfg, &["test-sink", "nope"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("configures no sink"), "{err}");
}

/// `demo -c FILE` (a script that passes -c to every command) runs the demo, saying on
/// stderr that it reads no config; `man -c FILE` stays a usage error.
#[test]
fn demo_takes_c_and_says_it_ignores_it() {
    for args in [
        &[
            "demo",
            "-c",
            "/nonexistent/loopwatch.toml",
            "--duration",
            "1s",
        ][..],
        &[
            "-c",
            "/nonexistent/loopwatch.toml",
            "demo",
            "--duration",
            "1s",
        ][..],
    ] {
        let out = std::process::Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            err.contains("`loopwatch demo` reads no config; -c is ignored"),
            "{err}"
        );
    }
    let out = std::process::Command::new(bin())
        .args(["man", "-c", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// `demo --listen ADDR` on a port in use fails at once naming `--listen` (the demo has no
/// config file: the daemon's `server.listen` meant nothing to its user).
#[test]
fn demo_on_a_busy_port_names_its_listen_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let start = std::time::Instant::now();
    let out = std::process::Command::new(bin())
        .args(["demo", "--duration", "30s", "--listen", &addr])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("error: cannot listen on --listen {addr}: ")),
        "{err}"
    );
    assert!(!err.contains("server.listen"), "{err}");
    drop(busy);
}

#[tokio::test]
async fn bad_config_exits_78_listing_every_problem() {
    let env = Env::new().await;
    let cfg = env.write_config(
        "[poll.x]\n[[targets]]\nname = \"a\"\nrun_id = \"r\"\nbase_model = \"m\"\ninterval = \"ten seconds\"\n[[targets]]\nname = \"a\"\nrun_id = \"r2\"\n",
    );
    let out = env.run(&cfg, &["check-config"]).await;
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("targets[0]") && l.contains("2 filters")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("targets[1].name") && l.contains("duplicate")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("targets[0].interval") && l.contains("ten seconds")),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("error: ") && l.contains("loopwatch.toml")),
        "{err}"
    );
    assert!(!err.contains("panicked"));
    // Nothing was touched: no state file.
    assert!(!env.db().exists());
    // The daemon refuses the same config the same way, before opening the store.
    let out = env.run(&cfg, &["run"]).await;
    assert_eq!(out.status.code(), Some(78));
    assert!(!env.db().exists());
}

#[tokio::test]
async fn missing_config_and_usage_errors_have_their_exit_codes() {
    let out = std::process::Command::new(bin())
        .args(["check-config", "-c", "/nonexistent/loopwatch.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("/nonexistent/loopwatch.toml"));
    // Usage errors: exit 2, one line naming what is wrong and where to look.
    for (args, says) in [
        (
            &["frobnicate"][..],
            "unrecognized subcommand 'frobnicate'; see `loopwatch --help`",
        ),
        (
            &["checkpoints"],
            "not provided: <--run-id <RUN_ID>|--base-model <BASE_MODEL>|--checkpoint-path <CHECKPOINT_PATH>>; see `loopwatch checkpoints --help`",
        ),
        (
            &["once", "--dry"],
            "'--dry' found; tip: a similar argument exists: '--dry-run'; see `loopwatch once --help`",
        ),
    ] {
        let out = std::process::Command::new(bin())
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && err.contains(says), "{err}");
    }
    let out = std::process::Command::new(bin())
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).starts_with("loopwatch "));
}

/// The state files (the database and its log; not `-shm`, where readers leave their
/// read marks, nor the lock file): name, size and a hash of the bytes.
fn store_files(env: &Env) -> Vec<(String, usize, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files: Vec<_> = std::fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name == "state.db" || name == "state.db-wal"
        })
        .map(|e| {
            let bytes = std::fs::read(e.path()).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            (
                e.file_name().to_string_lossy().into_owned(),
                bytes.len(),
                h.finish(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn once_baselines_silently_then_reports_one_completion_once() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let done = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    let syncing = h.add_checkpoint("run-1", "sampler", "step-200", Some("SYNCING"));
    h.add_checkpoint("other-run", "sampler", "step-1", Some("SYNCING"));
    let cfg = env.write_config(QWEN);

    // Read-only commands before any state exists: nothing to show, a one-line warning
    // naming the path (a mistyped store.url shows up), and no file created.
    for args in [
        &["state", "-o", "json"][..],
        &["deliveries", "list", "-o", "json"],
    ] {
        let out = env.run(&cfg, args).await;
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert_eq!(stdout(&out).trim(), "[]", "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains("no loopwatch state at") && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    assert_eq!(store_files(&env), Vec::new(), "a state file was created");
    // First sight: silent baseline, even in dry-run; dry-run writes nothing, not even
    // a new state file.
    let out = env.run(&cfg, &["once", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert_eq!(store_files(&env), Vec::new(), "a state file was created");
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(env.events().await.is_empty());

    // SYNCING -> COMPLETE: dry-run shows it and stores nothing (every byte of the state
    // files is the same; it used to migrate, probe and release claims).
    h.set_status(&syncing, Some("COMPLETE"));
    let before = store_files(&env);
    let out = env.run(&cfg, &["once", "--dry-run"]).await;
    assert_eq!(store_files(&env), before, "dry-run changed the state files");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["type"], "checkpoint.completed");
    assert_eq!(
        lines[0]["data"]["uri"],
        "bt://loops:run-1/sampler_weights/step-200"
    );
    assert_eq!(lines[0]["data"]["previous_sync_status"], "SYNCING");
    assert_eq!(lines[0]["data"]["checkpoint"]["id"], syncing.as_str());
    assert!(env.events().await.is_empty(), "dry-run wrote");

    // For real: one completed event, and a restart finds nothing new.
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let events = env.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, "checkpoint.completed");
    assert_eq!(events[0].checkpoint_id, syncing);
    assert_eq!(
        events[0].id,
        lines[0]["data"]["event_id"].as_str().unwrap(),
        "dry-run and real run agree on the id"
    );
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.events().await.len(), 1);
    let _ = done;

    // `state` shows what is persisted.
    let out = env.run(&cfg, &["state", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["target"], "qwen");
    assert_eq!(v[0]["checkpoints"].as_array().unwrap().len(), 2);
    let out = env.run(&cfg, &["state"]).await;
    assert!(stdout(&out).contains("step-200"));
}

#[tokio::test]
async fn injected_faults_change_no_state_and_emit_nothing() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let a = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    h.add_checkpoint("run-1", "trainer", "step-100", Some("COMPLETE"));
    let cfg = env.write_config(QWEN);
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = stdout(&env.run(&cfg, &["state", "-o", "json"]).await);

    // The change that a broken response must not reveal nor hide.
    h.set_status(&a, Some("COMPLETE"));
    let faults = [
        Fault::Status {
            code: 500,
            retry_after: None,
            body: None,
        },
        Fault::Status {
            code: 503,
            retry_after: Some("1".into()),
            body: None,
        },
        Fault::Status {
            code: 429,
            retry_after: None,
            body: None,
        },
        Fault::Status {
            code: 401,
            retry_after: None,
            body: Some(r#"{"code":"UNAUTHORIZED","message":"bad key","details":null}"#.into()),
        },
        Fault::Status {
            code: 404,
            retry_after: None,
            body: None,
        },
        Fault::Html,
        Fault::HtmlOk,
        Fault::Truncated,
        Fault::MissingField("id".into()),
        Fault::MissingField("target".into()),
        Fault::WrongType("size_bytes".into()),
        Fault::NotJsonObject,
        Fault::Huge(200 << 20),
        Fault::CloseConnection,
        Fault::Delay(Duration::from_secs(4)),
    ];
    for f in faults {
        h.set_fault(Some(f.clone()));
        let out = env.run(&cfg, &["once"]).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{f:?} should fail the poll: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("target qwen"),
            "{f:?}: {}",
            stderr(&out)
        );
        assert!(!stderr(&out).contains(API_KEY));
        // JSON of another shape is told apart from a page that is not JSON at all.
        if let Fault::MissingField(_) | Fault::WrongType(_) | Fault::NotJsonObject = f {
            assert!(
                stderr(&out).contains("not the Loops API's shape")
                    && !stderr(&out).contains("proxy"),
                "{f:?}: {}",
                stderr(&out)
            );
        }
        if let Fault::HtmlOk | Fault::Truncated = f {
            assert!(
                stderr(&out).contains("a proxy's page?"),
                "{f:?}: {}",
                stderr(&out)
            );
        }
        if let Fault::Status { code: 401, .. } = f {
            assert!(
                stderr(&out).contains("api.api_key_env"),
                "a refused key names the keys to check: {}",
                stderr(&out)
            );
        }
        let after = stdout(&env.run(&cfg, &["state", "-o", "json"]).await);
        assert_eq!(before, after, "{f:?} changed state");
        assert!(env.events().await.is_empty(), "{f:?} emitted");
    }
    // An empty listing is a valid response; once is not enough to call anything deleted.
    h.set_fault(Some(Fault::Empty));
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    assert!(env.events().await.is_empty());
    h.set_fault(None);

    // Healed: the completion is reported exactly once.
    h.set_fault(Some(Fault::UnknownFields));
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    h.set_fault(None);
    let events = env.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].kind, "checkpoint.completed");
}

/// The in-memory state keeps a digest of each checkpoint's object, not its text: a
/// `deleted` event still carries the last object stored for it.
#[tokio::test]
async fn a_deleted_event_carries_the_last_known_object() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    h.set_field(&id, "note", serde_json::json!("kept from the last listing"));
    let cfg = env.write_config(QWEN);
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    h.remove(&id);
    // delete_after_missing_polls = 2: the first listing without it counts, the second deletes.
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    let out = env.run(&cfg, &["once", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = stdout(&out);
    let event: serde_json::Value = serde_json::from_str(line.trim()).expect("one event line");
    assert_eq!(event["type"], "checkpoint.deleted");
    assert_eq!(event["data"]["checkpoint"]["id"], id.as_str());
    assert_eq!(
        event["data"]["checkpoint"]["note"],
        "kept from the last listing"
    );
}

#[tokio::test]
async fn checkpoints_lists_live_in_table_and_json() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(QWEN);
    let out = env.run(&cfg, &["checkpoints", "--run-id", "run-1"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let header = text.lines().next().unwrap();
    let cols: Vec<&str> = header.split_whitespace().collect();
    assert_eq!(
        cols,
        [
            "ID", "NAME", "RUN", "TARGET", "TYPE", "SIZE", "SYNC", "CREATED"
        ]
    );
    assert!(
        text.contains(&id) && text.contains("SYNCING") && text.contains("128.0 MiB"),
        "{text}"
    );
    let out = env
        .run(
            &cfg,
            &[
                "checkpoints",
                "--checkpoint-path",
                "bt://loops:run-1/sampler_weights/step-100",
                "-o",
                "json",
            ],
        )
        .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert!(h.last_authorization().unwrap().starts_with("Bearer "));
    // Two filters is a usage error.
    let out = env
        .run(&cfg, &["checkpoints", "--run-id", "a", "--base-model", "b"])
        .await;
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn api_key_scheme_is_configurable() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-1", "sampler", "step-100", None);
    let cfg = env.write_config(QWEN);
    edit(&cfg, |text| {
        text.replace("[api]\n", "[api]\nauth_scheme = \"api-key\"\n")
    });
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        h.last_authorization().unwrap(),
        format!("Api-Key {API_KEY}")
    );
    assert!(h.last_query().unwrap().contains("run_id=run-1"));
}

#[tokio::test]
async fn a_target_whose_filter_changes_is_baselined_again_without_a_storm() {
    let env = Env::new().await;
    let h = env.sim.handle();
    for i in 0..3 {
        h.add_checkpoint("run-1", "sampler", &format!("step-{i}"), Some("COMPLETE"));
        h.add_checkpoint("run-2", "sampler", &format!("step-{i}"), Some("COMPLETE"));
    }
    let cfg = env.write_config(QWEN);
    for _ in 0..3 {
        assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    }
    // Same name, another run: no `deleted` for run-1, no `discovered` for run-2.
    edit(&cfg, |text| {
        text.replace("run_id = \"run-1\"", "run_id = \"run-2\"")
    });
    for _ in 0..3 {
        let out = env.run(&cfg, &["once"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    assert!(env.events().await.is_empty(), "{:?}", env.events().await);
    let v: serde_json::Value =
        serde_json::from_slice(&env.run(&cfg, &["state", "-o", "json"]).await.stdout).unwrap();
    assert_eq!(v[0]["filter"], "run_id=run-2");
    let runs: Vec<&str> = v[0]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs, ["run-2"; 3]);
    // And it watches the new run from there on.
    h.add_checkpoint("run-2", "sampler", "step-9", Some("SYNCING"));
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    assert_eq!(env.events().await.len(), 1);
}

#[tokio::test]
async fn checkpoints_works_without_a_config_file_from_env_overrides() {
    let env = Env::new().await;
    let id = env
        .sim
        .handle()
        .add_checkpoint("run-9", "trainer", "step-7", Some("COMPLETE"));
    let base = env.sim.base_url();
    let out = tokio::task::spawn_blocking({
        let dir = env.dir.path().to_path_buf();
        move || {
            std::process::Command::new(bin())
                .args(["checkpoints", "--run-id", "run-9", "-o", "json"])
                .current_dir(dir)
                .env("BASETEN_API_KEY", API_KEY)
                .env("LOOPWATCH__API__BASE_URL", base)
                .env_remove("LOOPWATCH_CONFIG")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["id"], id.as_str());
    assert_eq!(v[0]["target"], "trainer");
}

/// `checkpoints -o json` prints each object as the API sent it: a 23-digit integer stays
/// an integer (it was printed as 1.2345678901234568e+22), the keys keep their order.
#[tokio::test]
async fn checkpoints_json_prints_the_apis_objects_unchanged() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-1", Some("COMPLETE"));
    let object = h.checkpoint(&id).unwrap().to_string();
    let sent = format!(
        "{{\"z_first\":1,{},\"big\":12345678901234567890123}}",
        &object[1..object.len() - 1]
    );
    h.push_fault(loopwatch::sim::Fault::Status {
        code: 200,
        retry_after: None,
        body: Some(format!("{{\"checkpoints\":[{sent}]}}")),
    });
    let cfg = env.write_config("");
    let out = env
        .run(&cfg, &["checkpoints", "--run-id", "run-1", "-o", "json"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("[\n  {sent}\n]\n"));
    // A refused key says which keys to check, as `once` does; an empty filter is a usage
    // error, not a request.
    h.push_fault(loopwatch::sim::Fault::Status {
        code: 401,
        retry_after: None,
        body: None,
    });
    let out = env.run(&cfg, &["checkpoints", "--run-id", "run-1"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("api.api_key_env"), "{}", stderr(&out));
    assert_eq!(stderr(&out).lines().count(), 1, "{}", stderr(&out));
    let requests = h.requests();
    for flag in ["--run-id", "--base-model"] {
        let out = env.run(&cfg, &["checkpoints", flag, ""]).await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    }
    assert_eq!(h.requests(), requests, "no request for an empty filter");
}

#[tokio::test]
async fn deliveries_list_narrows_to_a_sink_and_says_when_it_leaves_rows_out() {
    let env = Env::new().await;
    let h = env.sim.handle();
    // Nobody listens on port 9: every attempt fails and waits an hour for its retry.
    let down = "retry_schedule = [\"1h\"]";
    let cfg = env.write_config(&format!(
        "{QWEN}{}{}",
        common::sink("a", "http://127.0.0.1:9/hook", down),
        common::sink("b", "http://127.0.0.1:9/hook", down)
    ));
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    for i in 0..3 {
        h.add_checkpoint("run-1", "sampler", &format!("step-{i}"), Some("COMPLETE"));
    }
    env.run(&cfg, &["once"]).await;
    let list = async |args: &[&str]| {
        let mut all = vec!["deliveries", "list", "-o", "json"];
        all.extend_from_slice(args);
        env.run(&cfg, &all).await
    };
    let all = list(&[]).await;
    let rows: serde_json::Value = serde_json::from_slice(&all.stdout).unwrap();
    let n = rows.as_array().unwrap().len();
    assert!(n >= 6 && n.is_multiple_of(2), "{rows}");
    assert!(stderr(&all).is_empty(), "no note when nothing is left out");

    let of_a = list(&["--sink", "a"]).await;
    let rows: serde_json::Value = serde_json::from_slice(&of_a.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), n / 2);
    assert!(rows.iter().all(|d| d["sink"] == "a"), "{rows:?}");

    let two = list(&["--sink", "a", "--limit", "2"]).await;
    assert_eq!(two.status.code(), Some(0));
    let rows: serde_json::Value = serde_json::from_slice(&two.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "the newest two");
    assert!(
        rows[0]["id"].as_i64() < rows[1]["id"].as_i64(),
        "oldest first"
    );
    assert!(
        stderr(&two).contains("showing the newest 2 deliveries"),
        "{}",
        stderr(&two)
    );
    let table = env.run(&cfg, &["deliveries", "list", "--limit", "1"]).await;
    assert_eq!(stdout(&table).lines().count(), 2, "a header and one row");
    assert!(stderr(&table).contains("newest 1"));
    let zero = env.run(&cfg, &["deliveries", "list", "--limit", "0"]).await;
    assert_eq!(zero.status.code(), Some(2));
}

/// A state file in a directory that does not exist: one line naming `store.url`, the
/// directory and the fix; exit 1, and nothing created.
#[tokio::test]
async fn a_store_url_in_a_missing_directory_is_one_line_naming_the_key_and_the_fix() {
    let env = Env::new().await;
    let cfg = env.write_config(QWEN);
    let missing = env.db().with_file_name("no-such-dir").join("state.db");
    edit(&cfg, |t| {
        t.replace(
            &format!("sqlite://{}", env.db().display()),
            &format!("sqlite://{}", missing.display()),
        )
    });
    let out = env.run(&cfg, &["once"]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let dir = missing.parent().unwrap().display().to_string();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("store.url") && err.contains(&format!("the directory {dir} does not exist")),
        "{err}"
    );
    assert!(!missing.parent().unwrap().exists());
}

/// `checkpoints --checkpoint-path` takes a checkpoint URI, as a target's
/// `checkpoint_path` does: anything else is a usage error, and nothing is asked.
#[tokio::test]
async fn checkpoints_refuses_a_path_that_is_not_a_checkpoint_uri() {
    let env = Env::new().await;
    let cfg = env.write_config(QWEN);
    let before = env.sim.handle().requests();
    let out = env
        .run(&cfg, &["checkpoints", "--checkpoint-path", "notauri"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not a checkpoint URI"), "{err}");
    assert_eq!(env.sim.handle().requests(), before);
    let out = env
        .run(
            &cfg,
            &[
                "checkpoints",
                "--checkpoint-path",
                "bt://loops:run-1/sampler_weights/step-1",
            ],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

/// A reader that stops reading (`loopwatch state | head`) is no error: each printing
/// command exits 0 quietly, never a panic or a backtrace ("failed printing to stdout").
#[tokio::test]
async fn a_closed_stdout_ends_a_command_quietly() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_many("run-1", 50, Some("COMPLETE"));
    let cfg = env.write_config(QWEN);
    assert_eq!(env.run(&cfg, &["once"]).await.status.code(), Some(0));
    for args in [
        &["state"][..],
        &["state", "-o", "json"],
        &["deliveries", "list"],
        &["check-config"],
        &["checkpoints", "--run-id", "run-1"],
    ] {
        let mut c = env.cmd(&cfg, args);
        c.env("RUST_BACKTRACE", "1")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = c.spawn().unwrap();
        // The read end closed before the command prints anything.
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
    }
}

/// The demo's terminal closed (SIGHUP) ends it as Ctrl-C does: exit 0, its throw-away
/// state removed.
#[test]
fn the_demo_ends_on_sighup_and_removes_its_state() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(bin())
        .args(["demo", "--duration", "60s"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let state = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| {
            let rest = l.trim().strip_prefix("state")?.to_string();
            rest.split_whitespace().next().map(str::to_string)
        })
        .expect("the demo prints its state directory");
    assert!(std::path::Path::new(&state).exists(), "{state}");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    // Drain stdout so the demo never blocks on a full pipe while it stops; it must stop
    // long before its 60 s are up.
    let drain = std::thread::spawn(move || for _ in lines {});
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the demo went on after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    drain.join().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        !std::path::Path::new(&state).exists(),
        "the demo left {state} behind"
    );
}
