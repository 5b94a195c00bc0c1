//! Sources: where sessions are read from, behind one seam, [`SessionSource`].
//!
//! A source knows its own storage (OpenCode's SQLite database today; its legacy JSON tree and
//! Claude Code's transcripts later) and answers three questions in source-neutral types:
//!
//! 1. **What changed** since its cursor ([`SessionSource::changes`]): nothing (an O(1) check on
//!    an idle tick), a bounded [`Changes::Delta`] of the sessions whose [`ChangeMarker`] moved
//!    (and of those that are gone), or [`Changes::Rescan`] when the source cannot tell (the
//!    first look, or after the storage was replaced or sessions vanished): the caller then lists
//!    every session a page at a time with [`SessionSource::heads_after`], in id order, and
//!    compares with what it knows. The cursor lives inside the source and takes memory
//!    independent of the number of sessions.
//! 2. **Busy or ended** ([`SessionSource::observe`]): a bounded read of a session's newest
//!    rows, classified into an [`Observation`] — the source's own rule for the moment the agent
//!    announces (`session.idle` / `session.error` for OpenCode).
//! 3. **Everything** ([`SessionSource::snapshot`]): a [`SessionSnapshot`] of the session and its
//!    subagent sessions, from which [`crate::export`] builds the record.
//!
//! The tracker ([`crate::track`]) decides from these answers alone; nothing outside a source's
//! module names its tables, columns or JSON shapes.
//!
//! - [`opencode`]: OpenCode's `opencode.db` (read-only, WAL-safe).

pub mod opencode;
mod snapshot;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use snapshot::{
    CodeChangeFacts, FileDiff, FileEdit, Fork, Message, MessageText, Reverted, Role,
    SessionSnapshot, TodoItem, Tokens, ToolCall,
};

/// How much of the messages' free text [`SessionSource::snapshot`] reads. Texts leave the
/// machine only with `export.include_messages`; without it they are never read, and with it
/// at most `chars` characters of each message are kept in memory (the rest is counted, for
/// the truncation marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Texts {
    /// No message text.
    Skip,
    /// Each message's text, of which the first `chars` characters are kept.
    UpTo {
        /// Characters kept per message (`export.max_message_chars`).
        chars: usize,
    },
}

/// A session's id as its source names it (OpenCode: `ses_…`). Ordered as strings, which for
/// OpenCode is creation order (ids are time-prefixed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(String);

impl SessionId {
    /// Wraps a source's id.
    pub fn new(id: impl Into<String>) -> SessionId {
        SessionId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for SessionId {
    fn from(s: &str) -> SessionId {
        SessionId(s.to_string())
    }
}

impl From<String> for SessionId {
    fn from(s: String) -> SessionId {
        SessionId(s)
    }
}

/// A value that changes whenever anything of a session is written. Compared for equality
/// only, except [`ChangeMarker::archived_at`], which the tracker reads.
///
/// The serialized names (`seq`, `timeUpdated`, `timeArchived`) are those of the tracker's
/// persisted state since version 0.1; do not rename them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeMarker {
    /// The source's change counter (OpenCode: `event_sequence.seq`).
    #[serde(rename = "seq")]
    pub counter: i64,
    /// When the session itself was last updated (ms).
    #[serde(rename = "timeUpdated")]
    pub updated_at: i64,
    /// When the session was archived (ms), if it is.
    #[serde(rename = "timeArchived")]
    pub archived_at: Option<i64>,
}

/// The cheap per-session view used to find what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionHead {
    /// The session.
    pub id: SessionId,
    /// Its parent, for a subagent session.
    pub parent_id: Option<SessionId>,
    /// Its change marker now.
    pub marker: ChangeMarker,
}

/// What [`SessionSource::changes`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Nothing was written since the last call.
    None,
    /// The source cannot tell what changed: list every session with
    /// [`SessionSource::heads_after`] (a page at a time, in id order); a session the caller
    /// knows and that is not listed is gone.
    Rescan {
        /// True when the cursor was (re)started — the first look since the source was created,
        /// reopened or rescanned — so there is no earlier look to compare with; false when
        /// the source only lost track this time (sessions vanished unseen).
        fresh: bool,
        /// How many sessions there are, as far as the source can tell cheaply (for progress).
        sessions: Option<u64>,
    },
    /// Only what moved, at most [`MAX_DELTA_SESSIONS`] sessions: when more moved, the next call
    /// returns the rest at once (without waiting for a new write).
    Delta {
        /// Sessions whose marker moved (or that are new).
        heads: Vec<SessionHead>,
        /// Sessions that no longer exist.
        gone: Vec<SessionId>,
    },
}

/// One page of a listing ([`SessionSource::heads_after`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadsPage {
    /// Heads in id order, at most the `limit` asked for.
    pub heads: Vec<SessionHead>,
    /// No session sorts after the last one (the listing is complete).
    pub end: bool,
}

/// Most sessions one [`Changes::Delta`] names (heads and gone together).
pub const MAX_DELTA_SESSIONS: usize = 200;

/// The error that ended a turn, as the source stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnError {
    /// The error's name (OpenCode: `APIError`, `MessageAbortedError`, …).
    pub name: String,
    /// Its human-readable message (empty when none was stored).
    pub message: String,
}

/// Where a session's last turn stands, from its newest rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activity {
    /// The session has no message yet.
    Empty,
    /// A turn is in progress (or the agent died mid-turn; see `export.stale_after_secs`).
    Busy,
    /// The newest message is a prompt no reply has started for: OpenCode's `noReply` prompts
    /// (context sent without starting the agent: OpenCode never goes busy and publishes
    /// nothing), or a turn in its first milliseconds, before the agent wrote its reply. The
    /// tracker tells them apart by time ([`crate::track::rules::NO_REPLY_AFTER_MS`]).
    AwaitingReply {
        /// The prompt (OpenCode: the user `message.id`).
        message_id: String,
        /// When it was sent (ms; OpenCode: `message.data.time.created`).
        sent_at: i64,
    },
    /// The last turn ended.
    Ended(TurnEnd),
}

/// How and where a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnEnd {
    /// The message that ended the turn (OpenCode: the terminal assistant `message.id`). A
    /// different id is a new end of turn.
    pub message_id: String,
    /// When it completed (ms).
    pub completed_at: i64,
    /// Its error, when it carries one (the turn ended in `session.error`): its name only (the
    /// `message` is empty), since the tracker persists it and provider messages can quote
    /// secrets; the record's message comes from the snapshot.
    pub error: Option<TurnError>,
}

/// A bounded look at one session ([`SessionSource::observe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Busy or ended.
    pub activity: Activity,
    /// The newest write seen (ms).
    pub last_write_ms: i64,
    /// Whether todos are left open (pending or in progress).
    pub todos_open: bool,
}

/// Errors of a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The storage does not exist (yet): wait for it quietly.
    #[error("{what} not found at {path}")]
    Missing {
        /// What was looked for (`opencode database`).
        what: &'static str,
        /// The path looked at.
        path: std::path::PathBuf,
    },
    /// The storage exists but is not what the source reads (yet): wait for it quietly.
    #[error("{path} is not {what}: {reason}")]
    NotRecognised {
        /// What was expected (`an opencode database`).
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The storage is the agent's, but in a shape this reader does not understand (a newer
    /// release renamed a table or column): nothing is read from it; the daemon warns once,
    /// shows it in `status`, keeps delivering what is queued and checks again every tick.
    #[error("{path}: {} — this reader does not understand the schema (an OpenCode release newer than this opencode-telemetry?); update opencode-telemetry", describe_missing(table, column.as_deref()))]
    Unsupported {
        /// The file.
        path: std::path::PathBuf,
        /// The table missing, or missing a column.
        table: String,
        /// The missing column (`None`: the table itself is missing).
        column: Option<String>,
    },
    /// A value of one row could not be read (a BLOB or invalid UTF-8 where text belongs, an
    /// integer out of range): a problem of that session's data, not of the storage. The pass
    /// skips the session (the source warns once) and reads the others.
    #[error("reading {path}: a row could not be read: {message}")]
    BadRow {
        /// The file.
        path: std::path::PathBuf,
        /// The conversion error, one line (never the value).
        message: String,
    },
    /// Reading failed (busy past the timeout, IO error, corrupt file, …): retried next tick.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error, one line.
        message: String,
    },
}

fn describe_missing(table: &str, column: Option<&str>) -> String {
    match column {
        Some(c) => format!("table `{table}` has no column `{c}`"),
        None => format!("no `{table}` table"),
    }
}

impl SourceError {
    /// True for [`SourceError::BadRow`]: skip the session, read the others.
    pub fn is_bad_row(&self) -> bool {
        matches!(self, SourceError::BadRow { .. })
    }

    /// True for "not there (yet)": the daemon waits quietly instead of warning.
    pub fn is_missing(&self) -> bool {
        matches!(
            self,
            SourceError::Missing { .. } | SourceError::NotRecognised { .. }
        )
    }
}

/// One place sessions are read from; see the module docs.
///
/// Every method does blocking IO: call it from a blocking thread. A method that fails leaves
/// the cursor where it was, so the next call retries.
pub trait SessionSource: Send {
    /// What the source reads, for messages (`opencode database`).
    fn kind(&self) -> &'static str;

    /// A short description for logs and `status` (`opencode database /path/opencode.db`).
    fn describe(&self) -> String;

    /// What changed since the last call (see [`Changes`]). The first call returns
    /// [`Changes::Rescan`] with `fresh`.
    ///
    /// # Errors
    /// [`SourceError`]; [`SourceError::is_missing`] while the storage does not exist.
    fn changes(&mut self) -> Result<Changes, SourceError>;

    /// Up to `limit` session heads (subagent sessions included) whose id sorts after `after`
    /// (from the first with `None`), in id order ([`SessionId`]'s `Ord`), and whether the
    /// listing reached the end. Each call is one bounded read; a listing over many calls may
    /// see writes made in between, which the next [`SessionSource::changes`] reports.
    ///
    /// # Errors
    /// [`SourceError`].
    fn heads_after(
        &mut self,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<HeadsPage, SourceError>;

    /// Busy or ended, from a bounded read of the session's newest rows. `None` when the
    /// session is gone.
    ///
    /// # Errors
    /// [`SourceError`].
    fn observe(&mut self, id: &SessionId) -> Result<Option<Observation>, SourceError>;

    /// The whole session with its subagent sessions, with message texts as `texts` asks.
    /// `None` when the session is gone. Memory is bounded by the session's number of
    /// messages, parts and tool calls, never by the size of their content.
    ///
    /// # Errors
    /// [`SourceError`].
    fn snapshot(
        &mut self,
        id: &SessionId,
        texts: Texts,
    ) -> Result<Option<SessionSnapshot>, SourceError>;

    /// [`SessionSource::observe`] and [`SessionSource::snapshot`] of one session from one
    /// read, for a session the caller will read whole anyway (one new to it). The observation
    /// is the one `observe` would give in the same read. `None` when the session is gone.
    ///
    /// # Errors
    /// [`SourceError`].
    fn observe_whole(
        &mut self,
        id: &SessionId,
        texts: Texts,
    ) -> Result<Option<(Observation, SessionSnapshot)>, SourceError> {
        let Some(observation) = self.observe(id)? else {
            return Ok(None);
        };
        Ok(self.snapshot(id, texts)?.map(|s| (observation, s)))
    }

    /// Forgets the cursor: the next [`SessionSource::changes`] returns [`Changes::Rescan`].
    fn rescan(&mut self);
}
