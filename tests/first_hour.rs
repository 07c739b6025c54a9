//! A stranger's first hour, end to end with the real binary: `init` -> `check-config` ->
//! `once --dry-run` against the simulated API; the read-only commands working with only
//! the API key beside the shipped systemd, Kubernetes and example configs (whose other
//! secrets sit in files or variables only the service has); `check-config --no-secrets`
//! naming what it skipped; and the errors that name their fix.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::{API_KEY, Env, bin};

const EX_CONFIG: i32 = 78;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `loopwatch ARGS` in `cwd` with exactly the variables `vars` (plus PATH and HOME): no
/// secret of the test's own environment leaks in.
fn loopwatch(cwd: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut c = Command::new(bin());
    c.args(args).current_dir(cwd).env_clear();
    for k in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(k) {
            c.env(k, v);
        }
    }
    c.envs(vars.iter().copied()).output().unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

async fn run(cwd: &Path, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let (cwd, args, vars): (PathBuf, Vec<String>, Vec<(String, String)>) = (
        cwd.to_path_buf(),
        args.iter().map(|s| s.to_string()).collect(),
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        loopwatch(&cwd, &args, &vars)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn init_then_check_config_then_a_dry_run_against_the_simulator() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-7", "sampler", "step-100", Some("COMPLETE"));
    h.add_checkpoint("run-7", "sampler", "step-200", Some("SYNCING"));
    let cwd = env.dir.path();
    let dir = cwd.join("first");

    let out = run(cwd, &["init", "--dir", "first", "--run-id", "run-7"], &[]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let config = dir.canonicalize().unwrap().join("loopwatch.toml");
    let c = config.to_str().unwrap();
    for next in [
        format!("loopwatch check-config -c {c}"),
        format!("loopwatch once --dry-run -c {c}"),
        format!("loopwatch run -c {c}"),
    ] {
        assert!(
            stdout.contains(&next),
            "init does not print `{next}`:\n{stdout}"
        );
    }
    // The secret: a valid whsec_ key that only its owner can read, never printed.
    let secret_path = dir.join("webhook-secret");
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert!(
        loopwatch::signing::SigningKey::parse(secret.trim()).is_ok(),
        "{secret:?}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!stdout.contains(secret.trim()) && !stderr.contains(secret.trim()));

    // Checks as written, with only the API key in the environment.
    let key = [("BASETEN_API_KEY", API_KEY)];
    let out = run(cwd, &["check-config", "-c", c], &key).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);

    // One poll of the simulator, with the run init wrote: the checkpoints are found (as
    // events with emit_existing) and nothing is written.
    let base = env.sim.base_url();
    let vars = [
        ("BASETEN_API_KEY", API_KEY),
        ("LOOPWATCH__API__BASE_URL", base.as_str()),
        ("LOOPWATCH__POLL__EMIT_EXISTING", "true"),
    ];
    let out = run(cwd, &["once", "--dry-run", "-o", "json", "-c", c], &vars).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["targets"][0]["target"], "my-run");
    assert_eq!(v["targets"][0]["ok"], true, "{v}");
    let uris: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["data"]["uri"].as_str())
        .collect();
    assert!(
        uris.contains(&"bt://loops:run-7/sampler_weights/step-100"),
        "{v}"
    );
    assert!(
        !dir.join("loopwatch.db").exists(),
        "a dry run wrote a state file"
    );

    // A second init overwrites nothing.
    let before = std::fs::read_to_string(&config).unwrap();
    let out = run(cwd, &["init", "--dir", "first"], &[]).await;
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("exists") && stderr.lines().count() == 1,
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    assert_eq!(std::fs::read_to_string(&secret_path).unwrap(), secret);
    // init reads no config: -c with it is a usage error.
    let out = run(cwd, &["-c", c, "init", "--dir", "other"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out).1);
}

/// The shipped configs and the secrets each names besides the API key (which read-only
/// commands never read either).
const SHIPPED: &[(&str, &[&str])] = &[
    (
        "deploy/systemd/loopwatch.toml",
        &[
            "api.api_key_file = /run/credentials/loopwatch.service/baseten-api-key",
            "sinks[0].secret_file = /run/credentials/loopwatch.service/deployer-webhook-secret",
        ],
    ),
    (
        "deploy/kubernetes/base/loopwatch.toml",
        &[
            "api.api_key_file = /var/run/secrets/loopwatch/baseten-api-key",
            "sinks[0].secret_file = /var/run/secrets/loopwatch/deployer-webhook-secret",
        ],
    ),
    (
        "config/loopwatch.example.toml",
        &[
            "api.api_key_env = BASETEN_API_KEY",
            "sinks[0].secret_env = DEPLOYER_WEBHOOK_SECRET",
            "sinks[0].headers.Authorization = Bearer ${DEPLOY_TOKEN}",
        ],
    ),
];

#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_work_with_only_the_api_key_beside_the_shipped_configs() {
    let env = Env::new().await;
    let h = env.sim.handle();
    h.add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    // A state file as a daemon leaves it: one poll committed by `once`.
    let own = env.write_config(common::QWEN);
    let out = env.run(&own, &["once"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let db = format!("sqlite://{}", env.db().display());
    let cwd = env.dir.path();

    for (file, secrets) in SHIPPED {
        let path = root().join(file);
        let p = path.to_str().unwrap();
        // Only the API key, and the store the daemon wrote (the shipped file's own store
        // is a path of the machine it is meant for).
        let vars = [
            ("BASETEN_API_KEY", API_KEY),
            ("LOOPWATCH__STORE__URL", db.as_str()),
        ];
        // Without --no-secrets the same config is refused: the secrets really are missing.
        let out = run(cwd, &["check-config", "-c", p], &vars).await;
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{file}");

        let out = run(cwd, &["state", "-o", "json", "-c", p], &vars).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: state: {stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v[0]["target"], "qwen", "{file}: {v}");
        assert_eq!(v[0]["checkpoints"][0]["name"], "step-100", "{file}: {v}");

        let out = run(cwd, &["deploys", "-o", "json", "-c", p], &vars).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: deploys: {stderr}");
        assert!(
            serde_json::from_str::<Value>(&stdout).unwrap().is_array(),
            "{stdout}"
        );

        let out = run(cwd, &["deliveries", "list", "-o", "json", "-c", p], &vars).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{file}: deliveries list: {stderr}"
        );
        assert!(serde_json::from_str::<Value>(&stdout).unwrap().is_array());

        let out = run(
            cwd,
            &["deliveries", "redeliver", "--dead", "-o", "json", "-c", p],
            &vars,
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: redeliver: {stderr}");
        assert_eq!(
            serde_json::from_str::<Value>(&stdout).unwrap()["requeued"],
            0
        );

        // check-config --no-secrets: everything else checked, each skipped secret named.
        let out = run(cwd, &["check-config", "--no-secrets", "-c", p], &[]).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{file}: {stderr}");
        let skipped: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.strip_prefix("not read (--no-secrets): "))
            .collect();
        assert_eq!(skipped, *secrets, "{file}: {stderr}");
        assert!(stdout.contains("[[targets]]"), "{file}: {stdout}");
        let out = run(
            cwd,
            &["check-config", "--no-secrets", "-o", "json", "-c", p],
            &[],
        )
        .await;
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v["skipped_secrets"].as_array().unwrap().len(),
            secrets.len()
        );
    }

    // checkpoints reads the API key and nothing else: the systemd config's key file
    // (here a file of the test's), not its sink's missing secret file.
    let key_file = env.dir.path().join("api-key");
    std::fs::write(&key_file, API_KEY).unwrap();
    let base = env.sim.base_url();
    let vars = [
        ("LOOPWATCH__API__API_KEY_FILE", key_file.to_str().unwrap()),
        ("LOOPWATCH__API__BASE_URL", base.as_str()),
    ];
    let systemd = root().join("deploy/systemd/loopwatch.toml");
    let args = [
        "checkpoints",
        "--run-id",
        "run-1",
        "-o",
        "json",
        "-c",
        systemd.to_str().unwrap(),
    ];
    let out = run(cwd, &args, &vars).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(&stdout).unwrap()[0]["checkpoint_id"],
        "step-100"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_that_is_not_read_never_runs() {
    // A config loaded without its secrets has placeholders for them: building the daemon
    // from it is refused instead of polling with no key or sending unsigned webhooks.
    let text = "[[targets]]\nname = \"t\"\nrun_id = \"r\"\n[[sinks]]\nname = \"s\"\nurl = \"https://x.example/h\"\nsecret_env = \"HOOK\"\n[store]\nurl = \"sqlite::memory:\"\n";
    let env = loopwatch::config::Environment::from_pairs(std::iter::empty::<(&str, &str)>());
    let path = tempfile::NamedTempFile::with_suffix(".toml").unwrap();
    std::fs::write(path.path(), text).unwrap();
    let cfg =
        loopwatch::config::load_reading(path.path(), &env, loopwatch::config::ReadSecrets::None)
            .unwrap();
    assert_eq!(
        cfg.skipped_secrets,
        [
            "api.api_key_env = BASETEN_API_KEY",
            "sinks[0].secret_env = HOOK"
        ]
    );
    let Err(e) = loopwatch::app::App::build(cfg, false).await else {
        panic!("built an app without its secrets");
    };
    assert!(
        e.to_string()
            .contains("cannot run without reading its secrets"),
        "{e}"
    );
}

#[test]
fn errors_name_their_fix() {
    let dir = tempfile::tempdir().unwrap();
    // No config anywhere: the error names `loopwatch init`.
    let out = loopwatch(dir.path(), &["state"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains("`loopwatch init`"), "{stderr}");
    let out = loopwatch(dir.path(), &["run", "-c", "missing.toml"], &[]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
    assert!(stderr.contains("`loopwatch init`"), "{stderr}");

    // A malformed whsec_ secret: the error names the command that makes one, and never
    // the value.
    std::fs::write(
        dir.path().join("lw.toml"),
        "[[targets]]\nname = \"t\"\nrun_id = \"r\"\n[[sinks]]\nname = \"s\"\nurl = \"https://x.example/h\"\nsecret_env = \"HOOK\"\n",
    )
    .unwrap();
    for bad in ["whsec_c2hvcnQ=", "not-a-whsec-value-at-all"] {
        let out = loopwatch(
            dir.path(),
            &["check-config", "-c", "lw.toml"],
            &[("BASETEN_API_KEY", "k"), ("HOOK", bad)],
        );
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(EX_CONFIG), "{stderr}");
        assert!(
            stderr.contains("head -c 32 /dev/urandom | base64"),
            "{bad}: {stderr}"
        );
        assert!(!stdout.contains(bad) && !stderr.contains(bad), "{stderr}");
    }
}
