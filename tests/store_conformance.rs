//! One conformance suite for every `Store` backend: SQLite always, PostgreSQL when
//! `LOOPWATCH_TEST_PG_URL` points at a server (`scripts/test` starts one).

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use loopwatch::diff::{DiffOptions, diff};
use loopwatch::model::TargetState;
use loopwatch::model::{Checkpoint, CheckpointTarget, FilesSeen, ProbeMemo};
use loopwatch::store::postgres::{PgLeases, PgStore};
use loopwatch::store::prelude::*;
use loopwatch::store::{
    AttemptOutcome, Claimed, Coordinator, DeliveryStatus, Fence, PollCommit, Recorded, Redeliver,
    Store, StoreError, Take,
};

fn ck(id: &str, run: &str, status: Option<&str>) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        name: format!("step-{id}"),
        run_id: run.into(),
        target: CheckpointTarget::Sampler,
        checkpoint_type: "lora".into(),
        size_bytes: 1,
        created_at: format!("2026-11-26T00:00:00.{id:0>3}Z"),
        base_model: None,
        sync_status: status.map(str::to_string),
        raw: format!(r#"{{"id":"{id}","run_id":"{run}"}}"#),
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

/// Diff `listing` against the stored state of `target` and commit it to both sinks.
async fn poll(
    store: &dyn Store,
    target: &str,
    listing: &[Checkpoint],
    fence: Option<Fence>,
) -> Result<usize, StoreError> {
    let state = store.load_target(target).await?;
    let d = diff(target, &state, listing, Utc::now(), &opts());
    let sinks = d.events.iter().map(|_| vec!["a", "b"]).collect();
    let n = d.events.len();
    store
        .commit_poll(PollCommit {
            target,
            filter: "run_id=r",
            diff: &d,
            sinks,
            now: Utc::now(),
            fence,
            settled: None,
            probes: Vec::new(),
        })
        .await?;
    Ok(n)
}

async fn conformance(store: Arc<dyn Store>, url: &str) {
    let s = store.as_ref();
    // Baseline, then changes: state round-trips and events are stored in order.
    assert_eq!(
        poll(
            s,
            "t",
            &[ck("1", "r1", Some("SYNCING")), ck("2", "r1", None)],
            None
        )
        .await
        .unwrap(),
        0
    );
    let state = s.load_target("t").await.unwrap();
    assert!(state.baselined);
    assert_eq!(state.checkpoints.len(), 2);
    let listing = [
        ck("1", "r1", Some("COMPLETE")),
        ck("2", "r1", Some("COMPLETED")),
        ck("3", "r2", Some("SYNCING")),
    ];
    assert_eq!(poll(s, "t", &listing, None).await.unwrap(), 3);
    let again = s.load_target("t").await.unwrap();
    let d = diff("t", &again, &listing, Utc::now(), &opts());
    assert!(
        !d.writes(),
        "the stored state equals the state the diff produced"
    );
    let events = common::stored_events(url, Some("t")).await;
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.kind.as_str(), e.checkpoint_id.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("checkpoint.completed", "1"),
            ("checkpoint.completed", "2"),
            ("checkpoint.discovered", "3")
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(
        s.load_target("other").await.unwrap(),
        TargetState::default()
    );
    // A checkpoint target this version does not know round-trips as received.
    let draft = Checkpoint {
        target: CheckpointTarget::Other("draft".into()),
        ..ck("9", "r9", None)
    };
    assert_eq!(poll(s, "u", &[draft], None).await.unwrap(), 0);
    let u = s.load_target("u").await.unwrap();
    assert_eq!(
        u.checkpoints["9"].target,
        CheckpointTarget::Other("draft".into())
    );

    // Deliveries: one per (event, sink); claims are exclusive until they expire.
    let pending = s
        .list_deliveries(Some(DeliveryStatus::Pending), 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 6);
    let now = Utc::now() + TimeDelta::seconds(1);
    let lease = Duration::from_secs(60);
    let first = s.claim_due("a", now, 2, false, lease).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(first[0].event.seq < first[1].event.seq);
    let rest = s.claim_due("a", now, 10, false, lease).await.unwrap();
    assert_eq!(rest.len(), 1, "claimed rows are not handed out twice");
    assert!(
        s.claim_due("a", now, 10, false, lease)
            .await
            .unwrap()
            .is_empty()
    );
    let later = now + TimeDelta::seconds(61);
    let again = s.claim_due("a", later, 10, false, lease).await.unwrap();
    assert_eq!(again.len(), 3, "expired claims return");
    let by_id = |id: i64| again.iter().find(|c| c.delivery_id == id).unwrap().clone();

    // Outcomes. One from the lapsed claim is discarded (fenced by its token): the
    // delivery is another claim's now.
    assert!(
        !s.record_attempt(&first[0], &AttemptOutcome::Delivered, now)
            .await
            .unwrap(),
        "a stale claim's outcome is discarded"
    );
    assert_eq!(
        s.list_deliveries(Some(DeliveryStatus::Pending), 100)
            .await
            .unwrap()
            .len(),
        6,
        "the stale outcome changed nothing"
    );
    // Renewing keeps what is held, and only that.
    let held: Vec<(i64, i64)> = again.iter().map(|c| (c.delivery_id, c.token)).collect();
    let mut kept = s.renew_claims(&held, lease).await.unwrap();
    kept.sort();
    let mut want: Vec<i64> = again.iter().map(|c| c.delivery_id).collect();
    want.sort();
    assert_eq!(kept, want);
    assert!(
        s.renew_claims(&[(first[0].delivery_id, first[0].token)], lease)
            .await
            .unwrap()
            .is_empty(),
        "a lapsed claim taken again is not renewed"
    );
    let (x, y, z) = (
        by_id(first[0].delivery_id),
        by_id(first[1].delivery_id),
        by_id(rest[0].delivery_id),
    );
    let (x, y, z) = (&x, &y, &z);
    assert!(
        s.record_attempt(x, &AttemptOutcome::Delivered, now)
            .await
            .unwrap()
    );
    let next = now + TimeDelta::seconds(30);
    s.record_attempt(
        y,
        &AttemptOutcome::Retry {
            next,
            status: Some(500),
            error: "HTTP 500".into(),
        },
        now,
    )
    .await
    .unwrap();
    s.record_attempt(
        z,
        &AttemptOutcome::Dead {
            status: Some(410),
            error: "HTTP 410".into(),
        },
        now,
    )
    .await
    .unwrap();
    let rows = s.list_deliveries(None, 100).await.unwrap();
    let row = |c: &Claimed| rows.iter().find(|r| r.id == c.delivery_id).unwrap().clone();
    assert_eq!(row(x).status, DeliveryStatus::Delivered);
    assert_eq!(
        (row(y).status, row(y).attempts, row(y).last_status),
        (DeliveryStatus::Pending, 1, Some(500))
    );
    assert_eq!(
        row(y).next_attempt_at.unwrap().timestamp_millis(),
        next.timestamp_millis()
    );
    assert_eq!(
        (row(z).status, row(z).last_error.as_deref()),
        (DeliveryStatus::Dead, Some("HTTP 410"))
    );
    assert_eq!(
        s.next_due("a", now)
            .await
            .unwrap()
            .unwrap()
            .timestamp_millis(),
        next.timestamp_millis()
    );
    assert_eq!(
        s.next_due("b", now).await.unwrap(),
        None,
        "deliveries due already are a claim's to take, not a time to wait for"
    );
    let backlog = s.backlog().await.unwrap();
    let a = backlog.iter().find(|b| b.sink == "a").unwrap();
    assert_eq!((a.pending, a.dead), (1, 1));
    let b = backlog.iter().find(|b| b.sink == "b").unwrap();
    assert_eq!((b.pending, b.dead), (3, 0));

    // Redelivery by dead/sink, by delivery id and by event id.
    assert_eq!(
        s.redeliver(
            &Redeliver::Dead {
                sink: Some("b".into())
            },
            now
        )
        .await
        .unwrap()
        .count,
        0
    );
    assert_eq!(
        s.redeliver(&Redeliver::Dead { sink: None }, now)
            .await
            .unwrap()
            .count,
        1
    );
    assert_eq!(
        s.redeliver(&Redeliver::Ids(vec![x.delivery_id.to_string()]), now)
            .await
            .unwrap()
            .count,
        1
    );
    let evt = events[0].id.clone();
    assert_eq!(
        s.redeliver(&Redeliver::Ids(vec![evt]), now)
            .await
            .unwrap()
            .count,
        2
    );
    // One being attempted is left alone: re-queued, it would go out twice.
    let busy = s
        .claim_due("a", now, 1, false, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(busy.len(), 1);
    let busy = (busy[0].delivery_id, busy[0].token);
    assert_eq!(
        s.redeliver(&Redeliver::Ids(vec![busy.0.to_string()]), now)
            .await
            .unwrap()
            .count,
        0
    );
    s.release(&[busy]).await.unwrap();
    assert_eq!(
        s.list_deliveries(Some(DeliveryStatus::Dead), 100)
            .await
            .unwrap()
            .len(),
        0
    );

    // Ordered claims: only the head of each run.
    assert_eq!(poll(s, "o", &[], None).await.unwrap(), 0);
    let run = [
        ck("11", "rx", Some("COMPLETE")),
        ck("12", "rx", Some("COMPLETE")),
        ck("13", "ry", Some("COMPLETE")),
    ];
    assert_eq!(poll(s, "o", &run, None).await.unwrap(), 6);
    let heads = s.claim_due("b", later, 100, true, lease).await.unwrap();
    let runs: Vec<&str> = heads
        .iter()
        .filter(|c| c.event.target == "o")
        .map(|c| c.event.run_id.as_str())
        .collect();
    assert_eq!(runs, ["rx", "ry"], "one head per run");
    // Claims given back (a worker stopping before it attempted them) are claimable again
    // at once; the rest stay claimed.
    let ids: Vec<i64> = heads
        .iter()
        .filter(|c| c.event.target == "o")
        .map(|c| c.delivery_id)
        .collect();
    let claims: Vec<(i64, i64)> = heads
        .iter()
        .filter(|c| c.event.target == "o")
        .map(|c| (c.delivery_id, c.token))
        .collect();
    s.release(&claims).await.unwrap();
    let again: Vec<i64> = s
        .claim_due("b", later, 100, true, lease)
        .await
        .unwrap()
        .iter()
        .map(|c| c.delivery_id)
        .collect();
    assert_eq!(again, ids);

    // Retention: delivered rows go, then events with no delivery left; pending stays.
    for c in s.claim_due("a", later, 100, false, lease).await.unwrap() {
        s.record_attempt(&c, &AttemptOutcome::Delivered, now)
            .await
            .unwrap();
    }
    let delivered = s
        .list_deliveries(Some(DeliveryStatus::Delivered), 100)
        .await
        .unwrap()
        .len() as u64;
    let pending = s
        .list_deliveries(Some(DeliveryStatus::Pending), 100)
        .await
        .unwrap()
        .len();
    assert_eq!(
        s.prune(now - TimeDelta::days(1)).await.unwrap(),
        (0, 0),
        "nothing is old yet"
    );
    let (d, _) = s.prune(Utc::now() + TimeDelta::days(1)).await.unwrap();
    assert_eq!(d, delivered);
    assert_eq!(
        s.list_deliveries(Some(DeliveryStatus::Pending), 100)
            .await
            .unwrap()
            .len(),
        pending
    );
    let left = common::stored_events(url, None).await;
    let with_deliveries: std::collections::HashSet<String> = s
        .list_deliveries(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.event_id)
        .collect();
    assert!(
        left.iter().all(|e| with_deliveries.contains(&e.id)),
        "an event without deliveries survived"
    );

    // The dump shows what `state` prints.
    let dump = s.dump(Some("t")).await.unwrap();
    assert_eq!(dump.len(), 1);
    assert_eq!(dump[0].checkpoints.len(), 3);
    assert_eq!(dump[0].filter, "run_id=r");

    // Loading many targets at once gives what loading each gives.
    let names = ["t", "other", "t"];
    let all = s.load_targets(&names).await.unwrap();
    for (name, state) in names.iter().zip(&all) {
        assert_eq!(state, &s.load_target(name).await.unwrap(), "{name}");
    }
    // A checkpoint gone from the listing is written without its object (memory holds only
    // a digest): the stored object stays, and is what a `deleted` event will carry.
    let before = s.checkpoint_raw("t", "3").await.unwrap().expect("stored");
    assert_eq!(before, ck("3", "r2", None).raw);
    let fewer = [
        ck("1", "r1", Some("COMPLETE")),
        ck("2", "r1", Some("COMPLETED")),
    ];
    assert_eq!(poll(s, "t", &fewer, None).await.unwrap(), 0);
    let state = s.load_target("t").await.unwrap();
    assert_eq!(state.checkpoints["3"].missing, 1);
    assert_eq!(s.checkpoint_raw("t", "3").await.unwrap(), Some(before));
    assert_eq!(s.checkpoint_raw("t", "nope").await.unwrap(), None);

    // A commit keeps the digest of the listing its state settled on, or clears it.
    let nothing = loopwatch::diff::Diff::default();
    let settle = |settled| PollCommit {
        target: "t",
        filter: "run_id=r",
        diff: &nothing,
        sinks: Vec::new(),
        now: Utc::now(),
        fence: None,
        settled,
        probes: Vec::new(),
    };
    s.commit_poll(settle(Some(u128::MAX - 7))).await.unwrap();
    let kept = s.load_target("t").await.unwrap().settled.expect("kept");
    assert_eq!((kept.digest, kept.checkpoints), (u128::MAX - 7, 3));
    assert_eq!(s.load_targets(&["t"]).await.unwrap()[0].settled, Some(kept));
    s.commit_poll(settle(None)).await.unwrap();
    assert_eq!(s.load_target("t").await.unwrap().settled, None);

    // What a readiness probe saw is kept with its checkpoint's row, and forgotten.
    let ids: Vec<String> = s
        .load_target("t")
        .await
        .unwrap()
        .checkpoints
        .values()
        .map(|c| c.id.to_string())
        .collect();
    let at = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
    let seen = ProbeMemo {
        probed_at: at,
        files: Some(FilesSeen {
            count: 2,
            total_bytes: 0,
            newest: "2026-11-26T00:00:00.123\"Z".into(),
            since: at - TimeDelta::seconds(5),
        }),
    };
    let bare = ProbeMemo {
        probed_at: at,
        files: None,
    };
    let probe = |probes| PollCommit {
        probes,
        ..settle(None)
    };
    s.commit_poll(probe(vec![
        (ids[0].as_str(), Some(&seen)),
        (ids[1].as_str(), Some(&bare)),
    ]))
    .await
    .unwrap();
    let loaded = s.load_target("t").await.unwrap();
    assert_eq!(loaded.probes.len(), 2);
    assert_eq!(loaded.probes[ids[0].as_str()], seen);
    assert_eq!(loaded.probes[ids[1].as_str()], bare);
    assert_eq!(s.load_targets(&["t"]).await.unwrap()[0], loaded);
    // A commit without probes leaves them; one with `None` forgets that one.
    s.commit_poll(settle(None)).await.unwrap();
    assert_eq!(s.load_target("t").await.unwrap().probes, loaded.probes);
    s.commit_poll(probe(vec![(ids[0].as_str(), None)]))
        .await
        .unwrap();
    let left = s.load_targets(&["t"]).await.unwrap().remove(0).probes;
    assert_eq!(left.keys().collect::<Vec<_>>(), [ids[1].as_str()]);
}

/// What a `baseten_deploy` sink needs of a store: `superseded`, the `latest_only` query
/// and a follow-up event committed with a delivery's outcome.
async fn deploy_conformance(store: Arc<dyn Store>, url: &str) {
    use loopwatch::delivery::deploy::{Deployed, deployed_event};
    use loopwatch::store::FollowUp;
    let s = store.as_ref();
    let listing = |status| -> Vec<Checkpoint> {
        ["1", "2", "3"]
            .iter()
            .map(|id| (*id, "r1"))
            .chain([("4", "r2")])
            .map(|(id, run)| {
                // As upstream sends it: with created_at (latest_only orders by it).
                let mut c = ck(id, run, Some(status));
                c.raw = format!(
                    r#"{{"id":"{id}","run_id":"{run}","created_at":"{}"}}"#,
                    c.created_at
                );
                c
            })
            .collect()
    };
    poll(s, "d", &listing("SYNCING"), None).await.unwrap();
    assert_eq!(poll(s, "d", &listing("COMPLETE"), None).await.unwrap(), 4);
    let now = Utc::now() + TimeDelta::seconds(1);
    let mut claimed = s
        .claim_due("a", now, 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    claimed.sort_by_key(|c| c.event.checkpoint_id.clone());
    assert_eq!(claimed.len(), 4);
    let created = |c: &loopwatch::store::Claimed| {
        loopwatch::delivery::deploy::checkpoint_created_at(&c.event).unwrap()
    };
    let newer = async |i: usize| {
        let c: &loopwatch::store::Claimed = &claimed[i];
        s.newer_deploy("a", &c.event.run_id, c.delivery_id, created(c))
            .await
            .unwrap()
    };
    // Pending (claimed: in flight) deliveries count; the newest of the run wins; another
    // run and another sink do not count.
    assert_eq!(newer(0).await.as_deref(), Some("step-3"));
    assert_eq!(newer(1).await.as_deref(), Some("step-3"));
    assert_eq!(newer(2).await, None);
    assert_eq!(newer(3).await, None, "run r2 has one checkpoint");

    let at = Utc::now();
    s.record_attempt(
        &claimed[0],
        &AttemptOutcome::Superseded {
            reason: "superseded by step-3".into(),
        },
        at,
    )
    .await
    .unwrap();
    let sup = s
        .list_deliveries(Some(DeliveryStatus::Superseded), 100)
        .await
        .unwrap();
    assert_eq!(sup.len(), 1);
    assert_eq!(sup[0].id, claimed[0].delivery_id);
    assert_eq!(sup[0].attempts, 0, "never attempted");
    assert_eq!(sup[0].last_error.as_deref(), Some("superseded by step-3"));
    assert_eq!(sup[0].next_attempt_at, None);
    let backlog = s.backlog().await.unwrap();
    let a = backlog.iter().find(|b| b.sink == "a").unwrap();
    assert_eq!(a.dead, 0, "superseded is not dead");
    // Dead and superseded deliveries are not newer deploys.
    s.record_attempt(
        &claimed[2],
        &AttemptOutcome::Dead {
            status: Some(400),
            error: "deploy refused (HTTP 400): bad".into(),
        },
        at,
    )
    .await
    .unwrap();
    assert_eq!(newer(1).await, None);

    // A deploy's outcome and its checkpoint.deployed commit together; a repeat (same id)
    // adds neither an event nor a delivery.
    let d = Deployed {
        model_name: "m".into(),
        model_id: "mdl_1".into(),
        deployment_id: "dep_1".into(),
        reconciled: false,
    };
    let event = deployed_event(&claimed[1].event, "a", &d, at).unwrap();
    let follow = AttemptOutcome::DeliveredWith(Box::new(FollowUp {
        event: event.clone(),
        sinks: vec!["b".into()],
    }));
    let before = common::stored_events(url, None).await.len();
    s.record_attempts(&[Recorded::new(&claimed[1], follow.clone())], at)
        .await
        .unwrap();
    s.record_attempts(&[Recorded::new(&claimed[3], follow)], at)
        .await
        .unwrap();
    let events = common::stored_events(url, None).await;
    assert_eq!(events.len(), before + 1);
    let stored = events.iter().find(|e| e.id == event.id).unwrap();
    assert_eq!(stored.kind, "checkpoint.deployed");
    assert_eq!(stored.body, event.body);
    let rows = s.list_deliveries(None, 1000).await.unwrap();
    let of_deployed: Vec<_> = rows.iter().filter(|r| r.event_id == event.id).collect();
    assert_eq!(of_deployed.len(), 1);
    assert_eq!(
        (of_deployed[0].sink.as_str(), of_deployed[0].status),
        ("b", DeliveryStatus::Pending)
    );
    let delivered = rows
        .iter()
        .find(|r| r.id == claimed[1].delivery_id)
        .unwrap();
    assert_eq!(delivered.status, DeliveryStatus::Delivered);
    // A delivered deploy is a newer deploy too.
    let c0 = &claimed[0];
    assert_eq!(
        s.newer_deploy("a", "r1", c0.delivery_id, created(c0))
            .await
            .unwrap()
            .as_deref(),
        Some("step-2")
    );
    // Superseded rows are history: pruned like delivered ones.
    let (pruned, _) = s.prune(Utc::now() + TimeDelta::days(1)).await.unwrap();
    assert!(pruned >= 3, "{pruned}");
    assert!(
        s.list_deliveries(Some(DeliveryStatus::Superseded), 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// A deploy's reconciliation pass completes the attempt whose call it reconciles: its
/// outcome is written (the error, the next time, the attempts log under that attempt's
/// number) but no attempt is counted, and the log stays bounded however often it repeats.
async fn reconciliation_conformance(store: Arc<dyn Store>) {
    use loopwatch::store::attempts::KEPT_PER_DELIVERY;
    use loopwatch::store::{AttemptFacts, DetailQuery};
    let s = store.as_ref();
    let lease = Duration::from_secs(60);
    poll(s, "rc", &[], None).await.unwrap();
    let listing = [ck("rc1", "r1", Some("COMPLETE"))];
    assert_eq!(poll(s, "rc", &listing, None).await.unwrap(), 2);
    let now = Utc::now() + TimeDelta::seconds(1);
    let claimed = s.claim_due("a", now, 10, false, lease).await.unwrap();
    let id = claimed[0].delivery_id;
    let claim = async || {
        s.claim_due("a", now, 10, false, lease)
            .await
            .unwrap()
            .into_iter()
            .find(|c| c.delivery_id == id)
            .unwrap()
    };
    let retry = |error: String| AttemptOutcome::Retry {
        next: now - TimeDelta::seconds(1),
        status: None,
        error,
    };
    // The attempt whose call is in doubt counts.
    s.record_attempt(&claimed[0], &retry("deploy: outcome unknown".into()), now)
        .await
        .unwrap();
    let reconciling = AttemptFacts {
        reconciliation: true,
        ..Default::default()
    };
    for n in 0..25 {
        let c = claim().await;
        assert_eq!(c.attempts, 1, "pass {n}");
        let r = Recorded {
            facts: reconciling,
            ..Recorded::new(&c, retry(format!("reconciling #{n}")))
        };
        assert!(s.record_attempts(&[r], now).await.unwrap().stale.is_empty());
    }
    let pending = s
        .list_deliveries(Some(DeliveryStatus::Pending), 100)
        .await
        .unwrap();
    let row = pending.iter().find(|d| d.id == id).unwrap();
    assert_eq!(row.attempts, 1);
    assert_eq!(row.last_error.as_deref(), Some("reconciling #24"));
    let c = claim().await;
    let dead = AttemptOutcome::Dead {
        status: None,
        error: "no deployment was made after 1 attempts".into(),
    };
    let r = Recorded {
        facts: reconciling,
        ..Recorded::new(&c, dead)
    };
    assert!(s.record_attempts(&[r], now).await.unwrap().stale.is_empty());
    let dead = s
        .list_deliveries(Some(DeliveryStatus::Dead), 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].id, dead[0].attempts), (id, 1));
    let detail = s
        .target_detail(&DetailQuery {
            target: "rc".into(),
            limit: 10,
            offset: 0,
        })
        .await
        .unwrap();
    let log: Vec<_> = detail
        .attempts
        .iter()
        .filter(|a| a.delivery_id == id)
        .collect();
    assert_eq!(log.len() as i64, KEPT_PER_DELIVERY, "bounded per delivery");
    assert!(log.iter().all(|a| a.attempt == 1), "{log:?}");
    assert_eq!(log.last().unwrap().outcome, "dead");
}

/// After an outage, a claim takes half its room from deliveries never attempted: new
/// events are not queued behind every retry that came due before them. With `ordered`,
/// a run's new event still waits for the older ones of its run.
async fn lanes_conformance(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let lease = Duration::from_secs(60);
    assert_eq!(poll(s, "l", &[], None).await.unwrap(), 0);
    let old: Vec<Checkpoint> = (1..=6)
        .map(|i| ck(&format!("{i}"), "r1", Some("COMPLETE")))
        .collect();
    // Each new complete checkpoint is discovered and completed: 12 events.
    assert_eq!(poll(s, "l", &old, None).await.unwrap(), 12);
    // Every delivery of the backlog failed once and is due again (before the new ones).
    let due = Utc::now() - TimeDelta::seconds(10);
    for sink in ["a", "b"] {
        let claimed = s
            .claim_due(sink, Utc::now(), 100, false, lease)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 12);
        for c in claimed {
            let retry = AttemptOutcome::Retry {
                next: due,
                status: Some(503),
                error: "HTTP 503".into(),
            };
            s.record_attempt(&c, &retry, due).await.unwrap();
        }
    }
    let mut listing = old.clone();
    listing.extend([
        ck("7", "r2", Some("COMPLETE")),
        ck("8", "r2", Some("COMPLETE")),
    ]);
    assert_eq!(poll(s, "l", &listing, None).await.unwrap(), 4);
    let now = Utc::now() + TimeDelta::seconds(1);
    let runs = |claimed: &[loopwatch::store::Claimed]| {
        let mut runs: Vec<(String, u32)> = claimed
            .iter()
            .map(|c| (c.event.run_id.clone(), c.attempts))
            .collect();
        runs.sort();
        runs
    };
    let batch = s.claim_due("a", now, 4, false, lease).await.unwrap();
    assert_eq!(
        runs(&batch),
        [
            ("r1".to_string(), 1),
            ("r1".to_string(), 1),
            ("r2".to_string(), 0),
            ("r2".to_string(), 0)
        ],
        "half the room for the new events, half for the oldest retries"
    );
    assert!(batch.windows(2).all(|w| w[0].event.seq < w[1].event.seq));
    let batch = s.claim_due("a", now, 3, false, lease).await.unwrap();
    assert_eq!(
        runs(&batch),
        [
            ("r1".to_string(), 1),
            ("r2".to_string(), 0),
            ("r2".to_string(), 0)
        ]
    );
    // Nothing new left: the retries fill the whole room.
    let batch = s.claim_due("a", now, 3, false, lease).await.unwrap();
    assert_eq!(runs(&batch), vec![("r1".to_string(), 1); 3]);
    // Ordered: one head per run, the new run's from the first lane; r2's second event
    // waits for its first.
    let heads = s.claim_due("b", now, 100, true, lease).await.unwrap();
    assert_eq!(runs(&heads), [("r1".to_string(), 1), ("r2".to_string(), 0)]);
    assert_eq!(heads[1].event.checkpoint_id, "7");

    // `redeliver --pending`: retries waiting for later are due now, attempts kept.
    let later = now + TimeDelta::seconds(61);
    let all = s.claim_due("a", later, 100, false, lease).await.unwrap();
    assert_eq!(all.len(), 16, "every claim above has lapsed");
    let retry = AttemptOutcome::Retry {
        next: later + TimeDelta::hours(1),
        status: Some(503),
        error: "HTTP 503".into(),
    };
    for c in &all {
        s.record_attempt(c, &retry, later).await.unwrap();
    }
    assert!(
        s.claim_due("a", later, 100, false, lease)
            .await
            .unwrap()
            .is_empty()
    );
    let sink_b = Redeliver::Pending {
        sink: Some("b".into()),
    };
    assert_eq!(
        s.redeliver(&sink_b, later).await.unwrap().count,
        0,
        "b's are due already"
    );
    let sink_a = Redeliver::Pending {
        sink: Some("a".into()),
    };
    assert_eq!(s.redeliver(&sink_a, later).await.unwrap().count, 16);
    let again = s.claim_due("a", later, 100, false, lease).await.unwrap();
    assert_eq!(again.len(), 16);
    assert!(
        again
            .iter()
            .all(|c| c.attempts == if c.event.run_id == "r1" { 2 } else { 1 }),
        "attempts are kept"
    );
    // Claimed (being attempted): left alone.
    assert_eq!(
        s.redeliver(&Redeliver::Pending { sink: None }, later)
            .await
            .unwrap()
            .count,
        0
    );
    // A claim moves its deliveries' due time to the lease's end: held, they are not due
    // (the next claim's scan does not pass over them), and are due again when it lapses.
    let due = s
        .next_due("a", later)
        .await
        .unwrap()
        .expect("held: due at the lease's end");
    assert!(
        (due - (later + TimeDelta::seconds(60)))
            .num_milliseconds()
            .abs()
            < 1_000,
        "{due} vs {later}"
    );
    // Given back, they are due at once.
    let held: Vec<(i64, i64)> = again.iter().map(|c| (c.delivery_id, c.token)).collect();
    s.release(&held).await.unwrap();
    assert_eq!(s.next_due("a", later).await.unwrap(), None);
    assert_eq!(
        s.claim_due("a", later, 100, false, lease)
            .await
            .unwrap()
            .len(),
        16
    );
}

#[tokio::test]
async fn sqlite_deploy_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    deploy_conformance(loopwatch::store::open(&url).await.unwrap(), &url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_deploy_conformance() {
    let url = common::pg::fresh_database().await;
    deploy_conformance(loopwatch::store::open(&url).await.unwrap(), &url).await;
}

#[tokio::test]
async fn sqlite_reconciliation_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    reconciliation_conformance(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_reconciliation_conformance() {
    let url = common::pg::fresh_database().await;
    reconciliation_conformance(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let store = loopwatch::store::open(&url).await.unwrap();
    conformance(store, &url).await;
}

#[tokio::test]
async fn sqlite_lanes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    lanes_conformance(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_lanes_conformance() {
    let url = common::pg::fresh_database().await;
    lanes_conformance(loopwatch::store::open(&url).await.unwrap()).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_conformance() {
    let url = common::pg::fresh_database().await;
    let store = loopwatch::store::open(&url).await.unwrap();
    conformance(store, &url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_leases_are_fair_fenced_and_taken_over_after_expiry() {
    let url = common::pg::fresh_database().await;
    let store = PgStore::open(&url).await.unwrap();
    let ttl = Duration::from_millis(1500);
    let targets: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let a = PgLeases::new(&store, "a".into(), ttl);
    let b = PgLeases::new(&store, "b".into(), ttl);
    let ra = a.round(&targets).await.unwrap();
    assert_eq!(ra.owned.len(), 10, "alone, a replica owns everything");
    // b joins: a gives up its surplus at its next round, b takes its share.
    b.round(&targets).await.unwrap();
    let ra = a.round(&targets).await.unwrap();
    let rb = b.round(&targets).await.unwrap();
    assert_eq!((ra.owned.len(), rb.owned.len()), (5, 5), "{ra:?} {rb:?}");
    assert_eq!(
        rb.takeovers, 0,
        "leases a gave up are handed over, not taken over"
    );
    // Steady rounds renew by heartbeat alone: no shard lease row is written again, and
    // the replicas' rows are the only ones a round writes.
    let rows = async || -> Vec<(i32, String)> {
        sqlx::query_as("SELECT shard, xmin::text FROM shard_leases ORDER BY shard")
            .fetch_all(store.pool())
            .await
            .unwrap()
    };
    let settled = rows().await;
    assert_eq!(settled.len(), 10, "one shard per target here: {settled:?}");
    for _ in 0..3 {
        assert_eq!(a.round(&targets).await.unwrap().owned, ra.owned);
        assert_eq!(b.round(&targets).await.unwrap().owned, rb.owned);
    }
    assert_eq!(
        rows().await,
        settled,
        "a steady round rewrote a shard lease"
    );
    let (t, epoch) = ra.owned[0].clone();

    // a's commit under its lease works.
    let fence = Fence {
        owner: "a".into(),
        epoch,
    };
    assert_eq!(
        poll(
            &store,
            &t,
            &[ck("1", "r", Some("SYNCING"))],
            Some(fence.clone())
        )
        .await
        .unwrap(),
        0
    );

    // a stops renewing while b keeps renewing; after the TTL b takes a's targets with
    // a higher epoch. The leases lapsing on the database's clock is what is tested: these
    // sleeps are that time passing (renewing to check would move it).
    tokio::time::sleep(ttl / 2).await;
    assert_eq!(b.round(&targets).await.unwrap().owned.len(), 5);
    tokio::time::sleep(ttl / 2 + Duration::from_millis(300)).await;
    let rb = b.round(&targets).await.unwrap();
    assert_eq!(rb.owned.len(), 10, "{rb:?}");
    assert_eq!(rb.takeovers, 5);
    // Alone, a replica whose own leases lapsed (a store outage) takes them back: no
    // takeover.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let rb = b.round(&targets).await.unwrap();
    assert_eq!((rb.owned.len(), rb.takeovers), (10, 0), "{rb:?}");
    let new_epoch = rb.owned.iter().find(|(x, _)| *x == t).unwrap().1;
    assert!(new_epoch > epoch);

    // a wakes up and tries to commit with its stale epoch: refused, nothing written.
    let before = common::stored_events(&url, None).await.len();
    let err = poll(&store, &t, &[ck("1", "r", Some("COMPLETE"))], Some(fence))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert_eq!(common::stored_events(&url, None).await.len(), before);
    assert_eq!(
        store.load_target(&t).await.unwrap().checkpoints["1"]
            .sync_status
            .as_deref(),
        Some("SYNCING")
    );
    // b, the owner, commits it.
    let fence_b = Fence {
        owner: "b".into(),
        epoch: new_epoch,
    };
    assert_eq!(
        poll(&store, &t, &[ck("1", "r", Some("COMPLETE"))], Some(fence_b))
            .await
            .unwrap(),
        1
    );
    // a is live again: its old leases are gone and b's are valid, so it gets nothing yet;
    // b gives up its surplus at its next round and a takes its fair share.
    assert_eq!(a.round(&targets).await.unwrap().owned.len(), 0);
    assert_eq!(b.round(&targets).await.unwrap().owned.len(), 5);
    assert_eq!(a.round(&targets).await.unwrap().owned.len(), 5);
}

/// Upgrading from per-target leases: while a replica of an earlier version still holds
/// one, a replica of this version takes nothing (the two schemes would not fence each
/// other); once those leases lapse it takes every target.
#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_shard_leases_wait_for_replicas_of_an_earlier_version() {
    let url = common::pg::fresh_database().await;
    let store = PgStore::open(&url).await.unwrap();
    let targets: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    sqlx::query(
        "INSERT INTO leases (target, owner, epoch, expires_at)
         VALUES ('t0', 'old', 1, (extract(epoch from clock_timestamp()) * 1000)::bigint + 60000)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let a = PgLeases::new(&store, "a".into(), Duration::from_secs(5));
    assert_eq!(a.round(&targets).await.unwrap().owned, vec![]);
    let taken = a.take_free(&targets).await.unwrap();
    assert!(
        taken.iter().all(|(_, t)| *t == Take::HeldBy("old".into())),
        "{taken:?}"
    );
    sqlx::query("UPDATE leases SET expires_at = 0")
        .execute(store.pool())
        .await
        .unwrap();
    assert_eq!(a.round(&targets).await.unwrap().owned.len(), 4);
    // The lapsed per-target leases are gone, so later rounds check an empty table.
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leases")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
}
