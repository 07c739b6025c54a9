//! The diff rules, table-style: `check(listings, expected events of the last)`, plus
//! properties over random listings.

use super::*;
use crate::model::CheckpointTarget;
use chrono::TimeDelta;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_800_000_000_000).unwrap()
}

fn opts() -> DiffOptions {
    DiffOptions {
        emit_existing: false,
        delete_after_missing: 2,
        stalled_after: Some(TimeDelta::minutes(30)),
        probe_null: false,
    }
}

fn ck(id: &str, status: Option<&str>) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        name: format!("step-{id}"),
        run_id: "run1".into(),
        target: CheckpointTarget::Sampler,
        checkpoint_type: "lora".into(),
        size_bytes: 10,
        created_at: format!("2026-11-26T00:00:00.{id:0>3}Z"),
        base_model: None,
        sync_status: status.map(str::to_string),
        raw: format!(r#"{{"id":"{id}","sync_status":{status:?}}}"#),
    }
}

/// Apply `listings` in turn, `minutes_between` apart; return the event types of the last.
fn run(
    opts: &DiffOptions,
    listings: &[Vec<Checkpoint>],
    minutes_between: i64,
) -> (TargetState, Vec<Vec<(EventType, String)>>) {
    let mut state = TargetState::default();
    let mut all = Vec::new();
    for (i, l) in listings.iter().enumerate() {
        let now = t0() + TimeDelta::minutes(minutes_between * i as i64);
        let d = diff("t", &state, l, now, opts);
        state.apply(&d);
        all.push(
            d.events
                .iter()
                .map(|e| (e.kind, e.checkpoint_id.clone()))
                .collect(),
        );
    }
    (state, all)
}

fn check(listings: &[Vec<Checkpoint>], expect_last: &[(EventType, &str)]) {
    check_with(&opts(), listings, 1, expect_last)
}

fn check_with(
    opts: &DiffOptions,
    listings: &[Vec<Checkpoint>],
    minutes_between: i64,
    expect_last: &[(EventType, &str)],
) {
    let (_, all) = run(opts, listings, minutes_between);
    let last = all.last().unwrap();
    let expect: Vec<(EventType, String)> = expect_last
        .iter()
        .map(|(k, id)| (*k, id.to_string()))
        .collect();
    assert_eq!(last, &expect, "listings: {listings:?}");
}

use EventType::*;

static NO_READY: std::sync::LazyLock<Ready> = std::sync::LazyLock::new(Ready::new);
static ALL_WATCHED: std::sync::LazyLock<HashSet<String>> = std::sync::LazyLock::new(HashSet::new);

fn listed<'a>(checkpoints: &'a [Checkpoint], digest: u128) -> Listing<'a> {
    Listing {
        ready: &NO_READY,
        unwatched: &ALL_WATCHED,
        checkpoints,
        digest,
        filter: "run_id=run1",
    }
}

#[test]
fn a_plan_is_everything_the_commit_needs_and_settles_a_listing_that_cannot_change() {
    let l = vec![ck("1", Some("SYNCING")), ck("2", Some("COMPLETE"))];
    let never = DiffOptions {
        stalled_after: None,
        ..opts()
    };
    // The baseline: rows to write, no events, the filter kept, settled (nothing can
    // stall without stalled_after).
    let p = plan("t", &TargetState::default(), listed(&l, 7), t0(), &never);
    assert!(p.writes() && p.diff.baseline && p.diff.events.is_empty());
    let next = p.next.clone().unwrap();
    assert_eq!(next.filter.as_deref(), Some("run_id=run1"));
    assert_eq!(next.checkpoints.len(), 2);
    let settled = Settled {
        digest: 7,
        checkpoints: 2,
    };
    assert_eq!(p.settled, Some(settled));
    assert_eq!(next.settled, Some(settled));
    let mut state = TargetState::default();
    p.apply(&mut state);
    assert_eq!(state, next);

    // The same listing again: nothing to write, no new state, still settled.
    let again = plan("t", &state, listed(&l, 7), t0(), &never);
    assert!(!again.writes() && again.next.is_none());
    assert_eq!(again.settled, Some(settled));

    // A change: the new state is the old one with the change applied, and it is the
    // state a second diff of the same listing agrees with.
    let l2 = vec![ck("1", Some("COMPLETE")), ck("2", Some("COMPLETE"))];
    let p = plan("t", &state, listed(&l2, 8), t0(), &never);
    assert_eq!(p.diff.events.len(), 1);
    assert_eq!(p.diff.events[0].kind, Completed);
    let next = p.next.clone().unwrap();
    assert!(next.checkpoints["1"].completed);
    assert_eq!(p.settled.map(|s| s.digest), Some(8));
    assert!(!diff("t", &next, &l2, t0(), &never).writes());
}

#[test]
fn a_plan_does_not_settle_while_a_checkpoint_can_still_stall() {
    let l = vec![ck("1", Some("SYNCING"))];
    let p = plan("t", &TargetState::default(), listed(&l, 7), t0(), &opts());
    assert!(p.writes());
    assert_eq!(p.settled, None, "checkpoint 1 stalls in 30 minutes");
    let mut state = TargetState::default();
    p.apply(&mut state);
    let p = plan("t", &state, listed(&l, 7), t0(), &opts());
    assert!(!p.writes());
    assert_eq!(p.settled, None);
}

#[test]
fn a_new_filter_resets_the_state_for_a_silent_baseline() {
    let l = vec![ck("1", Some("COMPLETE"))];
    let mut state = TargetState::default();
    assert_eq!(rebaseline_on_new_filter(&mut state, "run_id=run1"), None);
    plan("t", &state, listed(&l, 1), t0(), &opts()).apply(&mut state);
    assert_eq!(rebaseline_on_new_filter(&mut state, "run_id=run1"), None);
    assert!(state.baselined);
    assert_eq!(
        rebaseline_on_new_filter(&mut state, "run_id=other").as_deref(),
        Some("run_id=run1")
    );
    assert_eq!(state, TargetState::default());
}

#[test]
fn baseline_is_silent_by_default() {
    check(
        &[vec![ck("1", Some("COMPLETE")), ck("2", Some("SYNCING"))]],
        &[],
    );
}

#[test]
fn baseline_with_emit_existing_emits_like_an_empty_state() {
    let o = DiffOptions {
        emit_existing: true,
        ..opts()
    };
    check_with(
        &o,
        &[vec![ck("1", Some("COMPLETE")), ck("2", Some("SYNCING"))]],
        1,
        &[(Discovered, "1"), (Completed, "1"), (Discovered, "2")],
    );
}

#[test]
fn baseline_of_an_empty_listing_still_counts() {
    check(
        &[vec![], vec![ck("1", Some("SYNCING"))]],
        &[(Discovered, "1")],
    );
}

#[test]
fn new_id_after_baseline_is_discovered() {
    check(
        &[
            vec![ck("1", Some("COMPLETE"))],
            vec![ck("1", Some("COMPLETE")), ck("2", Some("SYNCING"))],
        ],
        &[(Discovered, "2")],
    );
}

#[test]
fn syncing_to_complete_is_completed() {
    check(
        &[
            vec![ck("1", Some("SYNCING"))],
            vec![ck("1", Some("COMPLETE"))],
        ],
        &[(Completed, "1")],
    );
}

#[test]
fn null_to_completed_spelling_is_completed() {
    check(
        &[vec![ck("1", None)], vec![ck("1", Some("COMPLETED"))]],
        &[(Completed, "1")],
    );
}

#[test]
fn appearing_and_completing_between_two_polls_is_discovered_and_completed() {
    check(
        &[vec![], vec![ck("1", Some("COMPLETE"))]],
        &[(Discovered, "1"), (Completed, "1")],
    );
}

#[test]
fn unknown_status_is_status_changed_never_completed() {
    check(
        &[
            vec![ck("1", Some("SYNCING"))],
            vec![ck("1", Some("FAILED"))],
        ],
        &[(StatusChanged, "1")],
    );
    check(
        &[vec![ck("1", None)], vec![ck("1", Some("SYNCING"))]],
        &[(StatusChanged, "1")],
    );
    check(
        &[vec![], vec![ck("1", Some("WEIRD"))]],
        &[(Discovered, "1")],
    );
}

#[test]
fn complete_spelling_change_is_not_news() {
    check(
        &[
            vec![ck("1", Some("SYNCING"))],
            vec![ck("1", Some("COMPLETE"))],
            vec![ck("1", Some("COMPLETED"))],
        ],
        &[],
    );
}

#[test]
fn complete_going_back_to_syncing_is_a_stale_read() {
    let listings = [
        vec![ck("1", Some("SYNCING"))],
        vec![ck("1", Some("COMPLETE"))],
        vec![ck("1", Some("SYNCING"))],
        vec![ck("1", Some("COMPLETE"))],
    ];
    let (state, all) = run(&opts(), &listings, 1);
    assert_eq!(all[1], vec![(Completed, "1".to_string())]);
    assert!(all[2].is_empty() && all[3].is_empty());
    assert_eq!(
        state.checkpoints["1"].sync_status.as_deref(),
        Some("COMPLETE")
    );
}

#[test]
fn an_unknown_status_after_complete_is_a_change_and_so_is_the_return() {
    let listings = [
        vec![ck("1", Some("SYNCING"))],
        vec![ck("1", Some("COMPLETE"))],
        vec![ck("1", Some("ARCHIVED"))],
        vec![ck("1", Some("SYNCING"))],
        vec![ck("1", Some("ARCHIVED"))],
        vec![ck("1", Some("COMPLETE"))],
        vec![ck("1", Some("COMPLETED"))],
    ];
    let (state, all) = run(&opts(), &listings, 1);
    let one = |k| vec![(k, "1".to_string())];
    assert_eq!(all[1], one(Completed));
    assert_eq!(
        all[2],
        one(StatusChanged),
        "COMPLETE -> an unknown value is news"
    );
    assert!(
        all[3].is_empty(),
        "pending after completion is a stale read"
    );
    assert!(
        all[4].is_empty(),
        "the stale read left ARCHIVED stored: no change"
    );
    assert_eq!(
        all[5],
        one(StatusChanged),
        "back to complete, never completed twice"
    );
    assert!(all[6].is_empty(), "a spelling change");
    assert_eq!(
        state.checkpoints["1"].sync_status.as_deref(),
        Some("COMPLETED")
    );
}

/// The URI is made of the run, the target and the name: when the listing changes any of
/// them for an `id`, the stored row (and so the next event's `data.uri`) follows.
#[test]
fn a_checkpoints_run_target_and_name_follow_the_listing() {
    let mut moved = ck("1", Some("SYNCING"));
    moved.name = "step-1b".into();
    moved.run_id = "run-2".into();
    moved.target = CheckpointTarget::Other("draft".into());
    moved.sync_status = Some("ARCHIVED".into());
    let (state, all) = run(&opts(), &[vec![ck("1", Some("SYNCING"))], vec![moved]], 1);
    assert_eq!(all[1], vec![(StatusChanged, "1".to_string())]);
    let row = &state.checkpoints["1"];
    assert_eq!(
        (row.name.as_str(), row.run_id.as_str()),
        ("step-1b", "run-2")
    );
    assert_eq!(row.uri(), None, "an unknown target has no URI");
}

/// A checkpoint still listed but left out by a narrowed `checkpoint_targets` is not
/// missing: never `deleted` however many polls pass; one really gone still is.
#[test]
fn a_listed_checkpoint_left_out_by_checkpoint_targets_is_not_deleted() {
    let o = opts();
    let both = vec![ck("1", Some("COMPLETE")), ck("2", Some("COMPLETE"))];
    let mut state = TargetState::default();
    plan("t", &state, listed(&both, 1), t0(), &o).apply(&mut state);
    let only_1 = vec![ck("1", Some("COMPLETE"))];
    let unwatched: HashSet<String> = ["2".to_string()].into();
    for _ in 0..5 {
        let l = Listing {
            unwatched: &unwatched,
            ..listed(&only_1, 2)
        };
        let p = plan("t", &state, l, t0(), &o);
        assert!(p.diff.events.is_empty(), "{:?}", p.diff.events);
        p.apply(&mut state);
    }
    assert!(!state.checkpoints["2"].deleted && state.checkpoints["2"].missing == 0);
    // Gone from the listing itself: deleted as ever.
    for _ in 0..o.delete_after_missing {
        plan("t", &state, listed(&only_1, 3), t0(), &o).apply(&mut state);
    }
    assert!(state.checkpoints["2"].deleted);
}

#[test]
fn stalled_fires_once_after_the_threshold() {
    let o = opts();
    let l = vec![ck("1", Some("SYNCING"))];
    // polls 20 minutes apart: t=0 baseline, t=20 nothing, t=40 stalled, t=60 nothing
    let (_, all) = run(&o, &[l.clone(), l.clone(), l.clone(), l.clone()], 20);
    assert!(all[0].is_empty() && all[1].is_empty());
    assert_eq!(all[2], vec![(Stalled, "1".to_string())]);
    assert!(all[3].is_empty());
}

#[test]
fn stalled_off_when_unset_and_never_for_complete() {
    let o = DiffOptions {
        stalled_after: None,
        ..opts()
    };
    let l = vec![ck("1", Some("SYNCING"))];
    check_with(&o, &[l.clone(), l.clone(), l], 60, &[]);
    let l = vec![ck("1", Some("COMPLETE"))];
    check_with(&opts(), &[l.clone(), l.clone(), l], 60, &[]);
}

#[test]
fn deleted_after_n_consecutive_missing_listings() {
    let both = vec![ck("1", Some("COMPLETE")), ck("2", Some("COMPLETE"))];
    let one = vec![ck("2", Some("COMPLETE"))];
    let (state, all) = run(
        &opts(),
        &[both.clone(), one.clone(), one.clone(), one.clone()],
        1,
    );
    assert!(all[1].is_empty());
    assert_eq!(all[2], vec![(Deleted, "1".to_string())]);
    assert!(all[3].is_empty(), "deleted fires once");
    assert!(state.checkpoints["1"].deleted);
    // a gap shorter than N resets the count
    let (_, all) = run(
        &opts(),
        &[both.clone(), one.clone(), both.clone(), one.clone()],
        1,
    );
    assert!(all.iter().all(Vec::is_empty));
}

#[test]
fn the_missing_count_is_state_and_resets_on_reappearance() {
    let both = vec![ck("1", Some("COMPLETE")), ck("2", Some("COMPLETE"))];
    let mut state = TargetState::default();
    state.apply(&diff("t", &state, &both, t0(), &opts()));
    let d = diff("t", &state, &both[1..], t0(), &opts());
    assert!(d.events.is_empty() && d.writes());
    state.apply(&d);
    assert_eq!(state.checkpoints["1"].missing, 1);
    let d = diff("t", &state, &both, t0(), &opts());
    assert!(d.events.is_empty());
    state.apply(&d);
    assert_eq!(state.checkpoints["1"].missing, 0);
}

#[test]
fn a_checkpoint_flapping_in_and_out_is_deleted_once() {
    let l = vec![ck("1", Some("COMPLETE"))];
    let (state, all) = run(
        &opts(),
        &[l.clone(), vec![], vec![], l.clone(), vec![], vec![], vec![]],
        1,
    );
    let deletes = all.iter().flatten().filter(|(k, _)| *k == Deleted).count();
    assert_eq!(deletes, 1, "{all:?}");
    assert!(state.checkpoints["1"].deleted);
}

#[test]
fn reappearing_tombstone_is_not_discovered_again() {
    let l = vec![ck("1", Some("COMPLETE"))];
    check(&[l.clone(), vec![], vec![], l.clone()], &[]);
    check(
        &[
            vec![ck("1", Some("SYNCING"))],
            vec![],
            vec![],
            vec![ck("1", Some("COMPLETE"))],
        ],
        &[(Completed, "1")],
    );
}

#[test]
fn unchanged_listing_is_no_diff() {
    let l = vec![ck("1", Some("SYNCING")), ck("2", Some("COMPLETE"))];
    let mut state = TargetState::default();
    state.apply(&diff("t", &state, &l, t0(), &opts()));
    let d = diff("t", &state, &l, t0() + TimeDelta::seconds(5), &opts());
    assert_eq!(d, Diff::default());
}

#[test]
fn only_checkpoints_that_can_still_stall_make_a_state_depend_on_time() {
    let mut state = TargetState::default();
    let l = vec![ck("1", Some("COMPLETE")), ck("2", Some("SYNCING"))];
    state.apply(&diff("t", &state, &l, t0(), &opts()));
    assert!(!state.timeless(&opts()), "2 can still stall");
    let never = DiffOptions {
        stalled_after: None,
        ..opts()
    };
    assert!(state.timeless(&never));
    // once 2 has stalled (or completed), nothing is left for the clock to change
    let later = t0() + TimeDelta::hours(1);
    state.apply(&diff("t", &state, &l, later, &opts()));
    assert!(state.checkpoints["2"].stalled && state.timeless(&opts()));
}

#[test]
fn other_field_changes_are_stored_silently() {
    let mut a = ck("1", Some("SYNCING"));
    let mut state = TargetState::default();
    state.apply(&diff("t", &state, std::slice::from_ref(&a), t0(), &opts()));
    a.raw = r#"{"id":"1","size_bytes":99}"#.into();
    let d = diff("t", &state, &[a], t0(), &opts());
    assert!(d.events.is_empty());
    assert!(d.writes());
}

#[test]
fn completed_carries_previous_status_and_sync_seconds() {
    let mut state = TargetState::default();
    state.apply(&diff(
        "t",
        &state,
        &[ck("1", Some("SYNCING"))],
        t0(),
        &opts(),
    ));
    let d = diff(
        "t",
        &state,
        &[ck("1", Some("COMPLETE"))],
        t0() + TimeDelta::milliseconds(82_300),
        &opts(),
    );
    let e = &d.events[0];
    assert_eq!(e.previous_sync_status.as_deref(), Some("SYNCING"));
    assert_eq!(e.sync_status.as_deref(), Some("COMPLETE"));
    assert_eq!(e.sync_seconds, Some(82.3));
    assert_eq!(e.first_seen_at, t0());
    // the same detection on the same state yields the same id (crash before commit)
    let again = diff(
        "t",
        &state,
        &[ck("1", Some("COMPLETE"))],
        t0() + TimeDelta::seconds(90),
        &opts(),
    );
    assert_eq!(again.events[0].id, e.id);
}

#[test]
fn events_come_in_creation_order() {
    let l = vec![ck("3", None), ck("1", None), ck("2", None)];
    check(
        &[vec![], l],
        &[(Discovered, "1"), (Discovered, "2"), (Discovered, "3")],
    );
}

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn status() -> impl Strategy<Value = Option<&'static str>> {
        prop_oneof![
            Just(None),
            Just(Some("SYNCING")),
            Just(Some("COMPLETE")),
            Just(Some("COMPLETED")),
            Just(Some("FAILED")),
        ]
    }

    fn listing() -> impl Strategy<Value = Vec<Checkpoint>> {
        proptest::collection::btree_map(0u8..6, status(), 0..6).prop_map(|m| {
            m.into_iter()
                .map(|(id, s)| ck(&id.to_string(), s))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn completed_at_most_once_and_unchanged_is_silent(
            listings in proptest::collection::vec(listing(), 1..12),
            emit_existing: bool,
            delete_after in 1u32..4,
            gaps in proptest::collection::vec(0i64..40, 12),
        ) {
            let o = DiffOptions { emit_existing, delete_after_missing: delete_after, stalled_after: Some(TimeDelta::minutes(30)), probe_null: false };
            let mut state = TargetState::default();
            let mut completed = HashSet::new();
            let mut ids = HashSet::new();
            let mut now = t0();
            for (i, l) in listings.iter().enumerate() {
                now += TimeDelta::minutes(gaps[i]);
                let d = diff("t", &state, l, now, &o);
                for e in &d.events {
                    prop_assert!(ids.insert(e.id.clone()), "event id reused: {:?}", e);
                    if e.kind == EventType::Completed {
                        prop_assert!(completed.insert(e.checkpoint_id.clone()), "completed twice: {}", e.checkpoint_id);
                    }
                }
                state.apply(&d);
                // Repeating a listing settles within N polls (the deletion count),
                // after which it emits and writes nothing.
                for _ in 0..delete_after {
                    let d = diff("t", &state, l, now, &o);
                    for e in &d.events {
                        prop_assert!(e.kind == EventType::Deleted, "repeated listing emitted {:?}", e);
                        prop_assert!(ids.insert(e.id.clone()));
                    }
                    state.apply(&d);
                }
                let again = diff("t", &state, l, now, &o);
                prop_assert!(again.events.is_empty(), "unchanged listing emitted {:?}", again.events);
                prop_assert!(!again.writes(), "unchanged listing writes {:?}", again.updates);
                // What lets a poller skip a settled listing: a timeless state stays
                // silent for that listing however late it comes again.
                if state.timeless(&o) {
                    let later = diff("t", &state, l, now + TimeDelta::days(3), &o);
                    prop_assert!(!later.writes(), "timeless state changed later: {:?}", later);
                }
            }
        }
    }
}

#[test]
fn a_null_checkpoint_found_ready_completes_once_with_its_ready_by() {
    let o = DiffOptions {
        probe_null: true,
        ..opts()
    };
    let l = vec![ck("1", None), ck("2", Some("SYNCING"))];
    let mut state = TargetState::default();
    let d = diff("t", &state, &l, t0(), &o);
    state.apply(&d);
    assert!(!state.timeless(&o), "a null checkpoint waits for a probe");
    let ready = Ready::from([("1".to_string(), ReadyBy::Files)]);
    let at = t0() + TimeDelta::minutes(1);
    let d = diff_ready("t", &state, &l, &ready, at, &o);
    assert_eq!(d.events.len(), 1);
    assert_eq!(
        (d.events[0].kind, d.events[0].ready_by),
        (Completed, Some(ReadyBy::Files))
    );
    assert!(
        d.events[0]
            .standard_body()
            .contains(r#""ready_by":"files""#)
    );
    state.apply(&d);
    assert!(state.checkpoints["1"].completed);
    // Found ready again, or turning COMPLETE later: nothing more.
    assert!(
        diff_ready("t", &state, &l, &ready, at, &o)
            .events
            .is_empty()
    );
    let later = vec![ck("1", Some("COMPLETE")), ck("2", Some("COMPLETE"))];
    let d = diff("t", &state, &later, at, &o);
    let kinds: Vec<_> = d
        .events
        .iter()
        .map(|e| (e.kind, e.checkpoint_id.as_str(), e.ready_by))
        .collect();
    assert_eq!(kinds, [(Completed, "2", Some(ReadyBy::SyncStatus))]);
    // A SYNCING checkpoint is not completed by a probe.
    let ready2 = Ready::from([("2".to_string(), ReadyBy::Files)]);
    assert!(
        diff_ready("t", &state, &l, &ready2, at, &o)
            .events
            .is_empty()
    );
}
