//! The commands of the CLI (docs/cli.md), as library functions returning an exit code. The
//! binary parses arguments and calls these; tests may call them too.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use chrono::Utc;
use serde_json::json;

use crate::api;
use crate::app::{App, BuildError};
use crate::config::{Config, Filter};
use crate::model::TargetState;
use crate::model::{SyncClass, Tracked, rfc3339};
use crate::poller::PollError;
use crate::store::{
    self, Access, Coordinator, DeliveryStatus, Fence, Redeliver, Role, StoreError, StoredEvent,
    Take,
};
use crate::text;

/// Output format of the listing commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, for people
    Table,
    /// Pretty-printed JSON, for scripts
    Json,
}

/// Exit codes (docs/cli.md).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    /// A usage error (unknown command or flag, a missing or bad argument).
    pub const USAGE: u8 = 2;
    pub const CONFIG: u8 = 78;
}

/// The effective config on stdout, as TOML that loads again (each secret as the
/// `*_env`/`*_file` key it is read from); a `warning: ` line on stderr per unsafe setting
/// it was accepted with (it still exits 0: they are warnings).
///
/// A config loaded with `--no-secrets` says on stderr which secrets it did not read, one
/// `not read: KEY = SOURCE` line each: their values were not checked.
pub fn check_config(cfg: &Config) -> u8 {
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    for s in &cfg.skipped_secrets {
        eprintln!("not read (--no-secrets): {s}");
    }
    println!(
        "# effective config of {}; secrets [redacted]: each is shown by the *_env or *_file key it is read from, a URL's password and query as \"redacted\"",
        cfg.source
    );
    for sink in &cfg.sinks {
        if let crate::config::SinkKind::Webhook {
            signing_key: Some(k),
            ..
        } = &sink.kind
        {
            println!(
                "# sink {:?}: receivers verify its v1a signatures with the public key {}",
                sink.name,
                k.public_key()
            );
        }
    }
    print!("{}", cfg.to_loadable_toml());
    exit::OK
}

/// `check-config -o json`: `{"source": <file>, "config": <the effective config>,
/// "skipped_secrets": [...]}`, the same redacted values as the TOML.
pub fn check_config_json(cfg: &Config) -> anyhow::Result<u8> {
    let config: toml::Table = toml::from_str(&cfg.to_redacted_toml())?;
    let v = json!({
        "source": cfg.source.to_string(),
        "config": config,
        "skipped_secrets": cfg.skipped_secrets,
    });
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(exit::OK)
}

/// `checkpoints`: list live from the API.
pub async fn checkpoints(cfg: &Config, filter: Filter, output: Output) -> anyhow::Result<u8> {
    let client = api::Client::new(&cfg.api)?;
    let mut list = client.list(&filter).await.map_err(|e| match e.fix() {
        // What to check, as `once` says it.
        Some(fix) => anyhow::anyhow!("listing checkpoints ({filter}): {e}; {fix}"),
        None => anyhow::Error::new(e).context(format!("listing checkpoints ({filter})")),
    })?;
    // Newest first, like the Baseten CLI.
    list.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
    match output {
        Output::Json => {
            // Each object as the API sent it (its numbers, its key order), one per line:
            // a parse into `Value` turned a 23-digit integer into a float and sorted keys.
            let raw: Vec<std::borrow::Cow<'_, str>> =
                list.iter().map(|c| crate::json::compact(&c.raw)).collect();
            if raw.is_empty() {
                println!("[]");
            } else {
                println!("[\n  {}\n]", raw.join(",\n  "));
            }
        }
        Output::Table => {
            let rows = list
                .iter()
                .map(|c| {
                    vec![
                        c.id.clone(),
                        c.name.clone(),
                        c.run_id.clone(),
                        c.target.to_string(),
                        c.checkpoint_type.clone(),
                        human_size(c.size_bytes),
                        c.sync_status.clone().unwrap_or_else(|| "-".into()),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID", "NAME", "RUN", "TARGET", "TYPE", "SIZE", "SYNC", "CREATED",
                ],
                rows,
            );
        }
    }
    Ok(exit::OK)
}

/// `once`: poll every target once, deliver what is due, exit. With `dry_run`, print each
/// event's standard body as one JSON line and write nothing.
///
/// Beside running replicas (PostgreSQL) `once` polls only the targets whose lease nobody
/// holds, under a lease of its own ([`Role::OneShot`]: another owner name, no heartbeat,
/// so the replicas' shares do not move), commits fenced like a replica, and gives the
/// leases back before it exits. A target a replica holds is skipped (that replica polls
/// it); a dry run writes nothing and so polls every target.
pub async fn once(mut cfg: Config, dry_run: bool, output: Output) -> anyhow::Result<u8> {
    let app = if dry_run {
        // Writes nothing, not even a new file: without a state file, the state is empty
        // (every target takes its baseline) and lives in memory.
        match App::build_with(cfg.clone(), false, Access::ReadOnly, Role::OneShot).await {
            Err(BuildError::Store(StoreError::Missing(_))) => {
                cfg.store.url = "sqlite::memory:".into();
                App::build_with(cfg, false, Access::ReadWrite, Role::OneShot).await?
            }
            r => r?,
        }
    } else {
        App::build_with(cfg, false, Access::ReadWrite, Role::OneShot).await?
    };
    if dry_run {
        let targets = app.config().targets.clone();
        return poll_and_deliver(&app, &targets, &HashMap::new(), dry_run, output).await;
    }
    // Keep the leases while the run lasts (taking the leases of 10,000 targets, or polling
    // them at the API's pace, can outlast one ttl), and give every lease back at the end,
    // whatever happened.
    let coordinator = app.coordinator().clone();
    let names: Vec<String> = app
        .config()
        .targets
        .iter()
        .map(|t| t.name.clone())
        .collect();
    let token = tokio_util::sync::CancellationToken::new();
    // Beside running replicas, this run takes its share of the API budget, not all of it.
    let keeping =
        crate::replicas::keep_leases(&*coordinator, &names, &token, |round| match round {
            Ok(round) => app.share_api_budget(round.api_sharers),
            Err(e) => eprintln!("warning: cannot renew the target leases: {e}"),
        });
    let run = async {
        let outcome = async {
            app.share_api_budget(coordinator.round(&names).await?.api_sharers);
            let fences = take_free(&*coordinator, &names).await?;
            let mut targets = app.config().targets.clone();
            targets.retain(|t| fences.contains_key(&t.name));
            poll_and_deliver(&app, &targets, &fences, dry_run, output).await
        }
        .await;
        token.cancel();
        outcome
    };
    let (outcome, released) = tokio::join!(run, keeping);
    if let Err(e) = released {
        eprintln!("warning: cannot give back the target leases (they expire on their own): {e}");
    }
    outcome
}

/// The fences of the targets nobody else holds, now leased to this run; one stderr line
/// for each target skipped.
async fn take_free(
    coordinator: &dyn Coordinator,
    names: &[String],
) -> anyhow::Result<HashMap<String, Fence>> {
    let mut fences = HashMap::new();
    for (name, got) in coordinator.take_free(names).await? {
        match got {
            Take::Taken(epoch) => {
                let owner = coordinator.owner().to_string();
                fences.insert(name, Fence { owner, epoch });
            }
            Take::HeldBy(owner) => {
                eprintln!("target {name}: skipped, replica {owner:?} holds its lease and polls it")
            }
        }
    }
    Ok(fences)
}

async fn poll_and_deliver(
    app: &App,
    targets: &[crate::config::TargetConfig],
    fences: &HashMap<String, Fence>,
    dry_run: bool,
    output: Output,
) -> anyhow::Result<u8> {
    let json = output == Output::Json;
    let names: Vec<&str> = targets.iter().map(|t| t.name.as_str()).collect();
    let states: Vec<TargetState> = app.store.load_targets(&names).await?;
    let polls = targets.iter().zip(states).map(|(t, mut state)| {
        let poller = app.poller.clone();
        let fence = fences.get(&t.name).cloned();
        async move {
            let report = poller.poll_target(t, &mut state, dry_run, fence).await;
            (t.name.clone(), report)
        }
    });
    let mut failed = 0;
    let mut outcomes = Vec::new();
    let mut found: Vec<crate::model::Event> = Vec::new();
    let mut stdout = std::io::stdout().lock();
    for (name, r) in futures_util::future::join_all(polls).await {
        match r {
            Err(e) => {
                failed += 1;
                let line = match &e {
                    PollError::Api(api) if let Some(fix) = api.fix() => format!("{e}; {fix}"),
                    _ => e.to_string(),
                };
                eprintln!("error: target {name}: {line}");
                outcomes.push(json!({ "target": name, "ok": false, "events": 0, "error": line }));
            }
            Ok(report) => {
                let n = report.events.len();
                outcomes.push(json!({ "target": name, "ok": true, "events": n, "error": null }));
                if dry_run {
                    for mut e in report.events {
                        if e.checkpoint.is_empty() {
                            // Gone from the listing: the object last stored (a commit
                            // reads it the same way, in its transaction).
                            let raw = app.store.checkpoint_raw(&e.target, &e.checkpoint_id);
                            e.checkpoint = raw.await?.unwrap_or_default();
                        }
                        if !json {
                            writeln!(stdout, "{}", e.standard_body())?;
                        }
                        found.push(e);
                    }
                }
            }
        }
    }
    let mut summary = json!({ "dry_run": dry_run, "targets": outcomes });
    if dry_run {
        let deploys = would_deploy(app.store.as_ref(), &app.config().sinks, &found).await;
        if !json {
            for line in &deploys {
                eprintln!("{line}");
            }
        }
        let bodies: Vec<serde_json::Value> = found
            .iter()
            .map(|e| serde_json::from_str(&e.standard_body().to_string()).unwrap_or_default())
            .collect();
        summary["events"] = bodies.into();
        summary["would_deploy"] = deploys.into();
    } else {
        let s = app.outbox.deliver_due().await;
        if s.delivered + s.retrying + s.dead + s.superseded > 0 {
            eprintln!(
                "deliveries: {} delivered, {} failed and will be retried per retry_schedule, {} dead (see `loopwatch deliveries list --status dead`)",
                s.delivered, s.retrying, s.dead
            );
        }
        if s.superseded > 0 {
            eprintln!(
                "deploys: {} superseded by a newer checkpoint of the same run (latest_only)",
                s.superseded
            );
        }
        if s.awaiting_approval > 0 {
            eprintln!(
                "deploys: {} awaiting approval (`loopwatch deploys` lists them; `loopwatch deliveries approve ID --by NAME`)",
                s.awaiting_approval
            );
        }
        summary["deliveries"] = json!({
            "delivered": s.delivered,
            "retrying": s.retrying,
            "dead": s.dead,
            "superseded": s.superseded,
            "awaiting_approval": s.awaiting_approval,
        });
    }
    if json {
        writeln!(stdout, "{}", serde_json::to_string_pretty(&summary)?)?;
    }
    drop(stdout);
    Ok(if failed > 0 { exit::FAILURE } else { exit::OK })
}

/// For `once --dry-run`: one line per deploy a `baseten_deploy` sink would make of
/// `events`, or why not (`latest_only`: a newer completed sampler checkpoint of the run in
/// the same poll, or one the sink has a deploy of in `store` already; a model_name that
/// does not render).
pub async fn would_deploy(
    store: &dyn store::Store,
    sinks: &[crate::config::SinkConfig],
    events: &[crate::model::Event],
) -> Vec<String> {
    let routes = crate::poller::route(events, sinks);
    let mut out = Vec::new();
    for cfg in sinks {
        let Some(d) = cfg.deploy() else { continue };
        let Ok(sink) = crate::delivery::deploy::DeploySink::new(d.clone()) else {
            continue;
        };
        let mine: Vec<StoredEvent> = events
            .iter()
            .zip(&routes)
            .filter(|(_, r)| r.contains(&cfg.name.as_str()))
            .map(|(e, _)| StoredEvent::from_event(0, e))
            .collect();
        let created = |e: &StoredEvent| crate::delivery::deploy::checkpoint_created_at(e);
        for e in &mine {
            // The rule the sink applies before deploying, over this poll's checkpoints.
            let newer = match (d.latest_only, created(e)) {
                (true, Some(than)) => match crate::model::superseded_by(
                    mine.iter()
                        .filter(|o| o.run_id == e.run_id && o.id != e.id)
                        .filter(|o| o.kind == "checkpoint.completed")
                        .filter(|o| o.checkpoint_target == "sampler")
                        .filter_map(|o| Some((created(o)?, o.checkpoint_name.clone()))),
                    than,
                ) {
                    // No delivery of this event exists yet: none to leave out (-1).
                    None => store
                        .newer_deploy(&cfg.name, &e.run_id, -1, than)
                        .await
                        .ok()
                        .flatten(),
                    newer => newer,
                },
                _ => None,
            };
            let line = match (newer, sink.request(e)) {
                (Some(n), _) => format!(
                    "dry run: sink {} would not deploy {}: superseded by {} (latest_only)",
                    cfg.name,
                    e.uri().unwrap_or_default(),
                    n
                ),
                (None, Ok(r)) => format!(
                    "dry run: sink {} would {}{}deploy {} (checkpoint id {}) as model_name {:?} on instance_type_id {:?} with hf_secret_name {:?}",
                    cfg.name,
                    if d.approval == crate::config::Approval::BeforeDeploy {
                        "wait for approval (loopwatch deliveries approve), then "
                    } else {
                        ""
                    },
                    if d.validate { "validate and " } else { "" },
                    e.uri().unwrap_or_default(),
                    e.checkpoint_id,
                    r.model_name,
                    r.instance_type_id,
                    r.hf_secret_name
                ),
                (None, Err(why)) => format!(
                    "dry run: sink {} could not deploy {}: {why}",
                    cfg.name,
                    e.uri().unwrap_or_default()
                ),
            };
            out.push(line);
        }
    }
    out
}

/// The store, read-only; None (and a warning on stderr) when there is no state file yet:
/// nothing to show, and nothing created.
async fn read_only_store(cfg: &Config) -> anyhow::Result<Option<Arc<dyn store::Store>>> {
    match store::open_with(&cfg.store.url, Access::ReadOnly).await {
        Ok(s) => Ok(Some(s)),
        Err(StoreError::Missing(m)) => {
            eprintln!("warning: {m}");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// `state`: what the daemon has persisted.
pub async fn state(cfg: &Config, target: Option<&str>, output: Output) -> anyhow::Result<u8> {
    let dump = match read_only_store(cfg).await? {
        Some(store) => store.dump(target).await?,
        None => Vec::new(),
    };
    if let Some(t) = target
        && dump.is_empty()
    {
        anyhow::bail!(
            "no state for target {t:?}: it has not been polled yet (or the name is wrong)"
        );
    }
    match output {
        Output::Json => {
            let v: Vec<_> = dump
                .iter()
                .map(|d| {
                    json!({
                        "target": d.name,
                        "filter": d.filter,
                        "baselined_at": rfc3339(d.baselined_at),
                        "checkpoints": d.checkpoints.iter().map(tracked_json).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Output::Table => {
            let mut rows = Vec::new();
            for d in &dump {
                for c in &d.checkpoints {
                    let mut flags = Vec::new();
                    if c.stalled {
                        flags.push("stalled");
                    }
                    if c.deleted {
                        flags.push("deleted");
                    }
                    // Completed by the readiness probe while the API still says null.
                    if c.completed && SyncClass::of(c.sync_status.as_deref()) != SyncClass::Complete
                    {
                        flags.push("ready(probe)");
                    }
                    rows.push(vec![
                        d.name.clone(),
                        c.id.to_string(),
                        c.name.to_string(),
                        c.run_id.to_string(),
                        c.target.to_string(),
                        c.sync_status.as_deref().unwrap_or("-").to_string(),
                        rfc3339(c.first_seen_at),
                        flags.join(","),
                    ]);
                }
                if d.checkpoints.is_empty() {
                    rows.push(vec![
                        d.name.clone(),
                        "-".into(),
                        "(no checkpoints)".into(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ]);
                }
            }
            print_table(
                &[
                    "TARGET",
                    "ID",
                    "NAME",
                    "RUN",
                    "CKPT TARGET",
                    "SYNC",
                    "FIRST SEEN",
                    "FLAGS",
                ],
                rows,
            );
        }
    }
    Ok(exit::OK)
}

fn tracked_json(c: &Tracked) -> serde_json::Value {
    json!({
        "id": c.id,
        "name": c.name,
        "run_id": c.run_id,
        "checkpoint_target": c.target,
        "uri": c.uri(),
        "sync_status": c.sync_status,
        "created_at": c.created_at,
        "first_seen_at": rfc3339(c.first_seen_at),
        "completed": c.completed,
        "stalled": c.stalled,
        "deleted": c.deleted,
    })
}

/// The newest `limit` deliveries (in `status`, to `sink`), oldest first; when more match,
/// a line on stderr says so (the output itself stays a plain table or JSON array).
pub async fn deliveries_list(
    cfg: &Config,
    status: Option<DeliveryStatus>,
    sink: Option<&str>,
    limit: u32,
    output: Output,
) -> anyhow::Result<u8> {
    let mut rows = match read_only_store(cfg).await? {
        // One more than asked: whether there are more is known without a count.
        Some(store) => (store.list_sink_deliveries(status, sink, i64::from(limit) + 1)).await?,
        None => Vec::new(),
    };
    // Redacted at the source when stored; again here for rows an older version stored.
    for d in &mut rows {
        if let Some(e) = d.last_error.as_mut() {
            *e = crate::redact::secrets(e).into_owned();
        }
    }
    if rows.len() > limit as usize {
        rows.drain(..rows.len() - limit as usize);
        eprintln!(
            "note: showing the newest {limit} deliveries; older ones match too (raise --limit, or narrow with --status or --sink)"
        );
    }
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table => {
            let rows = rows
                .into_iter()
                .map(|d| {
                    vec![
                        d.id.to_string(),
                        d.event_id,
                        d.kind,
                        d.sink,
                        d.status.as_str().into(),
                        d.attempts.to_string(),
                        d.next_attempt_at.map(rfc3339).unwrap_or_else(|| "-".into()),
                        d.uri.unwrap_or_else(|| "-".into()),
                        d.last_error.unwrap_or_default(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "ID",
                    "EVENT",
                    "TYPE",
                    "SINK",
                    "STATUS",
                    "ATTEMPTS",
                    "NEXT ATTEMPT",
                    "URI",
                    "LAST ERROR",
                ],
                rows,
            );
        }
    }
    Ok(exit::OK)
}

pub async fn deliveries_redeliver(
    cfg: &Config,
    which: Redeliver,
    output: Output,
) -> anyhow::Result<u8> {
    let store = store::open_with(&cfg.store.url, Access::Existing).await?;
    // A sink no longer configured still has its deliveries in the store (they wait until
    // it is back): those can be re-queued; a name the store knows nothing of is a typo.
    if let Redeliver::Dead { sink: Some(s) } | Redeliver::Pending { sink: Some(s) } = &which
        && cfg.sink(s).is_none()
    {
        if !store.backlog().await?.iter().any(|b| b.sink == *s) {
            anyhow::bail!(
                "--sink {s:?} is not a configured sink, and the store has no pending or dead delivery of it"
            );
        }
        eprintln!(
            "note: sink {s:?} is not in the config: its re-queued deliveries wait until it is back"
        );
    }
    let done = store.redeliver(&which, Utc::now()).await?;
    let n = done.count;
    let left = (!done.deployed.is_empty()).then(|| {
        let ids: Vec<String> = done.deployed.iter().map(i64::to_string).collect();
        format!(
            "already deployed, left alone: delivery {} (a deploy costs GPUs and is made once; `loopwatch deliveries redeliver --deploy-again ID...` deploys again)",
            ids.join(", ")
        )
    });
    match (output, &which) {
        (Output::Json, _) => {
            let mut v = json!({ "requeued": n });
            if !done.deployed.is_empty() {
                v["left_deployed"] = json!(done.deployed);
            }
            println!("{v:#}");
        }
        (Output::Table, Redeliver::Pending { .. }) => println!(
            "made {n} pending deliveries due now; a running daemon (or the next `loopwatch once`) sends them with their original webhook-id"
        ),
        (Output::Table, _) => println!(
            "re-queued {n} deliveries; a running daemon (or the next `loopwatch once`) sends them with their original webhook-id"
        ),
    }
    let named = matches!(which, Redeliver::Ids(_) | Redeliver::DeployAgain(_));
    match left {
        // Nothing else was asked for, or matched: the refusal is the error.
        Some(left) if n == 0 && named => anyhow::bail!(left),
        Some(left) => eprintln!("{left}"),
        None if n == 0 && named => anyhow::bail!(
            "no delivery matched the given ids, or each is being attempted right now (see `loopwatch deliveries list`; try again once its attempt ends)"
        ),
        None => {}
    }
    Ok(exit::OK)
}

/// `test-sink NAME`: one sample signed event, and the response.
/// With `-o json`, one object: `sink`, `event_id`, `type`, `ok`, `status` (the HTTP status,
/// or 0 for a command that exited 0), `elapsed_ms` and `error`.
/// A name no sink has is a usage error (exit 2), one line naming the configured sinks.
pub async fn test_sink(cfg: &Config, name: &str, output: Output) -> anyhow::Result<u8> {
    let Some(sink_cfg) = cfg.sink(name) else {
        let names: Vec<&str> = cfg.sinks.iter().map(|s| s.name.as_str()).collect();
        let configured = if names.is_empty() {
            format!("{} configures no sink", cfg.source)
        } else {
            format!("configured: {}", names.join(", "))
        };
        let line =
            format!("no sink named {name:?}; {configured}; see `loopwatch test-sink --help`");
        eprintln!("error: {}", text::escape(&line));
        return Ok(exit::USAGE);
    };
    if sink_cfg.deploy().is_some() {
        return test_deploy_sink(cfg, sink_cfg, output).await;
    }
    let sink = crate::delivery::Sink::new(sink_cfg.clone(), crate::delivery::webhook::client())?;
    let event = sample_event();
    if output == Output::Table {
        println!(
            "sending a sample {} ({}) to sink {name}",
            event.kind, event.id
        );
    }
    let start = std::time::Instant::now();
    let r = sink.send(&event).await;
    let ms = start.elapsed().as_millis();
    if output == Output::Json {
        let (ok, status, error) = match &r {
            Ok(code) => (true, Some(*code), None),
            Err(e) => (false, None, Some(e.to_string())),
        };
        let v = json!({
            "sink": name, "event_id": event.id, "type": event.kind, "ok": ok,
            "status": status, "elapsed_ms": ms, "error": error,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(if ok { exit::OK } else { exit::FAILURE });
    }
    match r {
        Ok(0) => println!("ok: the command exited 0 in {ms} ms"),
        Ok(code) => println!("ok: HTTP {code} in {ms} ms"),
        Err(e) => {
            println!("failed after {ms} ms: {e}");
            return Ok(exit::FAILURE);
        }
    }
    Ok(exit::OK)
}

/// `test-sink` on a `baseten_deploy` sink: `validate` (never `deploy`) for the newest
/// complete sampler checkpoint in the state among the sink's targets, and the answer.
async fn test_deploy_sink(
    cfg: &Config,
    sink_cfg: &crate::config::SinkConfig,
    output: Output,
) -> anyhow::Result<u8> {
    let name = sink_cfg.name.as_str();
    let dump = match read_only_store(cfg).await? {
        Some(store) => store.dump(None).await?,
        None => Vec::new(),
    };
    let newest = dump
        .iter()
        .filter(|t| {
            sink_cfg
                .targets
                .as_ref()
                .is_none_or(|s| s.contains(&t.name))
        })
        .flat_map(|t| t.checkpoints.iter())
        // Completed by its status or by the readiness probe; newest as `latest_only`
        // orders them (a `created_at` past the horizon counts as its first sight).
        .filter(|c| {
            !c.deleted && c.completed && c.target == crate::model::CheckpointTarget::Sampler
        })
        .max_by_key(|c| c.ordering_time());
    let Some(c) = newest else {
        anyhow::bail!(
            "sink {name}: no complete sampler checkpoint in the state to validate yet; run the daemon or `loopwatch once` first"
        );
    };
    let uri = c.uri().expect("a sampler checkpoint has a URI");
    let client = Arc::new(api::Client::new(&cfg.api)?);
    let deployer = crate::app::deployer(client, Arc::new(crate::metrics::Metrics::new()));
    if output == Output::Table {
        println!(
            "validating {uri} (checkpoint id {}) for sink {name}; nothing is deployed",
            c.id
        );
    }
    let start = std::time::Instant::now();
    let r = deployer.validate(&uri, None).await;
    let ms = start.elapsed().as_millis();
    if output == Output::Json {
        let v = json!({
            "sink": name, "checkpoint_path": uri, "checkpoint_id": c.id.as_str(), "ok": r.is_ok(),
            "status": r.as_ref().map_or_else(|e| e.status, |_| Some(200)), "elapsed_ms": ms,
            "error": r.as_ref().err().map(|e| e.message.clone()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(if r.is_ok() { exit::OK } else { exit::FAILURE });
    }
    match r {
        Ok(()) => println!("ok: validate accepted {uri} in {ms} ms; it can be deployed"),
        Err(e) => {
            let status = e.status.map(|s| format!("HTTP {s}: ")).unwrap_or_default();
            let what = if e.retryable {
                "a deploy would be retried"
            } else {
                "a deploy delivery would be dead"
            };
            println!("failed after {ms} ms: {status}{} ({what})", e.message);
            return Ok(exit::FAILURE);
        }
    }
    Ok(exit::OK)
}

fn sample_event() -> StoredEvent {
    let now = Utc::now();
    let id = format!("evt_test_{:x}", now.timestamp_millis());
    let checkpoint = json!({
        "id": "ckpt_test", "checkpoint_id": "step-0", "run_id": "loopwatch-test", "target": "sampler",
        "checkpoint_type": "lora", "base_model": null, "lora_adapter_config": null, "size_bytes": 0,
        "created_at": rfc3339(now), "sync_status": "COMPLETE"
    });
    let e = crate::model::Event {
        id,
        kind: crate::model::EventType::Completed,
        target: "loopwatch-test".into(),
        checkpoint_id: "ckpt_test".into(),
        checkpoint_name: "step-0".into(),
        run_id: "loopwatch-test".into(),
        checkpoint_target: crate::model::CheckpointTarget::Sampler,
        detected_at: now,
        previous_sync_status: Some("SYNCING".into()),
        sync_status: Some("COMPLETE".into()),
        first_seen_at: now,
        sync_seconds: Some(0.0),
        ready_by: Some(crate::model::ReadyBy::SyncStatus),
        checkpoint: checkpoint.to_string(),
    };
    StoredEvent::from_event(0, &e)
}

mod table;
use table::human_size;
pub use table::{format_table, print_table};

#[cfg(test)]
mod tests;

mod deploys;
pub use deploys::deploys;
