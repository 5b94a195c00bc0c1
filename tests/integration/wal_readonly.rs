//! The live fixture is OpenCode's database exactly as it left it: a main file plus an
//! un-checkpointed `-wal` (1007 frames, 64 current) and its `-shm`. Reading it must see the
//! WAL's content and leave all three files byte-identical.

use sha2::{Digest, Sha256};

use crate::support::*;

fn hashes(db: &std::path::Path) -> Vec<(String, String)> {
    ["", "-wal", "-shm"]
        .iter()
        .map(|suffix| {
            let path = format!("{}{suffix}", db.display());
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            (path, hex::encode(Sha256::digest(&bytes)))
        })
        .collect()
}

#[test]
fn once_on_the_live_wal_database_sees_the_wal_and_changes_no_byte() {
    let scratch = Scratch::new();
    let db = scratch.copy_live_db();
    let before = hashes(&db);
    let config = scratch.write_config("");
    run_once(&scratch, &config, &db);
    assert_eq!(
        hashes(&db),
        before,
        "the daemon modified the database files"
    );
    // The main file alone holds 29 sessions (26 roots); with the WAL applied c03 is deleted:
    // 28 sessions, 25 roots. Seeing 25 proves the WAL was read.
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(records.len(), 25);
    assert!(!records
        .iter()
        .any(|r| r["sessionId"] == "ses_e035afddfffe6f2cYtkqN1p7xz"));
}

#[test]
fn the_reader_keeps_the_files_identical_across_many_polls() {
    use opencode_telemetry::source::opencode::OpenCodeDb;
    let scratch = Scratch::new();
    let db_path = scratch.copy_live_db();
    let before = hashes(&db_path);
    {
        let db = OpenCodeDb::open(&db_path, std::time::Duration::from_secs(5)).unwrap();
        let v = db.data_version().unwrap();
        for _ in 0..20 {
            assert_eq!(db.data_version().unwrap(), v);
            let (heads, _) = db.heads_after(None, 10_000).unwrap();
            assert!(!heads.is_empty());
            for head in heads {
                db.read_tail(&head.id).unwrap().unwrap();
                db.read_session(
                    &head.id,
                    opencode_telemetry::source::Texts::UpTo { chars: 4000 },
                )
                .unwrap()
                .unwrap();
            }
        }
    }
    assert_eq!(hashes(&db_path), before);
}
