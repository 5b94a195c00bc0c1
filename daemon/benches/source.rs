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
//!   `json_extract` (what a naive poller does every tick);
//! - the real binary as a child process (the figures a user sees): `once` on the database
//!   (wall, CPU, peak RSS from `wait4`), the `sqlite3` shell computing the same per-session
//!   aggregates in one pass (CPU) and the ratio, and `run`: peak RSS once every session is
//!   delivered to the local file, then CPU and RSS over `--idle-secs` (default 60) of idling.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use opencode_telemetry::daemon::pass::{pass, PassOptions, PassOutput};
use opencode_telemetry::export::{ExportContext, ExportOptions};
use opencode_telemetry::source::opencode::OpenCodeSource;
use opencode_telemetry::track::{Mode, Rules, Tracker};
use rusqlite::Connection;

/// The generator the integration tests use: fixture rows cloned with fresh ids.
use test_support::gen_db::GenDb;

struct Args {
    sessions: usize,
    parts: usize,
    db: PathBuf,
    idle_secs: u64,
}

fn args() -> Args {
    let mut a = Args {
        sessions: 10_000,
        parts: 1_000_000,
        db: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench/opencode-large.db"),
        idle_secs: 60,
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
                // Absolute: the children get it with a HOME of their own.
                a.db = std::path::absolute(&argv[i + 1]).unwrap();
                i += 1;
            }
            "--idle-secs" => {
                a.idle_secs = argv[i + 1].parse().unwrap();
                i += 1;
            }
            _ => {} // cargo bench passes --bench
        }
        i += 1;
    }
    a
}

fn count(conn: &Connection, table: &str) -> usize {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .unwrap() as usize
}

/// The large database: reused while its row counts suffice, else built (about 20 s for 10,000
/// sessions and 1,000,000 parts).
fn build(a: &Args) -> GenDb {
    if a.db.exists() {
        let conn = Connection::open(&a.db).unwrap();
        if count(&conn, "session") >= a.sessions && count(&conn, "part") >= a.parts {
            return GenDb::open(&a.db);
        }
        drop(conn);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", a.db.display()));
        }
    }
    // The fixture's root sessions average about 10 parts each.
    let turns = (a.parts as f64 / a.sessions as f64 / 10.0).ceil().max(1.0) as usize;
    let t = Instant::now();
    let generated = GenDb::create_with_turns(&a.db, a.sessions, turns);
    let conn = generated.conn();
    eprintln!(
        "built {} in {:.1} s: {} sessions, {} messages, {} parts ({turns} turns per session)",
        a.db.display(),
        t.elapsed().as_secs_f64(),
        count(conn, "session"),
        count(conn, "message"),
        count(conn, "part"),
    );
    generated
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let a = args();
    let mut generated = build(&a);
    let ctx = ExportContext {
        device_id: "0".repeat(32),
        hostname: "bench".into(),
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        exported_at: 0,
        options: ExportOptions {
            include_todos: true,
            include_messages: false,
            max_message_chars: 4000,
        },
        privacy: opencode_telemetry::export::Privacy::of_level(
            opencode_telemetry::export::privacy::Level::Content,
            opencode_telemetry::export::PathKey::new([0; 32]),
        ),
    };
    let rules = Rules {
        debounce_ms: 0,
        final_after_ms: 0,
        stale_after_ms: i64::MAX / 4,
        skip_subagent_sessions: true,
        no_reply_after_ms: opencode_telemetry::track::rules::NO_REPLY_AFTER_MS,
    };
    let mut source = OpenCodeSource::new(&a.db, Duration::from_secs(5));
    let now = 4_000_000_000_000i64;
    // The committed state, as the daemon's outbox holds it.
    let store = std::cell::RefCell::new(std::collections::BTreeMap::<Vec<u8>, Vec<u8>>::new());
    let tick = |source: &mut OpenCodeSource, tracker: &mut Tracker, at: i64| -> PassOutput {
        let out = pass(
            source,
            tracker,
            &ctx,
            || at,
            PassOptions {
                chunk_sessions: opencode_telemetry::daemon::pass::CHUNK_SESSIONS,
                mode: Mode::Live,
                budget_bytes: u64::MAX,
                store: &*store.borrow(),
                progress: None,
                held_deletions: false,
            },
        )
        .unwrap();
        let mut committed = store.borrow_mut();
        for (k, v) in &out.state_puts {
            committed.insert(k.clone(), v.clone());
        }
        for k in &out.state_removes {
            committed.remove(k);
        }
        out
    };

    // Full first pass: chunk after chunk, as the daemon runs it.
    let mut tracker = Tracker::new(rules);
    let t = Instant::now();
    let (mut exported, mut bytes) = (0, 0);
    loop {
        let out = tick(&mut source, &mut tracker, now);
        exported += out.exported.len();
        bytes += out.exported.iter().map(|e| e.json.len()).sum::<usize>();
        if !out.more {
            break;
        }
    }
    let first_pass = t.elapsed();

    // Idle tick: data_version unchanged and no timer pending — the whole pass.
    let n = 10_000;
    let t = Instant::now();
    for _ in 0..n {
        let out = tick(&mut source, &mut tracker, now);
        assert!(out.is_empty() && !tracker.has_timers());
    }
    let idle = t.elapsed() / n;

    // Changed ticks: a new completed step written into k sessions, as OpenCode writes one.
    let ids: Vec<String> = generated.session_ids().to_vec();
    let mut changed_figures = Vec::new();
    for (round, k) in [1usize, 100].into_iter().enumerate() {
        // Round 0 changes the first session, round 1 the next 100.
        for id in ids.iter().skip(round).take(k) {
            generated.write_step(id);
        }
        let stamp = now + 1000 * (round as i64 + 1);
        let t = Instant::now();
        let out = tick(&mut source, &mut tracker, stamp);
        let took = t.elapsed();
        assert_eq!(out.observed, k, "only the changed sessions are read");
        assert_eq!(out.exported.len(), k);
        changed_figures.push((k, took, out.heads_read, out.observed, out.snapshots_read));
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
    drop(conn);
    drop(generated);
    processes(&a, exported);
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / 1048576.0)
}

/// The per-session aggregates a record needs, in one `sqlite3` pass: messages by session, and
/// the `tool`, `step-finish` and `patch` parts by session with `json_extract`.
const AGGREGATES_SQL: &str = "\
SELECT session_id, COUNT(*), SUM(json_extract(data, '$.role') = 'user'), MIN(time_created), MAX(time_updated), \
  SUM(json_extract(data, '$.cost')) FROM message GROUP BY session_id; \
SELECT session_id, json_extract(data, '$.type') AS kind, COUNT(*), \
  SUM(json_extract(data, '$.cost')), SUM(json_extract(data, '$.tokens.input')), \
  SUM(json_extract(data, '$.tokens.output')), SUM(json_extract(data, '$.tokens.reasoning')), \
  SUM(json_extract(data, '$.tokens.cache.read')), SUM(json_extract(data, '$.tokens.cache.write')), \
  SUM(json_extract(data, '$.state.status') = 'error'), \
  SUM(json_extract(data, '$.state.time.end') - json_extract(data, '$.state.time.start')), \
  SUM(json_array_length(data, '$.files')) \
FROM part WHERE kind IN ('tool', 'step-finish', 'patch') GROUP BY session_id, kind;";

/// The real binary as a child process, with a fresh HOME each (so a fresh outbox and the local
/// file as the sink).
fn processes(a: &Args, sessions: usize) {
    use std::process::{Command, Stdio};
    use test_support::measure;
    let bin = env!("CARGO_BIN_EXE_opencode-telemetry");
    let home = |name: &str| {
        let dir = a.db.with_file_name(format!("home-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };
    let quiet = |cmd: &mut Command| {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    };

    let h = home("once");
    let mut once = Command::new(bin);
    once.args(["once", "--db"]).arg(&a.db).env("HOME", &h);
    quiet(&mut once);
    let t = Instant::now();
    let u = measure::run(&mut once);
    let once_wall = t.elapsed();
    assert!(u.status.success(), "once failed: {:?}", u.status);

    let mut sql = Command::new("sqlite3");
    sql.env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .arg(format!("file:{}?mode=ro", a.db.display()))
        .arg(AGGREGATES_SQL);
    quiet(&mut sql);
    let s = measure::run(&mut sql);
    assert!(s.status.success(), "sqlite3 failed: {:?}", s.status);

    let h = home("run");
    let mut run = Command::new(bin);
    run.args(["run", "--db"]).arg(&a.db).env("HOME", &h);
    quiet(&mut run);
    let child = run.spawn().unwrap();
    let pid = child.id();
    let file = h.join(".local/state/opencode-telemetry/sessions.ndjson");
    let t = Instant::now();
    let lines = || std::fs::read(&file).map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count());
    // Delivered: `run`'s debounce and todo rules may keep a few sessions `once` flushes (open
    // todos wait `final_after_secs`), so "done" is: most sessions there, and no new line for 3 s.
    let (mut last, mut since) = (0, Instant::now());
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(600),
            "run did not deliver"
        );
        std::thread::sleep(Duration::from_millis(200));
        let n = lines();
        if n != last {
            (last, since) = (n, Instant::now());
        } else if n * 10 >= sessions * 9 && since.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    let run_wall = since.duration_since(t);
    let (_, run_peak) = measure::rss_and_peak(pid);
    // Settle (the last acks, the status file), then idle.
    std::thread::sleep(Duration::from_secs(5));
    let cpu_before = measure::cpu_time(pid);
    std::thread::sleep(Duration::from_secs(a.idle_secs));
    let idle_cpu = measure::cpu_time(pid) - cpu_before;
    let (steady, peak_after) = measure::rss_and_peak(pid);
    // SIGTERM: the daemon's own shutdown.
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let _ = measure::wait(child);

    println!();
    println!("| real binary, {sessions} sessions | figure |");
    println!("|---|---|");
    println!(
        "| `once` (read, export, deliver to the local file) | {:.1} s wall, {:.1} s CPU, peak RSS {} |",
        once_wall.as_secs_f64(),
        u.cpu().as_secs_f64(),
        mib(u.max_rss_bytes)
    );
    println!(
        "| `sqlite3`: the per-session aggregates in one pass | {:.1} s CPU; `once` / `sqlite3` = {:.2} |",
        s.cpu().as_secs_f64(),
        u.cpu().as_secs_f64() / s.cpu().as_secs_f64()
    );
    println!(
        "| `run`: first pass until {last} sessions are delivered | {:.1} s, peak RSS {} |",
        run_wall.as_secs_f64(),
        mib(run_peak)
    );
    println!(
        "| `run` idle for {} s after it | {:.3} % of one core, RSS {} (peak {}) |",
        a.idle_secs,
        idle_cpu.as_secs_f64() * 100.0 / a.idle_secs as f64,
        mib(steady),
        mib(peak_after)
    );

    // A backlog: every session queued for a deployment that refuses connections (`once` gives
    // up after 1 s, exit 1), then drained into it once it is back by a second `once`.
    {
        use test_support::fault_server::{FaultServer, Mode, TOKEN};
        let deployment = FaultServer::in_background(Mode::Refuse);
        let h = home("drain");
        let config = h.join("down.toml");
        std::fs::write(
            &config,
            format!("[convex]\nurl = \"{}\"\n", deployment.handle.url()),
        )
        .unwrap();
        let once = |timeout: &str| {
            let mut cmd = Command::new(bin);
            cmd.arg("--config")
                .arg(&config)
                .args(["once", "--timeout-secs", timeout, "--db"])
                .arg(&a.db)
                .env("HOME", &h)
                .env("OPENCODE_TELEMETRY_INGEST_TOKEN", TOKEN);
            quiet(&mut cmd);
            measure::run(&mut cmd)
        };
        let q = once("1");
        assert_eq!(q.status.code(), Some(1), "nothing could be delivered");
        deployment.set_mode(Mode::Normal);
        let d = once("600");
        assert!(d.status.success(), "drain failed: {:?}", d.status);
        println!(
            "| `once` draining the {} records queued while the deployment was down (into it) | {:.1} s CPU, peak RSS {} |",
            deployment.handle.latest().len(),
            d.cpu().as_secs_f64(),
            mib(d.max_rss_bytes)
        );
    }

    // One session of 500 MiB of content (a bash output, a text, a file attachment and an
    // edit's before and after, 125 MiB each), with message texts on (privacy level `content`,
    // which lets them leave).
    let big = a.db.with_file_name("opencode-500mib.db");
    if !big.exists() {
        let mut g = GenDb::create(&big, 3);
        let id = g.session_ids()[1].clone();
        g.add_large_parts(&id, 125 << 20, 4);
    }
    let h = home("big");
    let config = h.join("texts.toml");
    std::fs::write(
        &config,
        "[export]\ninclude_messages = true\n[privacy]\nlevel = \"content\"\n",
    )
    .unwrap();
    let mut once = Command::new(bin);
    once.arg("--config")
        .arg(&config)
        .args(["once", "--db"])
        .arg(&big)
        .env("HOME", &h);
    quiet(&mut once);
    let b = measure::run(&mut once);
    assert!(b.status.success(), "once failed: {:?}", b.status);
    println!(
        "| `once` on a session whose parts hold 500 MiB (message texts on) | {:.1} s CPU, peak RSS {} |",
        b.cpu().as_secs_f64(),
        mib(b.max_rss_bytes)
    );
}
