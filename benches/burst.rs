//! burst: E completions detected in one cycle, then delivered.
//!
//! T targets x K checkpoints, all SYNCING and baselined; then the simulated API marks every
//! one COMPLETE and loopwatch polls each target once: E `completed` events and E delivery
//! rows are committed (events committed per second; the same cycle's GETs with the body
//! discarded are the fetch floor). Then one webhook sink (signed, `concurrency` 16)
//! delivers them to a minimal local receiver that answers 204 (deliveries per second,
//! until every outcome is recorded). Floor: the same E bodies POSTed by a bare client,
//! unsigned, no store, same concurrency, same receiver.
//!
//! On PostgreSQL (`LOOPWATCH_BENCH_STORE=postgres LOOPWATCH_PG_FSYNC=on scripts/with-postgres
//! cargo bench --bench burst`, a fresh database per run) the commit also has a database
//! floor: the rows the cycle wrote (each target's checkpoints, events and deliveries),
//! inserted again into empty copies of their tables, one transaction per target of one
//! `INSERT ... SELECT * FROM unnest(...)` per table, as many in flight as the store's pool.
//!
//! `cargo bench --bench burst [-- --quick]` (`--events-only` stops after the cycle, for
//! profiling the commit path alone).

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loopwatch::app::App;
use loopwatch::model::TargetState;
use loopwatch::sim::{CHECKPOINTS_PATH, SimApi};
use support::{API_KEY, BenchDb, Opts, Receiver, median, n, ratio, run_id};
use tokio_util::sync::CancellationToken;

const POLLS_IN_FLIGHT: usize = 16;
const SENDS_IN_FLIGHT: usize = 16;
/// The PostgreSQL store's pool size (`PgStore`): the database floor's connections.
const PG_CONNECTIONS: u32 = 8;

fn main() {
    let Some(o) = support::opts() else { return };
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
}

struct Run {
    events: usize,
    commit_s: f64,
    /// PostgreSQL: the same rows by bare `INSERT ... SELECT unnest(...)` (NaN on SQLite).
    db_floor_s: f64,
    fetch_floor_s: f64,
    deliver_s: f64,
    post_floor_s: f64,
}

async fn one(targets: usize, per: usize, receiver: &Receiver, events_only: bool) -> Run {
    let sim = SimApi::start(Some(API_KEY.into())).await.unwrap();
    let h = sim.handle();
    let mut ids = Vec::new();
    for i in 0..targets {
        ids.extend(h.add_many(&run_id(i), per, Some("SYNCING")));
    }
    let db = BenchDb::new().await;
    let poll = format!("interval = \"60s\"\njitter = 0.0\nconcurrency = {POLLS_IN_FLIGHT}");
    let sinks = support::completed_sink(&receiver.url, SENDS_IN_FLIGHT);
    let cfg = support::config(&sim.base_url(), &db.url, &poll, targets, &sinks);
    let app = App::build(cfg, false).await.unwrap();
    let cfg = app.config().clone();
    let mut states: Vec<TargetState> = Vec::new();
    for t in &cfg.targets {
        states.push(app.store.load_target(&t.name).await.unwrap());
    }
    let poller = app.poller.clone();
    let cycle = async |states: &mut Vec<TargetState>| -> usize {
        let events = std::sync::atomic::AtomicUsize::new(0);
        futures_util::stream::iter(cfg.targets.iter().zip(states.iter_mut()))
            .for_each_concurrent(POLLS_IN_FLIGHT, |(t, s)| {
                let (poller, events) = (&poller, &events);
                async move {
                    let r = poller.poll_target(t, s, false, None).await.expect("poll");
                    events.fetch_add(r.events.len(), std::sync::atomic::Ordering::Relaxed);
                }
            })
            .await;
        events.into_inner()
    };
    assert_eq!(cycle(&mut states).await, 0, "the baseline is silent");

    h.set_status_many(&ids, Some("COMPLETE"));
    if std::env::var("BENCH_PAUSE").is_ok_and(|v| v == "commit") {
        // Time to attach a profiler to the commit.
        eprintln!("burst: pid {} commits in 3 s", std::process::id());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let t0 = Instant::now();
    let events = cycle(&mut states).await;
    let commit_s = t0.elapsed().as_secs_f64();
    assert_eq!(events, targets * per, "one completed per checkpoint");
    let db_floor_s = if db.is_postgres() {
        let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
        db_floor(&db.url, &names).await
    } else {
        f64::NAN
    };
    if events_only {
        drop(app);
        db.drop_db().await;
        return Run {
            events,
            commit_s,
            db_floor_s,
            fetch_floor_s: f64::NAN,
            deliver_s: f64::NAN,
            post_floor_s: f64::NAN,
        };
    }

    // Fetch floor: the same GETs (now cached by the simulator either way).
    let http = reqwest::Client::new();
    let endpoint = format!("{}{CHECKPOINTS_PATH}", sim.base_url());
    let t0 = Instant::now();
    futures_util::stream::iter(cfg.targets.iter())
        .for_each_concurrent(POLLS_IN_FLIGHT, |t| {
            let (http, endpoint) = (&http, &endpoint);
            async move {
                let mut r = http
                    .get(format!("{endpoint}?run_id={}", t.filter.value()))
                    .header("authorization", format!("Bearer {API_KEY}"))
                    .send()
                    .await
                    .unwrap();
                while let Some(c) = r.chunk().await.unwrap() {
                    std::hint::black_box(c);
                }
            }
        })
        .await;
    let fetch_floor_s = t0.elapsed().as_secs_f64();

    // POST floor: the stored bodies, unsigned, no store.
    let bodies: Vec<String> = app
        .store
        .events(None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.body)
        .collect();
    assert_eq!(bodies.len(), events);
    let c0 = receiver.count();
    let t0 = Instant::now();
    futures_util::stream::iter(bodies)
        .for_each_concurrent(SENDS_IN_FLIGHT, |b| {
            let (http, url) = (&http, &receiver.url);
            async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(b)
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        })
        .await;
    let post_floor_s = t0.elapsed().as_secs_f64();
    assert_eq!(receiver.count() - c0, events);

    // loopwatch: the sink worker, until every delivery is recorded as delivered.
    if std::env::var("BENCH_PAUSE").is_ok_and(|v| v == "deliver") {
        eprintln!("burst: pid {} delivers in 3 s", std::process::id());
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let token = CancellationToken::new();
    let sink = app.outbox.sinks()[0].clone();
    let beat = app.health.heartbeat("sink bench", Duration::from_secs(600));
    let c0 = receiver.count();
    let t0 = Instant::now();
    let worker = tokio::spawn({
        let (outbox, token) = (app.outbox.clone(), token.clone());
        async move {
            outbox
                .run_sink(sink, token, Duration::from_secs(5), beat)
                .await
        }
    });
    let store = app.store.clone();
    // The receiver's count first: the backlog query scans the outbox.
    support::until(
        Duration::from_secs(600),
        Duration::from_millis(2),
        async || receiver.count() - c0 >= events,
    )
    .await;
    let done = support::until(
        Duration::from_secs(600),
        Duration::from_millis(2),
        async || {
            store
                .backlog()
                .await
                .unwrap()
                .iter()
                .all(|b| b.pending == 0)
        },
    )
    .await;
    let deliver_s = t0.elapsed().as_secs_f64();
    assert!(done, "deliveries did not finish");
    token.cancel();
    worker.await.unwrap();
    drop(store);
    drop(app);
    db.drop_db().await;
    Run {
        events,
        commit_s,
        db_floor_s,
        fetch_floor_s,
        deliver_s,
        post_floor_s,
    }
}

async fn bench(o: Opts) {
    let (targets, per) = if o.quick { (100, 100) } else { (1_000, 100) };
    let (targets, per) = (
        o.value("--targets").unwrap_or(targets),
        o.value("--per").unwrap_or(per),
    );
    support::header(
        "burst",
        &format!(
            "{} targets x {per} checkpoints go SYNCING -> COMPLETE at once; one cycle \
             ({POLLS_IN_FLIGHT} polls in flight) then one signed webhook sink \
             ({SENDS_IN_FLIGHT} in flight) to a local receiver answering 204",
            n(targets as f64)
        ),
        &o,
    );
    support::store_header().await;
    let receiver = support::receiver().start().await.unwrap();
    let events_only = std::env::args().any(|a| a == "--events-only");
    let mut runs = Vec::new();
    for i in 0..o.runs {
        eprintln!("burst: run {}/{} ...", i + 1, o.runs);
        runs.push(one(targets, per, &receiver, events_only).await);
    }
    let e = runs[0].events as f64;
    let med = |f: fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let committed = e / med(|r| r.commit_s);
    let db_floor = e / med(|r| r.db_floor_s);
    let fetch = targets as f64 / med(|r| r.fetch_floor_s);
    let polls = targets as f64 / med(|r| r.commit_s);
    let delivered = e / med(|r| r.deliver_s);
    let posted = e / med(|r| r.post_floor_s);
    println!("### burst of {} completions", n(e));
    println!();
    support::table(
        &["figure", "loopwatch", "floor", "ratio"],
        &[
            vec![
                "events committed/s (fetch, decode, diff, commit state + events + outbox)".into(),
                n(committed),
                String::new(),
                String::new(),
            ],
            vec![
                "events committed/s vs. the same rows by bare INSERT ... SELECT unnest(...), \
                 one transaction per target (PostgreSQL)"
                    .into(),
                n(committed),
                n(db_floor),
                if db_floor.is_finite() {
                    ratio(committed, db_floor)
                } else {
                    String::new()
                },
            ],
            vec![
                "polls/s in that cycle vs. the same GETs, body discarded".into(),
                n(polls),
                n(fetch),
                ratio(polls, fetch),
            ],
            vec![
                "webhooks delivered/s (signed, outcome recorded) vs. the same POSTs unsigned, no store".into(),
                n(delivered),
                n(posted),
                ratio(delivered, posted),
            ],
        ],
    );
}

/// The database floor of the commit (PostgreSQL): seconds to insert the rows this cycle
/// wrote (each target's checkpoints, events and deliveries) again, into empty copies of
/// their tables (`LIKE ... INCLUDING ALL`: the same columns, defaults and indexes; no
/// foreign keys, no conflicts), one transaction per target of one
/// `INSERT ... SELECT * FROM unnest(...)` per table, [`PG_CONNECTIONS`] in flight. Every
/// column travels as a text array cast to its type, as loopwatch's binds are parsed by the
/// server too. The rows are read before the clock starts.
async fn db_floor(url: &str, targets: &[String]) -> f64 {
    use sqlx::{AssertSqlSafe, Row};
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(PG_CONNECTIONS)
        .connect(url)
        .await
        .unwrap();
    let tables = [
        ("checkpoints", "target = $1"),
        ("events", "target = $1"),
        (
            "deliveries",
            "event_seq IN (SELECT seq FROM events WHERE target = $1)",
        ),
    ];
    let mut plans = Vec::new();
    for (table, filter) in tables {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE {table}_floor (LIKE {table} INCLUDING ALL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        let cols: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, udt_name::text FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap();
        let names: Vec<String> = cols.iter().map(|(c, _)| format!("\"{c}\"")).collect();
        let select = format!(
            "SELECT {} FROM {table} WHERE {filter}",
            names
                .iter()
                .map(|c| format!("{c}::text"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let arrays: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, (_, ty))| format!("${}::text[]::{ty}[]", i + 1))
            .collect();
        let insert = format!(
            "INSERT INTO {table}_floor ({}) SELECT * FROM unnest({})",
            names.join(", "),
            arrays.join(", ")
        );
        plans.push((select, insert, cols.len()));
    }
    // Per target, per table, per column: the values as text.
    let mut data: Vec<Vec<Vec<Vec<Option<String>>>>> = Vec::with_capacity(targets.len());
    for t in targets {
        let mut per_table = Vec::new();
        for (select, _, k) in &plans {
            let rows = sqlx::query(AssertSqlSafe(select.as_str()))
                .bind(t)
                .fetch_all(&pool)
                .await
                .unwrap();
            let mut cols: Vec<Vec<Option<String>>> = vec![Vec::with_capacity(rows.len()); *k];
            for r in &rows {
                for (i, col) in cols.iter_mut().enumerate() {
                    col.push(r.try_get::<Option<String>, _>(i).unwrap());
                }
            }
            per_table.push(cols);
        }
        data.push(per_table);
    }
    let t0 = Instant::now();
    futures_util::stream::iter(data)
        .for_each_concurrent(PG_CONNECTIONS as usize, |per_table| {
            let (pool, plans) = (&pool, &plans);
            async move {
                let mut tx = pool.begin().await.unwrap();
                for ((_, insert, _), cols) in plans.iter().zip(per_table) {
                    let mut q = sqlx::query(AssertSqlSafe(insert.as_str()));
                    for c in cols {
                        q = q.bind(c);
                    }
                    q.execute(&mut *tx).await.unwrap();
                }
                tx.commit().await.unwrap();
            }
        })
        .await;
    let s = t0.elapsed().as_secs_f64();
    pool.close().await;
    s
}
