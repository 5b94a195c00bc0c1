//! The store's SQLite schema, its version (`PRAGMA user_version`) and the migrations between
//! versions; opening a connection for writing (`open_write`) or reading (`open_read`).
//!
//! # Versions and migration policy
//! `user_version` is 0 in a file the store never initialised, else [`SCHEMA_VERSION`] of the
//! build that last migrated it. Opening for writing:
//! - 0 and no table: the schema is created (one transaction) and `user_version` set;
//! - lower than [`SCHEMA_VERSION`]: the migrations from that version up run in order, each in
//!   its own transaction that also sets `user_version`, so a crash leaves the file at one
//!   version or the next, never between;
//! - higher: refused ([`StoreError::Newer`]): a newer build made it, and an older one must not
//!   write rows the newer reader would misread. Reading (`report`, `export`) refuses the same.
//!
//! Every row keeps its record's JSON (`stored_session.record`), so a migration that changes derived
//! columns or child tables may rebuild them from it rather than convert them, and a new derived
//! column costs a rebuild, never the history. A migration never drops `record`.
//!
//! # Tables (version 1)
//! ```text
//! stored_session (source, session_id) primary key; the record and its queryable columns:
//!                dates (created_at, updated_at, exported_at, archived_at, deleted_at, ms),
//!                the version the upsert compares (revision, updated_at, exported_at,
//!                content_hash), dimensions (device_id, hostname, project_id,
//!                project_directory, parent_session_id, forked_from, primary_agent,
//!                end_reason, error_name), and what the row adds to the totals (`counted`
//!                0/1, sessions, messages, cost, input, output, reasoning, cache_read,
//!                cache_write: see `counted.rs`), todos_total/todos_completed, code_additions/
//!                code_deletions/code_files (the session's own edits), duration_ms, record
//! stored_model   (source, session_id, provider_id, model_id): counted per-model figures
//! stored_agent   (source, session_id, agent): counted per-agent figures
//! stored_tool    (source, session_id, kind 'tools'|'skills', name): calls, errors, duration_ms
//! stored_error   (source, session_id, name): turns ended in that error
//! ```
//! Child tables hold rows only for counted sessions; all of a session's child rows are
//! rewritten with its row, in the same transaction. Indexes: `stored_session(created_at)`,
//! `stored_session(project_directory, created_at)`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::StoreError;

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 1;

/// Busy timeout of the store's connections: the writer (the daemon) holds its write
/// transactions for one batch, so a reader waits at most that long.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const V1: &str = "
CREATE TABLE stored_session (
  source TEXT NOT NULL,
  session_id TEXT NOT NULL,
  device_id TEXT NOT NULL,
  hostname TEXT NOT NULL,
  project_id TEXT NOT NULL,
  project_directory TEXT NOT NULL,
  parent_session_id TEXT,
  forked_from TEXT,
  title TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  exported_at INTEGER NOT NULL,
  revision INTEGER NOT NULL,
  content_hash TEXT NOT NULL,
  archived_at INTEGER,
  deleted_at INTEGER,
  duration_ms INTEGER,
  end_reason TEXT NOT NULL,
  error_name TEXT,
  incomplete INTEGER NOT NULL,
  primary_agent TEXT,
  counted INTEGER NOT NULL,
  sessions INTEGER NOT NULL,
  messages INTEGER NOT NULL,
  cost REAL NOT NULL,
  input INTEGER NOT NULL,
  output INTEGER NOT NULL,
  reasoning INTEGER NOT NULL,
  cache_read INTEGER NOT NULL,
  cache_write INTEGER NOT NULL,
  todos_total INTEGER NOT NULL,
  todos_completed INTEGER NOT NULL,
  code_additions INTEGER NOT NULL,
  code_deletions INTEGER NOT NULL,
  code_files INTEGER NOT NULL,
  record TEXT NOT NULL,
  PRIMARY KEY (source, session_id)
);
CREATE INDEX stored_session_by_created ON stored_session (created_at);
CREATE INDEX stored_session_by_project ON stored_session (project_directory, created_at);
CREATE TABLE stored_model (
  source TEXT NOT NULL,
  session_id TEXT NOT NULL,
  provider_id TEXT NOT NULL,
  model_id TEXT NOT NULL,
  messages INTEGER NOT NULL,
  cost REAL NOT NULL,
  input INTEGER NOT NULL,
  output INTEGER NOT NULL,
  reasoning INTEGER NOT NULL,
  cache_read INTEGER NOT NULL,
  cache_write INTEGER NOT NULL,
  PRIMARY KEY (source, session_id, provider_id, model_id)
) WITHOUT ROWID;
CREATE TABLE stored_agent (
  source TEXT NOT NULL,
  session_id TEXT NOT NULL,
  agent TEXT NOT NULL,
  messages INTEGER NOT NULL,
  cost REAL NOT NULL,
  input INTEGER NOT NULL,
  output INTEGER NOT NULL,
  reasoning INTEGER NOT NULL,
  cache_read INTEGER NOT NULL,
  cache_write INTEGER NOT NULL,
  PRIMARY KEY (source, session_id, agent)
) WITHOUT ROWID;
CREATE TABLE stored_tool (
  source TEXT NOT NULL,
  session_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('tools', 'skills')),
  name TEXT NOT NULL,
  calls INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  duration_ms INTEGER NOT NULL,
  PRIMARY KEY (source, session_id, kind, name)
) WITHOUT ROWID;
CREATE TABLE stored_error (
  source TEXT NOT NULL,
  session_id TEXT NOT NULL,
  name TEXT NOT NULL,
  turns INTEGER NOT NULL,
  PRIMARY KEY (source, session_id, name)
) WITHOUT ROWID;
";

/// The migrations: `MIGRATIONS[v]` takes a file from version `v` to `v + 1`.
const MIGRATIONS: [&str; 1] = [V1];

/// Opens (creating, mode 0600) `path` for the writer: WAL, `synchronous = FULL` (a committed
/// batch survives a power cut before the outbox acknowledges it), migrated to
/// [`SCHEMA_VERSION`].
///
/// # Errors
/// [`StoreError::Open`], [`StoreError::Newer`], [`StoreError::Sql`].
pub(crate) fn open_write(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |source: std::io::Error| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(open_err)?;
    }
    // Created empty with mode 0600 first: SQLite gives its -wal and -shm files the database's
    // mode, so all three stay private.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(open_err)?;
    let sql = |source| StoreError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    conn.pragma_update(None, "journal_mode", "wal")
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "full")
        .map_err(sql)?;
    conn.pragma_update(None, "foreign_keys", "off")
        .map_err(sql)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Opens `path` read-only (for `report` and `export`; works while the daemon writes, WAL). The
/// schema must be exactly [`SCHEMA_VERSION`].
///
/// # Errors
/// [`StoreError::Missing`] when there is no store yet (or its schema is not written yet),
/// [`StoreError::Newer`],
/// [`StoreError::Older`] (the daemon migrates it at its next start), [`StoreError::Sql`].
pub(crate) fn open_read(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    let sql = |source| StoreError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    if found == 0 {
        // Created a moment ago by the daemon, its schema not written yet: nothing stored.
        return Err(StoreError::Missing {
            path: path.to_path_buf(),
        });
    }
    if found < SCHEMA_VERSION {
        return Err(StoreError::Older {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let sql = |source| StoreError::Sql {
        path: path.to_path_buf(),
        source,
    };
    let found: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found,
        });
    }
    for (v, step) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        let tx = conn.transaction().map_err(sql)?;
        tx.execute_batch(step).map_err(sql)?;
        tx.pragma_update(None, "user_version", v as i64 + 1)
            .map_err(sql)?;
        tx.commit().map_err(sql)?;
    }
    Ok(())
}
