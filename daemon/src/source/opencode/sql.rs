//! The SQL side of the OpenCode source: one read-only connection to `opencode.db` (WAL mode)
//! and the queries the source runs.
//!
//! # Invariants
//! - The database is opened with `SQLITE_OPEN_READ_ONLY` (never `immutable=1`: the file changes
//!   under WAL) and a busy timeout; nothing here can write to it.
//! - Every read is a short read transaction that ends before the function returns, so the
//!   daemon never holds a WAL snapshot across ticks and never blocks OpenCode's checkpoints.
//! - One connection is kept for the life of the [`OpenCodeDb`]: `PRAGMA data_version` is
//!   per-connection, and it is how an idle tick costs O(1).
//! - Columns are feature-detected with `PRAGMA table_info`; a column an older OpenCode lacks
//!   reads as `NULL`. A row whose JSON `data` cannot be parsed is skipped with one warning (per
//!   row, not per poll).
//! - **Memory is independent of a row's size and a session's.** Rows are parsed one at a time
//!   as the query steps, into the lean types of [`super::rows`]. A `data` value of at most
//!   [`INLINE_DATA_BYTES`] is parsed from SQLite's own buffer, without a copy; a larger one is
//!   not loaded by the query at all (`CASE WHEN octet_length(data) <= …`, and `octet_length`
//!   reads only the record header) but streamed through SQLite's incremental blob I/O into the
//!   parser, which skips what it does not keep. `json_extract` in the query would not do: it
//!   parses the whole value in SQLite's memory (and SQLite caches the last few parses of a
//!   statement), so a row of tool output would cost several times its size. Message texts are
//!   read only when they are exported ([`Texts`]), and only up to the configured length.
//! - A database file replaced by rename or deleted is detected by comparing `(dev, inode)` with
//!   the values at open ([`OpenCodeDb::replaced`]); the caller then reopens.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, MAIN_DB};
use serde::de::{DeserializeOwned, IgnoredAny};

use super::rows::{
    MessageInfo, MessageRow, PartData, PartInfo, PartRow, ProjectRow, Revert, SessionRow, TodoRow,
};
use crate::source::{ChangeMarker, MessageText, SourceError, Texts};

/// Largest `data` value (bytes) a query returns with its row; larger ones are streamed from
/// the row's blob handle (see the module docs). 1 MiB.
pub const INLINE_DATA_BYTES: i64 = 1 << 20;

/// The columns [`OpenCodeDb::parse_data`] reads, in this order: the rowid, the type and size
/// of `data`, and `data` itself when it is at most [`INLINE_DATA_BYTES`] (1048576) bytes.
macro_rules! data_columns {
    () => {
        "rowid, typeof(data), octet_length(data), \
         CASE WHEN octet_length(data) <= 1048576 THEN data END"
    };
}

/// Whether the row's `data` came inline (see [`data_columns!`], from column 3 on).
fn inline(row: &Row<'_>) -> bool {
    matches!(row.get_ref(6), Ok(ValueRef::Text(_)))
}

/// Buffer of the reader a large `data` value is streamed through (bytes).
const STREAM_BUFFER_BYTES: usize = 64 * 1024;

/// The tables this reader reads, whether each may be absent (older OpenCode releases), and the
/// columns it needs in each. A database that has a table without one of its columns (a newer
/// OpenCode that renamed it) is [`SourceError::Unsupported`]: nothing is read from it, and the
/// daemon says so at WARN and in `status` while it keeps delivering what is queued. Other
/// `session` columns are read only when present (`NULL` otherwise).
const REQUIRED_COLUMNS: &[(&str, bool, &[&str])] = &[
    (
        "session",
        false,
        &[
            "id",
            "project_id",
            "parent_id",
            "directory",
            "title",
            "version",
            "time_created",
            "time_updated",
        ],
    ),
    (
        "message",
        false,
        &["id", "session_id", "time_created", "time_updated", "data"],
    ),
    (
        "part",
        false,
        &["id", "message_id", "session_id", "time_updated", "data"],
    ),
    (
        "todo",
        true,
        &["session_id", "content", "status", "priority", "position"],
    ),
    ("project", true, &["id", "worktree"]),
    ("event_sequence", true, &["aggregate_id", "seq"]),
    ("event", true, &["id", "aggregate_id", "type"]),
];

/// Which optional tables and columns the database has.
#[derive(Debug, Clone, Default)]
struct Schema {
    session_cols: HashSet<String>,
    /// The durable event log is written on every change (see [`OpenCodeDb::has_event_log`]).
    event_log: bool,
    has_project: bool,
    has_todo: bool,
}

/// The cheap per-session view used to find what changed: one row per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadRow {
    /// `session.id`.
    pub id: String,
    /// `session.parent_id`.
    pub parent_id: Option<String>,
    /// A value that changes whenever anything of the session is written: `event_sequence.seq`
    /// (OpenCode ≥ 1.16, bumped by every durable session event) combined with
    /// `session.time_updated` and `time_archived`. On databases without a live event log
    /// ([`OpenCodeDb::has_event_log`]) it is the newest `message.time_updated` of the session.
    pub marker: ChangeMarker,
}

/// A row of the event log, to tell later whether it is still there ([`OpenCodeDb::event_still_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMark {
    /// `event.rowid`.
    pub rowid: i64,
    /// `event.id` (`evt_…`).
    pub id: String,
}

/// One row of the event log, as [`OpenCodeDb::events_after`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Where it is.
    pub mark: EventMark,
    /// `event.aggregate_id`: the session, for session events (`None` when not UTF-8 text).
    pub aggregate_id: Option<String>,
    /// Whether `event.type` is `session.created.<version>`.
    pub session_created: bool,
}

/// Everything the database holds about one session, read in one read transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct RowSnapshot {
    /// The `session` row.
    pub session: SessionRow,
    /// Its `project` row, if present.
    pub project: Option<ProjectRow>,
    /// `message` rows ordered by `(time_created, id)`.
    pub messages: Vec<MessageRow>,
    /// `part` rows ordered by `(message_id, id)`.
    pub parts: Vec<PartRow>,
    /// Each message's text (its non-synthetic `text` parts), when texts were asked for.
    pub texts: HashMap<String, MessageText>,
    /// `todo` rows ordered by `position`.
    pub todos: Vec<TodoRow>,
    /// Subagent sessions (`parent_id` = this id), recursively, each a full snapshot.
    pub children: Vec<RowSnapshot>,
    /// For a fork (messages created before the session), the session it was forked from, when
    /// found (see `OpenCodeDb::fork_source`).
    pub forked_from: Option<String>,
}

impl RowSnapshot {
    /// The last write to the session (ms): the largest of `session.time_updated` and the
    /// `time_updated` of its message and part rows.
    pub fn last_write_ms(&self) -> i64 {
        newest_write(&self.session, &self.messages, &self.parts)
    }

    /// The tail [`OpenCodeDb::read_tail`] reads, taken from this snapshot's rows (same orders:
    /// messages by insertion or `(time_created, id)`, parts by id): the newest
    /// [`TAIL_MESSAGES`] messages, the parts of the newest assistant message among them, and
    /// the todo statuses. Equal to a `read_tail` in the same read transaction.
    pub fn tail(&self) -> SessionTail {
        let recent: Vec<MessageRow> = self
            .messages
            .iter()
            .rev()
            .take(TAIL_MESSAGES)
            .cloned()
            .collect();
        let assistant_parts = match recent.iter().find(|m| m.info.is_assistant()) {
            Some(m) => self
                .parts
                .iter()
                .filter(|p| p.message_id == m.id)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        SessionTail {
            session: self.session.clone(),
            recent,
            assistant_parts,
            todo_statuses: self.todos.iter().map(|t| t.status.clone()).collect(),
        }
    }
}

/// The few newest rows of a session: enough to tell busy from ended (see
/// [`crate::source::opencode::activity`]) without reading the whole session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTail {
    /// The `session` row.
    pub session: SessionRow,
    /// Up to [`TAIL_MESSAGES`] newest messages, newest first (by insertion order, or by
    /// `(time_created, id)`: see [`written_in_order`]).
    pub recent: Vec<MessageRow>,
    /// Parts of the newest assistant message in `recent`, ordered by id.
    pub assistant_parts: Vec<PartRow>,
    /// Todo statuses of the session.
    pub todo_statuses: Vec<String>,
}

impl SessionTail {
    /// The newest write seen in the tail (ms).
    pub fn last_write_ms(&self) -> i64 {
        newest_write(&self.session, &self.recent, &self.assistant_parts)
    }
}

/// The largest of `session.time_updated` and the rows' `time_updated` (ms).
fn newest_write(session: &SessionRow, messages: &[MessageRow], parts: &[PartRow]) -> i64 {
    let m = messages.iter().map(|m| m.time_updated);
    let p = parts.iter().map(|p| p.time_updated);
    m.chain(p).fold(session.time_updated, i64::max)
}

/// How many newest messages a tail holds.
pub const TAIL_MESSAGES: usize = 6;

/// A read-only connection to `opencode.db`.
pub struct OpenCodeDb {
    path: PathBuf,
    conn: Connection,
    schema: Schema,
    file_id: Option<(u64, u64)>,
    warned: RefCell<HashSet<String>>,
}

impl std::fmt::Debug for OpenCodeDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenCodeDb")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(unix)]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (0, m.len()))
}

/// Reads a TEXT column; `None` for NULL or a non-text value.
fn text(row: &Row<'_>, idx: usize) -> Option<String> {
    match row.get_ref(idx).ok()? {
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        _ => None,
    }
}

/// Reads an id column: `None` unless it is TEXT and valid UTF-8 (a BLOB or invalid bytes,
/// written by corruption or another tool, would fail the whole query under `Row::get`).
fn text_id(row: &Row<'_>, idx: usize) -> Option<String> {
    match row.get_ref(idx).ok()? {
        ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_string),
        _ => None,
    }
}

/// Reads an INTEGER column; `None` for NULL or a non-integer value.
fn int(row: &Row<'_>, idx: usize) -> Option<i64> {
    match row.get_ref(idx).ok()? {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(r) => Some(r as i64),
        _ => None,
    }
}

impl OpenCodeDb {
    /// Opens the database read-only.
    ///
    /// # Errors
    /// [`SourceError::Missing`] when the file does not exist, [`SourceError::NotRecognised`] when it
    /// has no `session` table, [`SourceError::Read`] otherwise.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<OpenCodeDb, SourceError> {
        if !path.exists() {
            return Err(SourceError::Missing {
                what: "opencode database",
                path: path.to_path_buf(),
            });
        }
        let sql_err = |e: rusqlite::Error| SourceError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_err)?;
        conn.busy_timeout(busy_timeout).map_err(sql_err)?;
        let mut db = OpenCodeDb {
            path: path.to_path_buf(),
            conn,
            schema: Schema::default(),
            file_id: file_id(path),
            warned: RefCell::new(HashSet::new()),
        };
        db.schema = db.detect_schema()?;
        Ok(db)
    }

    /// The path this connection was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A query's error: [`SourceError::BadRow`] when a row's value could not be converted (a
    /// problem of that data, not of the database), [`SourceError::Read`] otherwise.
    fn sql_err(&self, e: rusqlite::Error) -> SourceError {
        use rusqlite::Error as E;
        let path = self.path.clone();
        let message = e.to_string();
        match e {
            E::FromSqlConversionFailure(..)
            | E::IntegralValueOutOfRange(..)
            | E::Utf8Error(..)
            | E::InvalidColumnType(..) => SourceError::BadRow { path, message },
            _ => SourceError::Read { path, message },
        }
    }

    /// Keeps the rows whose id was readable (see [`text_id`]); one warning per table for the rest.
    fn readable<T>(&self, table: &str, rows: Vec<(Option<String>, T)>) -> Vec<(String, T)> {
        let mut out = Vec::with_capacity(rows.len());
        for (id, row) in rows {
            match id {
                Some(id) => out.push((id, row)),
                None => self.warn_once(table, "<unreadable id>", "its id is not UTF-8 text"),
            }
        }
        out
    }

    /// Runs a (cached) query and collects every row.
    fn all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, SourceError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map(params, f)
            .and_then(|rows| rows.collect::<Result<Vec<T>, _>>())
            .map_err(|e| self.sql_err(e))?;
        Ok(rows)
    }

    /// Runs a (cached) query for at most one row.
    fn one<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, SourceError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql_err(e))?;
        stmt.query_row(params, f)
            .optional()
            .map_err(|e| self.sql_err(e))
    }

    /// Reads which tables and columns the database has, and checks it has every one this reader
    /// needs ([`REQUIRED_COLUMNS`]).
    ///
    /// # Errors
    /// [`SourceError::NotRecognised`] for a database with no tables yet (OpenCode creating it);
    /// [`SourceError::Unsupported`] naming the first missing table or column otherwise.
    fn detect_schema(&self) -> Result<Schema, SourceError> {
        let tables: HashSet<String> = self
            .all(
                "SELECT name FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )?
            .into_iter()
            .collect();
        if !tables.contains("session") && !tables.iter().any(|t| t == "message" || t == "part") {
            // Nothing of OpenCode's yet (a new file, migrations still to run): wait quietly.
            return Err(SourceError::NotRecognised {
                what: "an opencode database",
                path: self.path.clone(),
                reason: "no `session` table".to_string(),
            });
        }
        let mut session_cols = HashSet::new();
        for (table, optional, columns) in REQUIRED_COLUMNS {
            if !tables.contains(*table) {
                if *optional {
                    continue;
                }
                return Err(self.unsupported(table, None));
            }
            let have: HashSet<String> = self
                .all("SELECT name FROM pragma_table_info(?1)", [table], |r| {
                    r.get(0)
                })?
                .into_iter()
                .collect();
            if let Some(missing) = columns.iter().find(|c| !have.contains(**c)) {
                return Err(self.unsupported(table, Some(missing)));
            }
            if *table == "session" {
                session_cols = have;
            }
        }
        Ok(Schema {
            session_cols,
            // `migration` replaced `__drizzle_migrations` in 1.16.0, the release from which on
            // every durable event is logged (before, only with experimental workspaces on).
            event_log: ["event_sequence", "event", "migration"]
                .iter()
                .all(|t| tables.contains(*t)),
            has_project: tables.contains("project"),
            has_todo: tables.contains("todo"),
        })
    }

    fn unsupported(&self, table: &str, column: Option<&str>) -> SourceError {
        SourceError::Unsupported {
            path: self.path.clone(),
            table: table.to_string(),
            column: column.map(str::to_string),
        }
    }

    /// True when the file at the path is no longer the one opened (replaced by rename, or
    /// deleted): the caller should drop this connection and open again.
    pub fn replaced(&self) -> bool {
        file_id(&self.path) != self.file_id
    }

    /// `PRAGMA data_version`: changes whenever another connection commits. O(1).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn data_version(&self) -> Result<i64, SourceError> {
        Ok(self
            .one("PRAGMA data_version", [], |r| r.get(0))?
            .unwrap_or(0))
    }

    /// Whether the database has OpenCode's live durable event log (≥ 1.16.0: the `event`,
    /// `event_sequence` and `migration` tables): every write to a session then appends an
    /// `event` row and bumps the session's `event_sequence.seq` in the same transaction. Earlier
    /// releases have the tables from 1.3.3 on but write them only with experimental workspaces.
    pub fn has_event_log(&self) -> bool {
        self.schema.event_log
    }

    fn session_col(&self, name: &str) -> String {
        if self.schema.session_cols.contains(name) {
            format!("s.{name}")
        } else {
            "NULL".to_string()
        }
    }

    /// The select list shared by [`Self::heads_after`] and [`Self::session_head`]: id,
    /// parent id, `time_updated`, `time_archived`, and the change counter (`event_sequence.seq`
    /// with the live event log, else the newest `message.time_updated`).
    fn head_columns(&self) -> String {
        let counter = if self.schema.event_log {
            "(SELECT seq FROM event_sequence WHERE aggregate_id = s.id)"
        } else {
            "(SELECT MAX(time_updated) FROM message WHERE session_id = s.id)"
        };
        format!(
            "s.id, s.parent_id, s.time_updated, {}, COALESCE({counter}, 0)",
            self.session_col("time_archived")
        )
    }

    fn head(r: &Row<'_>) -> rusqlite::Result<(Option<String>, HeadRow)> {
        Ok((
            text_id(r, 0),
            HeadRow {
                id: String::new(),
                parent_id: text(r, 1),
                marker: ChangeMarker {
                    counter: int(r, 4).unwrap_or(0),
                    updated_at: int(r, 2).unwrap_or(0),
                    archived_at: int(r, 3),
                },
            },
        ))
    }

    fn heads(&self, rows: Vec<(Option<String>, HeadRow)>) -> Vec<HeadRow> {
        self.readable("session", rows)
            .into_iter()
            .map(|(id, head)| HeadRow { id, ..head })
            .collect()
    }

    /// Up to `limit` session heads with an id after `after` (from the first with `None`), in id
    /// order (SQLite's BINARY collation: byte order of the UTF-8 text, as [`String`]'s `Ord`),
    /// each with its change marker: keyset pagination over the primary key index, with one
    /// indexed lookup per session into `event_sequence` (with the event log) or, on older
    /// databases, into `message` by `(session_id, …)`. Never reads `part` or `event`. Also
    /// returns how many rows the query returned, readable or not (fewer than `limit`: the end).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn heads_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<HeadRow>, usize), SourceError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = match after {
            Some(after) => {
                let sql = format!(
                    "SELECT {} FROM session s WHERE s.id > ?1 ORDER BY s.id LIMIT ?2",
                    self.head_columns()
                );
                self.all(&sql, rusqlite::params![after, limit], Self::head)?
            }
            None => {
                let sql = format!(
                    "SELECT {} FROM session s ORDER BY s.id LIMIT ?1",
                    self.head_columns()
                );
                self.all(&sql, [limit], Self::head)?
            }
        };
        let raw = rows.len();
        Ok((self.heads(rows), raw))
    }

    /// The head of one session, read by primary key; `None` when the row is gone.
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn session_head(&self, id: &str) -> Result<Option<HeadRow>, SourceError> {
        let sql = format!(
            "SELECT {} FROM session s WHERE s.id = ?1",
            self.head_columns()
        );
        let row = self.one(&sql, [id], Self::head)?;
        Ok(row.and_then(|r| self.heads(vec![r]).pop()))
    }

    /// The newest row of the event log: `(rowid, event.id)`; `None` when the log is empty or
    /// the database has none ([`Self::has_event_log`]).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn last_event(&self) -> Result<Option<EventMark>, SourceError> {
        if !self.schema.event_log {
            return Ok(None);
        }
        let row = self.one(
            "SELECT rowid, id FROM event ORDER BY rowid DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)?, text(r, 1))),
        )?;
        Ok(row.map(|(rowid, id)| EventMark {
            rowid,
            id: id.unwrap_or_default(),
        }))
    }

    /// Whether the event row `mark` names is still there with the same id: false once it was
    /// deleted (with its session) and its rowid possibly reused.
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn event_still_at(&self, mark: &EventMark) -> Result<bool, SourceError> {
        let id = self.one("SELECT id FROM event WHERE rowid = ?1", [mark.rowid], |r| {
            Ok(text(r, 0))
        })?;
        Ok(id.flatten().as_deref() == Some(mark.id.as_str()))
    }

    /// Up to `limit` event rows after rowid `after`, in rowid (append) order. Reads only the
    /// start of each row (the `data` payload, last, is not loaded).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<EventRow>, SourceError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.all(
            "SELECT rowid, id, aggregate_id, type LIKE 'session.created.%' FROM event \
             WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
            [after, limit],
            |r| {
                Ok(EventRow {
                    mark: EventMark {
                        rowid: r.get(0)?,
                        id: text(r, 1).unwrap_or_default(),
                    },
                    aggregate_id: text_id(r, 2),
                    session_created: int(r, 3) == Some(1),
                })
            },
        )
    }

    /// Runs `f` in one read transaction (one consistent snapshot of the database).
    ///
    /// # Errors
    /// `f`'s, and [`SourceError::Read`].
    pub fn consistent<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        self.in_read_txn(f)
    }

    /// `SELECT COUNT(*) FROM session` (answered from the smallest index, not the wide rows).
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn session_count(&self) -> Result<i64, SourceError> {
        Ok(self
            .one("SELECT COUNT(*) FROM session", [], |r| r.get(0))?
            .unwrap_or(0))
    }

    fn session_row(&self, id: &str) -> Result<Option<SessionRow>, SourceError> {
        let sql = format!(
            "SELECT s.id, s.project_id, s.parent_id, s.directory, s.title, s.version, \
             s.time_created, s.time_updated, {}, {}, {}, {}, {}, {} FROM session s WHERE s.id = ?1",
            self.session_col("time_archived"),
            self.session_col("summary_additions"),
            self.session_col("summary_deletions"),
            self.session_col("summary_files"),
            self.session_col("agent"),
            self.session_col("revert"),
        );
        let row = self.one(&sql, [id], |r| {
            let session = SessionRow {
                id: text_id(r, 0).unwrap_or_default(),
                project_id: text(r, 1).unwrap_or_default(),
                parent_id: text(r, 2),
                directory: text(r, 3).unwrap_or_default(),
                title: text(r, 4).unwrap_or_default(),
                version: text(r, 5).unwrap_or_default(),
                time_created: int(r, 6).unwrap_or(0),
                time_updated: int(r, 7).unwrap_or(0),
                time_archived: int(r, 8),
                summary_additions: int(r, 9),
                summary_deletions: int(r, 10),
                summary_files: int(r, 11),
                agent: text(r, 12),
                revert: None,
            };
            Ok((session, text(r, 13)))
        })?;
        Ok(row.map(|(mut session, revert)| {
            session.revert = revert.and_then(|json| {
                let parsed = serde_json::from_str::<Revert>(&json).ok();
                if parsed.is_none() {
                    self.warn_once("session", &session.id, "revert");
                }
                parsed
            });
            session
        }))
    }

    /// The session a fork was made from: OpenCode's `Session.fork` copies a prefix of the
    /// source's messages (new ids, original `time_created`), so the source is a session of the
    /// same project holding messages created at the copied prefix's first and last
    /// `time_created` (`first_ms`, `last_ms`). Among several (forks of forks, sibling forks),
    /// the one whose title `Session.fork` would turn into `title` ("X" → "X (fork #1)",
    /// "X (fork #N)" → "X (fork #N+1)"), else the oldest. Reads sessions of the project through
    /// `session_project_idx` and their messages through `(session_id, time_created, id)`.
    fn fork_source(
        &self,
        session: &SessionRow,
        first_ms: i64,
        last_ms: i64,
    ) -> Result<Option<String>, SourceError> {
        let candidates = self.all(
            "SELECT s.id, s.title FROM session s \
             WHERE s.project_id = ?1 AND s.id != ?2 AND s.time_created <= ?3 \
               AND EXISTS (SELECT 1 FROM message m WHERE m.session_id = s.id AND m.time_created = ?3) \
               AND EXISTS (SELECT 1 FROM message m WHERE m.session_id = s.id AND m.time_created = ?4) \
             ORDER BY s.time_created, s.id",
            rusqlite::params![session.project_id, session.id, first_ms, last_ms],
            |r| Ok((text_id(r, 0), text(r, 1).unwrap_or_default())),
        )?;
        let candidates = self.readable("session", candidates);
        let named = candidates
            .iter()
            .find(|(_, title)| forked_title(title) == session.title);
        Ok(named.or(candidates.first()).map(|(id, _)| id.clone()))
    }

    fn warn_once(&self, table: &str, id: &str, what: &str) {
        let key = format!("{table}:{id}");
        if self.warned.borrow_mut().insert(key) {
            tracing::warn!(
                table,
                row_id = id,
                error = what,
                "skipping malformed opencode row"
            );
        }
    }

    /// Parses a row's JSON `data` from the [`data_columns!`] starting at column `at`: from
    /// the row when it came inline, else streamed from the row's blob handle. A row whose
    /// `data` is not text, or not JSON of the expected shape, is skipped with one warning.
    fn parse_data<T: DeserializeOwned>(
        &self,
        table: &'static str,
        id: &str,
        row: &Row<'_>,
        at: usize,
    ) -> Option<T> {
        let is_text = matches!(row.get_ref(at + 1), Ok(ValueRef::Text(b"text")));
        if !is_text {
            self.warn_once(table, id, "data is not text");
            return None;
        }
        let parsed = match row.get_ref(at + 3) {
            Ok(ValueRef::Text(inline)) => {
                serde_json::from_slice(inline).map_err(|e| super::rows::json_error(&e))
            }
            _ => self.stream_data(table, int(row, at)),
        };
        parsed.map_err(|e| self.warn_once(table, id, &e)).ok()
    }

    /// Parses the `data` of row `rowid` of `table` through its blob handle, in
    /// [`STREAM_BUFFER_BYTES`] reads.
    fn stream_data<T: DeserializeOwned>(
        &self,
        table: &'static str,
        rowid: Option<i64>,
    ) -> Result<T, String> {
        let rowid = rowid.ok_or("no rowid")?;
        let blob = self
            .conn
            .blob_open(MAIN_DB, table, "data", rowid, true)
            .map_err(|e| e.to_string())?;
        serde_json::from_reader(BufReader::with_capacity(STREAM_BUFFER_BYTES, blob))
            .map_err(|e| super::rows::json_error(&e))
    }

    /// The first `max_chars` characters of the `text` field of part `rowid`'s `data` and its
    /// length in characters, streamed through the row's blob handle
    /// ([`super::json_prefix`]).
    fn stream_text_prefix(
        &self,
        rowid: Option<i64>,
        max_chars: usize,
    ) -> Result<Option<(String, usize)>, String> {
        let rowid = rowid.ok_or("no rowid")?;
        let blob = self
            .conn
            .blob_open(MAIN_DB, "part", "data", rowid, true)
            .map_err(|e| e.to_string())?;
        let reader = BufReader::with_capacity(STREAM_BUFFER_BYTES, blob);
        super::json_prefix::string_field_prefix(reader, "text", max_chars)
            .map_err(|e| e.to_string())
    }

    /// Steps `sql` and hands each row to `f`, which must not keep the row.
    fn each<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        mut f: impl FnMut(&Row<'_>),
    ) -> Result<(), SourceError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| self.sql_err(e))?;
        let mut rows = stmt.query(params).map_err(|e| self.sql_err(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql_err(e))? {
            f(row);
        }
        Ok(())
    }

    /// Messages of `sql` (columns: id, time_created, time_updated, then [`data_columns!`]),
    /// malformed ones skipped.
    fn message_rows<P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Vec<MessageRow>, SourceError> {
        let mut out = Vec::new();
        self.each(sql, params, |r| {
            let Some(id) = text_id(r, 0) else {
                return self.warn_once("message", "<unreadable id>", "its id is not UTF-8 text");
            };
            if let Some(info) = self.parse_data::<MessageInfo>("message", &id, r, 3) {
                out.push(MessageRow {
                    id,
                    time_created: int(r, 1).unwrap_or(0),
                    time_updated: int(r, 2).unwrap_or(0),
                    info,
                });
            }
        })?;
        Ok(out)
    }

    /// Parts of `sql` (columns: id, message_id, time_updated, then [`data_columns!`]),
    /// malformed ones skipped, and the text of each message's non-synthetic `text` parts when
    /// `texts` asks for it (at most its `chars` kept per message; the rest counted).
    fn part_rows(
        &self,
        sql: &str,
        key: &str,
        texts: Texts,
    ) -> Result<(Vec<PartRow>, HashMap<String, MessageText>), SourceError> {
        let mut parts = Vec::new();
        let mut joined: HashMap<String, MessageText> = HashMap::new();
        self.each(sql, [key], |r| {
            let Some(id) = text_id(r, 0) else {
                return self.warn_once("part", "<unreadable id>", "its id is not UTF-8 text");
            };
            let message_id = text(r, 1).unwrap_or_default();
            let wants_text =
                |info: &PartInfo| info.kind == "text" && !info.synthetic.unwrap_or(false);
            let (info, piece) = match texts {
                Texts::Skip => match self.parse_data::<PartData<IgnoredAny>>("part", &id, r, 3) {
                    Some(d) => (d.split_text().0, None),
                    None => return,
                },
                // Small enough to have come inline: the text is at most that long.
                Texts::UpTo { .. } if inline(r) => {
                    match self.parse_data::<PartData<String>>("part", &id, r, 3) {
                        Some(d) => {
                            let (info, text) = d.split_text();
                            let piece = text.filter(|_| wants_text(&info)).map(|t| {
                                let n = t.chars().count();
                                (t, n)
                            });
                            (info, piece)
                        }
                        None => return,
                    }
                }
                // Streamed: the text only up to `chars`, in a second bounded read.
                Texts::UpTo { chars } => {
                    match self.parse_data::<PartData<IgnoredAny>>("part", &id, r, 3) {
                        Some(d) => {
                            let info = d.split_text().0;
                            let piece = if wants_text(&info) {
                                self.stream_text_prefix(int(r, 3), chars)
                                    .map_err(|e| self.warn_once("part", &id, &e))
                                    .ok()
                                    .flatten()
                            } else {
                                None
                            };
                            (info, piece)
                        }
                        None => return,
                    }
                }
            };
            if let (Some((prefix, total)), Texts::UpTo { chars }) = (piece, texts) {
                joined
                    .entry(message_id.clone())
                    .or_insert_with(|| MessageText::new(chars))
                    .push_prefix(&prefix, total);
            }
            parts.push(PartRow {
                id,
                message_id,
                time_updated: int(r, 2).unwrap_or(0),
                info,
            });
        })?;
        Ok((parts, joined))
    }

    fn todos(&self, session_id: &str) -> Result<Vec<TodoRow>, SourceError> {
        if !self.schema.has_todo {
            return Ok(Vec::new());
        }
        self.all(
            "SELECT content, status, priority FROM todo WHERE session_id = ?1 ORDER BY position",
            [session_id],
            |r| {
                Ok(TodoRow {
                    content: text(r, 0).unwrap_or_default(),
                    status: text(r, 1).unwrap_or_default(),
                    priority: text(r, 2).unwrap_or_default(),
                })
            },
        )
    }

    fn project(&self, project_id: &str) -> Result<Option<ProjectRow>, SourceError> {
        if !self.schema.has_project {
            return Ok(None);
        }
        self.one(
            "SELECT id, worktree FROM project WHERE id = ?1",
            [project_id],
            |r| {
                Ok(ProjectRow {
                    id: text(r, 0).unwrap_or_default(),
                    worktree: text(r, 1).unwrap_or_default(),
                })
            },
        )
    }

    /// Runs `f` inside one read transaction, which always ends before returning.
    fn in_read_txn<T>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        self.conn
            .execute_batch("BEGIN DEFERRED")
            .map_err(|e| self.sql_err(e))?;
        let out = f(self);
        // A read transaction has nothing to commit; ROLLBACK just releases the snapshot.
        let end = self
            .conn
            .execute_batch("ROLLBACK")
            .map_err(|e| self.sql_err(e));
        let out = out?;
        end?;
        Ok(out)
    }

    fn snapshot_in_txn(
        &self,
        id: &str,
        depth: usize,
        texts: Texts,
    ) -> Result<Option<RowSnapshot>, SourceError> {
        let Some(session) = self.session_row(id)? else {
            return Ok(None);
        };
        let project = self.project(&session.project_id)?;
        let sql = if written_in_order(&session.version) {
            concat!(
                "SELECT id, time_created, time_updated, ",
                data_columns!(),
                " FROM message WHERE session_id = ?1 ORDER BY rowid"
            )
        } else {
            concat!(
                "SELECT id, time_created, time_updated, ",
                data_columns!(),
                " FROM message WHERE session_id = ?1 ORDER BY time_created, id"
            )
        };
        let messages = self.message_rows(sql, [id])?;
        let known: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let (mut parts, texts_read) = self.part_rows(
            concat!(
                "SELECT id, message_id, time_updated, ",
                data_columns!(),
                " FROM part WHERE session_id = ?1 ORDER BY message_id, id"
            ),
            id,
            texts,
        )?;
        // Parts whose message row was skipped as malformed go too.
        parts.retain(|p| known.contains(p.message_id.as_str()));
        let todos = self.todos(id)?;
        let inherited: Vec<i64> = messages
            .iter()
            .map(|m| m.time_created)
            .take_while(|&t| t < session.time_created)
            .collect();
        let forked_from = match (inherited.first(), inherited.last()) {
            (Some(&first), Some(&last)) => self.fork_source(&session, first, last)?,
            _ => None,
        };
        let mut children = Vec::new();
        if depth < MAX_CHILD_DEPTH {
            let ids = self.all(
                "SELECT id FROM session WHERE parent_id = ?1 ORDER BY time_created, id",
                [id],
                |r| Ok((text_id(r, 0), ())),
            )?;
            for (child, ()) in self.readable("session", ids) {
                if let Some(c) = self.snapshot_in_txn(&child, depth + 1, texts)? {
                    children.push(c);
                }
            }
        }
        Ok(Some(RowSnapshot {
            session,
            project,
            messages,
            parts,
            texts: texts_read,
            todos,
            children,
            forked_from,
        }))
    }

    /// Reads one session with its project, messages, parts, todos and (recursively) its
    /// subagent sessions, in one read transaction, with message texts as `texts` asks. `None`
    /// when the session row is gone.
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn read_session(&self, id: &str, texts: Texts) -> Result<Option<RowSnapshot>, SourceError> {
        self.in_read_txn(|db| db.snapshot_in_txn(id, 0, texts))
    }

    /// Reads the newest messages of a session and the parts of its newest assistant message.
    /// "Newest" is by insertion order for sessions written row by row ([`written_in_order`]),
    /// else by `(time_created, id)`. The message rows read are O(1) per session: the ids
    /// come from the `(session_id, time_created, id)` index alone (it holds the rowid), then
    /// [`TAIL_MESSAGES`] rows by rowid; parts through `(message_id, id)`. `None` when the
    /// session row is gone.
    ///
    /// # Errors
    /// [`SourceError::Read`].
    pub fn read_tail(&self, id: &str) -> Result<Option<SessionTail>, SourceError> {
        self.in_read_txn(|db| {
            let Some(session) = db.session_row(id)? else {
                return Ok(None);
            };
            // The inner query reads index entries only; `+ 0` keeps the planner from walking
            // the whole table in rowid order to avoid the (small) sort.
            let sql = if written_in_order(&session.version) {
                concat!(
                    "SELECT id, time_created, time_updated, ",
                    data_columns!(),
                    " FROM message WHERE rowid IN \
                     (SELECT rowid FROM message WHERE session_id = ?1 ORDER BY rowid + 0 DESC LIMIT ?2) \
                     ORDER BY rowid DESC"
                )
            } else {
                concat!(
                    "SELECT id, time_created, time_updated, ",
                    data_columns!(),
                    " FROM message WHERE session_id = ?1 ORDER BY time_created DESC, id DESC LIMIT ?2"
                )
            };
            let recent = db.message_rows(sql, rusqlite::params![id, TAIL_MESSAGES as i64])?;
            let assistant_parts = match recent.iter().find(|m| m.info.is_assistant()) {
                Some(m) => {
                    db.part_rows(
                        concat!(
                            "SELECT id, message_id, time_updated, ",
                            data_columns!(),
                            " FROM part WHERE message_id = ?1 ORDER BY id"
                        ),
                        &m.id,
                        Texts::Skip,
                    )?
                    .0
                }
                None => Vec::new(),
            };
            let todo_statuses = db.todos(id)?.into_iter().map(|t| t.status).collect();
            Ok(Some(SessionTail {
                session,
                recent,
                assistant_parts,
                todo_statuses,
            }))
        })
    }
}

/// Whether a session's messages were written row by row, so that insertion order (`rowid`) is
/// the order they were written in, whatever the clock said: sessions created by OpenCode ≥ 1.2
/// (the SQLite releases; `session.version`). Older sessions came in through OpenCode's one-time
/// JSON import (`json-migration.ts`), which inserts files in directory-scan order, so their
/// order is `(time_created, id)`. Reading by insertion order is what makes a turn written with
/// earlier timestamps than the one before it (a clock stepped back) the newest turn. On every
/// real database in the fixtures the two orders agree.
pub fn written_in_order(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (1, 2),
        _ => false,
    }
}

/// The title `Session.fork` gives a fork of a session titled `title` (OpenCode's
/// `getForkedTitle`): "X" → "X (fork #1)", "X (fork #N)" → "X (fork #N+1)".
pub fn forked_title(title: &str) -> String {
    if let Some(open) = title.rfind(" (fork #") {
        let (base, tail) = title.split_at(open);
        if let Some(n) = tail
            .strip_prefix(" (fork #")
            .and_then(|t| t.strip_suffix(')'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u64>().ok())
        {
            if !base.is_empty() {
                return format!("{base} (fork #{})", n + 1);
            }
        }
    }
    format!("{title} (fork #1)")
}

/// Subagent sessions are read to this depth below the session (a child of a child of …).
pub const MAX_CHILD_DEPTH: usize = 4;

#[cfg(test)]
mod tests {
    use super::{forked_title, written_in_order, OpenCodeDb};
    use crate::source::Texts;

    /// On every session of the real databases in the fixtures, the tail taken from a whole
    /// read (what `observe_whole` classifies) is the tail `read_tail` reads. (Copies: opening
    /// a WAL database creates its `-shm` beside it.)
    #[test]
    fn the_tail_of_a_whole_read_is_the_tail_read_on_its_own() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
        let scratch = tempfile::tempdir().unwrap();
        let mut checked = 0;
        for dir in [
            "opencode-1.18.33",
            "opencode-1.18.33-kinds",
            "opencode-1.18.33-apply-patch",
        ] {
            let copy = scratch.path().join(dir);
            std::fs::create_dir_all(&copy).unwrap();
            for f in ["opencode.db", "opencode.db-wal", "opencode.db-shm"] {
                let from = fixtures.join(dir).join(f);
                if from.exists() {
                    std::fs::copy(&from, copy.join(f)).unwrap();
                }
            }
            let db = OpenCodeDb::open(&copy.join("opencode.db"), std::time::Duration::from_secs(5))
                .unwrap();
            let (heads, _) = db.heads_after(None, 10_000).unwrap();
            for head in heads {
                let tail = db.read_tail(&head.id).unwrap().unwrap();
                let whole = db.read_session(&head.id, Texts::Skip).unwrap().unwrap();
                assert_eq!(whole.tail(), tail, "{dir} {}", head.id);
                checked += 1;
            }
        }
        assert!(checked >= 50, "{checked} sessions");
    }

    /// Which `session.version`s were written row by row (OpenCode ≥ 1.2).
    #[test]
    fn sessions_of_the_sqlite_releases_are_read_in_insertion_order() {
        for (version, in_order) in [
            ("1.18.33", true),
            ("1.2.0", true),
            ("1.2.1", true),
            ("2.0.0", true),
            ("1.10.3", true),
            ("1.1.65", false),
            ("1.1.0", false),
            ("0.15.4", false),
            ("", false),
            ("dev", false),
            ("1", false),
        ] {
            assert_eq!(written_in_order(version), in_order, "{version:?}");
        }
    }

    /// OpenCode's `getForkedTitle` (`/^(.+) \(fork #(\d+)\)$/`), case by case.
    #[test]
    fn forked_titles_follow_opencode() {
        for (title, forked) in [
            ("Fix the build", "Fix the build (fork #1)"),
            ("Fix the build (fork #1)", "Fix the build (fork #2)"),
            ("Fix the build (fork #9)", "Fix the build (fork #10)"),
            ("a (fork #1) (fork #2)", "a (fork #1) (fork #3)"),
            // Not the pattern: a suffix is added.
            ("(fork #1)", "(fork #1) (fork #1)"),
            ("x (fork #)", "x (fork #) (fork #1)"),
            ("x (fork #1a)", "x (fork #1a) (fork #1)"),
            ("x (fork #1) ", "x (fork #1)  (fork #1)"),
            ("", " (fork #1)"),
        ] {
            assert_eq!(forked_title(title), forked, "{title:?}");
        }
    }
}
