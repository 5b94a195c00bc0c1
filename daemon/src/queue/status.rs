//! The status file `<data_dir>/status.json`: a small JSON snapshot of the outbox for
//! `opencode-telemetry status` while the daemon holds the outbox's lock (sled allows one opener
//! per directory, so a second process cannot read the trees).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::format::{StatusError, StatusFile};
use super::LastError;

/// What a running daemon (`run`) adds to the status file, under `"daemon"`: where it reads,
/// where it delivers, what it exported last. Set with [`super::Outbox::set_daemon_info`].
/// Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonInfo {
    /// When the daemon started (ms).
    #[serde(rename = "startedAt")]
    pub started_at_ms: i64,
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The config file it loaded (`None`: built-in defaults).
    pub config_path: Option<PathBuf>,
    /// The OpenCode database it reads.
    pub db_path: PathBuf,
    /// Where it delivers (`convex <url>` or `local file <path>`; no secret).
    pub sink: String,
    /// The last export per trigger (`session.idle`, `session.error`, `session.deleted`,
    /// `stale`).
    #[serde(default)]
    pub last_exports: BTreeMap<String, LastExport>,
    /// The outcome of the last SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadOutcome>,
}

/// One export: which session, when it was committed to the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastExport {
    /// The OpenCode session id.
    pub session_id: String,
    /// When the record was committed (ms).
    #[serde(rename = "at")]
    pub at_ms: i64,
}

/// What a SIGHUP did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadOutcome {
    /// When (ms).
    #[serde(rename = "at")]
    pub at_ms: i64,
    /// True when the new config was applied; false when it was rejected (the old one runs).
    pub applied: bool,
    /// What changed, or why it was rejected (names key and file; never a secret).
    pub message: String,
}

/// File name of the status file inside the data dir.
pub const STATUS_FILE_NAME: &str = "status.json";

/// What `status` shows when it cannot open the outbox itself: the outbox as the running daemon
/// last described it. All times are epoch milliseconds, sizes are bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Process id of the daemon that wrote the file.
    pub pid: u32,
    /// When the file was written (ms).
    pub written_at_ms: i64,
    /// Pending entries (at most one per session).
    pub pending_count: u64,
    /// Bytes of the pending entries as stored (envelope header + record).
    pub pending_bytes: u64,
    /// `queue.max_bytes`: the outbox counts as full at this many pending bytes.
    pub max_bytes: u64,
    /// `enqueuedAt` of the oldest pending entry (ms).
    pub oldest_enqueued_at_ms: Option<i64>,
    /// Entries in the dead-letter tree.
    pub dead_count: u64,
    /// Last successful delivery (ms).
    pub last_delivery_at_ms: Option<i64>,
    /// Last recorded error.
    pub last_error: Option<LastError>,
    /// The next sequence number as of the outbox's last completed flush: everything below it was
    /// durably committed. [`super::Outbox::open`] treats a log that recovers below it as damaged.
    pub committed_seq: Option<u64>,
    /// Set by a running daemon; `None` when another command (`once`, `queue`) wrote the file.
    pub daemon: Option<DaemonInfo>,
}

/// The status file of a data dir: `<data_dir>/status.json`.
pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATUS_FILE_NAME)
}

/// Reads `<data_dir>/status.json`. `None` when it is missing or cannot be decoded (for example
/// written by a newer version). The snapshot may be stale: compare `written_at_ms` with the
/// clock and check that `pid` is alive. A running daemon rewrites it at most once per second
/// and within about a second of any change.
pub fn read_status(data_dir: &Path) -> Option<StatusSnapshot> {
    let bytes = std::fs::read(status_path(data_dir)).ok()?;
    match serde_json::from_slice::<StatusFile>(&bytes).ok()? {
        StatusFile::V1 {
            pid,
            written_at,
            pending_count,
            pending_bytes,
            max_bytes,
            oldest_enqueued_at,
            dead_count,
            last_delivery_at,
            last_error,
            committed_seq,
            daemon,
        } => Some(StatusSnapshot {
            pid,
            written_at_ms: written_at,
            pending_count,
            pending_bytes,
            max_bytes,
            oldest_enqueued_at_ms: oldest_enqueued_at,
            dead_count,
            last_delivery_at_ms: last_delivery_at,
            last_error: last_error.map(|e| LastError {
                message: e.message,
                at_ms: e.at,
            }),
            committed_seq,
            daemon,
        }),
    }
}

/// Writes the status file atomically: a temporary file in the same directory, written,
/// `fsync`ed, renamed over the old one. Readers see the old or the new file, never a torn one.
pub(crate) fn write_status_file(path: &Path, snap: &StatusSnapshot) -> std::io::Result<()> {
    let file = StatusFile::V1 {
        pid: snap.pid,
        written_at: snap.written_at_ms,
        pending_count: snap.pending_count,
        pending_bytes: snap.pending_bytes,
        max_bytes: snap.max_bytes,
        oldest_enqueued_at: snap.oldest_enqueued_at_ms,
        dead_count: snap.dead_count,
        last_delivery_at: snap.last_delivery_at_ms,
        last_error: snap.last_error.as_ref().map(|e| StatusError {
            message: e.message.clone(),
            at: e.at_ms,
        }),
        committed_seq: snap.committed_seq,
        daemon: snap.daemon.clone(),
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Throttle state of the status file writer (guarded by a mutex in the outbox).
#[derive(Debug, Default)]
pub(crate) struct StatusState {
    /// When the file was last written (or a write last failed).
    pub last_write: Option<Instant>,
    /// Something changed since the last write.
    pub dirty: bool,
    /// A trailing write is scheduled on the tokio runtime.
    pub trailing: bool,
    /// The last write failed (logged once until a write succeeds again).
    pub failing: bool,
}
