//! Reading: the pending entries the sender delivers ([`Outbox::pending`], oldest first) and the
//! service's `state` entries ([`Outbox::state_get`], [`Outbox::state_scan`]).

use sled::IVec;

use super::commit::StateEntry;
use super::format::{self, Envelope};
use super::store::{decode_entry, remove_stale_order_key, Inner};
use super::{Lane, Outbox, QueueError};
use crate::clock::now_ms;

/// A pending entry as read by [`Outbox::pending`]. It keeps the exact stored bytes, so
/// [`Outbox::ack`] can tell whether the entry changed since it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub(super) lane: Lane,
    pub(super) envelope: Envelope,
    pub(super) stored: IVec,
    /// The lane entry as read (the compare of the lane's compare-and-swap).
    pub(super) lane_stored: IVec,
    pub(super) attempts: u32,
}

impl Pending {
    /// The lane it was read from (acks and dead letters apply to that lane only).
    pub fn lane(&self) -> Lane {
        self.lane
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
    /// Failed delivery attempts recorded with [`Outbox::record_attempt`] for this version in
    /// this lane (a new version starts at 0).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }
    /// Size of the stored entry (envelope header + record, bytes).
    pub fn stored_len(&self) -> usize {
        self.stored.len()
    }
}

impl Outbox {
    /// Up to `limit` entries pending in `lane`, oldest first (the lane's FIFO, by sequence
    /// number). Undecodable entries met on the way are moved to `dead` (for every lane) and
    /// skipped; stale index keys are removed.
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn pending(&self, lane: Lane, limit: usize) -> Result<Vec<Pending>, QueueError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        for kv in self
            .inner
            .trees
            .order
            .scan_prefix(format::lane_prefix(lane))
        {
            let (key, sid) = kv.map_err(self.inner.storage("pending"))?;
            match self.inner.resolve(lane, &key, &sid)? {
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
    /// Resolves one `lane_order` entry of `lane` to its pending entry. Undecodable envelopes
    /// go to `dead` and stale keys are removed (both in transactions that re-check what they
    /// saw); those yield `None`.
    pub(super) fn resolve(
        &self,
        lane: Lane,
        key: &IVec,
        sid: &IVec,
    ) -> Result<Option<Pending>, QueueError> {
        let seq = format::split_lane_key(key).and_then(|(_, rest)| format::parse_seq_key(rest));
        let lane_stored = self
            .trees
            .lanes
            .get(format::lane_key(lane, sid))
            .map_err(self.storage("pending"))?;
        let entry = lane_stored
            .as_ref()
            .and_then(|v| format::decode_lane_entry(v).ok());
        let value = self
            .trees
            .outbox
            .get(sid)
            .map_err(self.storage("pending"))?;
        if let (Some(seq), Some(value), Some(entry), Some(lane_stored)) =
            (seq, value, entry, lane_stored)
        {
            match decode_entry(sid, &value) {
                Ok(env) if env.seq == seq && entry.seq() == seq => {
                    return Ok(Some(Pending {
                        lane,
                        envelope: env,
                        stored: value,
                        lane_stored,
                        attempts: entry.attempts(),
                    }))
                }
                Ok(_) => {}
                Err(reason) => {
                    let now = now_ms();
                    let reason = format!("undecodable envelope: {reason}");
                    let delta = self.tx("pending", |t| t.bury(sid, &value, &reason, now))?;
                    self.apply(delta);
                    return Ok(None);
                }
            }
        }
        self.tx("pending", |t| remove_stale_order_key(t, key, sid))?;
        Ok(None)
    }
}
