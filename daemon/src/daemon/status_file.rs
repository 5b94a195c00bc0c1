//! The status file `<data_dir>/status.json`: what a running daemon (`run`) shows to
//! `opencode-telemetry status`, which cannot open the outbox itself while the daemon holds its
//! lock (sled allows one opener per directory).
//!
//! The file holds the outbox's figures ([`QueueStats`], read with [`Outbox::stats`]) and what
//! only the daemon knows ([`DaemonInfo`]: start time, config file, database, sink, the last
//! export per trigger, the last SIGHUP). [`StatusWriter`] keeps it current: a task that waits
//! for [`Outbox::changes`] or a [`DaemonInfo`] update, then rewrites the file — at most once per
//! second, and within about a second of any change (a change inside the second after a write is
//! written when the second is over). [`StatusWriter::finish`] writes it a last time at shutdown,
//! after the outbox's final flush. Only `run` writes the file; `once` and `queue` hold the lock
//! only for as long as they run.
//!
//! The outbox keeps no part of this file: its own durable high-water mark is
//! `<data_dir>/queue/committed.json` (see [`crate::queue`]). Builds before that file kept the
//! mark here as `committedSeq`; this writer no longer does, and readers ignore it.
//!
//! ```text
//! {"v":"1","pid":…,"writtenAt":<ms>,
//!  "pendingCount":…,"pendingBytes":…,"maxBytes":…,"oldestEnqueuedAt":<ms>|null,"deadCount":…,
//!  "lastDeliveryAt":<ms>|null,"lastError":{"message":…,"at":<ms>}|null,
//!  "enqueuedTotal":…,"ackedTotal":…,"deadLetteredTotal":…,"diskBytes":…,
//!  "daemon":{"startedAt":<ms>,"version":…,"configPath":…|null,"dbPath":…,"sink":…,
//!            "lastExports":{"session.idle":{"sessionId":…,"at":<ms>},…},
//!            "lastReload":{"at":<ms>,"applied":…,"message":…},
//!            "device":{"at":<ms>,"name":…,"deviceId":…,"answer":…}}}
//! ```
//! The members from `enqueuedTotal` on are absent in files of earlier builds (read as 0). The
//! file is written atomically ([`crate::atomic_file`]), so a reader never sees a torn one. It
//! holds no secret: the sink is described by its URL or path only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::queue::{Lane, LaneStats, LastError, Outbox, QueueStats};

/// File name of the status file inside the data dir.
pub const STATUS_FILE_NAME: &str = "status.json";

/// The file is rewritten at most this often (except by [`StatusWriter::finish`]).
const INTERVAL: Duration = Duration::from_secs(1);

/// What a running daemon adds to the status file, under `"daemon"`. Times are epoch ms.
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
    /// Where it delivers (`local store <path>`, then `convex <url>` and `local file <path>` when
    /// configured; no secret).
    pub sink: String,
    /// The last export per trigger (`session.idle`, `session.error`, `session.deleted`,
    /// `stale`).
    #[serde(default)]
    pub last_exports: BTreeMap<String, LastExport>,
    /// The outcome of the last SIGHUP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadOutcome>,
    /// Why the source cannot be read at the moment, when it is a problem the user should see
    /// (a schema this reader does not understand); cleared by the next good read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_problem: Option<String>,
    /// Deletions held because many sessions vanished at once (see
    /// [`crate::track::rules::hold_deletions`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub held_deletions: usize,
    /// Which device the deployment knows this machine as: its `GET /whoami` answer to the
    /// daemon at start (Convex sink only; see `daemon::ask_whoami`). Kept in the file after
    /// the daemon stops, so `status` shows it offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSeen>,
}

/// The deployment's `GET /whoami` answer, as the daemon last got it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSeen {
    /// When it was asked (ms).
    #[serde(rename = "at")]
    pub at_ms: i64,
    /// The device's name, when the token is a device token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The record `deviceId` the device is bound to, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The answer in one line (`device \`work-laptop\` (device id …)`, `the deployment
    /// rejected the token (http 401: …)`, `the deployment is unreachable (…)`); no secret.
    pub answer: String,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// One export: which session, when it was committed to the outbox. Also the value of the
/// `last-export/<trigger>` keys in the outbox's `state` tree (see
/// [`super::LAST_EXPORT_PREFIX`]).
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

/// What `status` shows: the outbox's figures as of `written_at_ms`, from the status file of a
/// running daemon or read from the outbox directly ([`StatusSnapshot::now`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSnapshot {
    /// Process id of the process that read the figures.
    pub pid: u32,
    /// When the figures were read (ms).
    pub written_at_ms: i64,
    /// The outbox's figures.
    pub queue: QueueStats,
    /// Set by a running daemon; `None` when the outbox was read directly.
    pub daemon: Option<DaemonInfo>,
}

impl StatusSnapshot {
    /// The figures of `outbox` read now by this process.
    ///
    /// # Errors
    /// [`crate::queue::QueueError::Storage`].
    pub fn now(
        outbox: &Outbox,
        daemon: Option<DaemonInfo>,
    ) -> Result<StatusSnapshot, crate::queue::QueueError> {
        Ok(StatusSnapshot {
            pid: std::process::id(),
            written_at_ms: now_ms(),
            queue: outbox.stats()?,
            daemon,
        })
    }
}

/// The status file of a data dir: `<data_dir>/status.json`.
pub fn status_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STATUS_FILE_NAME)
}

/// Reads `<data_dir>/status.json`. `None` when it is missing or cannot be decoded (for example
/// written by a newer version). The snapshot may be stale: compare `written_at_ms` with the
/// clock and check that `pid` is alive.
pub fn read_status(data_dir: &Path) -> Option<StatusSnapshot> {
    let bytes = std::fs::read(status_path(data_dir)).ok()?;
    let StatusFile::V1 {
        pid,
        written_at,
        queue,
        daemon,
    } = serde_json::from_slice::<StatusFile>(&bytes).ok()?;
    Some(StatusSnapshot {
        pid,
        written_at_ms: written_at,
        queue: queue.into(),
        daemon,
    })
}

/// Keeps `<data_dir>/status.json` current while the daemon runs (see the module doc). Cheap to
/// share: [`StatusWriter::handle`] hands out cloneable [`StatusHandle`]s.
pub struct StatusWriter {
    info: Arc<watch::Sender<DaemonInfo>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter").finish_non_exhaustive()
    }
}

impl StatusWriter {
    /// Writes the file now and spawns the task that keeps it current. Needs a tokio runtime.
    pub fn spawn(outbox: Arc<Outbox>, data_dir: &Path, info: DaemonInfo) -> StatusWriter {
        let info = Arc::new(watch::Sender::new(info));
        let stop = CancellationToken::new();
        let task = tokio::spawn(keep_current(
            outbox,
            status_path(data_dir),
            info.subscribe(),
            stop.clone(),
        ));
        StatusWriter { info, stop, task }
    }

    /// A handle that changes the daemon's part of the file (see [`StatusHandle::update`]).
    pub fn handle(&self) -> StatusHandle {
        StatusHandle(self.info.clone())
    }

    /// Stops the writer after one last write (call it after the outbox's final flush).
    pub async fn finish(self) {
        self.stop.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "the status file writer panicked");
        }
    }
}

/// Changes the daemon's part of the status file (a clone of [`StatusWriter::handle`]).
#[derive(Debug, Clone)]
pub struct StatusHandle(Arc<watch::Sender<DaemonInfo>>);

impl StatusHandle {
    /// Changes the daemon's part of the file; the writer picks it up within about a second.
    pub fn update(&self, f: impl FnOnce(&mut DaemonInfo)) {
        self.0.send_modify(f);
    }
}

/// The writer task: write, then wait for a change (or the stop), then for the rest of the
/// second since the last write, and write again. A write after the stop is the last one.
async fn keep_current(
    outbox: Arc<Outbox>,
    path: PathBuf,
    mut info: watch::Receiver<DaemonInfo>,
    stop: CancellationToken,
) {
    let mut changes = outbox.changes();
    let mut failing = false;
    loop {
        let written = tokio::time::Instant::now();
        changes.borrow_and_update();
        let daemon = info.borrow_and_update().clone();
        write_logged(&outbox, &path, daemon, &mut failing).await;
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            r = changes.changed() => if r.is_err() { return },
            r = info.changed() => if r.is_err() { return },
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep_until(written + INTERVAL) => {}
        }
    }
}

/// Reads the figures and writes the file on the blocking pool (`fsync`); logs the first failure
/// of a run of failures at WARN and the recovery at INFO.
async fn write_logged(outbox: &Arc<Outbox>, path: &Path, daemon: DaemonInfo, failing: &mut bool) {
    let (outbox, target) = (outbox.clone(), path.to_path_buf());
    let written = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let snap = StatusSnapshot::now(&outbox, Some(daemon)).map_err(|e| e.to_string())?;
        write_file(&target, &snap).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match written {
        Ok(()) if *failing => {
            *failing = false;
            tracing::info!(path = %path.display(), "status file written again");
        }
        Ok(()) => {}
        Err(error) if !*failing => {
            *failing = true;
            tracing::warn!(path = %path.display(), %error, "cannot write the status file; `status` may show stale data");
        }
        Err(_) => {}
    }
}

/// Writes the status file atomically ([`crate::atomic_file`]).
fn write_file(path: &Path, snap: &StatusSnapshot) -> std::io::Result<()> {
    let file = StatusFile::V1 {
        pid: snap.pid,
        written_at: snap.written_at_ms,
        queue: QueueFigures::from(&snap.queue),
        daemon: snap.daemon.clone(),
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    crate::atomic_file::write(path, &bytes)
}

/// The status file (see the module doc for the layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
enum StatusFile {
    /// Format 1.
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 {
        pid: u32,
        written_at: i64,
        #[serde(flatten)]
        queue: QueueFigures,
        /// Always set by this build; optional so files of `once` in earlier builds still read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        daemon: Option<DaemonInfo>,
    },
}

/// [`QueueStats`] as the status file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueueFigures {
    pending_count: u64,
    pending_bytes: u64,
    max_bytes: u64,
    oldest_enqueued_at: Option<i64>,
    dead_count: u64,
    last_delivery_at: Option<i64>,
    last_error: Option<ErrorFigure>,
    #[serde(default)]
    enqueued_total: u64,
    #[serde(default)]
    acked_total: u64,
    #[serde(default)]
    dead_lettered_total: u64,
    #[serde(default)]
    disk_bytes: u64,
    /// Per lane (files of builds before lanes have none).
    #[serde(default)]
    lanes: Vec<LaneFigures>,
}

/// [`LaneStats`] as the status file spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LaneFigures {
    lane: String,
    pending_count: u64,
    oldest_enqueued_at: Option<i64>,
    dead_count: u64,
    last_delivery_at: Option<i64>,
    last_error: Option<ErrorFigure>,
    acked_total: u64,
    dead_lettered_total: u64,
}

/// The last error inside [`QueueFigures`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ErrorFigure {
    message: String,
    /// ms.
    at: i64,
}

impl From<&QueueStats> for QueueFigures {
    fn from(s: &QueueStats) -> QueueFigures {
        QueueFigures {
            pending_count: s.pending_count,
            pending_bytes: s.pending_bytes,
            max_bytes: s.max_bytes,
            oldest_enqueued_at: s.oldest_enqueued_at_ms,
            dead_count: s.dead_count,
            last_delivery_at: s.last_delivery_at_ms,
            last_error: s.last_error.as_ref().map(|e| ErrorFigure {
                message: e.message.clone(),
                at: e.at_ms,
            }),
            enqueued_total: s.enqueued_total,
            acked_total: s.acked_total,
            dead_lettered_total: s.dead_lettered_total,
            disk_bytes: s.disk_bytes,
            lanes: s
                .lanes
                .iter()
                .map(|l| LaneFigures {
                    lane: l.lane.as_str().to_string(),
                    pending_count: l.pending_count,
                    oldest_enqueued_at: l.oldest_enqueued_at_ms,
                    dead_count: l.dead_count,
                    last_delivery_at: l.last_delivery_at_ms,
                    last_error: l.last_error.as_ref().map(|e| ErrorFigure {
                        message: e.message.clone(),
                        at: e.at_ms,
                    }),
                    acked_total: l.acked_total,
                    dead_lettered_total: l.dead_lettered_total,
                })
                .collect(),
        }
    }
}

impl From<QueueFigures> for QueueStats {
    fn from(f: QueueFigures) -> QueueStats {
        QueueStats {
            pending_count: f.pending_count,
            pending_bytes: f.pending_bytes,
            max_bytes: f.max_bytes,
            oldest_enqueued_at_ms: f.oldest_enqueued_at,
            dead_count: f.dead_count,
            last_delivery_at_ms: f.last_delivery_at,
            last_error: f.last_error.map(|e| LastError {
                message: e.message,
                at_ms: e.at,
            }),
            enqueued_total: f.enqueued_total,
            acked_total: f.acked_total,
            dead_lettered_total: f.dead_lettered_total,
            disk_bytes: f.disk_bytes,
            lanes: f
                .lanes
                .into_iter()
                .filter_map(|l| {
                    Some(LaneStats {
                        lane: Lane::from_name(&l.lane)?,
                        pending_count: l.pending_count,
                        oldest_enqueued_at_ms: l.oldest_enqueued_at,
                        dead_count: l.dead_count,
                        last_delivery_at_ms: l.last_delivery_at,
                        last_error: l.last_error.map(|e| LastError {
                            message: e.message,
                            at_ms: e.at,
                        }),
                        acked_total: l.acked_total,
                        dead_lettered_total: l.dead_lettered_total,
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueConfig;
    use crate::queue::{Commit, NewRecord};

    fn info() -> DaemonInfo {
        DaemonInfo {
            started_at_ms: 1,
            version: "9.9.9".into(),
            config_path: None,
            db_path: "/x/opencode.db".into(),
            sink: "local file /x/out.ndjson".into(),
            last_exports: BTreeMap::new(),
            last_reload: None,
            source_problem: None,
            held_deletions: 0,
            device: None,
        }
    }

    fn record(sid: &str) -> Commit {
        Commit {
            records: vec![NewRecord {
                session_id: sid.into(),
                updated_at: 1,
                exported_at: 2,
                json: br#"{"sessionId":"x"}"#.to_vec(),
            }],
            ..Commit::default()
        }
    }

    async fn wait_for(data: &Path, what: impl Fn(&StatusSnapshot) -> bool) -> StatusSnapshot {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = read_status(data).filter(|s| what(s)) {
                return s;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "status file never matched"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn the_file_follows_the_outbox_and_the_daemon_at_most_once_a_second() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(read_status(tmp.path()), None);
        let config = QueueConfig {
            max_bytes: 1 << 20,
            cache_capacity_bytes: 4 << 20,
        };
        let outbox = Arc::new(Outbox::open(tmp.path(), &config).unwrap());
        let writer = StatusWriter::spawn(outbox.clone(), tmp.path(), info());
        let s0 = wait_for(tmp.path(), |_| true).await;
        assert_eq!(s0.pid, std::process::id());
        assert_eq!((s0.queue.pending_count, s0.queue.max_bytes), (0, 1 << 20));
        assert_eq!(s0.daemon.as_ref().unwrap().version, "9.9.9");

        // Two changes right after a write are written together, a second after it.
        outbox.commit(record("ses_a")).await.unwrap();
        outbox
            .record_error(Lane::Store, "http 503: unavailable")
            .unwrap();
        let s1 = wait_for(tmp.path(), |s| s.queue.pending_count == 1).await;
        assert!(
            s1.written_at_ms - s0.written_at_ms >= 950,
            "rewritten {} ms after the last write",
            s1.written_at_ms - s0.written_at_ms
        );
        assert_eq!(
            s1.queue.last_error.unwrap().message,
            "http 503: unavailable"
        );
        assert_eq!(s1.queue.enqueued_total, 1);

        // A daemon-side change alone is written too.
        writer
            .handle()
            .update(|d| d.sink = "convex https://x.convex.cloud".into());
        let s2 = wait_for(tmp.path(), |s| {
            s.daemon.as_ref().unwrap().sink.starts_with("convex")
        })
        .await;
        assert_eq!(s2.queue.pending_count, 1);

        // `finish` writes the final figures at once.
        let p = outbox.pending(Lane::Store, 1).unwrap().remove(0);
        outbox.ack(&p).await.unwrap();
        outbox.flush().await.unwrap();
        writer.finish().await;
        let s3 = read_status(tmp.path()).unwrap();
        assert_eq!((s3.queue.pending_count, s3.queue.acked_total), (0, 1));
        assert!(s3.queue.last_delivery_at_ms.is_some());
        // Nothing but the outbox and the status file in the data dir (no temporary file left).
        let mut names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["queue", "status.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(status_path(tmp.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn files_of_earlier_builds_read_and_garbage_reads_as_none() {
        let tmp = tempfile::tempdir().unwrap();
        // Written by the build before the split: no totals, a `committedSeq`, no daemon.
        std::fs::write(
            status_path(tmp.path()),
            br#"{"v":"1","pid":7,"writtenAt":5,"pendingCount":2,"pendingBytes":30,"maxBytes":100,
                "oldestEnqueuedAt":4,"deadCount":1,"lastDeliveryAt":null,
                "lastError":{"message":"m","at":3},"committedSeq":12}"#,
        )
        .unwrap();
        let s = read_status(tmp.path()).unwrap();
        assert_eq!((s.pid, s.written_at_ms, s.daemon), (7, 5, None));
        assert_eq!(
            s.queue,
            QueueStats {
                pending_count: 2,
                pending_bytes: 30,
                max_bytes: 100,
                oldest_enqueued_at_ms: Some(4),
                dead_count: 1,
                last_delivery_at_ms: None,
                last_error: Some(LastError {
                    message: "m".into(),
                    at_ms: 3
                }),
                ..QueueStats::default()
            }
        );
        std::fs::write(status_path(tmp.path()), b"{").unwrap();
        assert_eq!(read_status(tmp.path()), None);
        std::fs::write(status_path(tmp.path()), br#"{"v":"2","pid":1}"#).unwrap();
        assert_eq!(read_status(tmp.path()), None);
    }
}
