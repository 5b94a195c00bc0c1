//! The plumbing every role shares: the sled trees ([`Trees`]), one transaction over all of them
//! ([`Tx`]), the counter changes a transaction makes ([`Delta`]), and the state behind an
//! [`super::Outbox`] handle ([`Inner`]: the trees, the in-memory counters, the change signal,
//! the flush that advances the committed high-water mark).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, Weak};

use sled::transaction::{
    ConflictableTransactionError, ConflictableTransactionResult, TransactionError, Transactional,
    TransactionalTree, UnabortableTransactionError,
};

use super::committed::CommittedState;
use super::format::{self, meta_key, Envelope};
use super::{Lane, QueueError, Rebuild};

/// The sled trees.
pub(crate) struct Trees {
    pub(super) db: sled::Db,
    /// Session id → envelope: each record's bytes, once.
    pub(super) outbox: sled::Tree,
    /// `lane_order` (layout 2): `<lane> 0x00 seq` → session id, one FIFO per lane.
    pub(super) order: sled::Tree,
    /// `lanes` (layout 2): `<lane> 0x00 session id` → lane entry (the version still to deliver).
    pub(super) lanes: sled::Tree,
    /// `order` of layout 1 (seq → session id), emptied by the migration to layout 2.
    pub(super) legacy_order: sled::Tree,
    pub(super) state: sled::Tree,
    pub(super) dead: sled::Tree,
    pub(super) meta: sled::Tree,
}

/// The trees as seen inside a transaction.
pub(crate) struct Tx<'a> {
    pub(super) outbox: &'a TransactionalTree,
    pub(super) order: &'a TransactionalTree,
    pub(super) lanes: &'a TransactionalTree,
    pub(super) legacy_order: &'a TransactionalTree,
    pub(super) state: &'a TransactionalTree,
    pub(super) dead: &'a TransactionalTree,
    pub(super) meta: &'a TransactionalTree,
}

pub(crate) type TxResult<T> = ConflictableTransactionResult<T, QueueError>;

/// Counter changes made by a transaction, applied to the in-memory counters after it commits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Delta {
    /// Outbox entries (sessions with a record held by at least one lane).
    pub(super) pending_count: i64,
    /// Their stored bytes.
    pub(super) pending_bytes: i64,
    pub(super) dead_count: i64,
    /// Entries per lane, by [`Lane::index`].
    pub(super) lane_pending: [i64; 3],
    /// Dead entries per lane (`None`-lane entries count in no lane).
    pub(super) lane_dead: [i64; 3],
}

impl Delta {
    pub(super) fn add_pending(&mut self, len: usize) {
        self.pending_count += 1;
        self.pending_bytes += len as i64;
    }
    pub(super) fn remove_pending(&mut self, len: usize) {
        self.pending_count -= 1;
        self.pending_bytes -= len as i64;
    }
}

/// What every clone of an [`super::Outbox`] shares.
pub(crate) struct Inner {
    /// This `Inner` itself, for the trailing write of the committed high-water mark.
    pub(super) this: Weak<Inner>,
    /// `<data_dir>/queue`.
    pub(super) dir: PathBuf,
    pub(super) trees: Trees,
    /// `queue.max_bytes`.
    pub(super) max_bytes: u64,
    pub(super) pending_count: AtomicI64,
    pub(super) pending_bytes: AtomicI64,
    pub(super) dead_count: AtomicI64,
    /// Entries per lane, by [`Lane::index`].
    pub(super) lane_pending: [AtomicI64; 3],
    /// Dead entries per lane.
    pub(super) lane_dead: [AtomicI64; 3],
    /// The lanes a commit puts records into (the configured sinks').
    pub(super) lanes: Vec<Lane>,
    pub(super) rebuild: Option<Rebuild>,
    /// `meta/next_seq` as of the last completed flush: everything below it is durable.
    pub(super) durable_next_seq: AtomicU64,
    /// Throttle state of the committed high-water mark file (see [`super::committed`]).
    pub(super) committed: Mutex<CommittedState>,
    /// Bumped by every change [`super::Outbox::stats`] would show (see
    /// [`super::Outbox::changes`]).
    pub(super) changes: tokio::sync::watch::Sender<u64>,
}

/// Locks a mutex, ignoring poisoning (the guarded state stays consistent across a panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A counter read as u64 (negative only transiently; read as 0).
pub(super) fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Trees {
    /// Runs `f` as one transaction over all seven trees. `f` may run more than once: it must
    /// not do IO or have side effects.
    pub(super) fn tx<R>(
        &self,
        f: impl Fn(&Tx<'_>) -> TxResult<R>,
    ) -> Result<R, TransactionError<QueueError>> {
        (
            &self.outbox,
            &self.order,
            &self.lanes,
            &self.legacy_order,
            &self.state,
            &self.dead,
            &self.meta,
        )
            .transaction(|(outbox, order, lanes, legacy_order, state, dead, meta)| {
                f(&Tx {
                    outbox,
                    order,
                    lanes,
                    legacy_order,
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

    /// Adds `by` to the u64 counter `meta[key]`.
    pub(super) fn bump(
        &self,
        key: &'static [u8],
        by: u64,
    ) -> Result<(), UnabortableTransactionError> {
        if by > 0 {
            let v = self.meta_u64(key)?.saturating_add(by);
            self.meta.insert(key, &v.to_be_bytes()[..])?;
        }
        Ok(())
    }

    /// Hands out `n` consecutive sequence numbers and returns the first.
    pub(super) fn take_seqs(&self, n: u64) -> Result<u64, UnabortableTransactionError> {
        let first = self.meta_u64(meta_key::NEXT_SEQ)?.max(1);
        self.meta
            .insert(meta_key::NEXT_SEQ, &(first + n).to_be_bytes()[..])?;
        Ok(first)
    }

    /// Puts `stored` (an envelope of sequence number `seq`) for `session_id`, pending in each of
    /// `lanes`: replaces any previous version, its lane entries (in every lane, so a lane no
    /// longer configured drops the older version too) and their `lane_order` keys.
    pub(super) fn put_pending(
        &self,
        session_id: &[u8],
        seq: u64,
        stored: Vec<u8>,
        lanes: &[Lane],
        delta: &mut Delta,
    ) -> Result<(), UnabortableTransactionError> {
        let len = stored.len();
        if let Some(prev) = self.outbox.insert(session_id, stored)? {
            delta.remove_pending(prev.len());
        }
        for lane in Lane::ALL {
            self.drop_lane_entry(lane, session_id, delta)?;
        }
        for &lane in lanes {
            self.put_lane_entry(lane, session_id, seq, 0, delta)?;
        }
        delta.add_pending(len);
        Ok(())
    }

    /// Sets `lane`'s entry for `session_id` to version `seq` with `attempts` (and its
    /// `lane_order` key), replacing one it had.
    pub(super) fn put_lane_entry(
        &self,
        lane: Lane,
        session_id: &[u8],
        seq: u64,
        attempts: u32,
        delta: &mut Delta,
    ) -> Result<(), UnabortableTransactionError> {
        self.drop_lane_entry(lane, session_id, delta)?;
        self.lanes.insert(
            format::lane_key(lane, session_id),
            format::encode_lane_entry(seq, attempts),
        )?;
        self.order
            .insert(format::lane_order_key(lane, seq), session_id)?;
        delta.lane_pending[lane.index()] += 1;
        Ok(())
    }

    /// Removes `lane`'s entry for `session_id` and its `lane_order` key, if it has one. Returns
    /// whether it had one.
    pub(super) fn drop_lane_entry(
        &self,
        lane: Lane,
        session_id: &[u8],
        delta: &mut Delta,
    ) -> Result<bool, UnabortableTransactionError> {
        let Some(old) = self.lanes.remove(format::lane_key(lane, session_id))? else {
            return Ok(false);
        };
        delta.lane_pending[lane.index()] -= 1;
        if let Ok(old) = format::decode_lane_entry(&old) {
            let key = format::lane_order_key(lane, old.seq());
            if self.order.get(&key)?.as_deref() == Some(session_id) {
                self.order.remove(key)?;
            }
        }
        Ok(true)
    }

    /// True when some lane still has an entry for `session_id`.
    pub(super) fn held_by_any_lane(
        &self,
        session_id: &[u8],
    ) -> Result<bool, UnabortableTransactionError> {
        for lane in Lane::ALL {
            if self
                .lanes
                .get(format::lane_key(lane, session_id))?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes the outbox entry of `session_id` when no lane holds it any more.
    pub(super) fn release_if_unheld(
        &self,
        session_id: &[u8],
        delta: &mut Delta,
    ) -> Result<bool, UnabortableTransactionError> {
        if self.held_by_any_lane(session_id)? {
            return Ok(false);
        }
        match self.outbox.remove(session_id)? {
            Some(v) => {
                delta.remove_pending(v.len());
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Moves the outbox entry of `key` (if it still holds `stored`) to `dead` under a fresh
    /// sequence number, with `reason`, for every lane (an undecodable envelope is no lane's):
    /// removes all its lane entries.
    pub(super) fn bury(
        &self,
        key: &[u8],
        stored: &[u8],
        reason: &str,
        now: i64,
    ) -> TxResult<Delta> {
        let mut delta = Delta::default();
        if self.outbox.get(key)?.as_deref() != Some(stored) {
            return Ok(delta);
        }
        self.outbox.remove(key)?;
        delta.remove_pending(stored.len());
        for lane in Lane::ALL {
            self.drop_lane_entry(lane, key, &mut delta)?;
        }
        let seq = self.take_seqs(1)?;
        let session_id = String::from_utf8_lossy(key).into_owned();
        let dead = format::Dead {
            session_id: session_id.clone(),
            seq: None,
            reason: reason.to_string(),
            dead_at: now,
            lane: None,
            attempts: None,
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
pub(super) fn decode_entry(key: &[u8], value: &[u8]) -> Result<Envelope, String> {
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

/// Removes `lane_order[key]` if it still points to `sid` and `sid`'s lane entry in that lane
/// (or its outbox entry) does not have that sequence number, so the key indexes nothing.
pub(super) fn remove_stale_order_key(t: &Tx<'_>, key: &[u8], sid: &[u8]) -> TxResult<()> {
    if t.order.get(key)?.as_deref() != Some(sid) {
        return Ok(());
    }
    let valid = match format::split_lane_key(key) {
        Some((lane, rest)) => match (
            format::parse_seq_key(rest),
            t.lanes.get(format::lane_key(lane, sid))?,
            t.outbox.get(sid)?,
        ) {
            (Some(seq), Some(entry), Some(value)) => {
                format::decode_lane_entry(&entry).is_ok_and(|e| e.seq() == seq)
                    && decode_entry(sid, &value).is_ok_and(|e| e.seq == seq)
            }
            _ => false,
        },
        None => false,
    };
    if !valid {
        t.order.remove(key)?;
    }
    Ok(())
}

impl Inner {
    /// Wraps a sled error of operation `op` as [`QueueError::Storage`].
    pub(super) fn storage(&self, op: &'static str) -> impl Fn(sled::Error) -> QueueError + '_ {
        move |source| QueueError::Storage {
            dir: self.dir.clone(),
            op,
            source,
        }
    }

    /// Runs `f` as one transaction over all trees (see [`Trees::tx`]).
    pub(super) fn tx<R>(
        &self,
        op: &'static str,
        f: impl Fn(&Tx<'_>) -> TxResult<R>,
    ) -> Result<R, QueueError> {
        self.trees.tx(f).map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(source) => self.storage(op)(source),
        })
    }

    /// Flushes sled to disk; then everything applied before the call is durable, and the
    /// committed high-water mark advances (its file is rewritten at most once per second, see
    /// [`super::committed`]).
    pub(super) async fn flush(&self, op: &'static str) -> Result<(), QueueError> {
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
        self.touch_committed();
        Ok(())
    }

    /// Applies a committed transaction's counter changes.
    pub(super) fn apply(&self, d: Delta) {
        self.pending_count
            .fetch_add(d.pending_count, Ordering::Relaxed);
        self.pending_bytes
            .fetch_add(d.pending_bytes, Ordering::Relaxed);
        self.dead_count.fetch_add(d.dead_count, Ordering::Relaxed);
        for i in 0..3 {
            self.lane_pending[i].fetch_add(d.lane_pending[i], Ordering::Relaxed);
            self.lane_dead[i].fetch_add(d.lane_dead[i], Ordering::Relaxed);
        }
    }

    /// Signals a change of what [`super::Outbox::stats`] shows.
    pub(super) fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn pending_count(&self) -> u64 {
        clamp(self.pending_count.load(Ordering::Relaxed))
    }

    pub(super) fn pending_bytes(&self) -> u64 {
        clamp(self.pending_bytes.load(Ordering::Relaxed))
    }
}
