//! The service: the daemon loop (`run`) and what it is made of — [`pass`] (the one pass over a
//! source that `run` and `once` share), the poll side (`poll`), the sender ([`deliver`]),
//! [`reload`] (SIGHUP), signals, [`notify`] (sd_notify) and [`logging`]. The one-shot commands
//! are in [`crate::cmd`].
//!
//! # The daemon (`run`)
//! Two tasks share the outbox:
//! - the **poller** ticks every `source.poll_interval_ms`: the source answers whether anything
//!   changed in O(1) (OpenCode: `PRAGMA data_version`); if so (or if a debounce/final/stale
//!   timer is pending) one [`pass`] reads what changed, the [`crate::track::Tracker`] decides
//!   exports, and the records plus the tracker's new state are committed to the outbox in
//!   **one** sled transaction and flushed before the tick counts as done. While the outbox is
//!   full (`queue.max_bytes`) the poller does not read the source at all (it can be re-read
//!   later), so nothing is ever dropped;
//! - the **sender** ([`deliver::Sender`]) drains the outbox to the sink.
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

pub mod deliver;
pub mod logging;
pub mod notify;
pub mod pass;
mod poll;
pub mod reload;
mod signals;
pub mod status_file;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::{Config, ConfigError, Loaded};
use crate::daemon::deliver::{Reconfigure, Sender};
use crate::export::{ExportContext, ExportOptions, SessionExport};
use crate::identity;
use crate::queue::{Lane, NewRecord, Outbox, QueueError};
use crate::sink::{self, AnySink};
use crate::source::opencode::OpenCodeSource;
use crate::track::{Rules, Tracker};

use poll::Poller;
use signals::forward_hangups;
pub use signals::shutdown_signal;
use status_file::{DaemonInfo, LastExport, ReloadOutcome, StatusHandle, StatusWriter};

/// Key prefix, in the outbox's `state` tree, of the last export per trigger
/// (`last-export/session.idle` → `{"sessionId":…,"at":<ms>}`), written in the same commit as
/// the records; `status` reads it when no daemon runs.
pub const LAST_EXPORT_PREFIX: &[u8] = b"last-export/";

/// Sets up `tracing` on stderr from `[service]`; see [`logging`].
pub fn init_tracing(service: &crate::config::ServiceConfig) {
    logging::init(service);
}

/// Where records go, one sink after the other (`local store <path>`, then `convex <url>` and
/// `local file <path>` when configured; no secret).
pub(crate) fn sink_description(config: &Config) -> String {
    configured_lanes(config)
        .into_iter()
        .map(|lane| match lane {
            Lane::Store => format!("local store {}", config.store_path().display()),
            Lane::Convex => format!("convex {}", config.convex.url),
            Lane::Ndjson => format!("local file {}", config.local.path.display()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The outbox lanes `config` configures: the local store always, Convex when `convex.url` is
/// set, the deprecated NDJSON file while `local.path` is set.
pub(crate) fn configured_lanes(config: &Config) -> Vec<Lane> {
    let mut lanes = vec![Lane::Store];
    if config.uses_convex() {
        lanes.push(Lane::Convex);
    }
    if config.uses_ndjson() {
        lanes.push(Lane::Ndjson);
    }
    lanes
}

/// The sink of `lane` as `config` sets it up.
pub(crate) fn sink_for(config: &Config, lane: Lane) -> Result<AnySink, sink::SinkError> {
    match lane {
        Lane::Store => AnySink::store(config),
        Lane::Convex => AnySink::convex(config),
        Lane::Ndjson => AnySink::ndjson(config),
    }
}

/// The `state` puts recording the last export per trigger, for `(trigger, session id)` pairs in
/// commit order (the last one of each trigger wins).
pub(crate) fn last_export_puts<'a>(
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

pub(crate) fn state_puts_of(last: &BTreeMap<String, LastExport>) -> Vec<(Vec<u8>, Vec<u8>)> {
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
            crate::atomic_file::create_private_dir(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let id = hex::encode(rand::random::<[u8; 16]>());
            std::fs::write(&path, format!("{id}\n"))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
    }
}

pub(crate) fn export_context(
    config: &Config,
    device_id: &str,
    path_key: crate::export::PathKey,
) -> ExportContext {
    ExportContext {
        device_id: device_id.to_string(),
        hostname: identity::hostname(),
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        exported_at: 0,
        options: ExportOptions::from(&config.export),
        privacy: crate::export::Privacy::new(&config.privacy, path_key),
    }
}

/// The install's key for hashed project paths ([`crate::export::privacy`]):
/// `<data_dir>/path.key`, 64 hex digits, created once (32 random bytes, mode 0600, never
/// replaced: a new key would change every hash) with `data_dir` made 0700 when missing.
///
/// # Errors
/// The file cannot be created or read, or holds something other than a key (it is then left
/// alone and named).
pub fn path_key(config: &Config) -> anyhow::Result<crate::export::PathKey> {
    let path = config.data_dir.join("path.key");
    let parse = |text: &str| -> Option<crate::export::PathKey> {
        let bytes: [u8; 32] = hex::decode(text.trim()).ok()?.try_into().ok()?;
        Some(crate::export::PathKey::new(bytes))
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => parse(&text).with_context(|| {
            format!(
                "{} is not a path key (64 hex digits); move it away to make a new one (hashed \
                 project paths then change)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::atomic_file::create_private_dir(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let key = crate::export::PathKey::new(rand::random());
            match crate::atomic_file::create_new_private(
                &path,
                format!("{}\n", hex::encode(key.bytes())).as_bytes(),
            ) {
                Ok(()) => Ok(key),
                // Another process made it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => path_key(config),
                Err(e) => Err(e).with_context(|| format!("writing {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// What to do about held deletions (see [`crate::track::rules::hold_deletions`]).
pub(crate) const HELD_ADVICE: &str = "if you deleted those sessions, stop the daemon and run \
     `opencode-telemetry queue confirm-deletions`; if the database was replaced, restore it and \
     they are released";

/// The WARN line for `n` deletions held by one pass.
pub(crate) fn held_message(n: usize) -> String {
    format!(
        "{n} sessions vanished from the source at once, as when its database is deleted, recreated \
         or replaced: their deletions are held, not exported; {HELD_ADVICE}"
    )
}

/// How many deletions are held in the outbox's `state` tree.
pub(crate) fn held_deletions(outbox: &Outbox) -> anyhow::Result<usize> {
    Ok(outbox.state_count(crate::track::HELD_PREFIX)?)
}

/// Opens the outbox for delivering (`run`, `once`): with `config`'s lanes, dropping the
/// entries of a sink no longer configured.
pub(crate) fn open_outbox(config: &Config) -> anyhow::Result<Outbox> {
    // Made private (0700) when missing: it holds the records, the tracker's copies and the
    // path key.
    // A failure is left to `Outbox::open`, which names it (a file in the way: exit 78).
    if !config.data_dir.exists() {
        let _ = crate::atomic_file::create_private_dir(&config.data_dir);
    }
    opened(
        config,
        Outbox::open_lanes(&config.data_dir, &config.queue, &configured_lanes(config)),
    )
}

/// Opens the outbox for inspecting it (`status`, `queue …`): entries of a sink `config` does not
/// configure are kept (see [`Outbox::open_keeping`]).
pub(crate) fn open_outbox_keeping(config: &Config) -> anyhow::Result<Outbox> {
    opened(
        config,
        Outbox::open_keeping(&config.data_dir, &config.queue, &configured_lanes(config)),
    )
}

fn opened(config: &Config, outbox: Result<Outbox, QueueError>) -> anyhow::Result<Outbox> {
    let outbox = outbox.map_err(|e| match e {
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

/// Key, in the outbox's `state` tree, of how far the local store was given the records the
/// tracker had kept from before the store existed (see `fill_store`): `done`, or the last
/// `record/<id>` key given so far.
pub const STORE_FILLED_KEY: &[u8] = b"store-filled";

/// [`STORE_FILLED_KEY`]'s value once every kept record was given.
const STORE_FILLED_DONE: &[u8] = b"done";

/// Records handed to the store lane per transaction by [`fill_store`].
const FILL_CHUNK: usize = 200;

/// What [`fill_store`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fill {
    /// Every kept record was given (now or before).
    Done {
        /// Records given by this call.
        given: usize,
    },
    /// The outbox is full: the rest is given by a later call, once the lanes drained.
    Paused {
        /// Records given by this call.
        given: usize,
    },
}

/// Gives the local store's lane the last record the tracker kept of every session
/// (`record/<id>` in the `state` tree), so that an outbox from a build before the local store —
/// whose sessions will not be exported again until they change — fills the store with its
/// history instead of starting it empty. Only the store's lane gets them (the other sinks had
/// them already), and only for sessions with nothing pending (a pending version reaches the
/// store anyway).
///
/// A page of [`FILL_CHUNK`] records in memory at a time, each page committed with the key it
/// ended at ([`STORE_FILLED_KEY`]), so a crash or a full outbox resumes after the last page
/// given; a page that would not fit in the outbox (`queue.max_bytes`) waits for a later call
/// ([`Fill::Paused`]: `run` calls again after its ticks, `once` at its next run). The last page
/// sets the key to `done`; on a fresh outbox there is nothing to give and it is set at once.
///
/// # Errors
/// Outbox failures.
pub(crate) async fn fill_store(outbox: &Outbox) -> anyhow::Result<Fill> {
    let mut after = match outbox.state_get(STORE_FILLED_KEY)? {
        Some(v) if v == STORE_FILLED_DONE => return Ok(Fill::Done { given: 0 }),
        other => other,
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        session_id: String,
        updated_at: i64,
        exported_at: i64,
    }
    let (mut given, mut unreadable) = (0, 0);
    let fill = loop {
        let page = outbox.state_after(crate::track::RECORD_PREFIX, after.as_deref(), FILL_CHUNK)?;
        let last = page.len() < FILL_CHUNK;
        let bytes: u64 = page
            .iter()
            .map(|(k, v)| crate::queue::stored_size_bound(&String::from_utf8_lossy(k), v.len()))
            .sum();
        if bytes > outbox.free_bytes() {
            break Fill::Paused { given };
        }
        let end = page.last().map(|(k, _)| k.clone());
        let mut records = Vec::with_capacity(page.len());
        for (_, json) in page {
            match serde_json::from_slice::<Versioned>(&json) {
                Ok(v) => records.push(NewRecord {
                    session_id: v.session_id,
                    updated_at: v.updated_at,
                    exported_at: v.exported_at,
                    json,
                }),
                Err(_) => unreadable += 1,
            }
        }
        let mark = match (&end, last) {
            (_, true) | (None, _) => STORE_FILLED_DONE.to_vec(),
            (Some(k), false) => k.clone(),
        };
        let commit = crate::queue::Commit {
            records,
            state_puts: vec![(STORE_FILLED_KEY.to_vec(), mark)],
            state_removes: Vec::new(),
        };
        given += outbox.commit_to_lane(Lane::Store, commit).await?;
        if last {
            break Fill::Done { given };
        }
        after = end;
    };
    if given > 0 {
        tracing::info!(
            records = given,
            "gave the local store the sessions exported before it existed"
        );
    }
    if let Fill::Paused { .. } = fill {
        tracing::info!("the outbox is full: the local store gets the rest of the earlier sessions as it drains");
    }
    if unreadable > 0 {
        tracing::warn!(
            records = unreadable,
            "kept records that cannot be read were not given to the local store"
        );
    }
    Ok(fill)
}

/// The outbox entry for `record`, whose JSON is `json`.
pub(crate) fn new_record(record: &SessionExport, json: Vec<u8>) -> NewRecord {
    NewRecord {
        session_id: record.session_id.clone(),
        updated_at: record.updated_at,
        exported_at: record.exported_at,
        json,
    }
}

/// One sender per lane of `outbox` (see [`deliver`]), each with its own sink and pacer. Warns
/// once that `local.path` is deprecated when it is set.
pub(crate) fn senders_for(config: &Config, outbox: Arc<Outbox>) -> anyhow::Result<Vec<Sender>> {
    if config.uses_ndjson() {
        tracing::warn!(path = %config.local.path.display(),
            "`[local] path` is deprecated: the local store is {} (read it with `opencode-telemetry report`); the NDJSON file still receives every record while the key is set; `opencode-telemetry export --format ndjson` gives the same lines",
            config.store_path().display());
    }
    outbox
        .lanes()
        .iter()
        .map(|&lane| {
            let sink =
                sink_for(config, lane).with_context(|| format!("setting up the {lane} sink"))?;
            let pacer = sink::Pacer::new(sink::RetryPolicy::from(&config.convex));
            Ok(Sender::new(outbox.clone(), lane, sink, pacer))
        })
        .collect()
}

/// How long the sender lets a request in flight finish on shutdown: the grace period minus
/// 500 ms kept for flushing the outbox and exiting.
pub(crate) fn in_flight_limit(config: &Config) -> Duration {
    Duration::from_secs(config.service.shutdown_grace_secs)
        .saturating_sub(Duration::from_millis(500))
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
    for warning in loaded.warnings() {
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
    let ctx = export_context(&config, &device, path_key(&config)?);
    let tracker = if outbox.was_rebuilt() {
        tracing::info!("the outbox was rebuilt; re-reading every session from the source");
        Tracker::new(Rules::from(&config.export))
    } else {
        Tracker::resume(Rules::from(&config.export), outbox.as_ref())?
    };
    let mut filled = matches!(fill_store(&outbox).await?, Fill::Done { .. });
    let mut grace = Duration::from_secs(config.service.shutdown_grace_secs);
    let senders: Vec<Sender> = senders_for(&config, outbox.clone())?
        .into_iter()
        .map(|s| s.with_in_flight_limit(in_flight_limit(&config)))
        .collect();
    tracing::info!(
        sink = %senders.iter().map(Sender::describe).collect::<Vec<_>>().join(", "),
        db = %config.source.db_path.display(),
        tracked_sessions = tracker.len(),
        "running"
    );
    let held_deletions = held_deletions(&outbox)?;
    if held_deletions > 0 {
        tracing::warn!(held_deletions, "deletions are held: {HELD_ADVICE}");
    }
    let status = StatusWriter::spawn(
        outbox.clone(),
        &config.data_dir,
        DaemonInfo {
            started_at_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            config_path: loaded
                .path
                .as_ref()
                .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
            db_path: config.source.db_path.clone(),
            sink: sink_description(&config),
            last_exports: crate::cmd::status::last_exports(&outbox),
            last_reload: None,
            source_problem: None,
            held_deletions,
            device: None,
        },
    );
    let mut notifier = notify::Notifier::from_env();
    notifier.ready(&format!("polling {}", config.source.db_path.display()));
    let cancel = CancellationToken::new();
    // One wake-up and one reconfigure channel per sender: each lane sleeps and wakes on its own.
    let mut wakes: Vec<Arc<Notify>> = Vec::new();
    let mut reconfigure_tx: Vec<(Lane, mpsc::UnboundedSender<Reconfigure>)> = Vec::new();
    let mut sender_tasks = Vec::new();
    for sender in senders {
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::unbounded_channel();
        reconfigure_tx.push((sender.lane(), tx));
        wakes.push(wake.clone());
        sender_tasks.push((
            sender.lane(),
            tokio::spawn(sender.run(wake, cancel.clone(), rx)),
        ));
    }
    if config.uses_convex() {
        tokio::spawn(ask_whoami(
            config.convex.clone(),
            status.handle(),
            cancel.clone(),
        ));
    }
    let mut poller = Poller {
        config: config.clone(),
        device,
        ctx,
        tracker: Some(tracker),
        source: Some(Box::new(OpenCodeSource::from(&config.source))),
        missing_logged: false,
        source_problem: None,
        held_deletions,
        failing: None,
        full_logged: false,
        transitions_log: options.transitions_log,
        progress_pending: options.show_progress,
        scanned_once: false,
        progress: None,
        more: false,
        status: status.handle(),
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
            _ = ticker.tick(), if !poller.more => {}
            // The last pass stopped at a chunk's end: the next one runs now.
            _ = std::future::ready(()), if poller.more => {}
            hup = reloads.signals.recv(), if reloads_open => {
                if hup.is_none() {
                    reloads_open = false;
                    continue;
                }
                let Some(new) = apply_reload(&config, (reloads.load)(), &status.handle(), &reconfigure_tx) else {
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
            Some(Ok(true)) => wakes.iter().for_each(|w| w.notify_one()),
            Some(Ok(false)) => {}
            Some(Err(e)) => break Err(e),
        }
        // A fill of the store the outbox had no room for resumes as the lanes drain.
        if !filled {
            match fill_store(&outbox).await {
                Ok(Fill::Done { given }) => {
                    filled = true;
                    if given > 0 {
                        wakes.iter().for_each(|w| w.notify_one());
                    }
                }
                Ok(Fill::Paused { given }) => {
                    if given > 0 {
                        wakes.iter().for_each(|w| w.notify_one());
                    }
                }
                Err(e) => break Err(e),
            }
        }
    };
    notifier.stopping("stopping: flushing the outbox");
    cancel.cancel();
    // The senders stop together, within one grace period.
    let deadline = tokio::time::Instant::now() + grace;
    for (lane, task) in sender_tasks {
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Err(e))) => tracing::error!(lane = %lane, error = %e, "sender failed"),
            Ok(Err(e)) => tracing::error!(lane = %lane, error = %e, "sender task panicked"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!(lane = %lane, "the sender did not stop within the grace period")
            }
        }
    }
    let flushed = outbox.flush().await;
    status.finish().await;
    flushed.context("flushing the outbox")?;
    tracing::info!("shutdown complete");
    result
}

/// How long the daemon waits between `/whoami` attempts while the deployment is unreachable or
/// the device is not bound yet.
const WHOAMI_RETRY: Duration = Duration::from_secs(60);

/// Most `/whoami` attempts while the device is not bound yet (its first record binds it; a
/// machine that exports nothing for an hour stops asking).
const WHOAMI_UNBOUND_TRIES: u32 = 60;

/// Asks the deployment's `GET /whoami` which device this machine is and records the answer in
/// the status file ([`DaemonInfo::device`]) and the log (INFO; WARN when the token is
/// rejected). Asked once at start; while the deployment is unreachable, again every
/// [`WHOAMI_RETRY`] until it answers, and while the device is not bound to a device id yet
/// (until its first record is delivered), again every [`WHOAMI_RETRY`] at most
/// [`WHOAMI_UNBOUND_TRIES`] times, so `status` shows the bound id; never after `stop` is
/// cancelled. The log gets a line only when the answer changes.
pub(crate) async fn ask_whoami(
    convex: crate::config::ConvexConfig,
    status: StatusHandle,
    stop: CancellationToken,
) {
    use crate::sink::convex::whoami::{whoami, WhoAmI};
    let timeout = Duration::from_secs(convex.request_timeout_secs.max(1));
    let mut unbound_tries = 0;
    let mut last_logged = String::new();
    loop {
        let answer = tokio::select! {
            _ = stop.cancelled() => return,
            a = whoami(&convex, timeout) => a,
        };
        let (name, device_id) = match &answer {
            WhoAmI::Device { name, device_id } => (Some(name.clone()), device_id.clone()),
            _ => (None, None),
        };
        let line = answer.describe();
        if line != last_logged {
            match &answer {
                WhoAmI::Device { .. } | WhoAmI::Legacy => {
                    tracing::info!(device = %line, "the deployment knows this machine")
                }
                _ => {
                    tracing::warn!(answer = %line, "the deployment did not say which device this machine is")
                }
            }
            last_logged = line.clone();
        }
        let unbound = matches!(
            answer,
            WhoAmI::Device {
                device_id: None,
                ..
            }
        );
        status.update(|d| {
            d.device = Some(status_file::DeviceSeen {
                at_ms: now_ms(),
                name,
                device_id,
                answer: line,
            })
        });
        if unbound {
            unbound_tries += 1;
        }
        let again = matches!(answer, WhoAmI::Unreachable { .. })
            || (unbound && unbound_tries < WHOAMI_UNBOUND_TRIES);
        if !again {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(WHOAMI_RETRY) => {}
        }
    }
}

/// Applies a reloaded configuration (see [`reload`]); returns the config to run with, or
/// `None` when it was rejected (logged at ERROR; the running one stays).
pub(crate) fn apply_reload(
    running: &Config,
    loaded: Result<Loaded, ConfigError>,
    status: &StatusHandle,
    reconfigure: &[(Lane, mpsc::UnboundedSender<Reconfigure>)],
) -> Option<Config> {
    tracing::info!(signal = "SIGHUP", "reloading the configuration");
    let record = |applied: bool, message: String| {
        status.update(|d| {
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
    for warning in loaded.warnings() {
        tracing::warn!("{warning}");
    }
    let plan = reload::plan(running, loaded.config);
    for change in &plan.need_restart {
        tracing::warn!(change = %change, "this setting needs a restart to take effect; keeping the running value");
    }
    // The set of sinks (lanes) is fixed at start: adding or removing `[convex]` or
    // `[local] path` needs a restart, which keeps the running set meanwhile.
    let mut effective = plan.effective;
    let running_lanes = configured_lanes(running);
    if configured_lanes(&effective) != running_lanes {
        tracing::warn!(
            change = "the set of sinks (convex.url or local.path set or unset)",
            "this setting needs a restart to take effect; keeping the running value"
        );
        if !running_lanes.contains(&Lane::Convex) {
            effective.convex = running.convex.clone();
        }
        if !running_lanes.contains(&Lane::Ndjson) {
            effective.local = running.local.clone();
        }
        if running_lanes.contains(&Lane::Convex) && !effective.uses_convex() {
            effective.convex = running.convex.clone();
        }
        if running_lanes.contains(&Lane::Ndjson) && !effective.uses_ndjson() {
            effective.local = running.local.clone();
        }
    }
    if plan.rebuild_sink {
        let mut sinks = Vec::new();
        for (lane, _) in reconfigure {
            match sink_for(&effective, *lane) {
                Ok(s) => sinks.push(s),
                Err(e) => {
                    tracing::error!(error = %e, "the reloaded sink settings cannot be used; keeping the running configuration");
                    record(false, format!("sink: {e}"));
                    return None;
                }
            }
        }
        for ((_, tx), sink) in reconfigure.iter().zip(sinks) {
            let _ = tx.send(Reconfigure {
                sink,
                pacer: sink::Pacer::new(sink::RetryPolicy::from(&effective.convex)),
                in_flight_limit: in_flight_limit(&effective),
            });
        }
    }
    if let Err(e) = logging::reload(&running.service, &effective.service) {
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
    let sink = sink_description(&effective);
    status.update(|d| d.sink = sink);
    record(true, summary);
    Some(effective)
}

/// Creates `path`'s parent directory.
pub(crate) fn ensure_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod fill_tests {
    use super::*;
    use crate::config::QueueConfig;

    fn kept_record(i: usize) -> (Vec<u8>, Vec<u8>) {
        let id = format!("ses_{i:08}");
        let json = format!(
            r#"{{"sessionId":"{id}","updatedAt":{i},"exportedAt":{i},"pad":"{}"}}"#,
            "x".repeat(400)
        );
        (
            [crate::track::RECORD_PREFIX, id.as_bytes()].concat(),
            json.into_bytes(),
        )
    }

    /// 450 kept records, an outbox bounded to about 250 of them: the fill gives what fits,
    /// pauses, and resumes after the store's lane drained, each record given once, and then
    /// stays done.
    #[tokio::test]
    async fn a_fill_the_outbox_has_no_room_for_resumes_where_it_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        let config = QueueConfig {
            max_bytes: 250 * 700,
            cache_capacity_bytes: 4 << 20,
        };
        let ob = Outbox::open_lanes(tmp.path(), &config, &[Lane::Store, Lane::Convex]).unwrap();
        ob.commit(crate::queue::Commit {
            state_puts: (0..450).map(kept_record).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut given = Vec::new();
        let mut rounds = 0;
        loop {
            rounds += 1;
            assert!(rounds < 10, "the fill does not finish");
            let fill = fill_store(&ob).await.unwrap();
            // Drain the store's lane, as its sender would.
            loop {
                let batch = ob.pending(Lane::Store, 100).unwrap();
                if batch.is_empty() {
                    break;
                }
                given.extend(batch.iter().map(|p| p.session_id().to_string()));
                ob.ack_batch(&batch).await.unwrap();
            }
            assert!(
                ob.pending(Lane::Convex, 1).unwrap().is_empty(),
                "only the store's lane is filled"
            );
            if let Fill::Done { .. } = fill {
                break;
            }
        }
        assert!(rounds >= 2, "the bound paused the fill at least once");
        let mut want: Vec<String> = (0..450).map(|i| format!("ses_{i:08}")).collect();
        want.sort();
        assert_eq!(given, want, "every kept record, once, in key order");
        assert_eq!(fill_store(&ob).await.unwrap(), Fill::Done { given: 0 });
    }
}
