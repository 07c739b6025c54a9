//! loopwatch: watches Baseten Loops checkpoints and tells the world when one is ready.
//!
//! Modules in reading order, following one checkpoint through the daemon:
//! - [`signing`], [`template`]: webhook keys and signatures, body templates; below both
//!   config (which checks them) and delivery (which uses them).
//! - [`config`]: raw config -> validated [`config::Config`]; every problem at once.
//! - [`model`]: domain types (checkpoint, tracked state, event).
//! - [`api`]: the Loops client; the only module that knows the upstream JSON.
//! - [`diff`]: the pure core, (state, listing, now) -> (updates, events).
//! - [`store`]: state + events + outbox, committed in one transaction per poll.
//! - [`store_watch`]: the store's reach, watched: errors counted, `/readyz` 503 while the
//!   database is out of reach, one log line when it goes and one when it is back.
//! - [`poller`]: per-target schedule: fetch -> probe null checkpoints -> diff -> commit.
//! - [`replicas`]: target leases when several replicas share PostgreSQL.
//! - [`delivery`]: outbox workers: claim -> sign -> send -> record, with retries.
//! - [`metrics`], [`health`], [`server`]: what operators see; [`listener`]: how the
//!   server's connections are accepted and bounded.
//! - [`app`]: wiring; the only place that spawns tasks. [`reload`]: what a SIGHUP
//!   reload changes, which `app` applies.
//! - [`args`], [`cli`]: the command line (clap types) and its commands; [`approvals`]:
//!   `deliveries approve` / `reject`.
//! - [`sim`], [`demo`]: the test kit (simulated Loops API, webhook receiver) and the
//!   one-command demo.
//! - [`text`]: outside text made safe to print (control characters escaped, cells cut);
//!   [`redact`]: every secret this process knows, redacted from a peer's text;
//!   [`jsonlog`]: the `log.format = "json"` line.
//! - [`init`]: `loopwatch init`, a first config and its signing secret.

pub mod api;
pub mod app;
pub mod approvals;
pub mod args;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod diff;
pub mod health;
pub mod http;
pub mod init;
pub mod json;
pub mod jsonlog;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod poller;
pub mod redact;
pub mod reload;
pub mod replicas;
pub mod server;
pub mod signing;
pub mod sim;
pub mod status;
pub mod store;
pub mod store_watch;
pub mod template;
pub mod text;
pub mod wake;
