use super::*;
use crate::sink::Sink;

fn record(id: &str, revision: i64, updated_at: i64, exported_at: i64, cost: f64) -> Vec<u8> {
    let text = include_str!("../../../../convex/tests/fixtures/full-record.json");
    let mut v: serde_json::Value = serde_json::from_str(text).unwrap();
    v["sessionId"] = id.into();
    v["revision"] = revision.into();
    v["updatedAt"] = updated_at.into();
    v["exportedAt"] = exported_at.into();
    v["createdAt"] = 1_700_000_000_000i64.into();
    v["cost"] = cost.into();
    v["contentHash"] = format!("hash-{cost}").into();
    v.as_object_mut().unwrap().remove("parentSessionId");
    v.as_object_mut().unwrap().remove("rollup");
    v.as_object_mut().unwrap().remove("inherited");
    v.as_object_mut().unwrap().remove("children");
    serde_json::to_vec(&v).unwrap()
}

fn stored_cost(dir: &Path, id: &str) -> Option<f64> {
    let r = open_read(dir).unwrap();
    let mut found = None;
    r.sessions(&query::Filter::default(), |s| {
        if s.at.session_id == id {
            found = Some(s.figures.cost);
        }
    })
    .unwrap();
    found
}

#[test]
fn the_upsert_is_monotonic_by_revision_then_updated_at_then_exported_at() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    // (revision, updatedAt, exportedAt, cost) → expected action, stored cost after.
    let table: &[(i64, i64, i64, f64, Upsert, f64)] = &[
        (5, 100, 100, 1.0, Upsert::Inserted, 1.0),
        (5, 100, 100, 2.0, Upsert::Unchanged, 1.0), // same revision: same version
        (4, 900, 900, 3.0, Upsert::Stale, 1.0),     // older revision wins over newer times
        (6, 50, 50, 4.0, Upsert::Updated, 4.0),     // newer revision, older times
        (0, 10, 10, 5.0, Upsert::Stale, 4.0),       // no revision: (updatedAt, exportedAt)
        (0, 50, 60, 6.0, Upsert::Updated, 6.0),
        (0, 50, 60, 7.0, Upsert::Unchanged, 6.0),
        (0, 50, 59, 8.0, Upsert::Stale, 6.0),
        (0, 51, 0, 9.0, Upsert::Updated, 9.0),
    ];
    for (n, &(rev, upd, exp, cost, action, after)) in table.iter().enumerate() {
        let r = record("ses_a", rev, upd, exp, cost);
        let got = s.upsert_batch(&[&r]).unwrap();
        assert_eq!(got, vec![Ok(action)], "row {n}");
        assert_eq!(stored_cost(dir.path(), "ses_a"), Some(after), "row {n}");
    }
}

#[test]
fn an_equal_content_hash_is_unchanged_even_with_a_newer_version() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    let a = record("ses_a", 1, 100, 100, 1.0);
    let mut b: serde_json::Value =
        serde_json::from_slice(&record("ses_a", 2, 100, 200, 1.0)).unwrap();
    b["title"] = "changed but same hash".into();
    let b = serde_json::to_vec(&b).unwrap();
    assert_eq!(s.upsert_batch(&[&a]).unwrap(), vec![Ok(Upsert::Inserted)]);
    assert_eq!(s.upsert_batch(&[&b]).unwrap(), vec![Ok(Upsert::Unchanged)]);
}

#[tokio::test]
async fn a_bad_record_is_refused_alone_and_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    let a = record("ses_a", 1, 1, 1, 1.0);
    let b = record("ses_b", 1, 1, 1, 2.0);
    let secret = br#"{"sessionId":"ses_x","title":"SECRET-TEXT"}"#;
    let out = s.send(&[&a, secret, b"not json", &b]).await;
    let Outcome::Delivered(results) = out else {
        panic!("{out:?}")
    };
    assert_eq!(results[0], RecordOutcome::Accepted);
    assert_eq!(results[3], RecordOutcome::Accepted);
    for r in &results[1..3] {
        let RecordOutcome::Refused { reason } = r else {
            panic!("{r:?}")
        };
        assert!(!reason.contains("SECRET"), "{reason}");
    }
    assert_eq!(open_read(dir.path()).unwrap().row_count().unwrap(), 2);
}

#[test]
fn child_rows_are_rewritten_with_their_session() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&record("ses_a", 1, 1, 1, 1.0)).unwrap();
    let models = v["models"].as_array().unwrap().len();
    assert!(models > 0);
    s.upsert_batch(&[&serde_json::to_vec(&v).unwrap()]).unwrap();
    let count = |dir: &Path| {
        let r = open_read(dir).unwrap();
        let mut n = 0;
        r.models(&query::Filter::default(), |_| n += 1).unwrap();
        n
    };
    assert_eq!(count(dir.path()), models);
    // A newer version with one model left: the others are gone.
    v["revision"] = 2.into();
    v["contentHash"] = "other".into();
    let first = v["models"][0].clone();
    v["models"] = serde_json::json!([first]);
    s.upsert_batch(&[&serde_json::to_vec(&v).unwrap()]).unwrap();
    assert_eq!(count(dir.path()), 1);
    // A subagent row counts nothing and has no child rows.
    v["revision"] = 3.into();
    v["contentHash"] = "third".into();
    v["parentSessionId"] = "ses_parent".into();
    s.upsert_batch(&[&serde_json::to_vec(&v).unwrap()]).unwrap();
    assert_eq!(count(dir.path()), 0);
    assert_eq!(stored_cost(dir.path(), "ses_a"), None);
    assert_eq!(open_read(dir.path()).unwrap().row_count().unwrap(), 1);
}

#[test]
fn the_file_is_private_versioned_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    drop(s);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(store_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let conn = Connection::open(store_path(dir.path())).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    assert!(matches!(
        StoreSink::open(dir.path()),
        Err(StoreError::Newer { .. })
    ));
    assert!(matches!(
        open_read(dir.path()),
        Err(StoreError::Newer { .. })
    ));
}

#[test]
fn a_missing_store_is_a_clear_error_for_readers_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_read(dir.path()).err().unwrap();
    assert!(matches!(e, StoreError::Missing { .. }));
    assert!(e.to_string().contains("run `opencode-telemetry once`"));
    assert!(!store_path(dir.path()).exists());
}

#[test]
fn a_reader_sees_committed_rows_while_the_writer_holds_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = StoreSink::open(dir.path()).unwrap();
    s.upsert_batch(&[&record("ses_a", 1, 1, 1, 1.0)]).unwrap();
    let r = open_read(dir.path()).unwrap();
    assert_eq!(r.row_count().unwrap(), 1);
    s.upsert_batch(&[&record("ses_b", 1, 1, 1, 1.0)]).unwrap();
    assert_eq!(r.row_count().unwrap(), 2);
}
