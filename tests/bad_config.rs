//! The bad-config catalogue, `tests/data/bad-configs/`: one malformed config per file, run
//! through the real binary. `check-config` and `run` must both refuse every file with exit
//! 78 (docs/cli.md) and one `error: <file>: <key>: <reason>` line per problem: no
//! panic, no backtrace, no secret, and `run` touches nothing (no state file).
//!
//! Each file states what it expects in its leading comments:
//!
//! ```text
//! # <what is wrong>
//! # expect: <text>     appears in stderr; every stderr line contains one of the expects
//! # env: NAME=VALUE    extra environment for this case (e.g. a LOOPWATCH__ override)
//! # problems: N        exactly N lines (for the several-problems cases)
//! ```
//!
//! "Every line contains an expect" keeps each case honest: the file is valid but for the
//! one thing it tests, so a check that stopped working would fail the case instead of
//! being masked by an incidental error. Cases run in a scratch copy of the directory as
//! the working directory, so `secrets/...` paths resolve and a config that were wrongly
//! accepted could not write into the repository.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// The environment of every case. The values are distinctive so that a leak is visible.
const ENV: &[(&str, &str)] = &[
    ("BASETEN_API_KEY", "sk-badcfg-api-9f3c7e21"),
    (
        "LW_GOOD_SECRET",
        "whsec_bG9vcHdhdGNoLWJhZC1jb25maWctZ29vZC1rZXktMzI=",
    ),
    ("LW_NOT_WHSEC", "plain-not-whsec-5eb1a2c4"),
    ("LW_NOT_BASE64", "whsec_%%%not-base64-77c3e9%%%"),
    // 16 bytes: too short.
    ("LW_SHORT_SECRET", "whsec_c2hvcnQtZW52LWtleS0xNg=="),
    // 80 bytes: too long.
    (
        "LW_LONG_SECRET",
        "whsec_AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4/QEFCQ0RFRkdISUpLTE1OT1A=",
    ),
    ("LW_HEADER_TOKEN", "hdr-token-31d7aa90"),
    ("LW_EMPTY", ""),
    // A panic would print a backtrace: make it loud.
    ("RUST_BACKTRACE", "1"),
];

/// Written into some cases' files (a key by mistake, URL passwords); never echoed either.
const INLINE_SECRETS: &[&str] = &[
    "sk-inline-do-not-echo-4411",
    "pw-inline-do-not-echo-8c21",
    "tok-inline-do-not-echo-2f0d",
];

const MIN_CASES: usize = 35;

fn catalogue() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad-configs")
}

struct Case {
    /// File name, e.g. `duration-5x.toml`.
    name: String,
    expect: Vec<String>,
    env: Vec<(String, String)>,
    problems: Option<usize>,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(catalogue()).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_file() {
            continue; // secrets/
        }
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut case = Case {
            name,
            expect: Vec::new(),
            env: Vec::new(),
            problems: None,
        };
        for line in text.lines().take_while(|l| l.starts_with('#')) {
            let line = line.trim_start_matches('#').trim();
            if let Some(e) = line.strip_prefix("expect:") {
                case.expect.push(e.trim().to_string());
            } else if let Some(e) = line.strip_prefix("env:") {
                let (k, v) = e.trim().split_once('=').expect("# env: NAME=VALUE");
                case.env.push((k.to_string(), v.to_string()));
            } else if let Some(n) = line.strip_prefix("problems:") {
                case.problems = Some(n.trim().parse().expect("# problems: N"));
            }
        }
        out.push(case);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Every value that must never appear in the output: the secrets of [`ENV`], every line
/// of `secrets/*`, and their key material without the `whsec_` prefix.
fn secrets() -> Vec<String> {
    let mut out: Vec<String> = INLINE_SECRETS.iter().map(|s| s.to_string()).collect();
    for (k, v) in ENV {
        if *k != "RUST_BACKTRACE" && !v.is_empty() {
            out.push(v.to_string());
        }
    }
    for entry in std::fs::read_dir(catalogue().join("secrets")).unwrap() {
        let v = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(
            v.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
    }
    let bare: Vec<String> = out
        .iter()
        .filter_map(|s| s.strip_prefix("whsec_").map(str::to_string))
        .collect();
    out.extend(bare);
    out
}

/// A scratch copy of the catalogue, the working directory of every case.
fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["", "secrets"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for entry in std::fs::read_dir(catalogue().join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, dir.path().join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    dir
}

fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// The binary with only the case's environment; killed if it has not exited after
/// `timeout` (a config wrongly accepted by `run` would start the daemon).
fn loopwatch(cwd: &Path, args: &[&str], env: &[(String, String)]) -> Result<Output, String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopwatch"));
    cmd.args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(ENV.iter().copied())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let every = Duration::from_millis(5);
    let exited =
        common::wait::wait_blocking(Duration::from_secs(15), every, || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        return Err(format!(
            "still running after 15s (the config was accepted?); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(child.wait_with_output().unwrap())
}

/// What is wrong with the binary's answer to one case, if anything.
fn judge(case: &Case, out: &Output, secrets: &[String]) -> Vec<String> {
    let mut bad = Vec::new();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() != Some(78) {
        bad.push(format!("exit {:?}, want 78", out.status.code()));
    }
    if stderr.trim().is_empty() {
        bad.push("stderr is empty".into());
    }
    if !stdout.is_empty() {
        bad.push(format!("stdout is not empty: {stdout:?}"));
    }
    let lines: Vec<&str> = stderr.lines().collect();
    for line in &lines {
        if !line.starts_with("error: ") || !line.contains(&case.name) {
            bad.push(format!(
                "line not of the form `error: <file>: ...`: {line:?}"
            ));
        } else if !case.expect.iter().any(|e| line.contains(e.as_str())) {
            bad.push(format!(
                "line matches none of the expects {:?}: {line:?}",
                case.expect
            ));
        }
    }
    for e in &case.expect {
        if !stderr.contains(e.as_str()) {
            bad.push(format!("{e:?} not in stderr"));
        }
    }
    if let Some(n) = case.problems
        && lines.len() != n
    {
        bad.push(format!("{} lines, want {n}", lines.len()));
    }
    let all = format!("{stdout}{stderr}");
    for word in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        if all.contains(word) {
            bad.push(format!("output contains {word:?}"));
        }
    }
    for s in secrets {
        if all.contains(s.as_str()) {
            bad.push(format!("output leaks the secret {s:?}"));
        }
    }
    if !bad.is_empty() {
        bad.push(format!("stderr was:\n{stderr}"));
    }
    bad
}

#[test]
fn the_catalogue_is_complete_and_well_formed() {
    let cases = cases();
    assert!(
        cases.len() >= MIN_CASES,
        "{} cases, want at least {MIN_CASES}",
        cases.len()
    );
    for case in &cases {
        assert!(
            !case.expect.is_empty(),
            "{}: no `# expect:` line",
            case.name
        );
    }
    let count = |ext: &str| cases.iter().filter(|c| c.name.ends_with(ext)).count();
    assert!(
        count(".toml") >= 30 && count(".yaml") >= 5,
        "mostly TOML, some YAML"
    );
    assert!(
        cases.iter().any(|c| c.problems.is_some_and(|n| n >= 5)),
        "a case with several problems at once"
    );
}

#[test]
fn every_bad_config_is_refused_by_check_config_and_run() {
    let dir = scratch();
    let secrets = secrets();
    let cases = cases();
    let before = listing(dir.path());
    let mut failures = Vec::new();
    for case in &cases {
        let file = dir.path().join(&case.name);
        let file = file.to_str().unwrap();
        for command in ["check-config", "run"] {
            let bad = match loopwatch(dir.path(), &[command, "-c", file], &case.env) {
                Ok(out) => judge(case, &out, &secrets),
                Err(e) => vec![e],
            };
            if !bad.is_empty() {
                failures.push(format!(
                    "{} ({command}):\n  {}",
                    case.name,
                    bad.join("\n  ")
                ));
            }
        }
        // A refused config touches nothing: no state file, no socket file, nothing.
        let new: Vec<PathBuf> = listing(dir.path())
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if !new.is_empty() {
            failures.push(format!("{} (run): created {new:?}", case.name));
            for p in new {
                let _ = std::fs::remove_file(p);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures over {} cases:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

/// The control: with the same environment, a config using the good secrets, the secret
/// files and `${VAR}` headers is accepted and printed without them. So the catalogue's
/// failures come from what each file breaks, not from the set-up.
#[test]
fn the_same_environment_accepts_a_good_config() {
    let dir = scratch();
    let file = dir.path().join("good.toml");
    std::fs::write(
        &file,
        r#"
[[targets]]
name = "a"
run_id = "r1"
[[sinks]]
name = "hook"
url = "https://hooks.example/loops"
secret_env = "LW_GOOD_SECRET"
previous_secret_file = "secrets/good.key"
headers = { Authorization = "Bearer ${LW_HEADER_TOKEN}" }
"#,
    )
    .unwrap();
    let out = loopwatch(
        dir.path(),
        &["check-config", "-c", file.to_str().unwrap()],
        &[],
    )
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[redacted]"), "{stdout}");
    for s in secrets() {
        assert!(!stdout.contains(&s), "leaks {s}: {stdout}");
    }
}

/// `LOOPWATCH_CONFIG` instead of `-c`: the same refusal.
#[test]
fn a_bad_config_named_by_loopwatch_config_is_refused_the_same_way() {
    let dir = scratch();
    let case = cases()
        .into_iter()
        .find(|c| c.name == "several-problems.toml")
        .unwrap();
    let file = dir.path().join(&case.name);
    let env = [(
        "LOOPWATCH_CONFIG".to_string(),
        file.to_str().unwrap().to_string(),
    )];
    let out = loopwatch(dir.path(), &["check-config"], &env).unwrap();
    let bad = judge(&case, &out, &secrets());
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}
