//! Source-side bench: what a poll tick costs on a large OpenCode database.
//!
//! `cargo bench --bench source [-- --sessions N --parts M --db PATH]`
//!
//! Builds (once; reused while the row counts match) a database of ≥ 10,000 sessions and
//! ≥ 1,000,000 parts by cloning the real rows of the OpenCode 1.18.33 fixture with fresh ids and
//! shifted timestamps (each synthetic session repeats one fixture session's turns), then prints:
//! - idle tick: `PRAGMA data_version` unchanged, no timer pending — what every poll costs while
//!   OpenCode is quiet;
//! - changed tick with 1 and with 100 changed sessions (a new step written to each: one
//!   assistant message and its parts, `event_sequence` bumped), debounce 0 so the tick also
//!   builds and exports those sessions;
//! - the full first pass: a new tracker exporting every session;
//! - for scale, measured in the same run: the `sqlite3` shell scanning the same `part` rows with
//!   `json_extract` (what a naive poller does every tick).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opencode_telemetry::export::ExportContext;
use opencode_telemetry::service::tracker::{Rules, Tracker};
use opencode_telemetry::source::opencode::OpenCodeDb;
use rusqlite::{params, Connection};

struct Args {
    sessions: usize,
    parts: usize,
    db: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 10_000,
        parts: 1_000_000,
        db: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/opencode-large.db"),
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        match argv[i].as_str() {
            "--sessions" => {
                a.sessions = argv[i + 1].parse().unwrap();
                i += 1;
            }
            "--parts" => {
                a.parts = argv[i + 1].parse().unwrap();
                i += 1;
            }
            "--db" => {
                a.db = PathBuf::from(&argv[i + 1]);
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/opencode-1.18.33/opencode.db")
}

struct FixtureSession {
    session: Vec<rusqlite::types::Value>,
    messages: Vec<(String, i64, i64, String)>,
    parts: Vec<(String, String, i64, i64, String)>,
    todos: Vec<(String, String, String, i64, i64, i64)>,
}

fn load_fixture(conn: &Connection) -> (Vec<String>, Vec<FixtureSession>) {
    let cols: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('session')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let ids: Vec<String> = conn
        .prepare("SELECT id FROM session WHERE parent_id IS NULL ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = Vec::new();
    for id in ids {
        let session: Vec<rusqlite::types::Value> = conn
            .query_row(
                &format!("SELECT {} FROM session WHERE id = ?1", cols.join(", ")),
                [&id],
                |r| (0..cols.len()).map(|i| r.get(i)).collect(),
            )
            .unwrap();
        let messages = conn
            .prepare("SELECT id, time_created, time_updated, data FROM message WHERE session_id = ?1 ORDER BY time_created, id")
            .unwrap()
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let parts = conn
            .prepare("SELECT id, message_id, time_created, time_updated, data FROM part WHERE session_id = ?1 ORDER BY id")
            .unwrap()
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let todos = conn
            .prepare("SELECT content, status, priority, position, time_created, time_updated FROM todo WHERE session_id = ?1")
            .unwrap()
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        out.push(FixtureSession {
            session,
            messages,
            parts,
            todos,
        });
    }
    (cols, out)
}

fn count(conn: &Connection, table: &str) -> usize {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

/// Ids with OpenCode's shapes: sessions sort newest first, messages and parts ascending.
fn session_id(n: usize) -> String {
    format!("ses_{:012x}bench{:09}", u64::MAX as usize - n, n)
}

fn build(a: &Args) {
    if a.db.exists() {
        let conn = Connection::open(&a.db).unwrap();
        if count(&conn, "session") >= a.sessions && count(&conn, "part") >= a.parts {
            return;
        }
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", a.db.display()));
        }
    }
    std::fs::create_dir_all(a.db.parent().unwrap()).unwrap();
    let t = Instant::now();
    // The static fixture: immutable, so no -wal/-shm appear next to it.
    let uri = format!("file:{}?mode=ro&immutable=1", fixture().display());
    let src = Connection::open_with_flags(
        uri,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let (cols, sessions) = load_fixture(&src);
    let conn = Connection::open(&a.db).unwrap();
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = OFF;")
        .unwrap();
    let ddl: Vec<String> = src
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for stmt in ddl {
        conn.execute_batch(&stmt).unwrap();
    }
    conn.execute_batch("INSERT INTO project SELECT * FROM (SELECT 1) WHERE 0")
        .ok();
    let projects: Vec<(String, String, i64)> = src
        .prepare("SELECT id, worktree, time_created FROM project")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for (id, wt, tc) in projects {
        conn.execute(
            "INSERT INTO project (id, worktree, vcs, time_created, time_updated, sandboxes) VALUES (?1, ?2, 'git', ?3, ?3, '[]')",
            params![id, wt, tc],
        )
        .unwrap();
    }
    let parts_per_session =
        sessions.iter().map(|s| s.parts.len()).sum::<usize>() as f64 / sessions.len() as f64;
    let repeats = ((a.parts as f64 / a.sessions as f64) / parts_per_session)
        .ceil()
        .max(1.0) as usize;
    let tx = conn.unchecked_transaction().unwrap();
    let id_col = cols.iter().position(|c| c == "id").unwrap();
    let tc_col = cols.iter().position(|c| c == "time_created").unwrap();
    let tu_col = cols.iter().position(|c| c == "time_updated").unwrap();
    let placeholders = (1..=cols.len())
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ");
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
    let mut counter: u64 = 0;
    for n in 0..a.sessions {
        let f = &sessions[n % sessions.len()];
        let sid = session_id(n);
        // Each synthetic session is shifted by n minutes, and each repeat of the turns by 10 s.
        let shift = -(n as i64) * 60_000;
        let mut row = f.session.clone();
        row[id_col] = rusqlite::types::Value::Text(sid.clone());
        for col in [tc_col, tu_col] {
            if let rusqlite::types::Value::Integer(v) = row[col] {
                row[col] = rusqlite::types::Value::Integer(
                    v + shift
                        + if col == tu_col {
                            repeats as i64 * 10_000
                        } else {
                            0
                        },
                );
            }
        }
        ins_session
            .execute(rusqlite::params_from_iter(row.iter()))
            .unwrap();
        for rep in 0..repeats {
            let dt = shift + rep as i64 * 10_000;
            let mut msg_ids = std::collections::HashMap::new();
            for (mid, c, u, data) in &f.messages {
                counter += 1;
                let new_id = format!("msg_{counter:012x}Bench{n:09}");
                msg_ids.insert(mid.clone(), new_id.clone());
                ins_msg
                    .execute(params![new_id, sid, c + dt, u + dt, data])
                    .unwrap();
            }
            for (_pid, mid, c, u, data) in &f.parts {
                counter += 1;
                let new_id = format!("prt_{counter:012x}Bench{n:09}");
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
            .execute(params![sid, (f.messages.len() + f.parts.len()) * repeats])
            .unwrap();
    }
    drop((ins_session, ins_msg, ins_part, ins_todo, ins_seq));
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    eprintln!(
        "built {} in {:.1} s: {} sessions, {} messages, {} parts ({} turns per session)",
        a.db.display(),
        t.elapsed().as_secs_f64(),
        count(&conn, "session"),
        count(&conn, "message"),
        count(&conn, "part"),
        repeats
    );
}

/// Writes one new step into `sessions` sessions: an assistant message, a step-start, a text and
/// a step-finish part, and bumps `event_sequence`, in one transaction per session (as OpenCode's
/// projector would across a few commits).
fn write_steps(conn: &Connection, sessions: &[String], stamp: i64) {
    // Unique per run: the database is reused across runs.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000_000;
    for (i, sid) in sessions.iter().enumerate() {
        let tx = conn.unchecked_transaction().unwrap();
        let mid = format!(
            "msg_{:012x}Step{run:012}{i:06}",
            0xf000_0000_0000u64 + stamp as u64 * 1000 + i as u64
        );
        let msg = format!(
            r#"{{"role":"assistant","agent":"build","mode":"build","providerID":"fake","modelID":"fake-model","cost":0.001,"tokens":{{"input":10,"output":5,"reasoning":0,"cache":{{"read":0,"write":0}}}},"time":{{"created":{stamp},"completed":{}}},"finish":"stop"}}"#,
            stamp + 5
        );
        tx.execute(
            "INSERT INTO message VALUES (?1, ?2, ?3, ?3, ?4)",
            params![mid, sid, stamp, msg],
        )
        .unwrap();
        for (k, data) in [
            r#"{"type":"step-start"}"#.to_string(),
            r#"{"type":"text","text":"bench step"}"#.to_string(),
            r#"{"type":"step-finish","reason":"stop","cost":0.001,"tokens":{"input":10,"output":5,"reasoning":0,"cache":{"read":0,"write":0}}}"#.to_string(),
        ]
        .iter()
        .enumerate()
        {
            let pid = format!("prt_{:012x}Step{run:012}{i:06}{k}", 0xf000_0000_0000u64 + stamp as u64 * 1000 + i as u64);
            tx.execute("INSERT INTO part VALUES (?1, ?2, ?3, ?4, ?4, ?5)", params![pid, mid, sid, stamp, data]).unwrap();
        }
        tx.execute(
            "UPDATE event_sequence SET seq = seq + 4 WHERE aggregate_id = ?1",
            [sid],
        )
        .unwrap();
        tx.commit().unwrap();
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let a = args();
    build(&a);
    let ctx = ExportContext {
        device_id: "0".repeat(32),
        hostname: "bench".into(),
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        exported_at: 0,
        include_todos: true,
        include_messages: false,
        max_message_chars: 4000,
    };
    let rules = Rules {
        debounce_ms: 0,
        final_after_ms: 0,
        stale_after_ms: i64::MAX / 4,
        skip_subagent_sessions: true,
    };
    let db = OpenCodeDb::open(&a.db, Duration::from_secs(5)).unwrap();
    let now = 4_000_000_000_000i64;

    // Full first pass.
    let mut tracker = Tracker::new(rules);
    let t = Instant::now();
    let out = tracker
        .tick(
            &db,
            &ExportContext {
                exported_at: now,
                ..ctx.clone()
            },
            now,
            true,
        )
        .unwrap();
    let first_pass = t.elapsed();
    let exported = out.emitted.len();
    let bytes: usize = out
        .emitted
        .iter()
        .map(|e| serde_json::to_vec(&e.record).unwrap().len())
        .sum();

    // Idle tick: data_version unchanged and no timer pending.
    let dv = db.data_version().unwrap();
    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        let changed = db.data_version().unwrap() != dv;
        assert!(!changed && !tracker.has_timers());
    }
    let idle = t.elapsed() / n;

    // Changed ticks.
    let writer = Connection::open(&a.db).unwrap();
    writer.busy_timeout(Duration::from_secs(5)).unwrap();
    let heads = db.session_heads().unwrap();
    let mut changed_figures = Vec::new();
    for (round, k) in [1usize, 100].into_iter().enumerate() {
        let ids: Vec<String> = heads
            .iter()
            .skip(round * 1000)
            .take(k)
            .map(|h| h.id.clone())
            .collect();
        let stamp = now + 1000 * (round as i64 + 1);
        write_steps(&writer, &ids, stamp);
        assert_ne!(db.data_version().unwrap(), dv);
        let t = Instant::now();
        let out = tracker
            .tick(
                &db,
                &ExportContext {
                    exported_at: stamp + 10,
                    ..ctx.clone()
                },
                stamp + 10,
                true,
            )
            .unwrap();
        let took = t.elapsed();
        assert_eq!(out.tails_read, k, "only the changed sessions are read");
        assert_eq!(out.emitted.len(), k);
        changed_figures.push((k, took, out.heads_read, out.tails_read, out.snapshots_read));
    }

    // sqlite3 shell scanning the part rows with json_extract.
    let sqlite = std::process::Command::new("sqlite3")
        .arg("-version")
        .output();
    let sqlite_figure = match sqlite {
        Ok(o) if o.status.success() => {
            let t = Instant::now();
            let out = std::process::Command::new("sqlite3")
                .arg(format!("file:{}?mode=ro", a.db.display()))
                .arg("SELECT COUNT(*), SUM(json_extract(data, '$.cost')) FROM part WHERE json_extract(data, '$.type') = 'step-finish';")
                .output()
                .unwrap();
            let took = t.elapsed();
            format!(
                "{} (sqlite3 {}; result {})",
                ms(took),
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .next()
                    .unwrap_or("?"),
                String::from_utf8_lossy(&out.stdout).trim()
            )
        }
        _ => "sqlite3 shell not installed".into(),
    };

    let conn =
        Connection::open_with_flags(&a.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    println!(
        "database: {} sessions, {} messages, {} parts, {:.0} MiB",
        count(&conn, "session"),
        count(&conn, "message"),
        count(&conn, "part"),
        std::fs::metadata(&a.db).unwrap().len() as f64 / 1048576.0
    );
    println!("| measurement | time |");
    println!("|---|---|");
    println!("| idle tick (data_version unchanged) | {} |", ms(idle));
    for (k, took, heads, tails, snaps) in &changed_figures {
        println!("| changed tick, {k} session(s) changed ({heads} session rows, {tails} tails, {snaps} sessions read and exported) | {} |", ms(*took));
    }
    println!(
        "| full first pass ({exported} sessions exported, {:.1} MiB of records) | {} |",
        bytes as f64 / 1048576.0,
        ms(first_pass)
    );
    println!("| sqlite3: one json_extract scan of all part rows | {sqlite_figure} |");
}
