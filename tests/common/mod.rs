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
