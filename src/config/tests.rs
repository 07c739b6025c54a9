//! Unit tests of loading and validation; the catalogue of bad configs run through the
//! binary is tests/bad_config.rs.

use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env() -> Environment {
    Environment::from_pairs([
        ("BASETEN_API_KEY", "k-123"),
        ("HOOK_SECRET", SECRET),
        ("TOKEN", "tok-xyz"),
    ])
}

fn toml_cfg(text: &str) -> Result<Config, ConfigError> {
    load_str(text, config::FileFormat::Toml, "test.toml", &env())
}

fn problems(text: &str) -> Vec<String> {
    toml_cfg(text).expect_err("should be rejected").problems
}

const MINIMAL: &str = "[[targets]]\nname = \"a\"\nrun_id = \"r1\"\n";

/// The default replica id: `<hostname>-<pid>-<4 hex digits>`, the same for every load
/// of one process (a reload sees no change of `store.replica_id`).
#[test]
fn the_default_replica_id_is_host_pid_and_a_salt_drawn_once() {
    let id = toml_cfg(MINIMAL).unwrap().store.replica_id;
    let (rest, salt) = id.rsplit_once('-').unwrap();
    assert!(
        salt.len() == 4 && salt.chars().all(|c| c.is_ascii_hexdigit()),
        "{id}"
    );
    assert!(rest.ends_with(&format!("-{}", std::process::id())), "{id}");
    assert_eq!(toml_cfg(MINIMAL).unwrap().store.replica_id, id);
}

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = toml_cfg(MINIMAL).unwrap();
    assert_eq!(c.api.base_url.as_str(), "https://api.baseten.co/");
    assert_eq!(c.api.api_key.expose(), "k-123");
    assert_eq!(c.poll.interval, Duration::from_secs(60));
    assert_eq!(c.poll.syncing_interval, Duration::from_secs(10));
    assert_eq!(c.poll.concurrency.get(), 8);
    assert_eq!(c.poll.delete_after_missing_polls, 2);
    assert_eq!(c.poll.stalled_after, Some(Duration::from_secs(1800)));
    assert_eq!(c.store.url, "sqlite://loopwatch.db");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.targets[0].filter, Filter::RunId("r1".into()));
    assert_eq!(
        c.targets[0].checkpoint_targets, None,
        "absent: every checkpoint"
    );
}

#[test]
fn all_problems_are_reported_at_once() {
    let p = problems(
        r#"
[poll]
interval = "5x"
[[targets]]
name = "a"
run_id = "r1"
base_model = "m"
[[targets]]
name = "a"
run_id = "r2"
"#,
    );
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(
        p.iter()
            .any(|l| l.contains("poll.interval") && l.contains("\"5x\""))
    );
    assert!(
        p.iter()
            .any(|l| l.contains("targets[0]") && l.contains("2 filters"))
    );
    assert!(
        p.iter()
            .any(|l| l.contains("targets[1].name") && l.contains("duplicate"))
    );
    assert!(
        p.iter()
            .all(|l| l.starts_with("test.toml: ") && !l.contains('\n'))
    );
}

#[test]
fn unknown_keys_are_rejected_everywhere() {
    let p = problems(
        "[poll]\nintervall = \"5s\"\n[[targets]]\nname = \"a\"\nrun_id = \"r\"\nfoo = 1\n[bogus]\n",
    );
    assert!(p.iter().any(|l| l.contains("poll.intervall: unknown key")));
    assert!(p.iter().any(|l| l.contains("targets[0].foo: unknown key")));
    assert!(p.iter().any(|l| l.contains("bogus: unknown key")));
}

#[test]
fn secrets_come_from_env_or_file_and_are_checked() {
    let p = problems(&format!(
        "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"http://x/h\"\nsecret_env = \"NOPE\"\n[[sinks]]\nname = \"t\"\nurl = \"http://x/h\"\nsecret_env = \"TOKEN\"\n"
    ));
    assert!(
        p.iter()
            .any(|l| l.contains("sinks[0].secret_env") && l.contains("NOPE"))
    );
    assert!(
        p.iter()
            .any(|l| l.contains("sinks[1].secret") && l.contains("whsec_"))
    );
    assert!(
        !p.iter().any(|l| l.contains("tok-xyz")),
        "secret echoed: {p:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("key");
    std::fs::write(&f, "file-key\n").unwrap();
    let c = toml_cfg(&format!(
        "[api]\napi_key_file = \"{}\"\n{MINIMAL}",
        f.display()
    ))
    .unwrap();
    assert_eq!(c.api.api_key.expose(), "file-key");
}

#[test]
fn missing_default_api_key_is_reported() {
    let e = load_str(
        MINIMAL,
        config::FileFormat::Toml,
        "x.toml",
        &Environment::default(),
    )
    .unwrap_err();
    assert!(e.problems[0].contains("api.api_key_env") && e.problems[0].contains("BASETEN_API_KEY"));
}

#[test]
fn sink_rules() {
    let p = problems(&format!(
        r#"{MINIMAL}
[[sinks]]
name = "s"
url = "not a url"
events = ["checkpoint.completed", "checkpoint.exploded"]
targets = ["ghost"]
format = "template"
template = "{{{{ unclosed"
[[sinks]]
name = "s"
kind = "exec"
"#
    ));
    for needle in [
        "sinks[0].url",
        "checkpoint.exploded",
        "ghost",
        "sinks[0].template",
        "sinks[1].name",
        "sinks[1].command",
    ] {
        assert!(
            p.iter().any(|l| l.contains(needle)),
            "{needle} not in {p:#?}"
        );
    }
}

#[test]
fn headers_interpolate_env_and_redact() {
    let c = toml_cfg(&format!(
        "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\nsecret_env = \"HOOK_SECRET\"\nheaders = {{ Authorization = \"Bearer ${{TOKEN}}\" }}\n"
    ))
    .unwrap();
    let SinkKind::Webhook {
        headers, secret, ..
    } = &c.sinks[0].kind
    else {
        panic!()
    };
    assert_eq!(headers[0].name, "Authorization");
    assert_eq!(headers[0].value.expose(), "Bearer tok-xyz");
    assert!(secret.is_some());
    let dump = format!("{c:?}\n{}", c.to_redacted_toml());
    assert!(
        !dump.contains("tok-xyz") && !dump.contains("k-123") && !dump.contains("MfKQ9r8"),
        "{dump}"
    );
    assert!(dump.contains("${TOKEN}"));
}

#[test]
fn env_overrides_scalar_keys() {
    let mut e = env();
    e.set("LOOPWATCH__POLL__INTERVAL", "30s");
    e.set("LOOPWATCH__POLL__CONCURRENCY", "3");
    let c = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e).unwrap();
    assert_eq!(c.poll.interval, Duration::from_secs(30));
    assert_eq!(c.poll.concurrency.get(), 3);
    e.set("LOOPWATCH__POLL__JITTER", "lots");
    let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
        .unwrap_err()
        .problems;
    assert!(p[0].contains("poll.jitter"), "{p:?}");
}

#[test]
fn yaml_is_read_the_same() {
    let c = load_str(
        "poll:\n  interval: 45s\ntargets:\n  - name: a\n    checkpoint_path: bt://loops:r1/sampler_weights/step-1\n",
        config::FileFormat::Yaml,
        "t.yaml",
        &env(),
    )
    .unwrap();
    assert_eq!(c.poll.interval, Duration::from_secs(45));
    assert_eq!(c.targets[0].filter.query_key(), "checkpoint_path");
}

#[test]
fn syntax_errors_are_one_line() {
    let p = problems("[poll\ninterval=");
    assert_eq!(p.len(), 1);
    assert!(p[0].starts_with("test.toml: ") && !p[0].contains('\n'));
}

#[test]
fn checkpoint_path_is_parsed() {
    assert_eq!(
        parse_checkpoint_path("bt://loops:k4/sampler_weights/step-1"),
        Some(("k4", CheckpointTarget::Sampler, "step-1"))
    );
    assert!(parse_checkpoint_path("bt://loops:k4/bogus/step-1").is_none());
    assert!(parse_checkpoint_path("s3://x").is_none());
}

// Regressions found by tests/bad_config.rs and the config_load fuzz target.

#[test]
fn nan_and_infinity_are_rejected_not_taken_for_unset() {
    // serde_json turns them into null, which used to mean "use the default".
    for (text, key) in [
        ("[poll]\njitter = nan\n", "poll.jitter"),
        (
            "[api]\nmax_requests_per_second = inf\n",
            "api.max_requests_per_second",
        ),
        ("[poll]\nconcurrency = -inf\n", "poll.concurrency"),
    ] {
        let p = problems(&format!("{text}{MINIMAL}"));
        assert!(
            p.len() == 1 && p[0].contains(key) && p[0].contains("finite"),
            "{p:?}"
        );
    }
    let mut e = env();
    e.set("LOOPWATCH__POLL__JITTER", "NaN");
    let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
        .unwrap_err()
        .problems;
    assert!(p[0].contains("poll.jitter"), "{p:?}");
}

#[test]
fn a_request_rate_the_token_bucket_cannot_time_is_rejected() {
    // 1e10 passed check-config, then `run` panicked building the bucket (a period under
    // a nanosecond); 1e-300 left every target but the first unpolled.
    for rps in ["1e10", "2.5e9", "1e-300", "0", "-1"] {
        let p = problems(&format!(
            "[api]\nmax_requests_per_second = {rps}\n{MINIMAL}"
        ));
        assert!(
            p.len() == 1
                && p[0].contains("api.max_requests_per_second")
                && p[0].contains("between 0.001 and 1000000"),
            "{rps}: {p:?}"
        );
    }
    for rps in ["0.001", "1000000", "10"] {
        let c = toml_cfg(&format!(
            "[api]\nmax_requests_per_second = {rps}\n{MINIMAL}"
        ));
        assert!(c.is_ok(), "{rps}: {:?}", c.err().map(|e| e.problems));
    }
}

#[test]
fn durations_that_would_overflow_the_daemon_are_rejected() {
    // `interval = "300000000000y"` passed check-config, then `run` panicked on
    // Duration overflow (health deadline, jitter).
    let p = problems(&format!(
        "[poll]\ninterval = \"300000000000y\"\n[api]\ntimeout = \"2y\"\n{MINIMAL}"
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p[0].contains("api.timeout") && p[1].contains("poll.interval"));
    assert!(toml_cfg(&format!("[poll]\nstalled_after = \"365d\"\n{MINIMAL}")).is_ok());
}

#[test]
fn control_characters_in_keys_stay_on_one_line() {
    let p = problems(&format!(
        "\"a\\nb\" = 1\n[poll]\n\"c\\u001b[31m\" = 2\n{MINIMAL}"
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|l| !l.chars().any(char::is_control)), "{p:?}");
    assert!(p.iter().any(|l| l.contains("a\\nb: unknown key")), "{p:?}");
}

#[test]
fn syntax_errors_drop_the_source_snippet() {
    // The snippet echoed the offending line (any length, any content) into the message.
    let p = problems(&format!("{MINIMAL}[poll\nx = 1\n"));
    assert_eq!(
        p,
        ["test.toml: TOML parse error at line 4, column 6: unclosed table, expected `]`"]
    );
    let deep = format!("a = {}{}\n", "[".repeat(5000), "]".repeat(5000));
    let p = problems(&deep);
    assert!(p[0].len() < 400 && !p[0].contains("[[[["), "{p:?}");
}

#[test]
fn yaml_alias_bomb_is_refused_before_it_expands() {
    // Seven lines of nested aliases took 7 s and 1.7 GB; one more level, 10x that.
    let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .windows(2)
        .map(|w| (w[0], w[1]))
    {
        text += &format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        );
    }
    let started = std::time::Instant::now();
    let e = load_str(&text, config::FileFormat::Yaml, "t.yaml", &env()).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(e.problems[0].contains("aliases"), "{:?}", e.problems);
    // Ordinary aliases still work.
    let c = load_str(
        "targets:\n  - {name: a, run_id: r1, checkpoint_targets: &ct [sampler]}\n  - {name: b, run_id: r2, checkpoint_targets: *ct}\n",
        config::FileFormat::Yaml,
        "t.yaml",
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.targets[1].checkpoint_targets,
        c.targets[0].checkpoint_targets
    );
}

#[test]
fn empty_yaml_list_items_are_reported_not_dropped() {
    // `targets: [~]` used to pass with zero targets.
    for (text, key) in [
        ("targets:\n  - ~\n", "targets[0]"),
        (
            "targets:\n  - {name: a, run_id: r}\nsinks:\n  -\n",
            "sinks[0]",
        ),
    ] {
        let e = load_str(text, config::FileFormat::Yaml, "t.yaml", &env()).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.contains(key)),
            "{:?}",
            e.problems
        );
    }
}

#[test]
fn misspelled_log_level_is_rejected() {
    // EnvFilter takes a bare word as a target name: "warning" logged nothing at all.
    for bad in ["warning", "loud!", "", " , ", "loopwatch=loud"] {
        let p = problems(&format!("[log]\nlevel = \"{bad}\"\n{MINIMAL}"));
        assert!(p.len() == 1 && p[0].contains("log.level"), "{bad:?}: {p:?}");
    }
    for good in [
        "warn",
        "INFO",
        "loopwatch=debug,info",
        "off",
        "sqlx=warn, debug",
    ] {
        assert!(
            toml_cfg(&format!("[log]\nlevel = \"{good}\"\n{MINIMAL}")).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn store_urls_the_store_cannot_open_are_config_errors() {
    // "sqlite://" passed and the daemon logged "no such table" forever; a postgres URL
    // with an empty host passed and `run` exited 1 instead of 78.
    for bad in [
        "sqlite://",
        "sqlite:",
        "sqlite://x.db?bogus=1",
        "postgres://u@:x/db",
        "mysql://db/x",
    ] {
        let p = problems(&format!("[store]\nurl = \"{bad}\"\n{MINIMAL}"));
        assert!(p.len() == 1 && p[0].contains("store.url"), "{bad}: {p:?}");
    }
    let p = problems(&format!(
        "[store]\nurl = \"postgres://u:pw-hidden@h:99999/db\"\n{MINIMAL}"
    ));
    assert!(!p[0].contains("pw-hidden"), "{p:?}");
    for good in [
        "sqlite://loopwatch.db",
        "sqlite:///var/lib/loopwatch/x.db",
        "sqlite::memory:",
        "postgres://lw:pw@db.internal:5432/loopwatch?sslmode=require",
        "postgresql:///loopwatch?host=/run/postgresql",
    ] {
        assert!(
            toml_cfg(&format!("[store]\nurl = \"{good}\"\n{MINIMAL}")).is_ok(),
            "{good}"
        );
    }
}

#[test]
fn invalid_urls_are_echoed_without_their_password() {
    let p = problems(&format!(
        "[api]\nbase_url = \"ftp://u:pw-hidden@x/\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"ftp://u:pw-hidden@x/h?token=t-hidden\"\n"
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(p.iter().all(|l| !l.contains("hidden")), "{p:?}");
}

#[test]
fn values_that_fail_every_request_are_config_errors() {
    // An API key file with a second line passed check-config; `once` then exited 1.
    let dir = tempfile::tempdir().unwrap();
    let two = dir.path().join("two-lines");
    std::fs::write(&two, "key-line-one\nkey-line-two\n").unwrap();
    let big = dir.path().join("big");
    std::fs::write(&big, "x".repeat(100_000)).unwrap();
    let p = problems(&format!(
        "[api]\napi_key_file = \"{}\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\ncontent_type = \"a\\nb\"\nsecret_file = \"{}\"\n",
        two.display(),
        big.display()
    ));
    assert_eq!(p.len(), 3, "{p:?}");
    assert!(
        p[0].contains("api.api_key_file") && !p[0].contains("key-line"),
        "{p:?}"
    );
    assert!(
        p[1].contains("sinks[0].secret_file") && p[1].contains("64 KiB"),
        "{p:?}"
    );
    assert!(p[2].contains("sinks[0].content_type"), "{p:?}");
}

#[test]
fn a_secret_file_that_is_not_a_regular_file_is_a_config_error_not_a_hang() {
    // Opening a FIFO blocks until a writer comes: check-config hung forever on one.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let key = dir.path().join("key");
    std::fs::write(&key, "file-key\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&key, &link).unwrap();
    let p = problems(&format!(
        "[api]\napi_key_file = \"{}\"\n{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\nsecret_file = \"{}\"\n",
        fifo.display(),
        dir.path().display()
    ));
    assert_eq!(p.len(), 2, "{p:?}");
    assert!(
        p[0].contains("api.api_key_file") && p[0].contains("a FIFO, not a regular file"),
        "{p:?}"
    );
    assert!(
        p[1].contains("sinks[0].secret_file") && p[1].contains("a directory"),
        "{p:?}"
    );
    // A symlink to a regular file (how Kubernetes mounts a secret) is followed.
    let c = toml_cfg(&format!(
        "[api]\napi_key_file = \"{}\"\n{MINIMAL}",
        link.display()
    ))
    .unwrap();
    assert_eq!(c.api.api_key.expose(), "file-key");
}

#[test]
fn a_sink_with_an_empty_target_list_is_rejected() {
    // `targets = []` matched no target: a sink that silently never fired.
    let p = problems(&format!(
        "{MINIMAL}[[sinks]]\nname = \"s\"\nurl = \"https://x/h\"\ntargets = []\n"
    ));
    assert!(p.len() == 1 && p[0].contains("sinks[0].targets"), "{p:?}");
}

#[test]
fn problems_from_overrides_name_the_variable() {
    let mut e = env();
    e.set("LOOPWATCH__POLL__CONCURRENCY", "0");
    let p = load_str(MINIMAL, config::FileFormat::Toml, "t.toml", &e)
        .unwrap_err()
        .problems;
    assert!(
        p[0].contains("poll.concurrency")
            && p[0].ends_with("(set by LOOPWATCH__POLL__CONCURRENCY)"),
        "{p:?}"
    );
}

#[test]
fn redacted_toml_is_valid_toml_and_never_shows_a_secret_url() {
    let mut e = env();
    e.set(
        "HOOK_URL",
        "https://hooks.example/services/url-token-hidden",
    );
    let c = load_str(
        &format!(
            "{MINIMAL}[[sinks]]\nname = \"s\"\nurl_env = \"HOOK_URL\"\nsecret_env = \"HOOK_SECRET\"\n[[sinks]]\nname = \"x\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n"
        ),
        config::FileFormat::Toml,
        "t.toml",
        &e,
    )
    .unwrap();
    let text = c.to_redacted_toml();
    assert!(!text.contains("url-token-hidden"), "{text}");
    let v: toml::Table = text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(v["targets"][0]["run_id"].as_str(), Some("r1"));
    let sinks = v["sinks"].as_array().unwrap();
    assert_eq!(
        sinks[0]["url"].as_str(),
        Some("[redacted] (url_env = HOOK_URL)")
    );
    assert_eq!(
        sinks[0]["secret"].as_str(),
        Some("[redacted] (secret_env = HOOK_SECRET)")
    );
    assert_eq!(sinks[1]["kind"].as_str(), Some("exec"));
    assert_eq!(
        v["api"]["api_key"].as_str(),
        Some("[redacted] (api_key_env = BASETEN_API_KEY)")
    );
}

#[test]
fn a_section_of_the_wrong_type_is_one_problem_and_its_keys_are_not_checked() {
    // `RawApi` is a struct: serde would take a list for one positionally.
    for (text, found) in [
        ("api = [1, 2]\n", "a list"),
        ("poll = \"fast\"\n", "a string"),
    ] {
        let p = problems(&format!("{text}{MINIMAL}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains(&format!("expected a table, found {found}")),
            "{p:?}"
        );
    }
}

#[test]
fn a_deploy_sink_gets_its_documented_defaults_and_every_rule_at_once() {
    let c = toml_cfg(&format!(
        "{MINIMAL}[[sinks]]\nname = \"d\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\n"
    ))
    .unwrap();
    let s = &c.sinks[0];
    let d = s.deploy().unwrap();
    assert_eq!(d.model_name, "{{ data.target }}");
    assert!(d.latest_only && d.validate && d.follow);
    assert_eq!(
        (d.follow_interval, d.follow_timeout, d.approval_deadline),
        (
            Duration::from_secs(30),
            Duration::from_secs(7200),
            Duration::from_secs(86400)
        )
    );
    assert_eq!(
        (d.promote_to.as_deref(), d.deactivate_superseded),
        (None, false)
    );
    // The whole attempt (validate, two reads, the deploy) within the sink's timeout: four
    // times api.timeout by default, never shorter than one API call.
    assert_eq!(s.timeout, c.api.timeout * 4);
    let slow = toml_cfg(&format!(
        "{MINIMAL}[api]\ntimeout = \"50s\"\n[[sinks]]\nname = \"d\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\n"
    ))
    .unwrap();
    assert_eq!(slow.sinks[0].timeout, Duration::from_secs(200));
    assert_eq!(s.events, BTreeSet::from([EventType::Completed]));
    assert_eq!(
        s.checkpoint_targets,
        Some(BTreeSet::from([CheckpointTarget::Sampler]))
    );
    assert_eq!(s.kind.name(), "baseten_deploy");
    // A webhook's default events now include checkpoint.deployed.
    let c = toml_cfg(&format!(
        "{MINIMAL}[[sinks]]\nname = \"h\"\nurl = \"https://x.example/h\"\n"
    ))
    .unwrap();
    assert!(c.sinks[0].events.contains(&EventType::Deployed));

    let p = problems(&format!(
        "{MINIMAL}[[sinks]]\nname = \"d\"\nkind = \"baseten_deploy\"\nurl = \"https://x.example\"\nsecret_env = \"HOOK_SECRET\"\nformat = \"standard\"\ncommand = [\"x\"]\nevents = [\"checkpoint.deleted\"]\ncheckpoint_targets = [\"trainer\"]\nmodel_name = \"{{{{ data.nothing }}}}\"\n"
    ));
    for key in [
        "sinks[0].url",
        "sinks[0].secret_env",
        "sinks[0].format",
        "sinks[0].command",
        "sinks[0].events",
        "sinks[0].checkpoint_targets",
        "sinks[0].instance_type_id",
        "sinks[0].hf_secret_name",
        "sinks[0].model_name",
    ] {
        assert!(p.iter().any(|l| l.contains(key)), "{key} not in {p:#?}");
    }
}

#[test]
fn group_readable_state_files_are_off_by_default_and_for_sqlite_only() {
    assert!(!toml_cfg(MINIMAL).unwrap().store.group_readable);
    let on = toml_cfg(&format!("[store]\ngroup_readable = true\n{MINIMAL}")).unwrap();
    assert!(on.store.group_readable);
    assert!(on.to_redacted_toml().contains("group_readable = true"));
    let p = problems(&format!(
        "[store]\nurl = \"postgres://lw@db/lw\"\ngroup_readable = true\n{MINIMAL}"
    ));
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        p[0].starts_with("test.toml: store.group_readable: ") && p[0].contains("SQLite"),
        "{p:?}"
    );
}

#[test]
fn debug_hides_passwords_in_the_store_and_sink_urls() {
    let c = toml_cfg(&format!(
        "[store]\nurl = \"postgres://lw:pgpw-41d2@db.example.com/lw\"\n{MINIMAL}\
         [[sinks]]\nname = \"h\"\nurl = \"https://u:hookpw-5b7a@hooks.example.com/x?token=htok-3\"\n\
         [[sinks]]\nname = \"e\"\nkind = \"exec\"\ncommand = [\"/bin/true\"]\n"
    ))
    .unwrap();
    let dump = format!("{c:?}");
    for secret in ["pgpw-41d2", "hookpw-5b7a", "htok-3"] {
        assert!(!dump.contains(secret), "{secret} in {dump}");
    }
    assert!(
        dump.contains("postgres://lw:redacted@db.example.com/lw"),
        "{dump}"
    );
    assert!(dump.contains("hooks.example.com"), "{dump}");
    assert!(dump.contains("/bin/true"), "{dump}");
}

#[test]
fn api_config_debug_hides_a_query_token_in_base_url() {
    let c = toml_cfg(&format!(
        "[api]\nbase_url = \"https://api.example.com/?token=qtok-9\"\n{MINIMAL}"
    ))
    .unwrap();
    for dump in [format!("{:?}", c.api), format!("{c:?}")] {
        assert!(
            !dump.contains("qtok-9") && !dump.contains("k-123"),
            "{dump}"
        );
        assert!(dump.contains("https://api.example.com/"), "{dump}");
    }
}

/// A user or password in `api.base_url` sent `Authorization: Basic` beside the key's
/// `Bearer`: refused, without echoing the password.
#[test]
fn a_base_url_with_userinfo_is_refused_without_its_password() {
    for base in [
        "https://lw:apipw-7c1e@api.example.com/",
        "https://lw@api.example.com/",
    ] {
        let p = problems(&format!("[api]\nbase_url = \"{base}\"\n{MINIMAL}"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].contains("api.base_url") && p[0].contains("remove the user:password@ part"),
            "{p:?}"
        );
        assert!(!p[0].contains("apipw-7c1e"), "{p:?}");
    }
}

#[path = "reading_tests.rs"]
mod reading;
