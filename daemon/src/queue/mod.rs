//! The durable outbox: one pending version per session, kept in sled until every sink (each
//! through its own lane) confirmed it.
//!
//! The service builds a [`crate::export::SessionExport`] per session at the right moments and
//! hands its JSON to [`Outbox::commit`] together with the source cursor / detector state that
//! produced it. Each sink's sender takes the oldest entries of its [`Lane`] with
//! [`Outbox::pending`], delivers them and calls [`Outbox::ack`] (delivered) or
//! [`Outbox::dead_letter`] (permanently rejected) — for that lane only. The outbox
//! stores record bytes opaquely; it never looks inside them, and it depends on no other layer:
//! what a status file shows is the daemon's business, built from [`Outbox::stats`] whenever
//! [`Outbox::changes`] says something changed.
//!
//! # Layout, by role
//! - `mod.rs` (here): [`Outbox`], opening it, [`Outbox::flush`], [`Outbox::is_full`],
//!   [`Outbox::free_bytes`];
//! - `commit.rs`: [`Commit`], [`NewRecord`], [`Outbox::commit`] (records + state, one
//!   transaction, flushed, into every configured lane), [`Outbox::commit_to_lane`] (into one
//!   lane, for sessions with nothing pending: filling a sink added later);
//! - `read.rs`: [`Pending`], [`Outbox::pending`], [`Outbox::state_get`],
//!   [`Outbox::state_scan`], [`Outbox::state_after`] (a page at a time);
//! - `ack.rs`: [`Outbox::ack`], [`Outbox::ack_batch`] (compare-and-swap removal) and the
//!   delivery bookkeeping: [`Outbox::record_attempt`], [`Outbox::record_delivery`],
//!   [`Outbox::record_error`];
//! - `dead.rs`: [`Outbox::dead_letter`], [`Outbox::dead_entries`] ([`DeadEntry`]),
//!   [`Outbox::retry_dead`];
//! - `stats.rs`: [`QueueStats`], the one description of the counters, and
//!   [`Outbox::changes`];
//! - `open.rs`: lock, verification of every tree, repair, quarantine;
//! - `committed.rs`: the committed high-water mark file (`committed.json`);
//! - `store.rs`: the trees, the transaction over all of them, the in-memory counters;
//! - `format.rs`: every persisted byte format; `error.rs`: [`QueueError`].
//!
//! # Lanes
//! Every configured sink has a lane ([`Lane`]: the local store always, Convex when configured,
//! the deprecated NDJSON file while `[local] path` is set), given to [`Outbox::open_lanes`].
//! - **Stored once, delivered per lane.** A commit stores the record's envelope once in `outbox`
//!   and gives every configured lane an entry for that version (`lanes`, with the lane's
//!   attempts) and a key in the lane's FIFO (`lane_order`). Each lane reads its own FIFO, so a
//!   sink that is down, slow or refusing never holds back another: its lane grows while the
//!   others drain.
//! - **Acks, attempts and dead letters are per lane**, each a compare-and-swap on the lane's
//!   entry (the bytes [`Outbox::pending`] read): an ack or a dead letter removes that lane's
//!   entry only; the envelope leaves `outbox` in the same transaction as the last lane's. A newer
//!   commit replaces the entries of every lane, so an ack of an older version is
//!   [`AckOutcome::Superseded`] in whichever lane sends it.
//! - **Counters per lane** ([`LaneStats`]: depth, oldest, dead letters, last delivery and
//!   error, totals) beside the outbox's own ([`QueueStats`]; `pending_count`/`pending_bytes`
//!   count each record once, and `queue.max_bytes` bounds those).
//! - **The set of lanes is fixed per open.** Entries of a lane that is no longer configured
//!   are dropped at open (one WARN per lane with their number) and a record no remaining lane
//!   holds leaves: removing `[convex]` means "stop sending there". A record no lane holds for
//!   any other reason (not expected) is given to every configured lane again, never dropped.
//! - **Upgrading keeps everything.** An outbox of layout 1 (one `order` FIFO, no lanes) is
//!   migrated at open in one transaction: every entry becomes pending in every configured lane
//!   with its attempts, `order` is emptied and `meta/layout` set to 2. A crash before that
//!   transaction is flushed leaves layout 1, migrated again at the next open. Layout-1 dead
//!   letters carry no lane: [`Outbox::retry_dead`] gives them to every configured lane.
//!
//! # Invariants
//! - **Atomic and durable commits.** A [`Commit`] (records + state puts/removes) is one sled
//!   transaction over all trees, followed by `flush_async().await` before `commit` returns. So
//!   the source cursor in `state` is never ahead of the queued records, after any crash, and a
//!   tick counts as done only once sled has written it. "Written" survives a process crash;
//!   against a power cut sled's flush is weaker (`sync_file_range`, a full `fsync` every
//!   500 ms, blob files not synced): the last moments' commits can be lost together with their
//!   state, and the source is re-read for them (see the README's delivery guarantee).
//! - **One pending entry per session, latest wins.** The `outbox` tree is keyed by session id.
//!   Committing a session that already has a pending entry replaces it and moves it to the
//!   **back** of every lane's FIFO with a fresh sequence number (its old keys are removed). Moving
//!   it back, rather than keeping its place, means a session that changes constantly cannot keep
//!   the head of the queue busy while other sessions wait, and the order of `order` keys stays
//!   the order of `enqueuedAt`. "Latest" means last committed; the Convex upsert separately
//!   ignores records older than what it has.
//! - **Acks never lose a newer version.** [`Outbox::ack`] removes the lane's entry only if it
//!   still holds exactly the bytes that were read by [`Outbox::pending`] (a compare-and-swap
//!   from `Some(read bytes)` to `None`); otherwise it returns [`AckOutcome::Superseded`] and the
//!   newer version stays. The compare and the removal of the lane entry, its `lane_order` key,
//!   the envelope when no lane holds it any more, and the counters happen in one transaction
//!   (sled 0.34 runs transactions under a global write lock, so this is exactly a CAS;
//!   `Tree::compare_and_swap` alone could not remove the other keys atomically).
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
//!   fails again is an error, so there is no crash loop. Something that is not a directory at
//!   `<data_dir>/queue` (a file, a dangling symlink) is moved aside the same way. OS errors
//!   (permission denied, no space) are not corruption: they fail the open without touching the
//!   directory, and the ones no restart can fix ([`QueueError::is_unusable_location`]: the data
//!   dir is a file, permission denied, a read-only file system) make the CLI exit 78.
//! - **Losing flushed data is corruption, not a crash.** sled recovers the longest valid prefix
//!   of its log and reports nothing, so a damaged log would silently rewind the outbox (and a
//!   damaged start would open as an empty one). Two checks catch that: an outbox that had a log
//!   must recover its `meta/layout` marker (flushed when the outbox is created), and it must
//!   recover at least the sequence number recorded as durable in `committed.json` (the
//!   high-water mark, written only after completed flushes, outside sled's files).
//!   Either failing quarantines the directory like any other corruption. Damage past the last
//!   flush (a torn tail) loses only unflushed writes, which a crash may lose anyway.
//! - **Interrupted snapshots are dropped.** sled writes `snap.<n>.generating`, fsyncs and renames
//!   it; a leftover `.generating` file is an interrupted write and is deleted before opening
//!   (sled 0.34 would otherwise pick it and fail), so sled replays from the previous snapshot.
//!
//! # On-disk format
//! One sled 0.34.7 `Db` at `<data_dir>/queue` with seven trees (layout 2), plus the high-water
//! mark file in the same directory:
//! ```text
//! tree        key                                 value
//! outbox      session id (UTF-8)                  envelope (below): the record, once
//! lanes       lane, 0x00, session id              lane entry {"v":"1","seq":42,"attempts":0}:
//!                                                 the version this lane has still to deliver
//! lane_order  lane, 0x00, seq: u64 BE             session id        each lane's FIFO
//! order       seq: u64 BE                         session id        layout 1's FIFO; empty
//!                                                                   once migrated
//! state       opaque (the service's)              opaque (the service's)
//! dead        session id, 0x00, seq: u64 BE       dead entry (below)    several per session
//! meta        b"layout"                           u64 BE: 2 (layout of these trees; 1 before
//!                                                 lanes)
//!             b"next_seq"                         u64 BE: next sequence number
//!             b"last_delivery_at"                 i64 BE: ms (any lane)
//!             b"last_error"                       {"v":"1","message":"…","at":<ms>} (any lane)
//!             b"enqueued_total" / b"acked_total" / b"dead_lettered_total"    u64 BE counters
//!                                                 (acked: records every lane acknowledged)
//!             b"lane/<lane>/last_delivery_at", b"lane/<lane>/last_error",
//!             b"lane/<lane>/acked_total", b"lane/<lane>/dead_lettered_total"   the same per lane
//!
//! lane       = "store" | "convex" | "ndjson" (UTF-8, never containing 0x00)
//! envelope   = header-line 0x0A record-bytes
//!   header V2: {"v":"2","seq":42,"sessionId":"ses_…","updatedAt":<ms>,"exportedAt":<ms>,
//!               "enqueuedAt":<ms>,"recordLen":<bytes>}            (attempts are per lane)
//!   header V1: as V2 with "v":"1" and "attempts":<n> (layout 1; still read)
//!   record-bytes: the record JSON exactly as committed (recordLen bytes)
//! dead entry = header-line 0x0A stored-bytes
//!   header V2: {"v":"2","sessionId":"ses_…","seq":42|null,"lane":"convex" (absent: every
//!               lane),"attempts":<n>,"reason":"…","deadAt":<ms>,"storedLen":<bytes>}
//!   header V1: {"v":"1","sessionId":"ses_…","seq":42|null,"reason":"…","deadAt":<ms>,
//!               "storedLen":<bytes>}                              (layout 1; still read)
//!   stored-bytes: the outbox value verbatim (an envelope, or the undecodable bytes)
//!
//! <data_dir>/queue/committed.json   {"v":"1","committedSeq":<next seq as of a completed flush>,
//!                                    "writtenAt":<ms>}   (temp file + fsync + rename)
//! <data_dir>/queue.corrupt-<unix seconds>[-n]   a quarantined outbox (kept for inspection)
//! ```
//! A lane entry's `seq` is the envelope's: one sequence number per version, so a lane's FIFO
//! key, its entry and the envelope agree exactly when the lane still has that version to
//! deliver; [`Outbox::open`] removes any key or entry that does not (and re-indexes entries
//! missing their key). A dead entry is keyed by a fresh sequence number (two lanes may refuse
//! one version); its header keeps the version's.
//! Headers are `#[serde(tag = "v")]` enums: a format change adds `V2` (and a reader for it) and
//! never edits `V1`. The record is kept *after* the header line rather than embedded as a JSON
//! member so that it stays byte-for-byte what was committed (no re-serialization), the pending
//! scan parses only the small header, and a dead entry can carry undecodable bytes verbatim.
//! Sequence numbers come from `meta/next_seq`, incremented in the same transaction that uses
//! them: contiguous, monotonic in commit order, and never reused (a lost transaction loses its
//! `next_seq` update together with its entries).
//!
//! Builds before `committed.json` kept the high-water mark as `committedSeq` in
//! `<data_dir>/status.json`; [`Outbox::open`] reads it from there when `committed.json` is
//! missing (once: that open writes `committed.json`), so an upgrade keeps the check.
//!
//! # Lifecycle
//! 1. [`Outbox::open`]: creates `<data_dir>/queue`, opens sled with `cache_capacity` =
//!    `queue.cache_capacity_bytes` (sled's default, 1 GiB, is far too much for a background
//!    service) and `flush_every_ms` left at sled's default 500 ms: commits flush explicitly, so
//!    the background flush only bounds how long lazily written acks and meta updates stay in
//!    memory (losing them costs duplicates, not data); a shorter period would only add fsyncs.
//!    Then verifies every tree (migrating layout 1), repairs the lane entries and `lane_order`,
//!    moves undecodable entries to `dead`, drops unconfigured lanes, recomputes the counters,
//!    and writes `committed.json`.
//! 2. Running: the service calls [`Outbox::commit`] per tick (skipping source reads while
//!    [`Outbox::is_full`]), each lane's sender [`Outbox::pending`] → deliver → [`Outbox::ack`] /
//!    [`Outbox::record_attempt`] + [`Outbox::record_error`] / [`Outbox::dead_letter`]
//!    ([`Outbox::ack_batch`] acks a whole delivered batch in one transaction).
//!    `committed.json` is rewritten after flushes, at most once per second (a trailing write is
//!    scheduled on the tokio runtime when one is running).
//! 3. Shutdown: [`Outbox::flush`] (flushes acks and writes `committed.json`), then drop.
//!
//! sled calls other than the flushes run on the calling thread: they work in memory except on
//! page-cache misses. The `committed.json` write (a few dozen bytes, `fsync`ed) also runs
//! inline, at most once per second.

mod ack;
mod commit;
mod committed;
mod dead;
mod error;
mod format;
mod lane;
mod open;
mod read;
mod stats;
mod store;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use crate::config::QueueConfig;

pub use ack::AckOutcome;
pub use commit::{Commit, NewRecord, StateEntry};
pub use dead::{DeadEntry, DeadLetterOutcome};
pub use error::QueueError;
pub use format::{stored_size_bound, ENVELOPE_OVERHEAD_BYTES};
pub use lane::Lane;
pub use read::Pending;
pub use stats::{LaneStats, LastError, QueueStats};

use store::Inner;
#[cfg(test)]
use store::Trees;

/// Name of the outbox directory inside the data dir (`<data_dir>/queue`).
pub const QUEUE_DIR_NAME: &str = "queue";

/// Keys of the `state` tree that [`Outbox::open`] does not read while it verifies the outbox:
/// the service's last records (`record/<id>`), large and read only when a session is deleted.
/// Reading them all at every start would cost memory in proportion to the history (see
/// `touch_every_page` in `open.rs`); a damaged one is found when it is read, as an error for
/// that read alone.
pub const LAZY_STATE_PREFIX: &[u8] = b"record/";

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

impl Outbox {
    /// [`Outbox::open_lanes`] with the one lane [`Lane::Store`].
    ///
    /// # Errors
    /// As [`Outbox::open_lanes`].
    pub fn open(data_dir: &Path, config: &QueueConfig) -> Result<Outbox, QueueError> {
        Outbox::open_lanes(data_dir, config, &[Lane::Store])
    }

    /// [`Outbox::open_lanes`] for a command that inspects or repairs the outbox without
    /// delivering (`status`, `queue …`): entries of lanes not in `lanes` are kept as they are
    /// (counted nowhere, delivered by nobody here), so running it with another config loses
    /// nothing; only the daemon and `once` drop them.
    ///
    /// # Errors
    /// As [`Outbox::open_lanes`].
    pub fn open_keeping(
        data_dir: &Path,
        config: &QueueConfig,
        lanes: &[Lane],
    ) -> Result<Outbox, QueueError> {
        Outbox::open_with(data_dir, config, lanes, true)
    }

    /// Opens (creating if needed) the outbox at `<data_dir>/queue` with the configured `lanes`
    /// (each configured sink's; commits put records into all of them), verifies it, migrates an
    /// outbox of layout 1, and rebuilds it if it is corrupt (see the module doc). Check
    /// [`Outbox::rebuild`] afterwards. Entries of a lane not in `lanes` are dropped (one WARN
    /// per lane with their number): that sink is no longer configured.
    ///
    /// # Errors
    /// [`QueueError::Locked`] when another `Outbox` (in any process) has the directory open;
    /// [`QueueError::Open`] for OS errors (permissions, no space) and when a freshly rebuilt
    /// outbox fails too; [`QueueError::Quarantine`], [`QueueError::NewerLayout`],
    /// [`QueueError::CreateDir`].
    pub fn open_lanes(
        data_dir: &Path,
        config: &QueueConfig,
        lanes: &[Lane],
    ) -> Result<Outbox, QueueError> {
        Outbox::open_with(data_dir, config, lanes, false)
    }

    fn open_with(
        data_dir: &Path,
        config: &QueueConfig,
        lanes: &[Lane],
        keep_unconfigured: bool,
    ) -> Result<Outbox, QueueError> {
        let mut lanes: Vec<Lane> = lanes.to_vec();
        lanes.sort();
        lanes.dedup();
        let opened = open::open(
            data_dir,
            config.cache_capacity_bytes,
            &lanes,
            keep_unconfigured,
        )?;
        for (lane, n) in &opened.counts.dropped {
            tracing::warn!(lane = %lane, records = n, "this sink is no longer configured: the records still pending for it were dropped from the outbox");
        }
        if let Some(n) = opened.counts.migrated {
            tracing::info!(records = n, lanes = ?lanes.iter().map(|l| l.as_str()).collect::<Vec<_>>(), "outbox migrated to one lane per sink (layout 2)");
        }
        let c = &opened.counts;
        let atomics = |v: [i64; 3]| v.map(AtomicI64::new);
        let inner = Arc::new_cyclic(|this| Inner {
            this: this.clone(),
            dir: opened.dir,
            trees: opened.trees,
            max_bytes: config.max_bytes,
            pending_count: AtomicI64::new(c.pending_count),
            pending_bytes: AtomicI64::new(c.pending_bytes),
            dead_count: AtomicI64::new(c.dead_count),
            lane_pending: atomics(c.lane_pending),
            lane_dead: atomics(c.lane_dead),
            lanes,
            rebuild: opened.rebuild,
            durable_next_seq: AtomicU64::new(c.next_seq),
            committed: Mutex::default(),
            changes: tokio::sync::watch::Sender::new(0),
        });
        inner.write_committed_now();
        Ok(Outbox { inner })
    }

    /// The configured lanes, in [`Lane::ALL`] order.
    pub fn lanes(&self) -> &[Lane] {
        &self.inner.lanes
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

    /// Flushes everything written so far (acks, attempts, meta) to disk and writes the
    /// committed high-water mark. Call it at shutdown.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn flush(&self) -> Result<(), QueueError> {
        self.inner.flush("flush").await?;
        self.inner.write_committed_now();
        Ok(())
    }

    #[cfg(test)]
    fn trees(&self) -> &Trees {
        &self.inner.trees
    }
}
