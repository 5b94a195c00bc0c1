//! Acknowledging: removing exactly the version the sink confirmed (a compare-and-swap), and
//! the delivery bookkeeping the sender records on the way ([`Outbox::record_attempt`],
//! [`Outbox::record_delivery`], [`Outbox::record_error`]). None of these is flushed (see "Acks
//! are flushed lazily" in the module doc).

use sled::IVec;

use super::format::{self, meta_key};
use super::read::Pending;
use super::store::Delta;
use super::{Outbox, QueueError};
use crate::clock::now_ms;

/// Longest `last_error` message kept (bytes); longer ones are cut at a character boundary.
const MAX_ERROR_BYTES: usize = 2048;

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

impl Outbox {
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
        self.inner.changed();
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
        self.inner.changed();
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
        self.inner.changed();
        Ok(())
    }
}
