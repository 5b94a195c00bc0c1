//! Test harness: temp dirs with fixture copies, config files, and running the real binary.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The fixture set made by real OpenCode 1.18.33.
pub fn fixture_dir() -> PathBuf {
    repo_root().join("tests/fixtures/opencode-1.18.33")
}

/// The daemon binary built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opencode-telemetry"))
}

/// A scratch directory with a copy of the fixture DB and a config file.
pub struct Scratch {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A new empty scratch dir.
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Path inside the scratch dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Copies the checkpointed fixture DB (`opencode.db`) in; returns its path.
    pub fn copy_fixture_db(&self) -> PathBuf {
        let dst = self.path("oc/opencode.db");
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(fixture_dir().join("opencode.db"), &dst).unwrap();
        dst
    }

    /// Copies the live WAL triple in; returns the main file's path.
    pub fn copy_live_db(&self) -> PathBuf {
        let dir = self.path("live");
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["opencode.db", "opencode.db-wal", "opencode.db-shm"] {
            std::fs::copy(fixture_dir().join("live").join(f), dir.join(f)).unwrap();
        }
        dir.join("opencode.db")
    }

    /// Writes `config.toml` with `data_dir` inside the scratch dir plus `extra` TOML; returns
    /// its path. Without a `[convex]` or `[local]` table in `extra`, it also sets the deprecated
    /// `[local] path` to [`Scratch::local_sink`], so the tests that count what was delivered
    /// (every version, in order) read that file; the local store (`data/sessions.db`) receives
    /// the same records beside it (see [`Scratch::store`]).
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let path = self.path("config.toml");
        let mut text = format!("data_dir = \"{}\"\n{extra}\n", self.path("data").display());
        if !extra.contains("[convex]") && !extra.contains("[local]") {
            text.push_str(&format!(
                "\n[local]\npath = \"{}\"\n",
                self.local_sink().display()
            ));
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Writes `config.toml` with `data_dir` and `extra` only (no NDJSON file: the local store
    /// alone, plus Convex when `extra` configures it).
    pub fn write_store_config(&self, extra: &str) -> PathBuf {
        let path = self.path("config.toml");
        let text = format!("data_dir = \"{}\"\n{extra}\n", self.path("data").display());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The NDJSON file [`Scratch::write_config`] configures.
    pub fn local_sink(&self) -> PathBuf {
        self.path("data/sessions.ndjson")
    }

    /// The local store of the scratch `data_dir`.
    pub fn store(&self) -> PathBuf {
        self.path("data/sessions.db")
    }
}

/// A command for the real binary with a clean environment (no user config, no secrets).
pub fn command(scratch: &Scratch) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", scratch.path("home"))
        .env("XDG_CONFIG_HOME", scratch.path("home/.config"))
        .env("XDG_DATA_HOME", scratch.path("home/.local/share"))
        .env("XDG_STATE_HOME", scratch.path("home/.local/state"))
        .env("RUST_LOG", "warn");
    cmd
}

/// Runs to completion with a time limit; panics with the output on timeout.
pub fn run(cmd: &mut Command) -> Output {
    use std::io::Read;
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        out.read_to_end(&mut v).unwrap();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        err.read_to_end(&mut v).unwrap();
        v
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("command timed out: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs `once --config config --db db` and asserts it succeeded.
pub fn run_once(scratch: &Scratch, config: &Path, db: &Path) -> Output {
    let out = run(command(scratch)
        .arg("--config")
        .arg(config)
        .arg("--db")
        .arg(db)
        .arg("once"));
    assert!(
        out.status.success(),
        "once failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The records of a local store (`<data_dir>/sessions.db`), one per session, oldest first,
/// read with plain SQL (not through the daemon's reader).
pub fn read_store_records(path: &Path) -> Vec<serde_json::Value> {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let mut stmt = conn
        .prepare("SELECT record FROM stored_session ORDER BY created_at, session_id")
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| serde_json::from_str(&r.unwrap()).unwrap())
        .collect();
    rows
}

/// Reads an NDJSON file into JSON values: every complete (newline-terminated) line.
///
/// A test that polls the file while the daemon appends to it can catch a record
/// half-written; the text after the last newline is that record's start, not a
/// record, so it is left for the next poll. A complete line that does not parse
/// still fails the test.
pub fn read_ndjson(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    complete
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Opens a DB copy read-only for the test's own SQL.
pub fn sql(path: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// The ids of the top-level sessions (`parent_id IS NULL`) of an OpenCode database.
pub fn root_sessions(conn: &rusqlite::Connection) -> std::collections::BTreeSet<String> {
    conn.prepare("SELECT id FROM session WHERE parent_id IS NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// `tests/fixtures/opencode-1.18.33-kinds`: one session per harness kind, written by real
/// OpenCode 1.18.33 (see its README).
pub fn kinds_dir() -> PathBuf {
    repo_root().join("tests/fixtures/opencode-1.18.33-kinds")
}

/// The harness job of `kind` in the kinds fixture's `manifest.json`.
pub fn kinds_job(kind: &str) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(kinds_dir().join("manifest.json")).unwrap())
            .unwrap();
    manifest["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == kind)
        .cloned()
        .unwrap_or_else(|| panic!("no {kind} job in the manifest"))
}

/// Waits until `cond` holds, checking every 50 ms, at most `secs` seconds.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// NDJSON lines of a file that may not exist yet.
pub fn ndjson_if_any(path: &Path) -> Vec<serde_json::Value> {
    if path.exists() {
        read_ndjson(path)
    } else {
        Vec::new()
    }
}

/// Opens a DB copy read-write, as OpenCode would (foreign keys on, so deletes cascade).
pub fn writer(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;")
        .unwrap();
    conn
}
/// The real daemon as a child process.
pub mod daemon;
pub use test_support::{fault_server, gen_db};
