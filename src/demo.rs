//! `loopwatch demo`: the whole product in one process with no account and no network.
//! A simulated Loops API runs a training run that saves a sampler and a trainer
//! checkpoint every few seconds, and a second run whose checkpoints never get a
//! `sync_status` (the readiness probe completes its sampler checkpoint "ready by files");
//! an embedded receiver verifies each webhook's signature and prints one line per event;
//! a `baseten_deploy` sink deploys each completed sampler checkpoint on the simulated
//! API, whose deploy route is unavailable at first (503 with `Retry-After`), so saves
//! outpace deploys and `latest_only` supersedes the older ones; each deploy waits for
//! approval, which the demo gives in-process with the very command its event prints, then
//! the live deployment is promoted to `production` and the one it replaces deactivated;
//! the daemon runs on a throw-away SQLite file.
//!
//! The demo is its own wiring (like `app.rs`, it spawns): the simulator and the receiver
//! are test fixtures, not parts of the daemon.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use rand::RngExt;

use crate::app::{App, BuildError, ListenError};
use crate::config::{self, Environment};
use crate::signing::SigningKey;
use crate::sim::{Fault, Received, Receiver, Route, Signature, SimApi};
use crate::store::{Decision, DeliveryStatus, DeployStage, Store, Verdict};

pub struct DemoOptions {
    /// Stop after this long; `None` runs until Ctrl-C.
    pub duration: Option<Duration>,
    /// Address of the status page, `/metrics`, `/healthz` and `/readyz`.
    pub listen: SocketAddr,
    /// How often the simulated run saves checkpoints, and how long each syncs.
    pub every: Duration,
    pub sync_for: Duration,
}

/// One line per webhook the embedded receiver gets.
fn print_received(r: &Received) {
    let id = r.id();
    match r.signature {
        Some(Signature::Valid) if r.duplicate => {
            println!("  receiver: duplicate {id} acknowledged again (at-least-once)");
        }
        Some(Signature::Valid) => {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
            let d = &v["data"];
            let dep = &d["deployment"];
            let mut sync = match d["sync_seconds"].as_f64() {
                _ if v["type"] == "checkpoint.awaiting_approval" => format!(
                    "  approve with: {}",
                    d["approve_command"].as_str().unwrap_or("?")
                ),
                _ if dep.is_object() => {
                    format!(
                        "  model {} deployment {}{}",
                        dep["model_name"].as_str().unwrap_or("?"),
                        dep["deployment_id"].as_str().unwrap_or("?"),
                        match (dep["status"].as_str(), dep["reconciled"].as_bool()) {
                            (Some(status), _) => format!(" {status}"),
                            (None, Some(true)) =>
                                " (its answer was lost: found by reading the model's deployments)"
                                    .into(),
                            _ => String::new(),
                        },
                    ) + &dep["environment"]
                        .as_str()
                        .map(|e| format!(" in {e}"))
                        .unwrap_or_default()
                }
                Some(s) => format!("  synced in {s:.1}s"),
                None => String::new(),
            };
            if let Some(by) = d["ready_by"]
                .as_str()
                .filter(|by| *by != "sync_status" && !dep.is_object())
            {
                sync.push_str(&format!("  ready by {by} (sync_status null)"));
            }
            println!(
                "  receiver: {:<26} {:<48} signature ok  {id}{sync}",
                v["type"].as_str().unwrap_or("?"),
                d["uri"].as_str().unwrap_or("?"),
            );
        }
        Some(Signature::Stale) => println!("  receiver: REJECTED {id}: signature too old"),
        Some(Signature::Invalid) | None => {
            println!("  receiver: REJECTED {id}: signature invalid");
        }
    }
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

const CONFIG: &str = r#"
[api]
base_url = "{api}"
api_key_env = "LOOPWATCH_DEMO_API_KEY"
max_requests_per_second = 20
[poll]
interval = "2s"
syncing_interval = "500ms"
jitter = 0.0
stalled_after = "10m"
[store]
url = "sqlite://{db}"
[server]
listen = "{listen}"
[delivery]
shutdown_grace = "2s"
[[targets]]
name = "demo-run"
run_id = "demo-run"
[[targets]]
name = "demo-null-run"
run_id = "demo-null-run"
checkpoint_targets = ["sampler"]
[[sinks]]
name = "demo-receiver"
url = "{receiver}"
secret_env = "LOOPWATCH_DEMO_SECRET"
retry_schedule = ["1s", "2s", "5s"]
[[sinks]]
name = "demo-deploy"
kind = "baseten_deploy"
model_name = "{{ data.target }}"
instance_type_id = "H100"
hf_secret_name = "hf_access_token"
concurrency = 1
retry_schedule = ["1s", "2s", "5s", "10s", "30s", "1m"]
follow_interval = "500ms"
approval = "before_deploy"
promote_to = "production"
deactivate_superseded = true
"#;

/// The demo's approver: each deploy waiting for approval is approved, after a moment, by
/// the command its event printed (the user as "demo"), run in-process: the same decision,
/// in the store, that `loopwatch deliveries approve` makes.
async fn approve_waiting(store: std::sync::Arc<dyn Store>, pause: Duration) {
    let mut asked = std::collections::HashMap::<i64, std::time::Instant>::new();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for d in store.list_deploys(None, 100).await.unwrap_or_default() {
            if d.stage != DeployStage::AwaitingApproval {
                continue;
            }
            let since = *asked
                .entry(d.delivery_id)
                .or_insert_with(std::time::Instant::now);
            if since.elapsed() < pause {
                continue;
            }
            // The demo's config is no file: its lines name none.
            let how = crate::config::Invocation::default();
            let line = crate::store::deploys::approve_command(&how, d.delivery_id)
                .replace(crate::store::deploys::BY_WHOEVER_RUNS_IT, "demo");
            println!("  approver: $ {line}   (run in-process)");
            let decision = Decision {
                verdict: Verdict::Approved,
                by: "demo".into(),
                reason: Some("approved by the demo".into()),
                at: chrono::Utc::now(),
            };
            match store.decide(&[d.delivery_id.to_string()], &decision).await {
                Ok(Ok(decided)) => {
                    for d in &decided {
                        println!("  approver: {}", crate::approvals::describe(d));
                    }
                }
                Ok(Err(undecided)) => {
                    for u in undecided {
                        println!("  approver: {}", u.why);
                    }
                }
                Err(e) => println!("  approver: cannot decide: {e}"),
            }
        }
    }
}

/// One line per deploy that `latest_only` superseded, one per status a followed
/// deployment shows, and one per deployment promoted or deactivated, as the store records
/// them.
async fn print_deploys(store: std::sync::Arc<dyn Store>, every: Duration) {
    let mut seen = std::collections::HashSet::new();
    let mut statuses = std::collections::HashMap::<i64, String>::new();
    let mut promoted = std::collections::HashSet::new();
    let mut deactivated = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(every.max(Duration::from_millis(250))).await;
        for d in store.list_deploys(None, 100).await.unwrap_or_default() {
            let uri = crate::model::checkpoint_uri(
                &d.run_id,
                &crate::model::CheckpointTarget::Sampler,
                &d.checkpoint_name,
            )
            .unwrap_or_default();
            if d.stage == DeployStage::Promoted && promoted.insert(d.delivery_id) {
                println!(
                    "  deployer: {:<26} {uri:<48} deployment {} is in {}",
                    "deploy promoted",
                    d.deployment_id.as_deref().unwrap_or("?"),
                    d.environment.as_deref().unwrap_or("?"),
                );
            }
            if d.deactivated_at.is_some() && deactivated.insert(d.delivery_id) {
                println!(
                    "  deployer: {:<26} {uri:<48} deployment {} {}",
                    format!("deploy {}", d.stage.as_str()),
                    d.deployment_id.as_deref().unwrap_or("?"),
                    d.error.as_deref().unwrap_or_default(),
                );
            }
            let Some(status) = d.deployment_status.clone() else {
                continue;
            };
            // Once promoted (or deactivated), the lines above say it.
            let settled = d.stage == DeployStage::Promoted || d.deactivated_at.is_some();
            if statuses.get(&d.delivery_id) != Some(&status) && !settled {
                println!(
                    "  deployer: {:<26} {uri:<48} deployment {} is {status}",
                    format!("deploy {}", d.stage.as_str()),
                    d.deployment_id.as_deref().unwrap_or("?"),
                );
            }
            statuses.insert(d.delivery_id, status);
        }
        let Ok(rows) = store
            .list_deliveries(Some(DeliveryStatus::Superseded), 1000)
            .await
        else {
            continue;
        };
        for d in rows {
            if seen.insert(d.id) {
                println!(
                    "  deployer: {:<26} {:<48} not deployed, {}",
                    "deploy superseded",
                    d.uri.unwrap_or_default(),
                    d.last_error.unwrap_or_default()
                );
            }
        }
    }
}

pub async fn run(
    opts: DemoOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u8> {
    let api_key = format!("demo-{:x}", rand::rng().random::<u64>());
    let secret = random_secret();
    let sim = SimApi::start(Some(api_key.clone())).await?;
    sim.handle()
        .start_training_run("demo-run", "Qwen/Qwen3-8B", opts.every, opts.sync_for, None);
    // The deploy route is unavailable for its first two calls: the first checkpoints wait
    // and are superseded by newer ones (latest_only) instead of each being deployed.
    for _ in 0..2 {
        sim.handle().push_fault_to(
            Route::Deploy,
            Fault::Status {
                code: 503,
                retry_after: Some(format!("{}", opts.every.as_secs().max(1) + 1)),
                body: None,
            },
        );
    }
    // Then one deploy acts but its answer is lost (the connection drops): loopwatch reads
    // the model's deployments, finds the one it made, and never deploys twice.
    sim.handle()
        .push_fault_to(Route::Deploy, Fault::ActThenClose);
    // One save whose sync_status stays null: only its files say when it is ready.
    sim.handle().start_null_status_run(
        "demo-null-run",
        "Qwen/Qwen3-8B",
        opts.every,
        opts.sync_for,
        Some(1),
    );

    let receiver = Receiver::builder()
        .path("/hooks/loops")
        .verify_with(SigningKey::parse(&secret).map_err(anyhow::Error::msg)?)
        .keep_requests(false)
        .on_request(print_received)
        .start()
        .await?;

    let dir = tempfile::Builder::new()
        .prefix("loopwatch-demo-")
        .tempdir()?;
    let db = dir.path().join("loopwatch.db");
    let text = CONFIG
        .replace("{api}", &sim.base_url())
        .replace("{db}", &db.display().to_string())
        .replace("{listen}", &opts.listen.to_string())
        .replace("{receiver}", &receiver.url);
    let env = Environment::from_pairs([
        ("LOOPWATCH_DEMO_API_KEY", api_key),
        ("LOOPWATCH_DEMO_SECRET", secret),
    ]);
    let cfg = config::load_str(&text, config::FileFormat::Toml, "demo.toml", &env)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let app = match App::build(cfg, true).await {
        Ok(app) => app,
        // The daemon's message names server.listen: here the address is the flag's.
        Err(BuildError::Other(e)) => match e.downcast::<ListenError>() {
            Ok(l) => anyhow::bail!(
                "cannot listen on --listen {}: {}; pass another address, or port 0 for any free one",
                l.addr,
                l.source
            ),
            Err(e) => return Err(e),
        },
        Err(e) => return Err(e.into()),
    };
    let store = app.store.clone();
    let addr = app.local_addr().expect("bound");
    println!(
        "loopwatch demo: a simulated training run saves a sampler and a trainer checkpoint every {:?};",
        opts.every
    );
    println!(
        "each syncs for {:?}, then completes. A second run (demo-null-run) saves once and never",
        opts.sync_for
    );
    println!("sets sync_status: loopwatch probes its files and completes it \"ready by files\".");
    println!(
        "Events arrive below as signed webhooks; each completed sampler checkpoint is deployed"
    );
    println!("once approved (the demo approves each with the command its event prints; the");
    println!("simulated deploy route is down at first, so newer checkpoints supersede older; then");
    println!("one deploy's answer is lost and reconciled), followed until ACTIVE, promoted to");
    println!("production, and the deployment it replaces is deactivated.");
    println!("  simulated Loops API  {}", sim.base_url());
    println!("  webhook receiver     {}", receiver.url);
    println!("  status page          http://{addr}/?refresh=10   (JSON: /api/v1/status)");
    println!("  metrics              http://{addr}/metrics   (also /healthz, /readyz)");
    println!(
        "  state                {}   (removed on exit)",
        dir.path().display()
    );
    match opts.duration {
        Some(d) => println!("  stopping after {d:?}; Ctrl-C stops earlier\n"),
        None => println!("  Ctrl-C to stop\n"),
    }
    let stop = async {
        match opts.duration {
            Some(d) => tokio::select! { _ = tokio::time::sleep(d) => {}, _ = shutdown => {} },
            None => shutdown.await,
        }
    };
    let watch = tokio::spawn(print_deploys(store.clone(), opts.every / 8));
    let approver = tokio::spawn(approve_waiting(store.clone(), opts.every / 4));
    app.run(stop).await?;
    watch.abort();
    approver.abort();

    let by_type: std::collections::BTreeMap<String, i64> =
        store.event_counts().await?.into_iter().collect();
    let deliveries = store.list_deliveries(None, i64::MAX).await?;
    let count = |s| deliveries.iter().filter(|d| d.status == s).count();
    let types: Vec<String> = by_type.iter().map(|(k, v)| format!("{v} {k}")).collect();
    println!();
    println!("summary:");
    println!("  checkpoints seen     {}", sim.handle().checkpoint_count());
    println!(
        "  events               {} ({})",
        by_type.values().sum::<i64>(),
        if types.is_empty() {
            "none".into()
        } else {
            types.join(", ")
        }
    );
    println!(
        "  deliveries           {} delivered, {} pending, {} dead, {} superseded",
        count(DeliveryStatus::Delivered),
        count(DeliveryStatus::Pending),
        count(DeliveryStatus::Dead),
        count(DeliveryStatus::Superseded)
    );
    let pipelines = store.list_deploys(None, i64::MAX).await?;
    let stage = |s| pipelines.iter().filter(|d| d.stage == s).count();
    println!(
        "  deploys              {} made on the simulated API ({} reconciled after a lost answer), {} followed to ACTIVE ({} still active, not yet promoted), {} superseded by a newer checkpoint (latest_only)",
        sim.handle().deploys().len(),
        pipelines.iter().filter(|d| d.reconciled).count(),
        by_type
            .get("checkpoint.deployment_active")
            .copied()
            .unwrap_or_default(),
        stage(crate::store::DeployStage::Active),
        count(DeliveryStatus::Superseded)
    );
    println!(
        "  promotions           {} approved by the demo, {} promoted to production, {} older deployments deactivated",
        pipelines
            .iter()
            .filter(|d| d.decision.as_deref() == Some("approved"))
            .count(),
        sim.handle().promotions().len(),
        sim.handle().deactivations().len(),
    );
    println!(
        "  receiver             {} verified, {} rejected signatures, {} duplicates",
        receiver.verified(),
        receiver.rejected(),
        receiver.duplicates()
    );
    let failures = receiver.rejected() + count(DeliveryStatus::Dead);
    receiver.shutdown().await;
    sim.shutdown().await;
    drop(store);
    dir.close()?;
    Ok(if failures == 0 { 0 } else { 1 })
}
