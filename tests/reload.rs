//! SIGHUP reload, end to end with the real binary (docs/configuration.md, "Reload"):
//! targets and sinks change without a restart, an invalid config is refused whole, keys
//! that need a restart are named, and systemd hears RELOADING=1 ... READY=1.

mod common;

use std::time::{Duration, Instant};

use common::{
    Daemon, Env, QWEN, Receiver, edit, gauge, metrics, never_in_polls, sink, until, wait_for,
};

const T: Duration = Duration::from_secs(30);

/// The URIs (`data.uri`) `rx` received, in order.
fn uris(rx: &Receiver) -> Vec<String> {
    rx.got()
        .iter()
        .map(|r| {
            r.json()["data"]["uri"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect()
}

fn uri(run: &str, name: &str) -> String {
    format!("bt://loops:{run}/sampler_weights/{name}")
}

/// Lines of the daemon's log that contain every one of `parts`.
fn lines(d: &Daemon, parts: &[&str]) -> usize {
    d.log_text()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Send SIGHUP and wait for the `n`th reload to be done (applied or refused).
async fn reload(d: &Daemon, n: usize) {
    d.signal("HUP");
    wait_for("the reload to finish", T, || {
        let done = lines(d, &["config reloaded"]) + lines(d, &["config reload refused"]);
        (done >= n).then_some(())
    })
    .await;
}

fn target(name: &str, run: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\nrun_id = \"{run}\"\n")
}

#[tokio::test]
async fn sighup_adds_a_target_silently_removes_one_and_changes_a_sink() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let (rx1, rx2) = (
        Receiver::start().await.unwrap(),
        Receiver::start().await.unwrap(),
    );
    h.add_checkpoint("run-1", "sampler", "old-1", Some("COMPLETE"));
    h.add_checkpoint("run-2", "sampler", "old-2", Some("COMPLETE"));
    let cfg = env.write_config(&format!(
        "{}{}",
        target("qwen", "run-1"),
        sink("hook", &rx1.url, "")
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    assert_eq!(
        gauge(&addr, "loopwatch_config_last_reload_successful").await,
        Some(1.0),
        "set at start"
    );
    let started = gauge(
        &addr,
        "loopwatch_config_last_reload_success_timestamp_seconds",
    )
    .await
    .unwrap();
    assert!(started > 1.7e9, "{started}");

    // Add a target on run-2 and point the sink elsewhere.
    edit(&cfg, |text| {
        text.replace(&rx1.url, &rx2.url).replace(
            "[[sinks]]",
            &format!("{}[[sinks]]", target("second", "run-2")),
        )
    });
    // The gauge has milliseconds: a reload once the clock has passed the start's.
    wait_for("the clock past the start's timestamp", T, || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        (now.unwrap().as_secs_f64() > started + 0.01).then_some(())
    })
    .await;
    reload(&d, 1).await;
    wait_for("the new target's baseline", T, || {
        (lines(&d, &["baseline recorded", "second"]) == 1).then_some(())
    })
    .await;
    assert_eq!(
        lines(&d, &["baseline recorded", "qwen"]),
        1,
        "the running target was not baselined again"
    );
    let m = metrics(&addr).await;
    assert!(
        m.contains("loopwatch_config_last_reload_successful 1"),
        "{m}"
    );
    let ts = gauge(
        &addr,
        "loopwatch_config_last_reload_success_timestamp_seconds",
    )
    .await
    .unwrap();
    assert!(ts > started, "{ts} after {started}");
    assert!(m.contains(r#"loopwatch_polls_total{outcome="success",target="second"}"#));

    // Both targets emit, to the changed sink only; the baselines stayed silent.
    let new1 = h.add_checkpoint("run-1", "sampler", "new-1", Some("SYNCING"));
    let new2 = h.add_checkpoint("run-2", "sampler", "new-2", Some("SYNCING"));
    h.set_status(&new1, Some("COMPLETE"));
    h.set_status(&new2, Some("COMPLETE"));
    wait_for("events of both targets at the new URL", T, || {
        let got = uris(&rx2);
        (got.contains(&uri("run-1", "new-1")) && got.contains(&uri("run-2", "new-2"))).then_some(())
    })
    .await;
    assert_eq!(rx1.count(), 0, "the old URL got {:?}", uris(&rx1));
    assert!(
        !uris(&rx2).iter().any(|u| u.contains("old-")),
        "a baseline emitted: {:?}",
        uris(&rx2)
    );

    // Remove "qwen": it is no longer polled and its series go.
    edit(&cfg, |text| text.replacen(&target("qwen", "run-1"), "", 1));
    reload(&d, 2).await;
    let gone = until(T, Duration::from_millis(50), async || {
        !metrics(&addr).await.contains(r#"target="qwen""#)
    })
    .await;
    assert!(gone, "qwen's series stayed after its removal");
    h.add_checkpoint("run-1", "sampler", "while-removed", Some("COMPLETE"));
    never_in_polls(&env, 5, "a removed target was polled", async || {
        uris(&rx2).contains(&uri("run-1", "while-removed"))
    })
    .await;

    // Added back with the same filter: no new baseline, it carries on where it was, so
    // what appeared meanwhile is news.
    edit(&cfg, |text| {
        text.replace(
            "[[sinks]]",
            &format!("{}[[sinks]]", target("qwen", "run-1")),
        )
    });
    reload(&d, 3).await;
    wait_for("the checkpoint that appeared while removed", T, || {
        uris(&rx2)
            .contains(&uri("run-1", "while-removed"))
            .then_some(())
    })
    .await;
    assert_eq!(lines(&d, &["baseline recorded", "qwen"]), 1, "re-baselined");
    assert!(!d.log_text().contains(" ERROR "), "{}", d.log_text());
}

#[tokio::test]
async fn an_invalid_config_on_sighup_is_refused_whole_and_the_daemon_keeps_delivering() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let rx = Receiver::start().await.unwrap();
    let cfg = env.write_config(&format!(
        "{}{}",
        target("qwen", "run-1"),
        sink("hook", &rx.url, "")
    ));
    let mut d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;

    // Two problems, and a valid new target beside them: nothing of it is applied.
    edit(&cfg, |text| {
        format!(
            "{text}{}[[targets]]\nname = \"bad\"\nrun_id = \"r\"\nbase_model = \"m\"\ninterval = \"soon\"\n",
            target("extra", "run-2")
        )
    });
    reload(&d, 1).await;
    assert_eq!(lines(&d, &["ERROR", "config reload refused"]), 1);
    assert!(
        lines(&d, &["ERROR", "problem in the reloaded config"]) >= 2,
        "every problem at ERROR: {}",
        d.log_text()
    );
    assert_eq!(
        lines(&d, &["ERROR", "problem in the reloaded config", "soon"]),
        1,
        "{}",
        d.log_text()
    );
    assert_eq!(
        gauge(&addr, "loopwatch_config_last_reload_successful").await,
        Some(0.0)
    );
    assert!(
        !metrics(&addr).await.contains(r#"target="extra""#),
        "part of a refused config was applied"
    );

    // Still running the old config: a completion arrives.
    let id = h.add_checkpoint("run-1", "sampler", "after", Some("SYNCING"));
    h.set_status(&id, Some("COMPLETE"));
    wait_for("a delivery after the refused reload", T, || {
        uris(&rx).contains(&uri("run-1", "after")).then_some(())
    })
    .await;

    // Fixed: applied, and the gauge says so again.
    edit(&cfg, |text| {
        let cut = text.find("[[targets]]\nname = \"bad\"").unwrap();
        text[..cut].to_string()
    });
    reload(&d, 2).await;
    assert_eq!(lines(&d, &["config reloaded"]), 1, "{}", d.log_text());
    assert_eq!(
        gauge(&addr, "loopwatch_config_last_reload_successful").await,
        Some(1.0)
    );
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

#[tokio::test]
async fn keys_that_need_a_restart_are_named_once_each_and_not_applied() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let cfg = env.write_config(&format!(
        "{}{}",
        target("qwen", "run-1"),
        sink("hook", &rx.url, "")
    ));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    edit(&cfg, |text| {
        text.replace("timeout = \"2s\"", "timeout = \"3s\"")
            .replace("level = \"debug\"", "level = \"info\"")
            .replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\"")
    });
    reload(&d, 1).await;
    for key in ["api.timeout", "log.level", "server.listen"] {
        assert_eq!(
            lines(&d, &["WARN", "needs a restart", &format!("key={key}")]),
            1,
            "{key}: {}",
            d.log_text()
        );
    }
    assert_eq!(lines(&d, &["needs a restart"]), 3, "{}", d.log_text());
    // Not applied: still serving where it was, still logging at debug.
    assert_eq!(
        gauge(&addr, "loopwatch_config_last_reload_successful").await,
        Some(1.0)
    );
    let before = d.log_text().lines().filter(|l| l.contains("DEBUG")).count();
    wait_for("more DEBUG lines: the log level is as it was", T, || {
        let after = d.log_text().lines().filter(|l| l.contains("DEBUG")).count();
        (after > before).then_some(())
    })
    .await;
}

#[tokio::test]
async fn systemd_hears_reloading_with_the_monotonic_time_then_ready() {
    let env = Env::new().await;
    let rx = Receiver::start().await.unwrap();
    let sock_path = env.dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let cfg = env.write_config(&format!(
        "{}{}",
        target("qwen", "run-1"),
        sink("hook", &rx.url, "")
    ));
    let path = sock_path.to_str().unwrap().to_string();
    let mut d = env.spawn_daemon_env(&cfg, &[("NOTIFY_SOCKET", &path)]);
    // Every datagram, in order, off the async runtime.
    let sock = std::sync::Arc::new(sock);
    let next = |want: &'static str| {
        let sock = sock.clone();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + T;
            let mut buf = [0u8; 4096];
            loop {
                assert!(Instant::now() < deadline, "no {want} from the daemon");
                if let Ok(n) = sock.recv(&mut buf) {
                    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                    if msg.lines().any(|l| l == want) {
                        return msg;
                    }
                }
            }
        })
    };
    next("READY=1").await.unwrap();
    d.ready().await;
    edit(&cfg, |text| {
        text.replace(
            "[[sinks]]",
            &format!("{}[[sinks]]", target("second", "run-2")),
        )
    });
    d.signal("HUP");
    let reloading = next("RELOADING=1").await.unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1, as Type=notify-reload requires")
        .parse()
        .unwrap();
    assert!(usec > 0);
    next("READY=1").await.unwrap();
    assert_eq!(lines(&d, &["config reloaded"]), 1, "{}", d.log_text());
    d.signal("TERM");
    next("STOPPING=1").await.unwrap();
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

/// A SIGHUP in the first instants of `run` (before the daemon listens for reloads) used to
/// end the process with the default action ("Hangup", exit 129).
#[tokio::test]
async fn a_sighup_at_start_never_ends_the_daemon() {
    let env = Env::new().await;
    env.sim
        .handle()
        .add_checkpoint("run-1", "sampler", "step-100", Some("COMPLETE"));
    let cfg = env.write_config(QWEN);
    let mut d = env.spawn_daemon(&cfg);
    // From its first log line (the store not yet open, reloads not yet listened for), and
    // again while it starts. (Before `main` runs, no process can hold a signal off.)
    wait_for("the first log line", Duration::from_secs(20), || {
        (!d.log_text().is_empty()).then_some(())
    })
    .await;
    for _ in 0..5 {
        d.signal("HUP");
        tokio::time::sleep(Duration::from_millis(10)).await; // signals spread over start-up: under test
    }
    d.ready().await;
    assert!(d.running(), "{}", d.log_text());
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(10)).await, 0);
}

/// Changing a target's `checkpoint_targets` takes effect at once, on an unchanged
/// listing: widened, the checkpoints it lets in are seen (and announced) without waiting
/// for the listing to change; narrowed, the ones it leaves out are still listed, so they
/// are never `deleted`.
#[tokio::test]
async fn changing_checkpoint_targets_applies_at_once_and_never_deletes_what_is_still_listed() {
    let env = Env::new().await;
    let h = env.sim.handle();
    let rx = Receiver::start().await.unwrap();
    h.add_checkpoint("run-1", "sampler", "step-1", Some("COMPLETE"));
    let trainer = h.add_checkpoint("run-1", "trainer", "step-1", Some("COMPLETE"));
    let only_samplers = format!(
        "{}checkpoint_targets = [\"sampler\"]\n{}",
        target("qwen", "run-1"),
        sink("hook", &rx.url, "")
    );
    let cfg = env.write_config(&only_samplers);
    let mut d = env.spawn_daemon(&cfg);
    d.ready().await;

    // Widened, the listing unchanged: the trainer checkpoint is seen.
    edit(&cfg, |text| {
        text.replace("checkpoint_targets = [\"sampler\"]\n", "")
    });
    reload(&d, 1).await;
    let seen = |kind: &str| {
        rx.got()
            .iter()
            .filter(|r| {
                let b = r.json();
                b["type"] == kind && b["data"]["checkpoint"]["id"] == trainer.as_str()
            })
            .count()
    };
    wait_for("the trainer checkpoint seen", T, || {
        (seen("checkpoint.discovered") == 1).then_some(())
    })
    .await;

    // Narrowed again: it stays listed, so it is not deleted, however many polls pass.
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg).unwrap().replace(
            &sink("hook", &rx.url, ""),
            &format!(
                "checkpoint_targets = [\"sampler\"]\n{}",
                sink("hook", &rx.url, "")
            ),
        ),
    )
    .unwrap();
    reload(&d, 2).await;
    assert_eq!(lines(&d, &["config reloaded"]), 2, "{}", d.log_text());
    never_in_polls(
        &env,
        6,
        "a deletion of a checkpoint still listed",
        async || seen("checkpoint.deleted") > 0,
    )
    .await;
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)).await, 0);
}

/// A sink removed by a reload keeps its deliveries pending in the store: the status page
/// still shows that backlog (it said "no sink configured" beside "2 pending"), and its
/// replay line works although the config no longer names the sink; a name the store does
/// not know stays a typo.
#[tokio::test]
async fn a_removed_sinks_backlog_stays_on_the_page_and_can_be_replayed() {
    let env = Env::new().await;
    let h = env.sim.handle();
    // Nobody listens on port 9: every attempt fails and waits an hour for its retry.
    let gone = sink(
        "gone",
        "http://127.0.0.1:9/hook",
        "retry_schedule = [\"1h\"]",
    );
    let cfg = env.write_config(&format!("{}{gone}", target("qwen", "run-1")));
    let d = env.spawn_daemon(&cfg);
    let addr = d.ready().await;
    let id = h.add_checkpoint("run-1", "sampler", "step-1", Some("SYNCING"));
    h.set_status(&id, Some("COMPLETE"));
    let pending = "loopwatch_deliveries_pending{sink=\"gone\"}";
    let queued = until(T, Duration::from_millis(50), async || {
        gauge(&addr, pending).await.unwrap_or(0.0) >= 2.0
    })
    .await;
    assert!(queued, "{}", d.log_text());
    edit(&cfg, |text| text.replace(&gone, ""));
    reload(&d, 1).await;
    let (_, body) = common::http_get(&format!("http://{addr}/api/v1/status")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sinks = v["sinks"].as_array().unwrap();
    assert_eq!(sinks.len(), 1, "{v}");
    assert_eq!(sinks[0]["name"], "gone");
    assert_eq!(sinks[0]["kind"], "removed");
    assert_eq!(sinks[0]["pending"], 2);
    let (_, page) = common::http_get(&format!("http://{addr}/")).await;
    assert!(page.contains("not in the config"), "{page}");
    let out = env
        .run(
            &cfg,
            &["deliveries", "redeliver", "--pending", "--sink", "gone"],
        )
        .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is not in the config"), "{err}");
    let out = env
        .run(
            &cfg,
            &["deliveries", "redeliver", "--pending", "--sink", "typo"],
        )
        .await;
    assert_eq!(out.status.code(), Some(1));
}
