//! Shared fixtures for the end-to-end tests: the simulated Loops API and the webhook
//! receiver (both from `loopwatch::sim`, in process), a temporary config and the real
//! `loopwatch` binary as a child process ([`env`]), config snippets ([`config`]), metric
//! readers ([`metrics`]), PostgreSQL databases ([`pg`]), and waiting for a condition
//! instead of for time ([`wait`]).
#![allow(dead_code, unused_imports)]

pub mod config;
pub mod env;
pub mod metrics;
pub mod pg;
pub mod proxy;
pub mod wait;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

pub use config::*;
pub use env::{Daemon, Env};
pub use loopwatch::sim::{Answer, Received, Receiver};
pub use metrics::{gauge, metric, metrics};
pub use wait::{never_in_polls, never_within, until, wait_for};

/// The API key the simulated API of [`Env`] requires; `BASETEN_API_KEY` of every command.
pub const API_KEY: &str = "test-api-key-5f1b";
/// The webhook secret of every command's `HOOK_SECRET` (see [`config::hook_sink`]).
pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// The `loopwatch` binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_loopwatch")
}

/// GET `url`: the status and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let code = r.status().as_u16();
    (code, r.text().await.unwrap())
}

/// How many distinct `webhook-id`s the receiver got.
pub fn distinct_ids(rx: &Receiver) -> usize {
    rx.got()
        .iter()
        .map(Received::id)
        .collect::<HashSet<_>>()
        .len()
}

/// Every checkpoint's completion arrived under exactly one event id, and `expected`
/// checkpoints completed; returns the number of duplicate deliveries (same id twice).
pub fn check_exactly_one_id_each(rx: &Receiver, expected: usize) -> usize {
    let got = rx.got();
    let mut ids_of: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &got {
        let ck = r.json()["data"]["checkpoint"]["id"]
            .as_str()
            .unwrap()
            .to_string();
        ids_of.entry(ck).or_default().insert(r.id());
    }
    assert_eq!(ids_of.len(), expected, "completions lost");
    for (ck, ids) in &ids_of {
        assert_eq!(ids.len(), 1, "{ck} completed under {ids:?}");
    }
    got.len() - expected
}

/// The stored events (of `target`, when given) in detection order, read straight from
/// the `events` table of the store at `url`, SQLite or PostgreSQL: the store itself has no
/// such read (nothing but tests wants every event at once). A SQLite file is opened
/// read-only (a read-write handle would checkpoint the file's log when it closes, in the
/// background, under a test comparing the file's bytes); none while there is no file.
pub async fn stored_events(url: &str, target: Option<&str>) -> Vec<loopwatch::store::StoredEvent> {
    use sqlx::Connection;
    type Row = (
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
    );
    const EVENTS: &str = "SELECT seq, id, type, target, checkpoint_id, checkpoint_name, run_id,
        checkpoint_target, detected_at, body FROM events
        WHERE (CAST($1 AS TEXT) IS NULL OR target = $1) ORDER BY seq";
    let rows: Vec<Row> = if url.starts_with("sqlite:") {
        let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        if !opts.get_filename().exists() {
            return Vec::new();
        }
        let mut conn = sqlx::SqliteConnection::connect_with(&opts.read_only(true))
            .await
            .unwrap();
        let rows = sqlx::query_as(EVENTS)
            .bind(target)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        rows
    } else {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query_as(EVENTS)
            .bind(target)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        rows
    };
    rows.into_iter()
        .map(|r| loopwatch::store::StoredEvent {
            seq: r.0,
            id: r.1,
            kind: r.2,
            target: r.3,
            checkpoint_id: r.4,
            checkpoint_name: r.5,
            run_id: r.6,
            checkpoint_target: r.7,
            detected_at: chrono::DateTime::from_timestamp_millis(r.8).unwrap_or_default(),
            body: r.9,
        })
        .collect()
}
