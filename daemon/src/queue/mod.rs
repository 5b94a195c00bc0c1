//! The durable outbox: one pending version per session, kept in sled until the sink confirms it.
//!
//! The service builds a [`crate::export::SessionExport`] per session at the right moments and
//! hands its JSON to [`Outbox::commit`] together with the source cursor / detector state that
//! produced it. The sender takes the oldest entries with [`Outbox::pending`], delivers them and
//! calls [`Outbox::ack`] (delivered) or [`Outbox::dead_letter`] (permanently rejected). The outbox
//! stores record bytes opaquely; it never looks inside them.
//!
//! # Invariants
//! - **Atomic and durable commits.** A [`Commit`] (records + state puts/removes) is one sled
//!   transaction over all trees, followed by `flush_async().await` before `commit` returns. So
//!   the source cursor in `state` is never ahead of the queued records, after any crash, and a
//!   tick counts as done only once it is on disk.
//! - **One pending entry per session, latest wins.** The `outbox` tree is keyed by session id.
//!   Committing a session that already has a pending entry replaces it and moves it to the
//!   **back** of the FIFO with a fresh sequence number (its old `order` key is removed). Moving
//!   it back, rather than keeping its place, means a session that changes constantly cannot keep
//!   the head of the queue busy while other sessions wait, and the order of `order` keys stays
//!   the order of `enqueuedAt`. "Latest" means last committed; the Convex upsert separately
//!   ignores records older than what it has.
//! - **Acks never lose a newer version.** [`Outbox::ack`] removes the entry only if it still holds
//!   exactly the bytes that were read by [`Outbox::pending`] (a compare-and-swap from
//!   `Some(sent bytes)` to `None`); otherwise it returns [`AckOutcome::Superseded`] and the newer
//!   version stays. The compare and the removal of the entry, its `order` key and the counters
//!   happen in one transaction (sled 0.34 runs transactions under a global write lock, so this is
//!   exactly a CAS; `Tree::compare_and_swap` alone could not remove the `order` key atomically).
//! - **Acks are flushed lazily.** Losing an ack in a crash only causes a duplicate delivery, never
//!   a loss, so acks rely on sled's background flush (every 500 ms) and [`Outbox::flush`] at
//!   shutdown. The same holds for [`Outbox::record_attempt`], [`Outbox::record_error`] and
//!   [`Outbox::record_delivery`]. Dead-lettering and [`Outbox::retry_dead`] are flushed.
//! - **Nothing undecodable blocks the queue.** An entry whose envelope cannot be decoded, found by
//!   the pending scan or by the verification at open, moves to `dead` with reason
//!   `undecodable envelope: …`; the rest keeps flowing.
//! - **Bounded, never dropping.** [`Outbox::is_full`] is true once the pending bytes reach
//!   `queue.max_bytes`; the service then stops reading the source (which it can re-read later).
//!   `commit` itself never refuses or drops a record; the service keeps each tick's records
//!   within [`Outbox::free_bytes`] (counted with [`stored_size_bound`]), so the bound is exceeded
//!   by at most one record. `is_full` reads an in-memory counter (O(1)); the counters change in the same
//!   code path as the transactions and are recomputed exactly at every open.
//! - **One instance per directory.** sled holds an exclusive `flock` on `<dir>/db`; a second open
//!   (from another process or the same one) fails with [`QueueError::Locked`].
//! - **Storage errors are fatal.** sled's IO errors are sticky (every later write fails too), so
//!   every [`QueueError::Storage`] is permanent: the service exits non-zero and its service
//!   manager restarts it. The restart reopens and verifies the outbox.
//! - **Corruption is quarantined, not fatal.** [`Outbox::open`] opens sled *and reads every
//!   entry of every tree* (sled 0.34 detects many corrupt pages only when they are read, and
//!   panics on some garbled files). If that fails with corruption, a non-OS IO error or a panic,
//!   the directory is renamed to a sibling `queue.corrupt-<unix seconds>` and a fresh outbox is
//!   created; [`Outbox::rebuild`] reports it, so the service logs it at ERROR and re-reads the
//!   source from scratch (its state was in the quarantined directory too). A fresh outbox that
//!   fails again is an error, so there is no crash loop. OS errors (permission denied, no space)
//!   are not corruption: they fail the open without touching the directory.
//! - **Losing flushed data is corruption, not a crash.** sled recovers the longest valid prefix
//!   of its log and reports nothing, so a damaged log would silently rewind the outbox (and a
//!   damaged start would open as an empty one). Two checks catch that: an outbox that had a log
//!   must recover its `meta/layout` marker (flushed when the outbox is created), and it must
//!   recover at least the sequence number recorded as durable in `status.json` (written only
//!   after completed flushes, outside sled). Either failing quarantines the directory like any
//!   other corruption. Damage past the last flush (a torn tail) loses only unflushed writes, which
//!   a crash may lose anyway.
//! - **Interrupted snapshots are dropped.** sled writes `snap.<n>.generating`, fsyncs and renames
//!   it; a leftover `.generating` file is an interrupted write and is deleted before opening
//!   (sled 0.34 would otherwise pick it and fail), so sled replays from the previous snapshot.
//!
//! # On-disk format
//! One sled 0.34.7 `Db` at `<data_dir>/queue` with five trees, plus a status file beside it:
//! ```text
//! tree    key                                 value
//! outbox  session id (UTF-8)                  envelope (below)
//! order   seq: u64 big-endian                 session id            FIFO index, one per outbox entry
//! state   opaque (the service's)              opaque (the service's)
//! dead    session id, 0x00, seq: u64 BE       dead entry (below)    several versions per session
//! meta    b"layout"                           u64 BE: 1 (layout of these trees)
//!         b"next_seq"                         u64 BE: next sequence number
//!         b"last_delivery_at"                 i64 BE: ms
//!         b"last_error"                       {"v":"1","message":"…","at":<ms>}
//!         b"enqueued_total" / b"acked_total" / b"dead_lettered_total"    u64 BE counters
//!
//! envelope   = header-line 0x0A record-bytes
//!   header V1: {"v":"1","seq":42,"sessionId":"ses_…","updatedAt":<ms>,"exportedAt":<ms>,
//!               "enqueuedAt":<ms>,"attempts":0,"recordLen":<bytes>}
//!   record-bytes: the record JSON exactly as committed (recordLen bytes)
//! dead entry = header-line 0x0A stored-bytes
//!   header V1: {"v":"1","sessionId":"ses_…","seq":42|null,"reason":"…","deadAt":<ms>,"storedLen":<bytes>}
//!   stored-bytes: the outbox value verbatim (an envelope, or the undecodable bytes)
//!
//! <data_dir>/status.json   {"v":"1","pid":…,"writtenAt":<ms>,"pendingCount":…,"pendingBytes":…,
//!                           "maxBytes":…,"oldestEnqueuedAt":<ms>|null,"deadCount":…,
//!                           "lastDeliveryAt":<ms>|null,"lastError":{"message":…,"at":<ms>}|null,
//!                           "committedSeq":<next seq as of the last completed flush>,
//!                           "daemon":{"startedAt":<ms>,"version":…,"configPath":…|null,
//!                                     "dbPath":…,"sink":…,"lastExports":{"session.idle":
//!                                     {"sessionId":…,"at":<ms>},…},"lastReload":{"at":<ms>,
//!                                     "applied":true|false,"message":…}}  (only from `run`)}
//! <data_dir>/queue.corrupt-<unix seconds>[-n]   a quarantined outbox (kept for inspection)
//! ```
//! Headers are `#[serde(tag = "v")]` enums: a format change adds `V2` (and a reader for it) and
//! never edits `V1`. The record is kept *after* the header line rather than embedded as a JSON
//! member so that it stays byte-for-byte what was committed (no re-serialization), the pending
//! scan parses only the small header, and a dead entry can carry undecodable bytes verbatim.
//! Sequence numbers come from `meta/next_seq`, incremented in the same transaction that uses
//! them: contiguous, monotonic in commit order, and never reused (a lost transaction loses its
//! `next_seq` update together with its entries).
//!
//! # Lifecycle
//! 1. [`Outbox::open`]: creates `<data_dir>/queue`, opens sled with `cache_capacity` =
//!    `queue.cache_capacity_bytes` (sled's default, 1 GiB, is far too much for a background
//!    service) and `flush_every_ms` left at sled's default 500 ms: commits flush explicitly, so
//!    the background flush only bounds how long lazily written acks and meta updates stay in
//!    memory (losing them costs duplicates, not data); a shorter period would only add fsyncs.
//!    Then verifies every tree, repairs the `order` index, moves undecodable entries to `dead`,
//!    recomputes the counters, and writes the status file.
//! 2. Running: the service calls [`Outbox::commit`] per tick (skipping source reads while
//!    [`Outbox::is_full`]), the sender [`Outbox::pending`] → deliver → [`Outbox::ack`] /
//!    [`Outbox::record_attempt`] + [`Outbox::record_error`] / [`Outbox::dead_letter`]
//!    ([`Outbox::ack_batch`] acks a whole delivered batch in one transaction).
//!    The status file is rewritten at most once per second, and within about a second of a
//!    change (a trailing write is scheduled on the tokio runtime when one is running).
//! 3. Shutdown: [`Outbox::flush`] (flushes acks and writes the status file), then drop.
//!
//! `opencode-telemetry status` opens the outbox itself when no daemon runs, and reads
//! [`read_status`] when the open fails with [`QueueError::Locked`].
//!
//! sled calls other than the flushes run on the calling thread: they work in memory except on
//! page-cache misses. The status file write (a few hundred bytes, `fsync`ed) also runs inline,
//! at most once per second.

mod error;
mod format;
mod open;
mod status;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree, UnabortableTransactionError,
};
use sled::IVec;

use crate::clock::now_ms;
use crate::config::QueueConfig;

pub use error::QueueError;
pub use format::{stored_size_bound, ENVELOPE_OVERHEAD_BYTES};
pub use status::{
    read_status, status_path, DaemonInfo, LastExport, ReloadOutcome, StatusSnapshot,
    STATUS_FILE_NAME,
};

use format::{meta_key, Envelope};
use status::StatusState;

/// Name of the outbox directory inside the data dir (`<data_dir>/queue`).
pub const QUEUE_DIR_NAME: &str = "queue";

/// The status file is rewritten at most this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Longest `last_error` message kept (bytes); longer ones are cut at a character boundary.
const MAX_ERROR_BYTES: usize = 2048;

/// What one service tick makes durable at once: the records it built and the state changes
/// (source cursor, detector state) that go with them.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Records to enqueue, in order. A session appearing twice keeps only its last record.
    pub records: Vec<NewRecord>,
    /// `state` entries to set (key, value), applied before `state_removes`.
    pub state_puts: Vec<StateEntry>,
    /// `state` keys to remove.
    pub state_removes: Vec<Vec<u8>>,
}

/// A `state` entry: (key, value).
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// One record to enqueue.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The session id (`ses_…`); the outbox key. Must not be empty.
    pub session_id: String,
    /// The record's `updatedAt` (ms); kept in the envelope for `retry_dead` and listings.
    pub updated_at: i64,
    /// The record's `exportedAt` (ms).
    pub exported_at: i64,
    /// The record's JSON, stored and delivered byte for byte. Must not be empty.
    pub json: Vec<u8>,
}

/// A pending entry as read by [`Outbox::pending`]. It keeps the exact stored bytes, so
/// [`Outbox::ack`] can tell whether the entry changed since it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    envelope: Envelope,
    stored: IVec,
}

impl Pending {
    fn new(envelope: Envelope, stored: IVec) -> Pending {
        Pending { envelope, stored }
    }
    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.envelope.session_id
    }
    /// The record JSON, exactly as committed.
    pub fn record_json(&self) -> &[u8] {
        &self.stored[self.envelope.body..]
    }
    /// Sequence number: the entry's FIFO position (unique, increasing in commit order).
    pub fn seq(&self) -> u64 {
        self.envelope.seq
    }
    /// When this version was enqueued (ms, the daemon's clock).
    pub fn enqueued_at_ms(&self) -> i64 {
        self.envelope.enqueued_at
    }
    /// The record's `updatedAt` (ms).
    pub fn updated_at_ms(&self) -> i64 {
        self.envelope.updated_at
    }
    /// The record's `exportedAt` (ms).
    pub fn exported_at_ms(&self) -> i64 {
        self.envelope.exported_at
    }
    /// Failed delivery attempts recorded with [`Outbox::record_attempt`] for this version (a new
    /// version starts at 0).
    pub fn attempts(&self) -> u32 {
        self.envelope.attempts
    }
    /// Size of the stored entry (envelope header + record, bytes).
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

/// What [`Outbox::ack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The entry held the delivered bytes and was removed.
    Acked,
    /// A newer version of the session was committed since it was read; it stays pending.
    Superseded,
    /// Nothing is pending for the session any more (acked or dead-lettered already).
    Missing,
}

/// What [`Outbox::dead_letter`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterOutcome {
    /// The entry held the rejected bytes and was moved to `dead`.
    Moved,
    /// A newer version was committed since it was read; nothing was moved and the newer version
    /// stays pending (it gets its own chance).
    Superseded,
    /// Nothing is pending for the session any more.
    Missing,
}

/// A dead-letter entry, for `queue list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadEntry {
    /// The session id.
    pub session_id: String,
    /// The envelope's sequence number; `None` when the envelope was undecodable.
    pub seq: Option<u64>,
    /// Why it was dead-lettered (the sink's reason, or `undecodable envelope: …`).
    pub reason: String,
    /// When it was dead-lettered (ms); `None` if the dead entry itself is undecodable.
    pub dead_at_ms: Option<i64>,
    /// The record's `updatedAt` (ms), when the envelope decodes.
    pub updated_at_ms: Option<i64>,
    /// The envelope's `enqueuedAt` (ms), when it decodes.
    pub enqueued_at_ms: Option<i64>,
    /// Attempts recorded before it was dead-lettered, when the envelope decodes.
    pub attempts: Option<u32>,
    stored: Vec<u8>,
    record_at: Option<usize>,
}

impl DeadEntry {
    /// The record JSON, when the envelope decodes.
    pub fn record_json(&self) -> Option<&[u8]> {
        self.record_at.map(|at| &self.stored[at..])
    }
    /// The outbox value as it was when dead-lettered (envelope or undecodable bytes).
    pub fn stored_bytes(&self) -> &[u8] {
        &self.stored
    }
}

/// The last error recorded with [`Outbox::record_error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The message (at most 2048 bytes).
    pub message: String,
    /// When it was recorded (ms).
    pub at_ms: i64,
}

/// Counters and times of the outbox, for `status` and logs. Times are epoch ms, sizes bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending entries (at most one per session).
    pub pending_count: u64,
    /// Bytes of the pending entries as stored (envelope header + record). Compared with
    /// `max_bytes` by [`Outbox::is_full`]; sled's files are larger (see `disk_bytes`).
    pub pending_bytes: u64,
    /// `queue.max_bytes`.
    pub max_bytes: u64,
    /// `enqueuedAt` of the oldest pending entry (ms).
    pub oldest_enqueued_at_ms: Option<i64>,
    /// Entries in `dead`.
    pub dead_count: u64,
    /// Last successful delivery (ms).
    pub last_delivery_at_ms: Option<i64>,
    /// Last recorded error.
    pub last_error: Option<LastError>,
    /// Records ever enqueued in this outbox.
    pub enqueued_total: u64,
    /// Acks that removed an entry.
    pub acked_total: u64,
    /// Entries ever moved to `dead`.
    pub dead_lettered_total: u64,
    /// sled's size on disk (`Db::size_on_disk`, bytes).
    pub disk_bytes: u64,
}

/// The outbox was found corrupt at open and rebuilt empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuild {
    /// Where the corrupt directory was moved (`<data_dir>/queue.corrupt-<unix seconds>`).
    pub moved_to: PathBuf,
    /// What was found corrupt.
    pub cause: String,
}

/// The durable outbox. Cheap to clone (all clones share one sled `Db`).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// The sled trees.
pub(crate) struct Trees {
    db: sled::Db,
    outbox: sled::Tree,
    order: sled::Tree,
    state: sled::Tree,
    dead: sled::Tree,
    meta: sled::Tree,
}

/// The trees as seen inside a transaction.
pub(crate) struct Tx<'a> {
    outbox: &'a TransactionalTree,
    order: &'a TransactionalTree,
    state: &'a TransactionalTree,
    dead: &'a TransactionalTree,
    meta: &'a TransactionalTree,
}

type TxResult<T> = ConflictableTransactionResult<T, QueueError>;

/// Counter changes made by a transaction, applied to the in-memory counters after it commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delta {
    pending_count: i64,
    pending_bytes: i64,
    dead_count: i64,
}

impl Delta {
    fn add_pending(&mut self, len: usize) {
        self.pending_count += 1;
        self.pending_bytes += len as i64;
    }
    fn remove_pending(&mut self, len: usize) {
        self.pending_count -= 1;
        self.pending_bytes -= len as i64;
    }
}

struct Inner {
    dir: PathBuf,
    status_path: PathBuf,
    trees: Trees,
    max_bytes: u64,
    pending_count: AtomicI64,
    pending_bytes: AtomicI64,
    dead_count: AtomicI64,
    rebuild: Option<Rebuild>,
    status: Mutex<StatusState>,
    /// `meta/next_seq` as of the last completed flush (see [`StatusSnapshot::committed_seq`]).
    durable_next_seq: std::sync::atomic::AtomicU64,
    /// What the running daemon adds to the status file.
    daemon: Mutex<Option<DaemonInfo>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Trees {
    /// Runs `f` as one transaction over all five trees. `f` may run more than once: it must not
    /// do IO or have side effects.
    fn tx<R>(&self, f: impl Fn(&Tx<'_>) -> TxResult<R>) -> Result<R, TransactionError<QueueError>> {
        (
            &self.outbox,
            &self.order,
            &self.state,
            &self.dead,
            &self.meta,
        )
            .transaction(|(outbox, order, state, dead, meta)| {
                f(&Tx {
                    outbox,
                    order,
                    state,
                    dead,
                    meta,
                })
            })
    }
}

impl Tx<'_> {
    fn meta_u64(&self, key: &[u8]) -> Result<u64, UnabortableTransactionError> {
        Ok(self
            .meta
            .get(key)?
            .and_then(|v| format::decode_u64(&v))
            .unwrap_or(0))
    }

    fn bump(&self, key: &'static [u8], by: u64) -> Result<(), UnabortableTransactionError> {
        if by > 0 {
            let v = self.meta_u64(key)?.saturating_add(by);
            self.meta.insert(key, &v.to_be_bytes()[..])?;
        }
        Ok(())
    }

    /// Hands out `n` consecutive sequence numbers and returns the first.
    fn take_seqs(&self, n: u64) -> Result<u64, UnabortableTransactionError> {
        let first = self.meta_u64(meta_key::NEXT_SEQ)?.max(1);
        self.meta
            .insert(meta_key::NEXT_SEQ, &(first + n).to_be_bytes()[..])?;
        Ok(first)
    }

    /// Puts `stored` (an envelope) for `session_id`, replacing any previous version and its
    /// `order` key.
    fn put_pending(
        &self,
        session_id: &[u8],
        seq: u64,
        stored: Vec<u8>,
        delta: &mut Delta,
    ) -> Result<(), UnabortableTransactionError> {
        let len = stored.len();
        if let Some(prev) = self.outbox.insert(session_id, stored)? {
            delta.remove_pending(prev.len());
            if let Ok(prev) = format::decode_envelope(&prev) {
                let old_key = format::seq_key(prev.seq);
                if self.order.get(old_key)?.as_deref() == Some(session_id) {
                    self.order.remove(&old_key[..])?;
                }
            }
        }
        self.order.insert(&format::seq_key(seq)[..], session_id)?;
        delta.add_pending(len);
        Ok(())
    }

    /// Moves the outbox entry of `key` (if it still holds `stored`) to `dead` under a fresh
    /// sequence number, with `reason`. Removes `order_key` if given.
    fn bury(
        &self,
        key: &[u8],
        stored: &[u8],
        reason: &str,
        order_key: Option<&[u8]>,
        now: i64,
    ) -> TxResult<Delta> {
        let mut delta = Delta::default();
        if self.outbox.get(key)?.as_deref() != Some(stored) {
            return Ok(delta);
        }
        self.outbox.remove(key)?;
        delta.remove_pending(stored.len());
        if let Some(k) = order_key {
            if self.order.get(k)?.as_deref() == Some(key) {
                self.order.remove(k)?;
            }
        }
        let seq = self.take_seqs(1)?;
        let session_id = String::from_utf8_lossy(key).into_owned();
        let dead = format::Dead {
            session_id: session_id.clone(),
            seq: None,
            reason: reason.to_string(),
            dead_at: now,
            body: 0,
        };
        let value = format::encode_dead(&dead, stored).map_err(|source| {
            ConflictableTransactionError::Abort(QueueError::Encode { session_id, source })
        })?;
        self.dead.insert(format::dead_key(key, seq), value)?;
        delta.dead_count += 1;
        self.bump(meta_key::DEAD_LETTERED_TOTAL, 1)?;
        Ok(delta)
    }
}

/// Decodes an outbox entry and checks that it belongs to its key.
fn decode_entry(key: &[u8], value: &[u8]) -> Result<Envelope, String> {
    let env = format::decode_envelope(value)?;
    if env.session_id.as_bytes() != key {
        return Err(format!(
            "session id {:?} in the header does not match the key {:?}",
            env.session_id,
            String::from_utf8_lossy(key)
        ));
    }
    Ok(env)
}

impl Outbox {
    /// Opens (creating if needed) the outbox at `<data_dir>/queue`, verifies it and rebuilds it
    /// if it is corrupt (see the module doc). Check [`Outbox::rebuild`] afterwards.
    ///
    /// # Errors
    /// [`QueueError::Locked`] when another `Outbox` (in any process) has the directory open;
    /// [`QueueError::Open`] for OS errors (permissions, no space) and when a freshly rebuilt
    /// outbox fails too; [`QueueError::Quarantine`], [`QueueError::NewerLayout`],
    /// [`QueueError::CreateDir`].
    pub fn open(data_dir: &Path, config: &QueueConfig) -> Result<Outbox, QueueError> {
        let opened = open::open(data_dir, config.cache_capacity_bytes)?;
        let inner = Arc::new(Inner {
            dir: opened.dir,
            status_path: status_path(data_dir),
            trees: opened.trees,
            max_bytes: config.max_bytes,
            pending_count: AtomicI64::new(opened.counts.pending_count),
            pending_bytes: AtomicI64::new(opened.counts.pending_bytes),
            dead_count: AtomicI64::new(opened.counts.dead_count),
            rebuild: opened.rebuild,
            status: Mutex::new(StatusState::default()),
            durable_next_seq: std::sync::atomic::AtomicU64::new(opened.counts.next_seq),
            daemon: Mutex::new(None),
        });
        let outbox = Outbox { inner };
        outbox.write_status_now();
        Ok(outbox)
    }

    /// The outbox directory (`<data_dir>/queue`).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Set when [`Outbox::open`] found the outbox corrupt, moved it aside and created a fresh
    /// one. The service then logs it at ERROR and re-reads the source from the beginning (its
    /// `state` is empty again).
    pub fn rebuild(&self) -> Option<&Rebuild> {
        self.inner.rebuild.as_ref()
    }

    /// True when [`Outbox::open`] rebuilt the outbox (see [`Outbox::rebuild`]).
    pub fn was_rebuilt(&self) -> bool {
        self.inner.rebuild.is_some()
    }

    /// Enqueues the records and applies the state changes in one transaction, then flushes to
    /// disk. When it returns `Ok`, everything in `c` survives a crash or power loss.
    ///
    /// Each record replaces any pending version of its session and goes to the back of the
    /// FIFO with attempts 0. Never refuses because the outbox is full (see [`Outbox::is_full`]).
    ///
    /// # Errors
    /// [`QueueError::InvalidRecord`] (nothing written) for an empty session id or record;
    /// [`QueueError::Storage`] when sled fails (permanent).
    pub async fn commit(&self, c: Commit) -> Result<(), QueueError> {
        for r in &c.records {
            let reason = if r.session_id.is_empty() {
                Some("the session id is empty")
            } else if r.json.is_empty() {
                Some("the record is empty")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(QueueError::InvalidRecord {
                    session_id: r.session_id.clone(),
                    reason,
                });
            }
        }
        let now = now_ms();
        let delta = self.inner.tx("commit", |t| {
            let n = c.records.len() as u64;
            let first = if n > 0 { t.take_seqs(n)? } else { 0 };
            let mut delta = Delta::default();
            for (seq, r) in (first..).zip(&c.records) {
                let env = Envelope {
                    seq,
                    session_id: r.session_id.clone(),
                    updated_at: r.updated_at,
                    exported_at: r.exported_at,
                    enqueued_at: now,
                    attempts: 0,
                    body: 0,
                };
                let stored = format::encode_envelope(&env, &r.json).map_err(|source| {
                    ConflictableTransactionError::Abort(QueueError::Encode {
                        session_id: r.session_id.clone(),
                        source,
                    })
                })?;
                t.put_pending(r.session_id.as_bytes(), seq, stored, &mut delta)?;
            }
            for (k, v) in &c.state_puts {
                t.state.insert(k.as_slice(), v.as_slice())?;
            }
            for k in &c.state_removes {
                t.state.remove(k.as_slice())?;
            }
            t.bump(meta_key::ENQUEUED_TOTAL, n)?;
            Ok(delta)
        })?;
        self.inner.apply(delta);
        self.inner.flush("commit").await?;
        self.touch_status();
        Ok(())
    }

    /// Up to `limit` pending entries, oldest first (FIFO by sequence number). Undecodable
    /// entries met on the way are moved to `dead` and skipped; stale index keys are removed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn pending(&self, limit: usize) -> Result<Vec<Pending>, QueueError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for kv in self.inner.trees.order.iter() {
            let (key, sid) = kv.map_err(self.inner.storage("pending"))?;
            match self.inner.resolve(&key, &sid)? {
                Some(p) => out.push(p),
                None => continue,
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Removes the entry `p` was read from, if it still holds exactly `p`'s bytes, and records
    /// the delivery time in `meta` (whatever the outcome: the server did accept `p`). Not
    /// flushed (see the module doc): call [`Outbox::flush`] at shutdown.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn ack(&self, p: &Pending) -> Result<AckOutcome, QueueError> {
        let outcomes = self.ack_batch(std::slice::from_ref(p)).await?;
        Ok(outcomes.first().copied().unwrap_or(AckOutcome::Missing))
    }

    /// [`Outbox::ack`] for every entry of a delivered batch, in one transaction (an ack costs
    /// a transaction, so a batch of 50 is much cheaper acked at once). Returns one outcome per
    /// entry, in order.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn ack_batch(&self, ps: &[Pending]) -> Result<Vec<AckOutcome>, QueueError> {
        let now = now_ms();
        let (outcomes, delta) = self.inner.tx("ack", |t| {
            let mut delta = Delta::default();
            let mut outcomes = Vec::with_capacity(ps.len());
            let mut acked = 0;
            for p in ps {
                let sid = p.session_id().as_bytes();
                outcomes.push(match t.outbox.get(sid)? {
                    Some(cur) if cur == p.stored => {
                        t.outbox.remove(sid)?;
                        t.order.remove(&format::seq_key(p.seq())[..])?;
                        delta.remove_pending(cur.len());
                        acked += 1;
                        AckOutcome::Acked
                    }
                    Some(_) => AckOutcome::Superseded,
                    None => AckOutcome::Missing,
                });
            }
            t.bump(meta_key::ACKED_TOTAL, acked)?;
            t.meta
                .insert(meta_key::LAST_DELIVERY_AT, &now.to_be_bytes()[..])?;
            Ok((outcomes, delta))
        })?;
        self.inner.apply(delta);
        self.touch_status();
        Ok(outcomes)
    }

    /// Records one more failed delivery attempt on `p`'s entry (if it still holds `p`'s bytes)
    /// and returns the updated entry, which replaces `p` for a later [`Outbox::ack`]. `None`
    /// when the entry changed or is gone. Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_attempt(&self, p: &Pending) -> Result<Option<Pending>, QueueError> {
        let mut env = p.envelope.clone();
        env.attempts = env.attempts.saturating_add(1);
        let stored = format::encode_envelope(&env, p.record_json()).map_err(|source| {
            QueueError::Encode {
                session_id: p.session_id().to_string(),
                source,
            }
        })?;
        let sid = p.session_id().as_bytes();
        let (done, delta) = self.inner.tx("record_attempt", |t| {
            let mut delta = Delta::default();
            if t.outbox.get(sid)?.as_ref() != Some(&p.stored) {
                return Ok((false, delta));
            }
            t.outbox.insert(sid, stored.as_slice())?;
            delta.pending_bytes = stored.len() as i64 - p.stored.len() as i64;
            Ok((true, delta))
        })?;
        self.inner.apply(delta);
        if !done {
            return Ok(None);
        }
        env.body = stored.len() - p.record_json().len();
        Ok(Some(Pending::new(env, IVec::from(stored))))
    }

    /// Moves `p`'s entry to `dead` with `reason` and the current time, if it still holds `p`'s
    /// bytes (compare-and-swap), then flushes. The caller logs the event (once, at ERROR).
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn dead_letter(
        &self,
        p: &Pending,
        reason: &str,
    ) -> Result<DeadLetterOutcome, QueueError> {
        let now = now_ms();
        let sid = p.session_id().as_bytes();
        let dead = format::Dead {
            session_id: p.session_id().to_string(),
            seq: Some(p.seq()),
            reason: reason.to_string(),
            dead_at: now,
            body: 0,
        };
        let value = format::encode_dead(&dead, &p.stored).map_err(|source| QueueError::Encode {
            session_id: p.session_id().to_string(),
            source,
        })?;
        let (outcome, delta) = self.inner.tx("dead_letter", |t| {
            let mut delta = Delta::default();
            let outcome = match t.outbox.get(sid)? {
                Some(cur) if cur == p.stored => {
                    t.outbox.remove(sid)?;
                    t.order.remove(&format::seq_key(p.seq())[..])?;
                    delta.remove_pending(cur.len());
                    t.dead
                        .insert(format::dead_key(sid, p.seq()), value.as_slice())?;
                    delta.dead_count += 1;
                    t.bump(meta_key::DEAD_LETTERED_TOTAL, 1)?;
                    DeadLetterOutcome::Moved
                }
                Some(_) => DeadLetterOutcome::Superseded,
                None => DeadLetterOutcome::Missing,
            };
            Ok((outcome, delta))
        })?;
        self.inner.apply(delta);
        if outcome == DeadLetterOutcome::Moved {
            self.inner.flush("dead_letter").await?;
        }
        self.touch_status();
        Ok(outcome)
    }

    /// All dead-letter entries, by session id then sequence number.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn dead_entries(&self) -> Result<Vec<DeadEntry>, QueueError> {
        let mut out = Vec::new();
        for kv in self.inner.trees.dead.iter() {
            let (key, value) = kv.map_err(self.inner.storage("dead_entries"))?;
            out.push(dead_entry(&key, &value));
        }
        Ok(out)
    }

    /// Requeues every dead entry whose envelope decodes, then flushes; returns how many were
    /// requeued. Latest wins here too: a dead entry whose record is not newer than the pending
    /// entry of its session (by `updatedAt`, then `exportedAt`) is dropped instead, since the
    /// pending one will deliver newer data. Among several dead versions of one session the
    /// newest ends up pending. Requeued entries go to the back of the FIFO with attempts 0.
    /// Entries whose envelope (or dead header) is undecodable stay in `dead`.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn retry_dead(&self) -> Result<usize, QueueError> {
        let now = now_ms();
        let mut requeued = 0;
        let mut changed = false;
        let entries: Vec<(IVec, IVec)> = self
            .inner
            .trees
            .dead
            .iter()
            .collect::<Result<_, _>>()
            .map_err(self.inner.storage("retry_dead"))?;
        for (key, value) in entries {
            let Ok(dead) = format::decode_dead(&value) else {
                continue;
            };
            let stored = &value[dead.body..];
            let Ok(old) = format::decode_envelope(stored) else {
                continue;
            };
            let record = &stored[old.body..];
            let sid = old.session_id.as_bytes();
            let (requeue, delta) = self.inner.tx("retry_dead", |t| {
                let mut delta = Delta::default();
                if t.dead.get(&key)?.as_ref() != Some(&value) {
                    return Ok((None, delta));
                }
                t.dead.remove(&key)?;
                delta.dead_count -= 1;
                if let Some(cur) = t.outbox.get(sid)? {
                    if let Ok(cur) = format::decode_envelope(&cur) {
                        if (cur.updated_at, cur.exported_at) >= (old.updated_at, old.exported_at) {
                            return Ok((Some(false), delta));
                        }
                    }
                }
                let seq = t.take_seqs(1)?;
                let env = Envelope {
                    seq,
                    enqueued_at: now,
                    attempts: 0,
                    ..old.clone()
                };
                let new = format::encode_envelope(&env, record).map_err(|source| {
                    ConflictableTransactionError::Abort(QueueError::Encode {
                        session_id: old.session_id.clone(),
                        source,
                    })
                })?;
                t.put_pending(sid, seq, new, &mut delta)?;
                t.bump(meta_key::ENQUEUED_TOTAL, 1)?;
                Ok((Some(true), delta))
            })?;
            self.inner.apply(delta);
            changed |= requeue.is_some();
            if requeue == Some(true) {
                requeued += 1;
            }
        }
        if changed {
            self.inner.flush("retry_dead").await?;
            self.touch_status();
        }
        Ok(requeued)
    }

    /// Records the last delivery error (shown by `status`; messages over 2048 bytes are cut).
    /// Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_error(&self, msg: &str) -> Result<(), QueueError> {
        let mut end = msg.len().min(MAX_ERROR_BYTES);
        while !msg.is_char_boundary(end) {
            end -= 1;
        }
        let record = format::LastErrorRecord::V1 {
            message: msg[..end].to_string(),
            at: now_ms(),
        };
        let bytes = serde_json::to_vec(&record).map_err(|source| QueueError::Encode {
            session_id: String::new(),
            source,
        })?;
        self.inner
            .trees
            .meta
            .insert(meta_key::LAST_ERROR, bytes)
            .map_err(self.inner.storage("record_error"))?;
        self.touch_status();
        Ok(())
    }

    /// Records a successful delivery at `at_ms` (epoch ms). [`Outbox::ack`] records one too.
    /// Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_delivery(&self, at_ms: i64) -> Result<(), QueueError> {
        self.inner
            .trees
            .meta
            .insert(meta_key::LAST_DELIVERY_AT, &at_ms.to_be_bytes()[..])
            .map_err(self.inner.storage("record_delivery"))?;
        self.touch_status();
        Ok(())
    }

    /// Counters and times for `status` (see [`OutboxStats`]).
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn stats(&self) -> Result<OutboxStats, QueueError> {
        let inner = &self.inner;
        let meta = &inner.trees.meta;
        let get = |key: &[u8]| meta.get(key).map_err(inner.storage("stats"));
        let counter = |key: &[u8]| -> Result<u64, QueueError> {
            Ok(get(key)?.and_then(|v| format::decode_u64(&v)).unwrap_or(0))
        };
        let last_error = get(meta_key::LAST_ERROR)?
            .and_then(|v| serde_json::from_slice::<format::LastErrorRecord>(&v).ok())
            .map(|r| match r {
                format::LastErrorRecord::V1 { message, at } => LastError { message, at_ms: at },
            });
        Ok(OutboxStats {
            pending_count: inner.pending_count(),
            pending_bytes: inner.pending_bytes(),
            max_bytes: inner.max_bytes,
            oldest_enqueued_at_ms: self.oldest_enqueued_at()?,
            dead_count: clamp(inner.dead_count.load(Ordering::Relaxed)),
            last_delivery_at_ms: get(meta_key::LAST_DELIVERY_AT)?
                .and_then(|v| format::decode_i64(&v)),
            last_error,
            enqueued_total: counter(meta_key::ENQUEUED_TOTAL)?,
            acked_total: counter(meta_key::ACKED_TOTAL)?,
            dead_lettered_total: counter(meta_key::DEAD_LETTERED_TOTAL)?,
            disk_bytes: inner
                .trees
                .db
                .size_on_disk()
                .map_err(inner.storage("stats"))?,
        })
    }

    /// The outbox as `status` shows it (the same snapshot the status file holds), stamped with
    /// this process and now.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn snapshot(&self) -> Result<StatusSnapshot, QueueError> {
        let s = self.stats()?;
        Ok(StatusSnapshot {
            pid: std::process::id(),
            written_at_ms: now_ms(),
            pending_count: s.pending_count,
            pending_bytes: s.pending_bytes,
            max_bytes: s.max_bytes,
            oldest_enqueued_at_ms: s.oldest_enqueued_at_ms,
            dead_count: s.dead_count,
            last_delivery_at_ms: s.last_delivery_at_ms,
            last_error: s.last_error,
            committed_seq: Some(self.inner.durable_next_seq.load(Ordering::Acquire)),
            daemon: lock(&self.inner.daemon).clone(),
        })
    }

    /// Sets what the running daemon adds to the status file (see [`DaemonInfo`]) and rewrites
    /// the file (throttled like every other change).
    pub fn set_daemon_info(&self, info: DaemonInfo) {
        *lock(&self.inner.daemon) = Some(info);
        self.touch_status();
    }

    /// Changes the daemon's part of the status file in place (no-op before
    /// [`Outbox::set_daemon_info`]).
    pub fn update_daemon_info(&self, f: impl FnOnce(&mut DaemonInfo)) {
        if let Some(info) = lock(&self.inner.daemon).as_mut() {
            f(info);
        }
        self.touch_status();
    }

    /// True when the pending bytes reached `queue.max_bytes`: the service stops reading the
    /// source until deliveries make room. O(1) (an in-memory counter).
    pub fn is_full(&self) -> bool {
        self.inner.pending_bytes() >= self.inner.max_bytes
    }

    /// Bytes left before the outbox is full (`queue.max_bytes` minus the pending bytes). O(1).
    pub fn free_bytes(&self) -> u64 {
        self.inner
            .max_bytes
            .saturating_sub(self.inner.pending_bytes())
    }

    /// Reads one `state` entry.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn state_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .inner
            .trees
            .state
            .get(key)
            .map_err(self.inner.storage("state_get"))?
            .map(|v| v.to_vec()))
    }

    /// All `state` entries whose key starts with `prefix` (all of them for an empty prefix), in
    /// key order.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn state_scan(&self, prefix: &[u8]) -> Result<Vec<StateEntry>, QueueError> {
        self.inner
            .trees
            .state
            .scan_prefix(prefix)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(self.inner.storage("state_scan"))
    }

    /// Flushes everything written so far (acks, attempts, meta) to disk and rewrites the status
    /// file. Call it at shutdown.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.inner.flush("flush").await?;
        self.write_status_now();
        Ok(())
    }

    /// `enqueuedAt` of the first valid entry in `order`.
    fn oldest_enqueued_at(&self) -> Result<Option<i64>, QueueError> {
        for kv in self.inner.trees.order.iter() {
            let (key, sid) = kv.map_err(self.inner.storage("stats"))?;
            let Some(seq) = format::parse_seq_key(&key) else {
                continue;
            };
            let Some(value) = self
                .inner
                .trees
                .outbox
                .get(&sid)
                .map_err(self.inner.storage("stats"))?
            else {
                continue;
            };
            if let Ok(env) = decode_entry(&sid, &value) {
                if env.seq == seq {
                    return Ok(Some(env.enqueued_at));
                }
            }
        }
        Ok(None)
    }

    /// Marks the status file dirty and writes it if the last write is a second old; otherwise
    /// schedules a trailing write on the tokio runtime (if one is running).
    fn touch_status(&self) {
        let mut st = lock(&self.inner.status);
        st.dirty = true;
        let wait = st.last_write.map_or(Duration::ZERO, |t| {
            STATUS_INTERVAL.saturating_sub(t.elapsed())
        });
        if wait.is_zero() {
            self.write_status_locked(&mut st);
            return;
        }
        if st.trailing {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            st.trailing = true;
            let weak = Arc::downgrade(&self.inner);
            handle.spawn(async move {
                tokio::time::sleep(wait).await;
                if let Some(inner) = weak.upgrade() {
                    let outbox = Outbox { inner };
                    let mut st = lock(&outbox.inner.status);
                    st.trailing = false;
                    if st.dirty {
                        outbox.write_status_locked(&mut st);
                    }
                }
            });
        }
    }

    fn write_status_now(&self) {
        let mut st = lock(&self.inner.status);
        self.write_status_locked(&mut st);
    }

    fn write_status_locked(&self, st: &mut StatusState) {
        st.last_write = Some(Instant::now());
        let result = self.snapshot().map_err(|e| e.to_string()).and_then(|snap| {
            status::write_status_file(&self.inner.status_path, &snap).map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => {
                st.dirty = false;
                if st.failing {
                    st.failing = false;
                    tracing::info!(path = %self.inner.status_path.display(), "status file written again");
                }
            }
            Err(error) => {
                if !st.failing {
                    st.failing = true;
                    tracing::warn!(path = %self.inner.status_path.display(), %error, "cannot write the status file; `status` may show stale data");
                }
            }
        }
    }

    #[cfg(test)]
    fn trees(&self) -> &Trees {
        &self.inner.trees
    }
}

/// Builds a [`DeadEntry`] from a `dead` key and value (tolerating undecodable ones).
fn dead_entry(key: &[u8], value: &[u8]) -> DeadEntry {
    match format::decode_dead(value) {
        Ok(d) => {
            let stored = value[d.body..].to_vec();
            let env = format::decode_envelope(&stored).ok();
            DeadEntry {
                session_id: d.session_id,
                seq: d.seq,
                reason: d.reason,
                dead_at_ms: Some(d.dead_at),
                updated_at_ms: env.as_ref().map(|e| e.updated_at),
                enqueued_at_ms: env.as_ref().map(|e| e.enqueued_at),
                attempts: env.as_ref().map(|e| e.attempts),
                record_at: env.as_ref().map(|e| e.body),
                stored,
            }
        }
        Err(reason) => {
            let sid_end = key.len().saturating_sub(9);
            DeadEntry {
                session_id: String::from_utf8_lossy(&key[..sid_end]).into_owned(),
                seq: format::dead_key_seq(key),
                reason: format!("undecodable dead entry: {reason}"),
                dead_at_ms: None,
                updated_at_ms: None,
                enqueued_at_ms: None,
                attempts: None,
                stored: value.to_vec(),
                record_at: None,
            }
        }
    }
}

fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Inner {
    fn storage(&self, op: &'static str) -> impl Fn(sled::Error) -> QueueError + '_ {
        move |source| QueueError::Storage {
            dir: self.dir.clone(),
            op,
            source,
        }
    }

    fn tx<R>(&self, op: &'static str, f: impl Fn(&Tx<'_>) -> TxResult<R>) -> Result<R, QueueError> {
        self.trees.tx(f).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(source) => self.storage(op)(source),
        })
    }

    async fn flush(&self, op: &'static str) -> Result<(), QueueError> {
        // Everything applied before the flush starts is durable once it returns.
        let next_seq = self
            .trees
            .meta
            .get(meta_key::NEXT_SEQ)
            .map_err(self.storage(op))?
            .and_then(|v| format::decode_u64(&v));
        self.trees
            .db
            .flush_async()
            .await
            .map(drop)
            .map_err(self.storage(op))?;
        if let Some(seq) = next_seq {
            self.durable_next_seq.fetch_max(seq, Ordering::AcqRel);
        }
        Ok(())
    }

    fn apply(&self, d: Delta) {
        self.pending_count
            .fetch_add(d.pending_count, Ordering::Relaxed);
        self.pending_bytes
            .fetch_add(d.pending_bytes, Ordering::Relaxed);
        self.dead_count.fetch_add(d.dead_count, Ordering::Relaxed);
    }

    fn pending_count(&self) -> u64 {
        clamp(self.pending_count.load(Ordering::Relaxed))
    }

    fn pending_bytes(&self) -> u64 {
        clamp(self.pending_bytes.load(Ordering::Relaxed))
    }

    /// Resolves one `order` entry to its pending entry. Undecodable entries go to `dead` and
    /// stale keys are removed (both in transactions that re-check what they saw); those yield
    /// `None`.
    fn resolve(&self, key: &IVec, sid: &IVec) -> Result<Option<Pending>, QueueError> {
        let seq = format::parse_seq_key(key);
        let value = self
            .trees
            .outbox
            .get(sid)
            .map_err(self.storage("pending"))?;
        if let (Some(seq), Some(value)) = (seq, value) {
            match decode_entry(sid, &value) {
                Ok(env) if env.seq == seq => return Ok(Some(Pending::new(env, value))),
                Ok(_) => {}
                Err(reason) => {
                    let now = now_ms();
                    let reason = format!("undecodable envelope: {reason}");
                    let delta =
                        self.tx("pending", |t| t.bury(sid, &value, &reason, Some(key), now))?;
                    self.apply(delta);
                    return Ok(None);
                }
            }
        }
        self.tx("pending", |t| remove_stale_order_key(t, key, sid))?;
        Ok(None)
    }
}

/// Removes `order[key]` if it still points to `sid` and `sid`'s entry does not have that
/// sequence number (so the key indexes nothing).
fn remove_stale_order_key(t: &Tx<'_>, key: &[u8], sid: &[u8]) -> TxResult<()> {
    if t.order.get(key)?.as_deref() != Some(sid) {
        return Ok(());
    }
    let valid = match (format::parse_seq_key(key), t.outbox.get(sid)?) {
        (Some(seq), Some(value)) => decode_entry(sid, &value).is_ok_and(|e| e.seq == seq),
        _ => false,
    };
    if !valid {
        t.order.remove(key)?;
    }
    Ok(())
}
