//! The command line: `run`, `once`, `preview`, `login`, `check-config`, `status`, `queue`, `install`,
//! `uninstall`, `report`, `export`.
//!
//! Exit status: 0 success; 1 a runtime failure (cannot deliver, source unreadable, outbox
//! locked by another instance, storage error); 2 a usage error (clap); 78 (`EX_CONFIG`) a
//! configuration error — the systemd unit does not restart on it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{self, Overrides, ENV_CONFIG};
use crate::install::{self, Manager};
use crate::queue::QueueError;
use crate::{cmd, daemon};

/// Exit status for configuration errors (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;

/// Exports OpenCode sessions from its SQLite database into a local store (and Convex).
#[derive(Debug, Parser)]
#[command(name = "opencode-telemetry", version, about, long_about = None)]
pub struct Cli {
    /// Config file (TOML). Default: ~/.config/opencode-telemetry/config.toml on Linux.
    #[arg(long, global = true, env = ENV_CONFIG, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// OpenCode database to read; overrides `source.db_path`.
    #[arg(long, global = true, value_name = "PATH")]
    pub db: Option<PathBuf>,
    /// When to use colour in logs and tables: `auto` (on a terminal, unless NO_COLOR is set),
    /// `always` or `never`.
    #[arg(long, global = true, value_enum, default_value_t, value_name = "WHEN")]
    pub color: crate::color::ColorChoice,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll the database forever, export each session when it ends, deliver.
    Run(RunArgs),
    /// One pass: read every session, build its record, enqueue, deliver; exit 0 when the outbox
    /// is drained.
    Once(OnceArgs),
    /// Print the records `once` would send now (all ended sessions, or the ones named), one
    /// JSON object per line, after the privacy settings, redaction and the content rules; sends, queues
    /// and writes nothing.
    Preview(PreviewArgs),
    /// Store this machine's device token (asked for without echo, or read from stdin with
    /// --token-stdin) where the service reads it, after checking it against the deployment's
    /// GET /whoami; a rejected token is not stored.
    Login(LoginArgs),
    /// Validate the configuration, print the effective config (secrets redacted) and which
    /// device the deployment knows this machine as (one GET /whoami).
    CheckConfig(CheckConfigArgs),
    /// Show what the daemon is doing without stopping it: outbox depth, last delivery, last
    /// error, last export per trigger, the database in use.
    Status(StatusArgs),
    /// Inspect the outbox.
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Install the user service (systemd user unit on Linux, launchd agent on macOS) for this
    /// binary and the config file named with --config; enable it (systemd) and, with --start,
    /// start it now.
    Install(InstallArgs),
    /// Stop and remove the user service; the data dir and the config file stay.
    Uninstall(UninstallArgs),
    /// Tables of the local store: tokens, cost, sessions, errors, todos, code changes per
    /// day, week, month, session, project, model, agent, tool, skill or device.
    Report(ReportArgs),
    /// Write the local store's records (NDJSON, JSON) or per-session figures (CSV) to stdout.
    Export(ExportArgs),
    /// Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell), e.g.
    /// `opencode-telemetry completions bash > ~/.local/share/bash-completion/completions/opencode-telemetry`.
    Completions(CompletionsArgs),
    /// Print the man page (roff), e.g. `opencode-telemetry man > ~/.local/share/man/man1/opencode-telemetry.1`.
    Man,
}

/// `completions` arguments.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Which sessions a report or an export covers.
#[derive(Debug, clap::Args)]
pub struct ScopeArgs {
    /// First day, YYYY-MM-DD in --timezone (inclusive).
    #[arg(long, value_name = "DATE")]
    pub since: Option<String>,
    /// Last day, YYYY-MM-DD in --timezone (inclusive).
    #[arg(long, value_name = "DATE")]
    pub until: Option<String>,
    /// IANA time zone for days, weeks and months (e.g. Europe/Paris, UTC). Default: the
    /// system's.
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// Only sessions of this source (opencode).
    #[arg(long, value_name = "SOURCE")]
    pub source: Option<String>,
    /// Only this project: its directory, the directory's last component, or its project id.
    #[arg(long, value_name = "PROJECT")]
    pub project: Option<String>,
}

impl From<ScopeArgs> for cmd::report::Scope {
    fn from(a: ScopeArgs) -> Self {
        cmd::report::Scope {
            since: a.since,
            until: a.until,
            timezone: a.timezone,
            source: a.source,
            project: a.project,
        }
    }
}

/// Arguments of `report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// What one row is.
    #[arg(value_enum)]
    pub view: cmd::report::View,
    /// Which sessions.
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Split each row per model (daily, weekly, monthly, session, project, device).
    #[arg(long)]
    pub breakdown: bool,
    /// Print a JSON array (shapes in the README).
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// Print CSV with a header line.
    #[arg(long)]
    pub csv: bool,
}

/// Arguments of `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// ndjson or json: the stored records; csv: one line per session with its figures.
    #[arg(long, value_enum, default_value = "ndjson")]
    pub format: cmd::report::ExportFormat,
    /// Which sessions.
    #[command(flatten)]
    pub scope: ScopeArgs,
}

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Append every inferred transition (session.idle / session.error / session.deleted and
    /// the export it caused) as a JSON line to this file.
    #[arg(long, value_name = "FILE")]
    pub transitions_log: Option<PathBuf>,
}

/// Arguments of `login`.
#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    /// Read the token from the first line of standard input instead of asking on the terminal
    /// (e.g. `pbpaste | opencode-telemetry login --token-stdin`). The token is never taken as
    /// an argument: it would land in the shell's history.
    #[arg(long)]
    pub token_stdin: bool,
}

/// Arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub struct CheckConfigArgs {
    /// Do not ask the deployment which device this machine is (no network; what the service's
    /// ExecStartPre uses).
    #[arg(long, conflicts_with = "probe")]
    pub offline: bool,
    /// Exit 1 unless the deployment answers the one request as expected (this machine's device
    /// token, or the legacy token it accepts): for scripts and for checking a new set-up.
    #[arg(long)]
    pub probe: bool,
}

/// Arguments of `status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// For scripts and monitoring: print `ok`, or `unhealthy: <reasons>` and exit 1 (see the
    /// README for the reasons).
    #[arg(long, conflicts_with = "json")]
    pub check: bool,
}

/// Arguments of `once`.
#[derive(Debug, clap::Args)]
pub struct OnceArgs {
    /// Give up delivering after this many seconds of retrying (records stay queued).
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub timeout_secs: u64,
}

/// Arguments of `preview`.
#[derive(Debug, clap::Args)]
pub struct PreviewArgs {
    /// Session ids (`ses_…`) to show; none: every session whose turn has ended.
    #[arg(value_name = "SESSION")]
    pub sessions: Vec<String>,
}

/// `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List pending (per sink) and dead-lettered records.
    List {
        /// Print one JSON object instead of text (shape: README "Commands").
        #[arg(long)]
        json: bool,
    },
    /// Move every dead-lettered record back to pending.
    RetryDead,
    /// Export the deletions held because many sessions vanished at once (you deleted them).
    ConfirmDeletions,
}

/// Arguments of `install`.
#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    /// Also start the service now (systemd: `enable --now`, or `restart` when the unit changed;
    /// launchd: `launchctl bootstrap`, after a `bootout` when it is loaded).
    #[arg(long)]
    pub start: bool,
    /// Print the unit / plist on stdout and what would be done on stderr; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Service manager to write for. Default: launchd on macOS, systemd elsewhere.
    #[arg(long, value_enum, value_name = "MANAGER")]
    pub manager: Option<Manager>,
}

/// Arguments of `uninstall`.
#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Service manager to remove from. Default: launchd on macOS, systemd elsewhere.
    #[arg(long, value_enum, value_name = "MANAGER")]
    pub manager: Option<Manager>,
}

/// Parses the command line and runs it; returns the process exit status.
pub fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    crate::color::set(cli.color);
    // Generated from the command definition alone: no config is read.
    match &cli.command {
        Command::Completions(args) => return print_completions(args.shell),
        Command::Man => return print_man(),
        _ => {}
    }
    let overrides = Overrides {
        config_path: cli.config.clone(),
        db_path: cli.db.clone(),
    };
    let loaded = match config::load(&overrides) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("opencode-telemetry: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if matches!(
        cli.command,
        Command::Run(_) | Command::Once(_) | Command::CheckConfig(_)
    ) {
        if let Err(e) = loaded.check_delivery() {
            eprintln!("opencode-telemetry: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    daemon::init_tracing(&loaded.config.service);
    if matches!(cli.command, Command::Once(_)) {
        for warning in loaded.warnings() {
            tracing::warn!("{warning}");
        }
    }
    let is_run = matches!(cli.command, Command::Run(_));
    let config_file = loaded.path.clone();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("opencode-telemetry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => daemon::run_daemon(loaded, overrides, args.transitions_log).await,
            Command::Once(args) => cmd::once(&loaded.config, args.timeout_secs).await,
            Command::Preview(args) => cmd::preview(&loaded.config, &args.sessions).await,
            Command::Login(args) => cmd::login(&loaded, args.token_stdin).await,
            Command::CheckConfig(args) => {
                cmd::check_config(&loaded, args.offline, args.probe).await
            }
            Command::Status(args) => cmd::status(&loaded.config, args.json, args.check),
            Command::Queue(QueueCommand::List { json }) => {
                cmd::queue_list(&loaded.config, json).await
            }
            Command::Queue(QueueCommand::RetryDead) => cmd::queue_retry_dead(&loaded.config).await,
            Command::Queue(QueueCommand::ConfirmDeletions) => {
                cmd::queue_confirm_deletions(&loaded.config).await
            }
            Command::Install(args) => install::install(
                &loaded,
                &install::Options {
                    start: args.start,
                    dry_run: args.dry_run,
                    manager: args.manager,
                    config: cli.config,
                    db: cli.db,
                },
            ),
            Command::Report(args) => cmd::report::report(
                &loaded.config,
                args.view,
                &args.scope.into(),
                args.breakdown,
                if args.json {
                    cmd::report::Format::Json
                } else if args.csv {
                    cmd::report::Format::Csv
                } else {
                    cmd::report::Format::Table
                },
            ),
            Command::Export(args) => {
                cmd::report::export(&loaded.config, args.format, &args.scope.into())
            }
            // Answered before the config is read.
            Command::Completions(_) | Command::Man => Ok(ExitCode::SUCCESS),
            Command::Uninstall(args) => install::uninstall(
                &loaded,
                &install::Options {
                    dry_run: args.dry_run,
                    manager: args.manager,
                    config: cli.config,
                    db: cli.db,
                    ..Default::default()
                },
            ),
        }
    });
    // A database read still running on the blocking pool (a shutdown during a tick) must not
    // hold the process past its grace period: it only reads, so abandoning it is safe.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(q) = e.chain().find_map(|c| c.downcast_ref::<QueueError>()) {
                if q.is_unusable_location() {
                    let file = config_file
                        .as_deref()
                        .map_or_else(|| "<defaults>".to_string(), |p| p.display().to_string());
                    let message = format!(
                        "key `data_dir` (config {file}): {q}; point `data_dir` at a directory this user can write, or fix its permissions"
                    );
                    if is_run {
                        tracing::error!(error = %message, "the daemon cannot start");
                    }
                    eprintln!("opencode-telemetry: {message}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            }
            if is_run {
                // The daemon's logs may be JSON for a collector: say it there too.
                tracing::error!(error = %format!("{e:#}"), "the daemon stopped on a fatal error");
            }
            eprintln!("opencode-telemetry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Caps glibc's malloc at 2 arenas. By default glibc gives each thread that allocates its own
/// arena (up to 8 per core); the daemon's threads (tokio's workers, the blocking pool that
/// reads the source, sled's flusher) each kept a partly used arena, which cost 23 MiB of the
/// peak RSS of `run`'s first pass on 10,000 sessions (89 MiB → 56 MiB with this and the 8 MiB
/// sled cache, README "Speed"). The same as `MALLOC_ARENA_MAX=2`, which still overrides it.
/// Nothing to do on other C libraries (musl, macOS).
#[allow(unsafe_code)]
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc tunable; called first thing in main, before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// Gives the heap memory malloc keeps free back to the system (glibc's `malloc_trim`): called
/// once the first pass is done, whose chunks leave freed pages that glibc would otherwise keep
/// resident for the rest of the daemon's life. Nothing to do on other C libraries.
#[allow(unsafe_code)]
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of malloc's own heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `completions SHELL`: the script on stdout.
fn print_completions(shell: clap_complete::Shell) -> ExitCode {
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "opencode-telemetry", &mut script);
    write_stdout(&script, "the completion script")
}

/// `man`: the man page (roff) on stdout.
fn print_man() -> ExitCode {
    let command = <Cli as clap::CommandFactory>::command();
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(command).render(&mut page) {
        eprintln!("opencode-telemetry: rendering the man page: {e}");
        return ExitCode::FAILURE;
    }
    write_stdout(&page, "the man page")
}

/// Writes generated text to stdout; a reader that stopped early (`| head`) is not an error.
fn write_stdout(bytes: &[u8], what: &str) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opencode-telemetry: writing {what}: {e}");
            ExitCode::FAILURE
        }
    }
}
