//! Upgrades: a store written by the first released schema (tests/data/upgrade/, made by
//! its `make` script from migration 0001 alone) opened by this build. Its migrations run,
//! the target is not baselined again, no event is replayed, the delivery that was pending
//! is delivered under its stored id, and new completions are found and delivered.
//! docs/upgrading.md has the rule that keeps this passing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::wait::polls_later;
use common::{COMPLETED_ONLY, Env, Receiver, never_in_polls, pg, qwen_to, set_store_url, wait_for};
use loopwatch::sim::SimHandle;
use loopwatch::store::Access;

const T: Duration = Duration::from_secs(60);
/// The fixture's rows (tests/data/upgrade/rows.sql).
const BASELINED_AT_MS: i64 = 1_768_042_800_000;
const DELIVERED_EVENT: &str = "evt_318d26c79ad000a0eced437805";
const PENDING_EVENT: &str = "evt_87d1c015c561ebac8058a0eeaa";

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/upgrade")
        .join(name)
}

/// The upstream listing as it stands: the fixture's two checkpoints, unchanged.
fn listing_as_stored(h: &SimHandle) {
    let rows = [
        ("step-100", "ckpt_v1a000001", "2026-01-10T12:00:00.000Z"),
        ("step-200", "ckpt_v1a000002", "2026-01-10T12:30:00.000Z"),
    ];
    for (name, id, created) in rows {
        let sim_id = h.add_checkpoint("run-1", "sampler", name, Some("COMPLETE"));
        h.set_field(&sim_id, "id", serde_json::json!(id));
        h.set_field(&sim_id, "created_at", serde_json::json!(created));
        h.set_field(&sim_id, "base_model", serde_json::json!("Qwen/Qwen3-8B"));
    }
}

/// Run the daemon on the old store at `url` and check what the upgrade must keep.
async fn upgrade_and_check(env: &Env, rx: &Receiver, cfg: &Path, url: &str) {
    let h = env.sim.handle();
    let d = env.spawn_daemon(cfg);
    d.ready().await;
    wait_for("the pending delivery", T, || {
        (rx.count() >= 1).then_some(())
    })
    .await;
    // Several polls of the unchanged listing later: still only that one.
    never_in_polls(env, 5, "a replayed delivery", async || rx.count() > 1).await;
    let got = rx.got();
    let ids: Vec<String> = got.iter().map(|r| r.id()).collect();
    assert_eq!(ids, [PENDING_EVENT], "replayed or lost: {}", d.log_text());
    assert_eq!(
        got[0].json()["data"]["checkpoint"]["id"],
        "ckpt_v1a000002",
        "{}",
        got[0].json()
    );
    let log = d.log_text();
    assert!(!log.contains("new baseline"), "{log}");

    let store = loopwatch::store::open_with(url, Access::ReadOnly)
        .await
        .expect("the upgraded store opens read-only: every migration ran");
    let events = common::stored_events(url, None).await;
    let stored: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(stored, [DELIVERED_EVENT, PENDING_EVENT]);
    let dump = store.dump(Some("qwen")).await.unwrap();
    assert_eq!(
        dump[0].baselined_at.timestamp_millis(),
        BASELINED_AT_MS,
        "baselined again"
    );
    assert_eq!(dump[0].checkpoints.len(), 2);

    // The upgraded daemon finds and delivers what happens next.
    let next = h.add_checkpoint("run-1", "sampler", "step-300", Some("SYNCING"));
    polls_later(env, 2).await; // seen syncing first
    h.set_status(&next, Some("COMPLETE"));
    wait_for("the next completion", T, || (rx.count() >= 2).then_some(())).await;
    let fresh = rx.got()[1].id();
    assert!(
        fresh != PENDING_EVENT && fresh != DELIVERED_EVENT,
        "{fresh}"
    );
}

fn config(env: &Env, rx: &Receiver) -> std::path::PathBuf {
    env.write_config(&qwen_to(
        &rx.url,
        &format!("retry_schedule = [\"200ms\"]\n{COMPLETED_ONLY}"),
    ))
}

#[tokio::test]
async fn a_sqlite_state_file_of_the_first_schema_upgrades_without_replay_or_rebaseline() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    listing_as_stored(&env.sim.handle());
    std::fs::copy(fixture("v1.db"), env.db()).unwrap();
    let cfg = config(&env, &rx);
    let url = format!("sqlite://{}", env.db().display());
    upgrade_and_check(&env, &rx, &cfg, &url).await;
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn a_postgres_database_of_the_first_schema_upgrades_without_replay_or_rebaseline() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    listing_as_stored(&env.sim.handle());
    let url = pg::fresh_database().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let dump = std::fs::read_to_string(fixture("v1-postgres.sql")).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(dump))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let cfg = config(&env, &rx);
    set_store_url(&cfg, &url, "\nlease_ttl = \"3s\"");
    upgrade_and_check(&env, &rx, &cfg, &url).await;
}
