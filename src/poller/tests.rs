//! The poller against the simulated API and a real SQLite store: what a poll writes,
//! what it leaves alone, and the upstream edges it must survive.

use super::*;

async fn poller(sim: &crate::sim::SimApi, sinks: &str) -> (Poller, TargetConfig) {
    let targets =
        "[[targets]]\nname = \"t\"\nrun_id = \"r1\"\ncheckpoint_targets = [\"sampler\"]\n";
    let (p, cfg) = poller_for(sim, &format!("{targets}{sinks}")).await;
    (p, cfg.targets[0].clone())
}

/// A poller over `sim` and an in-memory SQLite store for the targets, sinks and `[poll]`
/// of `body` (TOML after `[api]` and `[store]`).
async fn poller_for(sim: &crate::sim::SimApi, body: &str) -> (Poller, crate::config::Config) {
    poller_at(sim, body, 1000.0).await
}

/// [`poller_for`] sending at most `rps` requests a second.
async fn poller_at(
    sim: &crate::sim::SimApi,
    body: &str,
    rps: f64,
) -> (Poller, crate::config::Config) {
    let toml = format!(
        "[api]\nbase_url = \"{}\"\napi_key_env = \"K\"\nmax_requests_per_second = {rps}\n\
         [store]\nurl = \"sqlite::memory:\"\n{body}",
        sim.base_url()
    );
    let env = crate::config::Environment::from_pairs([("K", "key")]);
    let cfg = crate::config::load_str(&toml, ::config::FileFormat::Toml, "test", &env)
        .expect("valid config");
    let store: Arc<dyn Store> = Arc::new(
        crate::store::sqlite::SqliteStore::open("sqlite::memory:")
            .await
            .unwrap(),
    );
    let names = cfg.targets.iter().map(|t| t.name.clone());
    let poller = Poller::new(
        Arc::new(api::Client::new(&cfg.api).unwrap()),
        store,
        Arc::new(Metrics::new()),
        Some(Wake::new()),
        Arc::new(Health::new(names)),
        cfg.poll.clone(),
        cfg.sinks.clone(),
    );
    (poller, cfg)
}

/// What a stored state must agree with in memory (the store keeps times to the ms).
fn summary(s: &TargetState) -> impl PartialEq + std::fmt::Debug + use<> {
    let rows: Vec<_> = s
        .checkpoints
        .values()
        .map(|c| (c.id.to_string(), c.sync_status.clone(), c.completed, c.seq))
        .collect();
    (s.baselined, s.filter.clone(), s.settled, rows)
}

fn requests(p: &Poller, code: &str) -> u64 {
    p.metrics
        .api_requests
        .with_label_values(&["list", code])
        .get()
}

#[tokio::test]
async fn a_failed_fetch_or_decode_is_counted_and_changes_nothing() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    sim.handle().push_fault(crate::sim::Fault::Status {
        code: 503,
        retry_after: None,
        body: None,
    });
    let e = p
        .poll_target(&t, &mut state, false, None)
        .await
        .unwrap_err();
    assert!(matches!(
        e,
        PollError::Api(api::Error::Status { code: 503, .. })
    ));
    sim.handle().push_fault(crate::sim::Fault::Truncated);
    let e = p
        .poll_target(&t, &mut state, false, None)
        .await
        .unwrap_err();
    assert!(matches!(e, PollError::Api(api::Error::Decode(_))));
    assert_eq!(state, TargetState::default());
    assert_eq!((requests(&p, "503"), requests(&p, "decode")), (1, 1));
    assert_eq!(
        p.store.load_target("t").await.unwrap(),
        TargetState::default()
    );
}

#[tokio::test]
async fn a_settled_listing_is_neither_decoded_nor_written_again() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    h.add_checkpoint("r1", "trainer", "step-1", Some("COMPLETE"));
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    let first = p.poll_target(&t, &mut state, false, None).await.unwrap();
    assert!(first.wrote && first.events.is_empty(), "a silent baseline");
    assert_eq!(first.checkpoints, 1, "narrowed to the sampler");
    assert!(state.settled.is_some());
    assert_eq!(
        summary(&state),
        summary(&p.store.load_target("t").await.unwrap())
    );
    let again = p.poll_target(&t, &mut state, false, None).await.unwrap();
    assert!(!again.wrote && again.events.is_empty());
    assert_eq!(again.checkpoints, 1);
    assert_eq!(requests(&p, "200"), 2);
}

#[tokio::test]
async fn a_change_is_committed_with_its_deliveries_and_the_state_advances() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r1", "sampler", "step-1", Some("SYNCING"));
    let sink = "[[sinks]]\nname = \"s\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
                events = [\"checkpoint.completed\"]\n";
    let (p, t) = poller(&sim, sink).await;
    let mut state = TargetState::default();
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    h.set_status(&id, Some("COMPLETE"));
    // A dry run sees the event and writes nothing.
    let before = state.clone();
    let dry = p.poll_target(&t, &mut state, true, None).await.unwrap();
    assert_eq!(dry.events.len(), 1);
    assert!(!dry.wrote);
    assert_eq!(state, before);
    let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
    assert_eq!(report.events.len(), 1);
    assert_eq!(report.events[0].kind, EventType::Completed);
    assert!(state.checkpoints[id.as_str()].completed);
    assert_eq!(
        summary(&state),
        summary(&p.store.load_target("t").await.unwrap())
    );
    let due = p
        .store
        .claim_due("s", Utc::now(), 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].event.id, report.events[0].id);
}

#[tokio::test]
async fn a_deleted_event_commits_the_last_stored_object_without_a_second_trip() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    h.set_field(&id, "note", serde_json::json!("kept from the last listing"));
    let sink = "[[sinks]]\nname = \"s\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
                events = [\"checkpoint.deleted\"]\n";
    let (p, t) = poller(&sim, sink).await;
    let mut state = TargetState::default();
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    h.remove(&id);
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
    assert_eq!(report.events.len(), 1);
    assert_eq!(report.events[0].kind, EventType::Deleted);
    assert!(
        report.events[0].checkpoint.is_empty(),
        "the poller holds a digest only"
    );
    let due = p
        .store
        .claim_due("s", Utc::now(), 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    let body: serde_json::Value = serde_json::from_str(&due[0].event.body).unwrap();
    assert_eq!(body["type"], "checkpoint.deleted");
    assert_eq!(body["data"]["checkpoint"]["id"], id.as_str());
    assert_eq!(
        body["data"]["checkpoint"]["note"],
        "kept from the last listing"
    );
}

#[tokio::test]
async fn a_cancelled_poll_writes_nothing() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    sim.handle()
        .push_fault(crate::sim::Fault::Delay(Duration::from_secs(30)));
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let e = p
        .poll_until(&t, &mut state, false, None, &cancel, None)
        .await
        .unwrap_err();
    assert!(matches!(e, PollError::Cancelled));
    assert_eq!(state, TargetState::default());
}

fn ck(id: &str, target: CheckpointTarget) -> Checkpoint {
    Checkpoint {
        id: id.into(),
        name: "step-1".into(),
        run_id: "r".into(),
        target,
        checkpoint_type: "lora".into(),
        size_bytes: 1,
        created_at: "2026-11-26T00:00:00Z".into(),
        base_model: None,
        sync_status: None,
        raw: "{}".into(),
    }
}

#[test]
fn narrow_keeps_every_checkpoint_without_a_list_and_only_the_named_ones_with_one() {
    let l = || {
        vec![
            ck("a", CheckpointTarget::Sampler),
            ck("b", CheckpointTarget::Trainer),
            ck("c", CheckpointTarget::parse("draft")),
            ck("d", CheckpointTarget::parse("")),
        ]
    };
    let ids = |only: Option<&BTreeSet<CheckpointTarget>>| -> Vec<String> {
        narrow(l(), only).into_iter().map(|c| c.id).collect()
    };
    assert_eq!(ids(None), ["a", "b", "c", "d"], "absent: every checkpoint");
    let only = BTreeSet::from([CheckpointTarget::Trainer]);
    assert_eq!(ids(Some(&only)), ["b"]);
    // Both known values no longer stand for "everything": a list takes what it names.
    let both = BTreeSet::from(CheckpointTarget::ALL);
    assert_eq!(ids(Some(&both)), ["a", "b"]);
    let draft = BTreeSet::from([CheckpointTarget::parse("draft")]);
    assert_eq!(ids(Some(&draft)), ["c"]);
}

#[test]
fn route_sends_each_event_to_the_sinks_that_want_it() {
    let env = crate::config::Environment::from_pairs([("K", "key")]);
    let toml = "[api]\napi_key_env = \"K\"\n[[targets]]\nname = \"t\"\nrun_id = \"r\"\n[[targets]]\nname = \"u\"\nrun_id = \"q\"\n\
        [[sinks]]\nname = \"all\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
        [[sinks]]\nname = \"done-t\"\nkind = \"exec\"\ncommand = [\"true\"]\n\
        events = [\"checkpoint.completed\"]\ntargets = [\"t\"]\n\
        [[sinks]]\nname = \"trainer\"\nkind = \"exec\"\ncommand = [\"true\"]\ncheckpoint_targets = [\"trainer\"]\n\
        [[sinks]]\nname = \"known\"\nkind = \"exec\"\ncommand = [\"true\"]\ncheckpoint_targets = [\"sampler\", \"trainer\"]\n";
    let cfg = crate::config::load_str(toml, ::config::FileFormat::Toml, "test", &env).unwrap();
    let event = |kind, target: &str, ct| Event {
        id: "evt_1".into(),
        kind,
        target: target.into(),
        checkpoint_id: "c".into(),
        checkpoint_name: "step-1".into(),
        run_id: "r".into(),
        checkpoint_target: ct,
        detected_at: Utc::now(),
        previous_sync_status: None,
        sync_status: None,
        first_seen_at: Utc::now(),
        sync_seconds: None,
        ready_by: None,
        checkpoint: "{}".into(),
    };
    let events = [
        event(EventType::Completed, "t", CheckpointTarget::Sampler),
        event(EventType::Completed, "u", CheckpointTarget::Sampler),
        event(EventType::Discovered, "t", CheckpointTarget::Trainer),
        event(EventType::Discovered, "t", CheckpointTarget::parse("draft")),
        event(EventType::Discovered, "t", CheckpointTarget::parse("")),
    ];
    // A sink without checkpoint_targets takes unknown targets too; a list only what
    // it names.
    assert_eq!(
        route(&events, &cfg.sinks),
        [
            vec!["all", "done-t", "known"],
            vec!["all", "known"],
            vec!["all", "trainer", "known"],
            vec!["all"],
            vec!["all"],
        ]
    );
    assert!(route(&events, &[]).iter().all(Vec::is_empty));
}

fn routed(p: &Poller, endpoint: &str, code: &str) -> u64 {
    p.metrics
        .api_requests
        .with_label_values(&[endpoint, code])
        .get()
}

/// Baseten answers a `checkpoint_path` that names nothing 404 ("missing and inaccessible
/// checkpoints share one public error"): an empty listing, a successful poll. The
/// checkpoint it listed before is deleted after `delete_after_missing_polls`.
#[tokio::test]
async fn a_checkpoint_path_answered_404_is_an_empty_listing() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    let body = "[[targets]]\nname = \"p\"\ncheckpoint_path = \"bt://loops:r1/sampler_weights/step-1\"\n\
                [[sinks]]\nname = \"s\"\nkind = \"exec\"\ncommand = [\"true\"]\nevents = [\"checkpoint.deleted\"]\n";
    let (p, cfg) = poller_for(&sim, body).await;
    let t = &cfg.targets[0];
    let mut state = TargetState::default();
    // Not there from the start: still a poll that succeeds, and the target is ready.
    h.remove(&id);
    let first = p.poll_target(t, &mut state, false, None).await.unwrap();
    assert_eq!(first.checkpoints, 0);
    assert!(p.health.ready().is_ok(), "{:?}", p.health.ready());
    assert_eq!(routed(&p, "list", "404"), 1);
    // Listed, then gone: deleted after two successful empty listings.
    let id = h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    let mut state = TargetState::default();
    p.poll_target(t, &mut state, false, None).await.unwrap();
    h.remove(&id);
    let gone_once = p.poll_target(t, &mut state, false, None).await.unwrap();
    assert!(gone_once.events.is_empty());
    let gone_twice = p.poll_target(t, &mut state, false, None).await.unwrap();
    let kinds: Vec<_> = gone_twice.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::Deleted]);
    assert_eq!(routed(&p, "list", "404"), 3);

    // A proxy's 404 page is not the API's answer: an error, and nothing changes.
    let before = state.clone();
    h.push_fault(crate::sim::Fault::Status {
        code: 404,
        retry_after: None,
        body: Some("<html><body>404 Not Found</body></html>".into()),
    });
    let e = p.poll_target(t, &mut state, false, None).await.unwrap_err();
    assert!(
        matches!(e, PollError::Api(api::Error::Status { code: 404, .. })),
        "{e}"
    );
    assert_eq!(state, before);
}

/// For `run_id` (and `base_model`) a 404 stays an error that changes nothing.
#[tokio::test]
async fn a_run_id_answered_404_stays_an_error() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    sim.handle()
        .add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    let before = state.clone();
    sim.handle().push_fault(crate::sim::Fault::Status {
        code: 404,
        retry_after: None,
        body: None,
    });
    let e = p
        .poll_target(&t, &mut state, false, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, PollError::Api(api::Error::Status { code: 404, .. })),
        "{e}"
    );
    assert_eq!(state, before);
}

/// A target without `checkpoint_targets` tracks every checkpoint, unknown targets (the
/// empty one included) too, and its unfiltered sinks get their events.
#[tokio::test]
async fn an_unfiltered_target_keeps_unknown_and_empty_targets() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    h.add_checkpoint("r1", "sampler", "step-1", Some("COMPLETE"));
    let body = "[poll]\nemit_existing = true\n[[targets]]\nname = \"t\"\nrun_id = \"r1\"\n\
                [[sinks]]\nname = \"all\"\nkind = \"exec\"\ncommand = [\"true\"]\nevents = [\"checkpoint.discovered\"]\n\
                [[sinks]]\nname = \"known\"\nkind = \"exec\"\ncommand = [\"true\"]\nevents = [\"checkpoint.discovered\"]\n\
                checkpoint_targets = [\"sampler\", \"trainer\"]\n";
    let (p, cfg) = poller_for(&sim, body).await;
    let mut state = TargetState::default();
    p.poll_target(&cfg.targets[0], &mut state, false, None)
        .await
        .unwrap();
    let draft = h.add_checkpoint("r1", "draft", "step-2", Some("SYNCING"));
    let blank = h.add_checkpoint("r1", "", "step-3", Some("SYNCING"));
    let report = p
        .poll_target(&cfg.targets[0], &mut state, false, None)
        .await
        .unwrap();
    assert_eq!(report.checkpoints, 3);
    let mut ids: Vec<_> = report
        .events
        .iter()
        .map(|e| e.checkpoint_id.clone())
        .collect();
    ids.sort();
    let mut want = vec![draft, blank];
    want.sort();
    assert_eq!(ids, want);
    let all = p
        .store
        .claim_due("all", Utc::now(), 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    let known = p
        .store
        .claim_due("known", Utc::now(), 10, false, Duration::from_secs(60))
        .await
        .unwrap();
    // The baseline's sampler went to both; draft and "" only to the unfiltered sink.
    assert_eq!((all.len(), known.len()), (3, 1));
}

/// A null checkpoint's probe against a files route that pages without end: it stops at a
/// token it already sent, or after `ceil(total_count / page_size) + 1` pages, and the
/// checkpoint is not ready yet.
#[tokio::test]
async fn a_probe_stops_paging_at_a_repeated_token_or_past_total_count() {
    use crate::sim::{Fault, Paging, Route};
    // 3,000 files: 4 pages at most. (fault, files requests of one probe): Cycle sends
    // 0, 1, 2 and stops at 1 again; Growing and EmptyPages page on to the bound.
    for (paging, pages) in [
        (Paging::Cycle, 3),
        (Paging::Growing, 4),
        (Paging::EmptyPages, 4),
    ] {
        let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
        let h = sim.handle();
        let id = h.add_checkpoint("r1", "sampler", "step-1", None);
        let names: Vec<String> = (0..3000).map(|i| format!("f{i}")).collect();
        let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        h.set_files(&id, &files);
        let (p, t) = poller(&sim, "").await;
        let mut state = TargetState::default();
        p.poll_target(&t, &mut state, false, None).await.unwrap();
        h.set_fault_on(Route::Files, Some(Fault::Paging(paging)));
        let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
        assert!(report.events.is_empty(), "{paging:?}");
        assert!(!state.checkpoints[id.as_str()].completed, "{paging:?}");
        assert_eq!(h.requests_to(Route::Source), 1, "{paging:?}");
        assert_eq!(h.requests_to(Route::Files), pages, "{paging:?}");
        assert!(state.probes.contains_key(id.as_str()), "probed, remembered");
    }
}

/// All probes of one poll share [`PROBE_REQUESTS_PER_POLL`], running at once: a
/// checkpoint whose files route pages on and on spends what the others leave, and the
/// poll sends no more.
#[tokio::test]
async fn a_polls_probes_spend_at_most_their_request_budget() {
    use crate::sim::{Fault, Paging, Route};
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let big = h.add_checkpoint("r1", "sampler", "step-1", None);
    // 40,000 files claimed, none served: 41 pages allowed, more than the budget.
    let names: Vec<String> = (0..40_000).map(|i| format!("f{i}")).collect();
    let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    h.set_files(&big, &files);
    let small = h.add_checkpoint("r1", "sampler", "step-2", None);
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    h.set_fault_on(Route::Files, Some(Fault::Paging(Paging::EmptyPages)));
    p.poll_target(&t, &mut state, false, None).await.unwrap();
    let spent = h.requests_to(Route::Source) + h.requests_to(Route::Files);
    assert_eq!(spent, PROBE_REQUESTS_PER_POLL as u64);
    assert_eq!(h.requests_to(Route::Source), 2, "both probed, at once");
    assert!(state.probes.contains_key(big.as_str()));
    assert!(state.probes.contains_key(small.as_str()));
    assert!(!state.checkpoints[big.as_str()].completed);
}

/// A target whose files route pages without end cannot take the others' polls: with one
/// poll slot for both and 40 requests a second, the hostile target's probing polls end
/// within their budget and the other target keeps polling at about its interval (before
/// the budget, the first probing poll held the slot for 8 x 1,000 pages: 200 s).
#[tokio::test]
async fn another_target_keeps_its_cadence_while_one_pages_without_end() {
    use crate::sim::{Fault, Paging, Route};
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    for i in 0..MAX_PROBES_PER_POLL {
        h.add_checkpoint("hostile", "sampler", &format!("step-{i}"), None);
    }
    h.add_checkpoint("calm", "sampler", "step-1", Some("COMPLETE"));
    h.set_fault_on(Route::Files, Some(Fault::Paging(Paging::Cycle)));
    let body = "[poll]\nconcurrency = 1\njitter = 0\n\
                [[targets]]\nname = \"hostile\"\nrun_id = \"hostile\"\ninterval = \"200ms\"\nsyncing_interval = \"200ms\"\n\
                [[targets]]\nname = \"calm\"\nrun_id = \"calm\"\ninterval = \"200ms\"\nsyncing_interval = \"200ms\"\n";
    let (p, cfg) = poller_at(&sim, body, 40.0).await;
    let p = Arc::new(p);
    let token = CancellationToken::new();
    let mut loops = Vec::new();
    for t in cfg.targets.clone() {
        let (p, token) = (p.clone(), token.clone());
        let beat = p
            .health
            .heartbeat(&format!("target {}", t.name), Duration::from_secs(60));
        loops.push(tokio::spawn(async move {
            p.run_target(t, None, token, beat).await
        }));
    }
    let polls = |name: &str| p.metrics.target(name).polls(PollOutcome::Success);
    // Until `done` holds, or fail after `within` (generous: the condition is what counts).
    async fn until(within: Duration, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + within;
        while !done() {
            assert!(Instant::now() < deadline, "not within {within:?}: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Both baselined, and the hostile target's first probing poll under way.
    until(Duration::from_secs(10), "both targets polled", || {
        polls("calm") >= 1 && h.requests_to(Route::Files) > 0
    })
    .await;
    let (start, calm_before) = (Instant::now(), polls("calm"));
    let hostile_before = polls("hostile");
    // Three more calm polls: each waits for a hostile poll to end. Unbounded, that first
    // probing poll alone took 200 s; bounded, about a second each.
    until(
        Duration::from_secs(30),
        "three more polls of the calm target",
        || polls("calm") >= calm_before + 3,
    )
    .await;
    let (window, calm) = (start.elapsed(), polls("calm") - calm_before);
    let (hostile, hostile_total) = (polls("hostile") - hostile_before, polls("hostile"));
    token.cancel();
    for l in loops {
        l.await.unwrap();
    }
    let files = h.requests_to(Route::Files);
    println!(
        "calm target: {calm} polls in {:.1} s (one every {:.2} s); hostile: {hostile} polls, {files} files requests",
        window.as_secs_f64(),
        window.as_secs_f64() / calm.max(1) as f64
    );
    // One slot, taken in turn: each calm poll came after a hostile one that ended.
    assert!(
        hostile >= 2,
        "the hostile target's polls end too: {hostile}"
    );
    assert!(
        files <= (hostile_total + 1) * PROBE_REQUESTS_PER_POLL as u64,
        "{files} files requests for {hostile_total} polls (and one cut by the end)"
    );
}

/// Integers sent as strings or whole floats (accepted by the SDK's lax models) decode, in
/// the listing and in the files pages: the poll and the probe work as with plain ones.
#[tokio::test]
async fn integers_as_strings_or_floats_decode_in_listings_and_files() {
    use crate::sim::{Fault, Route};
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let id = h.add_checkpoint("r1", "sampler", "step-1", None);
    h.set_files(&id, &[("adapter_config.json", 512), ("weights", 1000)]);
    h.set_size_bytes(&id, 1512);
    let (p, t) = poller(&sim, "").await;
    let mut plain = TargetState::default();
    p.poll_target(&t, &mut plain, false, None).await.unwrap();
    h.set_fault_on(Route::Checkpoints, Some(Fault::LaxNumbers));
    h.set_fault_on(Route::Files, Some(Fault::LaxNumbers));
    let (p, t) = poller(&sim, "").await;
    let mut state = TargetState::default();
    let first = p.poll_target(&t, &mut state, false, None).await.unwrap();
    assert_eq!(first.checkpoints, 1);
    assert_eq!(summary(&state), summary(&plain));
    // The probe reads the lax files pages and finds the 1,512 bytes whole.
    let report = p.poll_target(&t, &mut state, false, None).await.unwrap();
    let kinds: Vec<_> = report.events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::Completed]);
    assert_eq!(
        report.events[0].ready_by,
        Some(crate::model::ReadyBy::Files)
    );
}

/// The fleet's upkeep and `workers` workers over `p`, spawned; cancelling `stop` ends them.
fn run_fleet(
    p: &Arc<Poller>,
    workers: usize,
    stop: &CancellationToken,
) -> (Arc<Fleet>, Vec<tokio::task::JoinHandle<()>>) {
    let fleet = Fleet::new(p.clone(), stop.clone());
    let beat = p.health.heartbeat("poller", Duration::from_secs(600));
    let mut tasks = vec![tokio::spawn(fleet.clone().keep(beat))];
    for _ in 0..workers {
        tasks.push(tokio::spawn(fleet.clone().work()));
    }
    (fleet, tasks)
}

/// Add `t` to `fleet`, from `state`, until its token (a child of `stop`) is cancelled.
fn join_fleet(
    fleet: &Fleet,
    p: &Poller,
    t: &TargetConfig,
    state: TargetState,
    stop: &CancellationToken,
) -> (CancellationToken, Gone) {
    let token = stop.child_token();
    let beat = p
        .health
        .heartbeat(&format!("target {}", t.name), Duration::from_secs(600));
    let (joining, gone) = Fleet::target(t.clone(), Some(state), token.clone(), beat);
    fleet.add(joining);
    (token, gone)
}

/// The settled state of each of `targets`, from a poll on the real clock: the fleet's
/// polls of them then never wait on SQLite's thread, which a paused clock runs ahead of.
async fn settled(p: &Poller, targets: &[TargetConfig]) -> Vec<TargetState> {
    let mut states = Vec::new();
    for t in targets {
        let mut s = TargetState::default();
        p.poll_target(t, &mut s, false, None).await.unwrap();
        assert!(s.settled.is_some());
        states.push(s);
    }
    states
}

/// Let the paused clock run until `done` holds; fail after 10 s of real time.
async fn until_paused(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A simulated API with runs `ra` and `rb` (one complete checkpoint each), and a poller
/// at `concurrency` over targets `a` and `b`, polled every second.
async fn two_targets(concurrency: usize) -> (crate::sim::SimApi, Poller, crate::config::Config) {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    h.add_checkpoint("ra", "sampler", "step-1", Some("COMPLETE"));
    h.add_checkpoint("rb", "sampler", "step-1", Some("COMPLETE"));
    let mut body = format!("[poll]\nconcurrency = {concurrency}\njitter = 0\nadaptive = false\n");
    for (name, run) in [("a", "ra"), ("b", "rb")] {
        body.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\nrun_id = \"{run}\"\ninterval = \"1s\"\nsyncing_interval = \"1s\"\n"
        ));
    }
    let (p, cfg) = poller_for(&sim, &body).await;
    (sim, p, cfg)
}

/// Stop the fleet's tasks ([`run_fleet`]) and wait for each.
async fn stop_fleet(stop: &CancellationToken, tasks: Vec<tokio::task::JoinHandle<()>>) {
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

fn fleet_polls(p: &Poller, name: &str) -> u64 {
    p.metrics.target(name).polls(PollOutcome::Success)
}

/// Due targets are polled by the workers, again at their interval (not sooner); a target
/// whose lease another replica holds is not, until this replica takes its lease (then
/// its state is loaded again and it is polled).
#[tokio::test]
async fn the_fleet_polls_the_due_targets_this_replica_owns_and_no_other() {
    let (sim, p, cfg) = two_targets(2).await;
    let h = sim.handle();
    let states = settled(&p, &cfg.targets).await;
    let (a0, b0, requests0) = (fleet_polls(&p, "a"), fleet_polls(&p, "b"), h.requests());
    tokio::time::pause();
    let own = Arc::new(Ownership::new("r1".into()));
    own.set([("a".to_string(), 1)].into_iter().collect());
    let p = Arc::new(p.with_ownership(own.clone()));
    let stop = CancellationToken::new();
    let (fleet, tasks) = run_fleet(&p, 2, &stop);
    for (t, s) in cfg.targets.iter().zip(states) {
        join_fleet(&fleet, &p, t, s, &stop);
    }
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let a = fleet_polls(&p, "a") - a0;
    assert!(
        (5..=7).contains(&a),
        "a polled at its 1 s interval: {a} in 5.5 s"
    );
    assert_eq!(fleet_polls(&p, "b"), b0, "b is another replica's");
    assert_eq!(h.requests() - requests0, a, "no listing request for b");
    assert_eq!(fleet.waiting(), 2, "both wait between turns");

    own.set(
        [("a".to_string(), 1), ("b".to_string(), 2)]
            .into_iter()
            .collect(),
    );
    until_paused("b polled once its lease is held", || {
        fleet_polls(&p, "b") >= b0 + 2
    })
    .await;
    stop_fleet(&stop, tasks).await;
    assert_eq!(fleet.waiting(), 0, "the queue is emptied at shutdown");
}

/// A stopped target leaves the queue at once ([`Fleet::drop_cancelled`]), its `Gone`
/// resolves, and it is never polled again while the others go on.
#[tokio::test]
async fn a_stopped_target_leaves_the_fleet_and_is_polled_no_more() {
    let (_sim, p, cfg) = two_targets(1).await;
    let mut states = settled(&p, &cfg.targets).await.into_iter();
    tokio::time::pause();
    let p = Arc::new(p);
    let stop = CancellationToken::new();
    let (fleet, tasks) = run_fleet(&p, 1, &stop);
    let (a_token, a_gone) = join_fleet(&fleet, &p, &cfg.targets[0], states.next().unwrap(), &stop);
    let _b = join_fleet(&fleet, &p, &cfg.targets[1], states.next().unwrap(), &stop);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(fleet_polls(&p, "a") >= 3 && fleet_polls(&p, "b") >= 3);

    a_token.cancel();
    fleet.drop_cancelled();
    tokio::time::timeout(Duration::from_millis(1), a_gone)
        .await
        .expect("a queued target leaves at once");
    assert_eq!(fleet.waiting(), 1);
    let (a, b) = (fleet_polls(&p, "a"), fleet_polls(&p, "b"));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(fleet_polls(&p, "a"), a, "a stopped target is not polled");
    assert!(fleet_polls(&p, "b") >= b + 4, "b goes on");
    stop_fleet(&stop, tasks).await;
}

/// However many workers run, at most `poll.concurrency` polls are in flight (every
/// listing hangs here, so each one holds its slot); a reload that raises it lets one more
/// through at once.
#[tokio::test]
async fn the_fleet_keeps_to_poll_concurrency() {
    let sim = crate::sim::SimApi::start(Some("key".into())).await.unwrap();
    let h = sim.handle();
    let mut body = "[poll]\nconcurrency = 2\njitter = 0\n".to_string();
    for i in 0..5 {
        h.add_checkpoint(&format!("r{i}"), "sampler", "step-1", Some("COMPLETE"));
        body.push_str(&format!(
            "[[targets]]\nname = \"t{i}\"\nrun_id = \"r{i}\"\ninterval = \"1h\"\n"
        ));
    }
    h.set_fault(Some(crate::sim::Fault::Delay(Duration::from_secs(3600))));
    let (p, cfg) = poller_for(&sim, &body).await;
    tokio::time::pause();
    let p = Arc::new(p);
    let stop = CancellationToken::new();
    let (fleet, tasks) = run_fleet(&p, 4, &stop);
    for t in &cfg.targets {
        // A state to start from: no SQLite before the (hanging) listing.
        join_fleet(&fleet, &p, t, TargetState::default(), &stop);
    }
    until_paused("two listings in flight", || h.requests() >= 2).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.requests(), 2, "two slots: two listings in flight");
    let mut raised = cfg.poll.clone();
    raised.concurrency = std::num::NonZeroUsize::new(3).unwrap();
    p.reconfigure(raised, Vec::new());
    until_paused("a third listing", || h.requests() >= 3).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.requests(), 3, "a third slot: a third listing");
    // Shutdown cuts the polls still waiting for their listing: nothing was written.
    stop_fleet(&stop, tasks).await;
    assert_eq!(fleet.waiting(), 0);
}
