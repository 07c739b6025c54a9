//! What operators see: metrics from the start, readiness, liveness, systemd notify.

mod common;

use std::time::{Duration, Instant};

use common::{Env, QWEN, Receiver, http_get, metrics, sink, until};
use loopwatch::sim::Fault;

const T: Duration = Duration::from_secs(30);

/// "qwen" on run-1, "all-8b" on a base model, and an unsigned sink "hook" to `rx`.
fn config(rx: &Receiver) -> String {
    let all_8b = "[[targets]]\nname = \"all-8b\"\nbase_model = \"Qwen/Qwen3-8B\"\n";
    format!("{QWEN}{all_8b}{}", sink("hook", &rx.url, ""))
}

#[tokio::test]
async fn every_metric_exists_from_the_start_for_every_target_and_sink() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    // The API refuses everything: nothing has happened, yet every series must exist.
    env.sim.handle().set_fault(Some(Fault::Status {
        code: 503,
        retry_after: None,
        body: None,
    }));
    let cfg = env.write_config(&config(&rx));
    let d = env.spawn_daemon(&cfg);
    let addr = d.addr().await;
    let (code, m) = http_get(&format!("http://{addr}/metrics")).await;
    assert_eq!(code, 200);
    for series in [
        format!(r#"loopwatch_build_info{{version="{}"}} 1"#, env!("CARGO_PKG_VERSION")),
        r#"loopwatch_polls_total{outcome="success",target="qwen"} 0"#.into(),
        r#"loopwatch_polls_total{outcome="rate_limited",target="all-8b"} 0"#.into(),
        r#"loopwatch_poll_duration_seconds_count{target="qwen"}"#.into(),
        r#"loopwatch_last_successful_poll_timestamp_seconds{target="all-8b"} 0"#.into(),
        r#"loopwatch_checkpoints{checkpoint_target="sampler",sync_status="SYNCING",target="qwen"} 0"#.into(),
        r#"loopwatch_checkpoints{checkpoint_target="trainer",sync_status="unknown",target="qwen"} 0"#.into(),
        r#"loopwatch_latest_checkpoint_created_timestamp_seconds{checkpoint_target="sampler",target="qwen"} 0"#.into(),
        r#"loopwatch_events_total{target="qwen",type="checkpoint.completed"} 0"#.into(),
        r#"loopwatch_checkpoint_sync_duration_seconds_bucket{target="qwen",le="3600"} 0"#.into(),
        r#"loopwatch_deliveries_total{outcome="dead",sink="hook"} 0"#.into(),
        r#"loopwatch_delivery_duration_seconds_count{sink="hook"} 0"#.into(),
        r#"loopwatch_deliveries_pending{sink="hook"} 0"#.into(),
        r#"loopwatch_deliveries_dead{sink="hook"} 0"#.into(),
        r#"loopwatch_oldest_pending_delivery_age_seconds{sink="hook"} 0"#.into(),
        "loopwatch_targets_owned 2".into(),
        "process_resident_memory_bytes".into(),
        "process_cpu_seconds_total".into(),
    ] {
        assert!(m.contains(&series), "missing {series}\n{m}");
    }
    // Failed polls are counted by status code, and readiness says why it is not ready.
    let failed = async || {
        let m = metrics(&addr).await;
        m.contains(r#"loopwatch_api_requests_total{code="503",endpoint="list"}"#)
            && m.contains(r#"loopwatch_polls_total{outcome="error",target="qwen"}"#)
    };
    assert!(
        until(T, Duration::from_millis(50), failed).await,
        "{}",
        metrics(&addr).await
    );
    let (code, body) = http_get(&format!("http://{addr}/readyz")).await;
    assert_eq!(code, 503);
    assert!(body.contains("qwen") && body.contains("all-8b"), "{body}");
    assert_eq!(http_get(&format!("http://{addr}/healthz")).await.0, 200);

    // Healed: ready, and the success is visible.
    env.sim.handle().set_fault(None);
    let ready = async || http_get(&format!("http://{addr}/readyz")).await.0 == 200;
    assert!(until(T, Duration::from_millis(50), ready).await);
    let m = metrics(&addr).await;
    assert!(
        m.contains(r#"loopwatch_api_requests_total{code="200",endpoint="list"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn checkpoint_gauges_follow_the_listing() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let a = h.add_checkpoint("run-1", "sampler", "step-100", Some("SYNCING"));
    h.add_checkpoint("run-1", "trainer", "step-100", Some("COMPLETE"));
    let cfg = env.write_config(&config(&rx));
    let d = env.spawn_daemon(&cfg);
    let addr = d.addr().await;
    let want = r#"loopwatch_checkpoints{checkpoint_target="sampler",sync_status="SYNCING",target="qwen"} 1"#;
    let syncing = async || metrics(&addr).await.contains(want);
    assert!(until(T, Duration::from_millis(50), syncing).await);
    h.set_status(&a, Some("COMPLETE"));
    let want = r#"loopwatch_checkpoints{checkpoint_target="sampler",sync_status="COMPLETE",target="qwen"} 1"#;
    let mut m = String::new();
    let seen = until(T, Duration::from_millis(50), async || {
        m = metrics(&addr).await;
        m.contains(want)
    })
    .await;
    assert!(seen, "{m}");
    assert!(
        m.contains(r#"loopwatch_checkpoint_sync_duration_seconds_count{target="qwen"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"loopwatch_checkpoints{checkpoint_target="sampler",sync_status="SYNCING",target="qwen"} 0"#));
}

/// `loopwatch_checkpoints` counts what the latest listing has: a checkpoint gone from it
/// leaves the count at once, while it is still tracked (not yet `deleted`).
#[tokio::test]
async fn a_checkpoint_gone_from_the_listing_leaves_the_gauge_before_it_is_deleted() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let h = env.sim.handle();
    let gone = h.add_checkpoint("run-1", "trainer", "step-100", Some("COMPLETE"));
    let cfg = env.write_config(&config(&rx));
    let d = env.spawn_daemon_env(
        &cfg,
        &[("LOOPWATCH__POLL__DELETE_AFTER_MISSING_POLLS", "1000")],
    );
    let addr = d.addr().await;
    let series = r#"loopwatch_checkpoints{checkpoint_target="trainer",sync_status="COMPLETE",target="qwen"}"#;
    let listed = format!("{series} 1");
    assert!(
        until(T, Duration::from_millis(50), async || metrics(&addr)
            .await
            .contains(&listed))
        .await
    );
    h.remove(&gone);
    let zero = format!("{series} 0");
    let mut m = String::new();
    let left = until(T, Duration::from_millis(50), async || {
        m = metrics(&addr).await;
        m.contains(&zero)
    })
    .await;
    assert!(left, "{m}");
}

#[tokio::test]
async fn systemd_notify_ready_watchdog_and_stopping() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = env.write_config(&config(&rx));
    let path = sock_path.to_str().unwrap();
    let mut d = env.spawn_daemon_env(
        &cfg,
        &[("NOTIFY_SOCKET", path), ("WATCHDOG_USEC", "400000")],
    );
    let recv = move |want: &'static str| {
        let deadline = Instant::now() + T;
        let mut buf = [0u8; 4096];
        loop {
            assert!(Instant::now() < deadline, "no {want} from the daemon");
            if let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                if msg.lines().any(|l| l == want) {
                    return;
                }
            }
        }
    };
    let recv = std::sync::Arc::new(std::sync::Mutex::new(recv));
    let r = recv.clone();
    tokio::task::spawn_blocking(move || (r.lock().unwrap())("READY=1"))
        .await
        .unwrap();
    let addr = d.addr().await;
    assert_eq!(
        http_get(&format!("http://{addr}/healthz")).await.0,
        200,
        "READY=1 came after the server was bound"
    );
    let r = recv.clone();
    tokio::task::spawn_blocking(move || (r.lock().unwrap())("WATCHDOG=1"))
        .await
        .unwrap();
    d.signal("TERM");
    let r = recv.clone();
    tokio::task::spawn_blocking(move || (r.lock().unwrap())("STOPPING=1"))
        .await
        .unwrap();
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}
