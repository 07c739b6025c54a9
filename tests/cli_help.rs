//! The CLI documents itself: every command, flag and argument has a help line, and the
//! completion scripts and the man page cover every command.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch");

/// Every command of the tree with its path (`loopwatch deliveries list`).
fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    out.push((path.to_string(), cmd.clone()));
    for sub in cmd.get_subcommands() {
        walk(sub, &format!("{path} {}", sub.get_name()), out);
    }
}

fn commands() -> Vec<(String, clap::Command)> {
    let mut cmd = loopwatch::args::command();
    cmd.build();
    let mut all = Vec::new();
    walk(&cmd, "loopwatch", &mut all);
    all
}

/// The leaf subcommand names users type, e.g. `run`, `check-config`, `list`.
fn subcommand_names() -> Vec<String> {
    commands()
        .into_iter()
        .skip(1)
        .map(|(_, c)| c.get_name().to_string())
        .filter(|n| n != "help")
        .collect()
}

#[test]
fn every_command_flag_and_argument_has_help() {
    let mut missing = Vec::new();
    for (path, cmd) in commands() {
        let about = cmd.get_about().map(|s| s.to_string()).unwrap_or_default();
        if about.trim().is_empty() {
            missing.push(format!("command `{path}`"));
        }
        for arg in cmd.get_arguments() {
            let help = arg.get_help().map(|s| s.to_string()).unwrap_or_default();
            if help.trim().is_empty() {
                missing.push(format!("`{path}` argument {}", arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "no help text: {missing:#?}");
}

#[test]
fn every_command_that_prints_data_takes_output_json() {
    // Commands that print data, not just progress: each takes -o json.
    let data = [
        "loopwatch check-config",
        "loopwatch checkpoints",
        "loopwatch state",
        "loopwatch deliveries list",
        "loopwatch deliveries redeliver",
        "loopwatch test-sink",
        "loopwatch once",
    ];
    for (path, cmd) in commands() {
        if !data.contains(&path.as_str()) {
            continue;
        }
        let output = cmd.get_arguments().find(|a| a.get_id() == "output");
        let values: Vec<String> = output
            .map(|a| {
                a.get_possible_values()
                    .iter()
                    .map(|v| v.get_name().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            output.and_then(|a| a.get_short()) == Some('o') && values.contains(&"json".into()),
            "`{path}` has no -o json (values {values:?})"
        );
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("LOOPWATCH_CONFIG")
        .output()
        .expect("run loopwatch");
    assert!(
        out.status.success(),
        "loopwatch {args:?} exited {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn completions_cover_every_subcommand_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(
            script.len() > 500,
            "{shell}: a {}-byte script",
            script.len()
        );
        for name in subcommand_names() {
            assert!(script.contains(&name), "{shell} completion lacks `{name}`");
        }
        assert!(
            script.contains("run-id"),
            "{shell} completion lacks --run-id"
        );
    }
}

#[test]
fn the_man_page_documents_every_subcommand_and_flag() {
    let page = run(&["man"]);
    assert!(page.contains(".TH loopwatch 1"), "no title: {page:.200}");
    for (path, cmd) in commands().into_iter().skip(1) {
        if path.split(' ').any(|w| w == "help") {
            continue;
        }
        let heading = format!(".SH \"{}\"", path.to_uppercase());
        assert!(page.contains(&heading), "man page lacks {heading}");
        for arg in cmd.get_arguments().filter_map(|a| a.get_long()) {
            // roff escapes the dashes: --dry-run is \-\-dry\-run.
            let flag = format!("\\-\\-{}", arg.replace('-', "\\-"));
            assert!(page.contains(&flag), "man page lacks {flag} of `{path}`");
        }
    }
}

#[test]
fn completions_reject_an_unknown_shell_as_a_usage_error() {
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .expect("run loopwatch");
    assert_eq!(out.status.code(), Some(2));
}

/// `loopwatch completions bash | head -1` and `loopwatch man | head -1`: a reader that
/// goes away early is not an error (it used to panic with BrokenPipe).
#[test]
fn completions_and_man_exit_zero_when_their_reader_goes_away() {
    use std::io::Read;
    use std::process::Stdio;
    for args in [
        &["completions", "bash"][..],
        &["completions", "fish"],
        &["man"],
    ] {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // stdout is closed here, with most of the text unread.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

/// `-c` only where a config is read; `-o`'s help says what that command prints (no "TOML"
/// on commands that never print it); the man page's exit codes and environment in their
/// man-pages(7) sections.
#[test]
fn flags_are_offered_where_they_do_something() {
    for (path, cmd) in commands().into_iter().skip(1) {
        if path.split(' ').any(|w| w == "help") {
            continue;
        }
        let name = cmd.get_name().to_string();
        let has_config = cmd.get_arguments().any(|a| a.get_long() == Some("config"));
        // `demo` reads none but takes -c (and says it ignores it), as the contract's
        // `loopwatch <command> [-c FILE]` has every command do.
        let reads_none = ["completions", "man", "init", "help"].contains(&name.as_str())
            || cmd.has_subcommands();
        assert_eq!(
            has_config, !reads_none,
            "`{path}`: -c offered {has_config}, reads a config {}",
            !reads_none
        );
        if let Some(o) = cmd.get_arguments().find(|a| a.get_id() == "output") {
            let help = o.get_help().map(|h| h.to_string()).unwrap_or_default();
            let toml = o
                .get_possible_values()
                .iter()
                .any(|v| v.get_name() == "toml");
            assert_eq!(
                help.contains("toml") || help.contains("TOML"),
                toml,
                "`{path}`: {help}"
            );
        }
    }
    let page = run(&["man"]);
    assert!(
        page.contains(".SH \"EXIT STATUS\""),
        "no EXIT STATUS section"
    );
    assert!(page.contains(".SH ENVIRONMENT"), "no ENVIRONMENT section");
    assert!(!page.contains(".SH EXTRA"), "an EXTRA section");
    assert!(
        page.contains("LOOPWATCH_CONFIG") && page.contains("\\fB78\\fR"),
        "{page}"
    );
}
