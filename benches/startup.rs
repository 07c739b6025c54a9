//! startup: the real `loopwatch` binary with N targets x M checkpoints already tracked.
//!
//! Start to ready = from spawning `loopwatch run` to the first `200` of `/readyz`, i.e.
//! config parsed and validated, store opened and migrated, every target's state loaded,
//! the server bound, and every target polled once successfully (fetch, decode, diff against
//! the loaded state). The state is recorded beforehand by `loopwatch once` (whose time is
//! reported as the baseline). Peak RSS is the daemon's `VmHWM` after it has polled the
//! whole fleet several more times. The simulated API runs in this process.
//!
//! `cargo bench --bench startup [-- --quick]`

#[path = "support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use loopwatch::sim::SimApi;
use support::{API_KEY, Opts, median, n, run_id};

fn main() {
    let Some(o) = support::opts() else { return };
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
}

fn write_config(dir: &std::path::Path, api: &str, targets: usize, interval: &str) -> String {
    let mut text = format!(
        r#"[api]
base_url = "{api}"
api_key_env = "BENCH_API_KEY"
max_requests_per_second = 100000
[poll]
interval = "{interval}"
concurrency = 16
[store]
url = "sqlite://{db}"
[server]
listen = "127.0.0.1:0"
[log]
level = "info"
"#,
        db = dir.join("state.db").display()
    );
    for i in 0..targets {
        let r = run_id(i);
        text.push_str(&format!("[[targets]]\nname = \"{r}\"\nrun_id = \"{r}\"\n"));
    }
    let path = dir.join("loopwatch.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn loopwatch(config: &str, args: &[&str], log: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loopwatch"));
    c.args(args)
        .args(["-c", config])
        .env("BENCH_API_KEY", API_KEY)
        .env_remove("RUST_LOG")
        .env_remove("LOOPWATCH_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()));
    c
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The address the daemon logged as bound.
fn bound_addr(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().find(|l| l.contains("serving /metrics"))?;
    let i = line.find("addr=")? + 5;
    Some(line[i..].split_whitespace().next()?.to_string())
}

struct Start {
    bound: f64,
    ready: f64,
    rss_ready: f64,
    rss_peak: f64,
    polls_per_s: f64,
}

async fn start_once(config: &str, dir: &std::path::Path, steady: Duration, sim: &SimApi) -> Start {
    let log = dir.join("run.log");
    let http = reqwest::Client::new();
    let t0 = Instant::now();
    let daemon = Daemon(loopwatch(config, &["run"], &log).spawn().unwrap());
    let pid = daemon.0.id();
    let mut addr = None;
    let mut bound = 0.0;
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "not ready in 300 s"
        );
        if addr.is_none() {
            addr = bound_addr(&log);
            if addr.is_some() {
                bound = t0.elapsed().as_secs_f64();
            }
        }
        if let Some(a) = &addr
            && let Ok(r) = http.get(format!("http://{a}/readyz")).send().await
            && r.status() == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ready = t0.elapsed().as_secs_f64();
    let rss_ready = support::status_mib(Some(pid), "VmRSS");
    let r0 = sim.handle().requests();
    tokio::time::sleep(steady).await;
    let polls_per_s = (sim.handle().requests() - r0) as f64 / steady.as_secs_f64();
    let rss_peak = support::status_mib(Some(pid), "VmHWM");
    Start {
        bound,
        ready,
        rss_ready,
        rss_peak,
        polls_per_s,
    }
}

async fn bench(o: Opts) {
    let (targets, per) = if o.quick { (1_000, 50) } else { (10_000, 50) };
    let (targets, per) = (
        o.value("--targets").unwrap_or(targets),
        o.value("--per").unwrap_or(per),
    );
    support::header(
        "startup",
        &format!(
            "the real binary, {} targets x {per} checkpoints = {} tracked; 16 polls in flight",
            n(targets as f64),
            n((targets * per) as f64)
        ),
        &o,
    );
    let sim = SimApi::start(Some(API_KEY.into())).await.unwrap();
    let h = sim.handle();
    for i in 0..targets {
        h.add_many(&run_id(i), per, Some("COMPLETE"));
    }
    let dir = tempfile::tempdir().unwrap();
    // A short interval, so the steady-state RSS covers several full polls of the fleet.
    let config = write_config(dir.path(), &sim.base_url(), targets, "5s");

    let t0 = Instant::now();
    let out = loopwatch(&config, &["once"], &dir.path().join("once.log"))
        .status()
        .unwrap();
    assert!(out.success(), "loopwatch once failed");
    let baseline = t0.elapsed().as_secs_f64();

    let steady = Duration::from_secs(if o.quick { 6 } else { 15 });
    let mut runs = Vec::new();
    for i in 0..o.runs {
        eprintln!("startup: run {}/{} ...", i + 1, o.runs);
        runs.push(start_once(&config, dir.path(), steady, &sim).await);
    }
    let med = |f: fn(&Start) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let db_mib =
        std::fs::metadata(dir.path().join("state.db")).map_or(0, |m| m.len()) as f64 / 1048576.0;
    support::table(
        &["figure", "value"],
        &[
            vec![
                "start to ready (s): spawn -> /readyz 200".into(),
                format!("{:.2}", med(|s| s.ready)),
            ],
            vec![
                "  of which spawn -> server bound (s)".into(),
                format!("{:.2}", med(|s| s.bound)),
            ],
            vec![
                "RSS when ready (MiB)".into(),
                format!("{:.0}", med(|s| s.rss_ready)),
            ],
            vec![
                format!("peak RSS after {} s of polling (MiB)", steady.as_secs()),
                format!("{:.0}", med(|s| s.rss_peak)),
            ],
            vec![
                "steady polls/s (interval 5s)".into(),
                n(med(|s| s.polls_per_s)),
            ],
            vec![
                "`loopwatch once` baseline of every target (s)".into(),
                format!("{baseline:.2}"),
            ],
            vec!["database size (MiB)".into(), format!("{db_mib:.0}")],
        ],
    );
}
