//! Tests of the SQLite store: migrations in place, digests of old rows.

use super::*;
use crate::store::prelude::*;
use crate::store::{DeliveryStatus, PollCommit};

/// A state file from before `superseded` (migrations 1 and 2) upgrades in place: the
/// deliveries table is rebuilt with every row and id, ids keep increasing, and the new
/// status is accepted.
#[tokio::test]
async fn the_superseded_migration_keeps_every_delivery_and_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old-migrations");
    std::fs::create_dir(&old).unwrap();
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    for f in ["0001_initial.sql", "0002_digests.sql"] {
        std::fs::copy(src.join(f), old.join(f)).unwrap();
    }
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let opts = SqliteConnectOptions::from_str(&url)
        .unwrap()
        .create_if_missing(true)
        .foreign_keys(true);
    let pool = SqlitePool::connect_with(opts).await.unwrap();
    sqlx::migrate::Migrator::new(old.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (id, type, target, checkpoint_id, checkpoint_name, run_id,
            checkpoint_target, detected_at, body)
         VALUES ('evt_1', 'checkpoint.completed', 't', 'c1', 'step-1', 'r', 'sampler', 1, '{}')",
    )
    .execute(&pool)
    .await
    .unwrap();
    for (sink, status) in [("a", "dead"), ("b", "pending"), ("c", "delivered")] {
        sqlx::query(
            "INSERT INTO deliveries (event_seq, sink, run_id, status, next_attempt_at,
                last_error, created_at, updated_at) VALUES (1, ?, 'r', ?, 5, 'why', 1, 2)",
        )
        .bind(sink)
        .bind(status)
        .execute(&pool)
        .await
        .unwrap();
    }
    sqlx::query("DELETE FROM deliveries WHERE sink = 'c'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let store = SqliteStore::open(&url).await.unwrap();
    let rows = store.list_deliveries(None, 10).await.unwrap();
    let got: Vec<(i64, &str, DeliveryStatus, Option<&str>)> = rows
        .iter()
        .map(|r| (r.id, r.sink.as_str(), r.status, r.last_error.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "a", DeliveryStatus::Dead, Some("why")),
            (2, "b", DeliveryStatus::Pending, Some("why"))
        ]
    );
    // Claimed (token 7), then superseded: the new status fits the rebuilt table.
    sqlx::query("UPDATE deliveries SET claim_token = 7 WHERE id = 2")
        .execute(&store.pool)
        .await
        .unwrap();
    let superseded = crate::store::Recorded {
        delivery_id: 2,
        token: 7,
        outcome: crate::store::AttemptOutcome::Superseded {
            reason: "newer".into(),
        },
        deploy: None,
        facts: Default::default(),
    };
    let stale = store
        .record_attempts(&[superseded], Utc::now())
        .await
        .unwrap()
        .stale;
    assert!(stale.is_empty());
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO deliveries (event_seq, sink, run_id, status, next_attempt_at,
            created_at, updated_at) VALUES (1, 'd', 'r', 'pending', 1, 1, 1) RETURNING id",
    )
    .fetch_one(&store.pool)
    .await
    .unwrap();
    assert_eq!(
        id, 4,
        "ids continue after the highest ever given (3, deleted)"
    );
}
use crate::diff::{DiffOptions, diff};
use crate::model::{Checkpoint, CheckpointTarget};

/// A database written before `raw_digest` existed loads the same state, and keeps the
/// digests it had to compute.
#[tokio::test]
async fn rows_without_a_stored_digest_load_and_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    let listing: Vec<Checkpoint> = (1..=3)
        .map(|i| Checkpoint {
            id: format!("ck{i}"),
            name: format!("step-{i}"),
            run_id: "r".into(),
            target: CheckpointTarget::Sampler,
            checkpoint_type: "lora".into(),
            size_bytes: 1,
            created_at: format!("2026-11-26T00:00:0{i}.000Z"),
            base_model: None,
            sync_status: Some("COMPLETE".into()),
            raw: format!(r#"{{"id": "ck{i}", "quote": "\"{i}\""}}"#),
        })
        .collect();
    let opts = DiffOptions {
        emit_existing: false,
        delete_after_missing: 2,
        stalled_after: None,
        probe_null: false,
    };
    let d = diff("t", &TargetState::default(), &listing, Utc::now(), &opts);
    store
        .commit_poll(PollCommit {
            target: "t",
            filter: "run_id=r",
            diff: &d,
            sinks: Vec::new(),
            now: Utc::now(),
            fence: None,
            settled: None,
            probes: Vec::new(),
        })
        .await
        .unwrap();
    let fresh = store.load_targets(&["t"]).await.unwrap();
    assert_eq!(fresh[0], store.load_target("t").await.unwrap());
    assert_eq!(fresh[0].checkpoints.len(), 3);
    sqlx::query("UPDATE checkpoints SET raw_digest = NULL WHERE id != 'ck2'")
        .execute(&store.pool)
        .await
        .unwrap();
    assert_eq!(store.load_target("t").await.unwrap(), fresh[0]);
    assert_eq!(store.load_targets(&["t"]).await.unwrap(), fresh);
    let missing: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM checkpoints WHERE raw_digest IS NULL")
            .fetch_one(&store.pool)
            .await
            .unwrap();
    assert_eq!(missing, 0);
    // The state agrees with the listing it came from: nothing to write.
    assert!(!diff("t", &fresh[0], &listing, Utc::now(), &opts).writes());
}

/// `next_due` runs after every claim that came back short: it reads a range of the
/// `(sink, status, next_attempt_at)` index from its start, never the whole backlog (it
/// had scanned every pending delivery of the sink, 100,000 of them with a sink down).
#[tokio::test]
async fn next_due_reads_the_due_index_not_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
        "EXPLAIN QUERY PLAN {}",
        sql::NEXT_DUE
    )))
    .bind("a")
    .bind(0_i64)
    .fetch_all(&store.pool)
    .await
    .unwrap();
    let plan: Vec<&str> = plan.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(
        plan,
        [
            "SEARCH deliveries USING COVERING INDEX deliveries_due (sink=? AND status=? AND next_attempt_at>?)"
        ],
        "one range of the index, in its order (no sort, no scan)"
    );
}

/// The status page lists every open deploy pipeline and the newest settled ones: the open
/// ones come from an index whatever the statistics say (without any, the `(stage,
/// follow_next_at)` one; once ANALYZE counted 4 stages evenly, that one lost to a scan of
/// the table, and the partial index `deploys_open` is read, in order); the settled ones
/// walk the primary key down, stopping after the limit.
#[tokio::test]
async fn the_status_pages_deploys_read_the_open_index_and_the_newest_rows() {
    use crate::store::inspect::{OPEN_DEPLOYS, deploys_query};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = SqliteStore::open(&url).await.unwrap();
    // A connection of its own each time: one the pool opened before the ANALYZE plans
    // with the statistics it loaded then (none), so which one the pool hands out would
    // decide the plan.
    let plan = async |sql: String| -> Vec<String> {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(50_i64)
                .fetch_all(&mut c)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.3).collect()
    };
    let open = deploys_query(OPEN_DEPLOYS);
    let settled = deploys_query(&format!("NOT {OPEN_DEPLOYS}"));
    let count = format!("SELECT COUNT(*) FROM deploys WHERE {OPEN_DEPLOYS} AND $1 > 0");
    let indexed = |plan: &[String]| {
        plan.iter().all(|l| l != "SCAN deploys")
            && plan.iter().any(|l| l.contains("INDEX deploys_"))
    };
    for analyzed in [false, true] {
        if analyzed {
            sqlx::raw_sql(DEPLOYS_FILL)
                .execute(&store.pool)
                .await
                .unwrap();
        }
        let p = plan(open.clone()).await;
        assert!(indexed(&p), "analyzed: {analyzed}: {p:?}");
        let p = plan(count.clone()).await;
        assert!(indexed(&p), "analyzed: {analyzed}: {p:?}");
        if analyzed {
            assert_eq!(
                plan(open.clone()).await,
                ["SCAN deploys USING INDEX deploys_open"]
            );
        }
        assert_eq!(
            plan(settled.clone()).await,
            ["SCAN deploys"],
            "analyzed: {analyzed}"
        );
    }
}

/// 4,000 deploy pipelines, 1 in 1,000 waiting, the rest settled in 3 stages; then ANALYZE,
/// whose statistics say about 1,000 rows a stage.
const DEPLOYS_FILL: &str = "
    WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 4000)
    INSERT INTO deploys (delivery_id, sink, target, run_id, checkpoint_id, checkpoint_name,
        event_id, completed_at, stage, created_at, updated_at)
    SELECT i, 'd', 't', 'r', 'ck' || i, 'step-' || i, 'evt' || i, 0,
        CASE WHEN i % 1000 = 7 THEN 'awaiting_approval' WHEN i % 3 = 0 THEN 'failed'
             WHEN i % 3 = 1 THEN 'promoted' ELSE 'deployed' END, 0, 0
    FROM g;
    ANALYZE;";
