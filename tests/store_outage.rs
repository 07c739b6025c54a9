//! The database going away under running daemons, as real processes on a throw-away
//! PostgreSQL server: unreachable at start, restarted (`pg_ctl restart -m fast`) and
//! stopped then started again mid-burst, and one replica cut off by a network partition
//! (a TCP proxy the test cuts and restores). Nothing is lost, nothing is emitted under two
//! ids, nothing exits, and `/readyz` says why while it lasts.
//! Needs `scripts/with-postgres` (it exports what `pg_ctl` needs); `scripts/test` runs these.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::{
    COMPLETED_ONLY, Daemon, Env, Receiver, check_exactly_one_id_each, distinct_ids, edit, gauge,
    hook_sink, http_get, metrics, never_in_polls, pg, set_store_url, targets, until, wait_for,
};

const T: Duration = Duration::from_secs(90);
const TTL: Duration = Duration::from_secs(3);

/// These tests restart and cut the one server they share: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `n` targets polled every second on the store at `url`, leases of [`TTL`], a signed
/// sink to `rx` that retries after 200 ms.
fn pg_config(env: &Env, rx: &Receiver, n: usize, url: &str) -> PathBuf {
    let sink = hook_sink(
        "hook",
        &rx.url,
        &format!("retry_schedule = [\"200ms\"]\n{COMPLETED_ONLY}"),
    );
    let cfg = env.write_config(&format!("{}{sink}", targets(n)));
    set_store_url(&cfg, url, &format!("\nlease_ttl = \"{}s\"", TTL.as_secs()));
    edit(&cfg, |text| {
        text.replace("interval = \"200ms\"", "interval = \"1s\"")
            .replace("syncing_interval = \"100ms\"", "syncing_interval = \"1s\"")
    });
    cfg
}

/// The address of the server a daemon answers probes on before its store opens.
async fn early_addr(d: &Daemon) -> String {
    wait_for("the daemon to serve probes", T, || {
        let log = d.log_text();
        let line = log.lines().find(|l| l.contains("while the store opens"))?;
        let i = line.find("addr=")? + 5;
        Some(line[i..].split_whitespace().next()?.to_string())
    })
    .await
}

/// The sum of `loopwatch_store_errors_total` over its `op`s.
async fn store_errors(addr: &str) -> f64 {
    metrics(addr)
        .await
        .lines()
        .filter(|l| l.starts_with("loopwatch_store_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn readyz(addr: &str) -> (u16, String) {
    http_get(&format!("http://{addr}/readyz")).await
}

async fn wait_unready_for_the_store(addr: &str, d: &Daemon) {
    let unready = async || {
        let (code, body) = readyz(addr).await;
        code == 503 && body.contains("store unavailable")
    };
    assert!(
        until(T, Duration::from_millis(100), unready).await,
        "/readyz never said the store was unavailable: {:?}\n{}",
        readyz(addr).await,
        d.log_text()
    );
}

async fn wait_ready(addr: &str, d: &Daemon) {
    let ready = async || readyz(addr).await.0 == 200;
    assert!(
        until(T, Duration::from_millis(100), ready).await,
        "never ready again: {:?}\n{}",
        readyz(addr).await,
        d.log_text()
    );
}

/// Lines of `log` at WARN or ERROR.
fn loud_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect()
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn a_store_unreachable_at_start_is_waited_for_with_probes_served() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let ck = h.add_checkpoint("run-0", "sampler", "step-100", Some("SYNCING"));
    let proxy = Proxy::start(pg::server_addr(), true).await;
    let url = proxy.url(&pg::fresh_database().await);
    let cfg = pg_config(&env, &rx, 1, &url);

    // A signal ends the wait at once, as it would a running daemon.
    let mut quitter = env.spawn_daemon(&cfg);
    early_addr(&quitter).await;
    quitter.signal("TERM");
    assert_eq!(quitter.wait(Duration::from_secs(10)).await, 0);

    let d = env.spawn_daemon(&cfg);
    let addr = early_addr(&d).await;
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.0, 200);
    wait_unready_for_the_store(&addr, &d).await;
    wait_for("the wait to be logged", T, || {
        d.log_text()
            .contains("store unavailable at start")
            .then_some(())
    })
    .await;
    assert!(store_errors(&addr).await >= 1.0);
    // Two retries later: still waiting, still serving, and logged once.
    let errors = store_errors(&addr).await;
    assert!(
        until(T, Duration::from_millis(100), async || store_errors(&addr)
            .await
            >= errors + 2.0)
        .await,
        "no retries: {}",
        d.log_text()
    );
    let (code, body) = readyz(&addr).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store unavailable"), "{body}");
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.0, 200);
    let log = d.log_text();
    assert_eq!(loud_lines(&log).len(), 1, "{log}");

    // The database appears: the daemon starts, polls and delivers.
    let appeared = Instant::now();
    proxy.restore();
    wait_ready(&addr, &d).await;
    h.set_status(&ck, Some("COMPLETE"));
    wait_for("the completion", T, || (rx.count() >= 1).then_some(())).await;
    assert!(d.log_text().contains("store reachable; starting"));
    eprintln!(
        "ready and delivering {:?} after the database appeared",
        appeared.elapsed()
    );
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn postgres_restarted_or_stopped_mid_burst_loses_nothing_and_the_daemon_waits() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let n = 10;
    let first: Vec<_> = (0..n)
        .map(|i| h.add_checkpoint(&format!("run-{i}"), "sampler", "step-100", Some("SYNCING")))
        .collect();
    let cfg = pg_config(&env, &rx, n, &pg::fresh_database().await);
    let mut d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    let complete_all = |step: &str| {
        for i in 0..n {
            h.add_checkpoint(&format!("run-{i}"), "sampler", step, Some("COMPLETE"));
        }
    };

    // A fast restart in the middle of a burst.
    h.set_status_many(&first, Some("COMPLETE"));
    wait_for("the burst to start", T, || (rx.count() >= 1).then_some(())).await;
    let restart = Instant::now();
    pg::ctl("restart", &["-m", "fast"]);
    eprintln!("pg_ctl restart -m fast took {:?}", restart.elapsed());
    complete_all("step-200");
    wait_for("the completions around the restart", T, || {
        (distinct_ids(&rx) >= 2 * n).then_some(())
    })
    .await;
    assert!(d.running(), "the daemon exited: {}", d.log_text());

    // Stopped for longer than a lease, with completions arriving meanwhile.
    let log_before = d.log_text().len();
    pg::ctl("stop", &["-m", "fast"]);
    let stopped = Instant::now();
    complete_all("step-300");
    wait_unready_for_the_store(&addr, &d).await;
    let (_, why) = readyz(&addr).await;
    eprintln!(
        "/readyz {:?} after the stop: {}",
        stopped.elapsed(),
        why.trim()
    );
    // The outage outlasts the leases: its length is under test.
    tokio::time::sleep((TTL * 2).saturating_sub(stopped.elapsed())).await;
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.0, 200);
    assert!(d.running(), "the daemon exited: {}", d.log_text());
    pg::ctl("start", &[]);
    let started = Instant::now();
    wait_for("the completions after the stop", T, || {
        (distinct_ids(&rx) >= 3 * n).then_some(())
    })
    .await;
    let resumed = started.elapsed();
    wait_ready(&addr, &d).await;
    never_in_polls(&env, 5, "an id beyond the completions", async || {
        distinct_ids(&rx) > 3 * n
    })
    .await;

    let duplicates = check_exactly_one_id_each(&rx, 3 * n);
    assert!(d.running(), "the daemon exited: {}", d.log_text());
    assert!(store_errors(&addr).await >= 1.0);
    // Said once, not by every loop at every retry.
    let log = d.log_text();
    let outage = &log[log_before..];
    assert_eq!(outage.matches("store unavailable;").count(), 1, "{outage}");
    assert!(outage.contains("store reachable again"), "{outage}");
    // At most: the outage, a batch of outcomes it kept from being recorded, and one
    // commit per target fenced off because the lease expired meanwhile (sqlx's own
    // warnings about slow acquires, one per waiting operation, aside).
    let loud: Vec<&str> = loud_lines(outage)
        .into_iter()
        .filter(|l| !l.contains(" sqlx"))
        .collect();
    assert!(loud.len() <= 2 + n, "{}", loud.join("\n"));
    eprintln!(
        "stopped {:?}; all {} delivered {resumed:?} after the start, {duplicates} repeated under their id; {} WARN/ERROR lines during the outage",
        started - stopped,
        3 * n,
        loud.len()
    );
}

async fn owned(addrs: &[&str]) -> Vec<f64> {
    let mut out = Vec::new();
    for a in addrs {
        out.push(gauge(a, "loopwatch_targets_owned").await.unwrap_or(0.0));
    }
    out
}

/// Every target owned, each replica some, the same split over two lease rounds.
async fn wait_balanced(addrs: &[&str], total: f64) -> Vec<f64> {
    let deadline = Instant::now() + T;
    let mut previous: Option<Vec<f64>> = None;
    loop {
        let o = owned(addrs).await;
        let mut settled = o.iter().sum::<f64>() == total && o.iter().all(|&n| n > 0.0);
        for a in addrs {
            settled &= readyz(a).await.0 == 200;
        }
        if settled && previous.as_ref() == Some(&o) {
            return o;
        }
        previous = settled.then_some(o.clone());
        assert!(Instant::now() < deadline, "never balanced: {o:?}");
        // Two looks a lease round apart: the same shares across a round is what "balanced" means.
        tokio::time::sleep(TTL / 3 + Duration::from_millis(300)).await;
    }
}

fn replica(env: &Env, cfg: &Path, id: &str) -> Daemon {
    env.spawn_daemon_env(cfg, &[("LOOPWATCH__STORE__REPLICA_ID", id)])
}

#[tokio::test]
#[ignore = "needs PostgreSQL: run scripts/test (or scripts/with-postgres cargo test -- --ignored)"]
async fn a_partitioned_replica_commits_nothing_stale_and_rejoins_its_share() {
    let _one = ONE_AT_A_TIME.lock().await;
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let n = 10;
    let first: Vec<_> = (0..n)
        .map(|i| h.add_checkpoint(&format!("run-{i}"), "sampler", "step-100", Some("SYNCING")))
        .collect();
    let url = pg::fresh_database().await;
    let proxy = Proxy::start(pg::server_addr(), false).await;
    let cfg_b = pg_config(&env, &rx, n, &url);
    let cfg_a = env.dir.path().join("replica-a.toml");
    std::fs::copy(&cfg_b, &cfg_a).unwrap();
    set_store_url_of(&cfg_a, &url, &proxy.url(&url));
    let a = replica(&env, &cfg_a, "a");
    let b = replica(&env, &cfg_b, "b");
    let (addr_a, addr_b) = (a.addr().await, b.addr().await);
    let before = wait_balanced(&[&addr_a, &addr_b], n as f64).await;

    // The burst, then A is cut off: B takes A's targets once its leases expire.
    h.set_status_many(&first, Some("COMPLETE"));
    wait_for("the burst to start", T, || (rx.count() >= 1).then_some(())).await;
    proxy.cut();
    let cut = Instant::now();
    for i in 0..n {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-200", Some("COMPLETE"));
    }
    wait_for("B to deliver every completion", T, || {
        (distinct_ids(&rx) >= 2 * n).then_some(())
    })
    .await;
    let took = cut.elapsed();
    wait_unready_for_the_store(&addr_a, &a).await;
    assert!(
        until(T, Duration::from_millis(200), async || owned(&[&addr_b])
            .await
            .first()
            == Some(&(n as f64)))
        .await,
        "B never took every target"
    );
    assert_eq!(http_get(&format!("http://{addr_a}/healthz")).await.0, 200);

    // Restored: A is fenced off what it lost, then rejoins its share.
    proxy.restore();
    let after = wait_balanced(&[&addr_a, &addr_b], n as f64).await;
    for i in 0..n {
        h.add_checkpoint(&format!("run-{i}"), "sampler", "step-300", Some("COMPLETE"));
    }
    wait_for("the completions after the partition", T, || {
        (distinct_ids(&rx) >= 3 * n).then_some(())
    })
    .await;
    never_in_polls(&env, 5, "an id beyond the completions", async || {
        distinct_ids(&rx) > 3 * n
    })
    .await;
    let duplicates = check_exactly_one_id_each(&rx, 3 * n);

    // One stored event per (checkpoint, type): nothing committed twice or stale.
    let events = common::stored_events(&url, None).await;
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        assert!(
            seen.insert((e.checkpoint_id.clone(), e.kind.clone())),
            "{} {} stored twice",
            e.checkpoint_id,
            e.kind
        );
    }
    let fenced = metrics(&addr_a)
        .await
        .lines()
        .filter(|l| l.starts_with("loopwatch_fencing_rejections_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    eprintln!(
        "owned before {before:?}, after {after:?}; B delivered A's share {took:?} after the cut; {duplicates} repeated under their id; A fenced {fenced} commit(s)"
    );
}

/// Point a written config whose store is `url` at `to` instead.
fn set_store_url_of(cfg: &Path, url: &str, to: &str) {
    edit(cfg, |text| text.replace(url, to));
}
