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
//! Blocking SQLite work runs on tokio's blocking pool, never on the async workers. SIGTERM or
//! SIGINT (handled in [`run_daemon`] only; [`run`] takes any shutdown future) stops both tasks,
//! waits at most `service.shutdown_grace_secs` for an in-flight request, flushes the outbox and
//! exits 0.
//!
//! When the database does not exist yet the daemon logs it once and keeps waiting for it; when
//! the file is replaced (new inode) or deleted it reopens it.

pub mod install;
pub mod notify;
pub mod sender;
pub mod tracker;

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, Loaded};
use crate::export::{self, ExportContext, Outcome, SessionExport};
use crate::identity;
use crate::queue::{Commit, NewRecord, Outbox, QueueError, StatusSnapshot};
use crate::sink::{self, AnySink};
use crate::source::activity::Activity;
use crate::source::opencode::{OpenCodeDb, SourceError};
use sender::{Sender, Step};
use tracker::{Emitted, Rules, Tracker};

/// Sets up `tracing` on stderr: `RUST_LOG` wins, else `service.log_level`. Under journald
/// (`JOURNAL_STREAM` set) timestamps and colours are left out; journald adds its own.
pub fn init_tracing(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).try_init()
    } else {
        builder.try_init()
    };
    let _ = result;
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
    println!(
        "# sink: {}",
        if c.uses_convex() {
            format!("convex {}", c.convex.url)
        } else {
            format!("local file {}", c.local.path.display())
        }
    );
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
    let (records, notes) = tokio::task::spawn_blocking(move || -> Result<_, SourceError> {
        let db = OpenCodeDb::open(&db_path, busy)?;
        let mut heads = db.session_heads()?;
        heads.sort_by(|a, b| b.id.cmp(&a.id)); // Session ids sort newest first; print oldest first.
        let mut records = Vec::new();
        let mut notes = Vec::new();
        for head in heads {
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

    outbox
        .commit(Commit {
            records: records
                .iter()
                .map(|r| new_record(r, serde_json::to_vec(r).expect("a record serializes")))
                .collect(),
            state_puts: Vec::new(),
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
    loop {
        match sender.step().await? {
            Step::Idle => break,
            Step::Progress { delivered, dead } => {
                delivered_total += delivered;
                dead_total += dead;
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

/// `run` from the command line: the daemon until SIGTERM or SIGINT.
///
/// # Errors
/// Fatal failures (outbox storage, sink set-up).
pub async fn run_daemon(
    loaded: Loaded,
    transitions_log: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %loaded.path.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into()),
        "starting"
    );
    run(loaded.config, transitions_log, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
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

/// The daemon: polls and delivers until `shutdown` resolves.
///
/// # Errors
/// Fatal failures: the outbox cannot be opened or written (sled errors are sticky; the service
/// manager restarts the process), or the sink cannot be set up.
pub async fn run(
    config: Config,
    transitions_log: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let outbox = Arc::new(open_outbox(&config)?);
    let device = device_id(&config)?;
    let ctx = export_context(&config, &device);
    let tracker = if outbox.was_rebuilt() {
        tracing::warn!("the outbox was rebuilt; re-reading every session from the source");
        Tracker::new(rules(&config))
    } else {
        Tracker::resume(rules(&config), outbox.state_scan(tracker::STATE_PREFIX)?)
    };
    // On SIGTERM the request in flight may finish, keeping 500 ms of the grace period to flush.
    let grace = Duration::from_secs(config.service.shutdown_grace_secs);
    let sender = sender_for(&config, outbox.clone())?
        .with_in_flight_limit(grace.saturating_sub(Duration::from_millis(500)));
    tracing::info!(
        sink = %sender.describe(),
        db = %config.source.db_path.display(),
        tracked_sessions = tracker.len(),
        "running"
    );
    let mut notifier = notify::Notifier::from_env();
    notifier.ready(&format!("polling {}", config.source.db_path.display()));
    let cancel = CancellationToken::new();
    let wake = Arc::new(Notify::new());
    let sender_task = tokio::spawn(sender.run(wake.clone(), cancel.clone()));
    let mut poller = Poller {
        config: config.clone(),
        ctx,
        tracker: Some(tracker),
        db: None,
        last_data_version: None,
        missing_logged: false,
        full_logged: false,
        transitions_log,
    };
    let mut ticker = tokio::time::interval(config.poll_interval());
    // IMPORTANT: a slow tick must not be followed by a burst of catch-up ticks.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    tokio::pin!(shutdown);
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = notifier.watchdog() => continue,
            _ = ticker.tick() => {}
        }
        // A tick can take seconds (the first pass over a large database); shutdown does not wait
        // for it. Dropping it mid-way is safe: a commit either applied (and the final flush below
        // persists it) or did not, and the source is re-read after the restart.
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            ticked = poller.tick(&outbox) => match ticked {
                Ok(true) => wake.notify_one(),
                Ok(false) => {}
                Err(e) => break Err(e),
            },
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

/// The poll side of the daemon.
struct Poller {
    config: Config,
    ctx: ExportContext,
    tracker: Option<Tracker>,
    db: Option<OpenCodeDb>,
    last_data_version: Option<i64>,
    missing_logged: bool,
    full_logged: bool,
    transitions_log: Option<PathBuf>,
}

impl Poller {
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
        let (db, tracker, result) = joined.context("the database reader panicked")?;
        self.tracker = Some(tracker);
        match result {
            Ok((out, dv)) => {
                self.db = db;
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
                let commit = Commit {
                    records: out
                        .emitted
                        .iter()
                        .map(|e| new_record(&e.record, e.json.clone()))
                        .collect(),
                    state_puts: out.state_puts,
                    state_removes: out.state_removes,
                };
                outbox.commit(commit).await.context("writing the outbox")?;
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

/// `status`: outbox depth, oldest pending entry, dead letters, last delivery, last error.
/// Works while the daemon runs (it then reads the status file the daemon keeps).
///
/// # Errors
/// Outbox failures other than the lock.
pub fn status(config: &Config) -> anyhow::Result<ExitCode> {
    let sink = if config.uses_convex() {
        format!("convex {}", config.convex.url)
    } else {
        format!("local file {}", config.local.path.display())
    };
    println!("sink:            {sink}");
    println!("opencode db:     {}", config.source.db_path.display());
    println!("data dir:        {}", config.data_dir.display());
    let now = now_ms();
    // A running daemon keeps `status.json` current; reading it leaves the outbox's lock alone
    // (a daemon starting right now must not find it taken).
    let running = crate::queue::read_status(&config.data_dir).filter(|s| process_alive(s.pid));
    let snapshot = match running {
        Some(s) => {
            println!(
                "daemon:          running, pid {} (figures from its status file, {}s old)",
                s.pid,
                (now - s.written_at_ms).max(0) / 1000
            );
            s
        }
        None => match open_outbox(config) {
            Ok(outbox) => {
                println!("daemon:          not running (outbox opened directly)");
                outbox.snapshot()?
            }
            Err(e) => match crate::queue::read_status(&config.data_dir) {
                Some(s) => {
                    println!(
                        "daemon:          running (outbox locked; figures from its status file, {}s old)",
                        (now - s.written_at_ms).max(0) / 1000
                    );
                    s
                }
                None => return Err(e),
            },
        },
    };
    print!("{}", render_status(&snapshot, now));
    Ok(ExitCode::SUCCESS)
}

/// Whether an opencode-telemetry process with this id runs (Linux: `/proc/<pid>/cmdline`, so a
/// pid reused by another program does not count; elsewhere unknown, so false and `status` opens
/// the outbox itself).
fn process_alive(pid: u32) -> bool {
    if !cfg!(target_os = "linux") || pid == std::process::id() {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("opencode-telemetry"))
        .unwrap_or(false)
}

/// "12s ago", or "never".
fn ago(now: i64, at: Option<i64>) -> String {
    match at {
        Some(at) => format!("{}s ago", (now - at).max(0) / 1000),
        None => "never".to_string(),
    }
}

/// The figures `status` prints.
fn render_status(s: &StatusSnapshot, now: i64) -> String {
    let oldest = match s.oldest_enqueued_at_ms {
        Some(_) => format!("queued {}", ago(now, s.oldest_enqueued_at_ms)),
        None => "none".to_string(),
    };
    let last_error = match &s.last_error {
        Some(e) => format!("{} ({})", e.message, ago(now, Some(e.at_ms))),
        None => "none".to_string(),
    };
    format!(
        "pending:         {} ({} bytes of {} max)\n\
         oldest pending:  {oldest}\n\
         dead letters:    {}\n\
         last delivery:   {}\n\
         last error:      {last_error}\n",
        s.pending_count,
        s.pending_bytes,
        s.max_bytes,
        s.dead_count,
        ago(now, s.last_delivery_at_ms),
    )
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
            ago(now, d.dead_at_ms),
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
