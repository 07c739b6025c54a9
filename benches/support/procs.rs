//! Separate processes for the macro benchmarks: the simulated API in a child process of
//! the bench (`--child serve-sim N M STATUS`, told what to do on its stdin), the real
//! `loopwatch` binary as replicas (`loopwatch run -c CONFIG`, one process each), and what
//! the `--replicas N` modes of `fleet` and `burst` read about them: readiness and owned
//! targets, CPU seconds per process (PostgreSQL's whole process tree included), and what
//! the database wrote (transaction ids, WAL bytes, rows by `xmin`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use loopwatch::sim::SimApi;
use rustix::process::{Pid, Signal, kill_process};

use super::{API_KEY, Opts, SECRET, run_id};

/// The simulated API in a child process: `n` runs of `m` checkpoints each, every one with
/// `sync_status` `status`. The child answers `requests` (its count of listing requests)
/// and `status S` (every checkpoint set to `S` at once) on its stdin, and stops when its
/// stdin closes.
pub struct SimChild {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    pub url: String,
}

impl SimChild {
    pub fn start(n: usize, m: usize, status: &str) -> SimChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--child",
                "serve-sim",
                &n.to_string(),
                &m.to_string(),
                status,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        SimChild {
            child,
            stdin,
            stdout,
            url: line.trim().to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn ask(&mut self, command: &str) -> String {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim().to_string()
    }

    /// Requests to the checkpoints endpoint so far (every poll of an unchanged target is one).
    pub fn requests(&mut self) -> u64 {
        self.ask("requests").parse().unwrap()
    }

    /// Every checkpoint's `sync_status` set to `status` in one step.
    pub fn set_all(&mut self, status: &str) {
        assert_eq!(self.ask(&format!("status {status}")), "ok");
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// In a bench's `main`: when this process is a [`SimChild`] (serve until the parent
/// closes stdin) or a [`FloorClients`] process, do that and return true.
pub fn child(o: &Opts) -> bool {
    if o.rest.first().map(String::as_str) == Some("get-floor") {
        get_floor_child(&o.rest[1..]);
        return true;
    }
    if o.rest.first().map(String::as_str) != Some("serve-sim") {
        return false;
    }
    let n: usize = o.rest[1].parse().unwrap();
    let m: usize = o.rest[2].parse().unwrap();
    let status = o.rest.get(3).cloned().unwrap_or_else(|| "COMPLETE".into());
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(serve_sim(n, m, status));
    true
}

async fn serve_sim(n: usize, m: usize, status: String) {
    let sim = SimApi::start(Some(API_KEY.into())).await.unwrap();
    let h = sim.handle();
    let mut ids = Vec::with_capacity(n * m);
    for i in 0..n {
        ids.extend(h.add_many(&run_id(i), m, Some(&status)));
    }
    println!("{}", sim.base_url());
    std::io::stdout().flush().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut out = std::io::stdout();
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "requests" => writeln!(out, "{}", h.requests()).unwrap(),
                cmd if cmd.starts_with("status ") => {
                    h.set_status_many(&ids, Some(&cmd["status ".len()..]));
                    writeln!(out, "ok").unwrap();
                }
                other => panic!("serve-sim: unknown command {other:?}"),
            }
            out.flush().unwrap();
        }
    })
    .await
    .ok();
    sim.shutdown().await;
}

/// The GET floor as separate processes (as many as the replicas it stands beside): each
/// a bare client sending the listing requests of the targets, round robin from its own
/// starting point, `in_flight` at once, body read and discarded, for a window.
pub struct FloorClients {
    children: Vec<(Child, ChildStdin, BufReader<ChildStdout>)>,
}

impl FloorClients {
    /// Start `processes` clients and wait until each is ready (runtime and client built).
    pub fn start(api: &str, targets: usize, in_flight: usize, processes: usize) -> FloorClients {
        let mut children = Vec::new();
        for i in 0..processes {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args(["--child", "get-floor", api])
                .args([targets, in_flight, i * targets / processes].map(|v| v.to_string()))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdin = child.stdin.take().unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ready");
            children.push((child, stdin, stdout));
        }
        FloorClients { children }
    }

    /// Run every client for `window`, all at once; the CPU seconds they used in it.
    pub fn run(&mut self, window: Duration) -> f64 {
        for (_, stdin, _) in &mut self.children {
            writeln!(stdin, "{}", window.as_millis()).unwrap();
            stdin.flush().unwrap();
        }
        let mut cpu = 0.0;
        for (_, _, stdout) in &mut self.children {
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            cpu += line.trim().parse::<f64>().unwrap();
        }
        cpu
    }
}

impl Drop for FloorClients {
    fn drop(&mut self) {
        for (mut child, stdin, _) in self.children.drain(..) {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// `--child get-floor API TARGETS IN_FLIGHT START`: a [`FloorClients`] process. Says
/// "ready", then for each window (milliseconds) read on stdin sends GETs for that long
/// and answers the CPU seconds it used.
fn get_floor_child(args: &[String]) {
    let api = args[0].clone();
    let targets: usize = args[1].parse().unwrap();
    let in_flight: usize = args[2].parse().unwrap();
    let start: usize = args[3].parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("loopwatch-bench")
        .build()
        .unwrap();
    let endpoint = std::sync::Arc::new(format!("{api}{}", loopwatch::sim::CHECKPOINTS_PATH));
    let auth = std::sync::Arc::new(format!("Bearer {API_KEY}"));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(start));
    println!("ready");
    std::io::stdout().flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let Ok(ms) = line.unwrap_or_default().trim().parse::<u64>() else {
            break;
        };
        let c0 = super::cpu_seconds(None);
        let deadline = Instant::now() + Duration::from_millis(ms);
        // Each request loop a task of its own, on every worker thread, as the daemon's
        // per-target loops are.
        rt.block_on(async {
            let loops: Vec<_> = (0..in_flight)
                .map(|_| {
                    let (http, endpoint, auth, next) =
                        (http.clone(), endpoint.clone(), auth.clone(), next.clone());
                    tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let i =
                                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % targets;
                            let mut r = http
                                .get(format!("{endpoint}?run_id={}", run_id(i)))
                                .header("authorization", auth.as_str())
                                .send()
                                .await
                                .expect("GET");
                            assert!(r.status().is_success());
                            while let Some(chunk) = r.chunk().await.expect("body") {
                                std::hint::black_box(chunk);
                            }
                        }
                    })
                })
                .collect();
            for l in loops {
                l.await.unwrap();
            }
        });
        println!("{}", super::cpu_seconds(None) - c0);
        std::io::stdout().flush().unwrap();
    }
}

/// A config file for replicas: `targets` run-id targets against `api`, state in
/// `store_url`, with `[poll]` and `[store]` extras and `sinks` (`[[sinks]]` TOML).
/// `server.listen` is port 0: each replica binds its own port and logs it.
pub fn write_config(
    dir: &Path,
    api: &str,
    store_url: &str,
    poll: &str,
    store: &str,
    targets: usize,
    sinks: &str,
) -> PathBuf {
    let mut text = format!(
        r#"[api]
base_url = "{api}"
api_key_env = "BENCH_API_KEY"
timeout = "30s"
max_requests_per_second = 1000000
[poll]
{poll}
[store]
url = "{store_url}"
{store}
[server]
listen = "127.0.0.1:0"
[log]
level = "info"
{sinks}
"#
    );
    for i in 0..targets {
        let r = run_id(i);
        text.push_str(&format!("[[targets]]\nname = \"{r}\"\nrun_id = \"{r}\"\n"));
    }
    let path = dir.join("loopwatch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One `loopwatch run` process (the release binary cargo built for the bench), replica
/// `id` of the config's store; killed when dropped.
pub struct Replica {
    pub id: String,
    child: Option<Child>,
    pub log: PathBuf,
    /// Where it serves /metrics and /readyz.
    pub addr: String,
}

impl Replica {
    /// Start it; returns once it has logged the address it serves on.
    pub async fn spawn(config: &Path, id: &str, dir: &Path) -> Replica {
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_loopwatch"))
            .args(["run", "-c"])
            .arg(config)
            .env("BENCH_API_KEY", API_KEY)
            .env("BENCH_SECRET", SECRET)
            .env("LOOPWATCH__STORE__REPLICA_ID", id)
            .env_remove("RUST_LOG")
            .env_remove("LOOPWATCH_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let mut r = Replica {
            id: id.to_string(),
            child: Some(child),
            log,
            addr: String::new(),
        };
        let t0 = Instant::now();
        loop {
            if let Some(a) = r.logged_addr() {
                r.addr = a;
                return r;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "replica {id} never logged its address: {}",
                r.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn logged_addr(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.contains("serving /metrics"))?;
        let i = line.find("addr=")? + 5;
        Some(line[i..].split_whitespace().next()?.to_string())
    }

    /// The last lines of its log, for a failure message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn cpu(&self) -> f64 {
        super::cpu_seconds(Some(self.pid()))
    }

    pub fn signal(&self, sig: Signal) {
        kill_process(Pid::from_raw(self.pid() as i32).unwrap(), sig).unwrap();
    }

    /// SIGSTOP: it uses no CPU (and renews no lease) until [`Replica::resume`].
    pub fn pause(&self) {
        self.signal(Signal::STOP);
    }

    pub fn resume(&self) {
        self.signal(Signal::CONT);
    }

    /// SIGTERM and wait for it to exit (it releases its leases on the way out).
    pub async fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        kill_process(Pid::from_raw(child.id() as i32).unwrap(), Signal::TERM).unwrap();
        let t0 = Instant::now();
        while child.try_wait().unwrap().is_none() {
            if t0.elapsed() > Duration::from_secs(60) {
                eprintln!("replica {} did not exit in 60 s; killed", self.id);
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start replicas `r1` .. `rN` on `config`.
pub async fn spawn_replicas(config: &Path, n: usize, dir: &Path) -> Vec<Replica> {
    let mut out = Vec::new();
    for i in 1..=n {
        out.push(Replica::spawn(config, &format!("r{i}"), dir).await);
    }
    out
}

/// `/readyz` of a replica: ready, and how many targets it owns (its role line says
/// "owns N target(s)" whether ready or not).
async fn readiness(http: &reqwest::Client, addr: &str) -> (bool, usize) {
    let Ok(r) = http.get(format!("http://{addr}/readyz")).send().await else {
        return (false, 0);
    };
    let ready = r.status() == 200;
    let body = r.text().await.unwrap_or_default();
    let owns = body
        .split("owns ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (ready, owns)
}

/// A gauge or counter without labels from a replica's `/metrics`.
pub async fn gauge(http: &reqwest::Client, addr: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Wait until the replicas own all `total` targets between them, each owning some, each
/// ready (every target it owns polled once: a fresh database's baseline recorded), and the
/// split unchanged across two looks a lease `round` apart; then check the sum of their
/// `loopwatch_targets_owned` gauges. Returns the split.
pub async fn wait_settled(
    http: &reqwest::Client,
    reps: &[Replica],
    total: usize,
    round: Duration,
    timeout: Duration,
) -> Vec<usize> {
    let deadline = Instant::now() + timeout;
    let mut previous: Option<Vec<usize>> = None;
    loop {
        let (mut owned, mut ready) = (Vec::new(), true);
        for r in reps {
            let (ok, n) = readiness(http, &r.addr).await;
            ready &= ok;
            owned.push(n);
        }
        let settled = ready && owned.iter().sum::<usize>() == total && owned.iter().all(|&n| n > 0);
        if settled && previous.as_ref() == Some(&owned) {
            let mut gauges = 0.0;
            for r in reps {
                gauges += gauge(http, &r.addr, "loopwatch_targets_owned")
                    .await
                    .unwrap_or(f64::NAN);
            }
            if gauges == total as f64 {
                return owned;
            }
        }
        previous = settled.then(|| owned.clone());
        assert!(
            Instant::now() < deadline,
            "replicas not settled in {timeout:?}: owned {owned:?}, ready {ready}; last log lines of {}:\n{}",
            reps[0].id,
            reps[0].log_tail()
        );
        tokio::time::sleep(if settled {
            round + Duration::from_millis(300)
        } else {
            Duration::from_millis(500)
        })
        .await;
    }
}

/// Fields of `/proc/<pid>/stat` after the command name (0 = state, 1 = ppid, 11 = utime,
/// 12 = stime, 13 = cutime, 14 = cstime), in clock ticks.
fn stat_fields(pid: u32) -> Option<Vec<f64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0))
            .collect(),
    )
}

/// CPU seconds of `pid` and all its children, live or exited and reaped (PostgreSQL's
/// postmaster and its backends: a backend's time moves to the postmaster's `cutime` when
/// it exits).
pub fn cpu_tree(pid: u32) -> f64 {
    let Some(own) = stat_fields(pid) else {
        return f64::NAN;
    };
    let mut ticks = own[11] + own[12] + own[13] + own[14];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = stat_fields(child)
            && f[1] as u32 == pid
        {
            ticks += f[11] + f[12];
        }
    }
    ticks / 100.0
}

/// The PostgreSQL server's postmaster, when it runs on this machine (for [`cpu_tree`]).
pub async fn pg_postmaster(pool: &sqlx::PgPool) -> Option<u32> {
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
        .ok()?;
    let ppid = stat_fields(backend as u32)?[1] as u32;
    Some(ppid)
}

/// The next transaction id and the WAL insert position (taking the mark assigns one
/// transaction id itself: between two marks, `b.xid - a.xid - 1` transactions wrote).
#[derive(Clone, Copy, Debug)]
pub struct PgMark {
    pub xid: i64,
    pub wal: i64,
}

pub async fn pg_mark(pool: &sqlx::PgPool) -> PgMark {
    let (xid, wal): (i64, i64) = sqlx::query_as(
        "SELECT pg_current_xact_id()::text::bigint, \
         pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    PgMark { xid, wal }
}

impl PgMark {
    /// Transactions that wrote between `self` and a later mark `after`, and WAL bytes.
    pub fn to(&self, after: &PgMark) -> (i64, i64) {
        (after.xid - self.xid - 1, after.wal - self.wal)
    }
}

/// Rows of `table` whose current version a transaction with id >= `xid` wrote (`xmin`,
/// compared within the first 2^32 transaction ids: a fresh benchmark server).
pub async fn rows_written_since(pool: &sqlx::PgPool, table: &str, xid: i64) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {table} WHERE xmin::text::bigint >= $1"
    )))
    .bind(xid & 0xffff_ffff)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Rows in `table` (one `count(*)`).
pub async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Counters of the server's own work: checkpoints (timed + requested) and autovacuum and
/// autoanalyze runs on this database's tables, system catalogs included (an autoanalyze
/// writes `pg_statistic`: a transaction id; each process flushes its counters when it
/// finishes its work).
pub async fn pg_housekeeping(pool: &sqlx::PgPool) -> (i64, i64) {
    let checkpoints: i64 = sqlx::query_scalar(
        "SELECT (checkpoints_timed + checkpoints_req)::bigint FROM pg_stat_bgwriter",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let autovacuums: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(autovacuum_count + autoanalyze_count), 0)::bigint FROM pg_stat_all_tables",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (checkpoints, autovacuums)
}
