//! What of a record may leave the machine: the `[privacy]` policy, applied in one place
//! ([`apply`], called by [`crate::export::build()`] right after the record is assembled and
//! before the content rules, fitting and the content hash), so every sink, the outbox and the
//! tracker's stored copy only ever see the policy's record.
//!
//! ## Every field, classified
//!
//! Each field of [`SessionExport`] is in one class ([`FIELDS`] lists every JSON path; a test
//! fails when a field of the full record is not in it):
//!
//! | class | fields |
//! |---|---|
//! | **count**: numbers, times, booleans, the end reason, opaque ids and hashes, versions, the daemon's own bookkeeping | `schemaVersion`, `sessionId`, `deviceId` (a keyed hash), `opencodeVersion`, `daemonVersion`, `projectId` (OpenCode's hash of the repository), `parentSessionId`, `forkedFrom`, every `*At`, `revision`, `contentHash`, `durationMs`, every `*Count`, `todoStats`, `codeChanges`, `worktreeChanges`, `tokens`, `cost`, the numbers of `models`/`tools`/`skills`/`inherited`/`reverted`/`children`/`rollup`, `children[].sessionId`, `endReason`, `incomplete`, `truncated`, `corrected`, `redactions` |
//! | **name**: names chosen by software, not written by you | `agentsUsed`, `primaryAgent`, every `providerId`/`modelId`, tool and skill `name`s, `error.name`, `children[].agent`, `children[].error.name` |
//! | **todo item**: the todo list without its text (`export.include_todos`) | `todos[].status`, `todos[].priority` |
//! | **message item**: the message list without its text (`export.include_messages`) | `messages[].id`, `role`, `agent`, `providerId`, `modelId`, `createdAt`, `completedAt`, `finish`, `error` |
//! | **path** | `projectDirectory`, `projectWorktree` |
//! | **host** | `hostname` |
//! | **free text**: written by you or by a model | `title`, `children[].title` (titles); `todos[].content` (todo texts); `error.message`, `children[].error.message` (error messages); `messages[].text` (message texts) |
//!
//! ## Levels and switches
//!
//! `privacy.level` picks the defaults; each switch set in `[privacy]` wins over its level's
//! default (in both directions):
//!
//! | what leaves | `counts` | `metadata` (default) | `content` |
//! |---|---|---|---|
//! | counts and names | yes | yes | yes |
//! | todo and message items (with `include_todos` / `include_messages`) | no | yes | yes |
//! | `project_paths` | `off` | `hashed` | `plain` |
//! | `hostname` | no | no | yes |
//! | `titles`, `todo_texts`, `error_messages` | no | no | yes |
//! | `message_texts` (with `include_messages`) | no | no | yes |
//!
//! Why `metadata` is the default: the deployment is the user's own, but it is a copy of their
//! work on someone's servers, reachable with one token; the table of sessions (models, tokens,
//! cost, agents, tools, todos done, errors by kind) needs no word the user wrote, and grouping by
//! project needs no path: a hashed path groups the same way. The host name would undo the
//! pseudonymous `deviceId`, so it is off below `content`.
//!
//! A withheld field is absent from the record (the JSON has no key), never an empty placeholder;
//! a withheld list (`todos`, `messages`) is absent as a whole. Message texts that may not leave are not
//! even read from the source ([`crate::export::ExportContext::texts`]).
//!
//! **Paths** (`project_paths`): `plain` sends them as they are (redacted like free text);
//! `name` only the last component (`/home/ada/src/acme-api` → `acme-api`, redacted too);
//! `hashed` the hex of the first 16 bytes of HMAC-SHA256 under the install's [`PathKey`]
//! (`hmac:` + 32 hex digits): the same directory hashes the same on one machine, and without the
//! key a dictionary of common paths cannot be tried against it; `off` sends none.
//!
//! **Redaction**: every free-text field that leaves, and paths sent `plain` or as `name`, goes
//! through [`crate::export::redact`]; the number of secrets replaced is the record's
//! `redactions` (absent when 0).

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::export::record::*;
use crate::export::redact::redactor;

/// `privacy.level`: the preset of the switches (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Counts and names only.
    Counts,
    /// Counts, names, todo and message items, hashed paths.
    #[default]
    Metadata,
    /// Everything, free text redacted.
    Content,
}

impl Level {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Counts => "counts",
            Level::Metadata => "metadata",
            Level::Content => "content",
        }
    }
}

/// `privacy.project_paths`: how `projectDirectory` and `projectWorktree` leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    /// Not at all.
    Off,
    /// A keyed hash (`hmac:` + 32 hex digits).
    Hashed,
    /// The last path component.
    Name,
    /// As OpenCode stores it.
    Plain,
}

/// `privacy.on_delete`: what a session deleted in the source becomes (see
/// [`crate::export::mark_deleted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDelete {
    /// A tombstone replaces the stored content: ids, times, `deletedAt`, counts; no title,
    /// todos, messages, paths or names.
    #[default]
    Tombstone,
    /// The last record, marked deleted (the content stays stored).
    Keep,
    /// A tombstone that asks the deployment to remove the session's document (and its share of
    /// the totals).
    Delete,
}

/// The install's secret key for hashed paths: 32 random bytes kept in `<data_dir>/path.key`
/// (mode 0600; made by the daemon on first use). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PathKey([u8; 32]);

impl PathKey {
    /// A key of these bytes.
    pub fn new(bytes: [u8; 32]) -> PathKey {
        PathKey(bytes)
    }

    /// The key's bytes (to store it).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// `hmac:` + hex of the first 16 bytes of HMAC-SHA256(key, `path`).
    pub fn hash(&self, path: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts any key");
        mac.update(path.as_bytes());
        format!("hmac:{}", hex::encode(&mac.finalize().into_bytes()[..16]))
    }
}

impl std::fmt::Debug for PathKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PathKey(…)")
    }
}

/// `[privacy]` as written: the level and the switches set explicitly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// The preset (default `metadata`).
    pub level: Level,
    /// `title`, `children[].title`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub titles: Option<bool>,
    /// `projectDirectory`, `projectWorktree`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project_paths: Option<PathMode>,
    /// `hostname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<bool>,
    /// `todos[].content`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub todo_texts: Option<bool>,
    /// `error.message`, `children[].error.message`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_messages: Option<bool>,
    /// `messages[].text` (with `export.include_messages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_texts: Option<bool>,
    /// What a deleted session becomes.
    pub on_delete: OnDelete,
}

/// The resolved policy: the level's defaults with the explicit switches applied, and the key.
#[derive(Debug, Clone, PartialEq)]
pub struct Privacy {
    /// The level it came from.
    pub level: Level,
    /// Titles leave.
    pub titles: bool,
    /// How paths leave.
    pub project_paths: PathMode,
    /// The host name leaves.
    pub hostname: bool,
    /// The todo list (status, priority) leaves, with `export.include_todos`.
    pub todo_items: bool,
    /// Todo texts leave.
    pub todo_texts: bool,
    /// Error messages leave.
    pub error_messages: bool,
    /// The message list leaves, with `export.include_messages`.
    pub message_items: bool,
    /// Message texts leave.
    pub message_texts: bool,
    /// What a deleted session becomes.
    pub on_delete: OnDelete,
    /// The key of hashed paths.
    pub path_key: PathKey,
}

impl Privacy {
    /// `config` resolved: each switch not set takes its level's default (module docs).
    pub fn new(config: &PrivacyConfig, path_key: PathKey) -> Privacy {
        let (items, full) = match config.level {
            Level::Counts => (false, false),
            Level::Metadata => (true, false),
            Level::Content => (true, true),
        };
        let paths = match config.level {
            Level::Counts => PathMode::Off,
            Level::Metadata => PathMode::Hashed,
            Level::Content => PathMode::Plain,
        };
        Privacy {
            level: config.level,
            titles: config.titles.unwrap_or(full),
            project_paths: config.project_paths.unwrap_or(paths),
            hostname: config.hostname.unwrap_or(full),
            todo_items: items,
            todo_texts: config.todo_texts.unwrap_or(full),
            error_messages: config.error_messages.unwrap_or(full),
            message_items: items,
            message_texts: config.message_texts.unwrap_or(full),
            on_delete: config.on_delete,
            path_key,
        }
    }

    /// The policy of `level` with no switch set.
    pub fn of_level(level: Level, path_key: PathKey) -> Privacy {
        Privacy::new(
            &PrivacyConfig {
                level,
                ..PrivacyConfig::default()
            },
            path_key,
        )
    }

    /// One line saying what leaves, switch by switch (for `check-config`).
    pub fn describe(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        format!(
            "level {}: titles {}, project paths {}, hostname {}, todo list {}, todo texts {}, \
             error messages {}, message list {}, message texts {}; deleted sessions: {}",
            self.level.as_str(),
            yn(self.titles),
            match self.project_paths {
                PathMode::Off => "off",
                PathMode::Hashed => "hashed",
                PathMode::Name => "name",
                PathMode::Plain => "plain",
            },
            yn(self.hostname),
            yn(self.todo_items),
            yn(self.todo_texts),
            yn(self.error_messages),
            yn(self.message_items),
            yn(self.message_texts),
            match self.on_delete {
                OnDelete::Tombstone => "tombstone",
                OnDelete::Keep => "keep",
                OnDelete::Delete => "delete",
            }
        )
    }

    /// Whether the source must read message texts at all.
    pub fn reads_message_texts(&self) -> bool {
        self.message_items && self.message_texts
    }

    fn path(&self, path: &str, redactions: &mut u64) -> Option<String> {
        match self.project_paths {
            PathMode::Off => None,
            PathMode::Hashed => Some(self.path_key.hash(path)),
            PathMode::Name => {
                let name = path
                    .trim_end_matches(['/', '\\'])
                    .rsplit(['/', '\\'])
                    .next()
                    .unwrap_or_default();
                Some(redacted(name, redactions))
            }
            PathMode::Plain => Some(redacted(path, redactions)),
        }
    }
}

/// `text` redacted; adds the secrets replaced to `redactions`.
fn redacted(text: &str, redactions: &mut u64) -> String {
    let (out, n) = redactor().redact(text);
    *redactions += n as u64;
    out.into_owned()
}

/// `text` redacted in place when `keep`, else emptied (an empty text is omitted from the JSON).
fn text(keep: bool, text: &mut String, redactions: &mut u64) {
    if keep {
        let (out, n) = redactor().redact(text);
        if n > 0 {
            *redactions += n as u64;
            *text = out.into_owned();
        }
    } else {
        text.clear();
    }
}

/// Applies `p` to a freshly built `record` (see the module docs): withheld fields are removed,
/// paths shaped, the free text that stays redacted, and `redactions` set.
pub fn apply(record: &mut SessionExport, p: &Privacy) {
    let mut n = 0;
    if !p.hostname {
        record.hostname.clear();
    }
    record.project_directory = p
        .path(&record.project_directory, &mut n)
        .unwrap_or_default();
    record.project_worktree = record
        .project_worktree
        .as_deref()
        .and_then(|w| p.path(w, &mut n))
        .filter(|w| !w.is_empty());
    text(p.titles, &mut record.title, &mut n);
    if let Some(e) = &mut record.error {
        text(p.error_messages, &mut e.message, &mut n);
    }
    for c in &mut record.children {
        text(p.titles, &mut c.title, &mut n);
        if let Some(e) = &mut c.error {
            text(p.error_messages, &mut e.message, &mut n);
        }
    }
    if !p.todo_items {
        record.todos = None;
    }
    for t in record.todos.iter_mut().flatten() {
        text(p.todo_texts, &mut t.content, &mut n);
    }
    if !p.message_items {
        record.messages = None;
    }
    if !p.reads_message_texts() {
        // The builder's cut of a text that does not leave is no shortening of the record.
        record.truncated.retain(|f| f != "messages");
    }
    for m in record.messages.iter_mut().flatten() {
        text(p.message_texts, &mut m.text, &mut n);
    }
    record.redactions = n;
}

/// The class of a field (see the module docs' table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Numbers, times, booleans, the end reason, opaque ids and hashes, versions, bookkeeping.
    Count,
    /// Names chosen by software.
    Name,
    /// A todo item's status or priority.
    TodoItem,
    /// A message item's metadata.
    MessageItem,
    /// A project path.
    Path,
    /// The host name.
    Host,
    /// Free text of this kind.
    Text(TextKind),
}

/// The switch that governs a free-text field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// `titles`.
    Title,
    /// `todo_texts`.
    TodoText,
    /// `error_messages`.
    ErrorMessage,
    /// `message_texts`.
    MessageText,
}

/// Every JSON path of a record (array items as `[]`; a [`TokenUsage`] under any key is listed
/// by its own fields) and its class. A field missing here fails
/// `tests::every_field_of_the_full_record_is_classified`.
pub const FIELDS: &[(&str, Class)] = &{
    use Class::*;
    use TextKind::*;
    [
        ("schemaVersion", Count),
        ("sessionId", Count),
        ("deviceId", Count),
        ("hostname", Host),
        ("opencodeVersion", Count),
        ("daemonVersion", Count),
        ("projectId", Count),
        ("projectDirectory", Path),
        ("projectWorktree", Path),
        ("parentSessionId", Count),
        ("forkedFrom", Count),
        ("title", Text(Title)),
        ("createdAt", Count),
        ("updatedAt", Count),
        ("exportedAt", Count),
        ("revision", Count),
        ("contentHash", Count),
        ("archivedAt", Count),
        ("deletedAt", Count),
        ("durationMs", Count),
        ("messageCount", Count),
        ("userMessageCount", Count),
        ("assistantMessageCount", Count),
        ("agentsUsed", Name),
        ("primaryAgent", Name),
        ("todoStats.total", Count),
        ("todoStats.completed", Count),
        ("todoStats.cancelled", Count),
        ("todoStats.pending", Count),
        ("todoStats.inProgress", Count),
        ("codeChanges.additions", Count),
        ("codeChanges.deletions", Count),
        ("codeChanges.filesChanged", Count),
        ("worktreeChanges.additions", Count),
        ("worktreeChanges.deletions", Count),
        ("worktreeChanges.filesChanged", Count),
        ("tokens", Count),
        ("cost", Count),
        ("models[].providerId", Name),
        ("models[].modelId", Name),
        ("models[].messages", Count),
        ("models[].tokens", Count),
        ("models[].cost", Count),
        ("tools[].name", Name),
        ("tools[].calls", Count),
        ("tools[].errors", Count),
        ("tools[].durationMs", Count),
        ("skills[].name", Name),
        ("skills[].calls", Count),
        ("skills[].errors", Count),
        ("skills[].durationMs", Count),
        ("inherited.messageCount", Count),
        ("inherited.tokens", Count),
        ("inherited.cost", Count),
        ("inherited.models[].providerId", Name),
        ("inherited.models[].modelId", Name),
        ("inherited.models[].messages", Count),
        ("inherited.models[].tokens", Count),
        ("inherited.models[].cost", Count),
        ("reverted.messageCount", Count),
        ("reverted.tokens", Count),
        ("reverted.cost", Count),
        ("endReason", Count),
        ("error.name", Name),
        ("error.message", Text(ErrorMessage)),
        ("incomplete", Count),
        ("children[].sessionId", Count),
        ("children[].title", Text(Title)),
        ("children[].agent", Name),
        ("children[].messageCount", Count),
        ("children[].tokens", Count),
        ("children[].cost", Count),
        ("children[].models", Count),
        ("children[].models[].providerId", Name),
        ("children[].models[].modelId", Name),
        ("children[].models[].messages", Count),
        ("children[].models[].tokens", Count),
        ("children[].models[].cost", Count),
        ("children[].error.name", Name),
        ("children[].error.message", Text(ErrorMessage)),
        ("rollup.sessions", Count),
        ("rollup.messageCount", Count),
        ("rollup.tokens", Count),
        ("rollup.cost", Count),
        ("rollup.models[].providerId", Name),
        ("rollup.models[].modelId", Name),
        ("rollup.models[].messages", Count),
        ("rollup.models[].tokens", Count),
        ("rollup.models[].cost", Count),
        ("rollup.tools[].name", Name),
        ("rollup.tools[].calls", Count),
        ("rollup.tools[].errors", Count),
        ("rollup.tools[].durationMs", Count),
        ("rollup.skills[].name", Name),
        ("rollup.skills[].calls", Count),
        ("rollup.skills[].errors", Count),
        ("rollup.skills[].durationMs", Count),
        ("todos[].content", Text(TodoText)),
        ("todos[].status", TodoItem),
        ("todos[].priority", TodoItem),
        ("messages[].id", MessageItem),
        ("messages[].role", MessageItem),
        ("messages[].agent", MessageItem),
        ("messages[].providerId", MessageItem),
        ("messages[].modelId", MessageItem),
        ("messages[].createdAt", MessageItem),
        ("messages[].completedAt", MessageItem),
        ("messages[].finish", MessageItem),
        ("messages[].error", MessageItem),
        ("messages[].text", Text(MessageText)),
        ("truncated", Count),
        ("corrected", Count),
        ("redactions", Count),
        ("deletion", Count),
    ]
};

/// The class of the JSON path `path` (as [`FIELDS`] writes them), if classified.
pub fn class_of(path: &str) -> Option<Class> {
    FIELDS.iter().find(|(p, _)| *p == path).map(|&(_, c)| c)
}

/// Every leaf path of `value` as [`FIELDS`] writes it: object keys joined by `.`, array items
/// as `[]`, an object under a key `tokens` as that key alone (a [`TokenUsage`]), an empty array
/// or an array of scalars as its key.
pub fn leaf_paths(value: &serde_json::Value) -> std::collections::BTreeSet<String> {
    fn walk(v: &serde_json::Value, path: String, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) if path != "tokens" && !path.ends_with(".tokens") => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            serde_json::Value::Array(items) if items.iter().any(|i| i.is_object()) => {
                for i in items {
                    walk(i, format!("{path}[]"), out);
                }
            }
            _ => {
                out.insert(path);
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(value, String::new(), &mut out);
    out
}

#[cfg(test)]
mod tests;
