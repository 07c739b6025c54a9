//! status: the status page and `/api/v1/status` over a large store: 10,000 configured
//! and stored targets (10 checkpoints each), 100,000 events and 100,000 deliveries
//! (10% pending, 2% dead, each attempted one with its attempt logged), 3 sinks.
//!
//! Times, as medians (and the slowest) of repeated requests: the whole in-process path
//! of `/` (facts from the store, the report, the HTML) for the first and the last page of
//! targets, and `GET /`, `GET /api/v1/status` and `GET /targets/NAME` over HTTP on
//! loopback against the real router. SQLite always; PostgreSQL too when
//! `LOOPWATCH_TEST_PG_URL` names a server (`scripts/with-postgres cargo bench --bench status`).
//!
//! `cargo bench --bench status [-- --quick]`

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use askama::Template;
use loopwatch::config::{self, Environment};
use loopwatch::health::Health;
use loopwatch::replicas::Ownership;
use loopwatch::status::page::IndexPage;
use loopwatch::status::{PageQuery, Status, StatusReport};
use loopwatch::store::{SingleNode, Store};
use support::Opts;

const SINKS: [&str; 3] = ["hooks", "deployer", "audit"];

fn main() {
    let Some(o) = support::opts() else { return };
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
}

fn name(i: usize) -> String {
    format!("t{i:05}")
}

fn config_text(store_url: &str, targets: usize) -> String {
    let mut text = format!(
        r#"[api]
api_key_env = "BENCH_API_KEY"
[store]
url = "{store_url}"
[server]
listen = "127.0.0.1:0"
[[sinks]]
name = "hooks"
url = "https://hooks.example.com/loops/secret-path-token"
[[sinks]]
name = "deployer"
kind = "exec"
command = ["/usr/local/bin/deploy"]
[[sinks]]
name = "audit"
url = "https://audit.example.com/in"
"#
    );
    for i in 0..targets {
        text.push_str(&format!(
            "[[targets]]\nname = \"{n}\"\nrun_id = \"r{i}\"\n",
            n = name(i)
        ));
    }
    text
}

/// Rows as SQL literals, `per` per statement (plain ASCII values, no binds: the same
/// text runs on SQLite and PostgreSQL).
fn statements(table: &str, columns: &str, rows: Vec<String>, per: usize) -> Vec<String> {
    rows.chunks(per)
        .map(|c| format!("INSERT INTO {table} ({columns}) VALUES {}", c.join(",")))
        .collect()
}

/// Every row of the store, as statements.
fn fill(targets: usize, per_target: usize) -> Vec<String> {
    let mut out = Vec::new();
    let t0: i64 = 1_790_000_000_000;
    out.extend(statements(
        "targets",
        "name, filter, baselined_at",
        (0..targets)
            .map(|i| format!("('{}', 'run_id=r{i}', {t0})", name(i)))
            .collect(),
        1000,
    ));
    let body = format!("'{{\"pad\":\"{}\"}}'", "x".repeat(600));
    let (mut cks, mut evs, mut dls, mut ats) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seq = 0usize;
    for i in 0..targets {
        for k in 0..per_target {
            seq += 1;
            let status = match k {
                8 => "'SYNCING'",
                9 => "NULL",
                _ => "'COMPLETE'",
            };
            let done = if k < 8 { "TRUE" } else { "FALSE" };
            let created = format!("'2026-11-{:02}T00:{:02}:00.000Z'", 1 + k, i % 60);
            cks.push(format!(
                "('{t}', 'ck{i}-{k}', 'step-{k}00', 'r{i}', 'sampler', {status}, {created}, {ms}, {done}, FALSE, 0, FALSE, FALSE, 1, '{{}}')",
                t = name(i),
                ms = t0 + seq as i64
            ));
            evs.push(format!(
                "({seq}, 'evt_{seq:024}', 'checkpoint.completed', '{t}', 'ck{i}-{k}', 'step-{k}00', 'r{i}', 'sampler', {ms}, {body})",
                t = name(i),
                ms = t0 + seq as i64
            ));
            let sink = SINKS[seq % SINKS.len()];
            let (st, attempts, last_status, err) = if seq.is_multiple_of(50) {
                ("dead", 1, "410", "'HTTP 410: gone'")
            } else if seq.is_multiple_of(10) {
                ("pending", 0, "NULL", "NULL")
            } else {
                ("delivered", 1, "NULL", "NULL")
            };
            dls.push(format!(
                "({seq}, {seq}, '{sink}', 'r{i}', '{st}', {attempts}, {ms}, NULL, {last_status}, {err}, {ms}, {ms})",
                ms = t0 + seq as i64
            ));
            if attempts > 0 {
                let outcome = if st == "dead" { "dead" } else { "delivered" };
                let status = if st == "dead" { "410" } else { "204" };
                ats.push(format!(
                    "({seq}, '{sink}', 1, {ms}, 12, {status}, '{outcome}', {err})",
                    ms = t0 + seq as i64
                ));
            }
        }
    }
    out.extend(statements(
        "checkpoints",
        "target, id, name, run_id, checkpoint_target, sync_status, created_at, first_seen_at, completed, stalled, missing, deleted, deleted_reported, seq, raw",
        cks,
        500,
    ));
    out.extend(statements(
        "events",
        "seq, id, type, target, checkpoint_id, checkpoint_name, run_id, checkpoint_target, detected_at, body",
        evs,
        500,
    ));
    out.extend(statements(
        "deliveries",
        "id, event_seq, sink, run_id, status, attempts, next_attempt_at, claimed_until, last_status, last_error, created_at, updated_at",
        dls,
        500,
    ));
    out.extend(statements(
        "attempts",
        "delivery_id, sink, attempt, at, duration_ms, status, outcome, error",
        ats,
        500,
    ));
    out
}

struct Figure {
    what: String,
    median: Duration,
    max: Duration,
    bytes: usize,
}

async fn time<F, Fut>(what: &str, runs: usize, mut f: F) -> Figure
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let bytes = f().await; // warm: the page cache and the prepared statements
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        std::hint::black_box(f().await);
        times.push(start.elapsed());
    }
    times.sort();
    Figure {
        what: what.to_string(),
        median: times[times.len() / 2],
        max: *times.last().unwrap(),
        bytes,
    }
}

async fn run(backend: &str, store_url: &str, o: &Opts) {
    let targets = o
        .value("--targets")
        .unwrap_or(if o.quick { 1000 } else { 10_000 });
    let per_target = 10;
    let runs = if o.quick { 5 } else { 21 };
    let store = loopwatch::store::open(store_url).await.unwrap();
    let start = Instant::now();
    let fill_sql = fill(targets, per_target);
    if backend == "sqlite" {
        let pool = sqlx::SqlitePool::connect(store_url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for s in &fill_sql {
            sqlx::raw_sql(sqlx::AssertSqlSafe(s.as_str()))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();
    } else {
        let pool = sqlx::PgPool::connect(store_url).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for s in &fill_sql {
            sqlx::raw_sql(sqlx::AssertSqlSafe(s.as_str()))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        sqlx::raw_sql("ANALYZE").execute(&pool).await.unwrap();
    }
    let deliveries = targets * per_target;
    println!(
        "\n{backend}: {targets} targets, {} checkpoints, {deliveries} events, {deliveries} deliveries ({} pending, {} dead) written in {:.1} s",
        targets * per_target,
        deliveries / 10 - deliveries / 50,
        deliveries / 50,
        start.elapsed().as_secs_f64()
    );

    let env = Environment::from_pairs([("BENCH_API_KEY", "bench-key".to_string())]);
    let cfg = config::load_str(
        &config_text(store_url, targets),
        config::FileFormat::Toml,
        "bench.toml",
        &env,
    )
    .unwrap();
    let names: Vec<String> = cfg.targets.iter().map(|t| t.name.clone()).collect();
    let health = Arc::new(Health::new(names.clone()));
    for (i, n) in names.iter().enumerate() {
        health.target_polled(n);
        if i % 200 == 7 {
            health.poll_failed(n, "HTTP 503: upstream unavailable");
        }
    }
    let ownership = Arc::new(Ownership::from_start(
        &SingleNode::new("bench".into()),
        &names,
    ));
    let store: Arc<dyn Store> = store;
    let status = Arc::new(Status::new(store, health.clone(), ownership.clone(), &cfg));

    let mut figures = Vec::new();
    for (what, offset) in [
        ("/ page 1, in process", 0),
        ("/ last page, in process", targets - 100),
    ] {
        let q = PageQuery {
            offset: Some(offset),
            ..PageQuery::default()
        };
        let s = status.clone();
        figures.push(
            time(what, runs, || {
                let (s, q) = (s.clone(), q.clone());
                async move {
                    let f = s.facts(&q).await.unwrap();
                    IndexPage::build(&StatusReport::build(&f), &q)
                        .render()
                        .unwrap()
                        .len()
                }
            })
            .await,
        );
    }

    // Over HTTP, through the real router.
    let router = loopwatch::server::router(loopwatch::server::ServerState {
        metrics: Arc::new(loopwatch::metrics::Metrics::new()),
        health,
        outbox: None,
        status: Some(status),
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, router).await });
    let client = reqwest::Client::new();
    let mid = name(targets / 2);
    for (what, path) in [
        ("GET / (HTTP)", "/".to_string()),
        ("GET /api/v1/status (HTTP)", "/api/v1/status".to_string()),
        ("GET /targets/NAME (HTTP)", format!("/targets/{mid}")),
    ] {
        let url = format!("http://{addr}{path}");
        let c = client.clone();
        figures.push(
            time(what, runs, || {
                let (c, url) = (c.clone(), url.clone());
                async move {
                    let r = c.get(&url).send().await.unwrap();
                    assert!(r.status().is_success(), "{url}: {}", r.status());
                    r.bytes().await.unwrap().len()
                }
            })
            .await,
        );
    }
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "request", "median", "slowest", "bytes"
    );
    for f in figures {
        println!(
            "{:<30} {:>8.1}ms {:>8.1}ms {:>10}",
            f.what,
            f.median.as_secs_f64() * 1000.0,
            f.max.as_secs_f64() * 1000.0,
            f.bytes
        );
    }
}

async fn bench(o: Opts) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("status.db").display());
    run("sqlite", &url, &o).await;
    if let Ok(base) = std::env::var("LOOPWATCH_TEST_PG_URL") {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&base).await.unwrap();
        let db = format!("lw_status_bench_{}", std::process::id());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {db}")))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let i = base.rfind('/').unwrap();
        run("postgres", &format!("{}/{db}", &base[..i]), &o).await;
    }
}
