//! The source-neutral session model: what [`crate::export`] builds a record from.
//!
//! A source fills it from its own storage (see each source's docs for which column or JSON path
//! each field comes from); the export never sees the storage. Times are epoch milliseconds,
//! costs US dollars, token counts tokens.

use super::{SessionId, TurnError};

/// Everything a source holds about one session, read consistently (one read transaction for
/// OpenCode's database).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionSnapshot {
    /// The session.
    pub id: SessionId,
    /// Its parent, for a subagent session.
    pub parent_id: Option<SessionId>,
    /// The agent version that created the session (OpenCode: `1.18.33`).
    pub agent_version: String,
    /// The project id as the agent computes it (OpenCode: a hash of the repository; `global`).
    pub project_id: String,
    /// Absolute working directory of the session.
    pub directory: String,
    /// The repository root, when known (`/` for OpenCode's `global` project).
    pub worktree: Option<String>,
    /// The session's title.
    pub title: String,
    /// Creation time (ms).
    pub created_at: i64,
    /// Archive time (ms).
    pub archived_at: Option<i64>,
    /// The newest write to the session or any of its messages and parts (ms).
    pub last_write_ms: i64,
    /// Messages in creation order.
    pub messages: Vec<Message>,
    /// Tool calls in message order, then call order.
    pub tool_calls: Vec<ToolCall>,
    /// What the session changed in files.
    pub code_changes: CodeChangeFacts,
    /// The todo list, in its order.
    pub todos: Vec<TodoItem>,
    /// Subagent sessions (recursively), in creation order.
    pub children: Vec<SessionSnapshot>,
    /// Set when the session is a fork of another (see [`Fork`]).
    pub fork: Option<Fork>,
    /// What a pending revert hides (see [`Reverted`]).
    pub reverted: Option<Reverted>,
}

/// A session made by forking another. OpenCode's `Session.fork` copies a prefix of the source's
/// messages, with their parts (cost and tokens included), into the new session; the copies
/// keep their original creation times, which predate the fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fork {
    /// The session it was forked from, when the source could identify it.
    pub source: Option<SessionId>,
    /// How many of the first [`SessionSnapshot::messages`] are copies.
    pub inherited_messages: usize,
}

/// The part of a session a pending revert hides (OpenCode: `session.revert` is set; the hidden
/// messages are deleted at the next prompt, or shown again by `unrevert`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reverted {
    /// Messages hidden entirely.
    pub messages: u64,
    /// Tokens of the hidden steps.
    pub tokens: Tokens,
    /// Cost of the hidden steps (USD).
    pub cost: f64,
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The user (a prompt).
    User,
    /// The model (one or more steps of an answer).
    Assistant,
    /// Anything else a newer agent version may write (its role as stored); counted as a
    /// message, neither user nor assistant.
    Other(String),
}

impl Role {
    /// `user`, `assistant`, or the stored name.
    pub fn as_str(&self) -> &str {
        match self {
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Other(name) => name,
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The message id (OpenCode `msg_…`).
    pub id: String,
    /// Its role.
    pub role: Role,
    /// The agent that wrote or received it (`build`, `plan`, `general`, `compaction`, …).
    pub agent: Option<String>,
    /// Provider of the model (assistant: the one that answered; user: the one asked for).
    pub provider_id: Option<String>,
    /// The model (as `provider_id`).
    pub model_id: Option<String>,
    /// Creation time (ms).
    pub created_at: i64,
    /// Completion time (ms), once the message completed.
    pub completed_at: Option<i64>,
    /// The model's finish reason of the last step (`stop`, `tool-calls`, `length`, …).
    pub finish: Option<String>,
    /// The error the message carries.
    pub error: Option<TurnError>,
    /// Tokens of its steps, summed.
    pub tokens: Tokens,
    /// Cost of its steps, summed (USD).
    pub cost: f64,
    /// Its visible text (OpenCode: the non-synthetic text parts, joined by a blank line), of
    /// which the source keeps what [`crate::source::Texts`] asked for; empty when texts were
    /// not asked for.
    pub text: MessageText,
}

/// A message's text as a source reads it, piece by piece: the pieces joined by a blank line,
/// of which the first `max_chars` characters are kept and the rest only counted, so that a
/// message of any length costs at most `max_chars` characters of memory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageText {
    kept: String,
    kept_chars: usize,
    chars: usize,
    max_chars: usize,
}

impl MessageText {
    /// An empty text that keeps at most `max_chars` characters.
    pub fn new(max_chars: usize) -> MessageText {
        MessageText {
            max_chars,
            ..MessageText::default()
        }
    }

    /// Appends one piece (an OpenCode text part), after a blank line unless it is the first.
    pub fn push(&mut self, piece: &str) {
        self.push_prefix(piece, piece.chars().count());
    }

    /// Appends a piece of `total_chars` characters of which only the start `prefix` was read
    /// (at least as many characters as this text keeps, or the whole piece).
    pub fn push_prefix(&mut self, prefix: &str, total_chars: usize) {
        if total_chars == 0 {
            return;
        }
        if self.chars > 0 {
            self.append("\n\n", 2);
        }
        self.append(prefix, total_chars);
    }

    fn append(&mut self, s: &str, total_chars: usize) {
        self.chars += total_chars;
        let room = self.max_chars - self.kept_chars;
        let n = s.chars().count();
        if n <= room {
            self.kept.push_str(s);
            self.kept_chars += n;
        } else if room > 0 {
            let end = s.char_indices().nth(room).map_or(s.len(), |(i, _)| i);
            self.kept.push_str(&s[..end]);
            self.kept_chars = self.max_chars;
        }
    }

    /// The kept start of the text: all of it when [`MessageText::chars`] is at most the
    /// maximum.
    pub fn kept(&self) -> &str {
        &self.kept
    }

    /// The length of the whole text (characters), kept or not.
    pub fn chars(&self) -> usize {
        self.chars
    }

    /// True when nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.chars == 0
    }
}

/// Token counts of one or more model steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    /// Input tokens, cached ones excluded.
    pub input: u64,
    /// Output tokens, reasoning excluded.
    pub output: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Tokens read from the prompt cache.
    pub cache_read: u64,
    /// Tokens written to the prompt cache.
    pub cache_write: u64,
}

impl Tokens {
    /// Adds `other` field by field (saturating).
    pub fn add(&mut self, other: &Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.reasoning = self.reasoning.saturating_add(other.reasoning);
        self.cache_read = self.cache_read.saturating_add(other.cache_read);
        self.cache_write = self.cache_write.saturating_add(other.cache_write);
    }
}

/// One tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// The message the call belongs to.
    pub message_id: String,
    /// The tool's name (`bash`, `edit`, `skill`, an MCP tool's name…).
    pub tool: String,
    /// For a skill invocation, the skill's name (`unknown` when the call named none).
    pub skill: Option<String>,
    /// The call failed.
    pub failed: bool,
    /// How long it ran (ms; 0 when not finished or not recorded).
    pub duration_ms: u64,
}

/// What a session changed in files, as the source records it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CodeChangeFacts {
    /// The session's own edits: one per file per successful file-editing tool call (OpenCode:
    /// `edit`, `multiedit`, `write`, `apply_patch`), in call order; a fork's copied calls are
    /// not its own.
    pub edits: Vec<FileEdit>,
    /// Per-file diffs of each turn, from snapshots of the whole working tree (OpenCode: the user
    /// messages' `summary.diffs`), so they include what other processes changed meanwhile.
    pub diffs: Vec<FileDiff>,
    /// Files changed by individual steps (OpenCode: `patch` parts), absolute or relative.
    pub patched_files: Vec<String>,
    /// Totals the session row itself keeps, used when there are no diffs: `(additions,
    /// deletions, files)` (OpenCode: `session.summary_*`, all 0 since 1.16).
    pub totals: Option<(u64, u64, u64)>,
}

/// One file changed by one tool call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileEdit {
    /// The file (absolute, or relative to the worktree).
    pub file: String,
    /// Lines added.
    pub additions: u64,
    /// Lines deleted.
    pub deletions: u64,
}

/// One file's diff.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDiff {
    /// The file (relative to the worktree, or absolute).
    pub file: Option<String>,
    /// Lines added.
    pub additions: u64,
    /// Lines deleted.
    pub deletions: u64,
}

/// One todo item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TodoItem {
    /// Its text.
    pub content: String,
    /// `pending`, `in_progress`, `completed`, `cancelled` (free string: agents may add more).
    pub status: String,
    /// `high`, `medium`, `low` (free string).
    pub priority: String,
}

impl TodoItem {
    /// True while the item is still to do (neither completed nor cancelled).
    pub fn is_open(&self) -> bool {
        self.status != "completed" && self.status != "cancelled"
    }
}

#[cfg(test)]
mod tests {
    use super::MessageText;

    /// The kept start is the joined text's first `max` characters; `chars` counts all of it.
    #[test]
    fn message_texts_keep_their_first_characters_and_count_the_rest() {
        for (max, pieces, kept, chars) in [
            (10, vec!["abc", "def"], "abc\n\ndef", 8),
            (8, vec!["abc", "def"], "abc\n\ndef", 8),
            (7, vec!["abc", "def"], "abc\n\nde", 8),
            (4, vec!["abc", "def"], "abc\n", 8),
            (3, vec!["abc", "def", "ghi"], "abc", 13),
            (0, vec!["abc"], "", 3),
            (2, vec!["éèê"], "éè", 3),
            (5, vec![], "", 0),
        ] {
            let mut t = MessageText::new(max);
            for p in &pieces {
                t.push(p);
            }
            assert_eq!((t.kept(), t.chars()), (kept, chars), "{max} {pieces:?}");
            let whole = pieces.join("\n\n");
            assert_eq!(whole.chars().count(), chars);
            assert!(whole.starts_with(t.kept()));
            // The same pieces read as prefixes of at least `max` characters.
            let mut p = MessageText::new(max);
            for piece in &pieces {
                let prefix: String = piece.chars().take(max).collect();
                p.push_prefix(&prefix, piece.chars().count());
            }
            assert_eq!(p, t, "prefixes {max} {pieces:?}");
        }
    }
}
