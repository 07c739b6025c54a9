//! Webhook formats and signatures, end to end: the real daemon against the simulated
//! Loops API, delivering to real receivers over HTTP.
//!
//! - Always run: Rust-side checks of every format (`cloudevents`, `cloudevents-binary`,
//!   `template`), key rotation and `v1a` (ed25519) signatures.
//! - `#[ignore]`d, run by `scripts/interop`: the receivers' own Python libraries
//!   (`standardwebhooks`, `svix`, `cloudevents`) verify everything loopwatch sends and
//!   reject tampered and stale requests; and the reference receiver `examples/receiver.py`
//!   works as documented. They need `LOOPWATCH_INTEROP_PYTHON` (the venv's python).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Daemon, Env, Received, Receiver, SECRET, until, wait_for};
use loopwatch::signing::{self as sign, Ed25519Key, SigningKey};
use loopwatch::store::StoredEvent;
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
/// The v1a test vector's key pair (tests/data/standard-webhooks-vectors.json).
const ED_KEY: &str =
    "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";
const ED_PUB: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";
/// A template in the shape of the GitHub recipe, exercising `tojson` on every field.
const TEMPLATE: &str = r#"{"event_type": "loops-checkpoint-complete", "client_payload": {"uri": {{ data.uri | tojson }}, "checkpoint_id": {{ data.checkpoint.checkpoint_id | tojson }}, "run_id": {{ data.checkpoint.run_id | tojson }}, "target": {{ data.target | tojson }}, "event_id": {{ data.event_id | tojson }}, "type": {{ type | tojson }}}}"#;
/// Events of the scenario: step-100 completed; "étape 200" discovered and completed.
const EVENTS: usize = 3;

/// One `[[sinks]]` table.
fn sink_toml(name: &str, url: &str, extra: &str) -> String {
    common::sink(
        name,
        url,
        &format!("retry_schedule = [\"200ms\", \"200ms\"]\n{extra}"),
    )
}

fn key_file(env: &Env) -> PathBuf {
    let path = env.dir.path().join("signing.key");
    std::fs::write(&path, format!("{ED_KEY}\n")).unwrap();
    path
}

/// The sinks of the scenario, by name: (format, extra TOML).
fn sinks(key_file: &Path) -> Vec<(&'static str, &'static str, String)> {
    let template = format!("format = \"template\"\ntemplate = '''{TEMPLATE}'''");
    vec![
        (
            "standard",
            "standard",
            "secret_env = \"HOOK_SECRET\"".into(),
        ),
        (
            "cloudevents",
            "cloudevents",
            "secret_env = \"HOOK_SECRET\"\nformat = \"cloudevents\"".into(),
        ),
        (
            "binary",
            "cloudevents-binary",
            "secret_env = \"HOOK_SECRET\"\nformat = \"cloudevents-binary\"".into(),
        ),
        (
            "template",
            "template",
            format!("secret_env = \"HOOK_SECRET\"\n{template}"),
        ),
        (
            "rotation",
            "standard",
            "secret_env = \"NEW_SECRET\"\nprevious_secret_env = \"OLD_SECRET\"".into(),
        ),
        (
            "ed25519",
            "cloudevents",
            format!(
                "secret_env = \"HOOK_SECRET\"\nsigning_key_file = \"{}\"\nformat = \"cloudevents\"",
                key_file.display()
            ),
        ),
        (
            "ed25519-only",
            "template",
            format!(
                "signing_key_file = \"{}\"\ncontent_type = \"application/vnd.example+json\"\n{template}",
                key_file.display()
            ),
        ),
    ]
}

/// Start the daemon with `sinks_toml`, then make the three events happen.
async fn scenario(env: &Env, sinks_toml: &str) -> Daemon {
    let h = env.sim.handle();
    let id = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    let cfg = env.write_config(&format!("{}{sinks_toml}", common::QWEN));
    let d = env.spawn_daemon_env(&cfg, &[("NEW_SECRET", SECRET), ("OLD_SECRET", OLD_SECRET)]);
    d.ready().await;
    h.set_status(&id, Some("COMPLETE"));
    // A name as users may choose it: binary mode must percent-encode it in ce-subject.
    h.add_checkpoint("run-1", "trainer", "étape 200", Some("COMPLETE"));
    d
}

async fn stored_events(env: &Env) -> BTreeMap<String, StoredEvent> {
    let events: BTreeMap<String, StoredEvent> = env
        .events()
        .await
        .into_iter()
        .map(|e| (e.id.clone(), e))
        .collect();
    assert_eq!(events.len(), EVENTS, "{events:#?}");
    events
}

fn standard_body(e: &StoredEvent) -> Value {
    serde_json::from_str(&e.body).unwrap()
}

/// What the TEMPLATE renders for `e`.
fn expected_template(e: &StoredEvent) -> Value {
    let s = standard_body(e);
    json!({"event_type": "loops-checkpoint-complete", "client_payload": {
        "uri": e.uri(), "checkpoint_id": e.checkpoint_name, "run_id": e.run_id,
        "target": e.target, "event_id": e.id, "type": s["type"]}})
}

/// The CloudEvents attributes loopwatch must send for `e` (docs/events.md).
fn expected_ce(e: &StoredEvent) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("specversion", "1.0".to_string()),
        ("id", e.id.clone()),
        ("type", format!("loopwatch.{}", e.kind)),
        ("source", "bt://loops:run-1".to_string()),
        ("subject", e.uri().expect("a known checkpoint target")),
        (
            "time",
            standard_body(e)["timestamp"].as_str().unwrap().to_string(),
        ),
    ])
}

fn same_instant(a: &str, b: &str) -> bool {
    let p = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    p(a) == p(b)
}

/// Undo the CloudEvents HTTP binding's percent-encoding of a header value.
fn percent_decode(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex: String = bytes.by_ref().take(2).map(char::from).collect();
            out.push(u8::from_str_radix(&hex, 16).unwrap());
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).unwrap()
}

fn signatures(header: &str) -> Vec<&str> {
    header
        .split(' ')
        .map(|s| s.split(',').next().unwrap())
        .collect()
}

// ---------------------------------------------------------------- Rust-side checks

/// Checks one request the way a receiver would, per the sink's name.
fn check_received(sink: &str, r: &Received, e: &StoredEvent) {
    let key = SigningKey::parse(SECRET).unwrap();
    let old = SigningKey::parse(OLD_SECRET).unwrap();
    let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
    let sig = r.header("webhook-signature");
    let v1 = |k: &SigningKey| sign::verify(k, &r.id(), ts, &r.body, &sig);
    let v1a = || sign::verify_v1a(ED_PUB, &r.id(), ts, &r.body, &sig);
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    match sink {
        "rotation" => {
            assert_eq!(signatures(&sig), ["v1", "v1"], "{sig}");
            assert!(v1(&key) && v1(&old), "each key alone must verify: {sig}");
        }
        "ed25519" => {
            assert_eq!(signatures(&sig), ["v1", "v1a"], "{sig}");
            assert!(v1(&key) && v1a(), "{sig}");
        }
        "ed25519-only" => {
            assert_eq!(signatures(&sig), ["v1a"], "{sig}");
            assert!(v1a() && !v1(&key), "{sig}");
        }
        _ => {
            assert_eq!(signatures(&sig), ["v1"], "{sig}");
            assert!(v1(&key), "{sig}");
        }
    }
    let standard = standard_body(e);
    match sink {
        "standard" | "rotation" => {
            assert_eq!(r.header("content-type"), "application/json");
            assert_eq!(r.body, e.body.as_bytes(), "the stored body, byte for byte");
        }
        "cloudevents" | "ed25519" => {
            assert_eq!(r.header("content-type"), "application/cloudevents+json");
            let v = r.json();
            for (k, want) in expected_ce(e) {
                let got = v[k].as_str().unwrap_or_default();
                if k == "time" {
                    assert!(same_instant(got, &want), "{k}: {got} != {want}");
                } else {
                    assert_eq!(got, want, "{k}");
                }
            }
            assert_eq!(v["data"], standard["data"]);
            assert!(r.headers.keys().all(|k| !k.as_str().starts_with("ce-")));
        }
        "binary" => {
            assert_eq!(r.header("content-type"), "application/json");
            for (k, want) in expected_ce(e) {
                let got = percent_decode(&r.header(&format!("ce-{k}")));
                assert_eq!(got, want, "ce-{k}");
            }
            assert_eq!(
                r.json(),
                standard["data"],
                "binary mode: the body is the data"
            );
        }
        "template" => {
            assert_eq!(r.header("content-type"), "application/json");
            assert_eq!(r.json(), expected_template(e));
        }
        "ed25519-only" => {
            assert_eq!(r.header("content-type"), "application/vnd.example+json");
            assert_eq!(r.json(), expected_template(e));
        }
        other => panic!("unknown sink {other}"),
    }
}

#[tokio::test]
async fn every_format_arrives_signed_over_the_exact_bytes_sent() {
    let env = Env::new().await;
    let keys = key_file(&env);
    let mut receivers = Vec::new();
    let mut toml = String::new();
    for (name, _, extra) in sinks(&keys) {
        let rx = Receiver::start().await.unwrap();
        toml.push_str(&sink_toml(name, &rx.url, &extra));
        receivers.push((name, rx));
    }
    let d = scenario(&env, &toml).await;
    for (name, rx) in &receivers {
        wait_for(&format!("{EVENTS} events at sink {name}"), T, || {
            let ids: BTreeSet<String> = rx.got().iter().map(Received::id).collect();
            (ids.len() >= EVENTS).then_some(())
        })
        .await;
    }
    let events = stored_events(&env).await;
    for (name, rx) in &receivers {
        for r in rx.got() {
            let e = events
                .get(&r.id())
                .unwrap_or_else(|| panic!("{name}: unknown webhook-id {}", r.id()));
            check_received(name, &r, e);
        }
    }
    assert!(!d.log_text().contains("6Xb/dCcHpPea21PS1N9VY"));
}

// ------------------------------------------------------- the Python libraries (ignored)

fn interop_python() -> String {
    match std::env::var("LOOPWATCH_INTEROP_PYTHON") {
        Ok(p) if !p.is_empty() => p,
        _ => panic!(
            "LOOPWATCH_INTEROP_PYTHON is not set: run scripts/interop, which creates the Python \
             venv (.venv-interop) and runs this test with it"
        ),
    }
}

/// A Python process, killed when dropped, whose output lines are collected.
struct Py {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Py {
    fn spawn(mut cmd: Command) -> Py {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    sink.lock().unwrap().push(line);
                }
            });
            lines
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Py {
            child,
            stdout,
            stderr,
        }
    }
    fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }
    fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }
    /// The port from the first output line that starts with `prefix`.
    async fn port(&mut self, prefix: &str) -> u16 {
        let deadline = Instant::now() + T;
        loop {
            let lines = [self.stdout(), self.stderr()].concat();
            if let Some(l) = lines.iter().find(|l| l.starts_with(prefix)) {
                // "listening 8000" or "listening on http://127.0.0.1:8000/"
                let rest = l.rsplit([' ', ':']).next().unwrap_or_default();
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                return digits.parse().unwrap();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the Python receiver exited ({status}):\n{}",
                    self.stderr().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the Python receiver did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await; // waiting for its port line
        }
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn results(base: &str) -> Vec<Value> {
    let r = reqwest::get(format!("{base}/results")).await.unwrap();
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Send one request signed by loopwatch's own code (`ts`) with `body` possibly differing
/// from `signed_body`; returns the status.
async fn send_signed(
    url: &str,
    id: &str,
    ts: i64,
    signed_body: &[u8],
    body: &[u8],
    ed25519: Option<&Ed25519Key>,
) -> u16 {
    let key = SigningKey::parse(SECRET).unwrap();
    let sig = sign::signature_header(&[&key], ed25519, id, ts, signed_body).unwrap();
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
#[ignore = "needs the Python venv: run scripts/interop"]
async fn python_receivers_libraries_verify_every_format_and_reject_tampering() {
    let python = interop_python();
    let env = Env::new().await;
    let keys = key_file(&env);
    let sinks = sinks(&keys);

    // What the receiver verifies with, per sink: each secret on its own, the public key.
    let mut rx_config = serde_json::Map::new();
    for (name, format, extra) in &sinks {
        let secrets: Vec<&str> = match *name {
            "rotation" => vec![SECRET, OLD_SECRET],
            _ if extra.contains("secret_env") => vec![SECRET],
            _ => vec![],
        };
        let public_key = extra.contains("signing_key_file").then_some(ED_PUB);
        rx_config.insert(
            name.to_string(),
            json!({"format": format, "secrets": secrets, "public_key": public_key}),
        );
    }
    rx_config.insert(
        "attack".into(),
        json!({"format": "standard", "secrets": [SECRET], "public_key": ED_PUB}),
    );
    let rx_config_path = env.dir.path().join("receiver.json");
    std::fs::write(&rx_config_path, Value::Object(rx_config).to_string()).unwrap();
    let mut cmd = Command::new(&python);
    cmd.arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/receiver.py"
    ))
    .arg(&rx_config_path);
    let mut py = Py::spawn(cmd);
    let base = format!("http://127.0.0.1:{}", py.port("listening").await);

    let toml: String = sinks
        .iter()
        .map(|(name, _, extra)| sink_toml(name, &format!("{base}/hook/{name}"), extra))
        .collect();
    let d = scenario(&env, &toml).await;

    // Every sink gets every event; any failed check fails the test at once.
    let deadline = Instant::now() + T;
    let got = loop {
        let got = results(&base).await;
        if let Some(bad) = got.iter().find(|r| r["ok"] != true) {
            panic!(
                "a receiver library rejected a request:\n{bad:#}\ndaemon log:\n{}",
                d.log_text()
            );
        }
        let ids = |sink: &str| -> BTreeSet<String> {
            got.iter()
                .filter(|r| r["sink"] == sink)
                .map(|r| r["headers"]["webhook-id"].as_str().unwrap().to_string())
                .collect()
        };
        if sinks.iter().all(|(name, _, _)| ids(name).len() >= EVENTS) {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "not every sink got {EVENTS} events: {got:#?}\n{}",
            py.stderr().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // waiting for every sink's events
    };
    let events = stored_events(&env).await;
    for r in &got {
        let sink = r["sink"].as_str().unwrap();
        let id = r["headers"]["webhook-id"].as_str().unwrap();
        let e = &events[id];
        let checks: BTreeSet<&str> = r["checks"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let want: &[&str] = match sink {
            "rotation" => &[
                "standardwebhooks[0]",
                "standardwebhooks[1]",
                "svix[0]",
                "svix[1]",
            ],
            "cloudevents" | "binary" => &["standardwebhooks[0]", "svix[0]", "cloudevents"],
            "ed25519" => &["standardwebhooks[0]", "svix[0]", "v1a", "cloudevents"],
            "ed25519-only" => &["v1a"],
            _ => &["standardwebhooks[0]", "svix[0]"],
        };
        assert_eq!(checks, want.iter().copied().collect(), "{sink}: {r:#}");
        if let Some(ce) = r["cloudevent"].as_object() {
            let attrs = &ce["attributes"];
            for (k, want) in expected_ce(e) {
                let got = attrs[k].as_str().unwrap_or_default();
                if k == "time" {
                    assert!(same_instant(got, &want), "{sink}: {k}: {got} != {want}");
                } else {
                    assert_eq!(got, want, "{sink}: {k}");
                }
            }
            assert_eq!(ce["data"], standard_body(e)["data"], "{sink}");
        }
        let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
        match sink {
            "standard" | "rotation" => assert_eq!(r["body"], e.body.as_str()),
            "template" | "ed25519-only" => assert_eq!(body, expected_template(e)),
            _ => {}
        }
    }
    drop(d);

    // Forgeries, signed by loopwatch's own code, sent to a sink verifying v1 and v1a.
    let e = events.values().next().unwrap();
    let attack = format!("{base}/hook/attack");
    let ed = Ed25519Key::parse(ED_KEY).unwrap();
    let now = chrono::Utc::now().timestamp();
    let body = e.body.as_bytes();
    let tampered = e.body.replacen("COMPLETE", "SYNCING", 1);
    assert_ne!(tampered.as_bytes(), body);
    assert_eq!(
        send_signed(&attack, &e.id, now, body, body, Some(&ed)).await,
        204,
        "the control request must verify: {:#}",
        results(&base).await.last().unwrap()
    );
    let cases = [
        (
            "tampered body",
            now,
            tampered.as_bytes(),
            "No matching signature",
        ),
        ("stale timestamp", now - 360, body, "too old"),
        ("timestamp from the future", now + 360, body, "too new"),
    ];
    for (what, ts, sent, reason) in cases {
        let status = send_signed(&attack, &e.id, ts, body, sent, Some(&ed)).await;
        let r = results(&base).await.pop().unwrap();
        assert_eq!(status, 401, "{what} was accepted: {r:#}");
        for lib in ["standardwebhooks[0]", "svix[0]", "v1a"] {
            let outcome = r["checks"][lib].as_str().unwrap();
            assert!(outcome.starts_with("error"), "{what}: {lib} accepted it");
            if lib != "v1a" {
                assert!(outcome.contains(reason), "{what}: {lib}: {outcome}");
            }
        }
    }
}

#[tokio::test]
#[ignore = "needs the Python venv: run scripts/interop"]
async fn the_reference_receiver_verifies_deduplicates_and_prints_one_line_per_event() {
    let python = interop_python();
    let env = Env::new().await;
    let mut cmd = Command::new(&python);
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/receiver.py"))
        .args(["--port", "0"])
        .env("WEBHOOK_SECRET", SECRET);
    let mut py = Py::spawn(cmd);
    let url = format!(
        "http://127.0.0.1:{}/hooks/loops",
        py.port("listening on").await
    );
    let toml = sink_toml(
        "reference",
        &url,
        "secret_env = \"HOOK_SECRET\"\nformat = \"cloudevents\"",
    ) + &sink_toml("reference-std", &url, "secret_env = \"HOOK_SECRET\"");
    let d = scenario(&env, &toml).await;
    // Two sinks send the same events under the same ids: one line per event.
    let done = until(T, Duration::from_millis(20), async || {
        py.stdout().len() >= EVENTS && py.stderr().iter().any(|l| l.contains("duplicate"))
    })
    .await;
    assert!(
        done,
        "no line per event and duplicate; stdout: {:#?}\nstderr: {:#?}\ndaemon log: {}",
        py.stdout(),
        py.stderr(),
        d.log_text()
    );
    let events = stored_events(&env).await;
    let lines = py.stdout();
    assert_eq!(lines.len(), EVENTS, "{lines:#?}");
    for e in events.values() {
        let line = lines
            .iter()
            .find(|l| l.starts_with(&e.id))
            .unwrap_or_else(|| panic!("no line for {}: {lines:#?}", e.id));
        assert!(
            line.contains(&e.kind) && line.contains(&e.uri().expect("a known checkpoint target")),
            "{line}"
        );
    }
    drop(d);

    let e = events.values().next().unwrap();
    let now = chrono::Utc::now().timestamp();
    let body = e.body.as_bytes();
    assert_eq!(send_signed(&url, &e.id, now, body, body, None).await, 204);
    let tampered = e.body.replacen("COMPLETE", "SYNCING", 1);
    let status = send_signed(&url, &e.id, now, body, tampered.as_bytes(), None).await;
    assert_eq!(status, 401);
    assert_eq!(
        send_signed(&url, &e.id, now - 360, body, body, None).await,
        401
    );
    assert_eq!(py.stdout().len(), EVENTS, "a redelivery printed a line");
}

// ------------------------------------- the simulated Loops API against Baseten's models

/// What the simulated API answers on every route, and the bodies loopwatch's client sends
/// to `validate` and `deploy`, validated by the pydantic models of the `baseten` package
/// (tests/interop/sdk_models.py). `scripts/interop` also checks the bodies every other
/// test of its run recorded (`LOOPWATCH_SIM_LOG`).
#[tokio::test]
#[ignore = "needs the Python venv: run scripts/interop"]
async fn the_simulated_api_and_loopwatchs_requests_match_baseten_models() {
    use loopwatch::api::{Client, Source};
    use loopwatch::model::DeployRequest;
    let python = interop_python();
    let sim = loopwatch::sim::SimApi::start(Some("k".into()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sim.jsonl");
    let h = sim.handle();
    h.log_to(Some(log.clone()));
    let toml = format!(
        "[api]\nbase_url = \"{}\"\napi_key_env = \"K\"\nmax_requests_per_second = 1000\n\
         [[targets]]\nname = \"t\"\nrun_id = \"r\"\n",
        sim.base_url()
    );
    let env = loopwatch::config::Environment::from_pairs([("K", "k")]);
    let cfg =
        loopwatch::config::load_str(&toml, loopwatch::config::FileFormat::Toml, "t", &env).unwrap();
    let client = Client::new(&cfg.api).unwrap();

    let sampler = h.add_checkpoint("r", "sampler", "step-100", Some("COMPLETE"));
    h.add_checkpoint("r", "trainer", "step-100", Some("SYNCING"));
    h.add_checkpoint("r", "sampler", "step-200", None);
    h.add_checkpoint("r", "draft", "step-200", None);
    assert_eq!(client.list(&cfg.targets[0].filter).await.unwrap().len(), 4);
    assert_eq!(client.source(&sampler).await.unwrap(), Source::S3);
    let names: Vec<String> = (0..5).map(|i| format!("shard-{i}.safetensors")).collect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1000)).collect();
    h.set_files(&sampler, &files);
    let mut token = 0;
    loop {
        let page = client.files_page(&sampler, 2, token).await.unwrap();
        match page.next_page_token {
            Some(next) => token = next,
            None => break,
        }
    }
    let uri = "bt://loops:r/sampler_weights/step-100";
    client.validate(uri, None).await.unwrap();
    client.validate(uri, Some("r")).await.unwrap();
    let deployed = client
        .deploy(&DeployRequest {
            checkpoint_ids: vec![sampler.clone()],
            model_name: "qwen-sft".into(),
            instance_type_id: "H100".into(),
            hf_secret_name: "hf_access_token".into(),
        })
        .await
        .unwrap();
    assert_eq!(h.deploys()[0].deployment_id, deployed.deployment_id);
    h.set_volume(&sampler, "bdn:team/loops:v1", "r/step-100");
    assert!(matches!(
        client.source(&sampler).await.unwrap(),
        Source::Volume { .. }
    ));
    assert!(
        client
            .files_page(&sampler, 1000, 0)
            .await
            .unwrap_err()
            .is_not_presignable()
    );

    let out = Command::new(&python)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sdk_models.py"))
        .arg(&log)
        .args(["--require", "list,source,files,validate,deploy"])
        .args(["--require-requests", "validate,deploy"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0 failures"), "{text}");
}
