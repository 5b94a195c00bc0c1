//! Dead letters: entries the sink rejected for good ([`Outbox::dead_letter`], a
//! compare-and-swap like an ack, flushed), their listing for `queue list`
//! ([`Outbox::dead_entries`]) and `queue retry-dead` ([`Outbox::retry_dead`]).

use sled::transaction::ConflictableTransactionError;
use sled::IVec;

use super::format::{self, meta_key, Envelope};
use super::read::Pending;
use super::store::Delta;
use super::{Outbox, QueueError};
use crate::clock::now_ms;

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

impl Outbox {
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
        self.inner.changed();
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
            self.inner.changed();
        }
        Ok(requeued)
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
