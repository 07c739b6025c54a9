//! leases: what sharing 100,000 targets among 3 replicas costs the database, and how
//! fast the survivors take over a killed replica's targets (issue 23).
//!
//! Three [`PgLeases`] coordinators, each on its own connection pool, run the daemon's own
//! lease loop ([`keep_leases`], a round every `lease_ttl / 3`) on one PostgreSQL
//! database, as three replicas do. Figures:
//!
//! - **start**: from three empty replicas to every target owned;
//! - **steady state**: rows written per second to `replicas` and `shard_leases` over a
//!   window of rounds, read from `pg_stat_user_tables`, and whether any shard lease row
//!   was rewritten (its `xmin`); beside it, in the same run, the per-target scheme of
//!   earlier versions (each replica renewing its third of 100,000 lease rows with one
//!   `UPDATE` per round, as they did);
//! - **failover**: one replica's loop is aborted (no release, as a SIGKILL leaves it),
//!   and the time until the two survivors own every target is measured against the bound
//!   `lease_ttl + lease_ttl / 3` (its leases lapse, then a survivor's next round takes
//!   them; each target is then polled at once, at the pace the API budget allows).
//!
//! `LOOPWATCH_BENCH_STORE=postgres scripts/with-postgres cargo bench --bench leases`
//! (`-- --quick`: 10,000 targets and a 3 s lease; `--targets N`, `--ttl-ms MS`).

#[path = "support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopwatch::replicas::keep_leases;
use loopwatch::store::LeaseRound;
use loopwatch::store::postgres::{PgLeases, PgStore};
use support::{BenchDb, n, table};
use tokio_util::sync::CancellationToken;

const REPLICAS: usize = 3;

/// Rows inserted, updated and deleted so far in `tables` (the statistics collector's
/// counters, flushed by each backend at most a second after its transaction ends).
async fn rows_written(pool: &sqlx::PgPool, tables: &[&str]) -> i64 {
    let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint
         FROM pg_stat_user_tables WHERE relname = ANY($1)",
    )
    .bind(&tables)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The (shard, xmin) of every shard lease: equal snapshots mean no row was rewritten.
async fn shard_versions(pool: &sqlx::PgPool) -> Vec<(i32, String)> {
    sqlx::query_as("SELECT shard, xmin::text FROM shard_leases ORDER BY shard")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Targets owned per replica after its last round.
type Shares = Arc<Mutex<Vec<usize>>>;

fn spawn_replica(
    leases: Arc<PgLeases>,
    targets: Arc<Vec<String>>,
    shares: Shares,
    i: usize,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        keep_leases(
            &*leases,
            &targets,
            &token,
            |round: loopwatch::store::Result<LeaseRound>| {
                if let Ok(r) = round {
                    shares.lock().unwrap()[i] = r.owned.len();
                }
            },
        )
        .await
        .unwrap();
    })
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < timeout, "{what} not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    t0.elapsed()
}

#[tokio::main]
async fn main() {
    let Some(o) = support::opts() else {
        return;
    };
    if support::postgres_admin_url().is_none() {
        println!(
            "leases: PostgreSQL only; run LOOPWATCH_BENCH_STORE=postgres scripts/with-postgres cargo bench --bench leases"
        );
        return;
    }
    let targets_n = o
        .value("--targets")
        .unwrap_or(if o.quick { 10_000 } else { 100_000 });
    let ttl =
        Duration::from_millis(
            o.value("--ttl-ms")
                .unwrap_or(if o.quick { 3_000 } else { 15_000 }) as u64,
        );
    support::header(
        "leases",
        &format!(
            "{targets_n} targets shared by {REPLICAS} replicas (lease_ttl {ttl:?}, a round every {:?})",
            ttl / 3
        ),
        &o,
    );
    support::store_header().await;

    let db = BenchDb::new().await;
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    let targets: Arc<Vec<String>> = Arc::new((0..targets_n).map(support::run_id).collect());
    let shares: Shares = Arc::new(Mutex::new(vec![0; REPLICAS]));
    let mut stores = Vec::new();
    let mut tasks = Vec::new();
    let token = CancellationToken::new();
    let started = Instant::now();
    for i in 0..REPLICAS {
        let store = PgStore::open(&db.url).await.unwrap();
        let leases = Arc::new(PgLeases::new(&store, format!("r{i}"), ttl));
        tasks.push(spawn_replica(
            leases,
            targets.clone(),
            shares.clone(),
            i,
            token.clone(),
        ));
        stores.push(store);
    }
    let total = |s: &Shares| s.lock().unwrap().iter().sum::<usize>();
    wait_until("every target owned", ttl * 20, || {
        total(&shares) == targets_n
    })
    .await;
    let start_s = started.elapsed().as_secs_f64();
    // Two more rounds: the shares settle (a replica that joined late takes its part).
    tokio::time::sleep(ttl / 3 * 2 + Duration::from_secs(1)).await;
    let settled = shares.lock().unwrap().clone();

    // Steady state: a window of rounds with nothing changing.
    let window = ttl * 4;
    let tables = ["replicas", "shard_leases"];
    let versions0 = shard_versions(&admin).await;
    let w0 = rows_written(&admin, &tables).await;
    let lease_rows0 = rows_written(&admin, &["shard_leases"]).await;
    tokio::time::sleep(window).await;
    let w1 = rows_written(&admin, &tables).await;
    let lease_rows1 = rows_written(&admin, &["shard_leases"]).await;
    let rewritten = shard_versions(&admin)
        .await
        .iter()
        .zip(&versions0)
        .filter(|(a, b)| a != b)
        .count();
    let writes_per_s = (w1 - w0) as f64 / window.as_secs_f64();
    let lease_writes_per_s = (lease_rows1 - lease_rows0) as f64 / window.as_secs_f64();

    // The per-target scheme of earlier versions, same database, same window: every
    // replica renews each of its targets' lease rows once per round.
    sqlx::raw_sql(
        "CREATE TABLE bench_target_leases (target TEXT PRIMARY KEY, owner TEXT NOT NULL,
            epoch BIGINT NOT NULL, expires_at BIGINT NOT NULL)",
    )
    .execute(&admin)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO bench_target_leases
         SELECT t, 'r' || (i % 3), 1, 9000000000000 FROM unnest($1::text[]) WITH ORDINALITY AS u(t, i)",
    )
    .bind(&*targets)
    .execute(&admin)
    .await
    .unwrap();
    let before0 = rows_written(&admin, &["bench_target_leases"]).await;
    let stop = CancellationToken::new();
    let mut renewers = Vec::new();
    let round_times = Arc::new(Mutex::new(Vec::new()));
    for (i, store) in stores.iter().enumerate() {
        let pool = store.pool().clone();
        let (stop, targets, times) = (stop.clone(), targets.clone(), round_times.clone());
        renewers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(ttl / 3);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let t0 = Instant::now();
                sqlx::query(
                    "UPDATE bench_target_leases
                     SET expires_at = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2
                     WHERE owner = $1 AND target = ANY($3)
                        AND expires_at > (extract(epoch from clock_timestamp()) * 1000)::bigint
                     RETURNING target, epoch",
                )
                .bind(format!("r{i}"))
                .bind(ttl.as_millis() as i64)
                .bind(&*targets)
                .fetch_all(&pool)
                .await
                .unwrap();
                times
                    .lock()
                    .unwrap()
                    .push(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }));
    }
    tokio::time::sleep(window).await;
    stop.cancel();
    for r in renewers {
        r.await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_writes = (rows_written(&admin, &["bench_target_leases"]).await - before0) as f64
        / window.as_secs_f64();
    let before_round_ms = support::median(&round_times.lock().unwrap());

    // Failover: r0's loop stops dead (no release).
    let lost = shares.lock().unwrap()[0];
    tasks[0].abort();
    let survivors = |s: &Shares| s.lock().unwrap()[1..].iter().sum::<usize>();
    let failover = wait_until("the survivors own every target", ttl * 4, || {
        survivors(&shares) == targets_n
    })
    .await;
    let after = shares.lock().unwrap()[1..].to_vec();
    let bound = ttl + ttl / 3;

    token.cancel();
    for t in tasks.into_iter().skip(1) {
        t.await.unwrap();
    }
    drop(stores);
    admin.close().await;
    db.drop_db().await;

    println!("shares after start: {settled:?}; after the failover: {after:?} ({lost} moved)\n");
    table(
        &[
            "figure",
            "shard leases",
            "per-target leases (earlier versions), same run",
        ],
        &[
            vec![
                format!("rows written per second in steady state, {targets_n} targets"),
                format!(
                    "{:.2} ({:.2} of them to shard_leases; {rewritten} of {} shard rows rewritten)",
                    writes_per_s,
                    lease_writes_per_s,
                    versions0.len()
                ),
                format!(
                    "{} (median renewal round {before_round_ms:.0} ms)",
                    n(before_writes)
                ),
            ],
            vec![
                "start: every target owned".into(),
                format!("{start_s:.2} s"),
                "-".into(),
            ],
            vec![
                format!("failover: survivors own the killed replica's {lost} targets"),
                format!(
                    "{:.2} s (bound lease_ttl + lease_ttl/3 = {:.1} s)",
                    failover.as_secs_f64(),
                    bound.as_secs_f64()
                ),
                "-".into(),
            ],
        ],
    );
    println!("load average after the run: {}", support::load());
}
