//! The record's content hash: what lets a sink see that a re-export changes nothing.
//!
//! A session is exported again for reasons that leave its content as it was (an archive toggled
//! back, a subagent touched without a change, `once` after `run`). Only `exportedAt` differs
//! then, and a sink comparing `(updatedAt, exportedAt)` alone would rewrite the whole document
//! (and, at Convex, its aggregate rows). `contentHash` is the hex of the first 16 bytes of
//! SHA-256 over the record's JSON (as serialized by [`serde_json`], field order as declared)
//! with `exportedAt` and `revision` set to `0` and `contentHash` set to `""`: two records with
//! the same hash differ at most in `exportedAt` and `revision`. The Convex upsert answers `unchanged` and writes nothing
//! for a record whose hash equals the stored one.

use sha2::{Digest, Sha256};

use super::SessionExport;

/// Hex characters of [`SessionExport::content_hash`].
pub const CONTENT_HASH_LEN: usize = 32;

/// Sets `record.content_hash` from the rest of the record (see the module docs). Call it last,
/// after every other change to the record.
pub fn seal(record: &mut SessionExport) {
    let exported_at = std::mem::replace(&mut record.exported_at, 0);
    let revision = std::mem::replace(&mut record.revision, 0);
    record.content_hash.clear();
    let mut hasher = Sha256::new();
    // Streams the JSON into the hasher: no second copy of a large record.
    serde_json::to_writer(&mut hasher, &*record).expect("a record serializes");
    record.exported_at = exported_at;
    record.revision = revision;
    record.content_hash = hex::encode(&hasher.finalize()[..CONTENT_HASH_LEN / 2]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full record the Convex tests use (every field set), as the daemon would read it.
    fn record() -> SessionExport {
        serde_json::from_str(include_str!(
            "../../../convex/tests/fixtures/full-record.json"
        ))
        .unwrap()
    }

    #[test]
    fn the_hash_ignores_exported_at_and_revision_and_nothing_else() {
        let mut a = record();
        seal(&mut a);
        assert_eq!(a.content_hash.len(), CONTENT_HASH_LEN);
        assert!(a.content_hash.bytes().all(|b| b.is_ascii_hexdigit()));
        let mut later = record();
        later.exported_at += 60_000;
        later.revision += 60_000;
        seal(&mut later);
        assert_eq!(
            later.content_hash, a.content_hash,
            "only exportedAt and revision differ"
        );
        assert_eq!(
            later.revision,
            a.revision + 60_000,
            "seal keeps the revision"
        );
        // Sealing twice gives the same hash (the old hash is not part of the input).
        let again = a.content_hash.clone();
        seal(&mut a);
        assert_eq!(a.content_hash, again);
        // Any other change is seen.
        type Change = fn(&mut SessionExport);
        let changes: [(&str, Change); 5] = [
            ("updatedAt", |r| r.updated_at += 1),
            ("title", |r| r.title.push('!')),
            ("cost", |r| r.cost += 0.000_001),
            ("archivedAt", |r| r.archived_at = Some(1)),
            ("messageCount", |r| r.message_count += 1),
        ];
        for (what, change) in changes {
            let mut b = record();
            change(&mut b);
            seal(&mut b);
            assert_ne!(b.content_hash, a.content_hash, "{what}");
        }
    }

    #[test]
    fn the_hash_is_of_the_json_with_exported_at_and_revision_zero_and_an_empty_hash() {
        // Recomputed here from the JSON text, independently of `seal`'s streaming.
        let mut r = record();
        seal(&mut r);
        let mut v = serde_json::to_value(&r).unwrap();
        v["exportedAt"] = 0.into();
        v["revision"] = 0.into();
        v["contentHash"] = "".into();
        let mut r0: SessionExport = serde_json::from_value(v).unwrap();
        r0.content_hash.clear();
        let json = serde_json::to_vec(&r0).unwrap();
        let expected = hex::encode(&Sha256::digest(&json)[..16]);
        assert_eq!(r.content_hash, expected);
    }
}
