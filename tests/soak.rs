//! The soak: randomized runs of the real binary, each a burst of completions hit by a
//! SIGKILL and restart, a SIGSTOP/SIGCONT pause, faults (upstream errors and a receiver
//! answering 503 for a while), or a kill with faults; on SQLite, and on PostgreSQL when
//! `LOOPWATCH_TEST_PG_URL` is set (`scripts/soak` starts a server). Every run must deliver
//! every completion under exactly one id; duplicates (the same id again) are counted.
//! A `baseten_deploy` sink deploys every sampler completion of the run beside it, through
//! random slow, lost and refused deploy answers: every checkpoint must end with exactly
//! one deployment on the simulated API (`0 duplicate deploys`).
//!
//! `LOOPWATCH_SOAK_RUNS` (default 4, what `cargo test` runs) and `LOOPWATCH_SOAK_SEED`
//! (default [`DEFAULT_SEED`], so the default suite runs the same mix every time; printed
//! first, so any mix can be replayed). Prints `N runs, L lost, X double ids, max
//! duplicates D`. `scripts/soak N [SEED]` runs it (with a seed from the clock unless given).
//!
//! Its sleeps are the behaviour under test: the random instants of a kill, the length of
//! a pause or of a receiver's outage, drawn from the seed.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::{
    Answer, COMPLETED_ONLY, Env, Receiver, distinct_ids, never_within, pg, qwen_to, set_store_url,
};
use loopwatch::sim::{Fault, Route};

/// Completions per run.
const N: usize = 30;
/// The seed of the default suite's soak: its four runs are one of each action (kill,
/// pause, fault, kill+fault), on SQLite.
const DEFAULT_SEED: u64 = 45_020;
const CONCURRENCY: usize = 4;

/// splitmix64: a seeded sequence, the same on every machine.
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

#[derive(Debug, Default)]
struct Outcome {
    lost: usize,
    doubled: usize,
    duplicates: usize,
    /// Checkpoints deployed more than once.
    double_deploys: usize,
    /// Checkpoints never deployed.
    undeployed: usize,
}

/// A deploy answer that leaves the outcome unknown, or refuses before acting.
fn deploy_fault(rng: &mut Mix) -> Fault {
    match rng.below(4) {
        0 => Fault::ActThenDelay(rng.millis(1200, 3000)),
        1 => Fault::ActThenClose,
        2 => Fault::Delay(rng.millis(100, 1500)),
        _ => Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        },
    }
}

fn answer(status: u16) -> Option<Answer> {
    Some(Answer {
        status,
        retry_after: None,
        delay: Duration::from_millis(5),
    })
}

fn upstream_fault(rng: &mut Mix) -> Fault {
    match rng.below(6) {
        0 => Fault::Status {
            code: 503,
            retry_after: None,
            body: None,
        },
        1 => Fault::Status {
            code: 500,
            retry_after: None,
            body: None,
        },
        2 => Fault::Delay(rng.millis(100, 1500)),
        3 => Fault::Truncated,
        4 => Fault::Html,
        _ => Fault::CloseConnection,
    }
}

async fn one_run(rng: &mut Mix, postgres: bool, action: &str) -> Outcome {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    rx.set_default(answer(204));
    let h = env.sim.handle();
    let ids = h.add_many("run-1", N, Some("SYNCING"));
    let deploy = "[[sinks]]\nname = \"deploy\"\nkind = \"baseten_deploy\"\ninstance_type_id = \"H100\"\nhf_secret_name = \"hf\"\nmodel_name = \"{{ data.checkpoint.checkpoint_id }}\"\nlatest_only = false\nvalidate = false\nfollow = false\ntimeout = \"1s\"\nconcurrency = 2\nretry_schedule = [\"100ms\", \"200ms\", \"400ms\", \"800ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n";
    let cfg = env.write_config(&format!(
        "{}{deploy}",
        qwen_to(
            &rx.url,
            &format!(
                "{COMPLETED_ONLY}\nconcurrency = {CONCURRENCY}\nretry_schedule = [\"100ms\", \"200ms\", \"400ms\", \"800ms\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]"
            ),
        )
    ));
    if postgres {
        set_store_url(&cfg, &pg::fresh_database().await, "\nlease_ttl = \"3s\"");
    }
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;
    let faults = action.contains("fault");
    // The requests the receiver refused (503): [from, to) in arrival order.
    let mut refused = 0..0;
    // Slow, lost and refused deploy answers in every run.
    for _ in 0..1 + rng.below(6) {
        h.push_fault_to(loopwatch::sim::Route::Deploy, deploy_fault(rng));
    }
    if faults {
        for _ in 0..1 + rng.below(5) {
            h.push_fault(upstream_fault(rng));
        }
        if rng.below(2) == 0 {
            rx.set_default(answer(503));
            refused = rx.count()..usize::MAX;
        }
    }
    h.set_status_many(&ids, Some("COMPLETE"));
    // A random instant: before detection, during the commit, or mid-delivery.
    tokio::time::sleep(rng.millis(0, 400)).await; // the instant of the kill: under test
    if action.starts_with("kill") {
        d.kill9();
        d = env.spawn_daemon(&cfg);
    } else if action == "pause" {
        d.signal("STOP");
        // Past the lease (3 s) now and then, on PostgreSQL.
        tokio::time::sleep(rng.millis(100, 4000)).await; // the pause itself: under test
        d.signal("CONT");
    }
    if faults {
        tokio::time::sleep(rng.millis(0, 1500)).await; // the receiver's outage: under test
        rx.set_default(answer(204));
        refused.end = refused.end.min(rx.count());
    }
    let deployed = |h: &loopwatch::sim::SimHandle| {
        let mut per: HashMap<String, usize> = HashMap::new();
        for d in h.deploys() {
            for ck in d.checkpoint_ids {
                *per.entry(ck).or_default() += 1;
            }
        }
        per
    };
    // Lost completions and deploys are counted below, not failed on here: wait until all
    // arrived or a minute passed.
    let all = Duration::from_secs(60);
    let _ = common::until(all, Duration::from_millis(20), async || {
        distinct_ids(&rx) >= N && deployed(&h).len() >= N
    })
    .await;
    // Settled: nothing arrives under a new id while the daemon polls five more times.
    let polls = h.requests_to(Route::Checkpoints);
    never_within(
        "a delivery under an id beyond the completions",
        async || distinct_ids(&rx) > N,
        "five more polls",
        all,
        async || h.requests_to(Route::Checkpoints) >= polls + 5,
    )
    .await;
    let got = rx.got();
    let mut ids_of: HashMap<String, HashSet<String>> = HashMap::new();
    for r in &got {
        let ck = r.json()["data"]["checkpoint"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ids_of.entry(ck).or_default().insert(r.id());
    }
    // Duplicates: acknowledged requests that repeat an acknowledged id (the refused
    // ones were retries by design; one at either edge of the window may be miscounted).
    let acked: Vec<String> = (got.iter().enumerate())
        .filter(|(i, _)| !refused.contains(i))
        .map(|(_, r)| r.id())
        .collect();
    let distinct_acked = acked.iter().collect::<HashSet<_>>().len();
    let per = deployed(&h);
    let out = Outcome {
        lost: N.saturating_sub(ids_of.len()),
        doubled: ids_of.values().filter(|ids| ids.len() > 1).count(),
        duplicates: acked.len() - distinct_acked,
        double_deploys: per.values().filter(|&&n| n > 1).count(),
        undeployed: N.saturating_sub(per.len()),
    };
    if out.lost > 0 || out.doubled > 0 || out.double_deploys > 0 || out.undeployed > 0 {
        eprintln!("{}", d.log_text());
    }
    out
}

#[tokio::test]
async fn soak_randomized_kill_pause_and_fault_runs_lose_nothing_and_never_double_an_id() {
    let runs: usize = std::env::var("LOOPWATCH_SOAK_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let seed: u64 = std::env::var("LOOPWATCH_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("soak: seed {seed} (LOOPWATCH_SOAK_SEED replays another), {runs} runs");
    let with_pg = std::env::var("LOOPWATCH_TEST_PG_URL").is_ok();
    let mut rng = Mix(seed);
    let started = Instant::now();
    let (mut lost, mut doubled, mut max_dup) = (0, 0, 0);
    let (mut double_deploys, mut undeployed) = (0, 0);
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..runs {
        let postgres = with_pg && rng.below(2) == 0;
        let action = ["kill", "pause", "fault", "kill+fault"][rng.below(4) as usize];
        let backend = if postgres { "postgres" } else { "sqlite" };
        *mix.entry(format!("{backend} {action}")).or_default() += 1;
        let o = one_run(&mut rng, postgres, action).await;
        if o.lost > 0 || o.doubled > 0 || o.double_deploys > 0 || o.undeployed > 0 {
            eprintln!("run {i} ({backend}, {action}): {o:?}");
        }
        double_deploys += o.double_deploys;
        undeployed += o.undeployed;
        lost += o.lost;
        doubled += o.doubled;
        max_dup = max_dup.max(o.duplicates);
        if (i + 1) % 25 == 0 {
            eprintln!(
                "soak: {} runs in {:.0} s, {lost} lost, {doubled} double ids, max duplicates {max_dup}, {double_deploys} duplicate deploys, {undeployed} not deployed",
                i + 1,
                started.elapsed().as_secs_f64()
            );
        }
    }
    eprintln!(
        "{runs} runs, {lost} lost, {doubled} double ids, max duplicates {max_dup}, {double_deploys} duplicate deploys, {undeployed} not deployed (seed {seed}, {:.0} s, {N} completions per run; {mix:?})",
        started.elapsed().as_secs_f64()
    );
    assert_eq!((lost, doubled), (0, 0), "seed {seed}");
    assert_eq!(
        (double_deploys, undeployed),
        (0, 0),
        "seed {seed}: checkpoints deployed twice, or never"
    );
    assert!(max_dup <= CONCURRENCY, "seed {seed}: {max_dup} duplicates");
}
