//! The wire shape of one exported session: [`SessionExport`].
//!
//! This is the one record type that leaves the machine. Its JSON form (camelCase keys, optional
//! fields omitted rather than `null`) is what the outbox stores, what the local store keeps (one
//! row per session), what the deprecated NDJSON sink writes one per line, and what
//! `convex/schema.ts` validates field for field. Change both
//! together: `tests/integration/convex_e2e.rs` round-trips every field through the real Convex
//! functions.
//!
//! Units: every `*At` field and `durationMs` is epoch **milliseconds** (as OpenCode stores its
//! `time_*` columns); token counts are tokens; `cost` is US dollars as computed by OpenCode from
//! its model price table.

use serde::{Deserialize, Serialize};

/// Version of the record layout. Bumped on any incompatible change of [`SessionExport`].
pub const SCHEMA_VERSION: u32 = 1;

/// Why the session was exported: the OpenCode bus event the daemon inferred from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    /// `session.idle`: the newest assistant message completed and ended the turn.
    Idle,
    /// `session.error`: the turn ended on an assistant message carrying `data.error`
    /// (aborts, `MessageAbortedError`, included).
    Error,
    /// `session.deleted`: the session row disappeared; the record is the last one the daemon
    /// built before that, with `deletedAt` set.
    Deleted,
}

impl EndReason {
    /// The lowercase name used in JSON and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::Error => "error",
            EndReason::Deleted => "deleted",
        }
    }
}

/// One exported OpenCode session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionExport {
    /// [`SCHEMA_VERSION`] of this record.
    pub schema_version: u32,
    /// `session.id` (`ses_…`).
    pub session_id: String,
    /// Pseudonymous machine id: hex HMAC-SHA256 of the OS machine id (machine-uid) under an
    /// app-specific key, truncated to 128 bits. The raw machine id never leaves the machine.
    pub device_id: String,
    /// Host name of the machine (`hostname::get`); absent unless `privacy.hostname` allows it
    /// ([`crate::export::privacy`]).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    /// `session.version`: the OpenCode version that created the session (e.g. `1.18.33`).
    pub opencode_version: String,
    /// Version of this daemon (`CARGO_PKG_VERSION`).
    pub daemon_version: String,
    /// `session.project_id` (a hash of the git remote or root commit; `global` outside git).
    pub project_id: String,
    /// `session.directory`: the absolute working directory OpenCode ran in, shaped by
    /// `privacy.project_paths` (plain, its last component, or `hmac:` + a keyed hash; absent when
    /// `off`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub project_directory: String,
    /// `project.worktree` of the session's project, when the project row exists; shaped like
    /// `projectDirectory`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_worktree: Option<String>,
    /// `session.parent_id`: set for subagent (child) sessions made by the `task` tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_session_id: Option<String>,
    /// For a fork, the session it was forked from, when it can be identified (see
    /// [`crate::source::Fork`]). A fork has no `parentSessionId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forked_from: Option<String>,
    /// `session.title` (redacted); absent unless `privacy.titles` allows it, and in tombstones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// `session.time_created` (ms).
    pub created_at: i64,
    /// Last write to the session (ms): the largest of `session.time_updated` and the
    /// `time_updated` of its `message` and `part` rows. Monotonic per session, so the Convex
    /// upsert uses it (then `exportedAt`) to ignore records older than the stored one.
    pub updated_at: i64,
    /// When the daemon built this record (ms, the daemon's clock: [`crate::clock`]).
    pub exported_at: i64,
    /// The record's place among the records of its session: strictly greater than every
    /// earlier one the device exported, whatever the wall clock did — a hybrid logical clock,
    /// `max(previous revision + 1, exportedAt)`, the previous one kept in the daemon's state.
    /// The Convex upsert compares it first (before `updatedAt`, `exportedAt`) when both the
    /// stored and the new record have one. 0 in records from daemons before it.
    #[serde(default)]
    pub revision: i64,
    /// Hex SHA-256 (first 16 bytes) of everything else in the record but `exportedAt`
    /// ([`crate::export::hash`]): equal hashes mean a re-export that changes nothing. Absent in
    /// records from daemons before it (read as empty).
    #[serde(default)]
    pub content_hash: String,
    /// `session.time_archived` (ms), when the session is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<i64>,
    /// When the daemon saw the session row gone (ms); only with `endReason: "deleted"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    /// From `createdAt` to the last assistant message's `time.completed` (ms); absent when no
    /// assistant message completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<i64>,
    /// Rows in `message` for this session.
    pub message_count: u64,
    /// Messages with `data.role = "user"`.
    pub user_message_count: u64,
    /// Messages with `data.role = "assistant"` (one per LLM step).
    pub assistant_message_count: u64,
    /// Distinct `data.agent` values of the session's messages, in order of first use.
    pub agents_used: Vec<String>,
    /// The agent that answered most assistant messages (ties: the one used first), ignoring
    /// OpenCode's internal `compaction`, `title` and `summary` agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_agent: Option<String>,
    /// Counts of the session's `todo` rows by `status`.
    pub todo_stats: TodoStats,
    /// The session's own edits: its successful file-editing tool calls (OpenCode: `edit`,
    /// `multiedit`, `write`, `apply_patch`; see `file_edits` in [`crate::source::opencode`]).
    /// A `write` over an existing file names the file but counts no lines (OpenCode stores no
    /// diff for it); changes made through `bash` are not seen.
    pub code_changes: CodeChanges,
    /// What changed in the working tree during the session's turns, from OpenCode's snapshot
    /// diffs (see [`CodeChanges`]): includes what other sessions or the user changed in the same
    /// repository meanwhile. Absent in records of daemons before it.
    #[serde(default)]
    pub worktree_changes: CodeChanges,
    /// Token and cost totals over the session's `step-finish` parts (what OpenCode's own
    /// `session.cost` / `tokens_*` columns hold since 1.14.49).
    pub tokens: TokenUsage,
    /// Total cost in USD (sum of `step-finish` part `cost`).
    pub cost: f64,
    /// Usage per provider and model, from assistant messages and their `step-finish` parts.
    pub models: Vec<ModelUsage>,
    /// Usage per tool name, from `tool` parts.
    pub tools: Vec<ToolUsage>,
    /// Usage of the `skill` tool per skill name (`state.input.name`).
    pub skills: Vec<ToolUsage>,
    /// For a fork: the copied prefix, counted in `messageCount`, `tokens`, `cost` and `models`
    /// above (as OpenCode stores them) but spent in the session it was copied from. Totals over
    /// sessions subtract it, so a fork's spend is counted once across original and forks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inherited: Option<Inherited>,
    /// While a revert is pending: the hidden part, still counted in `messageCount`, `tokens`
    /// and `cost` (money spent on a reverted turn is spent). Absent once OpenCode deleted the
    /// hidden messages (its next prompt) or the revert was undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverted: Option<RevertedUsage>,
    /// What ended the session's last turn.
    pub end_reason: EndReason,
    /// The error of the terminal assistant message (`data.error.name`,
    /// `data.error.data.message`), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// True when the last turn never completed (OpenCode crashed or was killed mid-turn) and the
    /// session was exported because it stayed inactive for `export.stale_after_secs`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub incomplete: bool,
    /// Subagent sessions (`session.parent_id` = this session), each summarised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<ChildSummary>,
    /// This session plus all its subagent sessions, summed. Absent when there are no children.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollup: Option<Rollup>,
    /// The todo list (`todo` rows ordered by `position`); present when `export.include_todos`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub todos: Option<Vec<Todo>>,
    /// Per-message summaries with their text; present when `export.include_messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<MessageSummary>>,
    /// The fields the daemon shortened to fit Convex's document limits (`"title"`,
    /// `"messages"`, `"todos"`, …; sorted), see [`crate::export::fit()`]. Omitted when nothing
    /// was shortened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub truncated: Vec<String>,
    /// The fields whose value, as read from the source, broke a content rule the deployment
    /// enforces and that the daemon clamped or dropped before queueing the record
    /// (`"createdAt"`, `"durationMs"`, `"models.cost"`, …: paths without array indexes; sorted),
    /// see [`crate::export::validate`]. Omitted when nothing was corrected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrected: Vec<String>,
    /// How many secrets [`crate::export::redact`] replaced in the record's free text (each by
    /// `[redacted:<kind>]`). Omitted when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub redactions: u64,
    /// What a record with `endReason: "deleted"` is, by `privacy.on_delete`: `tombstone` (the
    /// content is gone, counts and times stay), `keep` (the last record, marked deleted) or
    /// `delete` (a tombstone asking the deployment to remove the session's document). Absent in
    /// other records and in deletions of daemons before it (which are `keep`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<crate::export::privacy::OnDelete>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Todo counts by status. `total` counts every row, including statuses outside the four
/// documented ones (OpenCode stores `status` as a free string).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TodoStats {
    /// All todo rows.
    pub total: u64,
    /// `status = "completed"`.
    pub completed: u64,
    /// `status = "cancelled"`.
    pub cancelled: u64,
    /// `status = "pending"`.
    pub pending: u64,
    /// `status = "in_progress"`.
    pub in_progress: u64,
}

impl TodoStats {
    /// True when no todo is left open: every row is completed or cancelled (or there are none).
    pub fn all_done(&self) -> bool {
        self.completed + self.cancelled == self.total
    }
}

/// Lines and files changed: the shape of [`SessionExport::code_changes`] (summed over the
/// session's own tool calls) and of [`SessionExport::worktree_changes`], described here.
///
/// For `worktreeChanges`: OpenCode ≥ 1.16 writes 0 into `session.summary_*`, so these come from
/// what it really stores:
/// `additions`/`deletions` are summed over the `summary.diffs` of the session's user messages
/// (one diff list per turn); `filesChanged` counts distinct files across those diffs and the
/// `files` of `patch` parts (absolute paths made relative to the session directory). When the
/// session columns hold non-zero values (OpenCode 1.2–1.15) and no per-turn diffs exist, the
/// columns are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeChanges {
    /// Lines added.
    pub additions: u64,
    /// Lines deleted.
    pub deletions: u64,
    /// Distinct files changed.
    pub files_changed: u64,
}

/// Token counts, as OpenCode reports them (`input` excludes cached tokens, `output` excludes
/// reasoning).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenUsage {
    /// `tokens.input`.
    pub input: u64,
    /// `tokens.output`.
    pub output: u64,
    /// `tokens.reasoning`.
    pub reasoning: u64,
    /// `tokens.cache.read`.
    pub cache_read: u64,
    /// `tokens.cache.write`.
    pub cache_write: u64,
}

impl TokenUsage {
    /// Adds `other` field by field.
    pub fn add(&mut self, other: &TokenUsage) {
        self.input += other.input;
        self.output += other.output;
        self.reasoning += other.reasoning;
        self.cache_read += other.cache_read;
        self.cache_write += other.cache_write;
    }
}

/// Usage of one provider/model pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    /// Assistant `data.providerID`.
    pub provider_id: String,
    /// Assistant `data.modelID`.
    pub model_id: String,
    /// Assistant messages answered by this model.
    pub messages: u64,
    /// Sum of the `step-finish` part tokens of those messages.
    pub tokens: TokenUsage,
    /// Sum of the `step-finish` part cost of those messages (USD).
    pub cost: f64,
}

/// Usage of one tool (or one skill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ToolUsage {
    /// Tool name (`part.data.tool`) or skill name.
    pub name: String,
    /// Tool parts (calls).
    pub calls: u64,
    /// Calls whose `state.status` is `error`.
    pub errors: u64,
    /// Sum of `state.time.end - state.time.start` over finished calls (ms).
    pub duration_ms: u64,
}

/// An error that ended a turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// `data.error.name`, e.g. `APIError`, `MessageAbortedError`, `UnknownError`.
    pub name: String,
    /// `data.error.data.message` (redacted); absent when OpenCode stored none or
    /// `privacy.error_messages` withholds it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// One subagent session, summarised inside its parent's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChildSummary {
    /// The child's `session.id`.
    pub session_id: String,
    /// The child's title (OpenCode: `"<description> (@<agent> subagent)"`; redacted); absent
    /// unless `privacy.titles` allows it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub title: String,
    /// The agent that ran the child (its primary agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The child's message count.
    pub message_count: u64,
    /// The child's token totals.
    pub tokens: TokenUsage,
    /// The child's cost (USD).
    pub cost: f64,
    /// The child's usage per provider and model (as [`SessionExport::models`]). Empty in
    /// records of daemons before it.
    #[serde(default)]
    pub models: Vec<ModelUsage>,
    /// The child's error, when its last turn ended in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// Totals over a session and all its subagent sessions (every descendant, however deep).
/// Fields after `cost` are empty in records of daemons before them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rollup {
    /// Sessions counted: 1 + the number of children.
    pub sessions: u64,
    /// Messages over all of them.
    pub message_count: u64,
    /// Tokens over all of them.
    pub tokens: TokenUsage,
    /// Cost over all of them (USD).
    pub cost: f64,
    /// Usage per provider and model over all of them, sorted by that key.
    #[serde(default)]
    pub models: Vec<ModelUsage>,
    /// Usage per tool over all of them, sorted by name.
    #[serde(default)]
    pub tools: Vec<ToolUsage>,
    /// Usage per skill over all of them, sorted by name.
    #[serde(default)]
    pub skills: Vec<ToolUsage>,
}

/// The copied prefix of a fork ([`SessionExport::inherited`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inherited {
    /// Copied messages.
    pub message_count: u64,
    /// Tokens of their steps.
    pub tokens: TokenUsage,
    /// Cost of their steps (USD).
    pub cost: f64,
    /// Their usage per provider and model, sorted by that key.
    pub models: Vec<ModelUsage>,
}

/// The part of a session hidden by a pending revert ([`SessionExport::reverted`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevertedUsage {
    /// Messages hidden entirely.
    pub message_count: u64,
    /// Tokens of the hidden steps.
    pub tokens: TokenUsage,
    /// Cost of the hidden steps (USD).
    pub cost: f64,
}

/// One todo item (`todo` row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Todo {
    /// `todo.content` (redacted); absent unless `privacy.todo_texts` allows it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    /// `todo.status`: `pending`, `in_progress`, `completed`, `cancelled` (free string).
    pub status: String,
    /// `todo.priority`: `high`, `medium`, `low` (free string).
    pub priority: String,
}

/// One message, summarised (only with `export.include_messages`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSummary {
    /// `message.id`.
    pub id: String,
    /// `data.role`: `user` or `assistant`.
    pub role: String,
    /// `data.agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// `data.providerID` (assistant) or `data.model.providerID` (user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// `data.modelID` (assistant) or `data.model.modelID` (user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_id: Option<String>,
    /// `message.time_created` (ms).
    pub created_at: i64,
    /// `data.time.completed` (ms), assistant messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<i64>,
    /// `data.finish`, assistant messages only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish: Option<String>,
    /// `data.error.name`, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The message's non-synthetic `text` parts joined by blank lines, cut to
    /// `export.max_message_chars` characters followed by [`crate::export::fit::marker`] (the
    /// record then lists `"messages"` in `truncated`); or only that marker when the record
    /// had to give up this text to stay under its size limit. Redacted; absent unless
    /// `privacy.message_texts` allows it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `convex/tests/fixtures/full-record.json` is what the Convex functions' tests ingest: a
    /// record with every optional field present. It must be exactly what this type produces,
    /// so `convex/schema.ts` and [`SessionExport`] cannot drift apart unnoticed.
    #[test]
    fn the_convex_test_fixture_round_trips_through_the_record_type() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../convex/tests/fixtures/full-record.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let original: serde_json::Value = serde_json::from_str(&text).unwrap();
        let record: SessionExport = serde_json::from_value(original.clone()).unwrap();
        assert_eq!(serde_json::to_value(&record).unwrap(), original);
        // Every optional field is present in the fixture, so the schema sees them all.
        for key in [
            "projectWorktree",
            "parentSessionId",
            "forkedFrom",
            "inherited",
            "reverted",
            "archivedAt",
            "deletedAt",
            "durationMs",
            "primaryAgent",
            "error",
            "incomplete",
            "children",
            "rollup",
            "todos",
            "messages",
            "truncated",
            "corrected",
            "redactions",
            "deletion",
        ] {
            assert!(original.get(key).is_some(), "fixture lacks {key}");
        }
    }
}
