//! Reading: the pending entries the sender delivers ([`Outbox::pending`], oldest first) and the
//! service's `state` entries ([`Outbox::state_get`], [`Outbox::state_scan`]).

use sled::IVec;

use super::commit::StateEntry;
use super::format::{self, Envelope};
use super::store::{decode_entry, remove_stale_order_key, Inner};
use super::{Outbox, QueueError};
use crate::clock::now_ms;

/// A pending entry as read by [`Outbox::pending`]. It keeps the exact stored bytes, so
/// [`Outbox::ack`] can tell whether the entry changed since it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub(super) envelope: Envelope,
    pub(super) stored: IVec,
}

impl Pending {
    pub(super) fn new(envelope: Envelope, stored: IVec) -> Pending {
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

impl Outbox {
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

    /// Up to `limit` `state` entries whose key starts with `prefix` and sorts after `after`
    /// (from the first with `None`; `after` includes the prefix), in key order: one page of a
    /// scan that holds one page in memory.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn state_after(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, QueueError> {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let mut out = Vec::new();
        for kv in self
            .inner
            .trees
            .state
            .range::<Vec<u8>, _>((start, Bound::Unbounded))
        {
            let (k, v) = kv.map_err(self.inner.storage("state_after"))?;
            if !k.starts_with(prefix) || out.len() == limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The first `limit` `state` entries whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn state_scan_first(
        &self,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<StateEntry>, QueueError> {
        self.inner
            .trees
            .state
            .scan_prefix(prefix)
            .take(limit)
            .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .map_err(self.inner.storage("state_scan"))
    }

    /// How many `state` entries have a key starting with `prefix` (one entry in memory at a
    /// time).
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn state_count(&self, prefix: &[u8]) -> Result<usize, QueueError> {
        let mut n = 0;
        for kv in self.inner.trees.state.scan_prefix(prefix).keys() {
            kv.map_err(self.inner.storage("state_count"))?;
            n += 1;
        }
        Ok(n)
    }
}

impl Inner {
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
