//! latency: completion at the simulated API -> signed webhook received, with the whole
//! daemon (`App::run`: pollers, outbox, sink worker) watching 1,000 targets.
//!
//! Every target has one SYNCING checkpoint (so it polls at `syncing_interval`, 1 s, no
//! jitter) among four COMPLETE ones. For a window, a driver completes a random target's
//! pending checkpoint 100 times a second (first adding the next SYNCING one, as a training
//! run would). The receiver notes when each `completed` webhook arrives. Floor: polling
//! alone, a completion waits for the next poll, uniform in [0, syncing_interval]: p50 =
//! 0.5 s, p99 = 0.99 s; loopwatch's own part is reported as detection -> received.
//!
//! `cargo bench --bench latency [-- --quick]`; on PostgreSQL (one replica, a fresh database
//! per run): `LOOPWATCH_BENCH_STORE=postgres LOOPWATCH_PG_FSYNC=on scripts/with-postgres
//! cargo bench --bench latency`. `-- --replicas N` (PostgreSQL only): the daemon is N
//! processes of the release binary sharing the targets (shard leases), the simulated API
//! and the receiver stay in this process.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use loopwatch::app::App;
use loopwatch::sim::SimApi;
use rand::RngExt;
use support::procs::Replica;
use support::{API_KEY, BenchDb, Opts, median, percentile, run_id};

const SYNCING_INTERVAL: Duration = Duration::from_secs(1);
const COMPLETIONS_PER_SECOND: u64 = 100;

fn main() {
    let Some(o) = support::opts() else { return };
    tokio::runtime::Runtime::new().unwrap().block_on(bench(o));
}

type Arrivals = Arc<Mutex<Vec<(String, Instant, i64, i64)>>>;

struct Run {
    /// completion -> received, seconds
    latency: Vec<f64>,
    /// detection (event timestamp) -> received, seconds
    pipeline: Vec<f64>,
    lost: usize,
    polls_per_s: f64,
}

/// What watches the targets: the whole daemon in this process, or replica processes.
enum Daemon {
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    },
    Replicas {
        reps: Vec<Replica>,
        _dir: tempfile::TempDir,
    },
}

impl Daemon {
    async fn start(
        sim: &str,
        db: &BenchDb,
        poll: &str,
        targets: usize,
        sinks: &str,
        replicas: Option<usize>,
    ) -> Daemon {
        let Some(count) = replicas else {
            let cfg = support::config(sim, &db.url, poll, targets, sinks);
            let app = App::build(cfg, false).await.unwrap();
            let health = app.health.clone();
            let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(app.run(async move {
                let _ = stop_rx.await;
            }));
            support::until(
                Duration::from_secs(120),
                Duration::from_millis(10),
                async || health.ready().is_ok(),
            )
            .await;
            return Daemon::InProcess { stop, task };
        };
        assert!(
            db.is_postgres(),
            "--replicas needs LOOPWATCH_BENCH_STORE=postgres"
        );
        let dir = tempfile::tempdir().unwrap();
        let config = support::procs::write_config(
            dir.path(),
            sim,
            &db.url,
            poll,
            "lease_ttl = \"15s\"",
            targets,
            sinks,
        );
        let reps = support::procs::spawn_replicas(&config, count, dir.path()).await;
        let split = support::procs::wait_settled(
            &reqwest::Client::new(),
            &reps,
            targets,
            Duration::from_secs(5),
            Duration::from_secs(600),
        )
        .await;
        eprintln!("latency: {count} replica(s) settled, owning {split:?}");
        Daemon::Replicas { reps, _dir: dir }
    }

    async fn stop(self) {
        match self {
            Daemon::InProcess { stop, task } => {
                let _ = stop.send(());
                task.await.unwrap().unwrap();
            }
            Daemon::Replicas { reps, .. } => {
                for r in reps {
                    r.stop().await;
                }
            }
        }
    }
}

async fn one(targets: usize, window: Duration, replicas: Option<usize>) -> Run {
    let arrivals: Arrivals = Arc::default();
    let receiver = support::receiver()
        .on_request({
            let arrivals = arrivals.clone();
            move |r| {
                let at = Instant::now();
                let wall = chrono::Utc::now().timestamp_millis();
                let v = r.json();
                let detected =
                    chrono::DateTime::parse_from_rfc3339(v["timestamp"].as_str().unwrap())
                        .unwrap()
                        .timestamp_millis();
                let id = v["data"]["checkpoint"]["id"].as_str().unwrap().to_string();
                arrivals.lock().unwrap().push((id, at, detected, wall));
            }
        })
        .start()
        .await
        .unwrap();
    let sim = SimApi::start(Some(API_KEY.into())).await.unwrap();
    let h = sim.handle();
    let mut pending = Vec::new();
    for i in 0..targets {
        h.add_many(&run_id(i), 4, Some("COMPLETE"));
        pending.push(h.add_many(&run_id(i), 1, Some("SYNCING")).remove(0));
    }
    let db = BenchDb::new().await;
    let poll = format!(
        "interval = \"10s\"\nsyncing_interval = \"{}ms\"\njitter = 0.0\nconcurrency = 16",
        SYNCING_INTERVAL.as_millis()
    );
    let sinks = support::completed_sink(&receiver.url, 16);
    let daemon = Daemon::start(&sim.base_url(), &db, &poll, targets, &sinks, replicas).await;
    // Let every target settle into its syncing_interval rhythm.
    tokio::time::sleep(SYNCING_INTERVAL * 2).await;

    let mut completed: HashMap<String, Instant> = HashMap::new();
    let r0 = h.requests();
    let t0 = Instant::now();
    let every = Duration::from_micros(1_000_000 / COMPLETIONS_PER_SECOND);
    let mut tick = tokio::time::interval(every);
    let mut rng = rand::rng();
    while t0.elapsed() < window {
        tick.tick().await;
        let i = rng.random_range(0..targets);
        let next = h.add_many(&run_id(i), 1, Some("SYNCING")).remove(0);
        let done = std::mem::replace(&mut pending[i], next);
        h.set_status(&done, Some("COMPLETE"));
        completed.insert(done, Instant::now());
    }
    let polls_per_s = (h.requests() - r0) as f64 / t0.elapsed().as_secs_f64();
    support::until(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || {
            let got = arrivals.lock().unwrap();
            completed.keys().all(|id| got.iter().any(|(g, ..)| g == id))
        },
    )
    .await;
    daemon.stop().await;
    db.drop_db().await;

    let got = arrivals.lock().unwrap();
    let by_id: HashMap<&str, &(String, Instant, i64, i64)> =
        got.iter().map(|a| (a.0.as_str(), a)).collect();
    let mut latency = Vec::new();
    let mut pipeline = Vec::new();
    let mut lost = 0;
    for (id, at) in &completed {
        match by_id.get(id.as_str()) {
            Some((_, recv, detected, wall)) => {
                latency.push(recv.duration_since(*at).as_secs_f64());
                pipeline.push((wall - detected) as f64 / 1000.0);
            }
            None => lost += 1,
        }
    }
    Run {
        latency,
        pipeline,
        lost,
        polls_per_s,
    }
}

async fn bench(o: Opts) {
    let targets = o.value("--targets").unwrap_or(1_000);
    let replicas: Option<usize> = o.value("--replicas");
    let window = Duration::from_secs(if o.quick { 6 } else { 20 });
    support::header(
        "latency",
        &format!(
            "{targets} targets, syncing_interval {} ms, jitter 0, {COMPLETIONS_PER_SECOND} \
             completions/s for {} s; completion at the simulated API -> signed webhook received; \
             {}",
            SYNCING_INTERVAL.as_millis(),
            window.as_secs(),
            match replicas {
                Some(n) => format!("{n} replica processes (release binary)"),
                None => "the daemon in this process".into(),
            }
        ),
        &o,
    );
    support::store_header().await;
    let mut runs = Vec::new();
    for i in 0..o.runs {
        eprintln!("latency: run {}/{} ...", i + 1, o.runs);
        runs.push(one(targets, window, replicas).await);
    }
    let med = |f: &dyn Fn(&Run) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let ms = |s: f64| format!("{:.0}", s * 1000.0);
    let s = SYNCING_INTERVAL.as_secs_f64();
    support::table(
        &[
            "figure (ms)",
            "loopwatch",
            "floor (polling alone)",
            "difference",
        ],
        &[
            vec![
                "p50 completion -> received".into(),
                ms(med(&|r| percentile(&r.latency, 50.0))),
                ms(0.5 * s),
                ms(med(&|r| percentile(&r.latency, 50.0)) - 0.5 * s),
            ],
            vec![
                "p99 completion -> received".into(),
                ms(med(&|r| percentile(&r.latency, 99.0))),
                ms(0.99 * s),
                ms(med(&|r| percentile(&r.latency, 99.0)) - 0.99 * s),
            ],
            vec![
                "max completion -> received".into(),
                ms(med(&|r| percentile(&r.latency, 100.0))),
                ms(s),
                String::new(),
            ],
            vec![
                "p50 / p99 detection -> received".into(),
                format!(
                    "{} / {}",
                    ms(med(&|r| percentile(&r.pipeline, 50.0))),
                    ms(med(&|r| percentile(&r.pipeline, 99.0)))
                ),
                "0".into(),
                String::new(),
            ],
        ],
    );
    println!(
        "samples per run: {}; lost: {}; polls/s during the window: {:.0} (target: p99 <= {} ms)",
        runs[0].latency.len(),
        runs.iter().map(|r| r.lost).sum::<usize>(),
        med(&|r| r.polls_per_s),
        ms(s + 0.1)
    );
    println!();
}
