//! Row and JSON shapes of OpenCode's database: the only code that knows OpenCode's schema.
//!
//! Columns come from `PRAGMA table_info`, so databases of older OpenCode versions that lack a
//! column (`session.agent`, `session.cost`, `event_sequence`, …) read as `None` instead of
//! failing. JSON blobs (`message.data`, `part.data`) are parsed leniently: every field is
//! optional and unknown fields are ignored, because OpenCode adds fields between releases.
//! References are to `../shared/reference/opencode-storage.md` (§2 schema, §3 JSON shapes).
//!
//! The JSON types are **lean**: they name only the fields a record or the busy/ended rule
//! reads, so a row's tool output (`state.output`), file contents (`filediff.before`/`after`),
//! attachments (`file` parts' data URLs, `state.attachments`) and whole API responses are
//! skipped by the parser without being copied. Free-form objects are read through the
//! wrappers of [`super::lenient`]: a value of an unexpected type there reads as absent instead
//! of failing the row, and long strings are reduced to what is needed (a line count, diff
//! counts, a prefix) as they are parsed.

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::lenient::{
    DiffLines, Lenient, LenientScalar, LenientStr, LenientVec, LineCount, Prefix,
};

/// One `session` row (§2.1). Times are epoch ms.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRow {
    /// `id` (`ses_…`).
    pub id: String,
    /// `project_id`.
    pub project_id: String,
    /// `parent_id`: set for subagent sessions.
    pub parent_id: Option<String>,
    /// `directory`: absolute working directory.
    pub directory: String,
    /// `title`.
    pub title: String,
    /// `version`: the OpenCode version that created the session.
    pub version: String,
    /// `time_created` (ms).
    pub time_created: i64,
    /// `time_updated` (ms): last user-level activity, not bumped by streaming.
    pub time_updated: i64,
    /// `time_archived` (ms).
    pub time_archived: Option<i64>,
    /// `summary_additions` (always 0 since OpenCode 1.16).
    pub summary_additions: Option<i64>,
    /// `summary_deletions` (always 0 since OpenCode 1.16).
    pub summary_deletions: Option<i64>,
    /// `summary_files` (always 0 since OpenCode 1.16).
    pub summary_files: Option<i64>,
    /// `agent` (≥ 1.14.34): the last agent used.
    pub agent: Option<String>,
    /// `revert`: set while a revert is staged (`None` when the column is `NULL` or its JSON
    /// cannot be read).
    pub revert: Option<Revert>,
}

/// `session.revert`: `{messageID, partID?, snapshot?, diff?}`. OpenCode hides the messages from
/// `messageID` on (with `partID`: that message's parts from `partID` on, and the messages after
/// it) and deletes them at the next prompt (`SessionRevert.cleanup`); `unrevert` clears it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Revert {
    /// `messageID`: the first hidden message (or the one whose parts are partly hidden).
    #[serde(rename = "messageID")]
    pub message_id: String,
    /// `partID`: the first hidden part of that message.
    #[serde(rename = "partID", default)]
    pub part_id: Option<String>,
}

/// One `project` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectRow {
    /// `id`.
    pub id: String,
    /// `worktree`: the repository root (`/` for the `global` project).
    pub worktree: String,
}

/// One `message` row with its parsed `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRow {
    /// `id` (`msg_…`, ascending in creation order).
    pub id: String,
    /// `time_created` (ms).
    pub time_created: i64,
    /// `time_updated` (ms): wall time of the last write to the row.
    pub time_updated: i64,
    /// `data`, parsed.
    pub info: MessageInfo,
}

/// `message.data` (§3.3): user and assistant messages share one lenient shape.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MessageInfo {
    /// `role`: `user` or `assistant`.
    pub role: String,
    /// `agent`, e.g. `build`, `plan`, `general`, `compaction`.
    pub agent: Option<String>,
    /// `mode` (deprecated alias of `agent` on assistant messages).
    pub mode: Option<String>,
    /// `model {providerID, modelID}` (user messages).
    pub model: Option<UserModel>,
    /// `providerID` (assistant messages).
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    /// `modelID` (assistant messages).
    #[serde(rename = "modelID")]
    pub model_id: Option<String>,
    /// `time {created, completed?}`.
    pub time: MessageTime,
    /// `error {name, data {message, …}}` (assistant messages).
    pub error: Option<MessageError>,
    /// `finish`: AI-SDK finish reason of the last step (assistant messages).
    pub finish: Option<String>,
    /// `cost` (USD, summed over the message's steps).
    pub cost: Option<f64>,
    /// `structured`: captured structured output (ends the turn); only its presence is read.
    pub structured: Option<IgnoredAny>,
    /// `summary`: an object `{diffs: FileDiff[]}` on user messages (read), a bool on
    /// compaction summaries (reads as absent).
    pub summary: Lenient<MessageSummary>,
}

/// `summary` of a user message: the files its turn changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MessageSummary {
    /// `diffs[]`; entries that are not objects are skipped (each entry's `before` / `after`
    /// file contents are never read).
    pub diffs: LenientVec<FileDiff>,
}

impl MessageInfo {
    /// True for `role = "user"`.
    pub fn is_user(&self) -> bool {
        self.role == "user"
    }
    /// True for `role = "assistant"`.
    pub fn is_assistant(&self) -> bool {
        self.role == "assistant"
    }
    /// `agent`, falling back to the deprecated `mode`.
    pub fn agent_name(&self) -> Option<&str> {
        self.agent.as_deref().or(self.mode.as_deref())
    }
}

/// `model` of a user message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct UserModel {
    /// `providerID`.
    #[serde(rename = "providerID")]
    pub provider_id: Option<String>,
    /// `modelID`.
    #[serde(rename = "modelID")]
    pub model_id: Option<String>,
}

/// `time` of a message (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct MessageTime {
    /// `time.created`.
    pub created: Option<i64>,
    /// `time.completed`: set when the step finished (also on errors and aborts).
    pub completed: Option<i64>,
}

/// `error` of an assistant message: `{name, data}`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct MessageError {
    /// `name`, e.g. `APIError`, `MessageAbortedError`.
    pub name: String,
    /// `data`, whose `message` is the human-readable text (its other fields, such as an API
    /// error's `responseBody`, are not read).
    pub data: Lenient<ErrorData>,
}

/// `error.data` of an assistant message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ErrorData {
    /// `message`.
    pub message: LenientStr,
}

impl MessageError {
    /// `data.message`, or an empty string.
    pub fn message(&self) -> String {
        self.data
            .get()
            .and_then(|d| d.message.get())
            .cloned()
            .unwrap_or_default()
    }
}

/// One `part` row with its parsed `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartRow {
    /// `id` (`prt_…`, ascending).
    pub id: String,
    /// `message_id`.
    pub message_id: String,
    /// `time_updated` (ms).
    pub time_updated: i64,
    /// `data`, parsed (without its text: see [`PartData`]).
    pub info: PartInfo,
}

/// `part.data` as the row types keep it: without `text`.
pub type PartInfo = PartData<IgnoredAny>;

/// `part.data` (§3.4), one lenient shape for every part type. `T` is what is read of `text`:
/// [`IgnoredAny`] (skipped, never copied) unless the texts are exported, `String` then.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PartData<T> {
    /// `type`: `text`, `reasoning`, `tool`, `step-start`, `step-finish`, `patch`, `file`,
    /// `agent`, `subtask`, `compaction`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// `text` (text and reasoning parts).
    pub text: Option<T>,
    /// `synthetic` (text parts OpenCode adds itself).
    pub synthetic: Option<bool>,
    /// `tool`: the tool name (tool parts).
    pub tool: Option<String>,
    /// `state` (tool parts).
    pub state: Option<ToolState>,
    /// `metadata` (tool parts: `{providerExecuted: true}` for provider-run tools).
    pub metadata: Lenient<PartMetadata>,
    /// `cost` (step-finish parts, USD).
    pub cost: Option<f64>,
    /// `tokens` (step-finish parts).
    pub tokens: Option<Tokens>,
    /// `files` (patch parts): absolute paths changed during the step.
    pub files: Option<Vec<String>>,
}

impl<T> PartData<T> {
    /// Splits off `text`: the part as the row types keep it, and its text.
    pub fn split_text(self) -> (PartInfo, Option<T>) {
        let PartData {
            kind,
            text,
            synthetic,
            tool,
            state,
            metadata,
            cost,
            tokens,
            files,
        } = self;
        let info = PartData {
            kind,
            text: None,
            synthetic,
            tool,
            state,
            metadata,
            cost,
            tokens,
            files,
        };
        (info, text)
    }

    /// True for a tool part OpenCode itself runs (not executed by the provider).
    pub fn is_local_tool(&self) -> bool {
        self.kind == "tool"
            && !self
                .metadata
                .get()
                .and_then(|m| m.provider_executed.0)
                .unwrap_or(false)
    }
}

/// `metadata` of a tool part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PartMetadata {
    /// `providerExecuted`: the provider ran the tool, not OpenCode.
    #[serde(rename = "providerExecuted")]
    pub provider_executed: LenientScalar<bool>,
}

/// `state` of a tool part.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct ToolState {
    /// `status`: `pending`, `running`, `completed`, `error`.
    pub status: String,
    /// `input`: the call's arguments, the few that are read.
    pub input: Lenient<ToolInput>,
    /// The start of the `error` text (status `error`), enough to recognise a rejection.
    pub error: LenientStr<Prefix>,
    /// `time {start, end}` (ms).
    pub time: Option<ToolTime>,
    /// `metadata`, the few fields that are read (the tool's output preview, file contents and
    /// diagnostics are not).
    pub metadata: Lenient<ToolMetadata>,
}

impl ToolState {
    /// True when the call was interrupted by an abort (`metadata.interrupted`).
    pub fn interrupted(&self) -> bool {
        self.metadata
            .get()
            .and_then(|m| m.interrupted.0)
            .unwrap_or(false)
    }

    /// True when `error` is a permission/question rejection ([`is_rejection`]).
    pub fn rejected(&self) -> bool {
        self.error.get().is_some_and(|e| is_rejection(&e.0))
    }
}

/// `state.input` of a tool part.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ToolInput {
    /// `name` (the `skill` tool: the skill).
    pub name: LenientStr,
    /// `filePath` (`edit`, `multiedit`, `write`).
    #[serde(rename = "filePath")]
    pub file_path: LenientStr,
    /// The lines of `content` (`write`); the content itself is not kept.
    pub content: LenientStr<LineCount>,
}

/// `state.metadata` of a tool part: what the file-editing tools record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ToolMetadata {
    /// `interrupted` (aborted calls).
    pub interrupted: LenientScalar<bool>,
    /// `filediff {file, additions, deletions}` (`edit`).
    pub filediff: Lenient<EditCounts>,
    /// The `+`/`-` lines of `diff` (`edit` before `filediff` existed).
    pub diff: LenientStr<DiffLines>,
    /// `results[]` (`multiedit`): one `edit` metadata per edit.
    pub results: LenientVec<EditMetadata>,
    /// `files[]` (`apply_patch`).
    pub files: LenientVec<PatchedFile>,
    /// `exists` (`write`: false for a new file).
    pub exists: LenientScalar<bool>,
}

/// One `edit`'s metadata (also each `results[]` entry of `multiedit`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EditMetadata {
    /// `filediff`.
    pub filediff: Lenient<EditCounts>,
    /// The `+`/`-` lines of `diff`.
    pub diff: LenientStr<DiffLines>,
}

/// `filediff` of an edit: the file and its line counts (its `before` / `after` contents are
/// not read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct EditCounts {
    /// `file`.
    pub file: LenientStr,
    /// `additions`.
    pub additions: LenientScalar<u64>,
    /// `deletions`.
    pub deletions: LenientScalar<u64>,
}

/// One `files[]` entry of `apply_patch`'s metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct PatchedFile {
    /// `filePath`.
    #[serde(rename = "filePath")]
    pub file_path: LenientStr,
    /// `movePath` (a rename's new path).
    #[serde(rename = "movePath")]
    pub move_path: LenientStr,
    /// `additions`.
    pub additions: LenientScalar<u64>,
    /// `deletions`.
    pub deletions: LenientScalar<u64>,
}

/// `state.time` of a tool part (ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ToolTime {
    /// `start`.
    pub start: Option<i64>,
    /// `end`.
    pub end: Option<i64>,
}

/// `tokens` of a step-finish part.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Tokens {
    /// `input` (excludes cached tokens).
    pub input: u64,
    /// `output` (excludes reasoning).
    pub output: u64,
    /// `reasoning`.
    pub reasoning: u64,
    /// `cache {read, write}`.
    pub cache: CacheTokens,
}

/// `tokens.cache`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct CacheTokens {
    /// `read`.
    pub read: u64,
    /// `write`.
    pub write: u64,
}

/// One `todo` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoRow {
    /// `content`.
    pub content: String,
    /// `status` (free string; documented `pending | in_progress | completed | cancelled`).
    pub status: String,
    /// `priority` (free string; documented `high | medium | low`).
    pub priority: String,
}

/// One entry of a user message's `summary.diffs` (FileDiff).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct FileDiff {
    /// `file`: path relative to the worktree.
    pub file: LenientStr,
    /// `additions`.
    pub additions: LenientScalar<u64>,
    /// `deletions`.
    pub deletions: LenientScalar<u64>,
}

/// Texts OpenCode writes into a tool part's `state.error` when the user rejected a permission
/// request or dismissed a question (`core/v1/permission.ts`): such a part ends the turn.
pub const REJECTION_PREFIXES: [&str; 3] = [
    "The user rejected permission",
    "The user dismissed this question",
    "The user has specified a rule which prevents",
];

/// True when a tool error text is a permission/question rejection.
pub fn is_rejection(error: &str) -> bool {
    REJECTION_PREFIXES.iter().any(|p| error.starts_with(p))
}

/// What is wrong with a row's JSON, for the one warning a malformed row gets: the kind of error
/// and where, never the text `serde_json` would quote (its messages include the offending
/// string value, which may be a prompt or a key).
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => return format!("reading it failed: {e}"),
        Category::Syntax => "not valid JSON",
        Category::Data => "JSON of an unexpected shape",
        Category::Eof => "JSON cut short",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod json_error_tests {
    #[test]
    fn a_malformed_rows_error_never_quotes_its_content() {
        for (data, want) in [
            (
                r#""sk-proj-SECRET0123456789""#,
                "JSON of an unexpected shape at line 1 column 26",
            ),
            (
                r#"{"role": "sk-proj-SECRET"#,
                "JSON cut short at line 1 column 24",
            ),
            (
                r#"{"role" sk-proj-SECRET}"#,
                "not valid JSON at line 1 column 9",
            ),
        ] {
            let e = serde_json::from_str::<super::MessageInfo>(data).unwrap_err();
            assert_eq!(super::json_error(&e), want, "{data}");
        }
        // What it replaces: serde_json's own message quotes the value.
        let e = serde_json::from_str::<super::MessageInfo>(r#""sk-proj-SECRET""#).unwrap_err();
        assert!(e.to_string().contains("sk-proj-SECRET"));
    }
}
