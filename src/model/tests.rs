use super::*;

#[test]
fn a_created_at_past_the_horizon_is_ordered_as_its_first_sight() {
    let t = |s: &str| parse_created_at(s).unwrap();
    let seen = t("2026-12-01T00:00:00Z");
    let poisoned = t("9999-12-31T23:59:59Z");
    assert!(beyond_horizon(poisoned, seen));
    assert_eq!(ordering_time(poisoned, seen), seen);
    // Clock skew up to a day is trusted as written.
    let skewed = t("2026-12-01T23:00:00Z");
    assert!(!beyond_horizon(skewed, seen));
    assert_eq!(ordering_time(skewed, seen), skewed);
    // So a checkpoint created after the poisoned one's first sight is newer.
    assert!(t("2026-12-01T00:05:00Z") > ordering_time(poisoned, seen));
}

/// `latest_only`: the newest candidate ordered strictly after the checkpoint wins; one
/// ordered at the same instant or earlier supersedes nothing.
#[test]
fn the_newest_later_checkpoint_supersedes_and_a_tie_does_not() {
    let t = |s: &str| parse_created_at(s).unwrap();
    let me = t("2026-12-01T00:10:00Z");
    let c = |at: &str, name: &'static str| (t(at), name);
    let all = [
        c("2026-12-01T00:05:00Z", "older"),
        c("2026-12-01T00:10:00Z", "tie"),
        c("2026-12-01T00:30:00Z", "newest"),
        c("2026-12-01T00:20:00Z", "newer"),
    ];
    assert_eq!(superseded_by(all, me), Some("newest"));
    assert_eq!(superseded_by(all[..2].to_vec(), me), None);
    assert_eq!(superseded_by(Vec::<(DateTime<Utc>, &str)>::new(), me), None);
}

#[test]
fn created_at_without_an_offset_is_utc() {
    let want = DateTime::parse_from_rfc3339("2026-01-03T00:00:00.250Z").unwrap();
    for s in [
        "2026-01-03T00:00:00.250Z",
        "2026-01-03T01:00:00.250+01:00",
        "2026-01-03T00:00:00.250",
        "2026-01-03 00:00:00.25",
    ] {
        assert_eq!(parse_created_at(s), Some(want.to_utc()), "{s}");
    }
    assert_eq!(parse_created_at("yesterday"), None);
}

#[test]
fn both_spellings_of_complete_are_complete() {
    assert_eq!(SyncClass::of(Some("COMPLETE")), SyncClass::Complete);
    assert_eq!(SyncClass::of(Some("COMPLETED")), SyncClass::Complete);
    assert_eq!(SyncClass::of(Some("complete")), SyncClass::Other);
    assert_eq!(SyncClass::of(None), SyncClass::Unknown);
    assert!(SyncClass::of(None).is_pending());
    assert!(!SyncClass::of(Some("FAILED")).is_pending());
}

#[test]
fn event_ids_are_stable_and_distinct() {
    let t = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
    let a = event_id("qwen", "ck1", t, 0);
    assert_eq!(a, event_id("qwen", "ck1", t, 0));
    assert_eq!(a.len(), 30);
    assert!(a.starts_with("evt_"));
    assert_ne!(a, event_id("qwen", "ck1", t, 1));
    assert_ne!(a, event_id("qwen2", "ck1", t, 0));
    assert_ne!(event_id("a", "bc", t, 0), event_id("ab", "c", t, 0));
}

#[test]
fn uri_uses_the_target_segment() {
    assert_eq!(
        checkpoint_uri("k4q95w5", &CheckpointTarget::Sampler, "step-100").unwrap(),
        "bt://loops:k4q95w5/sampler_weights/step-100"
    );
    assert_eq!(
        checkpoint_uri("k4q95w5", &CheckpointTarget::Trainer, "step-100").unwrap(),
        "bt://loops:k4q95w5/weights/step-100"
    );
    let draft = CheckpointTarget::parse("draft");
    assert_eq!(checkpoint_uri("k4q95w5", &draft, "step-100"), None);
    assert_eq!((draft.as_str(), draft.label()), ("draft", "other"));
    assert_eq!(
        CheckpointTarget::parse(""),
        CheckpointTarget::Other("".into())
    );
    assert_eq!(serde_json::to_string(&draft).unwrap(), r#""draft""#);
}
