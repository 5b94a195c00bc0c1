//! The tracker's persisted state and its key space in the outbox's `state` tree.
//!
//! | key | value |
//! |---|---|
//! | `session/<id>` | [`SessionState`] as JSON, versioned by `v` (`"2"`; `"1"` is read and migrated) |
//! | `record/<id>` | the last record built for the session (the [`crate::export::SessionExport`] JSON, as the outbox stores records) |
//! | `child/<id>` | a subagent session's [`ChangeMarker`] as JSON (with `export.skip_subagent_sessions`, whose children are not tracked on their own): a child whose marker moved re-exports its parent |
//! | `gone/<id>` | empty: a session a listing found gone, until the listing ends and its deletion is exported or held (see [`crate::track`], "Listings") |
//! | `held-deletion/<id>` | the last record of a session whose deletion is held ([`crate::track::rules::hold_deletions`]) |
//!
//! The state is small and rewritten whenever the session changes; the record is large and
//! rewritten only when its content (everything but `exportedAt`) changes, which
//! [`SessionState::record_digest`] tells. The record is what a `deleted` export is made of once
//! the source has no rows left. Both are written in the same outbox commit as the records a
//! pass enqueues.
//!
//! Version 1 (daemon 0.1) kept the record inside the state (`lastRecord`) and the ending as a
//! string (`stale:<ms>` for a stale turn); [`decode`] reads it and hands the record back so the
//! next commit moves it under its own key.

use serde::{Deserialize, Serialize};

use crate::source::{ChangeMarker, SessionId, TurnError};

/// Key prefix of per-session state.
pub const STATE_PREFIX: &[u8] = b"session/";

/// Key prefix of per-session last records.
pub const RECORD_PREFIX: &[u8] = b"record/";

/// Key prefix of subagent sessions' markers.
pub const CHILD_PREFIX: &[u8] = b"child/";

/// Key prefix of sessions a listing found gone.
pub const GONE_PREFIX: &[u8] = b"gone/";

/// The child-marker key of a session.
pub fn child_key(id: &SessionId) -> Vec<u8> {
    [CHILD_PREFIX, id.as_str().as_bytes()].concat()
}

/// The gone key of a session.
pub fn gone_key(id: &SessionId) -> Vec<u8> {
    [GONE_PREFIX, id.as_str().as_bytes()].concat()
}

/// The session a key under `prefix` names (`None`: another prefix, or not UTF-8).
pub fn key_session(key: &[u8], prefix: &[u8]) -> Option<SessionId> {
    let id = key.strip_prefix(prefix)?;
    std::str::from_utf8(id).ok().map(SessionId::from)
}

/// Key prefix of held deletions: the last record of a session whose deletion is held (see
/// [`crate::track::rules::hold_deletions`]).
pub const HELD_PREFIX: &[u8] = b"held-deletion/";

/// The held-deletion key of a session.
pub fn held_key(id: &SessionId) -> Vec<u8> {
    [HELD_PREFIX, id.as_str().as_bytes()].concat()
}

/// The state key of a session.
pub fn state_key(id: &SessionId) -> Vec<u8> {
    [STATE_PREFIX, id.as_str().as_bytes()].concat()
}

/// The last-record key of a session.
pub fn record_key(id: &SessionId) -> Vec<u8> {
    [RECORD_PREFIX, id.as_str().as_bytes()].concat()
}

/// The persisted state of one tracked session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionState {
    /// Marker at the last look.
    pub marker: ChangeMarker,
    /// What the newest rows said at the last look.
    pub phase: Phase,
    /// What was exported last (to export each end of turn once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exported: Option<ExportKey>,
    /// Digest of the record stored under `record/<id>` (see [`record_digest`]); `None` when no
    /// record was built yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_digest: Option<String>,
    /// When one of its subagent sessions last changed after the session was exported (ms):
    /// the record's `children` / `rollup` are re-exported one debounce window later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children_changed_at_ms: Option<i64>,
    /// The `revision` of the last record exported (see
    /// [`crate::export::SessionExport::revision`]); 0 before the first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub revision: i64,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

impl SessionState {
    /// The state of a session seen for the first time.
    pub fn new(marker: ChangeMarker) -> SessionState {
        SessionState {
            marker,
            phase: Phase::Empty,
            exported: None,
            record_digest: None,
            children_changed_at_ms: None,
            revision: 0,
        }
    }
}

/// What the newest rows of a session said at the last look.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "camelCase")]
pub enum Phase {
    /// No message yet.
    Empty,
    /// A turn in progress.
    #[serde(rename_all = "camelCase")]
    Busy {
        /// Newest write seen in the session's tail (ms).
        last_write_ms: i64,
    },
    /// The newest message is a prompt with no reply started (see
    /// [`crate::source::Activity::AwaitingReply`]).
    #[serde(rename_all = "camelCase")]
    AwaitingReply {
        /// The prompt.
        message_id: String,
        /// When it was sent (ms).
        sent_at_ms: i64,
        /// Whether todos were left open (pending / in progress) at the last look.
        todos_open: bool,
    },
    /// The last turn ended at `messageId`.
    #[serde(rename_all = "camelCase")]
    Ended {
        /// The terminal message.
        message_id: String,
        /// Its error, if any.
        error: Option<TurnError>,
        /// When the debounce window of this end of turn started (ms): the terminal message's
        /// completion, or the tracker's clock when that is later.
        seen_at_ms: i64,
        /// Whether todos were left open (pending / in progress) at the last look.
        todos_open: bool,
    },
}

/// Which end of a session an export was for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Ending {
    /// The turn that ended at `messageId`.
    #[serde(rename_all = "camelCase")]
    Turn {
        /// The terminal message.
        message_id: String,
    },
    /// A turn that never completed, stale since its last write.
    #[serde(rename_all = "camelCase")]
    Stale {
        /// The last write seen (ms).
        last_write_ms: i64,
    },
}

/// Identifies an exported version: the ending and the archive time it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportKey {
    /// The ending exported.
    pub ending: Ending,
    /// `archivedAt` of the exported record.
    pub archived_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum Stored {
    #[serde(rename = "1")]
    V1(V1State),
    #[serde(rename = "2")]
    V2(SessionState),
}

/// Version 1 of the state (daemon 0.1).
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct V1State {
    marker: ChangeMarker,
    phase: Phase,
    #[serde(default)]
    exported: Option<V1ExportKey>,
    #[serde(default)]
    last_record: Option<serde_json::Value>,
    #[serde(default)]
    children_changed_at_ms: Option<i64>,
}

#[derive(Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct V1ExportKey {
    ending: String,
    archived_at: Option<i64>,
}

/// A decoded `session/<id>` value.
#[derive(Debug)]
pub struct Decoded {
    /// The state.
    pub state: SessionState,
    /// A version-1 value's inline record (JSON), to be written under `record/<id>`.
    pub legacy_record: Option<Vec<u8>>,
}

/// Encodes a state for `session/<id>`.
pub fn encode(state: &SessionState) -> Vec<u8> {
    serde_json::to_vec(&Stored::V2(state.clone())).expect("state serializes")
}

/// Decodes a `session/<id>` value of any version.
///
/// # Errors
/// The value is not a state of a known version (the caller drops it: it only costs a
/// re-export).
pub fn decode(value: &[u8]) -> Result<Decoded, serde_json::Error> {
    Ok(match serde_json::from_slice::<Stored>(value)? {
        Stored::V2(state) => Decoded {
            state,
            legacy_record: None,
        },
        Stored::V1(v1) => {
            let legacy_record = v1
                .last_record
                .map(|r| serde_json::to_vec(&r).expect("a json value serializes"));
            let record_digest = legacy_record.as_deref().map(record_digest);
            Decoded {
                state: SessionState {
                    marker: v1.marker,
                    phase: v1.phase,
                    exported: v1.exported.map(|k| ExportKey {
                        ending: match k.ending.strip_prefix("stale:").map(str::parse) {
                            Some(Ok(last_write_ms)) => Ending::Stale { last_write_ms },
                            _ => Ending::Turn {
                                message_id: k.ending,
                            },
                        },
                        archived_at: k.archived_at,
                    }),
                    record_digest,
                    revision: 0,
                    children_changed_at_ms: v1.children_changed_at_ms,
                },
                legacy_record,
            }
        }
    })
}

/// The digest of a record ([`crate::export::SessionExport`]) that differs whenever anything
/// but `exportedAt` does: its `contentHash` (a hash of everything but `exportedAt` and
/// `revision`, see [`crate::export::hash`]) and its `revision`. Costs nothing: both are in the
/// record already.
pub fn record_digest_of(content_hash: &str, revision: i64) -> String {
    format!("{content_hash}.{revision}")
}

/// [`record_digest_of`] from a record's JSON (a migrated version-1 state's record). A record
/// without `contentHash` (daemon 0.1) gets a hex SHA-256 of its JSON with `exportedAt` set to
/// 0 (first 16 bytes) instead.
pub fn record_digest(record_json: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    match serde_json::from_slice::<serde_json::Value>(record_json) {
        Ok(serde_json::Value::Object(mut map)) => {
            if let Some(hash) = map.get("contentHash").and_then(|h| h.as_str()) {
                let revision = map.get("revision").and_then(|r| r.as_i64()).unwrap_or(0);
                return record_digest_of(hash, revision);
            }
            map.insert("exportedAt".into(), 0.into());
            let canonical = serde_json::to_vec(&map).expect("a json map serializes");
            hex::encode(&Sha256::digest(&canonical)[..16])
        }
        _ => hex::encode(&Sha256::digest(record_json)[..16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_state_is_read_with_its_record_handed_back() {
        let v1 = br#"{"v":"1","marker":{"seq":4,"timeUpdated":10,"timeArchived":null},
            "phase":{"phase":"ended","messageId":"msg_2","error":null,"seenAtMs":7,"todosOpen":false},
            "exported":{"ending":"msg_2","archivedAt":null},
            "lastRecord":{"sessionId":"ses_1","exportedAt":5}}"#;
        let d = decode(v1).unwrap();
        assert_eq!(
            d.state.exported.unwrap().ending,
            Ending::Turn {
                message_id: "msg_2".into()
            }
        );
        let record = d.legacy_record.unwrap();
        assert_eq!(d.state.record_digest, Some(record_digest(&record)));
        let stale = br#"{"v":"1","marker":{"seq":1,"timeUpdated":1,"timeArchived":null},
            "phase":{"phase":"busy","lastWriteMs":9},"exported":{"ending":"stale:9","archivedAt":null}}"#;
        let d = decode(stale).unwrap();
        assert_eq!(
            d.state.exported.unwrap().ending,
            Ending::Stale { last_write_ms: 9 }
        );
        assert!(d.legacy_record.is_none());
    }

    #[test]
    fn a_state_round_trips_as_version_2() {
        let mut s = SessionState::new(ChangeMarker {
            counter: 3,
            updated_at: 4,
            archived_at: Some(5),
        });
        s.phase = Phase::Busy { last_write_ms: 8 };
        s.exported = Some(ExportKey {
            ending: Ending::Stale { last_write_ms: 8 },
            archived_at: None,
        });
        let bytes = encode(&s);
        assert!(bytes.starts_with(br#"{"v":"2""#));
        assert_eq!(decode(&bytes).unwrap().state, s);
    }

    #[test]
    fn the_record_digest_ignores_only_exported_at() {
        let a = record_digest(br#"{"sessionId":"s","exportedAt":1,"cost":1.5}"#);
        let b = record_digest(br#"{"sessionId":"s","exportedAt":2,"cost":1.5}"#);
        let c = record_digest(br#"{"sessionId":"s","exportedAt":1,"cost":1.25}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // A record with its content hash: the hash and the revision, whatever `exportedAt`.
        let h = record_digest(br#"{"contentHash":"ab","revision":3,"exportedAt":1}"#);
        assert_eq!(h, record_digest_of("ab", 3));
        assert_eq!(
            h,
            record_digest(br#"{"contentHash":"ab","revision":3,"exportedAt":9}"#)
        );
        assert_ne!(h, record_digest_of("ab", 4));
        assert_ne!(h, record_digest_of("ac", 3));
    }
}
