//! Read-only reader of OpenCode's SQLite database (`opencode.db`, WAL mode).
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
//! - A database file replaced by rename or deleted is detected by comparing `(dev, inode)` with
//!   the values at open ([`OpenCodeDb::replaced`]); the caller then reopens.

pub mod rows;

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row};

use rows::{MessageInfo, MessageRow, PartInfo, PartRow, ProjectRow, SessionRow, TodoRow};

/// Errors of the OpenCode reader.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database file does not exist (yet).
    #[error("opencode database not found at {path}")]
    Missing {
        /// The path looked at.
        path: PathBuf,
    },
    /// The file exists but is not an OpenCode database (no `session` table).
    #[error("{path} is not an opencode database: {reason}")]
    NotOpenCode {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// SQLite failed (busy past the timeout, IO error, corrupt file, …).
    #[error("reading opencode database {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// Which optional tables and columns the database has.
#[derive(Debug, Clone, Default)]
struct Schema {
    session_cols: HashSet<String>,
    has_event_sequence: bool,
    has_project: bool,
    has_todo: bool,
}

/// The cheap per-session view used to find what changed: one row per session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHead {
    /// `session.id`.
    pub id: String,
    /// `session.parent_id`.
    pub parent_id: Option<String>,
    /// A value that changes whenever anything of the session is written: `event_sequence.seq`
    /// (OpenCode ≥ 1.16, bumped by every durable session event) combined with
    /// `session.time_updated` and `time_archived`. On databases without `event_sequence` it is
    /// the newest `message.time_updated` of the session.
    pub marker: ChangeMarker,
}

/// See [`SessionHead::marker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChangeMarker {
    /// `event_sequence.seq`, or the newest `message.time_updated` without that table.
    pub seq: i64,
    /// `session.time_updated` (ms).
    pub time_updated: i64,
    /// `session.time_archived` (ms).
    pub time_archived: Option<i64>,
}

/// Everything the database holds about one session, read in one read transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// The `session` row.
    pub session: SessionRow,
    /// Its `project` row, if present.
    pub project: Option<ProjectRow>,
    /// `message` rows ordered by `(time_created, id)`.
    pub messages: Vec<MessageRow>,
    /// `part` rows ordered by `(message_id, id)`.
    pub parts: Vec<PartRow>,
    /// `todo` rows ordered by `position`.
    pub todos: Vec<TodoRow>,
    /// Subagent sessions (`parent_id` = this id), recursively, each a full snapshot.
    pub children: Vec<SessionSnapshot>,
}

impl SessionSnapshot {
    /// The last write to the session (ms): the largest of `session.time_updated` and the
    /// `time_updated` of its message and part rows.
    pub fn last_write_ms(&self) -> i64 {
        let m = self.messages.iter().map(|m| m.time_updated).max();
        let p = self.parts.iter().map(|p| p.time_updated).max();
        [Some(self.session.time_updated), m, p]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }
}

/// The few newest rows of a session: enough to tell busy from ended (see
/// [`crate::source::activity`]) without reading the whole session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionTail {
    /// The `session` row.
    pub session: SessionRow,
    /// Up to [`TAIL_MESSAGES`] newest messages, newest first (by `(time_created, id)`).
    pub recent: Vec<MessageRow>,
    /// Parts of the newest assistant message in `recent`, ordered by id.
    pub assistant_parts: Vec<PartRow>,
    /// Todo statuses of the session.
    pub todo_statuses: Vec<String>,
}

impl SessionTail {
    /// The newest write seen in the tail (ms).
    pub fn last_write_ms(&self) -> i64 {
        let m = self.recent.iter().map(|m| m.time_updated).max();
        let p = self.assistant_parts.iter().map(|p| p.time_updated).max();
        [Some(self.session.time_updated), m, p]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }
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
    /// [`SourceError::Missing`] when the file does not exist, [`SourceError::NotOpenCode`] when it
    /// has no `session` table, [`SourceError::Sqlite`] otherwise.
    pub fn open(path: &Path, busy_timeout: Duration) -> Result<OpenCodeDb, SourceError> {
        if !path.exists() {
            return Err(SourceError::Missing {
                path: path.to_path_buf(),
            });
        }
        let sql_err = |source| SourceError::Sqlite {
            path: path.to_path_buf(),
            source,
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

    fn sql_err(&self, source: rusqlite::Error) -> SourceError {
        SourceError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn detect_schema(&self) -> Result<Schema, SourceError> {
        let tables: HashSet<String> = {
            let mut stmt = self
                .conn
                .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
                .map_err(|e| self.sql_err(e))?;
            let names = stmt
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(|e| self.sql_err(e))?
                .collect::<Result<_, _>>()
                .map_err(|e| self.sql_err(e))?;
            names
        };
        for required in ["session", "message", "part"] {
            if !tables.contains(required) {
                return Err(SourceError::NotOpenCode {
                    path: self.path.clone(),
                    reason: format!("no `{required}` table"),
                });
            }
        }
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM pragma_table_info('session')")
            .map_err(|e| self.sql_err(e))?;
        let session_cols = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(Schema {
            session_cols,
            has_event_sequence: tables.contains("event_sequence"),
            has_project: tables.contains("project"),
            has_todo: tables.contains("todo"),
        })
    }

    /// True when the file at the path is no longer the one opened (replaced by rename, or
    /// deleted): the caller should drop this connection and open again.
    pub fn replaced(&self) -> bool {
        file_id(&self.path) != self.file_id
    }

    /// `PRAGMA data_version`: changes whenever another connection commits. O(1).
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn data_version(&self) -> Result<i64, SourceError> {
        self.conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))
    }

    /// Whether change markers come from `event_sequence` (OpenCode ≥ 1.16).
    pub fn has_event_sequence(&self) -> bool {
        self.schema.has_event_sequence
    }

    fn session_col(&self, name: &str) -> String {
        if self.schema.session_cols.contains(name) {
            format!("s.{name}")
        } else {
            "NULL".to_string()
        }
    }

    /// One row per session with its change marker. Cost: one pass over `session` (and
    /// `event_sequence`, one row per session) on OpenCode ≥ 1.16; on older databases, one pass
    /// over `message` grouped by session. Never reads `part` or `event`.
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn session_heads(&self) -> Result<Vec<SessionHead>, SourceError> {
        let archived = self.session_col("time_archived");
        let sql = if self.schema.has_event_sequence {
            format!(
                "SELECT s.id, s.parent_id, s.time_updated, {archived}, COALESCE(e.seq, 0) \
                 FROM session s LEFT JOIN event_sequence e ON e.aggregate_id = s.id"
            )
        } else {
            format!(
                "SELECT s.id, s.parent_id, s.time_updated, {archived}, \
                 COALESCE(m.t, 0) FROM session s LEFT JOIN \
                 (SELECT session_id, MAX(time_updated) AS t FROM message GROUP BY session_id) m \
                 ON m.session_id = s.id"
            )
        };
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sql_err(e))?;
        let heads = stmt
            .query_map([], |r| {
                Ok(SessionHead {
                    id: r.get(0)?,
                    parent_id: text(r, 1),
                    marker: ChangeMarker {
                        seq: int(r, 4).unwrap_or(0),
                        time_updated: int(r, 2).unwrap_or(0),
                        time_archived: int(r, 3),
                    },
                })
            })
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(heads)
    }

    /// `(aggregate_id, seq)` of every `event_sequence` row (OpenCode ≥ 1.16): one small row per
    /// session that had a durable event since the table was last wiped; every write to a session
    /// bumps its `seq`. `None` when the table does not exist.
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn sequences(&self) -> Result<Option<Vec<(String, i64)>>, SourceError> {
        if !self.schema.has_event_sequence {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT aggregate_id, seq FROM event_sequence")
            .map_err(|e| self.sql_err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, int(r, 1).unwrap_or(0))))
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(Some(rows))
    }

    /// The head of one session, read by primary key; `None` when the row is gone.
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn session_head(&self, id: &str) -> Result<Option<SessionHead>, SourceError> {
        let archived = self.session_col("time_archived");
        let sql = if self.schema.has_event_sequence {
            format!(
                "SELECT s.id, s.parent_id, s.time_updated, {archived}, \
                 COALESCE((SELECT seq FROM event_sequence WHERE aggregate_id = s.id), 0) \
                 FROM session s WHERE s.id = ?1"
            )
        } else {
            format!(
                "SELECT s.id, s.parent_id, s.time_updated, {archived}, \
                 COALESCE((SELECT MAX(time_updated) FROM message WHERE session_id = s.id), 0) \
                 FROM session s WHERE s.id = ?1"
            )
        };
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sql_err(e))?;
        stmt.query_row([id], |r| {
            Ok(SessionHead {
                id: r.get(0)?,
                parent_id: text(r, 1),
                marker: ChangeMarker {
                    seq: int(r, 4).unwrap_or(0),
                    time_updated: int(r, 2).unwrap_or(0),
                    time_archived: int(r, 3),
                },
            })
        })
        .optional()
        .map_err(|e| self.sql_err(e))
    }

    /// `SELECT COUNT(*) FROM session` (answered from the smallest index, not the wide rows).
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn session_count(&self) -> Result<i64, SourceError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM session", [], |r| r.get(0))
            .map_err(|e| self.sql_err(e))
    }

    fn session_row(&self, id: &str) -> Result<Option<SessionRow>, SourceError> {
        let sql = format!(
            "SELECT s.id, s.project_id, s.parent_id, s.directory, s.title, s.version, \
             s.time_created, s.time_updated, {}, {}, {}, {}, {} FROM session s WHERE s.id = ?1",
            self.session_col("time_archived"),
            self.session_col("summary_additions"),
            self.session_col("summary_deletions"),
            self.session_col("summary_files"),
            self.session_col("agent"),
        );
        let mut stmt = self
            .conn
            .prepare_cached(&sql)
            .map_err(|e| self.sql_err(e))?;
        stmt.query_row([id], |r| {
            Ok(SessionRow {
                id: r.get(0)?,
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
            })
        })
        .optional()
        .map_err(|e| self.sql_err(e))
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

    fn parse_message(
        &self,
        id: String,
        created: i64,
        updated: i64,
        data: Option<String>,
    ) -> Option<MessageRow> {
        let Some(data) = data else {
            self.warn_once("message", &id, "data is not text");
            return None;
        };
        match serde_json::from_str::<MessageInfo>(&data) {
            Ok(info) => Some(MessageRow {
                id,
                time_created: created,
                time_updated: updated,
                info,
            }),
            Err(e) => {
                self.warn_once("message", &id, &e.to_string());
                None
            }
        }
    }

    fn parse_part(
        &self,
        id: String,
        message_id: String,
        updated: i64,
        data: Option<String>,
    ) -> Option<PartRow> {
        let Some(data) = data else {
            self.warn_once("part", &id, "data is not text");
            return None;
        };
        match serde_json::from_str::<PartInfo>(&data) {
            Ok(info) => Some(PartRow {
                id,
                message_id,
                time_updated: updated,
                info,
            }),
            Err(e) => {
                self.warn_once("part", &id, &e.to_string());
                None
            }
        }
    }

    fn messages(&self, session_id: &str) -> Result<Vec<MessageRow>, SourceError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, time_created, time_updated, data FROM message \
                 WHERE session_id = ?1 ORDER BY time_created, id",
            )
            .map_err(|e| self.sql_err(e))?;
        let raw = stmt
            .query_map([session_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    int(r, 1).unwrap_or(0),
                    int(r, 2).unwrap_or(0),
                    text(r, 3),
                ))
            })
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, c, u, d)| self.parse_message(id, c, u, d))
            .collect())
    }

    fn parts_of_session(&self, session_id: &str) -> Result<Vec<PartRow>, SourceError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, message_id, time_updated, data FROM part \
                 WHERE session_id = ?1 ORDER BY message_id, id",
            )
            .map_err(|e| self.sql_err(e))?;
        self.collect_parts(&mut stmt, session_id)
    }

    fn parts_of_message(&self, message_id: &str) -> Result<Vec<PartRow>, SourceError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, message_id, time_updated, data FROM part \
                 WHERE message_id = ?1 ORDER BY id",
            )
            .map_err(|e| self.sql_err(e))?;
        self.collect_parts(&mut stmt, message_id)
    }

    fn collect_parts(
        &self,
        stmt: &mut rusqlite::CachedStatement<'_>,
        key: &str,
    ) -> Result<Vec<PartRow>, SourceError> {
        let raw = stmt
            .query_map([key], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    text(r, 1).unwrap_or_default(),
                    int(r, 2).unwrap_or(0),
                    text(r, 3),
                ))
            })
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(raw
            .into_iter()
            .filter_map(|(id, m, u, d)| self.parse_part(id, m, u, d))
            .collect())
    }

    fn todos(&self, session_id: &str) -> Result<Vec<TodoRow>, SourceError> {
        if !self.schema.has_todo {
            return Ok(Vec::new());
        }
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT content, status, priority FROM todo WHERE session_id = ?1 ORDER BY position",
            )
            .map_err(|e| self.sql_err(e))?;
        let todos = stmt
            .query_map([session_id], |r| {
                Ok(TodoRow {
                    content: text(r, 0).unwrap_or_default(),
                    status: text(r, 1).unwrap_or_default(),
                    priority: text(r, 2).unwrap_or_default(),
                })
            })
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(todos)
    }

    fn project(&self, project_id: &str) -> Result<Option<ProjectRow>, SourceError> {
        if !self.schema.has_project {
            return Ok(None);
        }
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id, worktree FROM project WHERE id = ?1")
            .map_err(|e| self.sql_err(e))?;
        stmt.query_row([project_id], |r| {
            Ok(ProjectRow {
                id: r.get(0)?,
                worktree: text(r, 1).unwrap_or_default(),
            })
        })
        .optional()
        .map_err(|e| self.sql_err(e))
    }

    fn child_ids(&self, parent_id: &str) -> Result<Vec<String>, SourceError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT id FROM session WHERE parent_id = ?1 ORDER BY time_created, id")
            .map_err(|e| self.sql_err(e))?;
        let ids = stmt
            .query_map([parent_id], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql_err(e))?;
        Ok(ids)
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
    ) -> Result<Option<SessionSnapshot>, SourceError> {
        let Some(session) = self.session_row(id)? else {
            return Ok(None);
        };
        let project = self.project(&session.project_id)?;
        let messages = self.messages(id)?;
        let known: HashSet<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let mut parts = self.parts_of_session(id)?;
        // Parts whose message row was skipped as malformed go too.
        parts.retain(|p| known.contains(p.message_id.as_str()));
        let todos = self.todos(id)?;
        let mut children = Vec::new();
        if depth < MAX_CHILD_DEPTH {
            for child in self.child_ids(id)? {
                if let Some(c) = self.snapshot_in_txn(&child, depth + 1)? {
                    children.push(c);
                }
            }
        }
        Ok(Some(SessionSnapshot {
            session,
            project,
            messages,
            parts,
            todos,
            children,
        }))
    }

    /// Reads one session with its project, messages, parts, todos and (recursively) its
    /// subagent sessions, in one read transaction. `None` when the session row is gone.
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn read_session(&self, id: &str) -> Result<Option<SessionSnapshot>, SourceError> {
        self.in_read_txn(|db| db.snapshot_in_txn(id, 0))
    }

    /// Reads the newest messages of a session and the parts of its newest assistant message —
    /// O(1) rows per session through the `(session_id, time_created, id)` and
    /// `(message_id, id)` indexes. `None` when the session row is gone.
    ///
    /// # Errors
    /// [`SourceError::Sqlite`].
    pub fn read_tail(&self, id: &str) -> Result<Option<SessionTail>, SourceError> {
        self.in_read_txn(|db| {
            let Some(session) = db.session_row(id)? else {
                return Ok(None);
            };
            let mut stmt = db
                .conn
                .prepare_cached(
                    "SELECT id, time_created, time_updated, data FROM message \
                     WHERE session_id = ?1 ORDER BY time_created DESC, id DESC LIMIT ?2",
                )
                .map_err(|e| db.sql_err(e))?;
            let raw = stmt
                .query_map(rusqlite::params![id, TAIL_MESSAGES as i64], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        int(r, 1).unwrap_or(0),
                        int(r, 2).unwrap_or(0),
                        text(r, 3),
                    ))
                })
                .map_err(|e| db.sql_err(e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| db.sql_err(e))?;
            let recent: Vec<MessageRow> = raw
                .into_iter()
                .filter_map(|(i, c, u, d)| db.parse_message(i, c, u, d))
                .collect();
            let assistant_parts = match recent.iter().find(|m| m.info.is_assistant()) {
                Some(m) => db.parts_of_message(&m.id)?,
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

/// Subagent sessions are read to this depth below the session (a child of a child of …).
pub const MAX_CHILD_DEPTH: usize = 4;
