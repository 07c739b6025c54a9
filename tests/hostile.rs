//! Hostile peers and text, end to end through the real binary: receivers that answer an
//! error with a body that never ends, drip it, or never finish it, and checkpoint fields
//! made to break terminals, logs and tables.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Env, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(60);

/// How a hostile receiver answers every request.
#[derive(Clone, Copy)]
enum Hostile {
    /// 500 announcing 2 GiB, streamed as fast as the socket takes it.
    Huge,
    /// 500, then a byte a second.
    Drip,
    /// 500 headers, then nothing, and the connection never closes.
    Silent,
}

/// A raw TCP receiver; returns its URL and the count of body bytes it wrote.
async fn hostile_receiver(how: Hostile) -> (String, Arc<AtomicU64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let total = written.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let total = total.clone();
            tokio::spawn(async move {
                // The request: headers and a body of content-length bytes.
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if req.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let head = match how {
                    Hostile::Huge => {
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 2147483648\r\n\r\n"
                    }
                    Hostile::Drip => {
                        "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 100000\r\n\r\n"
                    }
                    Hostile::Silent => {
                        "HTTP/1.1 500 Internal Server Error\r\ntransfer-encoding: chunked\r\n\r\n"
                    }
                };
                if s.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                loop {
                    let piece: &[u8] = match how {
                        Hostile::Huge => &chunk,
                        Hostile::Drip => b"d",
                        Hostile::Silent => {
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                    };
                    if s.write_all(piece).await.is_err() {
                        return;
                    }
                    total.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    if let Hostile::Drip = how {
                        tokio::time::sleep(Duration::from_secs(1)).await; // dripping: under test
                    }
                }
            });
        }
    });
    (url, written)
}

/// `VmHWM` (peak resident set) and `VmRSS` of a process, in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn deliveries(env: &Env, cfg: &std::path::Path) -> Vec<serde_json::Value> {
    let out = env
        .cmd(cfg, &["deliveries", "list", "-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// A receiver answering 500 with a 2 GiB body drove the daemon to 1.2-1.8 GB RSS per
/// attempt (the error body was read whole for 2 s); one dripping it or never ending it
/// must not hold an attempt either. Each attempt now reads a few KiB for at most 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_receivers_cost_bounded_memory_and_time_per_attempt() {
    let env = Env::new().await;
    let (huge, huge_written) = hostile_receiver(Hostile::Huge).await;
    let (drip, _) = hostile_receiver(Hostile::Drip).await;
    let (silent, _) = hostile_receiver(Hostile::Silent).await;
    let h = env.sim.handle();
    let ids: Vec<String> = (0..3)
        .map(|i| h.add_checkpoint("run-1", "sampler", &format!("step-{i}"), Some("SYNCING")))
        .collect();
    let sink = |name: &str, url: &str| {
        format!(
            "[[sinks]]\nname = \"{name}\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\nevents = [\"checkpoint.completed\"]\ntimeout = \"5s\"\nretry_schedule = [\"1h\"]\nconcurrency = 4\n"
        )
    };
    let cfg = env.write_config(&format!(
        "[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n{}{}{}",
        sink("huge", &huge),
        sink("drip", &drip),
        sink("silent", &silent)
    ));
    let d = env.spawn_daemon(&cfg);
    d.ready().await;
    let (before, _) = rss_kib(d.pid());
    let start = Instant::now();
    for id in &ids {
        h.set_status(id, Some("COMPLETE"));
    }
    // Three deliveries to each receiver at once: every attempt ends, failed with the status it got, within the sink's timeout and the 2 s cap.
    let mut peak = 0;
    let rows = wait_for("every attempt to end", T, || {
        peak = peak.max(rss_kib(d.pid()).0);
        let rows = deliveries(&env, &cfg);
        let done = rows.len() == 9
            && rows
                .iter()
                .all(|r| r["attempts"] == 1 && r["status"] == "pending");
        done.then_some(rows)
    })
    .await;
    let took = start.elapsed();
    let (hwm, rss) = rss_kib(d.pid());
    peak = peak.max(hwm);
    eprintln!(
        "daemon RSS: {before} KiB before, peak {peak} KiB, {rss} KiB after; huge receiver wrote {} bytes; all attempts ended in {took:?}",
        huge_written.load(Ordering::Relaxed)
    );
    for r in &rows {
        assert_eq!(r["last_status"], 500, "{r}");
        let err = r["last_error"].as_str().unwrap_or_default();
        assert!(err.starts_with("HTTP 500"), "{r}");
        assert!(err.len() < 300, "the error keeps a short snippet: {err}");
    }
    assert!(
        rows.iter()
            .any(|r| r["sink"] == "huge" && r["last_error"].as_str().unwrap().contains("xxxx")),
        "{rows:?}"
    );
    // Loose bounds: a regression costs gigabytes and the receiver's whole body.
    assert!(
        peak < before + 200 * 1024,
        "peak RSS {peak} KiB (from {before} KiB)"
    );
    assert!(
        huge_written.load(Ordering::Relaxed) < 512 << 20,
        "the daemon kept reading a hostile body"
    );
    assert!(
        took < Duration::from_secs(40),
        "attempts ended only after {took:?}"
    );
}

/// What a forged checkpoint name holds: a newline that starts a fake log line, an ANSI
/// sequence that clears the screen, BEL and NUL.
const FORGED: &str =
    "step-1\n2026-12-02T00:00:00.000000Z ERROR loopwatch: forged line\x1b[2J\x1b[31m\x07\0";

fn assert_printable(what: &str, text: &str) {
    assert!(
        !text.contains(['\x1b', '\x07', '\0', '\u{9b}']),
        "{what}: raw control characters in {:?}",
        &text[..text.len().min(2000)]
    );
    assert!(
        !text.lines().any(|l| l.contains("ERROR loopwatch: forged")
            && l.starts_with("2026-12-02T00:00:00.000000Z")),
        "{what}: a forged line"
    );
}

/// Checkpoint fields reach the text log and the tables of `checkpoints`, `state` and
/// `deliveries list` escaped, and a field of 1 MB is cut in a table instead of panicking
/// (`Formatting argument out of range`, exit 101, from 65,536 characters on; and since
/// the row stays stored, `state` stayed broken).
#[tokio::test]
async fn hostile_checkpoint_fields_are_escaped_in_logs_and_tables_and_never_panic() {
    let env = Env::new().await;
    let rx = common::Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let forged = h.add_checkpoint("run-1", "sampler", FORGED, Some("COMPLETE"));
    h.set_field(
        &forged,
        "checkpoint_type",
        serde_json::json!("lora\x1b]0;pwned\x07"),
    );
    let huge_name = "n".repeat(1 << 20);
    h.add_checkpoint("run-1", "sampler", &huge_name, Some("COMPLETE"));
    let cfg = env.write_config(&format!(
        "[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n[[sinks]]\nname = \"hook\"\nurl = \"{}\"\nsecret_env = \"HOOK_SECRET\"\nevents = [\"checkpoint.completed\"]\n",
        rx.url
    ));
    // Both checkpoints are already complete: emit them on first sight.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[poll]\n", "[poll]\nemit_existing = true\n", 1),
    )
    .unwrap();

    // The text log of a poll that emits both events (log.level = debug).
    let out = env.run(&cfg, &["once"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        &log[..log.len().min(3000)]
    );
    assert_printable("the text log", &log);
    assert!(
        log.contains(r"step-1\n2026-12-02T00:00:00.000000Z ERROR"),
        "the name is in the log, escaped"
    );
    // (The 1 MB one is over the test receiver's body limit: 413, pending.)
    assert!(rx.count() >= 1, "the events were sent");

    for args in [
        &["checkpoints", "--run-id", "run-1"][..],
        &["state"],
        &["deliveries", "list"],
    ] {
        let out = env.run(&cfg, args).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_printable(&format!("{args:?}"), &stdout);
        assert!(stdout.contains('…'), "{args:?}: the 1 MB name is cut");
        assert!(
            stdout.lines().all(|l| l.chars().count() < 4096),
            "{args:?}: a line is not bounded"
        );
        assert!(stdout.contains(r"step-1\n2026"), "{args:?}: {stdout}");
        // JSON keeps every byte, escaped by JSON itself.
        let mut json_args = args.to_vec();
        json_args.extend(["-o", "json"]);
        let out = env.run(&cfg, &json_args).await;
        assert_eq!(out.status.code(), Some(0), "{json_args:?}");
        let json = String::from_utf8_lossy(&out.stdout);
        assert_printable(&format!("{json_args:?}"), &json);
        assert!(
            json.contains(&huge_name),
            "{json_args:?}: JSON keeps the whole name"
        );
    }
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Each unsafe setting gets a warning line from `check-config` (which still exits 0: they
/// are warnings, not errors) and a WARN at start; passwords in URLs are never printed.
#[tokio::test]
async fn unsafe_settings_are_warned_about_and_url_passwords_redacted() {
    let env = Env::new().await;
    let dir = env.dir.path();
    let secret_file = dir.join("hook.secret");
    std::fs::write(&secret_file, format!("{}\n", common::SECRET)).unwrap();
    chmod(&secret_file, 0o644);
    let cfg = dir.join("unsafe.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[api]
base_url = "http://api.example.com/?token=apipw-7c1e"
[store]
url = "postgres://lw:pgpw-3f9a@db.example.com/loopwatch"
[server]
listen = "0.0.0.0:9464"
[[targets]]
name = "qwen"
run_id = "run-1"
[[sinks]]
name = "signed"
url = "http://hooks.example.com/signed"
secret_env = "HOOK_SECRET"
[[sinks]]
name = "with-headers"
url = "http://hooks.example.com/h?token=querypw-51d"
headers = {{ Authorization = "Bearer x" }}
[[sinks]]
name = "plain-unsigned"
url = "http://hooks.example.com/open"
[[sinks]]
name = "local-signed"
url = "http://127.0.0.1:9/hook"
secret_env = "HOOK_SECRET"
[[sinks]]
name = "from-file"
url = "https://hooks.example.com/tls"
secret_file = "{}"
"#,
            secret_file.display()
        ),
    )
    .unwrap();
    chmod(&cfg, 0o666);
    let out = env.run(&cfg, &["check-config"]).await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let warning = |key: &str, says: &str| {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with("warning: ") && l.contains(key) && l.contains(says)),
            "no warning for {key} saying {says:?} in:\n{stderr}"
        );
    };
    warning("api.base_url", "the API key goes out in cleartext");
    warning("api.base_url", "api.example.com");
    warning("server.listen", "0.0.0.0:9464 is not a loopback address");
    warning("sinks[0].url", "with a signature");
    warning("sinks[1].url", "with its headers");
    warning("sinks[4].secret_file", "readable by others (mode 0644)");
    warning("unsafe.toml", "writable by group and others (mode 0666)");
    for quiet in ["sinks[2]", "sinks[3]"] {
        assert!(!stderr.contains(quiet), "{quiet}: {stderr}");
    }
    assert_eq!(stderr.lines().count(), 6, "{stderr}");
    for pw in ["apipw-7c1e", "pgpw-3f9a", "querypw-51d"] {
        assert!(
            !stdout.contains(pw) && !stderr.contains(pw),
            "{pw} printed:\n{stdout}{stderr}"
        );
    }
    assert!(
        stdout.contains("postgres://lw:redacted@db.example.com/loopwatch"),
        "{stdout}"
    );

    // A safe config says nothing; a safe one made unsafe is warned about by `once` too,
    // at WARN, before it polls.
    let safe = env.write_config("[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n");
    chmod(&safe, 0o600);
    let out = env.run(&safe, &["check-config"]).await;
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let text = std::fs::read_to_string(&safe)
        .unwrap()
        .replace("127.0.0.1:0", "0.0.0.0:0");
    std::fs::write(&safe, text).unwrap();
    chmod(&safe, 0o664);
    let out = env.run(&safe, &["once"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let warns = unsafe_setting_warnings(&log);
    assert_eq!(warns.len(), 2, "{log}");
    assert!(
        warns[0].contains("writable by its group (mode 0664)"),
        "{log}"
    );
    assert!(warns[1].contains("server.listen"), "{log}");
}

/// `checkpoints` loads the config its own way (targets optional) and warned about
/// nothing: it names a config file others may write and a key file others may read at
/// WARN on stderr, as `run` and `once` do, and still lists.
#[tokio::test]
async fn checkpoints_warns_about_an_unsafe_config_file_and_key_file() {
    let env = Env::new().await;
    let key = env.dir.path().join("api.key");
    std::fs::write(&key, common::API_KEY).unwrap();
    chmod(&key, 0o644);
    let cfg = env.write_config("");
    common::edit(&cfg, |t| {
        t.replacen(
            "[api]\n",
            &format!("[api]\napi_key_file = \"{}\"\n", key.display()),
            1,
        )
    });
    chmod(&cfg, 0o666);
    let out = env.run(&cfg, &["checkpoints", "--run-id", "run-1"]).await;
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let warns = unsafe_setting_warnings(&log);
    assert_eq!(warns.len(), 2, "{log}");
    assert!(
        warns[0].contains("writable by group and others (mode 0666)"),
        "{log}"
    );
    assert!(
        warns[1].contains("api.api_key_file")
            && warns[1].contains("readable by others (mode 0644)"),
        "{log}"
    );
}

/// The state file, its `-wal` and `-shm` files and its lock file are owner-only (0600)
/// whatever the umask: they hold checkpoint names, payloads and receivers' error bodies,
/// and were created 0644.
#[tokio::test]
async fn state_files_are_created_owner_only_whatever_the_umask() {
    let env = Env::new().await;
    let cfg = env.write_config("[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n");
    for (f, mode) in state_file_modes(&env, &cfg, "000").await {
        assert_eq!(mode, 0o600, "{f} is {mode:04o}");
    }
}

/// With `store.group_readable` the same files are 0640, whatever the umask (077 would
/// have made them 0600): the group may read the state, nobody else.
#[tokio::test]
async fn state_files_are_created_group_readable_when_configured() {
    let env = Env::new().await;
    let cfg = env.write_config("[[targets]]\nname = \"qwen\"\nrun_id = \"run-1\"\n");
    common::set_store_url(
        &cfg,
        &format!("sqlite://{}", env.db().display()),
        "\ngroup_readable = true",
    );
    for (f, mode) in state_file_modes(&env, &cfg, "077").await {
        assert_eq!(mode, 0o640, "{f} is {mode:04o}");
    }
}

/// Start the daemon under `umask`, wait for the state file, its `-wal`, `-shm` and
/// `.lock` files, stop it, and return each file with its mode.
async fn state_file_modes(env: &Env, cfg: &std::path::Path, umask: &str) -> Vec<(String, u32)> {
    let log = std::fs::File::create(env.dir.path().join("umask.log")).unwrap();
    let mut child = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("umask {umask} && exec \"$@\""),
            "sh",
            common::bin(),
            "run",
            "-c",
        ])
        .arg(cfg)
        .env("BASETEN_API_KEY", common::API_KEY)
        .env_remove("RUST_LOG")
        .env_remove("LOOPWATCH_CONFIG")
        .stderr(log)
        .spawn()
        .unwrap();
    let db = env.db();
    let files: Vec<std::path::PathBuf> = ["", "-wal", "-shm", ".lock"]
        .iter()
        .map(|suffix| {
            let mut p = db.clone().into_os_string();
            p.push(suffix);
            p.into()
        })
        .collect();
    wait_for("the state files", Duration::from_secs(30), || {
        files.iter().all(|f| f.exists()).then_some(())
    })
    .await;
    let modes = files
        .iter()
        .map(|f| (f.display().to_string(), mode_of(f)))
        .collect();
    let _ = child.kill();
    let _ = child.wait();
    modes
}

/// The WARN lines of `log` that name an unsafe setting.
fn unsafe_setting_warnings(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") && l.contains("unsafe setting"))
        .collect()
}
