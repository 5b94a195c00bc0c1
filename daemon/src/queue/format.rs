//! Byte formats of everything the outbox persists: the pending envelope, the dead-letter entry,
//! meta values and the committed high-water mark file. The serde types here are the only ones of the queue module;
//! each is a `#[serde(tag = "v")]` enum, so a format change adds a variant (`V2`) and never edits
//! an existing one. The layouts are described in the module doc of [`crate::queue`].

use serde::{Deserialize, Serialize};

/// Separates a JSON header line from the verbatim bytes that follow it (compact JSON never
/// contains a raw newline, so the first `\n` always ends the header).
const HEADER_END: u8 = b'\n';

/// Version of the tree layout, stored in `meta/layout`. Bumped only if the set or meaning of the
/// trees changes; the value formats are versioned on their own. Layout 1: one `order` FIFO for
/// the one sink; layout 2: one FIFO per lane (`lane_order`) and the lane entries (`lanes`); an
/// outbox of layout 1 is migrated at open (see [`crate::queue`], "Lanes").
pub(crate) const LAYOUT_VERSION: u64 = 2;

/// The layout that had one `order` tree and no lanes.
pub(crate) const LAYOUT_V1: u64 = 1;

/// `meta` keys.
pub(crate) mod meta_key {
    /// u64 BE: layout version ([`super::LAYOUT_VERSION`]).
    pub const LAYOUT: &[u8] = b"layout";
    /// u64 BE: the next sequence number to hand out.
    pub const NEXT_SEQ: &[u8] = b"next_seq";
    /// i64 BE: last successful delivery (ms).
    pub const LAST_DELIVERY_AT: &[u8] = b"last_delivery_at";
    /// JSON [`super::LastErrorRecord`].
    pub const LAST_ERROR: &[u8] = b"last_error";
    /// u64 BE: records ever enqueued.
    pub const ENQUEUED_TOTAL: &[u8] = b"enqueued_total";
    /// u64 BE: acks that removed an entry.
    pub const ACKED_TOTAL: &[u8] = b"acked_total";
    /// u64 BE: entries ever moved to `dead`.
    pub const DEAD_LETTERED_TOTAL: &[u8] = b"dead_lettered_total";

    /// A per-lane meta key: `lane/<lane>/<key>` (`key` one of [`LAST_DELIVERY_AT`],
    /// [`LAST_ERROR`], [`ACKED_TOTAL`], [`DEAD_LETTERED_TOTAL`]).
    pub fn lane(lane: crate::queue::Lane, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(6 + lane.as_str().len() + key.len());
        k.extend_from_slice(b"lane/");
        k.extend_from_slice(lane.as_str().as_bytes());
        k.push(b'/');
        k.extend_from_slice(key);
        k
    }
}

/// Key of a `lane_order` entry: the lane's name, a NUL, the sequence number big-endian (so one
/// lane's keys are a contiguous range, in FIFO order).
pub(crate) fn lane_order_key(lane: crate::queue::Lane, seq: u64) -> Vec<u8> {
    let mut key = lane_prefix(lane);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Key of a `lanes` entry: the lane's name, a NUL, the session id.
pub(crate) fn lane_key(lane: crate::queue::Lane, session_id: &[u8]) -> Vec<u8> {
    let mut key = lane_prefix(lane);
    key.extend_from_slice(session_id);
    key
}

/// `<lane name> 0x00`: the prefix of a lane's keys in `lanes` and `lane_order`.
pub(crate) fn lane_prefix(lane: crate::queue::Lane) -> Vec<u8> {
    let mut key = Vec::with_capacity(lane.as_str().len() + 9);
    key.extend_from_slice(lane.as_str().as_bytes());
    key.push(0);
    key
}

/// Splits a `lanes` or `lane_order` key into its lane and the rest; `None` for a key of no
/// known lane.
pub(crate) fn split_lane_key(key: &[u8]) -> Option<(crate::queue::Lane, &[u8])> {
    let nul = key.iter().position(|&b| b == 0)?;
    let lane = crate::queue::Lane::from_name(std::str::from_utf8(&key[..nul]).ok()?)?;
    Some((lane, &key[nul + 1..]))
}

/// A `lanes` value: which version of the session's outbox entry the lane still has to deliver,
/// and its failed attempts there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub(crate) enum LaneEntry {
    /// Format 1.
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 {
        /// The envelope's sequence number (also the lane's FIFO position).
        seq: u64,
        /// Failed delivery attempts of this version in this lane.
        attempts: u32,
    },
}

impl LaneEntry {
    /// The envelope's sequence number.
    pub fn seq(&self) -> u64 {
        match self {
            LaneEntry::V1 { seq, .. } => *seq,
        }
    }
    /// Failed attempts.
    pub fn attempts(&self) -> u32 {
        match self {
            LaneEntry::V1 { attempts, .. } => *attempts,
        }
    }
}

/// Encodes a `lanes` value.
pub(crate) fn encode_lane_entry(seq: u64, attempts: u32) -> Vec<u8> {
    // A two-field struct of integers cannot fail to serialize.
    serde_json::to_vec(&LaneEntry::V1 { seq, attempts }).unwrap_or_default()
}

/// Decodes a `lanes` value.
pub(crate) fn decode_lane_entry(value: &[u8]) -> Result<LaneEntry, String> {
    serde_json::from_slice(value).map_err(|e| format!("bad lane entry: {e}"))
}

/// Big-endian key of layout 1's `order` tree (sorts numerically); the tail of a `lane_order`
/// key.
#[cfg(test)]
pub(crate) fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of an `order` key, if it is one.
pub(crate) fn parse_seq_key(key: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(key).ok().map(u64::from_be_bytes)
}

/// A u64 stored big-endian; anything else reads as `None`.
pub(crate) fn decode_u64(bytes: &[u8]) -> Option<u64> {
    parse_seq_key(bytes)
}

/// An i64 stored big-endian; anything else reads as `None`.
pub(crate) fn decode_i64(bytes: &[u8]) -> Option<i64> {
    <[u8; 8]>::try_from(bytes).ok().map(i64::from_be_bytes)
}

/// Key of a `dead` entry: the session id, a NUL, the sequence number big-endian. Several dead
/// versions of one session coexist and list in sequence order.
pub(crate) fn dead_key(session_id: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(session_id.len() + 9);
    key.extend_from_slice(session_id);
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number at the end of a `dead` key.
pub(crate) fn dead_key_seq(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    (key.get(tail.checked_sub(1)?) == Some(&0)).then_some(())?;
    parse_seq_key(&key[tail..])
}

/// Header line of an outbox value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
enum EnvelopeHeader {
    /// Format 1.
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 {
        seq: u64,
        session_id: String,
        updated_at: i64,
        exported_at: i64,
        enqueued_at: i64,
        attempts: u32,
        record_len: u64,
    },
    /// Format 2 (layout 2): as V1 without `attempts`, which are counted per lane.
    #[serde(rename = "2", rename_all = "camelCase")]
    V2 {
        seq: u64,
        session_id: String,
        updated_at: i64,
        exported_at: i64,
        enqueued_at: i64,
        record_len: u64,
    },
}

/// A decoded outbox value (version-independent view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Envelope {
    /// Sequence number (position in `order`).
    pub seq: u64,
    /// The session id (also the outbox key).
    pub session_id: String,
    /// `updatedAt` of the record (ms).
    pub updated_at: i64,
    /// `exportedAt` of the record (ms).
    pub exported_at: i64,
    /// When this version was enqueued (ms).
    pub enqueued_at: i64,
    /// Failed delivery attempts recorded for this version: a V1 envelope's (layout 1, the one
    /// sink's); 0 for V2, whose attempts are in each lane's entry.
    pub attempts: u32,
    /// Offset of the record bytes in the value.
    pub body: usize,
}

/// Encodes an outbox value: header line, `\n`, the record bytes verbatim.
/// Upper bound of what the envelope adds to a record, not counting the session id: the header
/// line's fixed text and its numbers at their widest, and the separator.
pub const ENVELOPE_OVERHEAD_BYTES: u64 = 224;

/// Upper bound of the bytes a record takes in the outbox (what `queue.max_bytes` counts), for a
/// plain ASCII session id such as OpenCode's `ses_…`.
pub fn stored_size_bound(session_id: &str, record_len: usize) -> u64 {
    ENVELOPE_OVERHEAD_BYTES + session_id.len() as u64 + record_len as u64
}

pub(crate) fn encode_envelope(e: &Envelope, record: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let header = EnvelopeHeader::V2 {
        seq: e.seq,
        session_id: e.session_id.clone(),
        updated_at: e.updated_at,
        exported_at: e.exported_at,
        enqueued_at: e.enqueued_at,
        record_len: record.len() as u64,
    };
    let mut out = Vec::with_capacity(160 + record.len());
    serde_json::to_writer(&mut out, &header)?;
    out.push(HEADER_END);
    out.extend_from_slice(record);
    Ok(out)
}

/// Splits `header \n rest`.
fn split_header(value: &[u8]) -> Result<(&[u8], usize), String> {
    let end = value
        .iter()
        .position(|&b| b == HEADER_END)
        .ok_or_else(|| format!("no header line in {} bytes", value.len()))?;
    Ok((&value[..end], end + 1))
}

/// Decodes an outbox value. The error is a short lowercase reason.
pub(crate) fn decode_envelope(value: &[u8]) -> Result<Envelope, String> {
    let (header, body) = split_header(value)?;
    let header: EnvelopeHeader =
        serde_json::from_slice(header).map_err(|e| format!("bad header: {e}"))?;
    let (env, record_len) = match header {
        EnvelopeHeader::V1 {
            seq,
            session_id,
            updated_at,
            exported_at,
            enqueued_at,
            attempts,
            record_len,
        } => (
            Envelope {
                seq,
                session_id,
                updated_at,
                exported_at,
                enqueued_at,
                attempts,
                body,
            },
            record_len,
        ),
        EnvelopeHeader::V2 {
            seq,
            session_id,
            updated_at,
            exported_at,
            enqueued_at,
            record_len,
        } => (
            Envelope {
                seq,
                session_id,
                updated_at,
                exported_at,
                enqueued_at,
                attempts: 0,
                body,
            },
            record_len,
        ),
    };
    let actual = (value.len() - body) as u64;
    if actual != record_len {
        return Err(format!(
            "record is {actual} bytes but the header says {record_len}"
        ));
    }
    Ok(env)
}

/// Header line of a `dead` value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
enum DeadHeader {
    /// Format 1.
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 {
        session_id: String,
        /// The envelope's sequence number; `None` when the envelope was undecodable.
        seq: Option<u64>,
        reason: String,
        dead_at: i64,
        stored_len: u64,
    },
    /// Format 2 (layout 2): as V1 plus the lane that refused it; no lane for an envelope that
    /// could not be decoded (dead for every lane).
    #[serde(rename = "2", rename_all = "camelCase")]
    V2 {
        session_id: String,
        seq: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lane: Option<String>,
        /// The lane's failed attempts before it refused it.
        #[serde(default)]
        attempts: u32,
        reason: String,
        dead_at: i64,
        stored_len: u64,
    },
}

/// A decoded `dead` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dead {
    pub session_id: String,
    pub seq: Option<u64>,
    pub reason: String,
    pub dead_at: i64,
    /// The lane that dead-lettered it; `None` for a V1 entry (layout 1: the one sink of then)
    /// and for an undecodable envelope (every lane).
    pub lane: Option<crate::queue::Lane>,
    /// The lane's failed attempts (V2); `None` for V1, whose envelope counts them.
    pub attempts: Option<u32>,
    /// Offset of the stored outbox value (verbatim) in the dead value.
    pub body: usize,
}

/// Encodes a `dead` value: header line, `\n`, the outbox value verbatim (which may itself be
/// undecodable).
pub(crate) fn encode_dead(d: &Dead, stored: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
    let header = DeadHeader::V2 {
        session_id: d.session_id.clone(),
        seq: d.seq,
        lane: d.lane.map(|l| l.as_str().to_string()),
        attempts: d.attempts.unwrap_or(0),
        reason: d.reason.clone(),
        dead_at: d.dead_at,
        stored_len: stored.len() as u64,
    };
    let mut out = Vec::with_capacity(200 + stored.len());
    serde_json::to_writer(&mut out, &header)?;
    out.push(HEADER_END);
    out.extend_from_slice(stored);
    Ok(out)
}

/// Decodes a `dead` value.
pub(crate) fn decode_dead(value: &[u8]) -> Result<Dead, String> {
    let (header, body) = split_header(value)?;
    let header: DeadHeader =
        serde_json::from_slice(header).map_err(|e| format!("bad dead header: {e}"))?;
    let (dead, stored_len) = match header {
        DeadHeader::V1 {
            session_id,
            seq,
            reason,
            dead_at,
            stored_len,
        } => (
            Dead {
                session_id,
                seq,
                reason,
                dead_at,
                lane: None,
                attempts: None,
                body,
            },
            stored_len,
        ),
        DeadHeader::V2 {
            session_id,
            seq,
            lane,
            attempts,
            reason,
            dead_at,
            stored_len,
        } => {
            let lane = match lane {
                None => None,
                Some(name) => Some(
                    crate::queue::Lane::from_name(&name)
                        .ok_or_else(|| format!("unknown lane {name:?}"))?,
                ),
            };
            (
                Dead {
                    session_id,
                    seq,
                    reason,
                    dead_at,
                    lane,
                    attempts: Some(attempts),
                    body,
                },
                stored_len,
            )
        }
    };
    let actual = (value.len() - body) as u64;
    if actual != stored_len {
        return Err(format!(
            "stored entry is {actual} bytes but the header says {stored_len}"
        ));
    }
    Ok(dead)
}

/// `meta/last_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub(crate) enum LastErrorRecord {
    /// Format 1.
    #[serde(rename = "1")]
    V1 {
        /// The message.
        message: String,
        /// When it was recorded (ms).
        at: i64,
    },
}

/// The committed high-water mark `<data_dir>/queue/committed.json` (see
/// [`super::committed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub(crate) enum CommittedFile {
    /// Format 1.
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 {
        /// The outbox's next sequence number as of a completed flush: every sequence number
        /// below it was durably committed.
        committed_seq: u64,
        /// When the file was written (ms).
        written_at: i64,
    },
}

/// The one member the queue reads from `<data_dir>/status.json` as builds before
/// `committed.json` wrote it (they kept the high-water mark there); every other member is
/// ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LegacyStatusFile {
    /// The high-water mark, when present.
    #[serde(default)]
    pub committed_seq: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_size_bound_holds_for_the_widest_header() {
        let e = Envelope {
            seq: u64::MAX,
            session_id: "ses_e035b7394ffeBPXMCvay8DFBP4".into(),
            updated_at: i64::MIN,
            exported_at: i64::MIN,
            enqueued_at: i64::MIN,
            attempts: u32::MAX,
            body: 0,
        };
        let record = vec![b'x'; 1000];
        let stored = encode_envelope(&e, &record).unwrap();
        assert!(stored.len() as u64 <= stored_size_bound(&e.session_id, record.len()));
    }

    fn env(seq: u64) -> Envelope {
        Envelope {
            seq,
            session_id: "ses_a\"b\nc".into(),
            updated_at: 10,
            exported_at: 20,
            enqueued_at: 30,
            attempts: 0,
            body: 0,
        }
    }

    #[test]
    fn envelope_round_trips_and_keeps_the_record_bytes_verbatim() {
        let record = b"{\"sessionId\":\"x\",\n \"cost\": 1.50}";
        let bytes = encode_envelope(&env(7), record).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with("{\"v\":\"2\",\"seq\":7,\"sessionId\":\"ses_a\\\"b\\nc\","));
        assert!(
            !text.contains("attempts"),
            "attempts are per lane in layout 2"
        );
        let decoded = decode_envelope(&bytes).unwrap();
        assert_eq!(&bytes[decoded.body..], record);
        assert_eq!(Envelope { body: 0, ..decoded }, env(7));
    }

    #[test]
    fn a_v1_envelope_of_layout_1_still_decodes_with_its_attempts() {
        let bytes = b"{\"v\":\"1\",\"seq\":7,\"sessionId\":\"s\",\"updatedAt\":10,\"exportedAt\":20,\"enqueuedAt\":30,\"attempts\":3,\"recordLen\":2}\n{}";
        let e = decode_envelope(bytes).unwrap();
        assert_eq!((e.seq, e.attempts, e.updated_at), (7, 3, 10));
        assert_eq!(&bytes[e.body..], b"{}");
        let old_dead = b"{\"v\":\"1\",\"sessionId\":\"s\",\"seq\":7,\"reason\":\"r\",\"deadAt\":5,\"storedLen\":2}\n{}";
        let d = decode_dead(old_dead).unwrap();
        assert_eq!((d.lane, d.seq), (None, Some(7)));
    }

    #[test]
    fn lane_entries_and_keys_round_trip() {
        let e = decode_lane_entry(&encode_lane_entry(42, 3)).unwrap();
        assert_eq!((e.seq(), e.attempts()), (42, 3));
        for lane in crate::queue::Lane::ALL {
            let k = lane_order_key(lane, 7);
            let (l, rest) = split_lane_key(&k).unwrap();
            assert_eq!((l, parse_seq_key(rest)), (lane, Some(7)));
            let k = lane_key(lane, b"ses_\x00x");
            assert_eq!(split_lane_key(&k), Some((lane, &b"ses_\x00x"[..])));
        }
        // One lane's FIFO keys sort by sequence and stay inside its prefix.
        let l = crate::queue::Lane::Convex;
        assert!(lane_order_key(l, 2) < lane_order_key(l, 256));
        assert!(lane_order_key(l, u64::MAX).starts_with(&lane_prefix(l)));
        assert_eq!(split_lane_key(b"nolane\x00x"), None);
    }

    #[test]
    fn envelope_decoding_rejects_garbage_truncation_and_unknown_versions() {
        let bytes = encode_envelope(&env(1), b"{}").unwrap();
        assert!(decode_envelope(b"garbage")
            .unwrap_err()
            .contains("no header line"));
        assert!(decode_envelope(&bytes[..bytes.len() - 1])
            .unwrap_err()
            .contains("header says 2"));
        let v9 = b"{\"v\":\"9\",\"seq\":1}\n{}";
        assert!(decode_envelope(v9).unwrap_err().contains("bad header"));
    }

    #[test]
    fn dead_round_trips_with_undecodable_bytes() {
        let d = Dead {
            session_id: "s".into(),
            seq: None,
            reason: "undecodable envelope: x".into(),
            dead_at: 5,
            lane: Some(crate::queue::Lane::Convex),
            attempts: Some(4),
            body: 0,
        };
        let stored = [0xff, 0x00, b'\n', 0x80];
        let bytes = encode_dead(&d, &stored).unwrap();
        let back = decode_dead(&bytes).unwrap();
        assert_eq!(&bytes[back.body..], &stored);
        assert_eq!(Dead { body: 0, ..back }, d);
    }

    #[test]
    fn keys_sort_by_sequence_and_parse_back() {
        assert!(seq_key(2) < seq_key(256));
        assert_eq!(parse_seq_key(&seq_key(99)), Some(99));
        assert_eq!(parse_seq_key(b"short"), None);
        let k = dead_key(b"ses_1", 42);
        assert_eq!(dead_key_seq(&k), Some(42));
        assert!(dead_key(b"ses_1", 1) < dead_key(b"ses_1", 2));
        assert_eq!(dead_key_seq(b"12345678"), None);
    }
}
