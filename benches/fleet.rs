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
//!
//! `-- --replicas N` (PostgreSQL only): the real release binary as N replica processes
//! (`loopwatch run`, `store.replica_id` r1..rN), then as 1, against the simulator (a
//! child process) and one fresh database; see [`processes`].

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loopwatch::api;
use loopwatch::config::TargetConfig;
use loopwatch::health::Health;
use loopwatch::metrics::Metrics;
use loopwatch::model::TargetState;
use loopwatch::poller::Poller;
use loopwatch::sim::CHECKPOINTS_PATH;
use loopwatch::store::Store;
use support::procs::{FloorClients, Replica, SimChild};
use support::{API_KEY, BenchDb, Opts, median, n, ratio, run_id};

/// Polls in flight, for loopwatch (`poll.concurrency`) and the floor alike.
const CONCURRENCY: usize = 16;

fn main() {
    let Some(o) = support::opts() else { return };
    if support::procs::child(&o) {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
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
    /// The kinds of those WAL records ([`wal_records`]).
    pg_wal_records: String,
    rss_peak: f64,
}

/// What shows a write: the SQLite files' sizes and times; PostgreSQL's next transaction
/// id and WAL position (read from a snapshot: taking the mark assigns no id and writes
/// nothing itself).
struct WriteMark {
    files: Vec<(u64, std::time::SystemTime)>,
    xid: i64,
    wal: i64,
    lsn: String,
}

async fn write_mark(db: &BenchDb) -> WriteMark {
    if db.is_postgres() {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let (xid, wal, lsn): (i64, i64, String) = sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint, \
             pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint, \
             pg_current_wal_insert_lsn()::text",
        )
        .fetch_one(&mut c)
        .await
        .unwrap();
        return WriteMark {
            files: Vec::new(),
            xid,
            wal,
            lsn,
        };
    }
    let files = ["state.db", "state.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(db.dir.path().join(f)).ok())
        .map(|m| (m.len(), m.modified().unwrap()))
        .collect();
    WriteMark {
        files,
        xid: 0,
        wal: 0,
        lsn: String::new(),
    }
}

/// The WAL records PostgreSQL wrote between two marks, by kind (`pg_waldump --stats=record`
/// on the server's `pg_wal`, which `scripts/with-postgres` names): "Standby/RUNNING_XACTS x1"
/// and the like, or why they could not be read. A record no transaction wrote is the
/// server's own (a snapshot of running transactions, a page pruned by a read).
fn wal_records(before: &WriteMark, after: &WriteMark) -> String {
    if before.lsn == after.lsn {
        return "none".into();
    }
    let (Ok(pgdata), Ok(pg_ctl)) = (
        std::env::var("LOOPWATCH_TEST_PGDATA"),
        std::env::var("LOOPWATCH_TEST_PG_CTL"),
    ) else {
        return "? (not under scripts/with-postgres)".into();
    };
    let waldump = std::path::Path::new(&pg_ctl).with_file_name("pg_waldump");
    let out = std::process::Command::new(&waldump)
        .arg("--path")
        .arg(std::path::Path::new(&pgdata).join("pg_wal"))
        .args([
            "--start",
            &before.lsn,
            "--end",
            &after.lsn,
            "--stats=record",
        ])
        .output();
    let out = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return format!("? ({})", String::from_utf8_lossy(&o.stderr).trim()),
        Err(e) => return format!("? ({}: {e})", waldump.display()),
    };
    // Rows after the header's dashes: "Rmgr/RECORD   N   (%) ...", then a total.
    let kinds: Vec<String> = out
        .lines()
        .skip_while(|l| !l.starts_with("----"))
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (kind, count) = (f.next()?, f.next()?.parse::<u64>().ok()?);
            (kind.contains('/') && count > 0).then(|| format!("{kind} x{count}"))
        })
        .collect();
    if kinds.is_empty() {
        "none".into()
    } else {
        kinds.join(", ")
    }
}

async fn scenario(n: usize, m: usize, o: &Opts) -> Scenario {
    // Peak RSS from here (Linux: "5" resets VmHWM to the current RSS). Memory the
    // allocator kept from an earlier scenario still counts, so the headline size runs first.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let sim = SimChild::start(n, m, "COMPLETE");
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
    // On PostgreSQL: no transaction id assigned (no transaction wrote). WAL the server
    // wrote by itself is named beside it.
    let db_untouched = before.files == after.files && after.xid == before.xid;
    let (pg_xids, pg_wal) = (after.xid - before.xid, after.wal - before.wal);
    let pg_wal_records = if db.is_postgres() {
        wal_records(&before, &after)
    } else {
        String::new()
    };
    drop(poller);
    drop(store);
    db.drop_db().await;
    Scenario {
        pg_xids,
        pg_wal,
        pg_wal_records,
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
    if let Some(replicas) = o.value("--replicas") {
        return processes(&o, replicas).await;
    }
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
                    "{} ({}: {})",
                    head.writes / (o.runs as u64).max(1),
                    if support::postgres_admin_url().is_some() {
                        "no transaction wrote"
                    } else {
                        "db files untouched"
                    },
                    if head.db_untouched { "yes" } else { "NO" }
                ),
                "0".into(),
                String::new(),
            ],
            vec![
                "PostgreSQL: transactions that wrote / WAL bytes (its records), all measured cycles".into(),
                if support::postgres_admin_url().is_some() {
                    format!(
                        "{} / {} ({})",
                        head.pg_xids, head.pg_wal, head.pg_wal_records
                    )
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

/// The lease of the `--replicas` mode: a round (one heartbeat write per replica) every
/// 10 s. Long enough that the replicas, stopped (SIGSTOP) while the floor runs, keep
/// their leases: a stop of a window plus a round stays well inside it.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// What one measured window saw: listing requests the simulator answered, wall seconds,
/// CPU seconds of each replica, of the simulator, of PostgreSQL (the postmaster's whole
/// tree) and of this process (the floor's client), transactions that wrote and WAL bytes
/// (the bench's own marks excluded), and the load average at its end.
#[derive(Clone, Default)]
struct Window {
    requests: u64,
    wall: f64,
    replicas_cpu: Vec<f64>,
    sim_cpu: f64,
    pg_cpu: f64,
    bench_cpu: f64,
    /// The floor's client processes.
    floor_cpu: f64,
    xids: i64,
    wal: i64,
    load: String,
}

impl Window {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.wall
    }
    fn per_poll_us(&self, cpu: f64) -> f64 {
        cpu / self.requests as f64 * 1e6
    }
    fn replicas_cpu(&self) -> f64 {
        self.replicas_cpu.iter().sum()
    }
    /// CPU seconds of every process of the benchmark over the window.
    fn total_cpu(&self) -> f64 {
        self.replicas_cpu() + self.sim_cpu + self.pg_cpu + self.bench_cpu + self.floor_cpu
    }
}

/// The processes a window reads (CPU, requests, database marks).
struct Watched<'a> {
    sim: &'a mut SimChild,
    pool: &'a sqlx::PgPool,
    postmaster: Option<u32>,
}

impl Watched<'_> {
    fn pg_cpu(&self) -> f64 {
        self.postmaster.map_or(f64::NAN, support::procs::cpu_tree)
    }

    /// Measure while `f` runs (the replicas polling for a fixed time, or the floor's
    /// clients, whose CPU seconds it returns).
    async fn window<F: AsyncFnOnce() -> f64>(&mut self, reps: &[Replica], f: F) -> Window {
        let m0 = support::procs::pg_mark(self.pool).await;
        let c0: Vec<f64> = reps.iter().map(Replica::cpu).collect();
        let (s0, p0, b0) = (
            support::cpu_seconds(Some(self.sim.pid())),
            self.pg_cpu(),
            support::cpu_seconds(None),
        );
        let r0 = self.sim.requests();
        let t0 = Instant::now();
        let floor_cpu = f().await;
        let r1 = self.sim.requests();
        let wall = t0.elapsed().as_secs_f64();
        let w = Window {
            requests: r1 - r0,
            wall,
            replicas_cpu: reps.iter().zip(&c0).map(|(r, c)| r.cpu() - c).collect(),
            sim_cpu: support::cpu_seconds(Some(self.sim.pid())) - s0,
            pg_cpu: self.pg_cpu() - p0,
            bench_cpu: support::cpu_seconds(None) - b0,
            floor_cpu,
            load: support::load(),
            ..Window::default()
        };
        let m1 = support::procs::pg_mark(self.pool).await;
        let (xids, wal) = m0.to(&m1);
        Window { xids, wal, ..w }
    }
}

/// One `--replicas` mode: `count` replicas on the shared database, started, settled and
/// measured in `o.runs` pairs of windows (the replicas polling as fast as they can; the
/// floor with them stopped), alternating which goes first.
struct Mode {
    replicas: usize,
    /// Start to settled (every target owned and polled once; on a fresh database that is
    /// the baseline of every checkpoint).
    start_s: f64,
    fresh: bool,
    split: Vec<usize>,
    lw: Vec<Window>,
    floor: Vec<Window>,
    /// Rows last written, during the measured runs, to each table (by `xmin`).
    rows: Vec<(String, i64)>,
    /// From the first window to the last (floors and resumes included): seconds,
    /// transactions that wrote, server checkpoints, autovacuum and autoanalyze runs.
    period_s: f64,
    period_xids: i64,
    checkpoints: i64,
    autovacuums: i64,
}

#[allow(clippy::too_many_arguments)]
async fn mode(
    o: &Opts,
    count: usize,
    fresh: bool,
    config: &std::path::Path,
    dir: &std::path::Path,
    w: &mut Watched<'_>,
    http: &reqwest::Client,
    targets: &[String],
    window: Duration,
) -> Mode {
    eprintln!("fleet --replicas: starting {count} replica(s) ...");
    let t0 = Instant::now();
    let reps = support::procs::spawn_replicas(config, count, dir).await;
    let split = support::procs::wait_settled(
        http,
        &reps,
        targets.len(),
        LEASE_TTL / 3,
        Duration::from_secs(1800),
    )
    .await;
    let start_s = t0.elapsed().as_secs_f64();
    eprintln!("fleet --replicas: {count} settled in {start_s:.1} s: {split:?}");
    // Autovacuum left nothing to do after the baseline (it would write during a window).
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(w.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    if let Some(s) = std::env::var("BENCH_PROFILE_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let pids: Vec<String> = reps
            .iter()
            .map(|r| format!("{} pid {}", r.id, r.pid()))
            .collect();
        eprintln!(
            "fleet --replicas: polling for {s} s before the runs (attach a profiler): {}",
            pids.join(", ")
        );
        tokio::time::sleep(Duration::from_secs(s)).await;
    }
    // The floor: as many client processes as replicas, as many in flight each.
    let mut clients = FloorClients::start(&w.sim.url, targets.len(), CONCURRENCY, count);
    let housekeeping0 = support::procs::pg_housekeeping(w.pool).await;
    let start = support::procs::pg_mark(w.pool).await;
    let started = Instant::now();
    let (mut lw, mut floor) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        for step in if run % 2 == 0 { [0, 1] } else { [1, 0] } {
            if step == 0 {
                for r in &reps {
                    r.pause();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                floor.push(w.window(&[], async || clients.run(window)).await);
                for r in &reps {
                    r.resume();
                }
                // Overdue timers fire at once (a lease round among them): let them.
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                lw.push(
                    w.window(&reps, async || {
                        tokio::time::sleep(window).await;
                        0.0
                    })
                    .await,
                );
            }
        }
        eprintln!(
            "fleet --replicas {count}: run {}/{}: {} polls/s, floor {} GETs/s",
            run + 1,
            o.runs,
            n(lw.last().unwrap().rate()),
            n(floor.last().unwrap().rate())
        );
    }
    let end = support::procs::pg_mark(w.pool).await;
    let period_s = started.elapsed().as_secs_f64();
    let housekeeping1 = support::procs::pg_housekeeping(w.pool).await;
    drop(clients);
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT relname::text FROM pg_stat_user_tables WHERE schemaname = current_schema() \
         ORDER BY relname",
    )
    .fetch_all(w.pool)
    .await
    .unwrap();
    let mut rows = Vec::new();
    for t in tables {
        let k = support::procs::rows_written_since(w.pool, &t, start.xid).await;
        rows.push((t, k));
    }
    for r in reps {
        r.stop().await;
    }
    Mode {
        replicas: count,
        period_s,
        // Less the bench's own marks: two per window.
        period_xids: start.to(&end).0 - 2 * (lw.len() + floor.len()) as i64,
        checkpoints: housekeeping1.0 - housekeeping0.0,
        autovacuums: housekeeping1.1 - housekeeping0.1,
        start_s,
        fresh,
        split,
        lw,
        floor,
        rows,
    }
}

fn medw(xs: &[Window], f: impl Fn(&Window) -> f64) -> f64 {
    median(&xs.iter().map(f).collect::<Vec<_>>())
}

/// `--replicas N`: the fleet (N targets x M COMPLETE checkpoints, unchanged) on the real
/// binary as N separate replica processes, then as 1, on one fresh PostgreSQL database.
///
/// Each replica polls with `poll.interval` = 1 ms (jitter 0) and `poll.concurrency` 16:
/// every target's loop is due again as soon as its poll ends, so a replica always has 16
/// polls in flight and polls as fast as it can; the API budget
/// (`api.max_requests_per_second` = 1,000,000, shared) never binds. polls/s is then the
/// replicas' capacity, read from the simulator's count of listing requests over a fixed
/// window, once the replicas own every target (`loopwatch_targets_owned` summed over
/// their /metrics) and have polled each once (the baseline, on the fresh database). The
/// floor, in the same run: the same GETs (the same targets, round robin) from N bare
/// client processes (so that the floor and the replicas are as many processes asking a
/// loaded machine for CPU) with 16 in flight each, body discarded, for the same window,
/// with the replicas stopped (SIGSTOP; the lease, 30 s, outlives the stop). Database writes during the windows: transaction ids assigned and WAL bytes
/// (the bench's own marks excluded), and after the runs the rows of each table last
/// written during them (`xmin`): lease heartbeats (`replicas`, one row per replica per
/// round, every `lease_ttl / 3` = 10 s) apart from poll writes (0 expected).
/// `BENCH_PROFILE_S=S` lets the settled replicas poll for S s before the runs, printing
/// their pids (for `perf record -p`).
async fn processes(o: &Opts, replicas: usize) {
    if support::postgres_admin_url().is_none() {
        println!(
            "fleet --replicas: PostgreSQL only; run LOOPWATCH_BENCH_STORE=postgres \
             scripts/with-postgres cargo bench --bench fleet -- --replicas {replicas}"
        );
        return;
    }
    let n_targets = o
        .value("--targets")
        .unwrap_or(if o.quick { 1_000 } else { 10_000 });
    let m = o.value("--per").unwrap_or(50);
    let window =
        Duration::from_secs(o.value("--window").unwrap_or(if o.quick { 4 } else { 10 }) as u64);
    support::header(
        "fleet, replicas as separate processes",
        &format!(
            "{} targets x {m} checkpoints, listings unchanged; the release binary as {replicas} \
             replica process(es) then 1, each with {CONCURRENCY} polls in flight and \
             poll.interval 1 ms (as fast as it can); lease_ttl {}s; simulator in a child \
             process; {} s windows. Floor: the same GETs from as many client processes as \
             replicas, {CONCURRENCY} in flight each, body discarded, replicas stopped.",
            n(n_targets as f64),
            LEASE_TTL.as_secs(),
            window.as_secs()
        ),
        o,
    );
    support::store_header().await;
    let mut sim = SimChild::start(n_targets, m, "COMPLETE");
    let db = BenchDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let poll = format!(
        "interval = \"1ms\"\nsyncing_interval = \"1ms\"\njitter = 0.0\nconcurrency = {CONCURRENCY}"
    );
    let store = format!("lease_ttl = \"{}s\"", LEASE_TTL.as_secs());
    let config =
        support::procs::write_config(dir.path(), &sim.url, &db.url, &poll, &store, n_targets, "");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let postmaster = support::procs::pg_postmaster(&pool).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("loopwatch-bench")
        .build()
        .unwrap();
    let targets: Vec<String> = (0..n_targets).map(run_id).collect();
    let mut counts = vec![replicas];
    if replicas != 1 {
        counts.push(1);
    }
    let mut modes = Vec::new();
    let mut w = Watched {
        sim: &mut sim,
        pool: &pool,
        postmaster,
    };
    for (i, &count) in counts.iter().enumerate() {
        modes.push(
            mode(
                o,
                count,
                i == 0,
                &config,
                dir.path(),
                &mut w,
                &http,
                &targets,
                window,
            )
            .await,
        );
    }
    pool.close().await;
    db.drop_db().await;
    report(&modes, n_targets, window);
}

fn report(modes: &[Mode], targets: usize, window: Duration) {
    println!("### polls/s beside the GET floor (medians of the windows)");
    println!();
    let rows: Vec<Vec<String>> = modes
        .iter()
        .map(|md| {
            let (lw, fl) = (medw(&md.lw, Window::rate), medw(&md.floor, Window::rate));
            let ratios: Vec<f64> = md
                .lw
                .iter()
                .zip(&md.floor)
                .map(|(a, b)| a.rate() / b.rate())
                .collect();
            vec![
                md.replicas.to_string(),
                (md.replicas * CONCURRENCY).to_string(),
                n(lw),
                n(fl),
                ratio(lw, fl),
                ratios
                    .iter()
                    .map(|r| format!("{r:.2}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{:.0}", medw(&md.lw, |w| w.per_poll_us(w.replicas_cpu()))),
                format!("{:.0}", medw(&md.floor, |w| w.per_poll_us(w.floor_cpu))),
                format!(
                    "{:.0} / {:.0}",
                    medw(&md.lw, |w| w.per_poll_us(w.sim_cpu)),
                    medw(&md.floor, |w| w.per_poll_us(w.sim_cpu))
                ),
                ratio(
                    medw(&md.floor, |w| w.per_poll_us(w.total_cpu())),
                    medw(&md.lw, |w| w.per_poll_us(w.total_cpu())),
                ),
                format!("{:?}", md.split),
                format!(
                    "{:.1}{}",
                    md.start_s,
                    if md.fresh { " (baseline)" } else { "" }
                ),
            ]
        })
        .collect();
    support::table(
        &[
            "replicas",
            "polls in flight",
            "polls/s",
            "GET floor/s",
            "ratio",
            "ratio of each run",
            "replicas' CPU µs/poll",
            "floor clients' CPU µs/GET",
            "simulator CPU µs/request (replicas / floor)",
            "CPU-cost ratio: CPU per GET of the floor / per poll of the replicas (all processes)",
            "targets owned",
            "start to settled (s)",
        ],
        &rows,
    );

    println!(
        "### database writes (the bench's own marks excluded): during the replicas' {} s windows, and over the whole measured period (floors, when the replicas are stopped, and resumes included)",
        window.as_secs()
    );
    println!();
    let rows: Vec<Vec<String>> = modes
        .iter()
        .map(|md| {
            let cycles = medw(&md.lw, |w| w.requests as f64) / targets as f64;
            let wall: f64 = md.lw.iter().map(|w| w.wall).sum();
            let xids: i64 = md.lw.iter().map(|w| w.xids).sum();
            let wal: i64 = md.lw.iter().map(|w| w.wal).sum();
            let floor_xids: i64 = md.floor.iter().map(|w| w.xids).sum();
            let round = (LEASE_TTL / 3).as_secs_f64();
            let (lease, poll): (Vec<_>, Vec<_>) = md
                .rows
                .iter()
                .partition(|(t, _)| t == "replicas" || t == "shard_leases" || t == "leases");
            let poll_rows: i64 = poll.iter().map(|(_, k)| k).sum();
            let lease_rows: i64 = lease.iter().map(|(_, k)| k).sum();
            let written: Vec<String> = md
                .rows
                .iter()
                .filter(|(_, k)| *k > 0)
                .map(|(t, k)| format!("{t} {k}"))
                .collect();
            vec![
                md.replicas.to_string(),
                format!("{cycles:.1}"),
                format!(
                    "{poll_rows} ({:.2} per cycle)",
                    poll_rows as f64 / (cycles * md.lw.len() as f64)
                ),
                format!("{xids} in {wall:.0} s = {:.2}/s", xids as f64 / wall),
                format!("{wal} ({:.0}/s)", wal as f64 / wall),
                format!(
                    "{} in {:.0} s = {:.2}/s ({} while the floor ran, {} in the resumes)",
                    md.period_xids,
                    md.period_s,
                    md.period_xids as f64 / md.period_s,
                    floor_xids,
                    md.period_xids - xids - floor_xids
                ),
                format!("{:.2}/s", md.replicas as f64 / round),
                format!(
                    "{lease_rows} ({})",
                    if written.is_empty() {
                        "none".into()
                    } else {
                        written.join(", ")
                    }
                ),
                format!("{} / {}", md.checkpoints, md.autovacuums),
            ]
        })
        .collect();
    support::table(
        &[
            "replicas",
            "cycles of the fleet per window",
            "rows of poll tables written, whole period",
            "transactions that wrote, windows",
            "WAL bytes, windows",
            "transactions that wrote, whole period",
            "lease heartbeats expected (replicas / (lease_ttl/3))",
            "rows of lease tables last written, whole period (tables written)",
            "server checkpoints / autovacuum+autoanalyze runs, whole period",
        ],
        &rows,
    );

    println!(
        "### CPU seconds per process over a {} s window (medians; the machine has {} cores = {} CPU s per window)",
        window.as_secs(),
        cores(),
        n(cores() as f64 * window.as_secs_f64())
    );
    println!();
    let mut rows = Vec::new();
    for md in modes {
        let per: Vec<String> = (0..md.replicas)
            .map(|i| format!("{:.2}", medw(&md.lw, |w| w.replicas_cpu[i])))
            .collect();
        let loads = |ws: &[Window]| {
            ws.iter()
                .map(|w| w.load.clone())
                .collect::<Vec<_>>()
                .join("; ")
        };
        rows.push(vec![
            format!("{} replica(s)", md.replicas),
            per.join(" + "),
            "-".into(),
            format!("{:.2}", medw(&md.lw, |w| w.sim_cpu)),
            format!("{:.2}", medw(&md.lw, |w| w.pg_cpu)),
            format!("{:.2}", medw(&md.lw, |w| w.bench_cpu)),
            format!("{:.2}", medw(&md.lw, Window::total_cpu)),
            loads(&md.lw),
        ]);
        rows.push(vec![
            format!(
                "floor, {} client process(es) x {CONCURRENCY} in flight",
                md.replicas
            ),
            "-".into(),
            format!("{:.2}", medw(&md.floor, |w| w.floor_cpu)),
            format!("{:.2}", medw(&md.floor, |w| w.sim_cpu)),
            format!("{:.2}", medw(&md.floor, |w| w.pg_cpu)),
            format!("{:.2}", medw(&md.floor, |w| w.bench_cpu)),
            format!("{:.2}", medw(&md.floor, Window::total_cpu)),
            loads(&md.floor),
        ]);
    }
    support::table(
        &[
            "window",
            "replicas",
            "floor clients",
            "simulator",
            "PostgreSQL",
            "bench",
            "total",
            "load average at each window's end",
        ],
        &rows,
    );
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
