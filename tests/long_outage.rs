//! The long sink outage, measured (a benchmark, not a timed test; ignored by `cargo test`):
//! the receiver answers 503 while C completions arrive over 100 targets, then comes back.
//! Every second: the daemon's RSS (and peak), the state file's size (with its WAL), the
//! pending deliveries and the age of the oldest. The receiver comes back once every
//! delivery has failed at least once (as in an outage of hours); then the drain rate, and
//! how long 100 completions that arrive while the backlog drains take to be delivered.
//!
//! `LOOPWATCH_OUTAGE_COMPLETIONS=100000 cargo test --release --test long_outage -- --ignored --nocapture`
//! (default 20,000). docs/reliability.md has the figures.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{COMPLETED_ONLY, Env, metrics};

const TARGETS: usize = 100;
const FRESH: usize = TARGETS;

type Time = chrono::DateTime<chrono::Utc>;

/// A receiver that keeps counts, not bodies: down (503) or up (204).
#[derive(Default)]
struct Sink {
    up: AtomicBool,
    refused: AtomicU64,
    /// The distinct ids refused: deliveries attempted at least once.
    tried: Mutex<HashSet<String>>,
    /// Acknowledged requests, and the distinct ids among them.
    acked: AtomicU64,
    ids: Mutex<HashSet<String>>,
    /// When each "fresh-" checkpoint's completion arrived, and when it was detected (its
    /// body's `timestamp`).
    fresh: Mutex<HashMap<String, (Time, Time)>>,
}

async fn receive(State(s): State<Arc<Sink>>, headers: HeaderMap, body: String) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if !s.up.load(Ordering::SeqCst) {
        s.refused.fetch_add(1, Ordering::Relaxed);
        s.tried.lock().unwrap().insert(id);
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    s.acked.fetch_add(1, Ordering::Relaxed);
    s.ids.lock().unwrap().insert(id);
    if body.contains("\"fresh-") {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let name = v["data"]["checkpoint"]["checkpoint_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let detected = v["timestamp"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.to_utc())
            .unwrap_or_default();
        s.fresh
            .lock()
            .unwrap()
            .entry(name)
            .or_insert_with(|| (chrono::Utc::now(), detected));
    }
    StatusCode::NO_CONTENT
}

fn proc_kib(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The state file's size and its WAL's, in MiB.
fn db_mib(env: &Env) -> (f64, f64) {
    let db = env.db();
    let size = |p: std::path::PathBuf| {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
    };
    (size(db.clone()), size(db.with_extension("db-wal")))
}

#[derive(Debug)]
struct Sample {
    t_s: f64,
    rss_mib: f64,
    db_mib: f64,
    wal_mib: f64,
    pending: f64,
    oldest_s: f64,
    delivered: usize,
}

#[tokio::test]
#[ignore = "a benchmark: LOOPWATCH_OUTAGE_COMPLETIONS=100000 cargo test --release --test long_outage -- --ignored --nocapture"]
async fn long_sink_outage_memory_database_and_drain() {
    let completions: usize = std::env::var("LOOPWATCH_OUTAGE_COMPLETIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let per_target = completions.div_ceil(TARGETS);
    let completions = per_target * TARGETS;
    let env = Env::new().await;
    let sink = Arc::new(Sink::default());
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(sink.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = env.sim.handle();
    // Retries every 30 s for 20 minutes: nothing goes dead during the run, and the whole
    // backlog is due within 30 s of the receiver's return.
    let schedule = vec!["\"30s\""; 40].join(", ");
    let cfg = env.write_config(&format!(
        "{}[[sinks]]\nname = \"hook\"\nurl = \"{url}\"\nsecret_env = \"HOOK_SECRET\"\n{COMPLETED_ONLY}\nretry_schedule = [{schedule}]\n",
        common::targets(TARGETS)
    ));
    common::edit(&cfg, |t| {
        t.replace("interval = \"200ms\"", "interval = \"1s\"")
            .replace("syncing_interval = \"100ms\"", "syncing_interval = \"1s\"")
            .replace("level = \"debug\"", "level = \"info\"")
    });
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    let pid = d.pid();
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    let sample = async |samples: &mut Vec<Sample>| {
        let page = metrics(&addr).await;
        let get = |s: &str| common::metrics::value(&page, s).unwrap_or(0.0);
        let (db_mib, wal_mib) = db_mib(&env);
        let s = Sample {
            t_s: started.elapsed().as_secs_f64(),
            rss_mib: proc_kib(pid, "VmRSS:") as f64 / 1024.0,
            db_mib,
            wal_mib,
            pending: get("loopwatch_deliveries_pending{sink=\"hook\"}"),
            oldest_s: get("loopwatch_oldest_pending_delivery_age_seconds{sink=\"hook\"}"),
            delivered: sink.ids.lock().unwrap().len(),
        };
        samples.push(s);
    };

    // The outage: completions arrive in 20 waves, one every 2 s, over every target.
    let waves = 20;
    for w in 0..waves {
        let n = per_target / waves + usize::from(w < per_target % waves);
        for i in 0..TARGETS {
            h.add_many(&format!("run-{i}"), n, Some("COMPLETE"));
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // the waves' pace: under test
        sample(&mut samples).await;
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        sample(&mut samples).await;
        if samples.last().unwrap().pending >= completions as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "never detected: {samples:?}");
        tokio::time::sleep(Duration::from_secs(1)).await; // a sample a second: the measurement
    }
    let detected_s = started.elapsed().as_secs_f64();
    // A long outage: every delivery has failed at least once (here completions arrive
    // faster than the sink fails them, so wait for it).
    loop {
        let tried = sink.tried.lock().unwrap().len();
        if tried >= completions {
            break;
        }
        assert!(Instant::now() < deadline, "never all tried: {tried}");
        tokio::time::sleep(Duration::from_secs(1)).await; // a sample a second: the measurement
        sample(&mut samples).await;
    }
    let tried_s = started.elapsed().as_secs_f64();

    // Back up; meanwhile new completions arrive.
    sink.up.store(true, Ordering::SeqCst);
    let up = Instant::now();
    let up_wall = chrono::Utc::now();
    let up_at = samples.last().unwrap().t_s;
    for i in 0..FRESH {
        h.add_checkpoint(
            &format!("run-{i}"),
            "sampler",
            &format!("fresh-{i}"),
            Some("COMPLETE"),
        );
    }
    let total = completions + FRESH;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await; // a sample a second: the measurement
        sample(&mut samples).await;
        if samples.last().unwrap().delivered >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never drained: {:?}",
            samples.last()
        );
    }
    let drained_s = up.elapsed().as_secs_f64();
    // Seconds after the return: when each new completion was detected, and delivered.
    let (detected, fresh): (Vec<f64>, Vec<f64>) = {
        let f = sink.fresh.lock().unwrap();
        let secs = |t: Time| (t - up_wall).as_seconds_f64();
        let mut d: Vec<f64> = f.values().map(|(_, det)| secs(*det)).collect();
        let mut v: Vec<f64> = f.values().map(|(at, _)| secs(*at)).collect();
        d.sort_by(f64::total_cmp);
        v.sort_by(f64::total_cmp);
        (d, v)
    };
    let peak_rss = proc_kib(pid, "VmHWM:") as f64 / 1024.0;
    let max_db = samples.iter().map(|s| s.db_mib).fold(0.0, f64::max);
    let max_rss = samples.iter().map(|s| s.rss_mib).fold(0.0, f64::max);
    let max_wal = samples.iter().map(|s| s.wal_mib).fold(0.0, f64::max);
    println!("t_s\trss_mib\tdb_mib\twal_mib\tpending\toldest_s\tdelivered");
    let every = (samples.len() / 40).max(1);
    for s in samples.iter().step_by(every).chain(samples.last()) {
        println!(
            "{:.0}\t{:.1}\t{:.1}\t{:.1}\t{:.0}\t{:.0}\t{}",
            s.t_s, s.rss_mib, s.db_mib, s.wal_mib, s.pending, s.oldest_s, s.delivered
        );
    }
    println!(
        "{completions} completions over {TARGETS} targets during the outage: all pending after {detected_s:.0} s, all tried once after {tried_s:.0} s; peak RSS {peak_rss:.1} MiB (sampled max {max_rss:.1}); state file up to {max_db:.1} MiB, its WAL up to {max_wal:.1} MiB; {} refused attempts",
        sink.refused.load(Ordering::Relaxed)
    );
    println!(
        "receiver back at {up_at:.0} s: {total} delivered in {drained_s:.1} s ({:.0}/s); {} acknowledged (repeats {}); {FRESH} new completions detected {:.1} s (median) / {:.1} s (last) and delivered {:.1} s / {:.1} s after the return",
        total as f64 / drained_s,
        sink.acked.load(Ordering::Relaxed),
        sink.acked.load(Ordering::Relaxed) as usize - total,
        detected
            .get(detected.len() / 2)
            .copied()
            .unwrap_or(f64::NAN),
        detected.last().copied().unwrap_or(f64::NAN),
        fresh.get(fresh.len() / 2).copied().unwrap_or(f64::NAN),
        fresh.last().copied().unwrap_or(f64::NAN),
    );
    assert_eq!(fresh.len(), FRESH, "new completions lost");
}
