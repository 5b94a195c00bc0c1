//! The local store: an SQLite database `<data_dir>/sessions.db` holding one row per session,
//! the sink every configuration has (Convex, when configured, is a second one; both are fed by
//! the same outbox, each acknowledging on its own: see [`crate::queue`]'s lanes).
//!
//! # What it guarantees
//! - **One row per session**, keyed by `(source, session_id)`; `source` is `opencode` for
//!   every record this build makes (the record has no `source` field yet; another source's
//!   records will name theirs).
//! - **The deployment's monotonic upsert** (`upsertOne` in `convex/convex/sessions.ts`): a
//!   record replaces the stored row only when its version is newer — by `revision` when both the
//!   stored and the new record have one (a revision of 0 counts as none: records of daemons
//!   before it), else by `(updatedAt, exportedAt)`; an equal version, or an equal non-empty
//!   `contentHash`, is `unchanged` (nothing written), an older one `stale` (ignored). So a
//!   resent or reordered record never moves a row backwards. Unlike the deployment there is
//!   no device check: the store holds this machine's sessions.
//! - **A batch is one transaction**, committed with `synchronous = FULL` before the sink
//!   answers `Delivered`: every row of the batch, with all its child rows (per model, agent,
//!   tool, skill, error name) rewritten, is on disk before the outbox lets the records go. A
//!   failed write rolls the whole batch back and is a `Retry`.
//! - **A record the store cannot read** (not JSON, not a `SessionExport`) is `Refused` alone,
//!   with the reason (never its content); the rest of the batch is stored.
//! - Private: the file is created with mode 0600 (SQLite gives `-wal`/`-shm` the same mode).
//! - Readers (`report`, `export`) open it read-only ([`open_read`]) and work while the daemon
//!   writes (WAL).
//!
//! The schema, its version and the migration policy are in [`schema`]; what a row adds to
//! the totals, in [`counted`]; the read side (the report and export queries), in [`query`].

pub mod counted;
pub mod query;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::export::SessionExport;
use crate::sink::{Limits, Outcome, RecordOutcome, Sink};

pub use schema::SCHEMA_VERSION;

/// The store's file name inside `data_dir`.
pub const STORE_FILE_NAME: &str = "sessions.db";

/// The `source` of the records this build makes.
pub const SOURCE_OPENCODE: &str = "opencode";

/// Most records one store transaction carries. Smaller than the deployment's batches: a batch
/// is copied once onto the blocking pool and parsed record by record, and `once` drains the
/// lanes side by side, so this bounds what the store adds to the peak memory; a transaction of
/// 200 upserts already costs one `fsync` per 200 records.
pub const MAX_BATCH_RECORDS: usize = 200;

/// Most bytes of records one store transaction carries (a single larger record goes alone).
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// `<data_dir>/sessions.db`.
pub fn store_path(data_dir: &Path) -> PathBuf {
    data_dir.join(STORE_FILE_NAME)
}

/// Why the store cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file or its directory cannot be created or opened.
    #[error("local store {}: {source}", path.display())]
    Open {
        /// The store file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// No store exists yet (nothing was exported on this machine).
    #[error("no local store at {} yet: run `opencode-telemetry once` or the daemon first", path.display())]
    Missing {
        /// The store file.
        path: PathBuf,
    },
    /// A newer build wrote this store.
    #[error("local store {} has schema version {found}, newer than this build's {SCHEMA_VERSION}: upgrade opencode-telemetry", path.display())]
    Newer {
        /// The store file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// An older build wrote this store; the daemon (or `once`) migrates it when it opens it.
    #[error("local store {} has schema version {found}, older than this build's {SCHEMA_VERSION}: run `opencode-telemetry once` (or restart the daemon) to migrate it", path.display())]
    Older {
        /// The store file.
        path: PathBuf,
        /// Its `user_version`.
        found: i64,
    },
    /// SQLite failed.
    #[error("local store {}: {source}", path.display())]
    Sql {
        /// The store file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// Opens the store read-only (`schema::open_read`: the schema must be this build's).
///
/// # Errors
/// See [`StoreError`].
pub fn open_read(data_dir: &Path) -> Result<query::Reader, StoreError> {
    let path = store_path(data_dir);
    let conn = schema::open_read(&path)?;
    Ok(query::Reader::new(conn, path))
}

/// What the upsert of one record did (the deployment's actions, without `rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// No row: inserted.
    Inserted,
    /// An older row was replaced.
    Updated,
    /// The same version (or the same content) is stored: nothing written.
    Unchanged,
    /// A newer version is stored: nothing written.
    Stale,
}

/// The store as a sink. Cheap to clone (one connection behind a mutex; one writer per data dir,
/// enforced by the outbox's lock).
#[derive(Debug, Clone)]
pub struct StoreSink {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl StoreSink {
    /// Opens (creating and migrating) `<data_dir>/sessions.db`.
    ///
    /// # Errors
    /// [`StoreError::Open`], [`StoreError::Newer`], [`StoreError::Sql`].
    pub fn open(data_dir: &Path) -> Result<StoreSink, StoreError> {
        let path = store_path(data_dir);
        let conn = schema::open_write(&path)?;
        Ok(StoreSink {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Upserts `records` in one transaction: one result per record (`Err`: refused, with the
    /// reason), or the SQLite error that rolled the whole batch back.
    ///
    /// # Errors
    /// [`rusqlite::Error`]: nothing of the batch was written.
    pub fn upsert_batch(
        &self,
        records: &[&[u8]],
    ) -> Result<Vec<Result<Upsert, String>>, rusqlite::Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // IMMEDIATE: take the write lock first (waiting up to the busy timeout for another
        // writer), rather than failing at once when a read transaction cannot be upgraded.
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(records.len());
        for bytes in records {
            let record: SessionExport = match serde_json::from_slice(bytes) {
                Ok(r) => r,
                Err(e) => {
                    out.push(Err(format!("not a session record ({})", e.classify_name())));
                    continue;
                }
            };
            let json = match std::str::from_utf8(bytes) {
                Ok(s) => s,
                Err(_) => {
                    out.push(Err("not UTF-8".into()));
                    continue;
                }
            };
            out.push(Ok(upsert(&tx, &record, json)?));
        }
        tx.commit()?;
        Ok(out)
    }
}

/// serde_json's error category, without the position text that could quote nothing but still
/// says more than needed.
trait Classify {
    fn classify_name(&self) -> String;
}

impl Classify for serde_json::Error {
    fn classify_name(&self) -> String {
        match self.classify() {
            serde_json::error::Category::Io => "io error".into(),
            serde_json::error::Category::Syntax => "invalid json".into(),
            serde_json::error::Category::Eof => "truncated json".into(),
            // A data error names the field and the expected type, never the value.
            serde_json::error::Category::Data => self.to_string(),
        }
    }
}

/// The stored version of a session, for the monotonic compare.
struct Version {
    revision: i64,
    updated_at: i64,
    exported_at: i64,
    content_hash: String,
}

/// `Greater` when `a` is newer than `b`, `Equal` when they are the same version
/// (`compareVersions` of `convex/convex/sessions.ts`): by `revision` when both have one (a
/// positive one), else by `(updatedAt, exportedAt)`.
fn compare_versions(a: &Version, b: &Version) -> std::cmp::Ordering {
    if a.revision > 0 && b.revision > 0 {
        return a.revision.cmp(&b.revision);
    }
    (a.updated_at, a.exported_at).cmp(&(b.updated_at, b.exported_at))
}

fn version_of(r: &SessionExport) -> Version {
    Version {
        revision: r.revision,
        updated_at: r.updated_at,
        exported_at: r.exported_at,
        content_hash: r.content_hash.clone(),
    }
}

/// Upserts one record (see the module doc) inside `tx`.
fn upsert(tx: &Transaction<'_>, r: &SessionExport, json: &str) -> Result<Upsert, rusqlite::Error> {
    let source = SOURCE_OPENCODE;
    let stored: Option<Version> = tx
        .query_row(
            "SELECT revision, updated_at, exported_at, content_hash FROM stored_session
             WHERE source = ?1 AND session_id = ?2",
            params![source, r.session_id],
            |row| {
                Ok(Version {
                    revision: row.get(0)?,
                    updated_at: row.get(1)?,
                    exported_at: row.get(2)?,
                    content_hash: row.get(3)?,
                })
            },
        )
        .optional()?;
    let new = version_of(r);
    let action = match &stored {
        None => Upsert::Inserted,
        Some(old) => match compare_versions(old, &new) {
            std::cmp::Ordering::Greater => return Ok(Upsert::Stale),
            std::cmp::Ordering::Equal => return Ok(Upsert::Unchanged),
            std::cmp::Ordering::Less
                if !new.content_hash.is_empty() && old.content_hash == new.content_hash =>
            {
                return Ok(Upsert::Unchanged)
            }
            std::cmp::Ordering::Less => Upsert::Updated,
        },
    };
    write_row(tx, source, r, json)?;
    Ok(action)
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Replaces the row of `r` and all its child rows.
fn write_row(
    tx: &Transaction<'_>,
    source: &str,
    r: &SessionExport,
    json: &str,
) -> Result<(), rusqlite::Error> {
    let sid = r.session_id.as_str();
    for table in [
        "stored_model",
        "stored_agent",
        "stored_tool",
        "stored_error",
    ] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE source = ?1 AND session_id = ?2"),
            params![source, sid],
        )?;
    }
    let c = counted::counted(r);
    let figures = c.as_ref().map(|c| c.figures).unwrap_or_default();
    let t = figures.tokens;
    tx.execute(
        "INSERT OR REPLACE INTO stored_session (source, session_id, device_id, hostname, project_id,
           project_directory, parent_session_id, forked_from, title, created_at, updated_at,
           exported_at, revision, content_hash, archived_at, deleted_at, duration_ms, end_reason,
           error_name, incomplete, primary_agent, counted, sessions, messages, cost, input,
           output, reasoning, cache_read, cache_write, todos_total, todos_completed,
           code_additions, code_deletions, code_files, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
           ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35,
           ?36)",
        params![
            source,
            sid,
            r.device_id,
            r.hostname,
            r.project_id,
            r.project_directory,
            r.parent_session_id,
            r.forked_from,
            r.title,
            r.created_at,
            r.updated_at,
            r.exported_at,
            r.revision,
            r.content_hash,
            r.archived_at,
            r.deleted_at,
            r.duration_ms,
            r.end_reason.as_str(),
            r.error.as_ref().map(|e| e.name.as_str()),
            r.incomplete,
            r.primary_agent,
            c.is_some(),
            c.as_ref().map_or(0, |c| c.sessions),
            figures.messages,
            figures.cost,
            t.input,
            t.output,
            t.reasoning,
            t.cache_read,
            t.cache_write,
            i(r.todo_stats.total),
            i(r.todo_stats.completed),
            i(r.code_changes.additions),
            i(r.code_changes.deletions),
            i(r.code_changes.files_changed),
            json,
        ],
    )?;
    let Some(c) = c else {
        return Ok(());
    };
    let mut model = tx.prepare_cached(
        "INSERT INTO stored_model VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for ((provider, m), f) in &c.models {
        let t = f.tokens;
        model.execute(params![
            source,
            sid,
            provider,
            m,
            f.messages,
            f.cost,
            t.input,
            t.output,
            t.reasoning,
            t.cache_read,
            t.cache_write
        ])?;
    }
    let mut agent = tx.prepare_cached(
        "INSERT INTO stored_agent VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (name, f) in &c.agents {
        let t = f.tokens;
        agent.execute(params![
            source,
            sid,
            name,
            f.messages,
            f.cost,
            t.input,
            t.output,
            t.reasoning,
            t.cache_read,
            t.cache_write
        ])?;
    }
    let mut tool =
        tx.prepare_cached("INSERT INTO stored_tool VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?;
    for (kind, list) in [("tools", &c.tools), ("skills", &c.skills)] {
        for (name, f) in list {
            tool.execute(params![
                source,
                sid,
                kind,
                name,
                f.calls,
                f.errors,
                f.duration_ms
            ])?;
        }
    }
    let mut error = tx.prepare_cached("INSERT INTO stored_error VALUES (?1, ?2, ?3, ?4)")?;
    for (name, n) in &c.errors {
        error.execute(params![source, sid, name, n])?;
    }
    Ok(())
}

impl Sink for StoreSink {
    /// `local store <path>`.
    fn describe(&self) -> String {
        format!("local store {}", self.path.display())
    }

    /// [`MAX_BATCH_RECORDS`], [`MAX_BATCH_BYTES`].
    fn limits(&self) -> Limits {
        Limits {
            max_records: MAX_BATCH_RECORDS,
            max_bytes: MAX_BATCH_BYTES,
        }
    }

    /// Upserts the batch in one transaction on tokio's blocking pool: `Delivered` (every record
    /// `Accepted` whatever the upsert did, or `Refused` when it is not a session record) once
    /// committed; `Retry` when SQLite fails (nothing written).
    async fn send(&self, records: &[&[u8]]) -> Outcome {
        let owned: Vec<Vec<u8>> = records.iter().map(|r| r.to_vec()).collect();
        let this = self.clone();
        let done = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
            this.upsert_batch(&refs)
        })
        .await;
        match done {
            Ok(Ok(results)) => Outcome::Delivered(
                results
                    .into_iter()
                    .map(|r| match r {
                        Ok(_) => RecordOutcome::Accepted,
                        Err(reason) => RecordOutcome::Refused { reason },
                    })
                    .collect(),
            ),
            Ok(Err(e)) => Outcome::Retry {
                reason: format!("local store {}: {e}", self.path.display()),
                after: None,
            },
            Err(e) => Outcome::Retry {
                reason: format!(
                    "local store {}: write task failed: {e}",
                    self.path.display()
                ),
                after: None,
            },
        }
    }
}

#[cfg(test)]
mod tests;
