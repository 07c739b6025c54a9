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
//! The commit has a database floor: the rows the cycle wrote (each target's checkpoints,
//! events and deliveries), inserted again into empty copies of their tables, one
//! transaction per target of one bare insert per table. On SQLite a multi-row `INSERT ...
//! VALUES` into a fresh file with the store's settings, on one connection; on PostgreSQL
//! (`LOOPWATCH_BENCH_STORE=postgres LOOPWATCH_PG_FSYNC=on scripts/with-postgres cargo bench
//! --bench burst`, a fresh database per run) `INSERT ... SELECT * FROM unnest(...)`, as
//! many in flight as the store's pool.
//!
//! `cargo bench --bench burst [-- --quick]` (`--events-only` stops after the cycle, for
//! profiling the commit path alone).
//!
//! `-- --replicas N` (PostgreSQL only): the same burst detected and delivered by the real
//! release binary as N replica processes, then as 1; see [`processes`].

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use loopwatch::app::App;
use loopwatch::model::TargetState;
use loopwatch::sim::{CHECKPOINTS_PATH, SimApi};
use support::procs::{Replica, SimChild};
use support::{API_KEY, BenchDb, Opts, Receiver, median, n, ratio, run_id};
use tokio_util::sync::CancellationToken;

const POLLS_IN_FLIGHT: usize = 16;
const SENDS_IN_FLIGHT: usize = 16;
/// The PostgreSQL store's pool size (`PgStore`): the database floor's connections.
const PG_CONNECTIONS: u32 = 8;

fn main() {
    let Some(o) = support::opts() else { return };
    if support::procs::child(&o) {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
}

struct Run {
    events: usize,
    commit_s: f64,
    /// The same rows by bare inserts, a transaction per target.
    db_floor_s: f64,
    /// SQLite: the same rows by bare inserts in one transaction (NaN on PostgreSQL).
    one_tx_floor_s: f64,
    fetch_floor_s: f64,
    deliver_s: f64,
    post_floor_s: f64,
    /// The same POSTs, an outcome write per slot-full ([`recorded_post_floor`]).
    recorded_floor_s: f64,
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
    let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
    // SQLite also: the same rows in one transaction, every target's commit grouped into one.
    let (db_floor_s, one_tx_floor_s) = if db.is_postgres() {
        let s = db_floor(&db.url, &names, PG_CONNECTIONS as usize).await;
        (s, f64::NAN)
    } else {
        let s = sqlite_db_floors(&db, &names, &[1, names.len()]).await;
        (s[0], s[1])
    };
    if events_only {
        drop(app);
        db.drop_db().await;
        return Run {
            events,
            commit_s,
            db_floor_s,
            one_tx_floor_s,
            fetch_floor_s: f64::NAN,
            deliver_s: f64::NAN,
            post_floor_s: f64::NAN,
            recorded_floor_s: f64::NAN,
        };
    }

    // Fetch floor: the same GETs (now cached by the simulator either way).
    let http = reqwest::Client::new();
    let names: Vec<String> = cfg
        .targets
        .iter()
        .map(|t| t.filter.value().to_string())
        .collect();
    let fetch_floor_s = fetch_floor(&http, &sim.base_url(), &names, POLLS_IN_FLIGHT).await;

    // POST floor: the stored bodies, unsigned, no store.
    let bodies = support::stored_bodies(&db.url).await;
    assert_eq!(bodies.len(), events);
    let recorded_floor_s =
        recorded_post_floor(&http, receiver, &bodies, 1, SENDS_IN_FLIGHT, &db).await;
    let post_floor_s = post_floor(&http, receiver, bodies, SENDS_IN_FLIGHT).await;

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
        one_tx_floor_s,
        fetch_floor_s,
        deliver_s,
        post_floor_s,
        recorded_floor_s,
    }
}

async fn bench(o: Opts) {
    if let Some(replicas) = o.value("--replicas") {
        return processes(&o, replicas).await;
    }
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
    let one_tx_floor = e / med(|r| r.one_tx_floor_s);
    let fetch = targets as f64 / med(|r| r.fetch_floor_s);
    let polls = targets as f64 / med(|r| r.commit_s);
    let delivered = e / med(|r| r.deliver_s);
    let posted = e / med(|r| r.post_floor_s);
    let recorded = e / med(|r| r.recorded_floor_s);
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
                "events committed/s vs. the same rows by bare inserts, one transaction per \
                 target (PostgreSQL: INSERT ... SELECT unnest(...); SQLite: multi-row \
                 INSERT ... VALUES)"
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
                "events committed/s vs. the same rows by bare inserts, all in one transaction \
                 (SQLite: every target's commit grouped into one)"
                    .into(),
                n(committed),
                n(one_tx_floor),
                if one_tx_floor.is_finite() {
                    ratio(committed, one_tx_floor)
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
            vec![
                "webhooks delivered/s vs. the same POSTs with an outcome write (as loopwatch commits it) per \
                 slot-full (the sink's bound: at most `concurrency` attempts unrecorded)"
                    .into(),
                n(delivered),
                n(recorded),
                ratio(delivered, recorded),
            ],
        ],
    );
}

/// The tables a poll's commit writes, with which of their rows one target's commit wrote
/// (`$1` its name): what the database floors insert again.
const COMMIT_TABLES: [(&str, &str); 3] = [
    ("checkpoints", "target = $1"),
    ("events", "target = $1"),
    (
        "deliveries",
        "event_seq IN (SELECT seq FROM events WHERE target = $1)",
    ),
];

/// The database floor of the commit (PostgreSQL): seconds to insert the rows this cycle
/// wrote (each target's checkpoints, events and deliveries) again, into empty copies of
/// their tables (`LIKE ... INCLUDING ALL`: the same columns, defaults and indexes; no
/// foreign keys, no conflicts), one transaction per target of one
/// `INSERT ... SELECT * FROM unnest(...)` per table, `in_flight` at once. Every
/// column travels as a text array cast to its type, as loopwatch's binds are parsed by the
/// server too. The rows are read before the clock starts.
async fn db_floor(url: &str, targets: &[String], in_flight: usize) -> f64 {
    use sqlx::{AssertSqlSafe, Row};
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(in_flight as u32)
        .connect(url)
        .await
        .unwrap();
    let mut plans = Vec::new();
    for (table, filter) in COMMIT_TABLES {
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
        .for_each_concurrent(in_flight, |per_table| {
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

/// The database floors of the commit (SQLite): seconds to insert the rows this cycle
/// wrote (each target's checkpoints, events and deliveries) again, once for each of
/// `per_commit` (targets per transaction: 1 as the cycle commits; more groups them), each
/// time into a fresh file holding the same tables and indexes (their DDL copied from the
/// state file), opened with the store's settings ([`loopwatch::store::sqlite::tuned`])
/// but foreign keys off, as on the PostgreSQL floor: one multi-row `INSERT ... VALUES` of
/// bound values per table and target, on one connection (SQLite has one writer). The rows
/// are read once, before any clock starts. Like the PostgreSQL floor, it inserts into
/// empty tables where the cycle updated the checkpoints it had baselined.
async fn sqlite_db_floors(db: &BenchDb, targets: &[String], per_commit: &[usize]) -> Vec<f64> {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite};
    /// One stored value, as SQLite typed it.
    enum V {
        Null,
        Int(i64),
        Real(f64),
        Text(String),
        Blob(Vec<u8>),
    }
    let src = SqlitePoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    // The tables' DDL, each table before its indexes ('table' > 'index').
    let mut ddl: Vec<String> = Vec::new();
    let mut plans = Vec::new();
    for (table, filter) in COMMIT_TABLES {
        let statements: Vec<(String,)> = sqlx::query_as(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('table', 'index')
             AND sql IS NOT NULL ORDER BY type DESC",
        )
        .bind(table)
        .fetch_all(&src)
        .await
        .unwrap();
        ddl.extend(statements.into_iter().map(|(sql,)| sql));
        let cols: Vec<(String,)> =
            sqlx::query_as("SELECT name FROM pragma_table_info(?) ORDER BY cid")
                .bind(table)
                .fetch_all(&src)
                .await
                .unwrap();
        let names: Vec<String> = cols.into_iter().map(|(c,)| format!("\"{c}\"")).collect();
        let select = format!(
            "SELECT {} FROM {table} WHERE {filter}",
            names
                .iter()
                .map(|c| format!("typeof({c}), {c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        plans.push((table, names, select));
    }
    // Per target, per table: the rows.
    let mut data: Vec<Vec<Vec<Vec<V>>>> = Vec::with_capacity(targets.len());
    for t in targets {
        let mut per_table = Vec::new();
        for (_, names, select) in &plans {
            let rows = sqlx::query(AssertSqlSafe(select.as_str()))
                .bind(t)
                .fetch_all(&src)
                .await
                .unwrap();
            let rows: Vec<Vec<V>> = rows
                .iter()
                .map(|r| {
                    (0..names.len())
                        .map(|i| match r.get::<String, _>(2 * i).as_str() {
                            "null" => V::Null,
                            "integer" => V::Int(r.get_unchecked(2 * i + 1)),
                            "real" => V::Real(r.get_unchecked(2 * i + 1)),
                            "text" => V::Text(r.get_unchecked(2 * i + 1)),
                            _ => V::Blob(r.get_unchecked(2 * i + 1)),
                        })
                        .collect()
                })
                .collect();
            per_table.push(rows);
        }
        data.push(per_table);
    }
    src.close().await;
    let read: Vec<usize> = (0..plans.len())
        .map(|k| data.iter().map(|t| t[k].len()).sum())
        .collect();
    let mut seconds = Vec::new();
    for &per_commit in per_commit {
        let opts = loopwatch::store::sqlite::tuned(SqliteConnectOptions::new())
            .filename(db.dir.path().join(format!("commit-floor-{per_commit}.db")))
            .create_if_missing(true)
            .foreign_keys(false);
        let floor = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        for sql in &ddl {
            sqlx::raw_sql(AssertSqlSafe(sql.as_str()))
                .execute(&floor)
                .await
                .unwrap();
        }
        let t0 = Instant::now();
        for commit in data.chunks(per_commit) {
            let mut tx = floor.begin().await.unwrap();
            for ((table, names, _), rows) in commit
                .iter()
                .flat_map(|per_table| plans.iter().zip(per_table))
            {
                // Within SQLite's 32,766 bound values per statement.
                for chunk in rows.chunks(32_766 / names.len()) {
                    let mut q = QueryBuilder::<Sqlite>::new(format!(
                        "INSERT INTO {table} ({}) ",
                        names.join(", ")
                    ));
                    q.push_values(chunk, |mut b, row| {
                        for v in row {
                            match v {
                                V::Null => b.push_bind(None::<i64>),
                                V::Int(i) => b.push_bind(*i),
                                V::Real(f) => b.push_bind(*f),
                                V::Text(s) => b.push_bind(s.clone()),
                                V::Blob(x) => b.push_bind(x.clone()),
                            };
                        }
                    });
                    q.build().execute(&mut *tx).await.unwrap();
                }
            }
            tx.commit().await.unwrap();
        }
        seconds.push(t0.elapsed().as_secs_f64());
        for ((table, ..), n) in plans.iter().zip(&read) {
            let (written,): (i64,) =
                sqlx::query_as(AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
                    .fetch_one(&floor)
                    .await
                    .unwrap();
            assert_eq!(
                written as usize, *n,
                "{table}: every row read written again"
            );
        }
        floor.close().await;
    }
    seconds
}

/// The fetch floor: one GET of each target's listing, `in_flight` at once, body read and
/// discarded; seconds.
async fn fetch_floor(
    http: &reqwest::Client,
    api: &str,
    run_ids: &[String],
    in_flight: usize,
) -> f64 {
    let endpoint = format!("{api}{CHECKPOINTS_PATH}");
    let t0 = Instant::now();
    futures_util::stream::iter(run_ids)
        .for_each_concurrent(in_flight, |run_id| {
            let endpoint = &endpoint;
            async move {
                let mut r = http
                    .get(format!("{endpoint}?run_id={run_id}"))
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
    t0.elapsed().as_secs_f64()
}

/// The POST floor: `bodies` POSTed unsigned to `receiver`, `in_flight` at once, no store;
/// seconds.
async fn post_floor(
    http: &reqwest::Client,
    receiver: &Receiver,
    bodies: Vec<String>,
    in_flight: usize,
) -> f64 {
    let expected = bodies.len();
    let c0 = receiver.count();
    let t0 = Instant::now();
    futures_util::stream::iter(bodies)
        .for_each_concurrent(in_flight, |b| {
            let url = &receiver.url;
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
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(receiver.count() - c0, expected);
    s
}

/// The POST floor under loopwatch's durability rule: `bodies` POSTed unsigned by `lanes`
/// workers of `slots` each, a slot free again only once a write recording its
/// outcome has committed, one write per slot-full (`UPDATE ... WHERE id = ANY(...)` /
/// `IN (...)` of `slots` rows, on a table of its own in `db`, committed as loopwatch
/// commits a webhook sink's outcomes: PostgreSQL with `synchronous_commit = off`, SQLite
/// with `synchronous = NORMAL`, neither waiting for the disk).
/// What a sink may not beat without more than `slots` attempts unrecorded at once (the
/// bound on repeats after a crash); no signing, claims or attempts log. Seconds.
async fn recorded_post_floor(
    http: &reqwest::Client,
    receiver: &Receiver,
    bodies: &[String],
    lanes: usize,
    slots: usize,
    db: &BenchDb,
) -> f64 {
    const CREATE: &str = "CREATE TABLE outcome_floor (id BIGINT PRIMARY KEY, status TEXT NOT NULL)";
    const FILL: &str = "INSERT INTO outcome_floor (id, status) SELECT value, 'pending' FROM (
        WITH RECURSIVE s(value) AS (SELECT CAST(0 AS BIGINT) UNION ALL
            SELECT value + 1 FROM s WHERE value + 1 < CAST($1 AS BIGINT))
        SELECT value FROM s) AS ids";
    enum Pool {
        Pg(sqlx::PgPool),
        Lite(sqlx::SqlitePool),
    }
    let n = bodies.len();
    let pool = if db.is_postgres() {
        // As loopwatch writes a webhook sink's outcomes: without waiting for the disk.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(lanes as u32)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET synchronous_commit = off")
                        .execute(conn)
                        .await?;
                    Ok(())
                })
            })
            .connect(&db.url)
            .await
            .unwrap();
        sqlx::raw_sql(CREATE).execute(&pool).await.unwrap();
        sqlx::query(FILL)
            .bind(n as i64)
            .execute(&pool)
            .await
            .unwrap();
        Pool::Pg(pool)
    } else {
        use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
        let opts = SqliteConnectOptions::new()
            .filename(db.dir.path().join("outcome-floor.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .unwrap();
        sqlx::raw_sql(CREATE).execute(&pool).await.unwrap();
        sqlx::query(FILL)
            .bind(n as i64)
            .execute(&pool)
            .await
            .unwrap();
        Pool::Lite(pool)
    };
    let per_lane = n.div_ceil(lanes.max(1)).max(1);
    let c0 = receiver.count();
    let t0 = Instant::now();
    futures_util::future::join_all(bodies.chunks(per_lane).enumerate().map(|(lane, own)| {
        let pool = &pool;
        async move {
            for (k, slot_full) in own.chunks(slots).enumerate() {
                futures_util::future::join_all(slot_full.iter().map(|b| async move {
                    let r = http
                        .post(&receiver.url)
                        .header("content-type", "application/json")
                        .body(b.clone())
                        .send()
                        .await
                        .unwrap();
                    assert!(r.status().is_success());
                }))
                .await;
                let first = (lane * per_lane + k * slots) as i64;
                let ids: Vec<i64> = (first..first + slot_full.len() as i64).collect();
                match pool {
                    Pool::Pg(p) => {
                        sqlx::query(
                            "UPDATE outcome_floor SET status = 'delivered' WHERE id = ANY($1)",
                        )
                        .bind(&ids)
                        .execute(p)
                        .await
                        .unwrap();
                    }
                    Pool::Lite(p) => {
                        sqlx::query(
                            "UPDATE outcome_floor SET status = 'delivered'
                             WHERE id IN (SELECT value FROM json_each($1))",
                        )
                        .bind(serde_json::to_string(&ids).unwrap())
                        .execute(p)
                        .await
                        .unwrap();
                    }
                }
            }
        }
    }))
    .await;
    let s = t0.elapsed().as_secs_f64();
    assert_eq!(receiver.count() - c0, n);
    s
}

/// CPU seconds so far of each replica, the simulator, PostgreSQL (the postmaster's tree)
/// and this process (the receiver, and the floors' clients).
#[derive(Clone, Default)]
struct Cpu {
    replicas: Vec<f64>,
    sim: f64,
    pg: f64,
    bench: f64,
}

impl Cpu {
    fn now(reps: &[Replica], sim: &SimChild, postmaster: Option<u32>) -> Cpu {
        Cpu {
            replicas: reps.iter().map(Replica::cpu).collect(),
            sim: support::cpu_seconds(Some(sim.pid())),
            pg: postmaster.map_or(f64::NAN, support::procs::cpu_tree),
            bench: support::cpu_seconds(None),
        }
    }

    fn since(&self, before: &Cpu) -> Cpu {
        Cpu {
            replicas: self
                .replicas
                .iter()
                .zip(&before.replicas)
                .map(|(a, b)| a - b)
                .collect(),
            sim: self.sim - before.sim,
            pg: self.pg - before.pg,
            bench: self.bench - before.bench,
        }
    }

    fn replicas_sum(&self) -> f64 {
        self.replicas.iter().sum()
    }

    fn total(&self) -> f64 {
        self.replicas_sum() + self.sim + self.pg + self.bench
    }
}

/// The database's own counters (`pg_stat_database`, flushed by each backend at most a
/// second after its transaction, at once when it exits): transactions committed, rows
/// returned by scans, rows fetched by index, rows written.
#[derive(Clone, Default)]
struct DbWork {
    commits: i64,
    returned: i64,
    fetched: i64,
    written: i64,
    /// Per index (`idx NAME`) and per table's sequential scans (`seq TABLE`): (scans,
    /// rows read).
    scans: Vec<(String, i64, i64)>,
}

impl DbWork {
    async fn now(pool: &sqlx::PgPool) -> DbWork {
        let (commits, returned, fetched, written): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT xact_commit, tup_returned, tup_fetched, \
             tup_inserted + tup_updated + tup_deleted \
             FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        let scans: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT 'idx ' || indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes \
             UNION ALL SELECT 'seq ' || relname, seq_scan, seq_tup_read FROM pg_stat_user_tables \
             ORDER BY 1",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        DbWork {
            commits,
            returned,
            fetched,
            written,
            scans,
        }
    }

    fn since(&self, before: &DbWork) -> DbWork {
        let earlier = |name: &str| {
            before
                .scans
                .iter()
                .find(|(n, _, _)| n == name)
                .map_or((0, 0), |(_, k, r)| (*k, *r))
        };
        DbWork {
            commits: self.commits - before.commits,
            returned: self.returned - before.returned,
            fetched: self.fetched - before.fetched,
            written: self.written - before.written,
            scans: self
                .scans
                .iter()
                .map(|(n, k, r)| {
                    let (k0, r0) = earlier(n);
                    (n.clone(), k - k0, r - r0)
                })
                .collect(),
        }
    }

    /// The `top` scans that read the most rows, each as "NAME: rows read per event (scans
    /// per event)".
    fn heaviest(&self, events: usize, top: usize) -> String {
        let mut scans: Vec<(String, i64, i64)> = self
            .scans
            .iter()
            .filter(|(_, _, r)| *r > 0)
            .cloned()
            .collect();
        scans.sort_by_key(|(_, _, r)| std::cmp::Reverse(*r));
        scans
            .iter()
            .take(top)
            .map(|(n, k, r)| {
                format!(
                    "{n}: {:.1} ({:.3})",
                    *r as f64 / events as f64,
                    *k as f64 / events as f64
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// `scans` with `own` rows (the bench's counts of `events`) taken off `seq events`.
fn own_scans_off(scans: &[(String, i64, i64)], own: i64) -> Vec<(String, i64, i64)> {
    scans
        .iter()
        .map(|(n, k, r)| {
            let r = if n == "seq events" { r - own } else { *r };
            (n.clone(), *k, r)
        })
        .collect()
}

/// One burst on separate processes.
struct ProcRun {
    targets: usize,
    events: usize,
    /// Start of the replicas to settled: every target owned and baselined.
    start_s: f64,
    /// From the simulator's switch to COMPLETE: every event committed; the first webhook
    /// received; every outcome recorded.
    commit_s: f64,
    first_delivery_s: f64,
    deliver_s: f64,
    /// Webhooks received by the time every event was committed.
    delivered_at_commit: usize,
    db_floor_s: f64,
    fetch_floor_s: f64,
    post_floor_s: f64,
    recorded_floor_s: f64,
    cpu_commit: Cpu,
    cpu_drain: Cpu,
    /// Until the last commit (counters read then: up to a second of it may be missing,
    /// counted in the drain instead), and after it until every replica exited.
    db_commit: DbWork,
    db_drain: DbWork,
    load: String,
}

async fn scalar(pool: &sqlx::PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// One burst: `targets` x `per` SYNCING checkpoints watched by `count` replica processes
/// (fresh database, settled and baselined), switched to COMPLETE at once; timed until
/// every event is committed and every delivery's outcome recorded. Then, the replicas
/// stopped, the floors with `count` times the in-flight limits of one replica.
async fn one_process_run(targets: usize, per: usize, count: usize, receiver: &Receiver) -> ProcRun {
    let events = targets * per;
    let mut sim = SimChild::start(targets, per, "SYNCING");
    let db = BenchDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let poll = format!(
        "interval = \"60s\"\nsyncing_interval = \"1s\"\njitter = 0.0\nconcurrency = {POLLS_IN_FLIGHT}"
    );
    let sinks = support::completed_sink(&receiver.url, SENDS_IN_FLIGHT);
    let config = support::procs::write_config(
        dir.path(),
        &sim.url,
        &db.url,
        &poll,
        "lease_ttl = \"15s\"",
        targets,
        &sinks,
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&db.url)
        .await
        .unwrap();
    let postmaster = support::procs::pg_postmaster(&pool).await;
    let http = reqwest::Client::new();

    eprintln!("burst --replicas: starting {count} replica(s) ...");
    let t0 = Instant::now();
    let reps = support::procs::spawn_replicas(&config, count, dir.path()).await;
    support::procs::wait_settled(
        &http,
        &reps,
        targets,
        Duration::from_secs(5),
        Duration::from_secs(1800),
    )
    .await;
    let start_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        support::procs::count(&pool, "targets").await,
        targets as i64
    );
    assert_eq!(
        support::procs::count(&pool, "events").await,
        0,
        "the baseline is silent"
    );
    eprintln!("burst --replicas: {count} settled and baselined in {start_s:.1} s; the burst ...");

    let c0 = receiver.count();
    let cpu0 = Cpu::now(&reps, &sim, postmaster);
    let db0 = DbWork::now(&pool).await;
    sim.set_all("COMPLETE");
    let t0 = Instant::now();
    let (mut commit_s, mut first_delivery_s) = (None, None);
    let (mut delivered_at_commit, mut cpu_commit) = (0, Cpu::default());
    let mut db_commit = DbWork::default();
    // Rows of `events` the bench's own counts scanned.
    let mut own_scanned = 0;
    let deliver_s;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = receiver.count() - c0;
        if first_delivery_s.is_none() && got > 0 {
            first_delivery_s = Some(t0.elapsed().as_secs_f64());
        }
        // An index probe first; the count (a scan of `events`) only once the sequence is
        // there, with the figures of the commit read before it (its rows scanned are the
        // bench's, taken off the database's counters below).
        if commit_s.is_none()
            && scalar(&pool, "SELECT COALESCE(max(seq), 0) FROM events").await >= events as i64
        {
            let at = (
                t0.elapsed().as_secs_f64(),
                receiver.count() - c0,
                Cpu::now(&reps, &sim, postmaster).since(&cpu0),
                DbWork::now(&pool).await.since(&db0),
            );
            let counted = support::procs::count(&pool, "events").await;
            own_scanned += counted;
            if counted >= events as i64 {
                commit_s = Some(at.0);
                delivered_at_commit = at.1;
                cpu_commit = at.2;
                let earlier = own_scanned - counted;
                db_commit = DbWork {
                    returned: at.3.returned - earlier,
                    scans: own_scans_off(&at.3.scans, earlier),
                    ..at.3
                };
            }
        }
        if commit_s.is_some()
            && got >= events
            && scalar(
                &pool,
                "SELECT count(*) FROM deliveries WHERE status = 'pending'",
            )
            .await
                == 0
        {
            deliver_s = t0.elapsed().as_secs_f64();
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "burst not done in 1800 s: {got} delivered, committed: {commit_s:?}; {}:\n{}",
            reps[0].id,
            reps[0].log_tail()
        );
    }
    let cpu_all = Cpu::now(&reps, &sim, postmaster).since(&cpu0);
    let cpu_drain = cpu_all.since(&cpu_commit);
    let load = support::load();
    let commit_s = commit_s.unwrap();
    eprintln!(
        "burst --replicas {count}: {} events committed/s, {} delivered/s; floors ...",
        n(events as f64 / commit_s),
        n(events as f64 / deliver_s)
    );
    assert_eq!(receiver.count() - c0, events, "one webhook per event");
    for r in reps {
        r.stop().await;
    }
    // Each backend flushes its counters as it exits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let all = DbWork::now(&pool).await.since(&db0);
    let db_drain = DbWork {
        returned: all.returned - own_scanned,
        scans: own_scans_off(&all.scans, own_scanned),
        ..all
    }
    .since(&db_commit);

    let names: Vec<String> = (0..targets).map(run_id).collect();
    let db_floor_s = db_floor(&db.url, &names, PG_CONNECTIONS as usize * count).await;
    let fetch_floor_s = fetch_floor(&http, &sim.url, &names, POLLS_IN_FLIGHT * count).await;
    let bodies = support::stored_bodies(&db.url).await;
    assert_eq!(bodies.len(), events);
    let recorded_floor_s =
        recorded_post_floor(&http, receiver, &bodies, count, SENDS_IN_FLIGHT, &db).await;
    let post_floor_s = post_floor(&http, receiver, bodies, SENDS_IN_FLIGHT * count).await;
    pool.close().await;
    drop(sim);
    db.drop_db().await;
    ProcRun {
        targets,
        events,
        start_s,
        commit_s,
        first_delivery_s: first_delivery_s.unwrap_or(f64::NAN),
        deliver_s,
        delivered_at_commit,
        db_floor_s,
        fetch_floor_s,
        post_floor_s,
        recorded_floor_s,
        cpu_commit,
        cpu_drain,
        db_commit,
        db_drain,
        load,
    }
}

/// `--replicas N`: the burst (targets x per SYNCING checkpoints switched to COMPLETE at
/// once) detected, committed and delivered by the real binary as N separate replica
/// processes, then as 1, each on a fresh PostgreSQL database, with one signed webhook
/// sink (`concurrency` 16 per replica) to this process's receiver.
///
/// The replicas poll every target at `poll.syncing_interval` = 1 s while its checkpoints
/// are pending (`poll.concurrency` 16 each), so each detects its targets' completions
/// within a second of the switch; deliveries start with the first commits, as in the
/// daemon, so the two phases overlap. Figures, from the switch: events committed/s (every
/// `completed` event in `events`), polls/s of that cycle, webhooks delivered/s (every
/// delivery's outcome recorded), and the delivery rate after the last commit. Floors,
/// in the same run with the replicas stopped, each with N times one replica's in-flight
/// limit: the same rows by bare `INSERT ... SELECT unnest(...)` (8 connections per
/// replica, as loopwatch's pool), the same GETs (16 per replica), the same bodies POSTed
/// unsigned (16 per replica).
async fn processes(o: &Opts, replicas: usize) {
    if support::postgres_admin_url().is_none() {
        println!(
            "burst --replicas: PostgreSQL only; run LOOPWATCH_BENCH_STORE=postgres \
             scripts/with-postgres cargo bench --bench burst -- --replicas {replicas}"
        );
        return;
    }
    let (targets, per) = if o.quick { (100, 100) } else { (1_000, 100) };
    let (targets, per) = (
        o.value("--targets").unwrap_or(targets),
        o.value("--per").unwrap_or(per),
    );
    support::header(
        "burst, replicas as separate processes",
        &format!(
            "{} targets x {per} checkpoints go SYNCING -> COMPLETE at once, watched by the \
             release binary as {replicas} replica process(es) then 1 (each: {POLLS_IN_FLIGHT} \
             polls in flight, syncing_interval 1 s, one signed webhook sink with \
             {SENDS_IN_FLIGHT} in flight, to a receiver in this process answering 204); \
             a fresh database per run; floors x replicas in flight, replicas stopped",
            n(targets as f64)
        ),
        o,
    );
    support::store_header().await;
    let receiver = support::receiver().start().await.unwrap();
    let mut counts = vec![replicas];
    if replicas != 1 {
        counts.push(1);
    }
    let mut runs: Vec<Vec<ProcRun>> = counts.iter().map(|_| Vec::new()).collect();
    for i in 0..o.runs {
        for (k, &count) in counts.iter().enumerate() {
            eprintln!(
                "burst --replicas: run {}/{}, {count} replica(s)",
                i + 1,
                o.runs
            );
            runs[k].push(one_process_run(targets, per, count, &receiver).await);
        }
    }
    report_processes(&counts, &runs);
}

fn report_processes(counts: &[usize], runs: &[Vec<ProcRun>]) {
    let e = runs[0][0].events as f64;
    println!(
        "### burst of {} completions, replicas as processes (medians)",
        n(e)
    );
    println!();
    let mut header = vec!["figure".to_string()];
    for c in counts {
        header.extend([
            format!("{c} replica(s)"),
            format!("floor ({c} x in flight)"),
            "ratio".into(),
        ]);
    }
    let med =
        |rs: &[ProcRun], f: &dyn Fn(&ProcRun) -> f64| median(&rs.iter().map(f).collect::<Vec<_>>());
    type Fig<'a> = (
        &'a str,
        &'a dyn Fn(&ProcRun) -> f64,
        Option<&'a dyn Fn(&ProcRun) -> f64>,
    );
    let figures: Vec<Fig> = vec![
        (
            "events committed/s (switch -> every event committed) vs. the same rows by bare INSERT ... SELECT unnest(...), one transaction per target",
            &|r| r.events as f64 / r.commit_s,
            Some(&|r| r.events as f64 / r.db_floor_s),
        ),
        (
            "polls/s in that cycle vs. the same GETs, body discarded",
            &|r| r.targets as f64 / r.commit_s,
            Some(&|r| r.targets as f64 / r.fetch_floor_s),
        ),
        (
            "webhooks delivered/s (switch -> every outcome recorded) vs. the same POSTs unsigned, no store",
            &|r| r.events as f64 / r.deliver_s,
            Some(&|r| r.events as f64 / r.post_floor_s),
        ),
        (
            "webhooks delivered/s vs. the same POSTs with an outcome write (as loopwatch commits it) per slot-full (at most `concurrency` attempts unrecorded per replica)",
            &|r| r.events as f64 / r.deliver_s,
            Some(&|r| r.events as f64 / r.recorded_floor_s),
        ),
        (
            "webhooks delivered/s after the last commit",
            &|r| (r.events - r.delivered_at_commit) as f64 / (r.deliver_s - r.commit_s),
            Some(&|r| r.events as f64 / r.post_floor_s),
        ),
        (
            "webhooks received by the last commit",
            &|r| r.delivered_at_commit as f64,
            None,
        ),
        (
            "first webhook received (s after the switch)",
            &|r| r.first_delivery_s,
            None,
        ),
        (
            "start to settled, baseline included (s)",
            &|r| r.start_s,
            None,
        ),
    ];
    let mut rows = Vec::new();
    for (name, lw, floor) in &figures {
        let mut row = vec![name.to_string()];
        for rs in runs {
            let v = med(rs, lw);
            let fmt = |x: f64| if x < 100.0 { format!("{x:.2}") } else { n(x) };
            row.push(fmt(v));
            match floor {
                Some(f) => {
                    let fl = med(rs, f);
                    row.push(n(fl));
                    row.push(ratio(v, fl));
                }
                None => row.extend([String::new(), String::new()]),
            }
        }
        rows.push(row);
    }
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    support::table(&header, &rows);

    println!(
        "### CPU seconds per process (medians): until every event committed; then until every outcome recorded"
    );
    println!();
    let mut rows = Vec::new();
    for (c, rs) in counts.iter().zip(runs) {
        for (phase, pick) in [
            (
                "commit",
                (|r: &ProcRun| &r.cpu_commit) as fn(&ProcRun) -> &Cpu,
            ),
            ("deliveries after it", |r: &ProcRun| &r.cpu_drain),
        ] {
            let wall = |r: &ProcRun| {
                if phase == "commit" {
                    r.commit_s
                } else {
                    r.deliver_s - r.commit_s
                }
            };
            let per: Vec<String> = (0..*c)
                .map(|i| format!("{:.1}", med(rs, &|r| pick(r).replicas[i])))
                .collect();
            rows.push(vec![
                format!("{c} replica(s), {phase}"),
                format!("{:.1}", med(rs, &wall)),
                per.join(" + "),
                format!("{:.1}", med(rs, &|r| pick(r).sim)),
                format!("{:.1}", med(rs, &|r| pick(r).pg)),
                format!("{:.1}", med(rs, &|r| pick(r).bench)),
                format!("{:.1}", med(rs, &|r| pick(r).total())),
                format!(
                    "{:.0}",
                    med(rs, &|r| pick(r).replicas_sum() / r.events as f64 * 1e6)
                ),
                format!("{:.0}", med(rs, &|r| pick(r).pg / r.events as f64 * 1e6)),
            ]);
        }
    }
    support::table(
        &[
            "phase",
            "wall s",
            "replicas",
            "simulator",
            "PostgreSQL",
            "bench (receiver)",
            "total",
            "replicas' CPU µs per event",
            "PostgreSQL CPU µs per event",
        ],
        &rows,
    );
    println!(
        "### PostgreSQL's work per event (medians; pg_stat_database): until every event committed; then until every outcome recorded and the replicas exited"
    );
    println!();
    let mut rows = Vec::new();
    for (c, rs) in counts.iter().zip(runs) {
        for (phase, pick) in [
            (
                "commit",
                (|r: &ProcRun| &r.db_commit) as fn(&ProcRun) -> &DbWork,
            ),
            ("deliveries after it", |r: &ProcRun| &r.db_drain),
        ] {
            let per = |f: fn(&DbWork) -> i64| {
                format!("{:.2}", med(rs, &|r| f(pick(r)) as f64 / r.events as f64))
            };
            rows.push(vec![
                format!("{c} replica(s), {phase}"),
                per(|d| d.commits),
                per(|d| d.returned),
                per(|d| d.fetched),
                per(|d| d.written),
                // The first run's: scans are not medians.
                pick(&rs[0]).heaviest(rs[0].events, 3),
            ]);
        }
    }
    support::table(
        &[
            "phase",
            "transactions committed",
            "rows returned by scans",
            "rows fetched by index",
            "rows written",
            "scans that read the most rows: rows read per event (scans per event)",
        ],
        &rows,
    );
    for (c, rs) in counts.iter().zip(runs) {
        let loads: Vec<&str> = rs.iter().map(|r| r.load.as_str()).collect();
        println!(
            "{c} replica(s): load average at the end of each run: {}",
            loads.join("; ")
        );
    }
    println!();
}
