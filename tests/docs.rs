//! The reference under docs/ stays true where that is cheap to check: every key of the
//! example config, every metric the binary exports and every command and flag are
//! documented, and the documents link only to files inside the repository.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_loopwatch");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every key of a TOML tree, tables and arrays of tables walked (a key's own value
/// table, like `headers`, is data, not keys).
fn keys(value: &toml::Value, out: &mut Vec<String>) {
    let walk = |t: &toml::Table, out: &mut Vec<String>| {
        for (k, v) in t {
            out.push(k.clone());
            if k != "headers" {
                keys(v, out);
            }
        }
    };
    match value {
        toml::Value::Table(t) => walk(t, out),
        toml::Value::Array(items) => {
            for item in items {
                if let toml::Value::Table(t) = item {
                    walk(t, out);
                }
            }
        }
        _ => {}
    }
}

#[test]
fn every_key_of_the_example_config_is_documented() {
    let example = read("config/loopwatch.example.toml");
    let doc = read("docs/configuration.md");
    let mut all = Vec::new();
    keys(
        &toml::from_str(&example).expect("the example is TOML"),
        &mut all,
    );
    // Keys shown commented out (`# url_env = ...`) are keys too.
    for line in example.lines() {
        if let Some(rest) = line.strip_prefix("# ")
            && let Some((k, _)) = rest.split_once(" = ")
            && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            all.push(k.to_string());
        }
    }
    all.sort();
    all.dedup();
    assert!(all.len() > 40, "only {} keys found: {all:?}", all.len());
    let missing: Vec<_> = all
        .iter()
        .filter(|k| {
            !doc.contains(&format!("`{k}`"))
                && !doc.contains(&format!("`[{k}]`"))
                && !doc.contains(&format!("`[[{k}]]`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document {missing:?}"
    );
}

/// One HTTP/1.0 GET; the body, or None on any error.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// Kills the demo however the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn every_metric_the_binary_exports_is_documented() {
    // The demo runs the real daemon with a target and a sink, so every family has series.
    let mut demo = Child(
        Command::new(BIN)
            .args([
                "demo",
                "--duration",
                "120s",
                "--every",
                "1s",
                "--sync-for",
                "1s",
            ])
            .env_remove("LOOPWATCH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo"),
    );
    let stdout = demo.0.stdout.take().expect("piped");
    // Read the demo's output to its end on a thread: a closed pipe would make its next
    // line (one per webhook received) fail.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("http://").nth(1)
                && line.trim_start().starts_with("metrics")
            {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the demo prints its metrics address");
    // Wait for a delivery, so the per-sink series carry data too.
    let every = Duration::from_millis(250);
    let text = common::wait::wait_blocking(Duration::from_secs(60), every, || {
        get(&addr, "/metrics").filter(|t| {
            t.lines()
                .any(|l| l.starts_with("loopwatch_deliveries_total") && !l.ends_with(" 0"))
        })
    })
    .expect("no delivery within 60s");
    let doc = read("docs/metrics.md");
    let mut names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    names.sort();
    assert!(names.len() > 15, "only {names:?}");
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !n.starts_with("process_") && !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md does not list {missing:?}"
    );
    if names.iter().any(|n| n.starts_with("process_")) {
        assert!(doc.contains("process_*"), "docs/metrics.md omits process_*");
    }
}

#[test]
fn every_command_and_flag_is_documented() {
    let doc = read("docs/cli.md");
    fn walk(cmd: &clap::Command, path: &str, doc: &str, missing: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{path}{}", sub.get_name()).trim().to_string();
            if !doc.contains(&format!("`{path}")) {
                missing.push(format!("command `{path}`"));
            }
            for long in sub.get_arguments().filter_map(|a| a.get_long()) {
                if !matches!(long, "help" | "version") && !doc.contains(&format!("--{long}")) {
                    missing.push(format!("`{path} --{long}`"));
                }
            }
            walk(sub, &format!("{path} "), doc, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&loopwatch::args::command(), "", &doc, &mut missing);
    assert!(missing.is_empty(), "docs/cli.md lacks {missing:#?}");
}

/// Relative link targets of a markdown text: `[text](target)`, anchors and URLs left out.
fn relative_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let Some(end) = rest.find(')') else { break };
        let target = rest[..end].split('#').next().unwrap_or_default().trim();
        if !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:") {
            out.push(target.to_string());
        }
    }
    out
}

#[test]
fn the_documents_link_only_to_files_inside_the_repository() {
    let root = root().canonicalize().expect("the repository");
    let mut docs: Vec<PathBuf> = [
        "README.md",
        "ARCHITECTURE.md",
        "BENCHMARKS.md",
        "CONTRIBUTING.md",
        "SECURITY.md",
        "CHANGELOG.md",
    ]
    .iter()
    .map(|p| root.join(p))
    .collect();
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        docs.push(entry.expect("entry").path());
    }
    let mut bad = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d.extension().is_some_and(|e| e == "md"))
    {
        let text = std::fs::read_to_string(doc).expect("readable");
        let name = doc.strip_prefix(&root).unwrap_or(doc).display().to_string();
        if text.contains("interface.md") || text.contains("shared/spec") {
            bad.push(format!("{name} cites a document outside the repository"));
        }
        let dir = doc.parent().unwrap_or(Path::new("."));
        for link in relative_links(&text) {
            match dir.join(&link).canonicalize() {
                Ok(p) if p.starts_with(&root) => {}
                Ok(_) => bad.push(format!("{name} links outside the repository: {link}")),
                Err(_) => bad.push(format!("{name} links to a missing file: {link}")),
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Every alert carries a `runbook_url` to its own section of docs/runbook.md, and that
/// section exists (an alert renamed or added without its runbook fails here); and
/// docs/deployment.md names it (its list had fallen four behind).
#[test]
fn every_alert_links_to_its_runbook_section() {
    const BASE: &str = "https://github.com/loopwatch/loopwatch/blob/main/docs/runbook.md#";
    let alerts = read("deploy/prometheus/alerts.yml");
    let runbook = read("docs/runbook.md");
    let deployment = read("docs/deployment.md");
    let docs = yaml_rust2::YamlLoader::load_from_str(&alerts).expect("alerts.yml is YAML");
    let mut seen = 0;
    let mut bad = Vec::new();
    for group in docs[0]["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            let name = rule["alert"].as_str().expect("an alert name");
            seen += 1;
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_default();
            if url != format!("{BASE}{}", name.to_lowercase()) {
                bad.push(format!("{name}: runbook_url {url:?}"));
            }
            if !runbook.contains(&format!("\n## {name}\n")) {
                bad.push(format!("{name}: docs/runbook.md has no section ## {name}"));
            }
            if !deployment.contains(&format!("`{name}`")) {
                bad.push(format!(
                    "{name}: not in docs/deployment.md's list of alerts"
                ));
            }
        }
    }
    assert!(seen >= 12, "only {seen} alerts read");
    assert!(bad.is_empty(), "{bad:#?}");
}
