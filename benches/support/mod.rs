//! Shared by the macro benchmarks: options, statistics, process figures (CPU, RSS),
//! tables, and the fixtures every benchmark needs (a config, the webhook receiver).
//!
//! The macro benchmarks do nothing unless run by `cargo bench` (which passes `--bench`),
//! so `cargo test --all-targets` only builds them.
#![allow(dead_code)]

pub mod procs;

use std::time::{Duration, Instant};

use loopwatch::config::{self, Config, Environment, Filter, TargetConfig};
pub use loopwatch::sim::Receiver;
use loopwatch::sim::ReceiverBuilder;

pub const API_KEY: &str = "bench-api-key";
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Command-line options of a macro benchmark.
#[derive(Clone, Debug)]
pub struct Opts {
    /// `--quick`: small sizes and fewer runs, for a smoke test.
    pub quick: bool,
    /// Measured runs per figure (medians are reported).
    pub runs: usize,
    /// Everything after the flags (used by child processes).
    pub rest: Vec<String>,
}

/// The options, or None when not run as a benchmark (`cargo test` runs bench targets too).
pub fn opts() -> Option<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench" || a == "--child") {
        return None;
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("LOOPWATCH_BENCH_QUICK").is_ok_and(|v| v == "1");
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 3 } else { 5 });
    let rest = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .cloned()
        .collect();
    Some(Opts { quick, runs, rest })
}

impl Opts {
    /// `--name VALUE` from the command line, for exploring other sizes by hand.
    pub fn value(&self, name: &str) -> Option<usize> {
        let args: Vec<String> = std::env::args().collect();
        let i = args.iter().position(|a| a == name)?;
        args.get(i + 1)?.parse().ok()
    }
}

pub fn median(xs: &[f64]) -> f64 {
    percentile(xs, 50.0)
}

/// Nearest-rank percentile of `xs` (any order).
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// User + system CPU seconds of a process (`/proc/<pid>/stat`), 10 ms resolution.
pub fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".into(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &text[text.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
    ticks / 100.0
}

/// A `/proc/<pid>/status` field in MiB (`VmHWM` = peak RSS, `VmRSS` = current).
pub fn status_mib(pid: Option<u32>, field: &str) -> f64 {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// Load averages and the machine, for the header of every report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string();
    let mem = status_like("/proc/meminfo", "MemTotal") / 1024.0 / 1024.0;
    format!(
        "{cpus} CPUs ({model}), {mem:.1} GiB RAM, load average {}",
        load()
    )
}

pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn status_like(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// A markdown table.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    println!("| {} |", header.join(" | "));
    println!(
        "|{}",
        header.iter().map(|_| "---|").collect::<Vec<_>>().join("")
    );
    for r in rows {
        println!("| {} |", r.join(" | "));
    }
    println!();
}

/// `loopwatch / floor` as `0.87x`.
pub fn ratio(lw: f64, floor: f64) -> String {
    format!("{:.2}x", lw / floor)
}

/// Thousands separators: 12345.6 -> "12,346".
pub fn n(x: f64) -> String {
    if !x.is_finite() {
        return "-".into();
    }
    let s = format!("{:.0}", x.round());
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// The run id of target `i` in every benchmark's simulated fleet.
pub fn run_id(i: usize) -> String {
    format!("run-{i:05}")
}

/// The `[[sinks]]` of the delivery benchmarks: one signed webhook sink named "bench" for
/// `completed` events, `concurrency` in flight, to `url`.
pub fn completed_sink(url: &str, concurrency: usize) -> String {
    format!(
        "[[sinks]]\nname = \"bench\"\nurl = \"{url}\"\nsecret_env = \"BENCH_SECRET\"\n\
         concurrency = {concurrency}\nevents = [\"checkpoint.completed\"]\n"
    )
}

/// A validated config for `targets` run-id targets against `api`, plus `extra` TOML
/// (sections after `[[targets]]` are not allowed; use `sinks` for `[[sinks]]`, e.g.
/// [`completed_sink`]).
/// Targets are added after validation when there are many: the config crate's parser is
/// not what these benchmarks measure (the startup benchmark parses a real file).
pub fn config(api: &str, store_url: &str, poll: &str, targets: usize, sinks: &str) -> Config {
    let text = format!(
        r#"
[api]
base_url = "{api}"
api_key_env = "BENCH_API_KEY"
timeout = "30s"
max_requests_per_second = 1000000
[poll]
{poll}
[store]
url = "{store_url}"
[server]
listen = "127.0.0.1:0"
[log]
level = "warn"
[[targets]]
name = "{t0}"
run_id = "{t0}"
{sinks}
"#,
        t0 = run_id(0),
    );
    let env = Environment::from_pairs([("BENCH_API_KEY", API_KEY), ("BENCH_SECRET", SECRET)]);
    let mut cfg = config::load_str(&text, config::FileFormat::Toml, "bench.toml", &env)
        .unwrap_or_else(|e| panic!("bench config: {e}"));
    let t0 = cfg.targets[0].clone();
    cfg.targets = (0..targets).map(|i| target(&t0, i)).collect();
    cfg
}

fn target(template: &TargetConfig, i: usize) -> TargetConfig {
    TargetConfig {
        name: run_id(i),
        filter: Filter::RunId(run_id(i)),
        checkpoint_targets: None,
        ..template.clone()
    }
}

/// The webhook receiver of the delivery benchmarks: answers 204 and counts, keeping no
/// copy of the requests (the latency benchmark adds an `on_request` to this).
pub fn receiver() -> ReceiverBuilder {
    Receiver::builder().keep_requests(false)
}

/// Wait until `f` is true, checking every `every`; false after `timeout`.
pub async fn until(timeout: Duration, every: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// Print the header of a benchmark's report.
pub fn header(name: &str, what: &str, o: &Opts) {
    println!("## {name}{}", if o.quick { " (quick)" } else { "" });
    println!();
    println!("{what}");
    println!();
    println!("machine: {}; medians of {} runs", machine(), o.runs);
    println!();
}

/// Which store the macro benchmarks run on: SQLite (default) or, with
/// `LOOPWATCH_BENCH_STORE=postgres`, the PostgreSQL server named by `LOOPWATCH_TEST_PG_URL`
/// (`LOOPWATCH_BENCH_STORE=postgres scripts/with-postgres cargo bench --bench NAME`).
pub fn postgres_admin_url() -> Option<String> {
    match std::env::var("LOOPWATCH_BENCH_STORE").as_deref() {
        Ok("postgres") => Some(std::env::var("LOOPWATCH_TEST_PG_URL").unwrap_or_else(|_| {
            panic!(
                "LOOPWATCH_BENCH_STORE=postgres needs LOOPWATCH_TEST_PG_URL: run the bench \
                 under scripts/with-postgres"
            )
        })),
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("LOOPWATCH_BENCH_STORE={other}: use sqlite or postgres"),
    }
}

/// "sqlite" or "postgres", for report headers.
pub fn store_kind() -> &'static str {
    if postgres_admin_url().is_some() {
        "postgres"
    } else {
        "sqlite"
    }
}

/// A fresh, empty store for one run: a SQLite file in a temporary directory, or a new
/// database on the PostgreSQL server (dropped by [`BenchDb::drop_db`]).
pub struct BenchDb {
    pub url: String,
    pub dir: tempfile::TempDir,
    /// (server URL, database name) on PostgreSQL.
    pg: Option<(String, String)>,
}

impl BenchDb {
    pub async fn new() -> BenchDb {
        let dir = tempfile::tempdir().unwrap();
        let Some(admin) = postgres_admin_url() else {
            let url = format!("sqlite://{}", dir.path().join("state.db").display());
            return BenchDb { url, dir, pg: None };
        };
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let name = format!(
            "lwbench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut conn = admin_conn(&admin).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let url = database_url(&admin, &name);
        BenchDb {
            url,
            dir,
            pg: Some((admin, name)),
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.pg.is_some()
    }

    /// Drop the PostgreSQL database (closing whatever still uses it); the SQLite file goes
    /// with the temporary directory.
    pub async fn drop_db(self) {
        if let Some((admin, name)) = &self.pg {
            let mut conn = admin_conn(admin).await;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut conn)
            .await
            .unwrap();
        }
    }
}

async fn admin_conn(url: &str) -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(url).await.unwrap()
}

/// `postgres://user@host:port/db?x` with its database replaced by `name`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, ""), |(b, q)| (b, q));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..host_end]);
    if !query.is_empty() {
        url.push('?');
        url.push_str(query);
    }
    url
}

/// The PostgreSQL server's version and the settings the figures depend on.
pub async fn postgres_settings(url: &str) -> String {
    let mut conn = admin_conn(url).await;
    let mut out = Vec::new();
    for s in [
        "server_version",
        "fsync",
        "synchronous_commit",
        "wal_level",
        "shared_buffers",
        "max_wal_size",
        "checkpoint_timeout",
    ] {
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {s}")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        out.push(format!("{s} = {v}"));
    }
    out.join(", ")
}

/// Print which store a benchmark runs on (and PostgreSQL's settings).
pub async fn store_header() {
    match postgres_admin_url() {
        None => println!("store: SQLite (a file in a temporary directory)\n"),
        Some(url) => println!(
            "store: PostgreSQL, a fresh database per run ({})\n",
            postgres_settings(&url).await
        ),
    }
}

/// Every stored event's `standard` body in detection order, read straight from the
/// `events` table of the store at `url` (SQLite, read-only, or PostgreSQL).
pub async fn stored_bodies(url: &str) -> Vec<String> {
    use sqlx::Connection;
    const BODIES: &str = "SELECT body FROM events ORDER BY seq";
    if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let mut conn = sqlx::SqliteConnection::connect_with(&opts.read_only(true))
            .await
            .unwrap();
        sqlx::query_scalar(BODIES)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(BODIES)
            .fetch_all(&mut conn)
            .await
            .unwrap()
    }
}
