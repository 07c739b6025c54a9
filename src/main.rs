//! The binary: parse arguments, load the config (no sockets yet), start tracing, call
//! into the library, map the result to an exit code (interface.md §2).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use loopwatch::cli::{self, Output, exit};
use loopwatch::config::{self, Config, Environment, Filter, LogFormat};
use loopwatch::store::{DeliveryStatus, Redeliver};

#[derive(Parser)]
#[command(
    name = "loopwatch",
    version,
    about = "Watches Baseten Loops checkpoints and tells the world when one is ready"
)]
struct Cli {
    /// Config file (TOML or YAML)
    #[arg(short, long, global = true, env = "LOOPWATCH_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: poll, persist, deliver, serve /metrics /healthz /readyz
    Run,
    /// Everything in one process: a simulated Loops API, a webhook receiver and the daemon
    Demo {
        /// Stop after this long (e.g. 30s)
        #[arg(long, value_parser = duration)]
        duration: Option<Duration>,
        /// Address for /metrics /healthz /readyz
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// How often the simulated run saves checkpoints
        #[arg(long, default_value = "4s", value_parser = duration)]
        every: Duration,
        /// How long each simulated checkpoint stays SYNCING
        #[arg(long, default_value = "3s", value_parser = duration)]
        sync_for: Duration,
        /// Show the daemon's own logs (info level)
        #[arg(short, long)]
        verbose: bool,
    },
    /// Validate the config and print it with secrets redacted
    CheckConfig,
    /// Poll every target once, deliver what is due, exit
    Once {
        /// Print each event as one JSON line and write nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// List checkpoints live from the API
    Checkpoints {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Show what the daemon has persisted
    State {
        #[arg(long)]
        target: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Inspect and re-queue deliveries
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Send a sample signed event to one sink and show the response
    TestSink { name: String },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct FilterArgs {
    #[arg(long)]
    run_id: Option<String>,
    #[arg(long)]
    base_model: Option<String>,
    #[arg(long)]
    checkpoint_path: Option<String>,
}

#[derive(Subcommand)]
enum DeliveriesCommand {
    /// List deliveries (newest last)
    List {
        #[arg(long, value_parser = ["pending", "dead", "delivered"])]
        status: Option<String>,
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Re-queue deliveries by id (or event id), or every dead one
    Redeliver {
        /// Delivery ids, or event ids (evt_...)
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        ids: Vec<String>,
        /// Every dead delivery
        #[arg(long)]
        dead: bool,
        /// With --dead: only this sink
        #[arg(long, requires = "dead")]
        sink: Option<String>,
    },
}

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

fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 5m)"))
}

fn main() -> ExitCode {
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

async fn dispatch(cli: Cli) -> u8 {
    if let Command::Demo {
        duration,
        listen,
        every,
        sync_for,
        verbose,
    } = cli.command
    {
        init_tracing(if verbose { "info" } else { "warn" }, LogFormat::Text);
        let opts = loopwatch::demo::DemoOptions {
            duration,
            listen,
            every,
            sync_for,
        };
        return report(loopwatch::demo::run(opts, loopwatch::app::shutdown_signal()).await);
    }
    if let Command::Checkpoints { filter, output } = cli.command {
        // Needs only [api]: works without a config file, from defaults and LOOPWATCH__API__*.
        let path = cli.config.or_else(|| config::locate(None).ok());
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
        let f = match (filter.run_id, filter.base_model, filter.checkpoint_path) {
            (Some(r), _, _) => Filter::RunId(r),
            (_, Some(b), _) => Filter::BaseModel(b),
            (_, _, Some(p)) => Filter::CheckpointPath(p),
            _ => unreachable!("clap requires one"),
        };
        return report(cli::checkpoints(&cfg, f, output).await);
    }
    let cfg = match load(cli.config) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                eprintln!("error: {p}");
            }
            return exit::CONFIG;
        }
    };
    match cli.command {
        Command::Demo { .. } => unreachable!("handled above"),
        Command::CheckConfig => cli::check_config(&cfg),
        Command::Run => {
            init_tracing(&cfg.log.level, cfg.log.format);
            warn_unsafe(&cfg);
            let r = async {
                let app = loopwatch::app::App::build(cfg, true).await?;
                app.run(loopwatch::app::shutdown_signal()).await?;
                anyhow::Ok(exit::OK)
            };
            report(r.await)
        }
        Command::Once { dry_run } => {
            init_tracing(&cfg.log.level, cfg.log.format);
            warn_unsafe(&cfg);
            report(cli::once(cfg, dry_run).await)
        }
        Command::Checkpoints { .. } => unreachable!("handled above"),
        Command::State { target, output } => {
            init_tracing("warn", cfg.log.format);
            report(cli::state(&cfg, target.as_deref(), output).await)
        }
        Command::Deliveries(DeliveriesCommand::List { status, output }) => {
            init_tracing("warn", cfg.log.format);
            let status = status.as_deref().and_then(DeliveryStatus::parse);
            report(cli::deliveries_list(&cfg, status, output).await)
        }
        Command::Deliveries(DeliveriesCommand::Redeliver { ids, dead, sink }) => {
            init_tracing("warn", cfg.log.format);
            let which = if dead {
                Redeliver::Dead { sink }
            } else {
                Redeliver::Ids(ids)
            };
            report(cli::deliveries_redeliver(&cfg, which).await)
        }
        Command::TestSink { name } => {
            init_tracing("warn", cfg.log.format);
            report(cli::test_sink(&cfg, &name).await)
        }
    }
}

/// One WARN line per unsafe setting the config was accepted with.
fn warn_unsafe(cfg: &Config) {
    for w in &cfg.warnings {
        tracing::warn!("unsafe setting: {w}");
    }
}

fn load(explicit: Option<PathBuf>) -> Result<Config, Vec<String>> {
    let path = config::locate(explicit).map_err(|e| e.problems)?;
    config::load(&path, &Environment::from_process()).map_err(|e| e.problems)
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

/// `RUST_LOG` wins over the configured level when set.
fn init_tracing(level: &str, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Checkpoint names and ids come from the API: every field escaped, so that a
        // newline cannot forge a line nor an escape sequence reach the terminal.
        LogFormat::Text => builder.fmt_fields(loopwatch::text::TextFields).init(),
    }
}
