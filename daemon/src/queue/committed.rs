//! The committed high-water mark: `<data_dir>/queue/committed.json`, the outbox's next sequence
//! number as of its last completed flush, kept outside sled's files so that [`super::open`] can
//! tell a damaged log (sled silently recovers an earlier prefix) from an intact one (see "Losing
//! flushed data is corruption" in the module doc).
//!
//! Written only after a completed flush (so it never claims more than is on disk), atomically
//! ([`crate::atomic_file`]), at open,
//! at [`super::Outbox::flush`], and otherwise at most once per second: a flush within the second
//! after the last write schedules a trailing write on the tokio runtime (when one is running).
//! A file that lags behind only weakens the check, never makes it fire wrongly. It lives inside
//! the outbox directory, so a quarantined directory keeps its own mark and a fresh one starts
//! without.
//!
//! Builds before this file kept the mark as `committedSeq` in `<data_dir>/status.json`; when
//! `committed.json` is missing, [`read_legacy`] reads that field instead, once: the open that
//! uses it writes `committed.json`.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::format::{CommittedFile, LegacyStatusFile};
use super::store::{lock, Inner};
use crate::clock::now_ms;

/// File name of the high-water mark inside the outbox directory.
pub(crate) const COMMITTED_FILE_NAME: &str = "committed.json";

/// Where builds before [`COMMITTED_FILE_NAME`] kept the mark (`committedSeq`), in the data dir.
const LEGACY_STATUS_FILE_NAME: &str = "status.json";

/// The file is rewritten at most this often (except at open and [`super::Outbox::flush`]).
const INTERVAL: Duration = Duration::from_secs(1);

/// Throttle state of the writer (guarded by a mutex in [`Inner`]).
#[derive(Debug, Default)]
pub(crate) struct CommittedState {
    /// When the file was last written (or a write last failed).
    last_write: Option<Instant>,
    /// The value last written.
    written: Option<u64>,
    /// A trailing write is scheduled on the tokio runtime.
    trailing: bool,
    /// The last write failed (logged once until a write succeeds again).
    failing: bool,
}

/// `<dir>/committed.json` for the outbox directory `dir`.
pub(crate) fn committed_path(dir: &Path) -> PathBuf {
    dir.join(COMMITTED_FILE_NAME)
}

/// The mark in `<dir>/committed.json`; `None` when it is missing or undecodable.
pub(crate) fn read(dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(committed_path(dir)).ok()?;
    match serde_json::from_slice::<CommittedFile>(&bytes).ok()? {
        CommittedFile::V1 { committed_seq, .. } => Some(committed_seq),
    }
}

/// `committedSeq` of `<data_dir>/status.json` as builds before `committed.json` wrote it;
/// `None` when absent (later builds' status files do not carry it).
pub(crate) fn read_legacy(data_dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join(LEGACY_STATUS_FILE_NAME)).ok()?;
    serde_json::from_slice::<LegacyStatusFile>(&bytes)
        .ok()?
        .committed_seq
}

/// Writes `<dir>/committed.json` atomically ([`crate::atomic_file`]).
fn write(dir: &Path, committed_seq: u64) -> std::io::Result<()> {
    let file = CommittedFile::V1 {
        committed_seq,
        written_at: now_ms(),
    };
    let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
    crate::atomic_file::write(&committed_path(dir), &bytes)
}

impl Inner {
    /// After a completed flush: writes the mark if the last write is a second old; otherwise
    /// schedules a trailing write on the tokio runtime (if one is running).
    pub(super) fn touch_committed(&self) {
        let mut st = lock(&self.committed);
        if st.written == Some(self.durable_next_seq.load(Ordering::Acquire)) {
            return;
        }
        let wait = st
            .last_write
            .map_or(Duration::ZERO, |t| INTERVAL.saturating_sub(t.elapsed()));
        if wait.is_zero() {
            self.write_committed_locked(&mut st);
            return;
        }
        if st.trailing {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            st.trailing = true;
            let weak = self.this.clone();
            handle.spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(inner) = weak.upgrade() {
                    let mut st = lock(&inner.committed);
                    st.trailing = false;
                    inner.write_committed_locked(&mut st);
                }
            });
        }
    }

    /// Writes the mark now (at open and at [`super::Outbox::flush`]) unless it is unchanged.
    pub(super) fn write_committed_now(&self) {
        let mut st = lock(&self.committed);
        self.write_committed_locked(&mut st);
    }

    fn write_committed_locked(&self, st: &mut CommittedState) {
        let seq = self.durable_next_seq.load(Ordering::Acquire);
        if st.written == Some(seq) {
            return;
        }
        st.last_write = Some(Instant::now());
        match write(&self.dir, seq) {
            Ok(()) => {
                st.written = Some(seq);
                if st.failing {
                    st.failing = false;
                    tracing::info!(path = %committed_path(&self.dir).display(), "the outbox's high-water mark is written again");
                }
            }
            Err(error) => {
                if !st.failing {
                    st.failing = true;
                    tracing::warn!(path = %committed_path(&self.dir).display(), %error, "cannot write the outbox's high-water mark; damage to its log may go unnoticed");
                }
            }
        }
    }
}
