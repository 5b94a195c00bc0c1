//! Building a [`SessionExport`] from a source-neutral [`SessionSnapshot`]. Pure: no IO, no
//! clock — the export time and the machine identity come in through [`ExportContext`], the
//! ending through the tracker's [`Trigger`].

use crate::export::aggregate::{self as agg};
use crate::export::privacy::{self, Level, OnDelete, PathKey, Privacy};
use crate::export::record::*;
use crate::source::SessionSnapshot;
use crate::track::Trigger;

/// What the builder needs besides the snapshot.
#[derive(Debug, Clone)]
pub struct ExportContext {
    /// [`SessionExport::device_id`].
    pub device_id: String,
    /// [`SessionExport::hostname`].
    pub hostname: String,
    /// [`SessionExport::daemon_version`].
    pub daemon_version: String,
    /// [`SessionExport::exported_at`] (ms).
    pub exported_at: i64,
    /// What the record includes (from `[export]`).
    pub options: ExportOptions,
    /// What of it may leave the machine (from `[privacy]`, with the install's path key).
    pub privacy: Privacy,
}

impl ExportContext {
    /// What the source must read of the message texts: nothing unless `export.include_messages`
    /// is on and `[privacy]` lets message texts leave ([`Privacy::reads_message_texts`]), else
    /// up to `export.max_message_chars` per message. A text that may not leave is never read.
    pub fn texts(&self) -> crate::source::Texts {
        if self.privacy.reads_message_texts() {
            self.options.texts()
        } else {
            crate::source::Texts::Skip
        }
    }
}

/// What a record includes: built from `[export]` ([`ExportOptions::from`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportOptions {
    /// Include the todo list (`export.include_todos`).
    pub include_todos: bool,
    /// Include message summaries and texts (`export.include_messages`).
    pub include_messages: bool,
    /// Longest text kept per message (characters, before the truncation marker;
    /// `export.max_message_chars`).
    pub max_message_chars: usize,
}

impl From<&crate::config::ExportConfig> for ExportOptions {
    fn from(c: &crate::config::ExportConfig) -> ExportOptions {
        ExportOptions {
            include_todos: c.include_todos,
            include_messages: c.include_messages,
            max_message_chars: c.max_message_chars,
        }
    }
}

impl ExportOptions {
    /// What a record needs of the message texts: none without `include_messages`, else up to
    /// `max_message_chars` per message.
    pub fn texts(&self) -> crate::source::Texts {
        if self.include_messages {
            crate::source::Texts::UpTo {
                chars: self.max_message_chars,
            }
        } else {
            crate::source::Texts::Skip
        }
    }
}

impl Trigger {
    /// The record's `endReason` and `incomplete` for this trigger: a stale turn is exported
    /// as `idle` with `incomplete: true`.
    pub fn end_reason(self) -> (EndReason, bool) {
        match self {
            Trigger::Idle => (EndReason::Idle, false),
            Trigger::Error => (EndReason::Error, false),
            Trigger::Stale => (EndReason::Idle, true),
            Trigger::Deleted => (EndReason::Deleted, false),
        }
    }
}

/// Builds the record of `snapshot` exported for `trigger`. With [`Trigger::Error`] the record's
/// `error` is that of the terminal (last) assistant message.
///
/// The record is first cut to what `ctx.privacy` lets leave the machine, its free text redacted
/// ([`crate::export::privacy::apply`]). A value of the source that breaks a content rule the
/// deployment enforces is then clamped or dropped and named in `corrected` ([`crate::export::validate::correct`]). The record is then
/// fitted to Convex's limits ([`crate::export::fit()`]) and sealed with its content
/// hash ([`crate::export::seal`]) before it is returned.
pub fn build(snapshot: &SessionSnapshot, trigger: Trigger, ctx: &ExportContext) -> SessionExport {
    let own = Own::of(snapshot);
    let descendants = flatten_children(snapshot);
    let children: Vec<ChildSummary> = descendants
        .iter()
        .map(|c| {
            let (tokens, cost) = agg::spend(&c.messages);
            ChildSummary {
                session_id: c.id.to_string(),
                title: c.title.clone(),
                agent: agg::primary_agent(&c.messages),
                message_count: c.messages.len() as u64,
                tokens,
                cost,
                models: agg::models(&c.messages),
                error: agg::last_error(&c.messages),
            }
        })
        .collect();
    let rollup = (!children.is_empty()).then(|| {
        let mut r = Rollup {
            sessions: 1,
            message_count: own.message_count,
            tokens: own.tokens,
            cost: own.cost,
            ..Rollup::default()
        };
        for c in &children {
            r.sessions += 1;
            r.message_count += c.message_count;
            r.tokens.add(&c.tokens);
            r.cost += c.cost;
        }
        let everyone = || std::iter::once(snapshot).chain(descendants.iter().copied());
        r.models = agg::models(everyone().flat_map(|s| &s.messages));
        r.tools = agg::tools(everyone().flat_map(|s| &s.tool_calls));
        r.skills = agg::skills(everyone().flat_map(|s| &s.tool_calls));
        r
    });
    let inherited = snapshot.fork.as_ref().map(|f| {
        let copied = &snapshot.messages[..f.inherited_messages.min(snapshot.messages.len())];
        let (tokens, cost) = agg::spend(copied);
        Inherited {
            message_count: copied.len() as u64,
            tokens,
            cost,
            models: agg::models(copied),
        }
    });
    let reverted = snapshot.reverted.map(|r| RevertedUsage {
        message_count: r.messages,
        tokens: agg::token_usage(&r.tokens),
        cost: r.cost,
    });
    let updated_at = std::iter::once(snapshot.last_write_ms)
        .chain(descendants.iter().map(|c| c.last_write_ms))
        .max()
        .unwrap_or(snapshot.last_write_ms);
    let mut messages_cut = false;
    let messages = ctx
        .options
        .include_messages
        .then(|| message_summaries(snapshot, ctx.options.max_message_chars, &mut messages_cut));
    let (end_reason, incomplete) = trigger.end_reason();
    let error = match trigger {
        Trigger::Error => agg::last_error(&snapshot.messages),
        _ => None,
    };
    let mut record = SessionExport {
        schema_version: SCHEMA_VERSION,
        session_id: snapshot.id.to_string(),
        device_id: ctx.device_id.clone(),
        hostname: ctx.hostname.clone(),
        opencode_version: snapshot.agent_version.clone(),
        daemon_version: ctx.daemon_version.clone(),
        project_id: snapshot.project_id.clone(),
        project_directory: snapshot.directory.clone(),
        project_worktree: snapshot.worktree.clone(),
        parent_session_id: snapshot.parent_id.as_ref().map(ToString::to_string),
        forked_from: snapshot
            .fork
            .as_ref()
            .and_then(|f| f.source.as_ref())
            .map(ToString::to_string),
        title: snapshot.title.clone(),
        created_at: snapshot.created_at,
        updated_at,
        exported_at: ctx.exported_at,
        revision: 0,
        // Its final length, so that fitting counts it; set by `seal` below.
        content_hash: "0".repeat(crate::export::hash::CONTENT_HASH_LEN),
        archived_at: snapshot.archived_at,
        deleted_at: None,
        duration_ms: own.last_completed.map(|t| (t - snapshot.created_at).max(0)),
        message_count: own.message_count,
        user_message_count: own.user_messages,
        assistant_message_count: own.assistant_messages,
        agents_used: agg::agents_used(&snapshot.messages),
        primary_agent: agg::primary_agent(&snapshot.messages),
        todo_stats: agg::todo_stats(&snapshot.todos),
        code_changes: agg::code_changes(&snapshot.code_changes, agg::path_root(snapshot)),
        worktree_changes: agg::worktree_changes(&snapshot.code_changes, agg::path_root(snapshot)),
        tokens: own.tokens,
        cost: own.cost,
        models: agg::models(&snapshot.messages),
        tools: agg::tools(&snapshot.tool_calls),
        skills: agg::skills(&snapshot.tool_calls),
        inherited,
        reverted,
        end_reason,
        error,
        incomplete,
        children,
        rollup,
        todos: ctx.options.include_todos.then(|| {
            snapshot
                .todos
                .iter()
                .map(|t| Todo {
                    content: t.content.clone(),
                    status: t.status.clone(),
                    priority: t.priority.clone(),
                })
                .collect()
        }),
        messages,
        truncated: if messages_cut {
            vec!["messages".to_string()]
        } else {
            Vec::new()
        },
        corrected: Vec::new(),
        redactions: 0,
        deletion: None,
    };
    privacy::apply(&mut record, &ctx.privacy);
    crate::export::validate::correct(&mut record);
    crate::export::fit(&mut record);
    crate::export::seal(&mut record);
    record
}

/// The record of a session whose rows disappeared, from its last record, marked deleted at
/// `at_ms` (`endReason: "deleted"`, `deletedAt`, `deletion`). By `on_delete`:
/// - [`OnDelete::Tombstone`] and [`OnDelete::Delete`]: only what the `counts` level lets leave —
///   ids, times, counts, totals and the names of models, agents and tools (what the
///   deployment's totals are made of) — no title, host name, paths, todos, messages or error
///   message; `truncated` keeps only the lists still there;
/// - [`OnDelete::Keep`]: the last record as it was.
///
/// The last record is the one the daemon built and stored (it already kept `[privacy]`), also
/// for a session deleted before its first export, which so exports nothing but the tombstone.
pub fn mark_deleted(last: &SessionExport, at_ms: i64, on_delete: OnDelete) -> SessionExport {
    let mut r = last.clone();
    if on_delete != OnDelete::Keep {
        // The key is unused: the counts level sends no path.
        privacy::apply(
            &mut r,
            &Privacy::of_level(Level::Counts, PathKey::new([0; 32])),
        );
        r.truncated
            .retain(|f| !matches!(f.as_str(), "title" | "error" | "todos" | "messages"));
    }
    r.deletion = Some(on_delete);
    r.end_reason = EndReason::Deleted;
    r.deleted_at = Some(at_ms);
    r.exported_at = at_ms;
    r.updated_at = r.updated_at.max(at_ms);
    // After the record it marks, whatever the clock says now.
    r.revision = last.revision.saturating_add(1).max(at_ms);
    crate::export::seal(&mut r);
    r
}

fn flatten_children(snapshot: &SessionSnapshot) -> Vec<&SessionSnapshot> {
    let mut out = Vec::new();
    let mut stack: Vec<&SessionSnapshot> = snapshot.children.iter().rev().collect();
    while let Some(c) = stack.pop() {
        out.push(c);
        stack.extend(c.children.iter().rev());
    }
    out
}

/// The session's own counts used more than once.
struct Own {
    message_count: u64,
    user_messages: u64,
    assistant_messages: u64,
    tokens: TokenUsage,
    cost: f64,
    last_completed: Option<i64>,
}

impl Own {
    fn of(snapshot: &SessionSnapshot) -> Own {
        let (message_count, user_messages, assistant_messages) =
            agg::message_counts(&snapshot.messages);
        let (tokens, cost) = agg::spend(&snapshot.messages);
        Own {
            message_count,
            user_messages,
            assistant_messages,
            tokens,
            cost,
            last_completed: agg::last_completed(&snapshot.messages),
        }
    }
}

/// One summary per message; texts longer than `max_chars` are cut with the marker and `cut` is
/// set.
fn message_summaries(
    snapshot: &SessionSnapshot,
    max_chars: usize,
    cut: &mut bool,
) -> Vec<MessageSummary> {
    snapshot
        .messages
        .iter()
        .map(|m| {
            let (text, was_cut) = crate::export::fit::cut_text(&m.text, max_chars);
            *cut |= was_cut;
            MessageSummary {
                id: m.id.clone(),
                role: m.role.as_str().to_string(),
                agent: m.agent.clone(),
                provider_id: m.provider_id.clone(),
                model_id: m.model_id.clone(),
                created_at: m.created_at,
                completed_at: m.completed_at,
                finish: m.finish.clone(),
                error: m.error.as_ref().map(|e| e.name.clone()),
                text,
            }
        })
        .collect()
}
