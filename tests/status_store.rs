//! The store's side of the status page, on both backends: the attempts log (written with
//! the outcome, bounded per delivery, gone with a pruned delivery) and the inspection
//! reads (`overview`, `target_detail`). SQLite always; PostgreSQL with `--ignored` under
//! `scripts/with-postgres`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use loopwatch::diff::{DiffOptions, diff};
use loopwatch::model::{Checkpoint, CheckpointTarget};
use loopwatch::store::attempts::KEPT_PER_DELIVERY;
use loopwatch::store::{
    AttemptFacts, AttemptOutcome, DetailQuery, OverviewQuery, PollCommit, Recorded, Redeliver,
    Store,
};

fn ck(id: &str, name: &str, status: Option<&str>) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        name: name.into(),
        run_id: "r".into(),
        target: CheckpointTarget::Sampler,
        checkpoint_type: "lora".into(),
        size_bytes: 1,
        created_at: format!("2026-11-26T00:00:0{id}.000Z"),
        base_model: None,
        sync_status: status.map(str::to_string),
        raw: format!(r#"{{"id":"{id}"}}"#),
    }
}

async fn poll(s: &dyn Store, listing: &[Checkpoint]) {
    let state = s.load_target("t").await.unwrap();
    let opts = DiffOptions {
        emit_existing: false,
        delete_after_missing: 2,
        stalled_after: None,
        probe_null: false,
    };
    let d = diff("t", &state, listing, Utc::now(), &opts);
    let sinks = d.events.iter().map(|_| vec!["a"]).collect();
    s.commit_poll(PollCommit {
        target: "t",
        filter: "run_id=r",
        diff: &d,
        sinks,
        now: Utc::now(),
        fence: None,
        settled: None,
        probes: Vec::new(),
    })
    .await
    .unwrap();
}

async fn attempts_and_views(store: Arc<dyn Store>) {
    let s = store.as_ref();
    poll(s, &[ck("1", "step-1", Some("COMPLETE"))]).await;
    poll(
        s,
        &[
            ck("1", "step-1", Some("COMPLETE")),
            ck("2", "a/b <c>", Some("COMPLETE")),
            ck("3", "step-3", None),
        ],
    )
    .await;
    let now = Utc::now();
    let claimed = s
        .claim_due("a", now, 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    // discovered(2), completed(2), discovered(3)
    assert_eq!(claimed.len(), 3);
    let id = claimed[1].delivery_id;
    // Each attempt on a claim of its own (an outcome ends its claim).
    let claim = async || {
        s.claim_due("a", now, 10, false, Duration::from_secs(60))
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.delivery_id == id)
            .unwrap()
    };

    // 25 failed attempts of one delivery, with facts: the log keeps the newest 20.
    let mut c = claimed[1].clone();
    for n in 0..25 {
        if n > 0 {
            c = claim().await;
        }
        let retry = AttemptOutcome::Retry {
            next: now,
            status: Some(503),
            error: format!("HTTP 503 #{n}"),
        };
        let facts = AttemptFacts {
            status: None,
            took: Some(Duration::from_millis(7)),
            ..Default::default()
        };
        let recorded = Recorded {
            facts,
            ..Recorded::new(&c, retry)
        };
        let stale = s.record_attempts(&[recorded], now).await.unwrap().stale;
        assert!(stale.is_empty());
    }
    // Then dead, without facts: logged all the same.
    let c = claim().await;
    s.record_attempt(
        &c,
        &AttemptOutcome::Dead {
            status: Some(410),
            error: "HTTP 410".into(),
        },
        now,
    )
    .await
    .unwrap();
    // Target `t`'s page as the status page reads it.
    let detail_of_t = async || {
        s.target_detail(&DetailQuery {
            target: "t".into(),
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap()
    };
    let detail = detail_of_t().await;
    assert_eq!(detail.total_checkpoints, 3);
    let names: Vec<&str> = detail.checkpoints.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["step-3", "a/b <c>", "step-1"], "newest first");
    let log: Vec<_> = detail
        .attempts
        .iter()
        .filter(|a| a.delivery_id == id)
        .collect();
    assert_eq!(log.len() as i64, KEPT_PER_DELIVERY, "bounded per delivery");
    assert_eq!(log[0].attempt, 7, "the oldest kept");
    let last = log.last().unwrap();
    assert_eq!(
        (last.attempt, last.status, last.outcome.as_str()),
        (26, Some(410), "dead")
    );
    assert_eq!(last.duration_ms, None);
    assert_eq!(
        log[0].status,
        Some(503),
        "a failure's status from its outcome"
    );
    assert_eq!(log[0].duration_ms, Some(7));
    let dead = detail.deliveries.iter().find(|d| d.row.id == id).unwrap();
    assert_eq!(dead.checkpoint_name, "a/b <c>");

    // The overview: a sink's last error, its dead delivery, the stored target's counts.
    let o = s
        .overview(&OverviewQuery {
            targets: vec!["t".into(), "unknown".into()],
            sinks: vec!["a".into()],
            events: 2,
            dead_per_sink: 5,
            ..OverviewQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(o.stored_targets, 1);
    assert_eq!(o.targets.len(), 1);
    let t = &o.targets[0];
    assert_eq!((t.checkpoints.complete, t.checkpoints.pending), (2, 1));
    assert_eq!(t.newest_completed.as_ref().unwrap().name, "a/b <c>");
    assert_eq!(o.last_errors[0].error.as_deref(), Some("HTTP 410"));
    assert_eq!(o.dead.len(), 1);
    assert_eq!(o.events.len(), 2, "the limit holds");
    assert!(o.events[0].seq > o.events[1].seq, "newest first");

    // Redelivered: its count starts again, and its log keeps the newest 20 with the new
    // round's first attempt (a first attempt is logged without a trim: the redeliver made
    // room for it).
    let log_of = async |id: i64| -> Vec<(i64, String)> {
        detail_of_t()
            .await
            .attempts
            .iter()
            .filter(|a| a.delivery_id == id)
            .map(|a| (a.attempt, a.outcome.clone()))
            .collect()
    };
    s.redeliver(&Redeliver::Ids(vec![id.to_string()]), now)
        .await
        .unwrap();
    assert_eq!(log_of(id).await.len() as i64, KEPT_PER_DELIVERY - 1);
    let c = claim().await;
    assert!(
        s.record_attempt(&c, &AttemptOutcome::Delivered, now)
            .await
            .unwrap()
    );
    let log = log_of(id).await;
    assert_eq!(
        log.len() as i64,
        KEPT_PER_DELIVERY,
        "bounded after a redeliver"
    );
    assert_eq!(log[0].0, 8, "the oldest kept");
    assert_eq!(log.last().unwrap(), &(1, "delivered".to_string()));
    // Other deliveries' first attempts are logged untrimmed, one row each.
    for other in [&claimed[0], &claimed[2]] {
        assert!(
            s.record_attempt(other, &AttemptOutcome::Delivered, now)
                .await
                .unwrap()
        );
        assert_eq!(
            log_of(other.delivery_id).await,
            [(1, "delivered".to_string())]
        );
    }

    // A delivered delivery, pruned, takes its attempts along.
    s.prune(now + TimeDelta::seconds(1)).await.unwrap();
    assert!(log_of(id).await.is_empty());
}

#[tokio::test]
async fn sqlite_attempts_log_and_views() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    attempts_and_views(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_attempts_log_and_views() {
    let url = common::pg::fresh_database().await;
    attempts_and_views(loopwatch::store::open(&url).await.unwrap()).await;
}
