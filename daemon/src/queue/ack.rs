//! Acknowledging: removing exactly the version the sink confirmed (a compare-and-swap), and
//! the delivery bookkeeping the sender records on the way ([`Outbox::record_attempt`],
//! [`Outbox::record_delivery`], [`Outbox::record_error`]). None of these is flushed (see "Acks
//! are flushed lazily" in the module doc).

use sled::IVec;

use super::format::{self, meta_key};
use super::read::Pending;
use super::store::Delta;
use super::{Lane, Outbox, QueueError};
use crate::clock::now_ms;

/// Longest `last_error` message kept (bytes); longer ones are cut at a character boundary.
const MAX_ERROR_BYTES: usize = 2048;

/// What [`Outbox::ack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The lane held the delivered version; it was removed from the lane (and the record from
    /// the outbox when no other lane holds it).
    Acked,
    /// A newer version of the session was committed since it was read; it stays pending.
    Superseded,
    /// Nothing is pending for the session in that lane any more (acked or dead-lettered
    /// already).
    Missing,
}

impl Outbox {
    /// Removes `p`'s version from `p`'s lane, if the lane still holds exactly the entry `p` was
    /// read from (compare-and-swap), and the record from the outbox once no lane holds it; records
    /// the delivery time in `meta` (whatever the outcome: the sink did accept `p`). Not flushed
    /// (see the module doc): call [`Outbox::flush`] at shutdown.
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
            let mut released = 0;
            let mut acked = [0u64; 3];
            for p in ps {
                let sid = p.session_id().as_bytes();
                let key = format::lane_key(p.lane, sid);
                outcomes.push(match t.lanes.get(&key)? {
                    Some(cur) if cur == p.lane_stored => {
                        t.drop_lane_entry(p.lane, sid, &mut delta)?;
                        if t.release_if_unheld(sid, &mut delta)? {
                            released += 1;
                        }
                        acked[p.lane.index()] += 1;
                        AckOutcome::Acked
                    }
                    Some(_) => AckOutcome::Superseded,
                    None => AckOutcome::Missing,
                });
            }
            t.bump(meta_key::ACKED_TOTAL, released)?;
            t.meta
                .insert(meta_key::LAST_DELIVERY_AT, &now.to_be_bytes()[..])?;
            for lane in Lane::ALL {
                if ps.iter().any(|p| p.lane == lane) {
                    t.meta.insert(
                        meta_key::lane(lane, meta_key::LAST_DELIVERY_AT),
                        &now.to_be_bytes()[..],
                    )?;
                }
                let n = acked[lane.index()];
                if n > 0 {
                    let key = meta_key::lane(lane, meta_key::ACKED_TOTAL);
                    let v = t
                        .meta
                        .get(&key)?
                        .and_then(|v| format::decode_u64(&v))
                        .unwrap_or(0)
                        .saturating_add(n);
                    t.meta.insert(key, &v.to_be_bytes()[..])?;
                }
            }
            Ok((outcomes, delta))
        })?;
        self.inner.apply(delta);
        self.inner.changed();
        Ok(outcomes)
    }

    /// Records one more failed delivery attempt on `p`'s lane entry (if it still is the one `p`
    /// was read from) and returns the updated entry, which replaces `p` for a later
    /// [`Outbox::ack`]. `None` when the entry changed or is gone. Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_attempt(&self, p: &Pending) -> Result<Option<Pending>, QueueError> {
        let attempts = p.attempts.saturating_add(1);
        let entry = format::encode_lane_entry(p.seq(), attempts);
        let key = format::lane_key(p.lane, p.session_id().as_bytes());
        let done = self.inner.tx("record_attempt", |t| {
            if t.lanes.get(&key)?.as_ref() != Some(&p.lane_stored) {
                return Ok(false);
            }
            t.lanes.insert(key.as_slice(), entry.as_slice())?;
            Ok(true)
        })?;
        if !done {
            return Ok(None);
        }
        Ok(Some(Pending {
            lane_stored: IVec::from(entry),
            attempts,
            ..p.clone()
        }))
    }

    /// Records the last delivery error of `lane` (shown by `status`; messages over 2048 bytes are
    /// cut); it is also the outbox's last error. Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_error(&self, lane: Lane, msg: &str) -> Result<(), QueueError> {
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
        let meta = &self.inner.trees.meta;
        meta.insert(meta_key::lane(lane, meta_key::LAST_ERROR), bytes.as_slice())
            .and_then(|_| meta.insert(meta_key::LAST_ERROR, bytes))
            .map_err(self.inner.storage("record_error"))?;
        self.inner.changed();
        Ok(())
    }

    /// Records a successful delivery of `lane` at `at_ms` (epoch ms). [`Outbox::ack`] records
    /// one too. Not flushed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn record_delivery(&self, lane: Lane, at_ms: i64) -> Result<(), QueueError> {
        let meta = &self.inner.trees.meta;
        let at = at_ms.to_be_bytes();
        meta.insert(meta_key::lane(lane, meta_key::LAST_DELIVERY_AT), &at[..])
            .and_then(|_| meta.insert(meta_key::LAST_DELIVERY_AT, &at[..]))
            .map_err(self.inner.storage("record_delivery"))?;
        self.inner.changed();
        Ok(())
    }
}
