//! `opencode-telemetry run` as a process: waiting for a missing database, the todo rule, a
//! crashed (stale) turn, restart without re-exports, deletion while the daemon is down, and
//! malformed rows.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rusqlite::params;
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::gen_db::log_events;
use crate::support::*;

/// `[privacy]` letting every value leave, for tests that compare records with the database's
/// values or across data dirs (each has its own key for hashed paths).
const CONTENT: &str = "[privacy]\nlevel = \"content\"\n";
const FAST: &str = "[source]\npoll_interval_ms = 100\n[export]\ndebounce_ms = 0\n";

/// Waits until `sink` holds `n` records, then one more second, so that an export too many would
/// show.
fn settle(sink: &Path, n: usize, what: &str) {
    wait_for(30, what, || ndjson_if_any(sink).len() >= n);
    std::thread::sleep(Duration::from_millis(1000));
}

/// Runs the daemon until the local sink holds `n` records (and [`settle`]s), stops it with
/// SIGTERM (it must exit 0) and returns every record.
fn run_until(scratch: &Scratch, config: &Path, db: &Path, n: usize) -> Vec<Value> {
    let mut daemon = Daemon::start_local(scratch, config, db);
    settle(&scratch.local_sink(), n, &format!("{n} exports"));
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    read_ndjson(&scratch.local_sink())
}

fn roots(db: &Path) -> BTreeSet<String> {
    sql(db)
        .prepare("SELECT id FROM session WHERE parent_id IS NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn ids(records: &[Value]) -> BTreeSet<String> {
    records
        .iter()
        .map(|r| r["sessionId"].as_str().unwrap().to_string())
        .collect()
}

/// Session ids whose todo list still has open items.
fn open_todo_sessions(db: &Path) -> BTreeSet<String> {
    sql(db)
        .prepare(
            "SELECT DISTINCT session_id FROM todo WHERE status NOT IN ('completed', 'cancelled')",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn run_waits_for_a_missing_database_then_exports_every_session() {
    let scratch = Scratch::new();
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 0\n"));
    let db = scratch.path("oc/opencode.db");
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        daemon.try_wait().is_none(),
        "the daemon exited: {}",
        daemon.output()
    );
    assert_eq!(
        daemon
            .output()
            .matches("waiting for the opencode database")
            .count(),
        1,
        "{}",
        daemon.output()
    );
    assert!(ndjson_if_any(&scratch.local_sink()).is_empty());

    // OpenCode creates its database: the daemon picks it up.
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let tmp = scratch.path("oc/opencode.db.tmp");
    std::fs::copy(fixture_dir().join("opencode.db"), &tmp).unwrap();
    std::fs::rename(&tmp, &db).unwrap();
    wait_for(30, "25 exports", || {
        ndjson_if_any(&scratch.local_sink()).len() >= 25
    });
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(ids(&records), roots(&db));
    assert_eq!(records.len(), 25, "each session exported once");

    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    assert_eq!(
        daemon
            .output()
            .matches("waiting for the opencode database")
            .count(),
        1
    );
    assert!(daemon.output().contains("shutdown complete"));
    let log = read_ndjson(&scratch.path("transitions.jsonl"));
    assert_eq!(log.len(), 25);
    for line in &log {
        let expected = if line["endReason"] == "error" {
            "session.error"
        } else {
            "session.idle"
        };
        assert_eq!(line["event"], expected, "{line}");
    }
}

#[test]
fn idle_sessions_with_open_todos_wait_for_final_after_secs() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let open = open_todo_sessions(&db);
    assert_eq!(open.len(), 3);

    // final_after_secs far away: the three sessions with open todos are held back.
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 1000000000\n"));
    let records = run_until(&scratch, &config, &db, 22);
    let exported = ids(&records);
    assert_eq!(records.len(), 22);
    assert!(
        exported.is_disjoint(&open),
        "a session with open todos was exported early"
    );
    assert_eq!(
        exported.union(&open).cloned().collect::<BTreeSet<_>>(),
        roots(&db)
    );

    // These sessions have been idle since the fixture was made; with final_after_secs = 1 the
    // restarted daemon exports exactly them (the other 22 are unchanged: not exported again).
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 1\n"));
    let records = run_until(&scratch, &config, &db, 25);
    assert_eq!(records.len(), 25);
    assert_eq!(ids(&records[22..]), open);
    for r in &records[22..] {
        let stats = &r["todoStats"];
        assert!(stats["pending"].as_u64().unwrap() + stats["inProgress"].as_u64().unwrap() > 0);
        assert_eq!(r["endReason"], "idle");
    }
}

/// Makes a session look like OpenCode died mid-turn: its newest assistant message loses
/// `time.completed` and `finish`.
fn crash_turn(db: &Path, session_id: &str) {
    let w = writer(db);
    let n = w
        .execute(
            "UPDATE message SET data = json_remove(data, '$.time.completed', '$.finish') WHERE id = \
             (SELECT id FROM message WHERE session_id = ?1 AND json_extract(data, '$.role') = 'assistant' \
              ORDER BY time_created DESC, id DESC LIMIT 1)",
            [session_id],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn a_turn_that_never_completed_is_exported_once_as_incomplete_after_stale_after_secs() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let crashed = "ses_e035b7394ffeBPXMCvay8DFBP4";
    crash_turn(&db, crashed);

    let config = scratch.write_config(&format!(
        "{FAST}final_after_secs = 0\nstale_after_secs = 1000000000\n"
    ));
    let records = run_until(&scratch, &config, &db, 24);
    assert_eq!(
        records.len(),
        24,
        "a busy session is not exported before it goes stale"
    );
    assert!(!ids(&records).contains(crashed));

    let config = scratch.write_config(&format!(
        "{FAST}final_after_secs = 0\nstale_after_secs = 1\n"
    ));
    let records = run_until(&scratch, &config, &db, 25);
    assert_eq!(records.len(), 25, "exported once");
    let r = &records[24];
    assert_eq!(r["sessionId"], crashed);
    assert_eq!(r["incomplete"], true);
    assert_eq!(r["endReason"], "idle");
    let log = read_ndjson(&scratch.path("transitions.jsonl"));
    assert_eq!(log.last().unwrap()["event"], "stale");
}

/// Appends a new turn (user prompt + completed assistant answer) to a session, as OpenCode's
/// projector writes it: message rows, parts, and the events it logs (when the database has the
/// live event log: [`log_events`]).
pub(crate) fn add_turn(db: &Path, session_id: &str, at_ms: i64) {
    let w = writer(db);
    let tx = w.unchecked_transaction().unwrap();
    let user = format!("msg_ffffffffff01{:014}", at_ms % 100_000_000_000_000);
    let asst = format!("msg_ffffffffff02{:014}", at_ms % 100_000_000_000_000);
    tx.execute(
        "INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)",
        params![user, session_id, at_ms, format!(r#"{{"role":"user","time":{{"created":{at_ms}}},"agent":"build","model":{{"providerID":"fake","modelID":"fake-model"}}}}"#)],
    )
    .unwrap();
    tx.execute(
        "INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)",
        params![asst, session_id, at_ms + 1, format!(
            r#"{{"parentID":"{user}","role":"assistant","mode":"build","agent":"build","cost":0.5,"tokens":{{"input":100,"output":10,"reasoning":0,"cache":{{"read":0,"write":0}}}},"modelID":"fake-model","providerID":"fake","time":{{"created":{},"completed":{}}},"finish":"stop"}}"#,
            at_ms + 1,
            at_ms + 2
        )],
    )
    .unwrap();
    for (i, data) in [
        r#"{"type":"step-start"}"#,
        r#"{"type":"text","text":"second answer"}"#,
        r#"{"type":"step-finish","reason":"stop","cost":0.5,"tokens":{"input":100,"output":10,"reasoning":0,"cache":{"read":0,"write":0}}}"#,
    ]
    .iter()
    .enumerate()
    {
        tx.execute(
            "INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
            params![format!("prt_ffffffffff0{i}{:014}", at_ms % 100_000_000_000_000), asst, session_id, at_ms + 2, data],
        )
        .unwrap();
    }
    log_events(&tx, session_id, "message.part.updated.1", 5);
    tx.execute(
        "UPDATE session SET time_updated = ?2 WHERE id = ?1",
        params![session_id, at_ms],
    )
    .unwrap();
    tx.commit().unwrap();
}

#[test]
fn after_a_restart_only_changed_and_deleted_sessions_are_exported() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 0\n"));
    let first = run_until(&scratch, &config, &db, 25);
    assert_eq!(first.len(), 25);

    // While the daemon is down: a session is deleted (OpenCode cascades its rows away, children
    // first) and another gets a new turn.
    let deleted = "ses_e035b4390ffehBh0TbGe3PP4OX"; // s12, a subagent parent
    let changed = "ses_e035b1c37ffeqT86ocD3i8jlk0"; // c00
    {
        let w = writer(&db);
        w.execute("DELETE FROM session WHERE parent_id = ?1", [deleted])
            .unwrap();
        w.execute("DELETE FROM session WHERE id = ?1", [deleted])
            .unwrap();
        w.execute("DELETE FROM event WHERE aggregate_id = ?1", [deleted])
            .unwrap();
        w.execute(
            "DELETE FROM event_sequence WHERE aggregate_id = ?1",
            [deleted],
        )
        .unwrap();
        assert_eq!(
            count_rows(
                &w,
                "SELECT COUNT(*) FROM message WHERE session_id = ?1",
                deleted
            ),
            0,
            "cascade"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    add_turn(&db, changed, now - 10_000);

    let all = run_until(&scratch, &config, &db, 27);
    assert_eq!(all.len(), 27, "unchanged sessions are not exported again");
    let new: Vec<&Value> = all[25..].iter().collect();
    let del = new
        .iter()
        .find(|r| r["sessionId"] == deleted)
        .expect("the deleted session");
    assert_eq!(del["endReason"], "deleted");
    assert!(del["deletedAt"].as_i64().unwrap() >= now - 10_000);
    let before = first.iter().find(|r| r["sessionId"] == deleted).unwrap();
    assert_eq!(
        del["messageCount"], before["messageCount"],
        "the last record, kept in the daemon's state"
    );
    assert_eq!(del["children"], before["children"]);
    let upd = new
        .iter()
        .find(|r| r["sessionId"] == changed)
        .expect("the changed session");
    let old = first.iter().find(|r| r["sessionId"] == changed).unwrap();
    assert_eq!(
        upd["messageCount"].as_u64().unwrap(),
        old["messageCount"].as_u64().unwrap() + 2
    );
    assert!((upd["cost"].as_f64().unwrap() - old["cost"].as_f64().unwrap() - 0.5).abs() < 1e-9);
    assert!(upd["updatedAt"].as_i64().unwrap() > old["updatedAt"].as_i64().unwrap());
    let log = read_ndjson(&scratch.path("transitions.jsonl"));
    assert_eq!(log.len(), 27);
    assert!(log
        .iter()
        .any(|l| l["sessionId"] == deleted && l["event"] == "session.deleted"));
}

fn count_rows(conn: &rusqlite::Connection, sql: &str, id: &str) -> i64 {
    conn.query_row(sql, [id], |r| r.get(0)).unwrap()
}

/// The database replaced by another (#16): every session vanishing at once is held, not
/// exported as deleted — a WARN, a `status` line — until the old database returns (released) or
/// the user runs `queue confirm-deletions` (then each is exported as deleted).
#[test]
fn a_replaced_database_holds_its_deletions_until_confirmed() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let original = scratch.path("original.db");
    std::fs::copy(&db, &original).unwrap();
    let other = kinds_dir().join("opencode.db");
    let config = scratch.write_config(FAST);
    let old_ids = roots(&db);
    let once = || {
        let out = run_once(&scratch, &config, &db);
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cli = |args: &[&str]| {
        let out = run(command(&scratch).arg("--config").arg(&config).args(args));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deleted = || -> BTreeSet<String> {
        read_ndjson(&scratch.local_sink())
            .iter()
            .filter(|r| r["endReason"] == "deleted")
            .map(|r| r["sessionId"].as_str().unwrap().to_string())
            .collect()
    };
    let replace = |with: &Path| {
        // A new file in its place (the connection sees another file, as after `rm` + a new
        // OpenCode database, or a restore of another machine's).
        let tmp = scratch.path("oc/incoming.db");
        std::fs::copy(with, &tmp).unwrap();
        std::fs::rename(&tmp, &db).unwrap();
    };
    once();
    assert_eq!(read_ndjson(&scratch.local_sink()).len(), 25);

    replace(&other);
    let (stdout, stderr) = once();
    assert!(deleted().is_empty(), "deletions exported: {:?}", deleted());
    assert!(stdout.contains("25 deletion(s) held"), "{stdout}");
    assert!(
        stderr.contains("WARN") && stderr.contains("25 sessions vanished"),
        "{stderr}"
    );
    let status = cli(&["status"]);
    assert!(status.contains("held deletions:  WARNING: 25"), "{status}");
    // The daemon says it at start and in its status file too.
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    wait_for(20, "the status file", || {
        std::fs::read_to_string(scratch.path("data/status.json"))
            .is_ok_and(|s| s.contains("\"heldDeletions\":25"))
    });
    let status = cli(&["status"]);
    assert!(status.contains("held deletions:  WARNING: 25"), "{status}");
    assert!(daemon.terminate(Duration::from_secs(15)).0.success());
    assert!(
        daemon.output().contains("deletions are held"),
        "{}",
        daemon.output()
    );

    // The old database returns: its sessions are back, their deletions dropped (and the other
    // database's sessions, vanished at once in turn, are held).
    replace(&original);
    once();
    assert!(deleted().is_empty(), "deletions exported: {:?}", deleted());
    let status = cli(&["status", "--json"]);
    let v: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["heldDeletions"], roots(&other).len(), "{status}");

    // Replaced again, and this time the user confirms: each old session exported as deleted.
    replace(&other);
    once();
    assert!(deleted().is_empty());
    let confirmed = cli(&["queue", "confirm-deletions"]);
    assert!(
        confirmed.contains("exported 25 held deletion(s)"),
        "{confirmed}"
    );
    once();
    assert_eq!(deleted(), old_ids);
    let status = cli(&["status"]);
    assert!(!status.contains("held deletions"), "{status}");
}

/// A lasting read failure (the database replaced by garbage, #20) is one WARN, not one per
/// tick, and a `source:` line in `status`; when the database is back, an INFO and the line goes.
#[test]
fn a_lasting_read_failure_warns_once_and_shows_in_status() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let good = scratch.path("good.db");
    std::fs::copy(&db, &good).unwrap();
    let config = scratch.write_config(FAST);
    let status = || {
        let out = run(command(&scratch).arg("--config").arg(&config).arg("status"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    settle(&scratch.local_sink(), 25, "the first pass");
    let garbage = scratch.path("oc/garbage.db");
    std::fs::write(&garbage, vec![0x5a_u8; 64 * 1024]).unwrap();
    std::fs::rename(&garbage, &db).unwrap();
    wait_for(10, "the source line", || status().contains("source:"));
    assert!(status().contains("reading failed"), "{}", status());
    // 30 ticks of 100 ms later: still the one warning.
    std::thread::sleep(Duration::from_secs(3));
    let failures = daemon.output().matches("reading the source failed").count();
    assert_eq!(failures, 1, "{}", daemon.output());

    std::fs::copy(&good, &garbage).unwrap();
    std::fs::rename(&garbage, &db).unwrap();
    wait_for(10, "the source line gone", || !status().contains("source:"));
    assert!(daemon.terminate(Duration::from_secs(15)).0.success());
    assert!(
        daemon.output().contains("reading the source works again"),
        "{}",
        daemon.output()
    );
}

/// A turn written with earlier timestamps (and ids, which OpenCode derives from its clock) than
/// the turn before it — the clock stepped back an hour (#16) — is still the newest turn: `run`
/// exports the session again with both new messages counted.
#[test]
fn a_turn_with_backwards_timestamps_is_exported() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 0\n"));
    let sid = "ses_e035b7394ffeBPXMCvay8DFBP4"; // a text session: one prompt, one reply
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    settle(&scratch.local_sink(), 25, "the first pass");
    let first = read_ndjson(&scratch.local_sink());
    let before = first
        .iter()
        .find(|r| r["sessionId"] == sid)
        .unwrap()
        .clone();
    assert_eq!(before["messageCount"], 2);

    // The new turn: a copy of the prompt and the reply, an hour before the old turn.
    writer(&db)
        .execute_batch(&format!(
            "CREATE TEMP TABLE m AS SELECT * FROM message WHERE session_id = '{sid}';
             UPDATE m SET
               id = CASE json_extract(data, '$.role') WHEN 'user' THEN 'msg_0a0000000001BackwardsUser'
                                                      ELSE 'msg_0a0000000002BackwardsReply' END,
               time_created = time_created - 3600000,
               time_updated = time_updated - 3600000,
               data = json_set(data, '$.time.created', json_extract(data, '$.time.created') - 3600000,
                                     '$.time.completed', json_extract(data, '$.time.completed') - 3600000);
             UPDATE m SET data = json_remove(data, '$.time.completed')
               WHERE json_extract(data, '$.role') = 'user';
             UPDATE m SET data = json_set(data, '$.parentID', 'msg_0a0000000001BackwardsUser')
               WHERE json_extract(data, '$.role') = 'assistant';
             INSERT INTO message SELECT * FROM m;
             UPDATE session SET time_updated = time_updated - 3600000 WHERE id = '{sid}';"
        ))
        .unwrap();
    log_events(&writer(&db), sid, "message.updated.1", 2);
    wait_for(30, "the session exported again", || {
        ndjson_if_any(&scratch.local_sink())
            .iter()
            .filter(|r| r["sessionId"] == sid)
            .count()
            == 2
    });
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    let records = read_ndjson(&scratch.local_sink());
    let after = records.iter().rfind(|r| r["sessionId"] == sid).unwrap();
    assert_eq!(after["messageCount"], 4, "{after}");
    assert_eq!(after["endReason"], "idle", "{after}");
    assert_eq!(records.len(), 26, "only that session exported again");
}

/// Rows whose id is a BLOB or invalid UTF-8 (#16; corruption, or another tool writing the
/// database): each is skipped with one warning per table, and every real session is exported
/// with exactly the values it has without them — by `once`, and by `run`, which warns once,
/// not every tick.
#[test]
fn rows_with_unreadable_ids_are_skipped_and_every_other_session_is_exported() {
    let scratch = Scratch::new();
    let clean = scratch.copy_fixture_db();
    // Every value leaves (plain paths, texts), so they compare across data dirs.
    let reference_config = scratch.write_config(CONTENT);
    let reference: std::collections::BTreeMap<String, Value> = {
        run_once(&scratch, &reference_config, &clean);
        let records = read_ndjson(&scratch.local_sink());
        std::fs::remove_dir_all(scratch.path("data")).unwrap();
        records
            .into_iter()
            .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r))
            .collect()
    };
    assert_eq!(reference.len(), 25);
    let db = scratch.path("bad/opencode.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    std::fs::copy(&clean, &db).unwrap();
    let ids: Vec<&String> = reference.keys().collect();
    // Copies of real rows under unreadable ids: were they read, they would change the counts.
    writer(&db)
        .execute_batch(&format!(
            "CREATE TEMP TABLE s AS SELECT * FROM session WHERE id = '{s0}';
             UPDATE s SET id = CAST(X'66ff6f' AS TEXT), title = 'SECRET-TITLE';
             INSERT INTO session SELECT * FROM s;
             UPDATE s SET id = X'0102';
             INSERT INTO session SELECT * FROM s;
             CREATE TEMP TABLE m AS SELECT * FROM message WHERE session_id = '{s1}'
               ORDER BY time_created DESC LIMIT 1;
             UPDATE m SET id = X'03';
             INSERT INTO message SELECT * FROM m;
             CREATE TEMP TABLE p AS SELECT * FROM part WHERE session_id = '{s2}' LIMIT 1;
             UPDATE p SET id = CAST(X'c328' AS TEXT);
             INSERT INTO part SELECT * FROM p;
             INSERT INTO event_sequence (aggregate_id, seq) VALUES (X'04', 1);",
            s0 = ids[0],
            s1 = ids[1],
            s2 = ids[2],
        ))
        .unwrap();
    let config = scratch.write_config(CONTENT);
    let out = run_once(&scratch, &config, &db);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let got: std::collections::BTreeMap<String, Value> = read_ndjson(&scratch.local_sink())
        .into_iter()
        .map(|r| (r["sessionId"].as_str().unwrap().to_string(), r))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        reference.keys().collect::<Vec<_>>(),
        "every real session, and nothing else"
    );
    let strip = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("exportedAt");
        v.as_object_mut().unwrap().remove("revision");
        v
    };
    for (id, want) in &reference {
        assert_eq!(strip(&got[id]), strip(want), "{id}");
    }
    for table in ["session", "message", "part", "event_sequence"] {
        let n = stderr
            .lines()
            .filter(|l| l.contains("WARN") && l.contains(&format!("table=\"{table}\"")))
            .count();
        assert!(
            n <= 1,
            "{table}: {n} warnings, one at most per table:\n{stderr}"
        );
    }
    assert!(stderr.contains("its id is not UTF-8 text"), "{stderr}");
    assert!(!stderr.contains("SECRET-TITLE"), "{stderr}");

    // `run` on the same database: every session, and the warnings once, not every tick.
    std::fs::remove_dir_all(scratch.path("data")).unwrap();
    let records = run_until(&scratch, &config, &db, 25);
    assert_eq!(records.len(), 25);
    let log = std::fs::read_to_string(scratch.path("daemon.log")).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("its id is not UTF-8 text"))
        .count();
    assert!((1..=4).contains(&warnings), "{warnings} warnings:\n{log}");
}

#[test]
fn a_malformed_row_is_skipped_with_one_warning_and_nothing_else_is_lost() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let sid = "ses_e035b553affejt71lXMmLQpLxo"; // s08, 8 messages
    let (bad_msg, bad_part): (String, String) = {
        let w = writer(&db);
        let m: String = w
            .query_row("SELECT id FROM message WHERE session_id = ?1 ORDER BY time_created LIMIT 1 OFFSET 2", [sid], |r| r.get(0))
            .unwrap();
        let p: String = w
            .query_row("SELECT id FROM part WHERE session_id = ?1 AND message_id <> ?2 ORDER BY id LIMIT 1", [sid, &m], |r| r.get(0))
            .unwrap();
        w.execute(
            "UPDATE message SET data = '{\"role\": \"assistant\", truncated' WHERE id = ?1",
            [&m],
        )
        .unwrap();
        w.execute("UPDATE part SET data = X'00FF' WHERE id = ?1", [&p])
            .unwrap();
        (m, p)
    };
    let config = scratch.write_config("");
    let out = run_once(&scratch, &config, &db);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(bad_msg.as_str()).count(), 1, "{stderr}");
    assert_eq!(stderr.matches(bad_part.as_str()).count(), 1, "{stderr}");
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(records.len(), 25, "every session still exported");
    let r = records.iter().find(|r| r["sessionId"] == sid).unwrap();
    assert_eq!(r["messageCount"], 7, "the malformed message is skipped");
}

#[test]
fn a_subagent_session_that_changes_after_its_parent_was_exported_re_exports_the_parent() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let parent = "ses_e035b5a3effe1VAqFzl4bA7JO8"; // s06
    let child = "ses_e035b58ceffe9MFt8mqpmU3IPW";
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 0\n"));
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    wait_for(30, "25 exports", || {
        ndjson_if_any(&scratch.local_sink()).len() >= 25
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    add_turn(&db, child, now);
    settle(&scratch.local_sink(), 26, "the parent's re-export");
    assert!(daemon.terminate(Duration::from_secs(15)).0.success());
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(records.len(), 26, "only the parent is exported again, once");
    let before = records[..25]
        .iter()
        .find(|r| r["sessionId"] == parent)
        .unwrap();
    let after = &records[25];
    assert_eq!(
        after["sessionId"], parent,
        "the child is not exported on its own"
    );
    assert_eq!(
        after["messageCount"], before["messageCount"],
        "the parent's own rows did not change"
    );
    assert_eq!(
        after["rollup"]["messageCount"].as_u64().unwrap(),
        before["rollup"]["messageCount"].as_u64().unwrap() + 2
    );
    assert_eq!(
        after["children"][0]["messageCount"].as_u64().unwrap(),
        before["children"][0]["messageCount"].as_u64().unwrap() + 2
    );
    assert!(
        after["updatedAt"].as_i64().unwrap() > before["updatedAt"].as_i64().unwrap(),
        "newer at Convex"
    );
}

#[test]
fn a_database_replaced_by_rename_is_reopened_and_read_again() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config(&format!("{FAST}final_after_secs = 0\n"));
    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    wait_for(30, "25 exports", || {
        ndjson_if_any(&scratch.local_sink()).len() >= 25
    });

    // A new file (new inode) takes the old one's name, with one session changed.
    let next = scratch.path("oc/opencode.next.db");
    std::fs::copy(fixture_dir().join("opencode.db"), &next).unwrap();
    let changed = "ses_e035b3ab2ffeO6eS7qqNoSRTcP"; // s13
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    add_turn(&next, changed, now);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::rename(&next, &db).unwrap();

    settle(&scratch.local_sink(), 26, "the changed session's export");
    assert!(daemon.terminate(Duration::from_secs(15)).0.success());
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(
        records.len(),
        26,
        "only the changed session is exported again"
    );
    assert_eq!(records[25]["sessionId"], changed);
    assert!(
        daemon.output().contains("was replaced; reopening"),
        "{}",
        daemon.output()
    );
}

/// Turns a fixture copy into the shape of an OpenCode 1.2-era database: the session columns
/// added since (`workspace_id`, `path`, `agent`, `model`, `cost`, `tokens_*`, `metadata`) and
/// the `event` / `event_sequence` tables do not exist.
fn downgrade_to_v1_2_schema(db: &Path) {
    let w = writer(db);
    w.execute_batch(
        "DROP TABLE event; DROP TABLE event_sequence; DROP INDEX IF EXISTS session_workspace_idx;",
    )
    .unwrap();
    for col in [
        "workspace_id",
        "path",
        "agent",
        "model",
        "cost",
        "tokens_input",
        "tokens_output",
        "tokens_reasoning",
        "tokens_cache_read",
        "tokens_cache_write",
        "metadata",
    ] {
        w.execute_batch(&format!("ALTER TABLE session DROP COLUMN {col}"))
            .unwrap();
    }
}

#[test]
fn an_older_opencode_schema_is_read_through_feature_detection() {
    let scratch = Scratch::new();
    let reference_db = scratch.copy_fixture_db();
    // Every value leaves (plain paths, texts), so they compare across data dirs.
    let config = scratch.write_config(CONTENT);
    run_once(&scratch, &config, &reference_db);
    let reference = read_ndjson(&scratch.local_sink());

    let old = scratch.path("old/opencode.db");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::copy(&reference_db, &old).unwrap();
    downgrade_to_v1_2_schema(&old);

    // once: the same records (all values come from rows every version has).
    let config = scratch.path("old.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{0}\"\n[local]\npath = \"{0}/sessions.ndjson\"\n{CONTENT}",
            scratch.path("data-old").display()
        ),
    )
    .unwrap();
    run_once(&scratch, &config, &old);
    let records = read_ndjson(&scratch.path("data-old/sessions.ndjson"));
    assert_eq!(records.len(), reference.len());
    for (a, b) in records.iter().zip(&reference) {
        let strip = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("exportedAt");
            v.as_object_mut().unwrap().remove("revision");
            v
        };
        assert_eq!(strip(a), strip(b));
    }

    // run: without event_sequence, changes are found through message times.
    let config = scratch.path("old-run.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{0}\"\n{FAST}final_after_secs = 0\n[local]\npath = \"{0}/sessions.ndjson\"\n",
            scratch.path("data-old-run").display()
        ),
    )
    .unwrap();
    let mut daemon = Daemon::start_local(&scratch, &config, &old);
    let sink = scratch.path("data-old-run/sessions.ndjson");
    wait_for(30, "25 exports", || ndjson_if_any(&sink).len() >= 25);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    add_turn(&old, "ses_e035b3ab2ffeO6eS7qqNoSRTcP", now);
    settle(&sink, 26, "the changed session");
    assert!(daemon.terminate(Duration::from_secs(15)).0.success());
    let records = read_ndjson(&sink);
    assert_eq!(records.len(), 26);
    assert_eq!(records[25]["sessionId"], "ses_e035b3ab2ffeO6eS7qqNoSRTcP");
}

/// `once` and `run` share the tracker, its rules and its persisted state: after `once`, `run`
/// over the unchanged database exports nothing; a session that changes afterwards is exported
/// by `run` exactly once.
#[test]
fn once_then_run_re_exports_nothing_unchanged() {
    let scratch = Scratch::new();
    let db = scratch.copy_fixture_db();
    let config = scratch.write_config(FAST);
    run_once(&scratch, &config, &db);
    let after_once = read_ndjson(&scratch.local_sink());
    assert_eq!(ids(&after_once), roots(&db));
    assert_eq!(after_once.len(), 25);

    let mut daemon = Daemon::start_local(&scratch, &config, &db);
    // Several polls and debounce windows (100 ms / 0 ms) without any export.
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(
        ndjson_if_any(&scratch.local_sink()).len(),
        25,
        "run re-exported unchanged sessions\n{}",
        daemon.output()
    );
    // A new end of turn in one session: exactly one more export, of that session.
    let id = after_once[0]["sessionId"].as_str().unwrap().to_string();
    let writer = writer(&db);
    let (msg, created): (String, i64) = writer
        .query_row(
            "SELECT id, time_created FROM message WHERE session_id = ?1 AND json_extract(data, '$.role') = 'assistant' ORDER BY time_created DESC, id DESC LIMIT 1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let data = format!(
        r#"{{"role":"assistant","time":{{"created":{now},"completed":{now}}},"finish":"stop","agent":"build","providerID":"p","modelID":"m"}}"#
    );
    writer
        .execute(
            "INSERT INTO message (id, session_id, time_created, time_updated, data) VALUES (?1, ?2, ?3, ?3, ?4)",
            params![format!("{msg}z"), id, created.max(now), data],
        )
        .unwrap();
    log_events(&writer, &id, "message.updated.1", 1);
    settle(&scratch.local_sink(), 26, "the changed session's export");
    let status = daemon.terminate(Duration::from_secs(15)).0;
    assert!(status.success(), "{status:?}\n{}", daemon.output());
    let records = read_ndjson(&scratch.local_sink());
    assert_eq!(records.len(), 26, "{}", daemon.output());
    assert_eq!(records[25]["sessionId"], id.as_str());
}
