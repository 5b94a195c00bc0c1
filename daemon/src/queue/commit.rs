//! Committing: the records a tick built and the state that produced them, in one transaction,
//! flushed before [`Outbox::commit`] returns.

use sled::transaction::ConflictableTransactionError;

use super::format::{self, meta_key, Envelope};
use super::store::Delta;
use super::{Lane, Outbox, QueueError};
use crate::clock::now_ms;

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

impl Outbox {
    /// Enqueues the records and applies the state changes in one transaction, then flushes to
    /// disk. When it returns `Ok`, everything in `c` survives a crash or power loss.
    ///
    /// Each record replaces any pending version of its session and goes to the back of every
    /// configured lane's FIFO with attempts 0 (its bytes stored once). Never refuses because the outbox is full (see [`Outbox::is_full`]).
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
                t.put_pending(
                    r.session_id.as_bytes(),
                    seq,
                    stored,
                    &self.inner.lanes,
                    &mut delta,
                )?;
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
        self.inner.changed();
        Ok(())
    }
}

impl Outbox {
    /// Gives `lane` alone the records of sessions the outbox holds nothing for (each a new
    /// version, at the back of that lane's FIFO), applies the state changes, in one transaction,
    /// flushed; returns how many were enqueued. A session with a pending entry is skipped: its
    /// entry is newer than the record, or as new, and reaches `lane` anyway. For filling a sink
    /// added to an existing outbox (the local store, from the records the tracker kept) without
    /// resending them anywhere else. `lane` must be configured.
    ///
    /// # Errors
    /// As [`Outbox::commit`]; [`QueueError::InvalidRecord`] also when `lane` is not configured.
    pub async fn commit_to_lane(&self, lane: Lane, c: Commit) -> Result<usize, QueueError> {
        if !self.inner.lanes.contains(&lane) {
            return Err(QueueError::InvalidRecord {
                session_id: String::new(),
                reason: "the lane is not configured",
            });
        }
        for r in &c.records {
            if r.session_id.is_empty() || r.json.is_empty() {
                return Err(QueueError::InvalidRecord {
                    session_id: r.session_id.clone(),
                    reason: "the session id or the record is empty",
                });
            }
        }
        let now = now_ms();
        let (n, delta) = self.inner.tx("commit_to_lane", |t| {
            let mut delta = Delta::default();
            let mut n = 0u64;
            for r in &c.records {
                let sid = r.session_id.as_bytes();
                if t.outbox.get(sid)?.is_some() {
                    continue;
                }
                let seq = t.take_seqs(1)?;
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
                t.put_pending(sid, seq, stored, &[lane], &mut delta)?;
                n += 1;
            }
            for (k, v) in &c.state_puts {
                t.state.insert(k.as_slice(), v.as_slice())?;
            }
            for k in &c.state_removes {
                t.state.remove(k.as_slice())?;
            }
            t.bump(meta_key::ENQUEUED_TOTAL, n)?;
            Ok((n, delta))
        })?;
        self.inner.apply(delta);
        self.inner.flush("commit_to_lane").await?;
        self.inner.changed();
        Ok(n as usize)
    }
}
