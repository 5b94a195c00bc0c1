//! A generated OpenCode database for delivery tests: N top-level sessions cloned from the real
//! rows of the OpenCode 1.18.33 fixture (fresh session, message and part ids, timestamps
//! shifted), and a writer that adds a completed assistant step to a session while the daemon
//! runs (as `write_steps` in `daemon/benches/source.rs`), each giving a new version of the
//! session's record (a newer `updatedAt`).
//!
//! The file is a copy of the fixture (same schema, projects and migrations) whose session rows
//! are replaced, so the daemon reads it exactly as it reads a real database. The writer keeps a
//! read-write connection in WAL mode, like OpenCode.
//!
//! Self-contained (std and rusqlite only); part of the dev-only `test-support` crate used by the
//! integration tests and `daemon/benches/source.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params, Connection};

/// The checkpointed fixture database made by OpenCode 1.18.33.
fn fixture_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/opencode-1.18.33/opencode.db")
}

/// One fixture session's rows.
struct FixtureSession {
    session: Vec<SqlValue>,
    messages: Vec<(String, i64, i64, String)>,
    parts: Vec<(String, String, i64, i64, String)>,
    todos: Vec<(String, String, String, i64, i64, i64)>,
}

/// Logs `n` durable events of `kind` (`message.updated.1`, …) for `session_id`, as OpenCode's
/// projector does in the transaction of every write (≥ 1.16): the session's `event_sequence.seq`
/// goes up by `n` and each event is appended to `event`. Does nothing on a database without the
/// live event log (no `event` or `migration` table: OpenCode before 1.16).
pub fn log_events(conn: &Connection, session_id: &str, kind: &str, n: i64) {
    let live: bool = conn
        .query_row(
            "SELECT COUNT(*) = 3 FROM sqlite_master WHERE type = 'table' \
             AND name IN ('event', 'event_sequence', 'migration')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    if !live {
        return;
    }
    for _ in 0..n {
        conn.execute(
            "INSERT INTO event_sequence (aggregate_id, seq) VALUES (?1, 0) \
             ON CONFLICT(aggregate_id) DO UPDATE SET seq = seq + 1",
            [session_id],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO event (id, aggregate_id, seq, type, data) \
             SELECT 'evt_' || lower(hex(randomblob(12))), aggregate_id, seq, ?2, '{}' \
             FROM event_sequence WHERE aggregate_id = ?1",
            params![session_id, kind],
        )
        .unwrap();
    }
}

/// A generated database and its writer.
pub struct GenDb {
    /// The database file.
    pub path: PathBuf,
    conn: Connection,
    ids: Vec<String>,
    counter: u64,
    last_stamp: i64,
}

/// Session ids with OpenCode's shape (`ses_` + 12 hex + 14 more), unique per test run.
fn session_id(n: usize) -> String {
    format!("ses_{:012x}Gen{n:011}", 0xefff_ffff_ffffu64 - n as u64)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn query_all<T, P, F>(conn: &Connection, sql: &str, params: P, f: F) -> Vec<T>
where
    P: rusqlite::Params,
    F: FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    conn.prepare(sql)
        .unwrap()
        .query_map(params, f)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn load_fixture(conn: &Connection) -> (Vec<String>, Vec<FixtureSession>) {
    let cols: Vec<String> = query_all(
        conn,
        "SELECT name FROM pragma_table_info('session')",
        [],
        |r| r.get(0),
    );
    let ids: Vec<String> = query_all(
        conn,
        "SELECT id FROM session WHERE parent_id IS NULL ORDER BY id",
        [],
        |r| r.get(0),
    );
    let select = format!("SELECT {} FROM session WHERE id = ?1", cols.join(", "));
    let out = ids
        .iter()
        .map(|id| FixtureSession {
            session: conn
                .query_row(&select, [id], |r| (0..cols.len()).map(|i| r.get(i)).collect())
                .unwrap(),
            messages: query_all(
                conn,
                "SELECT id, time_created, time_updated, data FROM message WHERE session_id = ?1 ORDER BY time_created, id",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            ),
            parts: query_all(
                conn,
                "SELECT id, message_id, time_created, time_updated, data FROM part WHERE session_id = ?1 ORDER BY id",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            ),
            todos: query_all(
                conn,
                "SELECT content, status, priority, position, time_created, time_updated FROM todo WHERE session_id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            ),
        })
        .collect();
    (cols, out)
}

impl GenDb {
    /// Creates `path` with `sessions` top-level sessions (each repeats one fixture session's
    /// rows, shifted `n` minutes back) and opens the writer. `create(path, 0)` is an empty
    /// database with OpenCode's schema, projects and migrations.
    pub fn create(path: &Path, sessions: usize) -> GenDb {
        GenDb::create_with_turns(path, sessions, 1)
    }

    /// [`GenDb::create`] where each session repeats its fixture session's messages and parts
    /// `turns` times (each repeat 10 s later), for large databases.
    pub fn create_with_turns(path: &Path, sessions: usize, turns: usize) -> GenDb {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The checkpointed fixture file alone is the whole database (no -wal beside it).
        std::fs::copy(fixture_db(), path).unwrap();
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
            .unwrap();
        let (cols, fixture) = load_fixture(&conn);
        let tx = conn.unchecked_transaction().unwrap();
        tx.execute_batch(
            "DELETE FROM part; DELETE FROM message; DELETE FROM todo; DELETE FROM event_sequence;
             DELETE FROM session; DELETE FROM event;",
        )
        .unwrap();
        let id_col = cols.iter().position(|c| c == "id").unwrap();
        let tc_col = cols.iter().position(|c| c == "time_created").unwrap();
        let tu_col = cols.iter().position(|c| c == "time_updated").unwrap();
        let placeholders = (1..=cols.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut ids = Vec::with_capacity(sessions);
        let mut counter: u64 = 0;
        {
            let mut ins_session = tx
                .prepare(&format!(
                    "INSERT INTO session ({}) VALUES ({placeholders})",
                    cols.join(", ")
                ))
                .unwrap();
            let mut ins_msg = tx
                .prepare("INSERT INTO message VALUES (?1, ?2, ?3, ?4, ?5)")
                .unwrap();
            let mut ins_part = tx
                .prepare("INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .unwrap();
            let mut ins_todo = tx
                .prepare("INSERT INTO todo VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .unwrap();
            let mut ins_seq = tx
                .prepare("INSERT INTO event_sequence (aggregate_id, seq) VALUES (?1, ?2)")
                .unwrap();
            for n in 0..sessions {
                let f = &fixture[n % fixture.len()];
                let sid = session_id(n);
                let shift = -(n as i64) * 60_000;
                let mut row = f.session.clone();
                row[id_col] = SqlValue::Text(sid.clone());
                let last_turn = (turns as i64 - 1) * 10_000;
                for (col, extra) in [(tc_col, 0), (tu_col, last_turn)] {
                    if let SqlValue::Integer(v) = row[col] {
                        row[col] = SqlValue::Integer(v + shift + extra);
                    }
                }
                ins_session
                    .execute(rusqlite::params_from_iter(row.iter()))
                    .unwrap();
                for turn in 0..turns as i64 {
                    let dt = shift + turn * 10_000;
                    let mut msg_ids = std::collections::HashMap::new();
                    for (mid, c, u, data) in &f.messages {
                        counter += 1;
                        // Keep the fixture id's time prefix so ids sort as OpenCode's do.
                        let new_id = format!("{}G{counter:09}", &mid[..16]);
                        msg_ids.insert(mid.clone(), new_id.clone());
                        ins_msg
                            .execute(params![new_id, sid, c + dt, u + dt, data])
                            .unwrap();
                    }
                    for (pid, mid, c, u, data) in &f.parts {
                        counter += 1;
                        let new_id = format!("{}G{counter:09}", &pid[..16]);
                        ins_part
                            .execute(params![new_id, msg_ids[mid], sid, c + dt, u + dt, data])
                            .unwrap();
                    }
                }
                for (content, status, priority, pos, c, u) in &f.todos {
                    ins_todo
                        .execute(params![
                            sid,
                            content,
                            status,
                            priority,
                            pos,
                            c + shift,
                            u + shift
                        ])
                        .unwrap();
                }
                ins_seq
                    .execute(params![
                        sid,
                        ((f.messages.len() + f.parts.len()) * turns) as i64
                    ])
                    .unwrap();
                ids.push(sid);
            }
        }
        tx.commit().unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        GenDb {
            path: path.to_path_buf(),
            conn,
            ids,
            counter: 0,
            last_stamp: 0,
        }
    }

    /// Opens a database made earlier by [`GenDb::create_with_turns`] (the bench reuses it).
    pub fn open(path: &Path) -> GenDb {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let ids = conn
            .prepare("SELECT id FROM session WHERE parent_id IS NULL ORDER BY id DESC")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        GenDb {
            path: path.to_path_buf(),
            conn,
            ids,
            counter: 0,
            last_stamp: 0,
        }
    }

    /// The writer's connection (read-write, WAL).
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The top-level session ids, in creation order.
    pub fn session_ids(&self) -> &[String] {
        &self.ids
    }

    /// Writes one new completed assistant step into `session_id` (an assistant message with
    /// `finish: "stop"`, a step-start, a text and a step-finish part) and bumps its
    /// `event_sequence` and logs the events ([`log_events`]), in one transaction. The turn ends at the new message, so the daemon
    /// exports a new version (its `updatedAt` is the step's time, newer than any before).
    /// Returns the step's time (ms).
    pub fn write_step(&mut self, session_id: &str) -> i64 {
        let stamp = now_ms().max(self.last_stamp + 2);
        self.last_stamp = stamp;
        self.counter += 1;
        let k = self.counter;
        // `msg_f…` sorts after every fixture id (`msg_1…`/`msg_e…`) and, keyed on the step's
        // time, after earlier steps — also those of an earlier run on a reused database.
        let mid = format!("msg_f{stamp:011x}Step{k:010}");
        let msg = format!(
            r#"{{"role":"assistant","agent":"build","mode":"build","providerID":"fake","modelID":"fake-model","cost":0.001,"tokens":{{"input":10,"output":5,"reasoning":0,"cache":{{"read":0,"write":0}}}},"time":{{"created":{stamp},"completed":{}}},"finish":"stop"}}"#,
            stamp + 1
        );
        let tx = self.conn.unchecked_transaction().unwrap();
        tx.execute(
            "INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)",
            params![mid, session_id, stamp, msg],
        )
        .unwrap();
        let parts = [
            r#"{"type":"step-start"}"#.to_string(),
            format!(r#"{{"type":"text","text":"fault test step {k}"}}"#),
            r#"{"type":"step-finish","reason":"stop","cost":0.001,"tokens":{"input":10,"output":5,"reasoning":0,"cache":{"read":0,"write":0}}}"#.to_string(),
        ];
        for (j, data) in parts.iter().enumerate() {
            let pid = format!("prt_f{stamp:011x}Step{k:010}{j}");
            tx.execute(
                "INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![pid, mid, session_id, stamp, data],
            )
            .unwrap();
        }
        log_events(&tx, session_id, "message.part.updated.1", 4);
        tx.commit().unwrap();
        stamp
    }

    /// Deletes a session as OpenCode does (`session.deleted`): its row, and by cascade its
    /// messages, parts and todos, and its `event_sequence` and `event` rows.
    pub fn delete_session(&mut self, session_id: &str) {
        let tx = self.conn.unchecked_transaction().unwrap();
        for table in ["part", "message", "todo"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE session_id = ?1"),
                [session_id],
            )
            .unwrap();
        }
        tx.execute("DELETE FROM event WHERE aggregate_id = ?1", [session_id])
            .unwrap();
        tx.execute(
            "DELETE FROM event_sequence WHERE aggregate_id = ?1",
            [session_id],
        )
        .unwrap();
        let n = tx
            .execute("DELETE FROM session WHERE id = ?1", [session_id])
            .unwrap();
        assert_eq!(n, 1, "no session {session_id}");
        tx.commit().unwrap();
    }

    /// Adds `count` large parts of `each_bytes` bytes of content to the first assistant
    /// message of `session_id`, in rotation: a `bash` call's output, a text part (mixed
    /// multi-byte and escaped characters), a `file` attachment's data URL, and an `edit` call
    /// whose `filediff` holds the file before and after (half each; `+7 -3`). Each part's
    /// `time_updated` is the message's, so the session's ending does not move. Returns the
    /// message id.
    pub fn add_large_parts(&mut self, session_id: &str, each_bytes: usize, count: usize) -> String {
        let (mid, at): (String, i64) = self
            .conn
            .query_row(
                "SELECT id, time_created FROM message WHERE session_id = ?1 \
                 AND json_extract(data, '$.role') = 'assistant' ORDER BY time_created, id LIMIT 1",
                [session_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        // `é` is two bytes, `\n` in JSON two: 9 bytes of JSON, 7 characters, per repeat.
        let text = "line é\\n".repeat(each_bytes / 9);
        let blob = "QUJD".repeat(each_bytes / 4);
        let half = "x".repeat(each_bytes / 2);
        let tx = self.conn.unchecked_transaction().unwrap();
        for j in 0..count {
            let data = match j % 4 {
                0 => format!(
                    r#"{{"type":"tool","tool":"bash","callID":"call_big{j}","state":{{"status":"completed","input":{{"command":"cat big.log"}},"output":"{blob}","metadata":{{"exit":0,"truncated":false}},"title":"cat big.log","time":{{"start":{at},"end":{}}}}}}}"#,
                    at + 5
                ),
                1 => format!(
                    r#"{{"type":"text","text":"{text}","time":{{"start":{at},"end":{at}}}}}"#
                ),
                2 => format!(
                    r#"{{"type":"file","mime":"image/png","filename":"big{j}.png","url":"data:image/png;base64,{blob}"}}"#
                ),
                _ => format!(
                    r#"{{"type":"tool","tool":"edit","callID":"call_big{j}","state":{{"status":"completed","input":{{"filePath":"/r/big{j}.txt","oldString":"a","newString":"b"}},"output":"Edit applied successfully.","metadata":{{"diagnostics":{{}},"filediff":{{"file":"/r/big{j}.txt","before":"{half}","after":"{half}","additions":7,"deletions":3}}}},"time":{{"start":{at},"end":{}}}}}}}"#,
                    at + 9
                ),
            };
            tx.execute(
                "INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
                params![format!("prt_zzBig{j:06}"), mid, session_id, at, data],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        mid
    }
}
