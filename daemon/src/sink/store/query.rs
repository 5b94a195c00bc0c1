//! The store's read side: the rows `report` and `export` read, through a read-only connection
//! ([`Reader`]). Every query filters on the indexed `created_at` (a session counts, whole, at
//! its creation time, as in the deployment's daily totals) and streams its rows to a callback,
//! so memory stays independent of the number of sessions; grouping is the caller's.

use std::path::PathBuf;

use rusqlite::{params_from_iter, types::Value, Connection, Row};

use super::counted::{Figures, Tokens};
use super::StoreError;

/// Which sessions a query reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only sessions created at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Only sessions created before this time (epoch ms, exclusive).
    pub until_ms: Option<i64>,
    /// Only this source (`opencode`).
    pub source: Option<String>,
    /// Only this project: its directory, the last component of its directory, or its
    /// project id.
    pub project: Option<String>,
}

impl Filter {
    /// The `WHERE` clause over `session s` and its parameters.
    fn clause(&self) -> (String, Vec<Value>) {
        let mut sql = String::from("s.counted = 1");
        let mut args = Vec::new();
        if let Some(v) = self.since_ms {
            sql.push_str(" AND s.created_at >= ?");
            args.push(Value::Integer(v));
        }
        if let Some(v) = self.until_ms {
            sql.push_str(" AND s.created_at < ?");
            args.push(Value::Integer(v));
        }
        if let Some(v) = &self.source {
            sql.push_str(" AND s.source = ?");
            args.push(Value::Text(v.clone()));
        }
        if let Some(v) = &self.project {
            sql.push_str(
                " AND (s.project_directory = ? OR s.project_id = ? OR s.project_directory LIKE ? ESCAPE '\\')",
            );
            args.push(Value::Text(v.clone()));
            args.push(Value::Text(v.clone()));
            let escaped = v
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            args.push(Value::Text(format!("%/{escaped}")));
        }
        (sql, args)
    }
}

/// Which session a row belongs to, with the dimensions a report groups by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    /// `opencode`.
    pub source: String,
    /// The session id.
    pub session_id: String,
    /// `createdAt` (epoch ms).
    pub created_at: i64,
    /// The working directory.
    pub project_directory: String,
    /// The host name of the machine that exported it.
    pub hostname: String,
    /// The pseudonymous device id.
    pub device_id: String,
}

/// The `SessionRef` columns of `stored_session s`, in [`session_ref`]'s order.
const REF_COLUMNS: &str =
    "s.source, s.session_id, s.created_at, s.project_directory, s.hostname, s.device_id";

fn session_ref(row: &Row<'_>) -> rusqlite::Result<SessionRef> {
    Ok(SessionRef {
        source: row.get(0)?,
        session_id: row.get(1)?,
        created_at: row.get(2)?,
        project_directory: row.get(3)?,
        hostname: row.get(4)?,
        device_id: row.get(5)?,
    })
}

/// One counted session (a top-level session with its subagents; see
/// [`super::counted`]), as the report reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// The session and its dimensions.
    pub at: SessionRef,
    /// The title.
    pub title: String,
    /// Sessions counted (1 + subagents).
    pub sessions: i64,
    /// Messages, tokens, cost (counted).
    pub figures: Figures,
    /// Turns that ended in an error (the session's and its subagents').
    pub errors: i64,
    /// Todo rows, and those completed.
    pub todos_total: i64,
    /// Completed todos.
    pub todos_completed: i64,
    /// Lines added by the session's own edits.
    pub code_additions: i64,
    /// Lines deleted by the session's own edits.
    pub code_deletions: i64,
    /// `durationMs`, when known.
    pub duration_ms: Option<i64>,
}

/// One per-dimension row of a counted session (model, agent).
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionRow {
    /// The session.
    pub at: SessionRef,
    /// The dimension's key (`provider/model`, the agent name).
    pub key: String,
    /// Figures under that key.
    pub figures: Figures,
}

/// One tool or skill row of a counted session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolRow {
    /// The session.
    pub at: SessionRef,
    /// Tool or skill name.
    pub name: String,
    /// Calls.
    pub calls: i64,
    /// Calls that failed.
    pub errors: i64,
    /// Time in finished calls (ms).
    pub duration_ms: i64,
}

/// Turns of a counted session that ended in one error name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorRow {
    /// The session.
    pub at: SessionRef,
    /// `error.name` (`APIError`, …).
    pub name: String,
    /// Turns (the session's own and its subagents') that ended in it.
    pub turns: i64,
}

/// Tool or skill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolKind {
    /// `tools`.
    Tool,
    /// `skills` (the `skill` tool, per skill name).
    Skill,
}

/// A read-only connection to the store.
pub struct Reader {
    conn: Connection,
    path: PathBuf,
}

fn tokens(row: &Row<'_>, first: usize) -> rusqlite::Result<Tokens> {
    Ok(Tokens {
        input: row.get(first)?,
        output: row.get(first + 1)?,
        reasoning: row.get(first + 2)?,
        cache_read: row.get(first + 3)?,
        cache_write: row.get(first + 4)?,
    })
}

impl Reader {
    pub(super) fn new(conn: Connection, path: PathBuf) -> Reader {
        Reader { conn, path }
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Every counted session matching `f`, oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn sessions(&self, f: &Filter, mut each: impl FnMut(SessionRow)) -> Result<(), StoreError> {
        let (clause, args) = f.clause();
        let sql = format!(
            "SELECT {REF_COLUMNS}, s.title, s.sessions, s.messages, s.cost, s.input, s.output,
                    s.reasoning, s.cache_read, s.cache_write, s.todos_total, s.todos_completed,
                    s.code_additions, s.code_deletions, s.duration_ms,
                    (SELECT COALESCE(SUM(e.turns), 0) FROM stored_error e
                      WHERE e.source = s.source AND e.session_id = s.session_id)
             FROM stored_session s WHERE {clause} ORDER BY s.created_at, s.source, s.session_id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let read = || -> rusqlite::Result<SessionRow> {
                Ok(SessionRow {
                    at: session_ref(row)?,
                    title: row.get(6)?,
                    sessions: row.get(7)?,
                    figures: Figures {
                        messages: row.get(8)?,
                        cost: row.get(9)?,
                        tokens: tokens(row, 10)?,
                    },
                    todos_total: row.get(15)?,
                    todos_completed: row.get(16)?,
                    code_additions: row.get(17)?,
                    code_deletions: row.get(18)?,
                    duration_ms: row.get(19)?,
                    errors: row.get(20)?,
                })
            };
            each(read().map_err(self.err())?);
        }
        Ok(())
    }

    /// The per-model rows of every counted session matching `f` (key `provider/model`).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn models(&self, f: &Filter, each: impl FnMut(DimensionRow)) -> Result<(), StoreError> {
        self.dimension(
            f,
            "stored_model",
            "d.provider_id || '/' || d.model_id",
            each,
        )
    }

    /// The per-agent rows of every counted session matching `f` (see [`super::counted`]).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn agents(&self, f: &Filter, each: impl FnMut(DimensionRow)) -> Result<(), StoreError> {
        self.dimension(f, "stored_agent", "d.agent", each)
    }

    fn dimension(
        &self,
        f: &Filter,
        table: &str,
        key: &str,
        mut each: impl FnMut(DimensionRow),
    ) -> Result<(), StoreError> {
        let (clause, args) = f.clause();
        let sql = format!(
            "SELECT {REF_COLUMNS}, {key}, d.messages, d.cost, d.input, d.output, d.reasoning,
                    d.cache_read, d.cache_write
             FROM stored_session s JOIN {table} d ON d.source = s.source AND d.session_id = s.session_id
             WHERE {clause}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let read = || -> rusqlite::Result<DimensionRow> {
                Ok(DimensionRow {
                    at: session_ref(row)?,
                    key: row.get(6)?,
                    figures: Figures {
                        messages: row.get(7)?,
                        cost: row.get(8)?,
                        tokens: tokens(row, 9)?,
                    },
                })
            };
            each(read().map_err(self.err())?);
        }
        Ok(())
    }

    /// The tool (or skill) rows of every counted session matching `f`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn tools(
        &self,
        f: &Filter,
        kind: ToolKind,
        mut each: impl FnMut(ToolRow),
    ) -> Result<(), StoreError> {
        let (clause, mut args) = f.clause();
        let sql = format!(
            "SELECT {REF_COLUMNS}, d.name, d.calls, d.errors, d.duration_ms
             FROM stored_session s JOIN stored_tool d ON d.source = s.source AND d.session_id = s.session_id
             WHERE {clause} AND d.kind = ?"
        );
        args.push(Value::Text(
            match kind {
                ToolKind::Tool => "tools",
                ToolKind::Skill => "skills",
            }
            .into(),
        ));
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let read = || -> rusqlite::Result<ToolRow> {
                Ok(ToolRow {
                    at: session_ref(row)?,
                    name: row.get(6)?,
                    calls: row.get(7)?,
                    errors: row.get(8)?,
                    duration_ms: row.get(9)?,
                })
            };
            each(read().map_err(self.err())?);
        }
        Ok(())
    }

    /// The error names of every counted session matching `f`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn errors(&self, f: &Filter, mut each: impl FnMut(ErrorRow)) -> Result<(), StoreError> {
        let (clause, args) = f.clause();
        let sql = format!(
            "SELECT {REF_COLUMNS}, d.name, d.turns
             FROM stored_session s JOIN stored_error d ON d.source = s.source AND d.session_id = s.session_id
             WHERE {clause}"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let read = || -> rusqlite::Result<ErrorRow> {
                Ok(ErrorRow {
                    at: session_ref(row)?,
                    name: row.get(6)?,
                    turns: row.get(7)?,
                })
            };
            each(read().map_err(self.err())?);
        }
        Ok(())
    }

    /// How many counted sessions match `f`.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn count(&self, f: &Filter) -> Result<u64, StoreError> {
        let (clause, args) = f.clause();
        self.conn
            .query_row(
                &format!("SELECT COUNT(*) FROM stored_session s WHERE {clause}"),
                params_from_iter(args),
                |r| r.get(0),
            )
            .map_err(self.err())
    }

    /// The stored record JSON of every session matching `f` — subagent rows included (an
    /// export is of rows, not of totals) — oldest first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn records(&self, f: &Filter, mut each: impl FnMut(&str)) -> Result<(), StoreError> {
        let (clause, args) = f.clause();
        let clause = clause.replacen("s.counted = 1", "1 = 1", 1);
        let sql = format!(
            "SELECT s.record FROM stored_session s WHERE {clause} ORDER BY s.created_at, s.source, s.session_id"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(self.err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(self.err())?;
        while let Some(row) = rows.next().map_err(self.err())? {
            let json: String = row.get(0).map_err(self.err())?;
            each(&json);
        }
        Ok(())
    }

    /// Rows in `stored_session` (every session, subagent rows included).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn row_count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM stored_session", [], |r| r.get(0))
            .map_err(self.err())
    }
}
