//! [`QueueStats`], the one description of the outbox's counters and times: what
//! [`Outbox::stats`] reads from the live outbox, and what the daemon writes to its status file
//! for `status` (the queue itself writes no such file). [`Outbox::changes`] tells a reader when
//! the figures changed.

use std::sync::atomic::Ordering;

use super::format::{self, meta_key};
use super::store::{clamp, decode_entry};
use super::{Lane, Outbox, QueueError};

/// The last error recorded with [`Outbox::record_error`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The message (at most 2048 bytes).
    pub message: String,
    /// When it was recorded (ms).
    pub at_ms: i64,
}

/// One lane's counters and times (see [`QueueStats::lanes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaneStats {
    /// The lane.
    pub lane: Lane,
    /// Records this lane has still to deliver (its depth).
    pub pending_count: u64,
    /// `enqueuedAt` of the oldest of them (ms).
    pub oldest_enqueued_at_ms: Option<i64>,
    /// Dead entries of this lane.
    pub dead_count: u64,
    /// Last successful delivery of this lane (ms).
    pub last_delivery_at_ms: Option<i64>,
    /// This lane's last recorded error.
    pub last_error: Option<LastError>,
    /// Records this lane acknowledged.
    pub acked_total: u64,
    /// Records this lane dead-lettered.
    pub dead_lettered_total: u64,
}

/// Counters and times of the outbox, for `status` and logs. Times are epoch ms, sizes bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueStats {
    /// Outbox entries: sessions whose record some lane has still to deliver (at most one per
    /// session; a record two lanes hold counts once).
    pub pending_count: u64,
    /// Bytes of the pending entries as stored (envelope header + record). Compared with
    /// `max_bytes` by [`Outbox::is_full`]; sled's files are larger (see `disk_bytes`).
    pub pending_bytes: u64,
    /// `queue.max_bytes`: the outbox counts as full at this many pending bytes.
    pub max_bytes: u64,
    /// `enqueuedAt` of the oldest pending entry (ms).
    pub oldest_enqueued_at_ms: Option<i64>,
    /// Entries in `dead`.
    pub dead_count: u64,
    /// Last successful delivery of any lane (ms).
    pub last_delivery_at_ms: Option<i64>,
    /// Last error recorded by any lane.
    pub last_error: Option<LastError>,
    /// Records ever enqueued in this outbox.
    pub enqueued_total: u64,
    /// Entries removed because every lane acknowledged them.
    pub acked_total: u64,
    /// Entries ever moved to `dead`.
    pub dead_lettered_total: u64,
    /// sled's size on disk (`Db::size_on_disk`, bytes).
    pub disk_bytes: u64,
    /// Per configured lane, in [`Lane::ALL`] order.
    pub lanes: Vec<LaneStats>,
}

fn last_error_of(v: Option<sled::IVec>) -> Option<LastError> {
    v.and_then(|v| serde_json::from_slice::<format::LastErrorRecord>(&v).ok())
        .map(|r| match r {
            format::LastErrorRecord::V1 { message, at } => LastError { message, at_ms: at },
        })
}

impl Outbox {
    /// Counters and times for `status` (see [`QueueStats`]).
    ///
    /// # Errors
    /// [`QueueError::Storage`].
    pub fn stats(&self) -> Result<QueueStats, QueueError> {
        let inner = &self.inner;
        let meta = &inner.trees.meta;
        let get = |key: &[u8]| meta.get(key).map_err(inner.storage("stats"));
        let counter = |key: &[u8]| -> Result<u64, QueueError> {
            Ok(get(key)?.and_then(|v| format::decode_u64(&v)).unwrap_or(0))
        };
        let last_error = last_error_of(get(meta_key::LAST_ERROR)?);
        let mut lanes = Vec::new();
        for lane in Lane::ALL {
            if !inner.lanes.contains(&lane) {
                continue;
            }
            let i = lane.index();
            lanes.push(LaneStats {
                lane,
                pending_count: clamp(inner.lane_pending[i].load(Ordering::Relaxed)),
                oldest_enqueued_at_ms: self.oldest_enqueued_at(lane)?,
                dead_count: clamp(inner.lane_dead[i].load(Ordering::Relaxed)),
                last_delivery_at_ms: get(&meta_key::lane(lane, meta_key::LAST_DELIVERY_AT))?
                    .and_then(|v| format::decode_i64(&v)),
                last_error: last_error_of(get(&meta_key::lane(lane, meta_key::LAST_ERROR))?),
                acked_total: counter(&meta_key::lane(lane, meta_key::ACKED_TOTAL))?,
                dead_lettered_total: counter(&meta_key::lane(lane, meta_key::DEAD_LETTERED_TOTAL))?,
            });
        }
        let oldest = lanes.iter().filter_map(|l| l.oldest_enqueued_at_ms).min();
        Ok(QueueStats {
            lanes,
            pending_count: inner.pending_count(),
            pending_bytes: inner.pending_bytes(),
            max_bytes: inner.max_bytes,
            oldest_enqueued_at_ms: oldest,
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

    /// A counter that changes whenever [`Outbox::stats`] may show something new (a commit, an
    /// ack, a dead letter, a requeue, a recorded error or delivery). A writer of a status file
    /// waits on it (`changed().await`) instead of polling; it ends (an error) when the outbox
    /// is dropped.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// `enqueuedAt` of the first valid entry in `lane`'s FIFO.
    fn oldest_enqueued_at(&self, lane: Lane) -> Result<Option<i64>, QueueError> {
        for kv in self
            .inner
            .trees
            .order
            .scan_prefix(format::lane_prefix(lane))
        {
            let (key, sid) = kv.map_err(self.inner.storage("stats"))?;
            let Some(seq) =
                format::split_lane_key(&key).and_then(|(_, rest)| format::parse_seq_key(rest))
            else {
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
}
