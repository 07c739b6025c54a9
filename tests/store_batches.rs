//! The batched writes of the store, on both backends: a poll's commit, an outcome write,
//! a renewal and a release are one statement per table whatever their row count, and
//! must mean what writing the rows one by one meant: every row round-trips (past one
//! SQLite multi-row statement's rows), a checkpoint listed twice keeps its last row, a
//! stale claim token discards exactly its own outcome, and a delivery twice in one
//! batch is written once. SQLite always; PostgreSQL when `LOOPWATCH_TEST_PG_URL` points
//! at a server (`scripts/with-postgres cargo test --test store_batches -- --ignored`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use loopwatch::diff::{Diff, DiffOptions, diff};
use loopwatch::model::{Checkpoint, CheckpointTarget};
use loopwatch::store::{AttemptOutcome, DeliveryStatus, PollCommit, Recorded, Store};

/// More rows than one SQLite multi-row statement takes (500): the commit is chunked there.
const MANY: usize = 1_234;

fn ck(i: usize, status: &str) -> Checkpoint {
    Checkpoint {
        id: format!("c{i:05}"),
        name: format!("step-{i}"),
        run_id: format!("r{}", i % 7),
        target: CheckpointTarget::Sampler,
        checkpoint_type: "lora".into(),
        size_bytes: 1,
        created_at: format!("2026-11-26T00:00:00.{i:06}Z"),
        base_model: None,
        sync_status: Some(status.into()),
        raw: format!(r#"{{"id":"c{i:05}","status":"{status}","quote":"a \"b\" c"}}"#),
    }
}

fn opts() -> DiffOptions {
    DiffOptions {
        emit_existing: false,
        delete_after_missing: 2,
        stalled_after: None,
        probe_null: false,
    }
}

async fn poll(s: &dyn Store, target: &str, listing: &[Checkpoint]) -> usize {
    let state = s.load_target(target).await.unwrap();
    let d = diff(target, &state, listing, Utc::now(), &opts());
    commit(s, target, &d, &["a", "b"]).await;
    d.events.len()
}

/// Commit `d` to `target`, each event to every one of `sinks`.
async fn commit(s: &dyn Store, target: &str, d: &Diff, sinks: &[&str]) {
    s.commit_poll(PollCommit {
        target,
        filter: "all",
        diff: d,
        sinks: d.events.iter().map(|_| sinks.to_vec()).collect(),
        now: Utc::now(),
        fence: None,
        settled: None,
        probes: Vec::new(),
    })
    .await
    .unwrap();
}

async fn many_rows(store: Arc<dyn Store>, url: &str) {
    let s = store.as_ref();
    let syncing: Vec<Checkpoint> = (0..MANY).map(|i| ck(i, "SYNCING")).collect();
    assert_eq!(poll(s, "t", &syncing).await, 0, "a silent baseline");
    let state = s.load_target("t").await.unwrap();
    assert_eq!(state.checkpoints.len(), MANY);
    let complete: Vec<Checkpoint> = (0..MANY).map(|i| ck(i, "COMPLETE")).collect();
    assert_eq!(poll(s, "t", &complete).await, MANY);
    let again = s.load_target("t").await.unwrap();
    assert!(
        !diff("t", &again, &complete, Utc::now(), &opts()).writes(),
        "every row round-trips"
    );
    let events = common::stored_events(url, Some("t")).await;
    assert_eq!(events.len(), MANY);
    let ids: Vec<String> = events.iter().map(|e| e.checkpoint_id.clone()).collect();
    let listed: Vec<String> = complete.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, listed, "events in detection order, seqs ascending");
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(
        events[MANY - 1].body.contains(r#"a \"b\" c"#),
        "the body as listed"
    );
    let pending = s
        .list_deliveries(Some(DeliveryStatus::Pending), 10 * MANY as i64)
        .await
        .unwrap();
    assert_eq!(pending.len(), 2 * MANY, "one delivery per event and sink");

    // All but one gone from the listing: rows without their text, updated in place
    // (missing once), then deleted, each deleted event carrying its stored object.
    let kept = &complete[..1];
    assert_eq!(poll(s, "t", kept).await, 0);
    let state = s.load_target("t").await.unwrap();
    assert_eq!(state.checkpoints.len(), MANY);
    assert_eq!(
        state
            .checkpoints
            .values()
            .filter(|t| t.missing == 1)
            .count(),
        MANY - 1
    );
    assert_eq!(poll(s, "t", kept).await, MANY - 1);
    let events = common::stored_events(url, Some("t")).await;
    let deleted: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "checkpoint.deleted")
        .collect();
    assert_eq!(deleted.len(), MANY - 1);
    for e in deleted {
        assert!(
            e.body
                .contains(&format!(r#"\"id\":\"{}\""#, e.checkpoint_id))
                || e.body.contains(&format!(r#""id":"{}""#, e.checkpoint_id)),
            "a deleted checkpoint's event carries its stored object: {}",
            e.body
        );
    }

    // A checkpoint twice in one commit keeps its last row, as row-by-row upserts did
    // (PostgreSQL refuses a multi-row upsert that touches a row twice).
    let state = s.load_target("u").await.unwrap();
    let mut d = diff("u", &state, &[ck(1, "SYNCING")], Utc::now(), &opts());
    let mut last = d.updates[0].clone();
    last.name = "renamed".into();
    d.updates.push(last);
    commit(s, "u", &d, &[]).await;
    let state = s.load_target("u").await.unwrap();
    assert_eq!(state.checkpoints.len(), 1);
    assert_eq!(state.checkpoints.values().next().unwrap().name, "renamed");
}

async fn fenced_outcomes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let listing: Vec<Checkpoint> = (0..12).map(|i| ck(i, "SYNCING")).collect();
    poll(s, "t", &listing).await;
    let done: Vec<Checkpoint> = (0..12).map(|i| ck(i, "COMPLETE")).collect();
    assert_eq!(poll(s, "t", &done).await, 12);
    let now = Utc::now() + TimeDelta::seconds(1);
    let lease = Duration::from_secs(60);
    let c = s.claim_due("a", now, 12, false, lease).await.unwrap();
    assert_eq!(c.len(), 12);
    let next = now + TimeDelta::minutes(5);
    let outcomes = [
        AttemptOutcome::Delivered,
        AttemptOutcome::Retry {
            next,
            status: Some(503),
            error: "HTTP 503".into(),
        },
        AttemptOutcome::Dead {
            status: Some(410),
            error: "HTTP 410".into(),
        },
        AttemptOutcome::Deferred {
            next,
            reason: "later".into(),
        },
        AttemptOutcome::Superseded {
            reason: "newer".into(),
        },
        AttemptOutcome::Unknown {
            error: "cut short".into(),
        },
    ];
    // Two rounds: c[0..6] get the outcomes above; c[6..12] too, but c[7] (a retry) with
    // a stale token, and c[0] again (its first write ends its claim: the second is stale).
    let mut batch: Vec<Recorded> = Vec::new();
    for (i, o) in outcomes.iter().cycle().take(12).enumerate() {
        let mut r = Recorded::new(&c[i], o.clone());
        if i == 7 {
            r.token += 1;
        }
        batch.push(r);
    }
    batch.push(Recorded::new(&c[0], AttemptOutcome::Delivered));
    let mut stale = s.record_attempts(&batch, now).await.unwrap().stale;
    stale.sort();
    let mut want = vec![c[7].delivery_id, c[0].delivery_id];
    want.sort();
    assert_eq!(
        stale, want,
        "exactly the stale token and the repeat are discarded"
    );

    let rows = s.list_deliveries(None, 1000).await.unwrap();
    let row = |id: i64| rows.iter().find(|r| r.id == id).unwrap();
    for (i, claimed) in c.iter().enumerate() {
        let r = row(claimed.delivery_id);
        let got = (r.status, r.attempts, r.last_status, r.last_error.as_deref());
        let want = match (i == 7, i % 6) {
            (true, _) => (DeliveryStatus::Pending, 0, None, None),
            (_, 0) => (DeliveryStatus::Delivered, 1, None, None),
            (_, 1) => (DeliveryStatus::Pending, 1, Some(503), Some("HTTP 503")),
            (_, 2) => (DeliveryStatus::Dead, 1, Some(410), Some("HTTP 410")),
            (_, 3) => (DeliveryStatus::Pending, 0, None, Some("later")),
            (_, 4) => (DeliveryStatus::Superseded, 0, None, Some("newer")),
            _ => (DeliveryStatus::Unknown, 1, None, Some("cut short")),
        };
        assert_eq!(got, want, "delivery {i}");
        if matches!(i % 6, 1 | 3) && i != 7 {
            assert_eq!(
                r.next_attempt_at.map(|t| t.timestamp_millis()),
                Some(next.timestamp_millis()),
                "delivery {i} is due again later"
            );
        }
    }

    // Renewals and releases of a batch: a wrong token keeps and frees nothing.
    let b = s.claim_due("b", now, 12, false, lease).await.unwrap();
    assert_eq!(b.len(), 12);
    let mut held: Vec<(i64, i64)> = b.iter().map(|c| (c.delivery_id, c.token)).collect();
    held[3].1 += 1;
    let mut kept = s.renew_claims(&held, lease).await.unwrap();
    kept.sort();
    let mut want: Vec<i64> = b
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3)
        .map(|(_, c)| c.delivery_id)
        .collect();
    want.sort();
    assert_eq!(kept, want);
    s.release(&held).await.unwrap();
    let again = s.claim_due("b", now, 12, false, lease).await.unwrap();
    let mut ids: Vec<i64> = again.iter().map(|c| c.delivery_id).collect();
    ids.sort();
    assert_eq!(
        ids, want,
        "released but the one whose token did not match, still claimed"
    );
    assert!(s.renew_claims(&[], lease).await.unwrap().is_empty());
    s.release(&[]).await.unwrap();
    assert!(s.record_attempts(&[], now).await.unwrap().stale.is_empty());
}

fn sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    (dir, url)
}

#[tokio::test]
async fn sqlite_commits_many_rows() {
    let (_dir, url) = sqlite();
    many_rows(loopwatch::store::open(&url).await.unwrap(), &url).await;
}

#[tokio::test]
async fn sqlite_batched_outcomes_are_fenced_row_by_row() {
    let (_dir, url) = sqlite();
    fenced_outcomes(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_commits_many_rows() {
    let url = common::pg::fresh_database().await;
    many_rows(loopwatch::store::open(&url).await.unwrap(), &url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_batched_outcomes_are_fenced_row_by_row() {
    let url = common::pg::fresh_database().await;
    fenced_outcomes(loopwatch::store::open(&url).await.unwrap()).await;
}
