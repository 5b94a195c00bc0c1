//! Dead letters: entries the sink rejected for good ([`Outbox::dead_letter`], a
//! compare-and-swap like an ack, flushed), their listing for `queue list`
//! ([`Outbox::dead_entries`]) and `queue retry-dead` ([`Outbox::retry_dead`]).

use sled::transaction::ConflictableTransactionError;
use sled::IVec;

use super::format::{self, meta_key, Envelope};
use super::read::Pending;
use super::store::Delta;
use super::{Lane, Outbox, QueueError};
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
    /// The lane whose sink refused it; `None` for an undecodable envelope (dead for every lane)
    /// and for entries of layout 1 (the one sink of then).
    pub lane: Option<Lane>,
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
    /// Moves `p`'s version out of `p`'s lane into `dead` with `reason` and the current time, if
    /// the lane still holds exactly the entry `p` was read from (compare-and-swap), then flushes.
    /// The other lanes keep their entries (the record stays in the outbox while one holds it).
    /// The caller logs the event (once, at ERROR).
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub async fn dead_letter(
        &self,
        p: &Pending,
        reason: &str,
    ) -> Result<DeadLetterOutcome, QueueError> {
        let now = now_ms();
        let lane = p.lane();
        let sid = p.session_id().as_bytes();
        let dead = format::Dead {
            session_id: p.session_id().to_string(),
            seq: Some(p.seq()),
            reason: reason.to_string(),
            dead_at: now,
            lane: Some(lane),
            attempts: Some(p.attempts()),
            body: 0,
        };
        let value = format::encode_dead(&dead, &p.stored).map_err(|source| QueueError::Encode {
            session_id: p.session_id().to_string(),
            source,
        })?;
        let key = format::lane_key(lane, sid);
        let (outcome, delta) = self.inner.tx("dead_letter", |t| {
            let mut delta = Delta::default();
            let outcome = match t.lanes.get(&key)? {
                Some(cur) if cur == p.lane_stored => {
                    t.drop_lane_entry(lane, sid, &mut delta)?;
                    t.release_if_unheld(sid, &mut delta)?;
                    // A fresh sequence number keys it: two lanes may refuse one version.
                    let seq = t.take_seqs(1)?;
                    t.dead
                        .insert(format::dead_key(sid, seq), value.as_slice())?;
                    delta.dead_count += 1;
                    delta.lane_dead[lane.index()] += 1;
                    t.bump(meta_key::DEAD_LETTERED_TOTAL, 1)?;
                    let k = meta_key::lane(lane, meta_key::DEAD_LETTERED_TOTAL);
                    let v = t
                        .meta
                        .get(&k)?
                        .and_then(|v| format::decode_u64(&v))
                        .unwrap_or(0)
                        .saturating_add(1);
                    t.meta.insert(k, &v.to_be_bytes()[..])?;
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

    /// Requeues every dead entry whose envelope decodes into its lane (an entry without a lane,
    /// from layout 1, into every configured lane), then flushes; returns how many were requeued.
    /// Latest wins here too, per session:
    /// - the outbox holds the same version (another lane still has it): the lane gets its entry
    ///   back, at the version's place in its FIFO;
    /// - the outbox holds a version at least as new (by `updatedAt`, then `exportedAt`): the dead
    ///   entry is dropped, since the lane has or had newer data;
    /// - otherwise (nothing pending, or an older version): the record is committed again as a
    ///   new version, at the back of the FIFOs, for the entry's lane plus every lane that held
    ///   the older version.
    ///
    /// Among several dead versions of one session the newest ends up pending. Requeued entries
    /// start at attempts 0. Entries whose envelope (or dead header) is undecodable, and entries
    /// of a lane no longer configured, stay in `dead`.
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
            let lanes: Vec<Lane> = match dead.lane {
                Some(l) if self.inner.lanes.contains(&l) => vec![l],
                Some(_) => continue,
                None => self.inner.lanes.clone(),
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
                if let Some(l) = dead.lane {
                    delta.lane_dead[l.index()] -= 1;
                }
                let mut carry: Vec<Lane> = lanes.clone();
                if let Some(cur) = t.outbox.get(sid)? {
                    if let Ok(cur) = format::decode_envelope(&cur) {
                        if cur.seq == old.seq {
                            for &l in &lanes {
                                if t.lanes.get(format::lane_key(l, sid))?.is_none() {
                                    t.put_lane_entry(l, sid, cur.seq, 0, &mut delta)?;
                                }
                            }
                            return Ok((Some(true), delta));
                        }
                        if (cur.updated_at, cur.exported_at) >= (old.updated_at, old.exported_at) {
                            return Ok((Some(false), delta));
                        }
                        for l in Lane::ALL {
                            if !carry.contains(&l)
                                && t.lanes.get(format::lane_key(l, sid))?.is_some()
                            {
                                carry.push(l);
                            }
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
                t.put_pending(sid, seq, new, &carry, &mut delta)?;
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
                lane: d.lane,
                reason: d.reason,
                dead_at_ms: Some(d.dead_at),
                updated_at_ms: env.as_ref().map(|e| e.updated_at),
                enqueued_at_ms: env.as_ref().map(|e| e.enqueued_at),
                attempts: d.attempts.or(env.as_ref().map(|e| e.attempts)),
                record_at: env.as_ref().map(|e| e.body),
                stored,
            }
        }
        Err(reason) => {
            let sid_end = key.len().saturating_sub(9);
            DeadEntry {
                session_id: String::from_utf8_lossy(&key[..sid_end]).into_owned(),
                seq: format::dead_key_seq(key),
                lane: None,
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
