//! The binary: parse arguments, load the config (no sockets yet), start tracing, call
//! into the library, map the result to an exit code (`cli::exit`). The arguments
//! themselves are `args.rs`, so tests and the man page see the same tree.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use loopwatch::args::{Cli, Command, ConfigFormat, DeliveriesCommand};
use loopwatch::cli::{self, exit};
use loopwatch::config::{self, Config, Environment, Filter, LogFormat, ReadSecrets};
use loopwatch::store::{DeliveryStatus, Redeliver, Verdict};

/// clap's usage error (message, tips, usage, a pointer to --help on several lines) as
/// the one line every loopwatch error is.
fn usage_error_line(rendered: &str) -> String {
    let mut parts = Vec::new();
    let mut command = vec!["loopwatch"];
    for line in rendered.lines().map(str::trim) {
        if line.is_empty() || line.starts_with("For more information") {
            continue;
        }
        if let Some(usage) = line.strip_prefix("Usage: ") {
            command = usage
                .split_whitespace()
                .take_while(|w| !w.starts_with(['<', '[', '-']))
                .collect();
            continue;
        }
        if line.starts_with("tip:") {
            parts.push(";");
        }
        parts.push(line);
    }
    let message = parts.join(" ").replace(" ;", ";");
    format!("{message}; see `{} --help`", command.join(" "))
}

/// `loopwatch state | head`: once the reader is gone, printing fails with a broken pipe,
/// and `println!` panics on it. Stopping to read is the reader's choice, not an error: the
/// process exits 0 quietly instead of a panic and a backtrace (as ripgrep does). Any
/// other panic goes on to the hook installed before (the daemon's logs it).
fn exit_quietly_on_a_closed_stdout() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        previous(info);
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_a_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind::{
                DisplayHelp, DisplayHelpOnMissingArgumentOrSubcommand, DisplayVersion,
            };
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            eprintln!("{}", usage_error_line(&e.render().to_string()));
            return ExitCode::from(exit::USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let code = runtime.block_on(dispatch(cli));
    // Do not wait for stray blocking tasks (e.g. a hung exec sink) on the way out.
    runtime.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code)
}

/// Write `text` to stdout whole; a reader that went away (`| head`) is not an error.
fn print_all(text: &[u8]) -> u8 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => exit::OK,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => exit::OK,
        Err(e) => report(Err(e.into())),
    }
}

async fn dispatch(cli: Cli) -> u8 {
    // For `run`, SIGHUP is a reload, never the default "terminate", from the first instant:
    // a handler installed now stays for the life of the process (a SIGHUP that comes before
    // the daemon listens for reloads is let go: the config is being read anyway).
    #[cfg(unix)]
    let _hangup = matches!(cli.command, Command::Run { .. })
        .then(|| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()));
    if let Some(name) = cli.config_ignored_by() {
        eprintln!(
            "error: `loopwatch {name}` reads no config; drop -c; see `loopwatch {name} --help`"
        );
        return exit::USAGE;
    }
    let config_path = cli.config_path(std::env::var_os("LOOPWATCH_CONFIG"));
    if let Some(url) = cli.store_url() {
        config::set_store_url(url.to_string());
    }
    // Documentation of the CLI itself: no config, no logs.
    match cli.command {
        Command::Completions { shell } => {
            let mut text = Vec::new();
            loopwatch::args::completions(shell, &mut text);
            return print_all(&text);
        }
        Command::Man => {
            let mut text = Vec::new();
            if let Err(e) = loopwatch::args::man(&mut text) {
                return report(Err(e.into()));
            }
            return print_all(&text);
        }
        Command::Init { dir, run_id } => {
            return report(loopwatch::init::init(&dir, run_id.as_deref()).map(|done| {
                print!("{done}");
                exit::OK
            }));
        }
        _ => {}
    }
    if let Command::Demo {
        config,
        duration,
        listen,
        every,
        sync_for,
        verbose,
    } = cli.command
    {
        if config.config.is_some() || cli.config.is_some() {
            eprintln!("note: `loopwatch demo` reads no config; -c is ignored");
        }
        init_tracing(if verbose { "info" } else { "warn" }, LogFormat::Text);
        let opts = loopwatch::demo::DemoOptions {
            duration,
            listen,
            every,
            sync_for,
        };
        // The demo has no config to reload: a SIGHUP (its terminal closed) ends it like
        // Ctrl-C, so it cleans up its throw-away state.
        let stop = loopwatch::app::shutdown_signal();
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let stop = async move {
            match hup {
                Ok(mut hup) => tokio::select! { () = stop => {}, _ = hup.recv() => {} },
                Err(_) => stop.await,
            }
        };
        return report(loopwatch::demo::run(opts, stop).await);
    }
    if let Command::Checkpoints { filter, output, .. } = cli.command {
        let output = output.output;
        // Needs only [api]: works without a config file, from defaults and LOOPWATCH__API__*.
        let path = config_path.or_else(|| config::locate(None).ok());
        let cfg = match config::load_for_api(path.as_deref(), &Environment::from_process()) {
            Ok(c) => c,
            Err(e) => {
                for p in e.problems {
                    eprintln!("error: {p}");
                }
                return exit::CONFIG;
            }
        };
        init_tracing("warn", cfg.log.format);
        warn_unsafe(&cfg);
        let f = match (filter.run_id, filter.base_model, filter.checkpoint_path) {
            (Some(r), _, _) => Filter::RunId(r),
            (_, Some(b), _) => Filter::BaseModel(b),
            (_, _, Some(p)) => Filter::CheckpointPath(p),
            _ => unreachable!("clap requires one"),
        };
        return report(cli::checkpoints(&cfg, f, output).await);
    }
    // Each command reads only the secrets it uses: the store's readers none at all, so
    // that an operator can look at a daemon's outbox without its keys.
    let secrets = match &cli.command {
        Command::State { .. } | Command::Deploys { .. } | Command::Deliveries(_) => {
            ReadSecrets::None
        }
        Command::CheckConfig {
            no_secrets: true, ..
        } => ReadSecrets::None,
        _ => ReadSecrets::All,
    };
    let cfg = match load(config_path.clone(), secrets) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return exit::CONFIG;
        }
    };
    match cli.command {
        Command::Demo { .. } | Command::Checkpoints { .. } => unreachable!("handled above"),
        Command::Completions { .. } | Command::Man | Command::Init { .. } => {
            unreachable!("handled above")
        }
        Command::CheckConfig { output, .. } => match output {
            ConfigFormat::Toml => cli::check_config(&cfg),
            ConfigFormat::Json => report(cli::check_config_json(&cfg)),
        },
        Command::Run { .. } => {
            init_tracing(&cfg.log.level, cfg.log.format);
            warn_unsafe(&cfg);
            let r = async {
                // SIGHUP reads the same file again (located as at start).
                let path = config::locate(config_path).map_err(|e| anyhow::anyhow!(e))?;
                // A signal while the store is still out of reach stops the wait.
                let mut shutdown = std::pin::pin!(loopwatch::app::shutdown_signal());
                let app = tokio::select! {
                    app = loopwatch::app::App::build(cfg, true) => app?,
                    _ = &mut shutdown => return anyhow::Ok(exit::OK),
                };
                app.reload_on_sighup(path).run(shutdown).await?;
                anyhow::Ok(exit::OK)
            };
            report(r.await)
        }
        Command::Once {
            dry_run, output, ..
        } => {
            init_tracing(&cfg.log.level, cfg.log.format);
            warn_unsafe(&cfg);
            report(cli::once(cfg, dry_run, output).await)
        }
        Command::State { target, output, .. } => {
            init_tracing("warn", cfg.log.format);
            report(cli::state(&cfg, target.as_deref(), output.output).await)
        }
        Command::Deploys { sink, output, .. } => {
            init_tracing("warn", cfg.log.format);
            report(cli::deploys(&cfg, sink.as_deref(), output.output).await)
        }
        Command::Deliveries(DeliveriesCommand::List {
            status,
            sink,
            limit,
            output,
            ..
        }) => {
            init_tracing("warn", cfg.log.format);
            let status = status.as_deref().and_then(DeliveryStatus::parse);
            let sink = sink.as_deref();
            report(cli::deliveries_list(&cfg, status, sink, limit, output.output).await)
        }
        Command::Deliveries(DeliveriesCommand::Redeliver {
            ids,
            dead,
            pending,
            sink,
            deploy_again,
            output,
            ..
        }) => {
            init_tracing("warn", cfg.log.format);
            let which = if dead {
                Redeliver::Dead { sink }
            } else if pending {
                Redeliver::Pending { sink }
            } else if deploy_again {
                Redeliver::DeployAgain(ids)
            } else {
                Redeliver::Ids(ids)
            };
            report(cli::deliveries_redeliver(&cfg, which, output.output).await)
        }
        Command::Deliveries(DeliveriesCommand::Approve(a)) => {
            init_tracing("warn", cfg.log.format);
            let v = Verdict::Approved;
            report(
                loopwatch::approvals::decide(&cfg, v, a.ids, a.by, a.reason, a.output.output).await,
            )
        }
        Command::Deliveries(DeliveriesCommand::Reject(a)) => {
            init_tracing("warn", cfg.log.format);
            let v = Verdict::Rejected;
            report(
                loopwatch::approvals::decide(&cfg, v, a.ids, a.by, a.reason, a.output.output).await,
            )
        }
        Command::TestSink { name, output, .. } => {
            init_tracing("warn", cfg.log.format);
            report(cli::test_sink(&cfg, &name, output.output).await)
        }
    }
}

/// One WARN line per unsafe setting the config was accepted with.
fn warn_unsafe(cfg: &Config) {
    for w in &cfg.warnings {
        tracing::warn!("unsafe setting: {w}");
    }
}

fn load(explicit: Option<PathBuf>, secrets: ReadSecrets) -> Result<Config, Vec<String>> {
    let path = config::locate(explicit).map_err(|e| e.problems)?;
    config::load_reading(&path, &Environment::from_process(), secrets).map_err(|e| e.problems)
}

fn report(r: anyhow::Result<u8>) -> u8 {
    match r {
        Ok(code) => code,
        Err(e) => {
            // One line: the chain of causes joined, never a backtrace.
            // Causes may quote upstream text (an error body): no control characters.
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {}", loopwatch::text::escape(&line));
            exit::FAILURE
        }
    }
}

/// `RUST_LOG` wins over the configured level when set; colours only on a terminal and
/// without `NO_COLOR`.
fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // PostgreSQL's notices ("relation _sqlx_migrations already exists, skipping" at every
    // start) are noise at INFO; asked for by name (`sqlx=debug`), they show.
    let spec = if level.contains("sqlx") {
        level.to_string()
    } else {
        format!("{level},sqlx::postgres::notice=warn")
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(spec));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(loopwatch::args::use_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(std::io::stderr);
    match format {
        // One flat object per line; the event's own fields never collide with the
        // metadata (`module`, not tracing's `target`, which a field of ours is named).
        LogFormat::Json => builder.event_format(loopwatch::jsonlog::JsonLines).init(),
        // Checkpoint names and ids come from the API: every field escaped, so that a
        // newline cannot forge a line nor an escape sequence reach the terminal.
        LogFormat::Text => builder.fmt_fields(loopwatch::text::TextFields).init(),
    }
}
