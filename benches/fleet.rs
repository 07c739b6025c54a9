//! fleet: N targets x M checkpoints served by the simulated API, listings unchanged.
//!
//! loopwatch: `Poller::poll_target` for every target (fetch, decode, diff, store, metrics)
//! with `poll.concurrency` polls in flight. Floor: the same GETs (same URLs, headers and
//! concurrency, same server) with the body read and discarded. The simulator runs in a
//! child process, so this process's peak RSS is loopwatch's (plus the floor's client).
//!
//! `cargo bench --bench fleet [-- --quick]`; on PostgreSQL (a fresh database per size):
//! `LOOPWATCH_BENCH_STORE=postgres LOOPWATCH_PG_FSYNC=on scripts/with-postgres cargo bench --bench fleet`.
//! Writes during the measured cycles are the database files' sizes and times on SQLite,
//! and on PostgreSQL the transaction ids assigned and WAL bytes written (after a
//! `VACUUM ANALYZE` of the baseline, so autovacuum has nothing left to do).

#[path = "support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loopwatch::api;
use loopwatch::config::TargetConfig;
use loopwatch::health::Health;
use loopwatch::metrics::Metrics;
use loopwatch::model::TargetState;
use loopwatch::poller::Poller;
use loopwatch::sim::{CHECKPOINTS_PATH, SimApi};
use loopwatch::store::Store;
use support::{API_KEY, BenchDb, Opts, median, n, ratio, run_id};

/// Polls in flight, for loopwatch (`poll.concurrency`) and the floor alike.
const CONCURRENCY: usize = 16;

fn main() {
    let Some(o) = support::opts() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    if o.rest.first().map(String::as_str) == Some("serve-sim") {
        let n: usize = o.rest[1].parse().unwrap();
        let m: usize = o.rest[2].parse().unwrap();
        rt.block_on(serve_sim(n, m));
        return;
    }
    rt.block_on(bench(o));
}

/// The child process: a simulated API with `n` runs of `m` COMPLETE checkpoints each.
async fn serve_sim(n: usize, m: usize) {
    let sim = SimApi::start(Some(API_KEY.into())).await.unwrap();
    let h = sim.handle();
    for i in 0..n {
        h.add_many(&run_id(i), m, Some("COMPLETE"));
    }
    println!("{}", sim.base_url());
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin.
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
        .await
        .ok();
    sim.shutdown().await;
}

struct SimChild {
    child: Child,
    url: String,
}

impl SimChild {
    fn start(n: usize, m: usize) -> SimChild {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--child", "serve-sim", &n.to_string(), &m.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        SimChild {
            child,
            url: line.trim().to_string(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for SimChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// One measured pass: wall seconds, this process's CPU seconds, the simulator's.
#[derive(Clone, Copy, Default)]
struct Pass {
    polls: usize,
    wall: f64,
    cpu: f64,
    sim_cpu: f64,
}

impl Pass {
    fn rate(&self) -> f64 {
        self.polls as f64 / self.wall
    }
    fn cpu_us(&self) -> f64 {
        self.cpu / self.polls as f64 * 1e6
    }
    fn sim_us(&self) -> f64 {
        self.sim_cpu / self.polls as f64 * 1e6
    }
}

async fn measure<F: AsyncFnMut()>(sim: &SimChild, polls: usize, mut f: F) -> Pass {
    let (c0, s0) = (
        support::cpu_seconds(None),
        support::cpu_seconds(Some(sim.pid())),
    );
    let t0 = Instant::now();
    f().await;
    Pass {
        polls,
        wall: t0.elapsed().as_secs_f64(),
        cpu: support::cpu_seconds(None) - c0,
        sim_cpu: support::cpu_seconds(Some(sim.pid())) - s0,
    }
}

struct Scenario {
    n: usize,
    m: usize,
    baseline_s: f64,
    lw: Vec<Pass>,
    decoded: Vec<Pass>,
    floor: Vec<Pass>,
    writes: u64,
    db_untouched: bool,
    /// PostgreSQL: transaction ids assigned and WAL bytes written during the measured cycles.
    pg_xids: i64,
    pg_wal: i64,
    rss_peak: f64,
}

/// What shows a write: the SQLite files' sizes and times; PostgreSQL's next transaction
/// id and WAL position (taking the mark assigns one id itself).
async fn write_mark(db: &BenchDb) -> (Vec<(u64, std::time::SystemTime)>, i64, i64) {
    if db.is_postgres() {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let (xid, wal): (i64, i64) = sqlx::query_as(
            "SELECT pg_current_xact_id()::text::bigint, \
             pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        return (Vec::new(), xid, wal);
    }
    let files = ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(db.dir.path().join(f)).ok())
        .map(|m| (m.len(), m.modified().unwrap()))
        .collect();
    (files, 0, 0)
}

async fn scenario(n: usize, m: usize, o: &Opts) -> Scenario {
    // Peak RSS from here (Linux: "5" resets VmHWM to the current RSS). Memory the
    // allocator kept from an earlier scenario still counts, so the headline size runs first.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let sim = SimChild::start(n, m);
    let db = BenchDb::new().await;
    let poll = format!("interval = \"60s\"\njitter = 0.0\nconcurrency = {CONCURRENCY}");
    let cfg = support::config(&sim.url, &db.url, &poll, n, "");
    let store: Arc<dyn Store> = loopwatch::store::open(&db.url).await.unwrap();
    let metrics = Arc::new(Metrics::new());
    metrics.init_series(&cfg);
    let health = Arc::new(Health::new(cfg.targets.iter().map(|t| t.name.clone())));
    let client = Arc::new(api::Client::new(&cfg.api).unwrap());
    let poller = Poller::new(
        client,
        store.clone(),
        metrics,
        None,
        health,
        cfg.poll.clone(),
        Vec::new(),
    );
    let targets: Vec<TargetConfig> = cfg.targets.clone();
    let mut states: Vec<TargetState> = Vec::with_capacity(n);
    for t in &targets {
        states.push(store.load_target(&t.name).await.unwrap());
    }

    // One cycle of loopwatch: every target once; returns how many polls wrote. With
    // `decode`, each state forgets the listing it settled on, so every body is decoded and
    // diffed (what a changed listing, or the first poll after a start, costs).
    let cycle = async |states: &mut Vec<TargetState>, decode: bool| -> u64 {
        let wrote = std::sync::atomic::AtomicU64::new(0);
        futures_util::stream::iter(targets.iter().zip(states.iter_mut()))
            .for_each_concurrent(CONCURRENCY, |(t, s)| {
                let (poller, wrote) = (&poller, &wrote);
                async move {
                    if decode {
                        s.settled = None;
                    }
                    let r = poller.poll_target(t, s, false, None).await.expect("poll");
                    assert_eq!(r.checkpoints, m);
                    if r.wrote {
                        wrote.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
            .await;
        wrote.into_inner()
    };

    let t0 = Instant::now();
    let baselined = cycle(&mut states, true).await;
    let baseline_s = t0.elapsed().as_secs_f64();
    assert_eq!(baselined as usize, n, "every target records its baseline");
    cycle(&mut states, true).await; // warm: connections, caches
    cycle(&mut states, false).await; // every state settles
    if db.is_postgres() {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql("VACUUM ANALYZE")
            .execute(&mut c)
            .await
            .unwrap();
    }

    // The floor: the same requests, the body read and thrown away.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("loopwatch-bench")
        .build()
        .unwrap();
    let endpoint = format!("{}{CHECKPOINTS_PATH}", sim.url);
    let auth = format!("Bearer {API_KEY}");
    let floor_cycle = async || {
        futures_util::stream::iter(targets.iter())
            .for_each_concurrent(CONCURRENCY, |t| {
                let (http, endpoint, auth) = (&http, &endpoint, &auth);
                async move {
                    let mut r = http
                        .get(format!("{endpoint}?run_id={}", t.filter.value()))
                        .header("authorization", auth)
                        .send()
                        .await
                        .expect("GET");
                    assert!(r.status().is_success());
                    while let Some(chunk) = r.chunk().await.expect("body") {
                        std::hint::black_box(chunk);
                    }
                }
            })
            .await;
    };
    floor_cycle().await; // warm

    let per_run: usize = if o.quick { 2_000 } else { 10_000 };
    let cycles = per_run.div_ceil(n).max(1);
    let polls = cycles * n;
    let before = write_mark(&db).await;
    let mut writes = 0;
    let (mut lw, mut floor, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..o.runs {
        floor.push(
            measure(&sim, polls, async || {
                for _ in 0..cycles {
                    floor_cycle().await;
                }
            })
            .await,
        );
        lw.push(
            measure(&sim, polls, async || {
                for _ in 0..cycles {
                    writes += cycle(&mut states, false).await;
                }
            })
            .await,
        );
        decoded.push(
            measure(&sim, polls, async || {
                for _ in 0..cycles {
                    writes += cycle(&mut states, true).await;
                }
            })
            .await,
        );
    }
    let after = write_mark(&db).await;
    // On PostgreSQL the second mark's own transaction id is the only one expected.
    let db_untouched = before.0 == after.0 && after.1 - before.1 <= 1 && after.2 == before.2;
    let (pg_xids, pg_wal) = (after.1 - before.1 - 1, after.2 - before.2);
    drop(poller);
    drop(store);
    db.drop_db().await;
    Scenario {
        pg_xids,
        pg_wal,
        n,
        m,
        baseline_s,
        lw,
        decoded,
        floor,
        writes,
        db_untouched,
        rss_peak: support::status_mib(None, "VmHWM"),
    }
}

fn med(xs: &[Pass], f: impl Fn(&Pass) -> f64) -> f64 {
    median(&xs.iter().map(f).collect::<Vec<_>>())
}

async fn bench(o: Opts) {
    let (head_n, head_m) = if o.quick { (1_000, 50) } else { (10_000, 50) };
    let mut sizes = vec![(head_n, head_m), (100, 50)];
    if !o.quick {
        sizes.extend([(1_000, 50), (1_000, 5), (1_000, 500)]);
    }
    support::header(
        "fleet",
        &format!(
            "N targets x M checkpoints, listings unchanged; {CONCURRENCY} polls in flight; \
             simulator in a child process. Floor: the same GETs, body discarded."
        ),
        &o,
    );
    support::store_header().await;
    let mut results = Vec::new();
    for (n, m) in sizes {
        eprintln!("fleet: {n} x {m} ...");
        results.push(scenario(n, m, &o).await);
    }
    let head = results
        .iter()
        .find(|s| (s.n, s.m) == (head_n, head_m))
        .unwrap();
    let lw = med(&head.lw, Pass::rate);
    let floor = med(&head.floor, Pass::rate);
    println!(
        "### fleet {} targets x {} checkpoints",
        n(head_n as f64),
        head_m
    );
    println!();
    support::table(
        &["figure", "loopwatch", "floor", "ratio"],
        &[
            vec![
                "polls/s (fetch, decode, diff, store)".into(),
                n(lw),
                n(floor),
                ratio(lw, floor),
            ],
            vec![
                "polls/s, every body decoded and diffed".into(),
                n(med(&head.decoded, Pass::rate)),
                n(floor),
                ratio(med(&head.decoded, Pass::rate), floor),
            ],
            vec![
                "client CPU per poll (µs)".into(),
                n(med(&head.lw, Pass::cpu_us)),
                n(med(&head.floor, Pass::cpu_us)),
                ratio(med(&head.lw, Pass::cpu_us), med(&head.floor, Pass::cpu_us)),
            ],
            vec![
                "store writes per cycle (unchanged listings)".into(),
                format!(
                    "{} (db files untouched: {})",
                    head.writes / (o.runs as u64).max(1),
                    if head.db_untouched { "yes" } else { "NO" }
                ),
                "0".into(),
                String::new(),
            ],
            vec![
                "PostgreSQL: transactions that wrote / WAL bytes, all measured cycles".into(),
                if support::postgres_admin_url().is_some() {
                    format!("{} / {}", head.pg_xids, head.pg_wal)
                } else {
                    "-".into()
                },
                "0 / 0".into(),
                String::new(),
            ],
            vec![
                "peak RSS of the process (MiB)".into(),
                format!("{:.0}", head.rss_peak),
                String::new(),
                String::new(),
            ],
            vec![
                "baseline cycle (s, all checkpoints recorded)".into(),
                format!("{:.2}", head.baseline_s),
                String::new(),
                String::new(),
            ],
        ],
    );
    println!(
        "### scaling (medians; µs are this process's CPU time per poll; loopwatch µs = \
         CPU µs/poll - floor CPU µs/poll; decoded = every body decoded and diffed)"
    );
    println!();
    let mut ordered: Vec<&Scenario> = results.iter().collect();
    ordered.sort_by_key(|s| (s.n, s.m));
    let rows: Vec<Vec<String>> = ordered
        .into_iter()
        .map(|s| {
            let (lw, fl) = (med(&s.lw, Pass::rate), med(&s.floor, Pass::rate));
            let (lw_us, fl_us) = (med(&s.lw, Pass::cpu_us), med(&s.floor, Pass::cpu_us));
            let dec_us = med(&s.decoded, Pass::cpu_us);
            vec![
                n(s.n as f64),
                s.m.to_string(),
                n(lw),
                n(fl),
                ratio(lw, fl),
                n(lw_us),
                n(fl_us),
                format!("{:.0}", lw_us - fl_us),
                n(med(&s.decoded, Pass::rate)),
                format!("{:.0}", dec_us - fl_us),
                format!("{:.2}", (dec_us - fl_us) / s.m as f64),
                n(med(&s.lw, Pass::sim_us)),
                s.writes.to_string(),
                format!("{:.0}", s.rss_peak),
                format!("{:.2}", s.baseline_s),
            ]
        })
        .collect();
    support::table(
        &[
            "targets",
            "ckpts/target",
            "polls/s",
            "floor polls/s",
            "ratio",
            "CPU µs/poll",
            "floor CPU µs/poll",
            "loopwatch µs/poll",
            "decoded polls/s",
            "decoded: loopwatch µs/poll",
            "decoded: µs/ckpt",
            "sim µs/poll",
            "writes",
            "peak RSS MiB",
            "baseline s",
        ],
        &rows,
    );
}
