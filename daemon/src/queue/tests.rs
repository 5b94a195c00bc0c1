//! Tests of the outbox, on real sled databases in temporary directories.
//!
//! Two tests re-run this test binary as a child process (`child_helper`, selected by the
//! `OUTBOX_TEST_CHILD` environment variable): one SIGKILLs a child that commits in a loop, one
//! checks the lock from another process.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::format::{self, meta_key};
use super::*;
use crate::clock::now_ms;

const CHILD_ENV: &str = "OUTBOX_TEST_CHILD";

fn cfg() -> QueueConfig {
    QueueConfig {
        max_bytes: 1 << 20,
        cache_capacity_bytes: 4 << 20,
    }
}

fn rec(sid: &str, n: i64) -> NewRecord {
    NewRecord {
        session_id: sid.to_string(),
        updated_at: n,
        exported_at: n + 1,
        json: format!("{{\"sessionId\":\"{sid}\",\"n\":{n}}}").into_bytes(),
    }
}

fn records(records: Vec<NewRecord>) -> Commit {
    Commit {
        records,
        ..Commit::default()
    }
}

/// Opens the outbox in `dir`, waiting up to 5 s for the lock of a handle just dropped: sled
/// finishes a flush, a log write or a truncation on its own thread pool, and that job keeps the
/// file (and so its lock) open a moment after the last handle is gone. A daemon never reopens
/// its outbox in the same process; these tests do it all the time.
fn open(dir: &Path) -> Outbox {
    open_with(dir, &cfg())
}

/// [`open`] with another configuration.
fn open_with(dir: &Path, config: &QueueConfig) -> Outbox {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open(dir, config) {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.expect("open the outbox"),
        }
    }
}

/// The error of opening the outbox in `dir`, waiting for the lock as [`open`] does.
fn open_err(dir: &Path) -> QueueError {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open(dir, &cfg()) {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return e,
            Ok(_) => panic!("the outbox opened"),
        }
    }
}

fn sids(pending: &[Pending]) -> Vec<&str> {
    pending.iter().map(Pending::session_id).collect()
}

fn json_n(p: &Pending) -> i64 {
    let v: serde_json::Value = serde_json::from_slice(p.record_json()).unwrap();
    v["n"].as_i64().unwrap()
}

/// Writes garbage over `len` bytes of `file` starting at `at`.
fn garble(file: &Path, at: usize, len: usize) {
    let mut bytes = std::fs::read(file).unwrap();
    let end = (at + len).min(bytes.len());
    for b in &mut bytes[at..end] {
        *b ^= 0x5a;
    }
    std::fs::write(file, bytes).unwrap();
}

/// Fills a closed outbox with `n` single-record commits of ~1 KiB and a state cursor, opening
/// it twice so that sled writes a snapshot file.
async fn fill(data: &Path, n: i64) {
    for round in 0..2 {
        let ob = open(data);
        for i in 0..n / 2 {
            let i = round * (n / 2) + i;
            let mut r = rec(&format!("ses_{i:04}"), i);
            r.json.extend(std::iter::repeat_n(b' ', 1000));
            ob.commit(Commit {
                records: vec![r],
                state_puts: vec![(b"cursor".to_vec(), i.to_be_bytes().to_vec())],
                state_removes: vec![],
            })
            .await
            .unwrap();
        }
        ob.flush().await.unwrap();
    }
}

fn snapshot_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("snap.")
        })
        .collect()
}

fn quarantined(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("queue.corrupt-")
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn pending_returns_entries_oldest_first_and_respects_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_c", 1), rec("ses_a", 2)]))
        .await
        .unwrap();
    ob.commit(records(vec![rec("ses_b", 3)])).await.unwrap();
    let all = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&all), ["ses_c", "ses_a", "ses_b"]);
    assert!(all.windows(2).all(|w| w[0].seq() < w[1].seq()));
    assert_eq!(
        sids(&ob.pending(Lane::Store, 2).unwrap()),
        ["ses_c", "ses_a"]
    );
    assert!(ob.pending(Lane::Store, 0).unwrap().is_empty());
    let p = &all[0];
    assert_eq!(p.record_json(), rec("ses_c", 1).json.as_slice());
    assert_eq!(
        (p.updated_at_ms(), p.exported_at_ms(), p.attempts()),
        (1, 2, 0)
    );
    assert!(p.enqueued_at_ms() > 1_600_000_000_000);
}

#[tokio::test]
async fn committing_a_session_again_replaces_it_and_moves_it_to_the_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
        .await
        .unwrap();
    ob.commit(records(vec![rec("ses_a", 2)])).await.unwrap();
    let all = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&all), ["ses_b", "ses_a"]);
    assert_eq!(json_n(&all[1]), 2);
    // One index key per entry: the old order key is gone.
    assert_eq!(ob.trees().order.len(), 2);
    assert_eq!(ob.trees().outbox.len(), 2);
    let stats = ob.stats().unwrap();
    assert_eq!(stats.pending_count, 2);
    assert_eq!(
        stats.pending_bytes,
        all.iter().map(|p| p.stored_len() as u64).sum::<u64>()
    );
}

#[tokio::test]
async fn a_session_twice_in_one_commit_keeps_its_last_record() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![
        rec("ses_a", 1),
        rec("ses_b", 1),
        rec("ses_a", 3),
    ]))
    .await
    .unwrap();
    let all = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&all), ["ses_b", "ses_a"]);
    assert_eq!(json_n(&all[1]), 3);
    assert_eq!(ob.trees().order.len(), 2);
    assert_eq!(ob.stats().unwrap().pending_count, 2);
}

#[tokio::test]
async fn ack_removes_exactly_the_delivered_version() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
        .await
        .unwrap();
    let p = ob.pending(Lane::Store, 1).unwrap().remove(0);
    assert_eq!(ob.ack(&p).await.unwrap(), AckOutcome::Acked);
    assert_eq!(ob.ack(&p).await.unwrap(), AckOutcome::Missing);
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.acked_total), (1, 1));
    assert!(stats.last_delivery_at_ms.is_some());
    assert_eq!(ob.trees().order.len(), 1);
}

#[tokio::test]
async fn ack_of_an_older_version_is_superseded_and_keeps_the_newer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    let sent = ob.pending(Lane::Store, 1).unwrap().remove(0);
    // A newer version arrives while `sent` is in flight.
    ob.commit(records(vec![rec("ses_a", 2)])).await.unwrap();
    assert_eq!(ob.ack(&sent).await.unwrap(), AckOutcome::Superseded);
    let left = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&left), ["ses_a"]);
    assert_eq!(json_n(&left[0]), 2);
    assert_eq!(ob.ack(&left[0]).await.unwrap(), AckOutcome::Acked);
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    assert_eq!(ob.stats().unwrap().pending_bytes, 0);
}

#[tokio::test]
async fn ack_batch_acks_a_delivered_batch_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![
        rec("ses_a", 1),
        rec("ses_b", 1),
        rec("ses_c", 1),
    ]))
    .await
    .unwrap();
    let batch = ob.pending(Lane::Store, 10).unwrap();
    ob.commit(records(vec![rec("ses_b", 2)])).await.unwrap();
    let c = batch[2].clone();
    assert_eq!(ob.ack(&c).await.unwrap(), AckOutcome::Acked);
    assert_eq!(
        ob.ack_batch(&batch).await.unwrap(),
        [
            AckOutcome::Acked,
            AckOutcome::Superseded,
            AckOutcome::Missing
        ]
    );
    let left = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&left), ["ses_b"]);
    assert_eq!(json_n(&left[0]), 2);
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.acked_total), (1, 2));
    assert_eq!(stats.pending_bytes, left[0].stored_len() as u64);
    assert!(ob.ack_batch(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_identical_recommit_is_a_new_version_for_acks() {
    // Same record bytes, new sequence number and enqueue time: the stored bytes differ, so an
    // ack of the first read does not remove the second commit.
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    let sent = ob.pending(Lane::Store, 1).unwrap().remove(0);
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    assert_eq!(ob.ack(&sent).await.unwrap(), AckOutcome::Superseded);
    assert_eq!(ob.pending(Lane::Store, 10).unwrap().len(), 1);
}

#[tokio::test]
async fn record_attempt_counts_failures_and_returns_the_entry_to_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    let p = ob.pending(Lane::Store, 1).unwrap().remove(0);
    let p2 = ob.record_attempt(&p).unwrap().expect("still pending");
    let p3 = ob.record_attempt(&p2).unwrap().expect("still pending");
    assert_eq!((p2.attempts(), p3.attempts()), (1, 2));
    assert_eq!(p3.record_json(), p.record_json());
    assert_eq!(p3.seq(), p.seq());
    assert_eq!(ob.pending(Lane::Store, 1).unwrap()[0], p3);
    assert_eq!(ob.record_attempt(&p).unwrap(), None);
    assert_eq!(ob.ack(&p).await.unwrap(), AckOutcome::Superseded);
    assert_eq!(ob.ack(&p3).await.unwrap(), AckOutcome::Acked);
    assert_eq!(ob.stats().unwrap().pending_bytes, 0);
}

#[tokio::test]
async fn commit_applies_records_and_state_changes_together() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(Commit {
        records: vec![rec("ses_a", 1)],
        state_puts: vec![
            (b"cursor".to_vec(), b"10".to_vec()),
            (b"detector/ses_a".to_vec(), b"x".to_vec()),
            (b"detector/ses_b".to_vec(), b"y".to_vec()),
        ],
        state_removes: vec![],
    })
    .await
    .unwrap();
    ob.commit(Commit {
        records: vec![],
        state_puts: vec![
            (b"cursor".to_vec(), b"11".to_vec()),
            (b"tmp".to_vec(), b"1".to_vec()),
        ],
        state_removes: vec![b"detector/ses_a".to_vec(), b"tmp".to_vec()],
    })
    .await
    .unwrap();
    assert_eq!(ob.state_get(b"cursor").unwrap(), Some(b"11".to_vec()));
    assert_eq!(ob.state_get(b"tmp").unwrap(), None);
    assert_eq!(
        ob.state_scan(b"detector/").unwrap(),
        vec![(b"detector/ses_b".to_vec(), b"y".to_vec())]
    );
    assert_eq!(ob.state_scan(b"").unwrap().len(), 2);
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_a"]);
}

#[tokio::test]
async fn an_invalid_record_fails_the_whole_commit_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    for bad in [
        rec("", 1),
        NewRecord {
            json: vec![],
            ..rec("ses_x", 1)
        },
    ] {
        let err = ob
            .commit(Commit {
                records: vec![rec("ses_ok", 1), bad],
                state_puts: vec![(b"cursor".to_vec(), b"1".to_vec())],
                state_removes: vec![],
            })
            .await
            .unwrap_err();
        assert!(matches!(err, QueueError::InvalidRecord { .. }), "{err}");
        assert!(!err.is_permanent());
        assert!(
            err.to_string().starts_with("invalid record for session"),
            "{err}"
        );
    }
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    assert_eq!(ob.state_get(b"cursor").unwrap(), None);
}

#[tokio::test]
async fn commits_and_state_survive_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open(tmp.path());
        ob.commit(Commit {
            records: vec![rec("ses_a", 1), rec("ses_b", 2)],
            state_puts: vec![(b"cursor".to_vec(), b"2".to_vec())],
            state_removes: vec![],
        })
        .await
        .unwrap();
        let a = ob.pending(Lane::Store, 1).unwrap().remove(0);
        ob.ack(&a).await.unwrap();
        ob.record_error(Lane::Store, "http 503").unwrap();
        ob.flush().await.unwrap();
    }
    let ob = open(tmp.path());
    assert!(!ob.was_rebuilt());
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    assert_eq!(ob.state_get(b"cursor").unwrap(), Some(b"2".to_vec()));
    let stats = ob.stats().unwrap();
    assert_eq!(
        (stats.pending_count, stats.enqueued_total, stats.acked_total),
        (1, 2, 1)
    );
    assert_eq!(stats.last_error.unwrap().message, "http 503");
    // Sequence numbers keep increasing across restarts.
    let before = ob.pending(Lane::Store, 1).unwrap()[0].seq();
    ob.commit(records(vec![rec("ses_c", 3)])).await.unwrap();
    assert!(ob.pending(Lane::Store, 10).unwrap()[1].seq() > before);
}

#[tokio::test]
async fn an_undecodable_entry_goes_to_dead_and_the_rest_still_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![
        rec("ses_a", 1),
        rec("ses_bad", 1),
        rec("ses_c", 1),
    ]))
    .await
    .unwrap();
    // Overwrite the middle entry with garbage, keeping its index key.
    ob.trees()
        .outbox
        .insert("ses_bad", &b"\x00\xffnot an envelope"[..])
        .unwrap();
    let pending = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&pending), ["ses_a", "ses_c"]);
    let dead = ob.dead_entries().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].session_id, "ses_bad");
    assert_eq!(dead[0].seq, None);
    assert!(
        dead[0].reason.starts_with("undecodable envelope: "),
        "{}",
        dead[0].reason
    );
    assert_eq!(dead[0].stored_bytes(), b"\x00\xffnot an envelope");
    assert_eq!(dead[0].record_json(), None);
    assert_eq!(ob.trees().order.len(), 2);
    assert_eq!(ob.stats().unwrap().dead_count, 1);
    // Undecodable envelopes cannot be requeued; they stay in `dead`.
    assert_eq!(ob.retry_dead().await.unwrap(), 0);
    assert_eq!(ob.dead_entries().unwrap().len(), 1);
    for p in &pending {
        assert_eq!(ob.ack(p).await.unwrap(), AckOutcome::Acked);
    }
}

#[tokio::test]
async fn open_repairs_the_index_and_buries_undecodable_entries() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open(tmp.path());
        ob.commit(records(vec![
            rec("ses_a", 1),
            rec("ses_b", 1),
            rec("ses_c", 1),
        ]))
        .await
        .unwrap();
        let b = ob.pending(Lane::Store, 10).unwrap()[1].clone();
        let t = ob.trees();
        // Garbage without an index key, an index key pointing nowhere, an entry whose index
        // key is missing, an entry whose header names another session, and a garbage dead value.
        t.outbox
            .insert("ses_garbage", &b"{\"v\":\"9\"}\n{}"[..])
            .unwrap();
        t.order
            .insert(
                format::lane_order_key(Lane::Store, 999),
                &b"ses_nowhere"[..],
            )
            .unwrap();
        t.order
            .remove(format::lane_order_key(Lane::Store, b.seq()))
            .unwrap();
        let a = t.outbox.get("ses_a").unwrap().unwrap();
        t.outbox.insert("ses_alias", a).unwrap();
        t.dead
            .insert(format::dead_key(b"ses_z", 5), &b"junk"[..])
            .unwrap();
        ob.flush().await.unwrap();
    }
    let ob = open(tmp.path());
    assert!(!ob.was_rebuilt());
    let pending = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&pending), ["ses_a", "ses_b", "ses_c"]);
    assert_eq!(ob.trees().order.len(), 3);
    let dead = ob.dead_entries().unwrap();
    let mut dead_sids: Vec<&str> = dead.iter().map(|d| d.session_id.as_str()).collect();
    dead_sids.sort_unstable();
    assert_eq!(dead_sids, ["ses_alias", "ses_garbage", "ses_z"]);
    assert!(dead
        .iter()
        .any(|d| d.reason.starts_with("undecodable dead entry") && d.seq == Some(5)));
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.dead_count), (3, 3));
    assert_eq!(
        stats.pending_bytes,
        pending.iter().map(|p| p.stored_len() as u64).sum::<u64>()
    );
    // New sequence numbers stay above everything seen, including the stray index key.
    ob.commit(records(vec![rec("ses_d", 1)])).await.unwrap();
    assert!(ob.pending(Lane::Store, 10).unwrap()[3].seq() > 999);
}

#[tokio::test]
async fn dead_letter_moves_the_entry_and_keeps_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
        .await
        .unwrap();
    let a = ob.pending(Lane::Store, 1).unwrap().remove(0);
    let a2 = ob.record_attempt(&a).unwrap().unwrap();
    assert_eq!(
        ob.dead_letter(&a2, "http 422: bad field").await.unwrap(),
        DeadLetterOutcome::Moved
    );
    assert_eq!(
        ob.dead_letter(&a2, "again").await.unwrap(),
        DeadLetterOutcome::Missing
    );
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    let dead = ob.dead_entries().unwrap();
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!((d.session_id.as_str(), d.seq), ("ses_a", Some(a.seq())));
    assert_eq!(d.reason, "http 422: bad field");
    assert_eq!(d.record_json(), Some(a.record_json()));
    assert_eq!((d.attempts, d.updated_at_ms), (Some(1), Some(1)));
    assert!(d.dead_at_ms.is_some());
    let stats = ob.stats().unwrap();
    assert_eq!(
        (
            stats.pending_count,
            stats.dead_count,
            stats.dead_lettered_total
        ),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn dead_letter_of_a_superseded_version_moves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    let old = ob.pending(Lane::Store, 1).unwrap().remove(0);
    ob.commit(records(vec![rec("ses_a", 2)])).await.unwrap();
    assert_eq!(
        ob.dead_letter(&old, "http 400").await.unwrap(),
        DeadLetterOutcome::Superseded
    );
    assert!(ob.dead_entries().unwrap().is_empty());
    assert_eq!(json_n(&ob.pending(Lane::Store, 1).unwrap()[0]), 2);
}

#[tokio::test]
async fn retry_dead_requeues_at_the_back_and_latest_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    // ses_old: dead at n=1, then a newer version is pending → the dead one is dropped.
    // ses_dead: dead, nothing pending → requeued.
    // ses_two: two dead versions → the newer one ends up pending.
    // ses_newer: pending n=1, a dead version n=5 (re-exported later) → the dead one wins.
    ob.commit(records(vec![
        rec("ses_old", 1),
        rec("ses_dead", 1),
        rec("ses_two", 1),
        rec("ses_newer", 5),
    ]))
    .await
    .unwrap();
    for p in ob.pending(Lane::Store, 10).unwrap() {
        ob.dead_letter(&p, "http 400").await.unwrap();
    }
    ob.commit(records(vec![rec("ses_two", 2)])).await.unwrap();
    let two = ob.pending(Lane::Store, 1).unwrap().remove(0);
    ob.dead_letter(&two, "http 400").await.unwrap();
    ob.commit(records(vec![
        rec("ses_old", 2),
        rec("ses_newer", 1),
        rec("ses_x", 1),
    ]))
    .await
    .unwrap();
    assert_eq!(ob.dead_entries().unwrap().len(), 5);

    assert_eq!(ob.retry_dead().await.unwrap(), 4);
    assert!(ob.dead_entries().unwrap().is_empty());
    let pending = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&pending)[..2], ["ses_old", "ses_x"]);
    let by_sid = |s: &str| pending.iter().find(|p| p.session_id() == s).unwrap();
    assert_eq!(json_n(by_sid("ses_old")), 2);
    assert_eq!(json_n(by_sid("ses_two")), 2);
    assert_eq!(json_n(by_sid("ses_newer")), 5);
    assert_eq!(by_sid("ses_dead").attempts(), 0);
    assert_eq!(pending.len(), 5);
    assert_eq!(ob.trees().order.len(), 5);
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.dead_count), (5, 0));
    assert_eq!(
        stats.pending_bytes,
        pending.iter().map(|p| p.stored_len() as u64).sum::<u64>()
    );
}

#[tokio::test]
async fn stats_report_counts_bytes_oldest_age_delivery_and_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    let empty = ob.stats().unwrap();
    assert_eq!(
        (empty.pending_count, empty.pending_bytes, empty.dead_count),
        (0, 0, 0)
    );
    assert_eq!(empty.oldest_enqueued_at_ms, None);
    assert_eq!(empty.last_delivery_at_ms, None);
    assert_eq!(empty.last_error, None);
    assert!(empty.disk_bytes > 0);

    let before = now_ms();
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    ob.commit(records(vec![rec("ses_b", 1)])).await.unwrap();
    let pending = ob.pending(Lane::Store, 10).unwrap();
    let s = ob.stats().unwrap();
    assert_eq!(s.pending_count, 2);
    assert_eq!(
        s.pending_bytes,
        pending.iter().map(|p| p.stored_len() as u64).sum::<u64>()
    );
    assert_eq!(s.oldest_enqueued_at_ms, Some(pending[0].enqueued_at_ms()));
    assert!(s.oldest_enqueued_at_ms.unwrap() >= before);
    assert!(pending[1].enqueued_at_ms() > pending[0].enqueued_at_ms());

    ob.ack(&pending[0]).await.unwrap();
    let s = ob.stats().unwrap();
    assert_eq!(s.oldest_enqueued_at_ms, Some(pending[1].enqueued_at_ms()));
    assert!(s.last_delivery_at_ms.unwrap() >= before);
    ob.record_delivery(Lane::Store, 1_234).unwrap();
    let long = "é".repeat(2000);
    ob.record_error(Lane::Store, &long).unwrap();
    let s = ob.stats().unwrap();
    assert_eq!(s.last_delivery_at_ms, Some(1_234));
    let e = s.last_error.unwrap();
    assert_eq!(e.message.len(), 2048);
    assert!(e.at_ms >= before);
}

#[tokio::test]
async fn is_full_at_max_bytes_and_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let config = QueueConfig {
        max_bytes: 10_000,
        ..cfg()
    };
    let big = |sid: &str| NewRecord {
        json: vec![b'x'; 3000],
        ..rec(sid, 1)
    };
    {
        let ob = Outbox::open(tmp.path(), &config).unwrap();
        for sid in ["ses_1", "ses_2", "ses_3"] {
            ob.commit(records(vec![big(sid)])).await.unwrap();
            assert!(!ob.is_full());
        }
        // Replacing a session does not grow the outbox.
        ob.commit(records(vec![big("ses_1")])).await.unwrap();
        assert!(!ob.is_full());
        // Commits are never refused, even past the bound.
        ob.commit(records(vec![big("ses_4"), big("ses_5")]))
            .await
            .unwrap();
        assert!(ob.is_full());
        assert_eq!(ob.stats().unwrap().pending_count, 5);
        ob.flush().await.unwrap();
    }
    let ob = open_with(tmp.path(), &config);
    assert!(ob.is_full());
    for p in ob.pending(Lane::Store, 2).unwrap() {
        ob.ack(&p).await.unwrap();
    }
    assert!(!ob.is_full());
}

#[tokio::test]
async fn a_second_open_in_the_same_process_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    let err = Outbox::open(tmp.path(), &cfg()).unwrap_err();
    assert!(matches!(err, QueueError::Locked { .. }), "{err}");
    assert!(err.is_permanent());
    let dir = tmp.path().join("queue");
    assert_eq!(
        err.to_string(),
        format!(
            "another opencode-telemetry is using {}: stop it first",
            dir.display()
        )
    );
    // The first one is unaffected, nothing was quarantined, and the lock goes with it.
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    assert!(quarantined(tmp.path()).is_empty());
    drop(ob);
    assert_eq!(open(tmp.path()).pending(Lane::Store, 10).unwrap().len(), 1);
}

/// Runs this test binary's `child_helper` with `mode`, stdout piped.
fn spawn_child(mode: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "queue::tests::child_helper",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(CHILD_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test by itself: the body of the child processes of the tests below. Does nothing
/// unless `OUTBOX_TEST_CHILD` is set (`crash:<data dir>` or `lock:<data dir>`).
#[test]
fn child_helper() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    let out = |line: String| {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}").unwrap();
        stdout.flush().unwrap();
    };
    if let Some(dir) = mode.strip_prefix("lock:") {
        match Outbox::open(Path::new(dir), &cfg()) {
            Ok(_) => out("RESULT opened".into()),
            Err(e) => out(format!("RESULT {e}")),
        }
        return;
    }
    let dir = PathBuf::from(mode.strip_prefix("crash:").unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ob = open(&dir);
        let mut i = ob
            .state_get(b"cursor")
            .unwrap()
            .map_or(0, |v| i64::from_be_bytes(v.try_into().unwrap()) + 1);
        loop {
            let sid = format!("ses_{i}");
            let mut second = rec(&format!("ses_{i}_b"), i);
            second
                .json
                .extend(std::iter::repeat_n(b' ', (i as usize * 37) % 3000));
            ob.commit(Commit {
                records: vec![rec(&sid, i), second],
                state_puts: vec![(b"cursor".to_vec(), i.to_be_bytes().to_vec())],
                state_removes: vec![],
            })
            .await
            .unwrap();
            out(format!("COMMITTED {i}"));
            if i % 3 == 0 {
                let p = ob.pending(Lane::Store, 1).unwrap().remove(0);
                out(format!("ACKING {}", p.session_id()));
                ob.ack(&p).await.unwrap();
            }
            i += 1;
        }
    });
}

#[test]
fn open_from_another_process_is_locked() {
    let tmp = tempfile::tempdir().unwrap();
    let _ob = open(tmp.path());
    let child = spawn_child(&format!("lock:{}", tmp.path().display()));
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("RESULT "))
        .unwrap_or("");
    assert_eq!(
        line,
        format!(
            "RESULT another opencode-telemetry is using {}: stop it first",
            tmp.path().join("queue").display()
        )
    );
}

#[test]
fn sigkill_during_commits_loses_no_acknowledged_commit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut committed: Vec<i64> = Vec::new();
    let mut acking: Vec<String> = Vec::new();
    for round in 0..5 {
        let mut child = spawn_child(&format!("crash:{}", tmp.path().display()));
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let stdout = child.stdout.take().unwrap();
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Kill at a random moment after at least a few commits.
        let wanted = 10 + rand::random::<u64>() % 30;
        // Generous: on a loaded 2-core CI machine the child can take seconds to start.
        let deadline = Instant::now() + Duration::from_secs(90);
        let commits = |lines: &Mutex<Vec<String>>| {
            let lines = lines.lock().unwrap();
            lines.iter().filter(|l| l.starts_with("COMMITTED ")).count() as u64
        };
        while commits(&lines) < wanted && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % 20_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap();
        let before = committed.len();
        for line in lines.iter() {
            if let Some(i) = line.strip_prefix("COMMITTED ") {
                committed.push(i.parse().unwrap());
            } else if let Some(sid) = line.strip_prefix("ACKING ") {
                acking.push(sid.to_string());
            }
        }
        assert!(
            committed.len() - before >= 10,
            "round {round}: child made no progress"
        );

        let ob = open(tmp.path());
        assert!(!ob.was_rebuilt());
        let cursor = ob
            .state_get(b"cursor")
            .unwrap()
            .map(|v| i64::from_be_bytes(v.try_into().unwrap()));
        assert!(
            cursor >= committed.last().copied(),
            "round {round}: cursor {cursor:?}"
        );
        let present: std::collections::HashSet<String> = ob
            .pending(Lane::Store, usize::MAX)
            .unwrap()
            .iter()
            .map(|p| p.session_id().to_string())
            .collect();
        // The cursor never runs ahead of the records: every commit up to it is present.
        for i in 0..=cursor.unwrap() {
            for sid in [format!("ses_{i}"), format!("ses_{i}_b")] {
                assert!(
                    present.contains(&sid) || acking.contains(&sid),
                    "round {round}: {sid} lost (cursor {cursor:?})"
                );
            }
        }
        let stats = ob.stats().unwrap();
        assert_eq!(stats.pending_count, present.len() as u64);
        assert_eq!(ob.trees().order.len(), present.len());
    }
}

#[tokio::test]
async fn a_db_file_with_a_garbled_header_is_moved_aside_and_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path(), 200).await;
    garble(&tmp.path().join("queue/db"), 0, 4096);
    let ob = open(tmp.path());
    let rebuild = ob.rebuild().expect("rebuilt").clone();
    assert_eq!(
        quarantined(tmp.path()),
        std::slice::from_ref(&rebuild.moved_to)
    );
    let name = rebuild
        .moved_to
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let secs: i64 = name
        .strip_prefix("queue.corrupt-")
        .unwrap()
        .parse()
        .unwrap();
    assert!((secs - now_ms() / 1000).abs() < 60, "{name}");
    assert!(rebuild.moved_to.join("db").exists());
    // Fresh and usable; the service re-reads the source because its state is gone.
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    assert_eq!(ob.state_get(b"cursor").unwrap(), None);
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    ob.flush().await.unwrap();
    drop(ob);
    // No crash loop: the next start opens the new outbox normally.
    let ob = open(tmp.path());
    assert!(!ob.was_rebuilt());
    assert_eq!(ob.pending(Lane::Store, 10).unwrap().len(), 1);
}

/// Offsets of every occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

/// What plain sled 0.34.7 (without our verification) makes of a directory.
#[derive(Debug, PartialEq, Eq)]
enum RawOpen {
    Panics,
    Fails,
    OpensButReadFails,
    OpensAndReads,
}

fn raw_open(dir: &Path) -> RawOpen {
    std::panic::catch_unwind(|| match sled::Config::new().path(dir).open() {
        Err(_) => RawOpen::Fails,
        Ok(db) => {
            let outbox = db.open_tree("outbox").unwrap();
            if outbox.iter().all(|kv| kv.is_ok()) {
                RawOpen::OpensAndReads
            } else {
                RawOpen::OpensButReadFails
            }
        }
    })
    .unwrap_or(RawOpen::Panics)
}

/// Reads everything an open outbox holds, as the daemon would over its life.
fn read_everything(ob: &Outbox) -> Result<(), QueueError> {
    ob.pending(Lane::Store, usize::MAX)?;
    ob.state_scan(b"")?;
    ob.dead_entries()?;
    ob.stats()?;
    Ok(())
}

#[tokio::test]
async fn damage_anywhere_in_the_log_is_caught_at_open_or_harmless() {
    // sled 0.34 panics at open on some damaged logs, and opens others without complaint and
    // fails only when the damaged page is read; without the full read at open (under
    // `catch_unwind`) the daemon would crash, or fail at its first read of that entry, on every
    // start: a crash loop. Which records land where depends on sled's log layout, so the test
    // does not pick them: it damages every tenth record of the log in turn and requires, for
    // each, that the outbox either opens and reads everything or is quarantined — never opens
    // and fails later. Plain sled on the same bytes shows that both cases are among them (each
    // is, for a stretch of records, with sled 0.34.7).
    let tmp = tempfile::tempdir().unwrap();
    let pristine = tmp.path().join("pristine");
    fill(&pristine, 400).await;
    let (mut lazily_detected, mut panicking) = (0, 0);
    for n in (0..400).step_by(10) {
        let data = tmp.path().join(format!("try{n}"));
        copy_dir(&pristine.join("queue"), &data.join("queue"));
        let db = data.join("queue/db");
        let needle = format!("ses_{n:04}\",\"n\":{n}}}");
        for at in find(&std::fs::read(&db).unwrap(), needle.as_bytes()) {
            garble(&db, at + 32, 64); // inside the record's padding
        }
        copy_dir(&data.join("queue"), &data.join("raw"));
        let raw = raw_open(&data.join("raw"));
        let ob = open(&data);
        match ob.rebuild() {
            // Quarantined: corrupt, a sled panic, or a log that recovered less than the mark.
            Some(_) => {}
            None => {
                assert!(
                    raw == RawOpen::OpensAndReads,
                    "record {n}: plain sled says {raw:?}, yet the outbox opened as intact"
                );
                read_everything(&ob).unwrap_or_else(|e| panic!("record {n}: {e}"));
            }
        }
        if matches!(raw, RawOpen::OpensButReadFails | RawOpen::Panics) {
            *(if raw == RawOpen::Panics {
                &mut panicking
            } else {
                &mut lazily_detected
            }) += 1;
            // No crash loop: the fresh outbox opens as it is.
            drop(ob);
            assert!(!open(&data).was_rebuilt(), "record {n}");
        }
        std::fs::remove_dir_all(&data).unwrap();
    }
    assert!(
        lazily_detected > 0 && panicking > 0,
        "sled detected {lazily_detected} damaged records only on read and panicked on {panicking}"
    );
}

#[tokio::test]
async fn a_garbled_snapshot_is_moved_aside_and_a_leftover_generating_one_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path(), 100).await;
    let dir = tmp.path().join("queue");
    let snaps = snapshot_files(&dir);
    assert!(!snaps.is_empty(), "sled wrote no snapshot");
    for s in &snaps {
        std::fs::write(s, b"garbage garbage garbage").unwrap();
    }
    let ob = open(tmp.path());
    assert!(ob.was_rebuilt());
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    ob.flush().await.unwrap();
    drop(ob);
    // A torn `snap.*.generating` from a crash mid-snapshot, sorting after the real one: an
    // interrupted write, removed at open; the outbox keeps its data.
    let torn = dir.join("snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&torn, [7u8; 100]).unwrap();
    let ob = open(tmp.path());
    assert!(!ob.was_rebuilt(), "an interrupted snapshot cost the outbox");
    assert!(!torn.exists());
    let pending = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].session_id(), "ses_a");
    drop(ob);
    // A second corruption: two rebuilds (possibly within the same second) keep both directories.
    for s in &snapshot_files(&dir) {
        std::fs::write(s, b"garbage garbage garbage").unwrap();
    }
    assert!(open(tmp.path()).was_rebuilt());
    assert_eq!(quarantined(tmp.path()).len(), 2);
}

#[tokio::test]
async fn a_truncated_log_recovers_a_consistent_prefix() {
    let tmp = tempfile::tempdir().unwrap();
    fill(tmp.path(), 200).await;
    let db = tmp.path().join("queue/db");
    let len = std::fs::metadata(&db).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let ob = open(tmp.path());
    if ob.was_rebuilt() {
        return; // Also acceptable: the source is re-read from scratch.
    }
    // Like a crash: whatever cursor survived, the records up to it survived with it.
    if let Some(v) = ob.state_get(b"cursor").unwrap() {
        let cursor = i64::from_be_bytes(v.try_into().unwrap());
        let present = ob.pending(Lane::Store, usize::MAX).unwrap();
        assert_eq!(present.len() as i64, cursor + 1);
    }
}

#[test]
fn an_os_error_at_open_fails_without_touching_the_directory() {
    // Not corruption (think permission denied, no space left): moving the directory aside would
    // not help, so open fails and the service manager's restarts retry it as it is.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("queue/db")).unwrap(); // EISDIR on open
    let err = open_err(tmp.path());
    assert!(matches!(err, QueueError::Open { .. }), "{err}");
    assert!(err.is_permanent());
    assert!(
        err.to_string().starts_with("cannot open the outbox at "),
        "{err}"
    );
    assert!(quarantined(tmp.path()).is_empty());
    assert!(tmp.path().join("queue/db").is_dir());
}

#[tokio::test]
async fn a_newer_layout_is_refused_and_left_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open(tmp.path());
        ob.trees()
            .meta
            .insert(meta_key::LAYOUT, &99u64.to_be_bytes()[..])
            .unwrap();
        ob.flush().await.unwrap();
    }
    let err = open_err(tmp.path());
    assert!(
        matches!(err, QueueError::NewerLayout { found: 99, .. }),
        "{err}"
    );
    assert!(err.is_permanent());
    assert!(quarantined(tmp.path()).is_empty());
}

/// `committedSeq` of `<dir>/queue/committed.json`.
fn committed_mark(data: &Path) -> Option<u64> {
    let bytes = std::fs::read(data.join("queue").join("committed.json")).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["committedSeq"].as_u64()
}

#[tokio::test]
async fn the_committed_mark_follows_flushes_at_most_once_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    let opened = Instant::now();
    // The first sequence number an outbox gives out.
    let first = committed_mark(tmp.path()).expect("written at open");
    // A commit flushes; within the second after the last write the mark waits for the
    // trailing write.
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    ob.commit(records(vec![rec("ses_b", 2)])).await.unwrap();
    if opened.elapsed() < Duration::from_millis(800) {
        assert_eq!(committed_mark(tmp.path()), Some(first));
    }
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(committed_mark(tmp.path()), Some(first + 2));
    // `flush` writes it at once (shutdown).
    ob.commit(records(vec![rec("ses_c", 3)])).await.unwrap();
    ob.flush().await.unwrap();
    assert_eq!(committed_mark(tmp.path()), Some(first + 3));
    // No temporary file left beside it.
    assert!(std::fs::read_dir(tmp.path().join("queue"))
        .unwrap()
        .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with(".tmp")));
    // The queue writes no status file: that is the daemon's.
    assert!(!tmp.path().join("status.json").exists());
}

/// Copies `<from>/queue` to `<to>/queue`.
fn copy_queue(from: &Path, to: &Path) {
    copy_dir(&from.join("queue"), &to.join("queue"));
}

#[tokio::test]
async fn a_log_that_recovers_less_than_the_committed_mark_is_quarantined() {
    // What sled does with a damaged log — recover an earlier prefix and say nothing — made
    // exactly: the outbox as it was after two commits, next to the mark written after five.
    let tmp = tempfile::tempdir().unwrap();
    let (live, early) = (tmp.path().join("live"), tmp.path().join("early"));
    let ob = open(&live);
    let first = committed_mark(&live).unwrap();
    for i in 0..2 {
        ob.commit(records(vec![rec(&format!("ses_{i}"), i)]))
            .await
            .unwrap();
    }
    ob.flush().await.unwrap();
    drop(ob);
    copy_queue(&live, &early);
    let ob = open(&live);
    for i in 2..5 {
        ob.commit(records(vec![rec(&format!("ses_{i}"), i)]))
            .await
            .unwrap();
    }
    ob.flush().await.unwrap();
    drop(ob);
    let mark = first + 5;
    assert_eq!(committed_mark(&live), Some(mark));

    // The early outbox with its own mark opens as it is.
    let rewound = tmp.path().join("rewound");
    copy_queue(&early, &rewound);
    assert!(!open(&rewound).was_rebuilt());
    // With the later mark it is caught.
    std::fs::copy(
        live.join("queue/committed.json"),
        rewound.join("queue/committed.json"),
    )
    .unwrap();
    let ob = open(&rewound);
    let rebuild = ob.rebuild().expect("a rewound log is quarantined");
    assert!(
        rebuild.cause.contains(&mark.to_string()),
        "{}",
        rebuild.cause
    );
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    drop(ob);
    assert_eq!(quarantined(&rewound).len(), 1);

    // Builds before `committed.json` kept the mark as `committedSeq` in `<data_dir>/status.json`.
    let legacy = tmp.path().join("legacy");
    copy_queue(&early, &legacy);
    std::fs::remove_file(legacy.join("queue/committed.json")).unwrap();
    std::fs::write(
        legacy.join("status.json"),
        format!(r#"{{"v":"1","pid":1,"writtenAt":1,"pendingCount":5,"committedSeq":{mark}}}"#),
    )
    .unwrap();
    assert!(open(&legacy).was_rebuilt());
    // A legacy mark the log reaches is kept, and moved to `committed.json` by that open.
    let upgraded = tmp.path().join("upgraded");
    copy_queue(&live, &upgraded);
    std::fs::remove_file(upgraded.join("queue/committed.json")).unwrap();
    std::fs::write(
        upgraded.join("status.json"),
        format!(r#"{{"v":"1","pid":1,"writtenAt":1,"committedSeq":{mark}}}"#),
    )
    .unwrap();
    let ob = open(&upgraded);
    assert!(!ob.was_rebuilt());
    assert_eq!(ob.pending(Lane::Store, 10).unwrap().len(), 5);
    assert_eq!(committed_mark(&upgraded), Some(mark));
}

#[tokio::test]
async fn the_outbox_and_its_futures_can_move_between_tasks() {
    fn send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn send<T: Send>(t: T) -> T {
        t
    }
    let tmp = tempfile::tempdir().unwrap();
    let ob = open(tmp.path());
    send_sync(&ob);
    let task = {
        let ob = ob.clone();
        tokio::spawn(async move {
            send(ob.commit(records(vec![rec("ses_a", 1)])))
                .await
                .unwrap();
            let p = ob.pending(Lane::Store, 1).unwrap().remove(0);
            send(ob.ack(&p)).await.unwrap();
            send(ob.dead_letter(&p, "x")).await.unwrap();
            send(ob.retry_dead()).await.unwrap();
            send(ob.flush()).await.unwrap();
        })
    };
    task.await.unwrap();
    assert_eq!(ob.stats().unwrap().acked_total, 1);
}

#[test]
fn errors_are_lowercase_without_a_trailing_period() {
    let dir = PathBuf::from("/x/queue");
    let errors = [
        QueueError::Locked { dir: dir.clone() },
        QueueError::Storage {
            dir: dir.clone(),
            op: "commit",
            source: sled::Error::Unsupported("x".into()),
        },
        QueueError::RebuildFailed {
            dir: dir.clone(),
            cause: "x".into(),
        },
        QueueError::NewerLayout {
            dir,
            found: 2,
            known: 1,
        },
    ];
    for e in errors {
        let s = e.to_string();
        assert!(s.chars().next().unwrap().is_lowercase(), "{s}");
        assert!(!s.ends_with('.'), "{s}");
        assert!(s.contains("/x/queue"), "{s}");
        assert!(e.is_permanent());
    }
}

// ---- Lanes: one FIFO, ack, dead letters and counters per sink ----

const TWO: [Lane; 2] = [Lane::Store, Lane::Convex];

fn open_lanes(dir: &Path, lanes: &[Lane]) -> Outbox {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Outbox::open_lanes(dir, &cfg(), lanes) {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => return opened.expect("open the outbox"),
        }
    }
}

fn lane_depths(ob: &Outbox) -> Vec<(Lane, u64, u64)> {
    ob.stats()
        .unwrap()
        .lanes
        .iter()
        .map(|l| (l.lane, l.pending_count, l.dead_count))
        .collect()
}

#[tokio::test]
async fn one_lane_drains_while_the_other_keeps_everything_and_the_record_leaves_with_the_last_ack()
{
    let tmp = tempfile::tempdir().unwrap();
    let ob = open_lanes(tmp.path(), &TWO);
    ob.commit(records(vec![
        rec("ses_a", 1),
        rec("ses_b", 1),
        rec("ses_c", 1),
    ]))
    .await
    .unwrap();
    // The store lane drains everything; Convex (down) acknowledges nothing.
    let batch = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&batch), ["ses_a", "ses_b", "ses_c"]);
    let outcomes = ob.ack_batch(&batch).await.unwrap();
    assert_eq!(outcomes, vec![AckOutcome::Acked; 3]);
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    assert_eq!(
        sids(&ob.pending(Lane::Convex, 10).unwrap()),
        ["ses_a", "ses_b", "ses_c"]
    );
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 0, 0), (Lane::Convex, 3, 0)]
    );
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.acked_total), (3, 0));
    // The record's bytes are stored once, whatever the number of lanes.
    assert_eq!(ob.trees().outbox.len(), 3);
    // Convex comes back: each ack of the last lane removes the record.
    let c = ob.pending(Lane::Convex, 2).unwrap();
    ob.ack_batch(&c).await.unwrap();
    let stats = ob.stats().unwrap();
    assert_eq!((stats.pending_count, stats.acked_total), (1, 2));
    assert_eq!(ob.trees().outbox.len(), 1);
    let per_lane: Vec<u64> = stats.lanes.iter().map(|l| l.acked_total).collect();
    assert_eq!(per_lane, [3, 2]);
    // And it all survives a reopen, counters recomputed.
    drop(ob);
    let ob = open_lanes(tmp.path(), &TWO);
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 0, 0), (Lane::Convex, 1, 0)]
    );
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_c"]);
}

#[tokio::test]
async fn latest_wins_per_lane_and_an_ack_of_an_older_version_keeps_the_newer_one_in_every_lane() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open_lanes(tmp.path(), &TWO);
    ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
    let store_v1 = ob.pending(Lane::Store, 1).unwrap().remove(0);
    let convex_v1 = ob.pending(Lane::Convex, 1).unwrap().remove(0);
    assert_eq!(ob.ack(&store_v1).await.unwrap(), AckOutcome::Acked);
    // A newer version arrives while Convex is sending v1: both lanes get v2.
    ob.commit(records(vec![rec("ses_a", 2)])).await.unwrap();
    assert_eq!(ob.ack(&convex_v1).await.unwrap(), AckOutcome::Superseded);
    for lane in TWO {
        let p = ob.pending(lane, 10).unwrap();
        assert_eq!(p.len(), 1, "{lane}");
        assert_eq!(json_n(&p[0]), 2, "{lane}");
    }
    // A late second ack of the store lane's old version does not touch v2 either.
    assert_eq!(ob.ack(&store_v1).await.unwrap(), AckOutcome::Superseded);
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 1, 0), (Lane::Convex, 1, 0)]
    );
    // Attempts are counted per lane: Convex failing leaves the store's count at 0.
    let c = ob.pending(Lane::Convex, 1).unwrap().remove(0);
    let c = ob.record_attempt(&c).unwrap().unwrap();
    assert_eq!(c.attempts(), 1);
    assert_eq!(ob.pending(Lane::Store, 1).unwrap()[0].attempts(), 0);
    assert_eq!(ob.pending(Lane::Convex, 1).unwrap()[0].attempts(), 1);
    // The entry read before the attempt no longer matches; the returned one does.
    assert_eq!(ob.ack(&c).await.unwrap(), AckOutcome::Acked);
    assert_eq!(
        ob.stats().unwrap().pending_count,
        1,
        "the store lane holds it"
    );
}

#[tokio::test]
async fn a_dead_letter_is_one_lanes_and_retry_dead_puts_it_back_into_that_lane_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open_lanes(tmp.path(), &TWO);
    ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
        .await
        .unwrap();
    let a = ob.pending(Lane::Convex, 1).unwrap().remove(0);
    assert_eq!(
        ob.dead_letter(&a, "rejected: bad field").await.unwrap(),
        DeadLetterOutcome::Moved
    );
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 2, 0), (Lane::Convex, 1, 1)]
    );
    let dead = ob.dead_entries().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].lane, Some(Lane::Convex));
    assert_eq!(dead[0].record_json(), Some(a.record_json()));
    // The store lane still delivers ses_a.
    assert_eq!(
        sids(&ob.pending(Lane::Store, 10).unwrap()),
        ["ses_a", "ses_b"]
    );
    // Same version still held by the store lane: Convex gets its entry back.
    assert_eq!(ob.retry_dead().await.unwrap(), 1);
    assert_eq!(
        sids(&ob.pending(Lane::Convex, 10).unwrap()),
        ["ses_a", "ses_b"]
    );
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 2, 0), (Lane::Convex, 2, 0)]
    );
    // Dead for Convex after the store lane delivered it: the record stays (in `dead`) and
    // retry-dead commits it again for Convex alone.
    let a = ob.pending(Lane::Convex, 1).unwrap().remove(0);
    ob.dead_letter(&a, "rejected again").await.unwrap();
    let s = ob.pending(Lane::Store, 10).unwrap();
    ob.ack_batch(&s).await.unwrap();
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_b"]);
    assert_eq!(ob.trees().outbox.len(), 1, "ses_a left the outbox");
    assert_eq!(ob.retry_dead().await.unwrap(), 1);
    assert_eq!(
        sids(&ob.pending(Lane::Convex, 10).unwrap()),
        ["ses_b", "ses_a"]
    );
    assert!(ob.pending(Lane::Store, 10).unwrap().is_empty());
    assert_eq!(
        ob.pending(Lane::Convex, 10).unwrap()[1].record_json(),
        a.record_json()
    );
}

#[tokio::test]
async fn an_undecodable_envelope_is_dead_for_every_lane() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open_lanes(tmp.path(), &TWO);
    ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
        .await
        .unwrap();
    ob.trees().outbox.insert("ses_a", &b"garbage"[..]).unwrap();
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_b"]);
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    let dead = ob.dead_entries().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].lane, None);
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 1, 0), (Lane::Convex, 1, 0)]
    );
}

#[tokio::test]
async fn a_lane_no_longer_configured_is_dropped_at_open_and_its_records_with_it() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open_lanes(tmp.path(), &TWO);
        ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
            .await
            .unwrap();
        // ses_a: the store delivered it, only Convex holds it.
        let a = ob.pending(Lane::Store, 1).unwrap().remove(0);
        ob.ack(&a).await.unwrap();
        ob.flush().await.unwrap();
    }
    let ob = open_lanes(tmp.path(), &[Lane::Store]);
    assert_eq!(lane_depths(&ob), vec![(Lane::Store, 1, 0)]);
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    assert!(ob.pending(Lane::Convex, 10).unwrap().is_empty());
    assert_eq!(ob.stats().unwrap().pending_count, 1);
    assert_eq!(ob.trees().outbox.len(), 1);
    // Configured again later: new commits go to both lanes.
    drop(ob);
    let ob = open_lanes(tmp.path(), &TWO);
    ob.commit(records(vec![rec("ses_c", 1)])).await.unwrap();
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_c"]);
    assert_eq!(
        sids(&ob.pending(Lane::Store, 10).unwrap()),
        ["ses_b", "ses_c"]
    );
}

/// Writes an outbox exactly as layout 1 (the build before lanes) left it: V1 envelopes with
/// their attempts, the `order` FIFO, `meta/layout` = 1, a V1 dead letter.
fn write_layout_1(dir: &Path) {
    let queue = dir.join(QUEUE_DIR_NAME);
    std::fs::create_dir_all(&queue).unwrap();
    let db = sled::Config::new().path(&queue).open().unwrap();
    let outbox = db.open_tree("outbox").unwrap();
    let order = db.open_tree("order").unwrap();
    let dead = db.open_tree("dead").unwrap();
    let meta = db.open_tree("meta").unwrap();
    for (seq, sid, attempts) in [(3u64, "ses_a", 2u32), (5, "ses_b", 0)] {
        let rec = format!("{{\"sessionId\":\"{sid}\",\"n\":{seq}}}");
        let v = format!(
            "{{\"v\":\"1\",\"seq\":{seq},\"sessionId\":\"{sid}\",\"updatedAt\":{seq},\"exportedAt\":{seq},\"enqueuedAt\":100,\"attempts\":{attempts},\"recordLen\":{}}}\n{rec}",
            rec.len()
        );
        outbox.insert(sid, v.as_bytes()).unwrap();
        order.insert(seq.to_be_bytes(), sid.as_bytes()).unwrap();
    }
    let stored = "{\"v\":\"1\",\"seq\":1,\"sessionId\":\"ses_z\",\"updatedAt\":1,\"exportedAt\":1,\"enqueuedAt\":1,\"attempts\":0,\"recordLen\":2}\n{}";
    let dead_value = format!(
        "{{\"v\":\"1\",\"sessionId\":\"ses_z\",\"seq\":1,\"reason\":\"http 400\",\"deadAt\":7,\"storedLen\":{}}}\n{stored}",
        stored.len()
    );
    dead.insert(format::dead_key(b"ses_z", 1), dead_value.as_bytes())
        .unwrap();
    meta.insert(meta_key::LAYOUT, &1u64.to_be_bytes()[..])
        .unwrap();
    meta.insert(meta_key::NEXT_SEQ, &6u64.to_be_bytes()[..])
        .unwrap();
    db.flush().unwrap();
}

#[tokio::test]
async fn an_outbox_of_layout_1_is_migrated_into_every_lane_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    write_layout_1(tmp.path());
    let ob = open_lanes(tmp.path(), &TWO);
    assert!(!ob.was_rebuilt());
    for lane in TWO {
        let p = ob.pending(lane, 10).unwrap();
        assert_eq!(sids(&p), ["ses_a", "ses_b"], "{lane}");
        assert_eq!(
            p.iter().map(Pending::attempts).collect::<Vec<_>>(),
            [2, 0],
            "attempts carried over in {lane}"
        );
        assert_eq!(json_n(&p[0]), 3);
    }
    assert_eq!(ob.trees().legacy_order.len(), 0);
    assert_eq!(
        ob.trees().meta.get(meta_key::LAYOUT).unwrap().as_deref(),
        Some(&2u64.to_be_bytes()[..])
    );
    // The layout-1 dead letter is no lane's: retry-dead gives it to every configured lane.
    let dead = ob.dead_entries().unwrap();
    assert_eq!((dead.len(), dead[0].lane), (1, None));
    // New sequence numbers continue after the old ones.
    ob.commit(records(vec![rec("ses_c", 1)])).await.unwrap();
    assert!(ob.pending(Lane::Store, 10).unwrap()[2].seq() >= 6);
    assert_eq!(ob.retry_dead().await.unwrap(), 1);
    for lane in TWO {
        assert_eq!(
            sids(&ob.pending(lane, 10).unwrap()),
            ["ses_a", "ses_b", "ses_c", "ses_z"],
            "{lane}"
        );
    }
    // Reopened: migrated once, the same.
    drop(ob);
    let ob = open_lanes(tmp.path(), &TWO);
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 4, 0), (Lane::Convex, 4, 0)]
    );
}

#[tokio::test]
async fn open_repairs_lane_entries_and_the_lane_fifo() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open_lanes(tmp.path(), &TWO);
        ob.commit(records(vec![rec("ses_a", 1), rec("ses_b", 1)]))
            .await
            .unwrap();
        let b = ob.pending(Lane::Convex, 10).unwrap()[1].clone();
        let t = ob.trees();
        // A missing FIFO key, a lane entry naming a version that is not there, an entry no
        // lane holds.
        t.order
            .remove(format::lane_order_key(Lane::Convex, b.seq()))
            .unwrap();
        t.lanes
            .insert(
                format::lane_key(Lane::Store, b"ses_a"),
                format::encode_lane_entry(77, 0),
            )
            .unwrap();
        let orphan = t.outbox.get("ses_a").unwrap().unwrap();
        t.outbox.insert("ses_orphan", orphan).unwrap();
        ob.flush().await.unwrap();
    }
    let ob = open_lanes(tmp.path(), &TWO);
    assert_eq!(
        sids(&ob.pending(Lane::Convex, 10).unwrap()),
        ["ses_a", "ses_b"]
    );
    assert_eq!(sids(&ob.pending(Lane::Store, 10).unwrap()), ["ses_b"]);
    // ses_orphan's header names ses_a: undecodable for its key, dead for every lane.
    assert!(ob
        .dead_entries()
        .unwrap()
        .iter()
        .any(|d| d.session_id == "ses_orphan" && d.lane.is_none()));
    assert_eq!(
        lane_depths(&ob),
        vec![(Lane::Store, 1, 0), (Lane::Convex, 2, 0)]
    );
}

#[tokio::test]
async fn commit_to_lane_gives_one_lane_what_nothing_else_holds_and_pages_the_state() {
    let tmp = tempfile::tempdir().unwrap();
    let ob = open_lanes(tmp.path(), &TWO);
    // ses_a is pending (a newer version on its way to both lanes); ses_b is not.
    ob.commit(records(vec![rec("ses_a", 5)])).await.unwrap();
    let c = Commit {
        records: vec![rec("ses_a", 1), rec("ses_b", 1)],
        state_puts: vec![(b"k/1".to_vec(), b"v".to_vec())],
        ..Commit::default()
    };
    assert_eq!(ob.commit_to_lane(Lane::Store, c).await.unwrap(), 1);
    let store = ob.pending(Lane::Store, 10).unwrap();
    assert_eq!(sids(&store), ["ses_a", "ses_b"]);
    assert_eq!(json_n(&store[0]), 5, "the pending version is left alone");
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_a"]);
    assert_eq!(ob.state_get(b"k/1").unwrap().as_deref(), Some(&b"v"[..]));
    // An unconfigured lane is refused and nothing is written.
    let one = open_lanes(tempfile::tempdir().unwrap().path(), &[Lane::Store]);
    assert!(matches!(
        one.commit_to_lane(Lane::Convex, records(vec![rec("ses_x", 1)]))
            .await,
        Err(QueueError::InvalidRecord { .. })
    ));
    // Pages of the state tree, in key order, within the prefix.
    for i in 0..5u8 {
        ob.commit(Commit {
            state_puts: vec![(vec![b'p', b'/', i], vec![i])],
            ..Commit::default()
        })
        .await
        .unwrap();
    }
    let first = ob.state_after(b"p/", None, 2).unwrap();
    assert_eq!(first.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(), [0, 1]);
    let next = ob.state_after(b"p/", Some(&first[1].0), 10).unwrap();
    assert_eq!(
        next.iter().map(|(_, v)| v[0]).collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

#[tokio::test]
async fn an_inspecting_open_keeps_the_lanes_it_does_not_configure() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let ob = open_lanes(tmp.path(), &TWO);
        ob.commit(records(vec![rec("ses_a", 1)])).await.unwrap();
        let a = ob.pending(Lane::Store, 1).unwrap().remove(0);
        ob.ack(&a).await.unwrap();
        ob.flush().await.unwrap();
    }
    // `status` or `queue list` with a config without Convex: nothing dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ob = loop {
        match Outbox::open_keeping(tmp.path(), &cfg(), &[Lane::Store]) {
            Err(QueueError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            opened => break opened.unwrap(),
        }
    };
    assert_eq!(ob.stats().unwrap().pending_count, 1);
    drop(ob);
    let ob = open_lanes(tmp.path(), &TWO);
    assert_eq!(sids(&ob.pending(Lane::Convex, 10).unwrap()), ["ses_a"]);
    drop(ob);
    // The daemon with that config: Convex's entry goes, and the record with it.
    let ob = open_lanes(tmp.path(), &[Lane::Store]);
    assert_eq!(ob.stats().unwrap().pending_count, 0);
}
