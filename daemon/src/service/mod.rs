//! The service: the daemon loop (`run`), the one-pass job (`once`), and the small commands
//! (`check-config`, `status`, `queue`, `install`).
//!
//! # The daemon (`run`)
//! Two tasks share the outbox:
//! - the **poller** ticks every `source.poll_interval_ms`: an O(1) `PRAGMA data_version` says
//!   whether OpenCode committed anything; if so (or if a debounce/final/stale timer is pending)
//!   the [`tracker::Tracker`] reads what changed, decides exports, and the records plus the
//!   tracker's new state are committed to the outbox in **one** sled transaction and flushed
//!   before the tick counts as done. While the outbox is full (`queue.max_bytes`) the poller
//!   does not read the source at all (it can be re-read later), so nothing is ever dropped;
//! - the **sender** ([`sender::Sender`]) drains the outbox to the sink.
//!
//! Blocking SQLite work runs on tokio's blocking pool, never on the async workers.
//!
//! # Signals (handled in [`run_daemon`] only; [`run`] takes any shutdown future and reload
//! channel)
//! - SIGTERM or SIGINT: the poller stops at once (a tick in progress is dropped: its commit
//!   either applied or did not, and the source is re-read after the restart), the sender lets
//!   the request in flight finish for at most `service.shutdown_grace_secs` minus 500 ms (an
//!   unanswered request is abandoned; its records stay pending), the outbox is flushed, and the
//!   process exits 0 within the grace period.
//! - SIGHUP: the configuration is loaded again; see [`reload`] for what applies live, what
//!   needs a restart, and what happens to an invalid file.
//!
//! When the database does not exist yet the daemon logs it once and keeps waiting for it; when
//! the file is replaced (new inode) or deleted it reopens it.
//!
//! # Progress
//! The first pass over existing sessions shows a progress bar on stderr in `once`, and in `run`
//! when stderr is a terminal; it is never drawn (no escape codes) when stderr is not a terminal
//! (see [`logging::ProgressGuard`]).

pub mod install;
pub mod logging;
pub mod notify;
pub mod reload;
pub mod sender;
pub mod status;
pub mod tracker;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, Loaded};
use crate::export::{self, EndReason, ExportContext, Outcome, SessionExport};
use crate::identity;
use crate::queue::{Commit, DaemonInfo, LastExport, NewRecord, Outbox, QueueError, ReloadOutcome};
use crate::sink::{self, AnySink};
use crate::source::activity::Activity;
use crate::source::opencode::{OpenCodeDb, SourceError};
use logging::ProgressGuard;
use sender::{Reconfigure, Sender, Step};
use tracker::{Emitted, Rules, Tracker};

/// Key prefix, in the outbox's `state` tree, of the last export per trigger
/// (`last-export/session.idle` → `{"sessionId":…,"at":<ms>}`), written in the same commit as
/// the records; `status` reads it when no daemon runs.
pub const LAST_EXPORT_PREFIX: &[u8] = b"last-export/";

/// Sets up `tracing` on stderr from `[service]`; see [`logging`].
pub fn init_tracing(service: &crate::config::ServiceConfig) {
    logging::init(service);
}

/// `convex <url>` or `local file <path>`: where records go (no secret).
pub(crate) fn sink_description(config: &Config) -> String {
    if config.uses_convex() {
        format!("convex {}", config.convex.url)
    } else {
        format!("local file {}", config.local.path.display())
    }
}

/// The `state` puts recording the last export per trigger, for `(trigger, session id)` pairs in
/// commit order (the last one of each trigger wins).
fn last_export_puts<'a>(
    exports: impl IntoIterator<Item = (&'a str, &'a str)>,
    at_ms: i64,
) -> BTreeMap<String, LastExport> {
    exports
        .into_iter()
        .map(|(trigger, session_id)| {
            (
                trigger.to_string(),
                LastExport {
                    session_id: session_id.to_string(),
                    at_ms,
                },
            )
        })
        .collect()
}

fn state_puts_of(last: &BTreeMap<String, LastExport>) -> Vec<(Vec<u8>, Vec<u8>)> {
    last.iter()
        .map(|(trigger, e)| {
            let mut key = LAST_EXPORT_PREFIX.to_vec();
            key.extend_from_slice(trigger.as_bytes());
            (
                key,
                serde_json::to_vec(e).expect("a last export serializes"),
            )
        })
        .collect()
}

/// The trigger name of an event (`session.idle`, …, `stale`).
fn trigger_name(event: tracker::Event) -> &'static str {
    match event {
        tracker::Event::Idle => "session.idle",
        tracker::Event::Error => "session.error",
        tracker::Event::Deleted => "session.deleted",
        tracker::Event::Stale => "stale",
    }
}

/// The device id: machine-uid hashed (see [`identity`]); when the OS has no machine id, a
/// random id created once and kept in `<data_dir>/device-id`.
///
/// # Errors
/// IO errors creating the fallback file.
pub fn device_id(config: &Config) -> anyhow::Result<String> {
    match identity::device_id() {
        Ok(id) => Ok(id),
        Err(e) => {
            let path = config.data_dir.join("device-id");
            if let Ok(id) = std::fs::read_to_string(&path) {
                let id = id.trim().to_string();
                if id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Ok(id);
                }
            }
            tracing::warn!(error = %e, path = %path.display(), "no machine id; using a random device id kept in the data dir");
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let id = hex::encode(rand::random::<[u8; 16]>());
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

fn export_context(config: &Config, device_id: &str) -> ExportContext {
    ExportContext {
        device_id: device_id.to_string(),
        hostname: identity::hostname(),
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        exported_at: 0,
        include_todos: config.export.include_todos,
        include_messages: config.export.include_messages,
        max_message_chars: config.export.max_message_chars,
    }
}

fn rules(config: &Config) -> Rules {
    Rules {
        debounce_ms: config.export.debounce_ms as i64,
        final_after_ms: (config.export.final_after_secs as i64).saturating_mul(1000),
        stale_after_ms: (config.export.stale_after_secs as i64).saturating_mul(1000),
        skip_subagent_sessions: config.export.skip_subagent_sessions,
    }
}

fn open_outbox(config: &Config) -> anyhow::Result<Outbox> {
    let outbox = Outbox::open(&config.data_dir, &config.queue).map_err(|e| match e {
        QueueError::Locked { .. } => anyhow::anyhow!(
            "{e} (another opencode-telemetry is running with data_dir {}; stop it, or point this one at another data_dir)",
            config.data_dir.display()
        ),
        other => anyhow::Error::new(other).context("opening the outbox"),
    })?;
    if let Some(r) = outbox.rebuild() {
        tracing::error!(moved_to = %r.moved_to.display(), cause = %r.cause,
            "the outbox was corrupt; moved it aside and started a fresh one (sessions are re-read from the source)");
    }
    Ok(outbox)
}

/// The outbox entry for `record`, whose JSON is `json`.
fn new_record(record: &SessionExport, json: Vec<u8>) -> NewRecord {
    NewRecord {
        session_id: record.session_id.clone(),
        updated_at: record.updated_at,
        exported_at: record.exported_at,
        json,
    }
}

fn sender_for(config: &Config, outbox: Arc<Outbox>) -> anyhow::Result<Sender> {
    let sink = AnySink::from_config(config).context("setting up the sink")?;
    let pacer = sink::Pacer::new(sink::RetryPolicy::from_config(&config.convex));
    Ok(Sender::new(outbox, sink, pacer, config.convex.batch_size))
}

/// How long the sender lets a request in flight finish on shutdown: the grace period minus
/// 500 ms kept for flushing the outbox and exiting.
fn in_flight_limit(config: &Config) -> Duration {
    Duration::from_secs(config.service.shutdown_grace_secs)
        .saturating_sub(Duration::from_millis(500))
}

/// `check-config`: prints the effective configuration with secrets redacted.
///
/// # Errors
/// None beyond what loading already reported; kept fallible for symmetry.
pub fn check_config(loaded: &Loaded) -> anyhow::Result<ExitCode> {
    let c = &loaded.config;
    match &loaded.path {
        Some(p) => println!("# config file: {}", p.display()),
        None => println!("# config file: none (built-in defaults)"),
    }
    if let Some(warning) = loaded.permission_warning() {
        eprintln!("opencode-telemetry: warning: {warning}");
        println!("# warning: {warning}");
    }
    println!("# sink: {}", sink_description(c));
    println!(
        "# opencode database: {} ({})",
        c.source.db_path.display(),
        if c.source.db_path.exists() {
            "exists"
        } else {
            "not found yet"
        }
    );
    print!("{}", c.to_redacted_toml());
    println!("# config ok");
    Ok(ExitCode::SUCCESS)
}

/// One line per exported session, as `once` prints it.
pub fn summary_line(r: &SessionExport) -> String {
    format!(
        "{}  {:<7}  msgs {:>3}  todos {}/{}  ${:.4}  {}",
        r.session_id,
        r.end_reason.as_str(),
        r.message_count,
        r.todo_stats.completed,
        r.todo_stats.total,
        r.cost,
        r.title
    )
}

/// `once`: reads every session, builds its record, enqueues, delivers. Exit 0 when the outbox
/// is drained; 1 when something could not be delivered (the records stay queued, or are in
/// the dead-letter tree).
///
/// Sessions whose turn is still running are not exported (the daemon exports them when they
/// end), unless they have had no write for `export.stale_after_secs` (then `incomplete`).
///
/// # Errors
/// Source, outbox and sink set-up failures.
pub async fn once(config: &Config, timeout_secs: u64) -> anyhow::Result<ExitCode> {
    let outbox = Arc::new(open_outbox(config)?);
    let device = device_id(config)?;
    let mut ctx = export_context(config, &device);
    ctx.exported_at = now_ms();
    let db_path = config.source.db_path.clone();
    let busy = Duration::from_millis(config.source.busy_timeout_ms);
    let skip_children = config.export.skip_subagent_sessions;
    let stale_after_ms = (config.export.stale_after_secs as i64).saturating_mul(1000);
    let now = ctx.exported_at;
    let reading = ProgressGuard::new(0, "reading sessions");
    let bar = reading.bar().clone();
    let (records, notes) = tokio::task::spawn_blocking(move || -> Result<_, SourceError> {
        let db = OpenCodeDb::open(&db_path, busy)?;
        let mut heads = db.session_heads()?;
        heads.sort_by(|a, b| b.id.cmp(&a.id)); // Session ids sort newest first; print oldest first.
        bar.set_length(heads.len() as u64);
        let mut records = Vec::new();
        let mut notes = Vec::new();
        for head in heads {
            bar.inc(1);
            if skip_children && head.parent_id.is_some() {
                continue;
            }
            let Some(snapshot) = db.read_session(&head.id)? else {
                continue;
            };
            let outcome = match export::snapshot_activity(&snapshot) {
                Activity::Ended(e) => Outcome::ended(e.error),
                Activity::Empty => {
                    notes.push(format!("{}  (no messages; not exported)", head.id));
                    continue;
                }
                Activity::Busy if now - snapshot.last_write_ms() >= stale_after_ms => Outcome {
                    end_reason: export::EndReason::Idle,
                    error: None,
                    incomplete: true,
                },
                Activity::Busy => {
                    notes.push(format!("{}  (turn in progress; not exported)", head.id));
                    continue;
                }
            };
            records.push(export::build(&snapshot, &outcome, &ctx));
        }
        Ok((records, notes))
    })
    .await
    .context("the database reader panicked")?
    .with_context(|| format!("reading {}", config.source.db_path.display()))?;
    drop(reading);

    let last = last_export_puts(
        records.iter().map(|r| {
            let trigger = match (r.end_reason, r.incomplete) {
                (_, true) => "stale",
                (EndReason::Error, _) => "session.error",
                (EndReason::Deleted, _) => "session.deleted",
                (EndReason::Idle, _) => "session.idle",
            };
            (trigger, r.session_id.as_str())
        }),
        now,
    );
    outbox
        .commit(Commit {
            records: records
                .iter()
                .map(|r| new_record(r, serde_json::to_vec(r).expect("a record serializes")))
                .collect(),
            state_puts: state_puts_of(&last),
            state_removes: Vec::new(),
        })
        .await
        .context("writing the outbox")?;
    for r in &records {
        println!("{}", summary_line(r));
    }
    for n in &notes {
        println!("{n}");
    }

    let mut sender = sender_for(config, outbox.clone())?;
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let mut dead_total = 0;
    let mut delivered_total = 0;
    let delivering = ProgressGuard::new(outbox.stats()?.pending_count, "delivering");
    loop {
        match sender.step().await? {
            Step::Idle => break,
            Step::Progress { delivered, dead } => {
                delivered_total += delivered;
                dead_total += dead;
                delivering.bar().inc((delivered + dead) as u64);
            }
            Step::Backoff { wait, reason } => {
                if Instant::now() + wait > deadline {
                    outbox.flush().await?;
                    let left = outbox.stats()?.pending_count;
                    bail!(
                        "cannot deliver to {}: {reason}; {left} record(s) stay queued and will be sent by the next `once` or by `run`",
                        sender.describe()
                    );
                }
                tracing::warn!(reason = %reason, retry_in_ms = wait.as_millis() as u64, "delivery failed; will retry");
                tokio::time::sleep(wait).await;
            }
            Step::Unauthorized { reason, .. } => {
                outbox.flush().await?;
                bail!(
                    "{} refused the ingest token ({reason}); records stay queued. Check convex.ingest_token / OPENCODE_TELEMETRY_INGEST_TOKEN against the deployment's INGEST_TOKEN",
                    sender.describe()
                );
            }
        }
    }
    drop(delivering);
    outbox.flush().await?;
    eprintln!(
        "exported {} session(s); delivered {delivered_total} to {}",
        records.len(),
        sender.describe()
    );
    if dead_total > 0 {
        eprintln!(
            "opencode-telemetry: {dead_total} record(s) were rejected and kept in the dead-letter tree; see `opencode-telemetry queue list`"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `run` from the command line: the daemon until SIGTERM or SIGINT; SIGHUP reloads the
/// configuration with `overrides` (the same `--config` / `--db` as at start).
///
/// # Errors
/// Fatal failures (outbox storage, sink set-up).
pub async fn run_daemon(
    loaded: Loaded,
    overrides: crate::config::Overrides,
    transitions_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %loaded.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into()),
        "starting"
    );
    if let Some(warning) = loaded.permission_warning() {
        tracing::warn!("{warning}");
    }
    let (hup_tx, hup_rx) = mpsc::unbounded_channel();
    forward_hangups(hup_tx);
    let reload = move || -> Result<Loaded, ConfigError> {
        let loaded = crate::config::load(&overrides)?;
        loaded.check_delivery()?;
        Ok(loaded)
    };
    run(
        loaded,
        RunOptions {
            transitions_log,
            show_progress: std::io::stderr().is_terminal(),
        },
        shutdown_signal(),
        Reloads {
            signals: hup_rx,
            load: Box::new(reload),
        },
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// Sends `()` on `tx` for every SIGHUP (Unix only; elsewhere nothing is sent).
fn forward_hangups(tx: mpsc::UnboundedSender<()>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send(()).is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading the config needs a restart")
            }
        }
    }
    #[cfg(not(unix))]
    drop(tx);
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C elsewhere).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!(signal = "ctrl-c", "signal received");
    }
}

/// Options of [`run`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--transitions-log`: every inferred transition appended as a JSON line.
    pub transitions_log: Option<PathBuf>,
    /// Draw a progress bar over the first pass over existing sessions.
    pub show_progress: bool,
}

/// Reload requests for [`run`]: each message on `signals` calls `load` and applies the result
/// (see [`reload`]).
pub struct Reloads {
    /// One `()` per request (SIGHUP).
    pub signals: mpsc::UnboundedReceiver<()>,
    /// Loads and validates the configuration again.
    pub load: Box<dyn FnMut() -> Result<Loaded, ConfigError> + Send>,
}

impl Reloads {
    /// No reloads ever (a closed channel).
    pub fn none() -> Reloads {
        let (_, signals) = mpsc::unbounded_channel();
        Reloads {
            signals,
            load: Box::new(|| {
                Err(ConfigError::Invalid {
                    path: PathBuf::from("<none>"),
                    message: "reloading is not available".into(),
                })
            }),
        }
    }
}

/// The daemon: polls and delivers until `shutdown` resolves; reloads its configuration on each
/// message of `reloads`.
///
/// # Errors
/// Fatal failures: the outbox cannot be opened or written (sled errors are sticky; the service
/// manager restarts the process), or the sink cannot be set up.
pub async fn run(
    loaded: Loaded,
    options: RunOptions,
    shutdown: impl Future<Output = ()>,
    mut reloads: Reloads,
) -> anyhow::Result<()> {
    let mut config = loaded.config;
    let outbox = Arc::new(open_outbox(&config)?);
    let device = device_id(&config)?;
    let ctx = export_context(&config, &device);
    let tracker = if outbox.was_rebuilt() {
        tracing::info!("the outbox was rebuilt; re-reading every session from the source");
        Tracker::new(rules(&config))
    } else {
        Tracker::resume(rules(&config), outbox.state_scan(tracker::STATE_PREFIX)?)
    };
    let mut grace = Duration::from_secs(config.service.shutdown_grace_secs);
    let sender =
        sender_for(&config, outbox.clone())?.with_in_flight_limit(in_flight_limit(&config));
    tracing::info!(
        sink = %sender.describe(),
        db = %config.source.db_path.display(),
        tracked_sessions = tracker.len(),
        "running"
    );
    outbox.set_daemon_info(DaemonInfo {
        started_at_ms: now_ms(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config_path: loaded
            .path
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        db_path: config.source.db_path.clone(),
        sink: sink_description(&config),
        last_exports: status::last_exports(&outbox),
        last_reload: None,
    });
    let mut notifier = notify::Notifier::from_env();
    notifier.ready(&format!("polling {}", config.source.db_path.display()));
    let cancel = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let (reconfigure_tx, reconfigure_rx) = mpsc::unbounded_channel();
    let sender_task = tokio::spawn(sender.run(wake.clone(), cancel.clone(), reconfigure_rx));
    let mut poller = Poller {
        config: config.clone(),
        device,
        ctx,
        tracker: Some(tracker),
        db: None,
        last_data_version: None,
        missing_logged: false,
        full_logged: false,
        transitions_log: options.transitions_log,
        progress_pending: options.show_progress,
        scanned_once: false,
    };
    let mut ticker = tokio::time::interval(config.poll_interval());
    // IMPORTANT: a slow tick must not be followed by a burst of catch-up ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut reloads_open = true;
    tokio::pin!(shutdown);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = notifier.watchdog() => continue,
            _ = ticker.tick() => {}
            hup = reloads.signals.recv(), if reloads_open => {
                if hup.is_none() {
                    reloads_open = false;
                    continue;
                }
                let Some(new) = apply_reload(&config, (reloads.load)(), &outbox, &reconfigure_tx) else {
                    continue;
                };
                if new.poll_interval() != config.poll_interval() {
                    ticker = tokio::time::interval(new.poll_interval());
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
                grace = Duration::from_secs(new.service.shutdown_grace_secs);
                poller.reconfigure(&new);
                config = new;
                continue;
            }
        }
        // A tick can take seconds (the first pass over a large database); shutdown does not wait
        // for it. Dropping it mid-way is safe: a commit either applied (and the final flush below
        // persists it) or did not, and the source is re-read after the restart.
        //
        // The watchdog is pinged during the first tick that reads the database: the first pass
        // over a large history may outlast `WatchdogSec` (about 120,000 sessions a minute, see
        // README "Speed"). Later ticks read a few rows, so a stuck one stops the pings and
        // systemd restarts the daemon.
        let first_pass = !poller.scanned_once;
        let ticked = {
            let tick = poller.tick(&outbox);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    _ = &mut shutdown => break None,
                    ticked = &mut tick => break Some(ticked),
                    _ = notifier.watchdog(), if first_pass => {}
                }
            }
        };
        match ticked {
            None => break Ok(()),
            Some(Ok(true)) => wake.notify_one(),
            Some(Ok(false)) => {}
            Some(Err(e)) => break Err(e),
        }
    };
    notifier.stopping("stopping: flushing the outbox");
    cancel.cancel();
    match tokio::time::timeout(grace, sender_task).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "sender failed"),
        Ok(Err(e)) => tracing::error!(error = %e, "sender task panicked"),
        Ok(Ok(Ok(()))) => {}
        Err(_) => tracing::warn!("the sender did not stop within the grace period"),
    }
    outbox.flush().await.context("flushing the outbox")?;
    tracing::info!("shutdown complete");
    result
}

/// Applies a reloaded configuration (see [`reload`]); returns the config to run with, or
/// `None` when it was rejected (logged at ERROR; the running one stays).
fn apply_reload(
    running: &Config,
    loaded: Result<Loaded, ConfigError>,
    outbox: &Outbox,
    reconfigure: &mpsc::UnboundedSender<Reconfigure>,
) -> Option<Config> {
    tracing::info!(signal = "SIGHUP", "reloading the configuration");
    let record = |applied: bool, message: String| {
        outbox.update_daemon_info(|d| {
            d.last_reload = Some(ReloadOutcome {
                at_ms: now_ms(),
                applied,
                message,
            })
        });
    };
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "the reloaded configuration is invalid; keeping the running one");
            record(false, e.to_string());
            return None;
        }
    };
    if let Some(warning) = loaded.permission_warning() {
        tracing::warn!("{warning}");
    }
    let plan = reload::plan(running, loaded.config);
    for change in &plan.need_restart {
        tracing::warn!(change = %change, "this setting needs a restart to take effect; keeping the running value");
    }
    if plan.rebuild_sink {
        let sink = match AnySink::from_config(&plan.effective) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "the reloaded sink settings cannot be used; keeping the running configuration");
                record(false, format!("sink: {e}"));
                return None;
            }
        };
        let _ = reconfigure.send(Reconfigure {
            sink,
            pacer: sink::Pacer::new(sink::RetryPolicy::from_config(&plan.effective.convex)),
            batch_size: plan.effective.convex.batch_size,
            in_flight_limit: in_flight_limit(&plan.effective),
        });
    }
    if let Err(e) = logging::reload(&running.service, &plan.effective.service) {
        tracing::warn!(error = %e, "cannot apply the new log settings");
    }
    let summary = if plan.applied.is_empty() {
        "nothing changed".to_string()
    } else {
        plan.applied.join("; ")
    };
    for change in &plan.applied {
        tracing::info!(change = %change, "setting changed");
    }
    tracing::info!(
        config = %loaded.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into()),
        changes = plan.applied.len(),
        "configuration reloaded"
    );
    let effective = plan.effective;
    let sink = sink_description(&effective);
    outbox.update_daemon_info(|d| d.sink = sink);
    record(true, summary);
    Some(effective)
}

/// The poll side of the daemon.
struct Poller {
    config: Config,
    device: String,
    ctx: ExportContext,
    tracker: Option<Tracker>,
    db: Option<OpenCodeDb>,
    last_data_version: Option<i64>,
    missing_logged: bool,
    full_logged: bool,
    transitions_log: Option<PathBuf>,
    /// Show a progress bar over the next tick (the first one).
    progress_pending: bool,
    /// A tick has read the database to the end once (the first pass over the history is done).
    scanned_once: bool,
}

impl Poller {
    /// Takes the live settings of a reloaded config: export rules and record contents.
    fn reconfigure(&mut self, config: &Config) {
        self.config = config.clone();
        self.ctx = export_context(config, &self.device);
        if let Some(t) = self.tracker.as_mut() {
            t.set_rules(rules(config));
        }
    }

    /// One tick. Returns whether records were enqueued.
    async fn tick(&mut self, outbox: &Outbox) -> anyhow::Result<bool> {
        if outbox.is_full() {
            if !self.full_logged {
                tracing::warn!(
                    max_bytes = self.config.queue.max_bytes,
                    "the outbox is full; pausing reads of the opencode database until it drains"
                );
                self.full_logged = true;
            }
            return Ok(false);
        }
        self.full_logged = false;
        let db_path = self.config.source.db_path.clone();
        let busy = Duration::from_millis(self.config.source.busy_timeout_ms);
        let mut db = self.db.take();
        let mut tracker = self.tracker.take().expect("tracker present between ticks");
        let mut ctx = self.ctx.clone();
        let last_dv = self.last_data_version;
        let budget = outbox.free_bytes();
        let progress = std::mem::take(&mut self.progress_pending)
            .then(|| ProgressGuard::new(0, "reading sessions"));
        let had_progress = progress.is_some();
        if let Some(p) = &progress {
            tracker.set_progress(p.bar().clone());
        }
        let missing_logged = self.missing_logged;
        let now = now_ms();
        ctx.exported_at = now;
        let joined = tokio::task::spawn_blocking(move || {
            let result = (|| -> Result<(Option<tracker::TickOutput>, Option<i64>), SourceError> {
                if db.as_ref().is_some_and(|d| d.replaced()) {
                    tracing::info!(db = %db_path.display(), "the opencode database file was replaced; reopening");
                    db = None;
                }
                let reopened = db.is_none();
                if reopened {
                    db = Some(OpenCodeDb::open(&db_path, busy)?);
                    tracker.rescan();
                    tracing::info!(db = %db_path.display(), "opened the opencode database (read-only)");
                }
                let d = db.as_ref().expect("opened above");
                let dv = d.data_version()?;
                // `data_version` is per connection: after a (re)open its value says nothing.
                let changed = reopened || last_dv != Some(dv);
                if !changed && !tracker.has_timers() {
                    return Ok((None, Some(dv)));
                }
                let out = tracker.tick(d, &ctx, now, changed, budget)?;
                Ok((Some(out), Some(dv)))
            })();
            (db, tracker, result)
        })
        .await;
        drop(progress);
        let (db, tracker, result) = joined.context("the database reader panicked")?;
        self.tracker = Some(tracker);
        match result {
            Ok((out, dv)) => {
                self.db = db;
                self.scanned_once = true;
                self.missing_logged = false;
                let out = match out {
                    Some(out) => out,
                    None => return Ok(false),
                };
                if out.is_empty() {
                    self.last_data_version = dv;
                    return Ok(false);
                }
                let emitted = !out.emitted.is_empty();
                if out.deferred > 0 {
                    tracing::debug!(
                        deferred = out.deferred,
                        "the outbox is nearly full; exports deferred"
                    );
                }
                let last = last_export_puts(
                    out.emitted
                        .iter()
                        .map(|e| (trigger_name(e.event), e.record.session_id.as_str())),
                    now,
                );
                let mut state_puts = out.state_puts;
                state_puts.extend(state_puts_of(&last));
                let commit = Commit {
                    records: out
                        .emitted
                        .iter()
                        .map(|e| new_record(&e.record, e.json.clone()))
                        .collect(),
                    state_puts,
                    state_removes: out.state_removes,
                };
                outbox.commit(commit).await.context("writing the outbox")?;
                if !last.is_empty() {
                    outbox.update_daemon_info(|d| d.last_exports.extend(last));
                }
                self.last_data_version = dv;
                for e in &out.emitted {
                    self.log_transition(e);
                }
                Ok(emitted)
            }
            // Not there yet, or OpenCode is still creating its tables: wait quietly.
            Err(e @ (SourceError::Missing { .. } | SourceError::NotOpenCode { .. })) => {
                if !missing_logged {
                    tracing::info!(reason = %e, "waiting for the opencode database to appear");
                }
                // The first pass is still to come.
                self.progress_pending |= had_progress;
                self.missing_logged = true;
                self.db = None;
                self.last_data_version = None;
                Ok(false)
            }
            Err(e) => {
                // The tracker only changed in memory for sessions it fully processed, and those
                // changes were not committed: start from a clean read next tick.
                tracing::warn!(error = %e, "reading the opencode database failed; retrying next tick");
                self.db = None;
                self.last_data_version = None;
                self.tracker = Some(Tracker::resume(
                    rules(&self.config),
                    outbox.state_scan(tracker::STATE_PREFIX)?,
                ));
                Ok(false)
            }
        }
    }

    fn log_transition(&self, e: &Emitted) {
        let line = serde_json::json!({
            "ts": e.record.exported_at,
            "sessionId": e.record.session_id,
            "event": e.event,
            "endReason": e.record.end_reason,
            "error": e.record.error.as_ref().map(|x| &x.name),
            "updatedAt": e.record.updated_at,
            "archivedAt": e.record.archived_at,
            "deletedAt": e.record.deleted_at,
            "incomplete": e.record.incomplete,
        });
        tracing::info!(
            session_id = %e.record.session_id,
            event = %serde_json::to_string(&e.event).unwrap_or_default().trim_matches('"'),
            end_reason = e.record.end_reason.as_str(),
            "session exported"
        );
        if let Some(path) = &self.transitions_log {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(err) = written {
                tracing::warn!(path = %path.display(), error = %err, "cannot write the transitions log");
            }
        }
    }
}

/// `status` (or `status --json`); see [`status`].
///
/// # Errors
/// Outbox failures other than the lock.
pub fn status(config: &Config, as_json: bool) -> anyhow::Result<ExitCode> {
    status::status(config, as_json)
}

/// `queue list`: pending and dead-lettered records.
///
/// # Errors
/// The outbox cannot be opened (e.g. the daemon holds it).
pub async fn queue_list(config: &Config) -> anyhow::Result<ExitCode> {
    let outbox = open_outbox(config)?;
    let now = now_ms();
    let pending = outbox.pending(usize::MAX)?;
    println!("pending: {}", pending.len());
    for p in &pending {
        println!(
            "  {}  queued {}s ago  {} bytes  attempts {}",
            p.session_id(),
            (now - p.enqueued_at_ms()).max(0) / 1000,
            p.record_json().len(),
            p.attempts()
        );
    }
    let dead = outbox.dead_entries()?;
    println!("dead letters: {}", dead.len());
    for d in &dead {
        println!(
            "  {}  dead {}  updatedAt {}  reason: {}",
            d.session_id,
            status::ago(now, d.dead_at_ms),
            d.updated_at_ms
                .map(|t| t.to_string())
                .unwrap_or_else(|| "?".into()),
            d.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `queue retry-dead`: moves dead-lettered records back to pending.
///
/// # Errors
/// The outbox cannot be opened or written.
pub async fn queue_retry_dead(config: &Config) -> anyhow::Result<ExitCode> {
    let outbox = open_outbox(config)?;
    let n = outbox.retry_dead().await?;
    outbox.flush().await?;
    println!("requeued {n} record(s)");
    Ok(ExitCode::SUCCESS)
}

/// Creates `path`'s parent directory.
pub(crate) fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}
