//! The OpenCode source: OpenCode's SQLite database (`opencode.db`), read-only.
//!
//! - [`sql`]: the connection and its queries ([`sql::OpenCodeDb`]); the invariants of reading a
//!   live WAL database are there.
//! - [`rows`]: the row and JSON shapes of OpenCode's schema; [`lenient`]: the field types that
//!   keep those shapes lean and lenient.
//! - [`activity`]: busy or ended from the newest rows — OpenCode's own rule for `session.idle`
//!   and `session.error`.
//! - [`path`]: where OpenCode keeps its database.
//!
//! [`OpenCodeSource`] implements [`SessionSource`] over them.
//!
//! # Change detection (the cursor)
//! An idle tick costs one `PRAGMA data_version` (per connection: it changes whenever another
//! connection commits). When it moved, with OpenCode's live event log (≥ 1.16,
//! [`OpenCodeDb::has_event_log`]) the source reads only the `event` rows appended since its
//! cursor — a rowid and the `(rowid, event.id)` of the newest row seen, so the cursor's memory
//! is independent of the history — and the head of each session they name (by primary key):
//! every durable write to a session appends an event in the same transaction. Deleting a
//! session deletes its events, so a deletion leaves no row to read; `COUNT(*)` of `session`
//! catches it: the count must equal the count at the cursor plus the `session.created` events
//! since. When it does not (a session deleted, or one created without an event), or when the
//! row at the cursor is gone (its session was deleted, and SQLite may reuse its rowid), the
//! source answers [`Changes::Rescan`] and the caller lists every session a page at a time
//! ([`SessionSource::heads_after`], keyset pages of the primary key). One call reads at most
//! [`EVENTS_PER_READ`] event rows and names at most [`MAX_DELTA_SESSIONS`] sessions; the rest
//! comes with the next call. Without the live log (older releases, whose `event` tables, from
//! 1.3.3 on, are written only with experimental workspaces), on the first look, and after the
//! file was replaced (new inode) or reopened, the answer is [`Changes::Rescan`].
//!
//! # Where each snapshot field comes from
//! | [`SessionSnapshot`] field | OpenCode |
//! |---|---|
//! | `id`, `parent_id`, `project_id`, `directory`, `title`, `created_at`, `archived_at` | `session.id`, `parent_id`, `project_id`, `directory`, `title`, `time_created`, `time_archived` |
//! | `agent_version` | `session.version` |
//! | `worktree` | `project.worktree` |
//! | `last_write_ms` | max of `session.time_updated` and the `time_updated` of its `message` and `part` rows |
//! | `messages[].role/agent/provider_id/model_id/finish/completed_at/error` | `message.data` `role`, `agent` (or `mode`), `providerID`/`modelID` (user messages: `model.providerID`/`model.modelID`), `finish`, `time.completed`, `error {name, data.message}` |
//! | `messages[].created_at` | `message.time_created` |
//! | `messages[].tokens/cost` | sums over the message's `step-finish` parts' `tokens {input, output, reasoning, cache {read, write}}` and `cost` |
//! | `messages[].text` | its `text` parts (not `synthetic`), joined by a blank line; read only with [`Texts::UpTo`], and only up to its `chars` |
//! | `tool_calls[]` | `tool` parts: `tool`, `state.status = "error"`, `state.time.end - start`; the `skill` tool's `state.input.name` |
//! | `code_changes.edits` | completed `edit` / `multiedit` / `write` / `apply_patch` tool parts' `state.metadata` and `state.input` (see `file_edits`), except those a fork copied |
//! | `code_changes.diffs` | user messages' `summary.diffs[] {file, additions, deletions}` |
//! | `code_changes.patched_files` | `patch` parts' `files[]` |
//! | `code_changes.totals` | `session.summary_additions/deletions/files` |
//! | `todos[]` | `todo` rows by `position`: `content`, `status`, `priority` |
//! | `children` | sessions whose `parent_id` is this one, to [`sql::MAX_CHILD_DEPTH`] |
//! | `fork.inherited_messages` | the leading messages whose `message.time_created` is before `session.time_created` (copies made by `Session.fork`) |
//! | `fork.source` | the session of the same project holding messages at the copied prefix's first and last `time_created` (see [`sql::OpenCodeDb`]'s `fork_source`) |
//! | `reverted` | while `session.revert {messageID, partID?}` is set: messages with `id` > `messageID` (and `messageID` itself without `partID`), and the tokens and cost of the `step-finish` parts hidden with them (with `partID`: that message's parts from `partID` on) — what `SessionRevert.cleanup` would delete |

pub mod activity;
pub mod json_prefix;
pub mod lenient;
pub mod path;
pub mod rows;
pub mod sql;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::source::{
    Changes, CodeChangeFacts, FileDiff, FileEdit, Fork, HeadsPage, Message, Observation, Reverted,
    Role, SessionHead, SessionId, SessionSnapshot, SessionSource, SourceError, Texts, TodoItem,
    Tokens, ToolCall, TurnError, MAX_DELTA_SESSIONS,
};
use lenient::{DiffLines, Lenient, LenientStr};
pub use sql::OpenCodeDb;
use sql::{EventMark, HeadRow, RowSnapshot};

/// Most `event` rows one [`SessionSource::changes`] reads (small rows: the payload is not read).
pub const EVENTS_PER_READ: usize = 4096;

/// [`SessionSource`] over `opencode.db`; see the module docs.
#[derive(Debug)]
pub struct OpenCodeSource {
    path: PathBuf,
    busy_timeout: Duration,
    db: Option<OpenCodeDb>,
    /// `PRAGMA data_version` at the last [`SessionSource::changes`] (per connection).
    data_version: Option<i64>,
    /// Where the last look stopped; `None` until the first one, which asks for a rescan.
    cursor: Option<Cursor>,
    /// A change read was cut short ([`EVENTS_PER_READ`], [`MAX_DELTA_SESSIONS`]): the next
    /// call goes on even though `data_version` did not move.
    more: bool,
    /// Whether the next rescan is the first look since the connection was opened.
    fresh: bool,
    /// Sessions already warned about as unreadable ([`SourceError::BadRow`]).
    bad_sessions: HashSet<String>,
}

/// The change cursor: what the last look had seen. Constant size.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    /// The newest event row read (`None`: the log was empty, or there is no live log).
    event: Option<EventMark>,
    /// `COUNT(*)` of `session` when the cursor was set, plus the `session.created` events
    /// read since.
    sessions: i64,
}

impl From<&crate::config::SourceConfig> for OpenCodeSource {
    /// The source `[source]` names: `db_path` with `busy_timeout_ms`.
    fn from(c: &crate::config::SourceConfig) -> OpenCodeSource {
        OpenCodeSource::new(&c.db_path, Duration::from_millis(c.busy_timeout_ms))
    }
}

impl OpenCodeSource {
    /// A source for the database at `path`; nothing is opened until the first call.
    pub fn new(path: &Path, busy_timeout: Duration) -> OpenCodeSource {
        OpenCodeSource {
            path: path.to_path_buf(),
            busy_timeout,
            db: None,
            data_version: None,
            cursor: None,
            more: false,
            fresh: true,
            bad_sessions: HashSet::new(),
        }
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open connection, opening (or reopening, when the file was replaced) as needed.
    fn db(&mut self) -> Result<&OpenCodeDb, SourceError> {
        if self.db.as_ref().is_some_and(|d| d.replaced()) {
            tracing::info!(db = %self.path.display(), "the opencode database file was replaced; reopening");
            self.db = None;
        }
        if self.db.is_none() {
            let db = OpenCodeDb::open(&self.path, self.busy_timeout)?;
            tracing::info!(db = %self.path.display(), "opened the opencode database (read-only)");
            // `data_version` is per connection, and the file may be another one.
            self.data_version = None;
            self.cursor = None;
            self.more = false;
            self.fresh = true;
            self.db = Some(db);
        }
        Ok(self.db.as_ref().expect("opened above"))
    }

    /// Passes `read` through, warning once per session when its data cannot be read
    /// ([`SourceError::BadRow`]; the pass then skips the session).
    fn warn_bad_row<T>(
        &mut self,
        id: &SessionId,
        read: Result<T, SourceError>,
    ) -> Result<T, SourceError> {
        if let Err(e @ SourceError::BadRow { .. }) = &read {
            if self.bad_sessions.insert(id.as_str().to_string()) {
                tracing::warn!(session_id = %id, error = %e, "skipping a session whose data cannot be read; the others are read");
            }
        }
        read
    }

    /// The cursor as of now, for a rescan that starts now: the newest event row and the
    /// session count, read together.
    fn cursor_now(db: &OpenCodeDb) -> Result<Cursor, SourceError> {
        db.consistent(|db| {
            Ok(Cursor {
                event: db.last_event()?,
                sessions: db.session_count()?,
            })
        })
    }

    /// The changes after `cursor` (advanced in place) from the event log, or `None` when only
    /// a rescan can tell; and whether more are left for the next call.
    fn delta(
        db: &OpenCodeDb,
        cursor: &mut Cursor,
    ) -> Result<Option<(Vec<SessionHead>, bool)>, SourceError> {
        db.consistent(|db| {
            if let Some(mark) = &cursor.event {
                if !db.event_still_at(mark)? {
                    return Ok(None);
                }
            }
            let from = cursor.event.as_ref().map_or(0, |m| m.rowid);
            let events = db.events_after(from, EVENTS_PER_READ)?;
            let mut ids = BTreeSet::new();
            let mut created = 0i64;
            let mut last = None;
            let mut cut = events.len() == EVENTS_PER_READ;
            for event in events {
                if let Some(id) = event.aggregate_id {
                    if !ids.contains(&id) && ids.len() == MAX_DELTA_SESSIONS {
                        cut = true;
                        break;
                    }
                    ids.insert(id);
                }
                created += i64::from(event.session_created);
                last = Some(event.mark);
            }
            let mut heads = Vec::with_capacity(ids.len());
            for id in &ids {
                // An aggregate that is not a session (or a session deleted since: the count
                // below tells) has no head.
                if let Some(head) = db.session_head(id)? {
                    heads.push(neutral_head(head));
                }
            }
            let sessions = cursor.sessions + created;
            if !cut && db.session_count()? != sessions {
                return Ok(None);
            }
            if last.is_some() {
                cursor.event = last;
            }
            cursor.sessions = sessions;
            Ok(Some((heads, cut)))
        })
    }
}

/// Busy or ended, from a session's newest rows (OpenCode's rule: [`activity::classify`]).
fn observation(tail: &sql::SessionTail) -> Observation {
    Observation {
        activity: activity::classify(&tail.recent, &tail.assistant_parts),
        last_write_ms: tail.last_write_ms(),
        todos_open: tail
            .todo_statuses
            .iter()
            .any(|s| s != "completed" && s != "cancelled"),
    }
}

fn neutral_head(h: HeadRow) -> SessionHead {
    SessionHead {
        id: SessionId::from(h.id),
        parent_id: h.parent_id.map(SessionId::from),
        marker: h.marker,
    }
}

impl SessionSource for OpenCodeSource {
    fn kind(&self) -> &'static str {
        "opencode database"
    }

    fn describe(&self) -> String {
        format!("opencode database {}", self.path.display())
    }

    fn changes(&mut self) -> Result<Changes, SourceError> {
        let db = self.db()?;
        let dv = db.data_version()?;
        if self.cursor.is_some() && self.data_version == Some(dv) && !self.more {
            return Ok(Changes::None);
        }
        let db = self.db.as_ref().expect("opened above");
        if db.has_event_log() {
            if let Some(cursor) = self.cursor.as_mut() {
                let mut next = cursor.clone();
                if let Some((heads, more)) = Self::delta(db, &mut next)? {
                    *cursor = next;
                    self.more = more;
                    self.data_version = Some(dv);
                    return Ok(Changes::Delta {
                        heads,
                        gone: Vec::new(),
                    });
                }
            }
        }
        // The first look, no live event log, or a session vanished unseen: list everything,
        // and go on from the log's end as of now (writes during the listing come next).
        let cursor = Self::cursor_now(db)?;
        let sessions = u64::try_from(cursor.sessions).ok();
        self.cursor = Some(cursor);
        self.more = false;
        self.data_version = Some(dv);
        Ok(Changes::Rescan {
            fresh: std::mem::replace(&mut self.fresh, false),
            sessions,
        })
    }

    fn heads_after(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<HeadsPage, SourceError> {
        let limit = limit.max(1);
        let (heads, rows) = self
            .db()?
            .heads_after(after.map(SessionId::as_str), limit)?;
        // A page of only unreadable ids (warned about once) ends the listing: the next page
        // would start at the same place.
        let end = rows < limit || heads.is_empty();
        Ok(HeadsPage {
            heads: heads.into_iter().map(neutral_head).collect(),
            end,
        })
    }

    fn observe(&mut self, id: &SessionId) -> Result<Option<Observation>, SourceError> {
        let tail = self.db()?.read_tail(id.as_str());
        Ok(self.warn_bad_row(id, tail)?.map(|t| observation(&t)))
    }

    fn observe_whole(
        &mut self,
        id: &SessionId,
        texts: Texts,
    ) -> Result<Option<(Observation, SessionSnapshot)>, SourceError> {
        let read = self.db()?.read_session(id.as_str(), texts);
        Ok(self
            .warn_bad_row(id, read)?
            .map(|rows| (observation(&rows.tail()), neutral_snapshot(rows))))
    }

    fn snapshot(
        &mut self,
        id: &SessionId,
        texts: Texts,
    ) -> Result<Option<SessionSnapshot>, SourceError> {
        let read = self.db()?.read_session(id.as_str(), texts);
        Ok(self.warn_bad_row(id, read)?.map(neutral_snapshot))
    }

    fn rescan(&mut self) {
        // The connection goes too: the next look opens the file again and reads it in full.
        self.db = None;
        self.data_version = None;
        self.cursor = None;
        self.more = false;
    }
}

/// The files a completed file-editing tool call changed, from its `state.metadata` and
/// `state.input` as OpenCode writes them (`edit`, `write` and `apply_patch` checked on data
/// OpenCode 1.18.33 wrote, in the test fixtures; 1.18.33 no longer offers `multiedit`, whose shape
/// is from OpenCode's source):
/// - `edit`: `metadata.filediff {file, additions, deletions}`; without it (older releases), the
///   `+`/`-` lines of `metadata.diff` for `input.filePath`;
/// - `multiedit`: each of `metadata.results[]` as an `edit`;
/// - `apply_patch`: `metadata.files[] {filePath, movePath?, additions, deletions}`;
/// - `write`: `input.filePath`; when `metadata.exists` is false (a new file), every line of
///   `input.content` is added. OpenCode stores no diff for overwriting an existing file, so an
///   overwrite names the file but counts no lines.
///
/// Other tools (`bash` included) change nothing that can be told from the data.
fn file_edits(tool: &str, state: &rows::ToolState) -> Vec<FileEdit> {
    let meta = state.metadata.get();
    let input = state.input.get();
    let file_path = input.and_then(|i| i.file_path.get()).cloned();
    let edit = |filediff: &Lenient<rows::EditCounts>,
                diff: &LenientStr<DiffLines>,
                file: Option<String>|
     -> Option<FileEdit> {
        if let Some(fd) = filediff.get() {
            return Some(FileEdit {
                file: fd.file.get().cloned().or(file)?,
                additions: fd.additions.0.unwrap_or(0),
                deletions: fd.deletions.0.unwrap_or(0),
            });
        }
        let lines = diff.get().copied().unwrap_or_default();
        Some(FileEdit {
            file: file?,
            additions: lines.additions,
            deletions: lines.deletions,
        })
    };
    match tool {
        "edit" => meta
            .and_then(|m| edit(&m.filediff, &m.diff, file_path))
            .into_iter()
            .collect(),
        "multiedit" => meta
            .into_iter()
            .flat_map(|m| &m.results.0)
            .filter_map(|r| edit(&r.filediff, &r.diff, file_path.clone()))
            .collect(),
        "apply_patch" => meta
            .into_iter()
            .flat_map(|m| &m.files.0)
            .filter_map(|f| {
                Some(FileEdit {
                    file: f.move_path.get().or(f.file_path.get())?.clone(),
                    additions: f.additions.0.unwrap_or(0),
                    deletions: f.deletions.0.unwrap_or(0),
                })
            })
            .collect(),
        "write" => {
            let Some(file) = file_path else {
                return Vec::new();
            };
            let created = meta.and_then(|m| m.exists.0) == Some(false);
            let additions = match input.and_then(|i| i.content.get()) {
                Some(lines) if created => lines.0,
                _ => 0,
            };
            vec![FileEdit {
                file,
                additions,
                deletions: 0,
            }]
        }
        _ => Vec::new(),
    }
}

/// The source-neutral snapshot of `rows` (see the module docs' table).
pub fn neutral_snapshot(rows: RowSnapshot) -> SessionSnapshot {
    let last_write_ms = rows.last_write_ms();
    let RowSnapshot {
        session,
        project,
        messages,
        parts,
        mut texts,
        todos,
        children,
        forked_from,
    } = rows;
    // Copies made by `Session.fork` keep their original creation time, before the session's.
    let inherited_messages = messages
        .iter()
        .take_while(|m| m.time_created < session.time_created)
        .count();
    let revert = session.revert.clone();
    // Whether a part of message `message_id` (all of it with `part_id` None) is hidden.
    let hidden = |message_id: &str, part_id: Option<&str>| match &revert {
        None => false,
        Some(r) => match message_id.cmp(r.message_id.as_str()) {
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Equal => match (&r.part_id, part_id) {
                (None, _) => true,
                (Some(from), Some(p)) => p >= from.as_str(),
                (Some(_), None) => false,
            },
        },
    };
    let mut reverted = Reverted::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out_messages: Vec<Message> = Vec::with_capacity(messages.len());
    let mut diffs = Vec::new();
    for m in messages {
        let info = m.info;
        let role = if info.is_user() {
            Role::User
        } else if info.is_assistant() {
            Role::Assistant
        } else {
            Role::Other(info.role.clone())
        };
        if role == Role::User {
            for d in info.summary.get().into_iter().flat_map(|s| &s.diffs.0) {
                diffs.push(FileDiff {
                    file: d.file.get().cloned(),
                    additions: d.additions.0.unwrap_or(0),
                    deletions: d.deletions.0.unwrap_or(0),
                });
            }
        }
        let user_model = info.model.as_ref();
        reverted.messages += u64::from(hidden(&m.id, None));
        let text = texts.remove(&m.id).unwrap_or_default();
        index.insert(m.id.clone(), out_messages.len());
        out_messages.push(Message {
            agent: info.agent_name().map(str::to_string),
            provider_id: info
                .provider_id
                .clone()
                .or_else(|| user_model.and_then(|u| u.provider_id.clone())),
            model_id: info
                .model_id
                .clone()
                .or_else(|| user_model.and_then(|u| u.model_id.clone())),
            id: m.id,
            role,
            created_at: m.time_created,
            completed_at: info.time.completed,
            finish: info.finish,
            error: info.error.as_ref().map(|e| TurnError {
                name: e.name.clone(),
                message: e.message(),
            }),
            tokens: Tokens::default(),
            cost: 0.0,
            text,
        });
    }
    let mut tool_calls = Vec::new();
    let mut patched_files = Vec::new();
    let mut edits = Vec::new();
    for p in parts {
        let Some(&i) = index.get(p.message_id.as_str()) else {
            continue;
        };
        let info = p.info;
        match info.kind.as_str() {
            "step-finish" => {
                let t = info.tokens.unwrap_or_default();
                let tokens = Tokens {
                    input: t.input,
                    output: t.output,
                    reasoning: t.reasoning,
                    cache_read: t.cache.read,
                    cache_write: t.cache.write,
                };
                let cost = info.cost.unwrap_or(0.0);
                if hidden(&p.message_id, Some(&p.id)) {
                    reverted.tokens.add(&tokens);
                    reverted.cost += cost;
                }
                let m = &mut out_messages[i];
                m.tokens.add(&tokens);
                m.cost += cost;
            }
            "tool" => {
                let tool = info.tool.unwrap_or_default();
                let state = info.state.unwrap_or_default();
                let skill = (tool == "skill").then(|| {
                    state
                        .input
                        .get()
                        .and_then(|i| i.name.get())
                        .map_or("unknown", String::as_str)
                        .to_string()
                });
                // A fork's copied calls were made in the session it was forked from.
                if state.status == "completed" && i >= inherited_messages {
                    edits.extend(file_edits(&tool, &state));
                }
                tool_calls.push(ToolCall {
                    message_id: p.message_id,
                    failed: state.status == "error",
                    duration_ms: state
                        .time
                        .and_then(|t| Some((t.end? - t.start?).max(0) as u64))
                        .unwrap_or(0),
                    tool,
                    skill,
                });
            }
            "patch" => patched_files.extend(info.files.into_iter().flatten()),
            _ => {}
        }
    }
    let totals = (
        session.summary_additions.unwrap_or(0),
        session.summary_deletions.unwrap_or(0),
        session.summary_files.unwrap_or(0),
    );
    SessionSnapshot {
        id: SessionId::from(session.id),
        parent_id: session.parent_id.map(SessionId::from),
        agent_version: session.version,
        project_id: session.project_id,
        directory: session.directory,
        worktree: project.map(|p| p.worktree),
        title: session.title,
        created_at: session.time_created,
        archived_at: session.time_archived,
        last_write_ms,
        messages: out_messages,
        tool_calls,
        code_changes: CodeChangeFacts {
            edits,
            diffs,
            patched_files,
            totals: (totals != (0, 0, 0)).then(|| {
                (
                    totals.0.max(0) as u64,
                    totals.1.max(0) as u64,
                    totals.2.max(0) as u64,
                )
            }),
        },
        todos: todos
            .into_iter()
            .map(|t| TodoItem {
                content: t.content,
                status: t.status,
                priority: t.priority,
            })
            .collect(),
        children: children.into_iter().map(neutral_snapshot).collect(),
        fork: (inherited_messages > 0).then(|| Fork {
            source: forked_from.map(SessionId::from),
            inherited_messages,
        }),
        reverted: revert.is_some().then_some(reverted),
    }
}

#[cfg(test)]
mod tests {
    use super::lenient::{DiffLines, FromJsonStr};
    use super::{file_edits, rows::ToolState};
    use crate::source::FileEdit;
    use serde_json::json;

    /// A completed call's `state`, parsed as a row's would be.
    fn completed(input: serde_json::Value, metadata: serde_json::Value) -> ToolState {
        let state = json!({"status": "completed", "input": input, "metadata": metadata});
        serde_json::from_value(state).expect("a tool state")
    }

    fn edit(file: &str, additions: u64, deletions: u64) -> FileEdit {
        FileEdit {
            file: file.into(),
            additions,
            deletions,
        }
    }

    /// Each tool's `state` as OpenCode 1.18.33 stores it (`edit` and `write` as in the kinds
    /// fixture; `apply_patch` and `multiedit` as its tool code builds their metadata).
    #[test]
    fn file_edits_per_tool() {
        let patch = "Index: /r/a.md\n===\n--- /r/a.md\n+++ /r/a.md\n@@ -1,3 +1,3 @@\n # Notes\n-status: draft\n+status: final\n+more\n";
        let cases: Vec<(&str, ToolState, Vec<FileEdit>)> = vec![
            (
                "edit",
                completed(
                    json!({"filePath": "/r/a.md", "oldString": "x", "newString": "y"}),
                    json!({"diff": patch, "filediff": {"file": "/r/a.md", "patch": patch, "additions": 1, "deletions": 1}}),
                ),
                vec![edit("/r/a.md", 1, 1)],
            ),
            // Without `filediff` (older releases): the lines of `diff`.
            (
                "edit",
                completed(json!({"filePath": "/r/a.md"}), json!({"diff": patch})),
                vec![edit("/r/a.md", 2, 1)],
            ),
            (
                "multiedit",
                completed(
                    json!({"filePath": "/r/b.rs", "edits": []}),
                    json!({"results": [
                        {"filediff": {"file": "/r/b.rs", "additions": 2, "deletions": 0}},
                        {"diff": "--- a\n+++ b\n-gone\n"}
                    ]}),
                ),
                vec![edit("/r/b.rs", 2, 0), edit("/r/b.rs", 0, 1)],
            ),
            (
                "apply_patch",
                completed(
                    json!({"patchText": "*** Begin Patch\n…"}),
                    json!({"diff": "…", "files": [
                        {"filePath": "/r/new.md", "relativePath": "new.md", "type": "add", "patch": "…", "additions": 3, "deletions": 0},
                        {"filePath": "/r/old.md", "relativePath": "moved.md", "type": "move", "patch": "…", "additions": 1, "deletions": 2, "movePath": "/r/moved.md"},
                        {"filePath": "/r/gone.md", "relativePath": "gone.md", "type": "delete", "patch": "…", "additions": 0, "deletions": 4}
                    ], "diagnostics": {}}),
                ),
                vec![
                    edit("/r/new.md", 3, 0),
                    edit("/r/moved.md", 1, 2),
                    edit("/r/gone.md", 0, 4),
                ],
            ),
            // A new file: every line of its content.
            (
                "write",
                completed(
                    json!({"filePath": "/r/n.md", "content": "# Notes\n\nstatus: draft\n"}),
                    json!({"diagnostics": {}, "filepath": "/r/n.md", "exists": false, "truncated": false}),
                ),
                vec![edit("/r/n.md", 3, 0)],
            ),
            // An overwrite: OpenCode keeps no diff, so the file only.
            (
                "write",
                completed(
                    json!({"filePath": "/r/n.md", "content": "a\nb"}),
                    json!({"diagnostics": {}, "filepath": "/r/n.md", "exists": true}),
                ),
                vec![edit("/r/n.md", 0, 0)],
            ),
            (
                "bash",
                completed(json!({"command": "sed -i s/a/b/ x"}), json!({})),
                vec![],
            ),
            ("edit", completed(json!({}), json!({})), vec![]),
        ];
        for (tool, state, want) in cases {
            assert_eq!(
                file_edits(tool, &state),
                want,
                "{tool} {:?}",
                state.metadata
            );
        }
    }

    #[test]
    fn diff_lines_skip_the_file_headers() {
        let counts = |diff: &str| {
            let d = DiffLines::from_json_str(diff);
            (d.additions, d.deletions)
        };
        assert_eq!(
            counts("--- a\n+++ b\n@@ -1 +1 @@\n-x\n+y\n+z\n context"),
            (2, 1)
        );
        assert_eq!(counts(""), (0, 0));
    }
}
