//! The command line as clap types: every command, flag and argument with its help text.
//! `main.rs` parses with these; `completions` and `man` render them; tests walk them (an
//! empty help line fails `tests/cli_help.rs`).

use std::ffi::OsStr;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::cli::Output;
use crate::config;

const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure (`once`: any target failed to poll), 2 usage error,
78 invalid config (every problem listed on stderr).

The config is found at -c FILE, else $LOOPWATCH_CONFIG, else ./loopwatch.toml,
./loopwatch.yaml, /etc/loopwatch/loopwatch.toml. Any scalar key can be overridden with
LOOPWATCH__SECTION__KEY (e.g. LOOPWATCH__POLL__INTERVAL=30s). RUST_LOG overrides the log
level; NO_COLOR turns colours off.";

#[derive(Parser)]
#[command(
    name = "loopwatch",
    version,
    about = "Watches Baseten Loops checkpoints and tells the world when one is ready",
    long_about = "Watches Baseten Loops checkpoints and tells the world when one is ready.\n\n\
        Polls the Loops API for every configured target (a run, a base model or a checkpoint \
        path), diffs each listing against the state it persisted, and delivers what changed \
        as signed webhooks or commands, at least once, with Prometheus metrics.\n\n\
        New here? `loopwatch demo` shows it all without an account; `loopwatch init` writes \
        a first config.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Config file, before the command (`loopwatch -c FILE state`); each command that
    /// reads a config takes -c too
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The config file named on the command line: the command's `-c`, else the one given
    /// before the command, else `$LOOPWATCH_CONFIG` (non-empty); `None` leaves it to
    /// [`config::locate`].
    pub fn config_path(&self, env_config: Option<std::ffi::OsString>) -> Option<PathBuf> {
        let own = self.config_arg().and_then(|c| c.config.clone());
        own.or_else(|| self.config.clone())
            .or_else(|| env_config.filter(|v| !v.is_empty()).map(PathBuf::from))
    }

    /// The command's `--store-url`, if it reads a config and was given one.
    pub fn store_url(&self) -> Option<&str> {
        self.config_arg()?.store_url.as_deref()
    }

    /// `-c` and `--store-url` of a command that reads a config.
    fn config_arg(&self) -> Option<&ConfigArg> {
        match &self.command {
            Command::Run { config }
            | Command::CheckConfig { config, .. }
            | Command::Once { config, .. }
            | Command::Checkpoints { config, .. }
            | Command::State { config, .. }
            | Command::Deploys { config, .. }
            | Command::TestSink { config, .. }
            | Command::Deliveries(DeliveriesCommand::List { config, .. })
            | Command::Deliveries(DeliveriesCommand::Redeliver { config, .. }) => Some(config),
            Command::Deliveries(DeliveriesCommand::Approve(a) | DeliveriesCommand::Reject(a)) => {
                Some(&a.config)
            }
            Command::Demo { .. }
            | Command::Completions { .. }
            | Command::Man
            | Command::Init { .. } => None,
        }
    }

    /// The name of a command that reads no config, when a `-c` was given before it
    /// (`loopwatch -c FILE man`): a usage error rather than a flag silently ignored.
    /// `demo` takes `-c` as every daemon command does (scripts that pass it to every
    /// command keep working) and says it ignores it.
    pub fn config_ignored_by(&self) -> Option<&'static str> {
        self.config.as_ref()?;
        match self.command {
            Command::Completions { .. } => Some("completions"),
            Command::Man => Some("man"),
            Command::Init { .. } => Some("init"),
            _ => None,
        }
    }
}

/// `-c/--config` of every command that reads a config.
#[derive(Args, Clone, Debug, Default)]
pub struct ConfigArg {
    /// Config file (TOML or YAML, by extension); default $LOOPWATCH_CONFIG, else
    /// ./loopwatch.toml, ./loopwatch.yaml, /etc/loopwatch/loopwatch.toml
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store, overriding store.url (as LOOPWATCH__STORE__URL does); the printed
    /// approve and replay lines carry it when store.url names a SQLite file relative to
    /// the daemon's directory
    #[arg(long, value_name = "URL")]
    pub store_url: Option<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the daemon: poll, persist, deliver, serve /metrics /healthz /readyz
    ///
    /// Runs until SIGTERM or SIGINT, then stops polling, lets in-flight deliveries finish
    /// within [delivery] shutdown_grace and exits 0. SIGHUP reloads the config: targets,
    /// sinks and [poll] change without a restart; an invalid config is refused and logged.
    Run {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Everything in one process: a simulated Loops API, a webhook receiver and the daemon
    ///
    /// Needs no account, no config and no network: the simulated run saves checkpoints,
    /// the daemon (on a throw-away SQLite file) detects them, and the receiver verifies and
    /// prints each webhook.
    Demo {
        /// Accepted and ignored: the demo writes its own config on a throw-away file
        #[command(flatten)]
        config: ConfigArg,
        /// Stop after this long (e.g. 30s) and print a summary
        #[arg(long, value_parser = duration, value_name = "DURATION")]
        duration: Option<Duration>,
        /// Address for /metrics /healthz /readyz (port 0: any free port)
        #[arg(long, default_value = "127.0.0.1:0", value_name = "ADDR")]
        listen: SocketAddr,
        /// How often the simulated run saves checkpoints
        #[arg(long, default_value = "4s", value_parser = duration, value_name = "DURATION")]
        every: Duration,
        /// How long each simulated checkpoint stays SYNCING
        #[arg(long, default_value = "3s", value_parser = duration, value_name = "DURATION")]
        sync_for: Duration,
        /// Show the daemon's own logs (info level)
        #[arg(short, long)]
        verbose: bool,
    },
    /// Write a first config: one run, one webhook sink and its fresh signing secret
    ///
    /// Creates DIR/loopwatch.toml (commented, minimal) and DIR/webhook-secret (a new
    /// whsec_ secret, mode 0600) and prints the next three commands. Refuses to overwrite
    /// either file.
    Init {
        /// Where to write loopwatch.toml and webhook-secret
        #[arg(long, default_value = ".", value_name = "DIR")]
        dir: PathBuf,
        /// The training run to watch (`loopwatch checkpoints --run-id ID` lists its
        /// checkpoints); left as a placeholder to edit when not given
        #[arg(long, value_name = "ID")]
        run_id: Option<String>,
    },
    /// Validate the config and print it with secrets redacted
    ///
    /// Every problem is listed at once (exit 78); nothing is opened or contacted. With
    /// --no-secrets no secret is read (a config meant for another machine, whose keys are
    /// in /run/credentials or a Kubernetes Secret): everything else is checked, and stderr
    /// lists the secrets it skipped.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Read no secret (no *_env variable, no *_file); list the ones skipped on stderr
        #[arg(long)]
        no_secrets: bool,
        /// Output format: `toml` (loads again as a config), `json` for scripts
        #[arg(short, long, value_enum, default_value = "toml")]
        output: ConfigFormat,
    },
    /// Poll every target once, deliver what is due, exit
    Once {
        #[command(flatten)]
        config: ConfigArg,
        /// Print each event as one JSON line and write nothing
        #[arg(long)]
        dry_run: bool,
        /// Output format: `table` for people (with --dry-run: one JSON line per event),
        /// `json` for scripts (one object: each target's outcome, the events, the deliveries)
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// List checkpoints live from the API (needs only [api]; works without a config file)
    Checkpoints {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Show what the daemon has persisted (read-only; safe while it runs; reads no secret)
    State {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this target (a `name` of [[targets]])
        #[arg(long, value_name = "NAME")]
        target: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Inspect and re-queue deliveries (reads no secret)
    #[command(subcommand)]
    Deliveries(DeliveriesCommand),
    /// Show each deploy pipeline: checkpoint, stage, model and deployment, approvals
    /// (read-only; safe while it runs; reads no secret)
    Deploys {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this sink's deploys (a `baseten_deploy` sink's `name`)
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Send a sample signed event to one sink and show the response
    TestSink {
        #[command(flatten)]
        config: ConfigArg,
        /// The sink's `name` in [[sinks]]
        name: String,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Print a shell completion script to stdout
    ///
    /// bash: `loopwatch completions bash > /etc/bash_completion.d/loopwatch`;
    /// zsh: `loopwatch completions zsh > "${fpath[1]}/_loopwatch"`;
    /// fish: `loopwatch completions fish > ~/.config/fish/completions/loopwatch.fish`.
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the man page (roff) to stdout
    ///
    /// `loopwatch man > /usr/local/share/man/man1/loopwatch.1`, then `man loopwatch`.
    Man,
}

/// `check-config -o`: the config as TOML (the default) or JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfigFormat {
    /// TOML that loads again as a config
    #[value(alias = "table")]
    Toml,
    /// `{"source": FILE, "config": {...}}`
    Json,
}

/// Exactly one filter, as the Loops API takes it.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct FilterArgs {
    /// Checkpoints of one training run
    #[arg(long, value_parser = not_empty)]
    pub run_id: Option<String>,
    /// Checkpoints of every run on one base model
    #[arg(long, value_parser = not_empty)]
    pub base_model: Option<String>,
    /// One checkpoint, by its bt://loops:<run_id>/(weights|sampler_weights)/<name> URI
    #[arg(long, value_parser = checkpoint_path)]
    pub checkpoint_path: Option<String>,
}

/// `-o/--output` of every command that prints data.
#[derive(Args)]
pub struct OutputArg {
    /// Output format: `table` for people, `json` for scripts
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// How many deliveries `deliveries list` shows unless `--limit` says otherwise.
pub const DELIVERIES_LIMIT: u32 = 10_000;

#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries (newest last; the newest --limit of them, stated on stderr when more match)
    List {
        /// Only deliveries in this state
        #[arg(long, value_parser = ["pending", "dead", "delivered", "superseded", "awaiting_approval", "rejected", "expired", "unknown"])]
        status: Option<String>,
        /// Only deliveries to this sink (also one no longer configured)
        #[arg(long, value_name = "NAME")]
        sink: Option<String>,
        /// Show at most this many, the newest; when more match, stderr says so
        #[arg(long, value_name = "N", default_value_t = DELIVERIES_LIMIT,
              value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-queue deliveries by id (or event id), or every dead one; or send every pending one now
    ///
    /// A running daemon (or the next `once`) sends them with their original webhook-id and
    /// the sink's whole retry_schedule again. With --pending, deliveries waiting for a
    /// later retry (after an outage, say) are due at once and keep their place in the
    /// schedule.
    #[command(group(clap::ArgGroup::new("bulk").args(["dead", "pending"])))]
    Redeliver {
        /// Delivery ids, or event ids (evt_...)
        #[arg(required_unless_present_any = ["dead", "pending"], conflicts_with_all = ["dead", "pending"])]
        ids: Vec<String>,
        /// Every dead delivery
        #[arg(long, conflicts_with = "pending")]
        dead: bool,
        /// Every pending delivery waiting for a later retry: due now, attempts kept
        #[arg(long)]
        pending: bool,
        /// With --dead or --pending: only this sink
        #[arg(long, requires = "bulk", value_name = "NAME")]
        sink: Option<String>,
        /// Also re-queue the named deploys that already deployed: each deploys again (a
        /// second deployment, paid for). Without it they are left alone and listed
        #[arg(long, requires = "ids", conflicts_with_all = ["dead", "pending"])]
        deploy_again: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Approve deploys waiting for approval: they deploy (or are promoted) now
    ///
    /// Each ID is a delivery id or a checkpoint id (`loopwatch deploys` lists them; a
    /// checkpoint.awaiting_approval event carries the exact command). All are approved, or,
    /// when any is not awaiting approval, none is: exit 1 naming its stage.
    Approve(DecideArgs),
    /// Reject deploys waiting for approval: they end `rejected`, nothing is deployed
    ///
    /// As approve; `deliveries redeliver` of a rejected deploy asks for approval again.
    Reject(DecideArgs),
}

/// The arguments of `deliveries approve` and `reject`.
#[derive(Args)]
pub struct DecideArgs {
    /// Delivery ids or checkpoint ids of deploys awaiting approval
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Who decides (kept, and shown by `deploys` and in data.deployment.approved_by)
    #[arg(long, value_name = "NAME")]
    pub by: String,
    /// Why (kept, and shown by `deploys -o json`)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    #[command(flatten)]
    pub output: OutputArg,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// The shells `completions` writes scripts for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// A filter value: an empty one would list nothing (or everything), never what was meant.
fn not_empty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("is empty; name a run id or a base model".into());
    }
    Ok(s.to_string())
}

/// A `--checkpoint-path` as a target's `checkpoint_path` must be (the API would answer
/// any other string with an empty listing).
fn checkpoint_path(s: &str) -> Result<String, String> {
    config::parse_checkpoint_path(s)
        .map(|_| s.to_string())
        .ok_or_else(|| {
            format!("{s:?} is not a checkpoint URI; write bt://loops:<run_id>/(weights|sampler_weights)/<name>")
        })
}

fn duration(s: &str) -> Result<Duration, String> {
    config::parse_duration(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 30s, 5m)"))
}

/// The whole command tree, for completions, the man page and tests.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Write the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command(), "loopwatch", out);
}

/// Write the man page: the top-level page with a section per subcommand (nested ones too).
pub fn man(out: &mut dyn Write) -> std::io::Result<()> {
    let cmd = command();
    let page = clap_mangen::Man::new(cmd.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_subcommand(out, &format!("loopwatch {}", sub.get_name()), sub)?;
    }
    out.write_all(MAN_EXIT_AND_ENVIRONMENT.as_bytes())?;
    page.render_version_section(out)
}

/// The man page's EXIT STATUS and ENVIRONMENT sections (man-pages(7) names them so; the
/// same facts as `--help`'s closing lines, which clap_mangen would put under EXTRA).
const MAN_EXIT_AND_ENVIRONMENT: &str = r#".SH "EXIT STATUS"
.TP
\fB0\fR
Success.
.TP
\fB1\fR
Failure (\fBonce\fR: any target failed to poll).
.TP
\fB2\fR
Usage error: an unknown command or flag, a missing or bad argument.
.TP
\fB78\fR
Invalid config (EX_CONFIG); every problem is listed on standard error.
.SH ENVIRONMENT
.TP
\fBLOOPWATCH_CONFIG\fR
The config file when \fB\-c\fR is not given; without either, the first of
\fI./loopwatch.toml\fR, \fI./loopwatch.yaml\fR, \fI/etc/loopwatch/loopwatch.toml\fR.
.TP
\fBLOOPWATCH__\fR\fISECTION\fR\fB__\fR\fIKEY\fR
Overrides one scalar key of the config, e.g. \fBLOOPWATCH__POLL__INTERVAL=30s\fR.
.TP
\fBBASETEN_API_KEY\fR
The Loops API key, unless \fBapi.api_key_env\fR or \fBapi.api_key_file\fR says otherwise.
.TP
\fBRUST_LOG\fR
Overrides \fBlog.level\fR (e.g. \fBloopwatch=debug,info\fR).
.TP
\fBNO_COLOR\fR
Set to anything but the empty string, turns colours off in the logs.
"#;

/// A `.SH` section for one subcommand: usage, description and options, then its own
/// subcommands.
fn man_subcommand(out: &mut dyn Write, path: &str, cmd: &clap::Command) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let sub = cmd.clone().bin_name(path.to_string());
    let page = clap_mangen::Man::new(sub);
    page.render_synopsis_section(&mut buf)?;
    page.render_description_section(&mut buf)?;
    page.render_options_section(&mut buf)?;
    let text = String::from_utf8_lossy(&buf)
        .replace(".SH SYNOPSIS", &format!(".SH \"{}\"", path.to_uppercase()))
        .replace(".SH DESCRIPTION", ".PP")
        .replace(".SH OPTIONS", ".SS Options");
    out.write_all(text.as_bytes())?;
    for nested in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_subcommand(out, &format!("{path} {}", nested.get_name()), nested)?;
    }
    Ok(())
}

/// ANSI colours in the logs: only on a terminal, and never when `NO_COLOR` is set to
/// anything but the empty string (https://no-color.org).
pub fn use_ansi(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_turns_ansi_off_even_on_a_terminal() {
        assert!(use_ansi(true, None));
        assert!(use_ansi(true, Some(OsStr::new(""))));
        assert!(!use_ansi(true, Some(OsStr::new("1"))));
        assert!(!use_ansi(false, None));
    }

    #[test]
    fn the_command_tree_is_consistent() {
        command().debug_assert();
    }
}
