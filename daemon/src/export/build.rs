//! Building a [`SessionExport`] from a [`SessionSnapshot`]. Pure: no IO, no clock — the export
//! time and the machine identity come in through [`ExportContext`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::export::record::*;
use crate::source::opencode::activity::{self, Activity};
use crate::source::opencode::rows::{FileDiff, MessageRow, PartRow};
use crate::source::opencode::SessionSnapshot;

/// OpenCode's internal agents, which never count as a session's primary agent.
pub const INTERNAL_AGENTS: [&str; 3] = ["compaction", "title", "summary"];

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
    /// Include the todo list.
    pub include_todos: bool,
    /// Include message summaries and texts.
    pub include_messages: bool,
    /// Longest text kept per message (characters, before the truncation marker).
    pub max_message_chars: usize,
}

/// How the session's last turn ended, as the caller decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// `endReason`.
    pub end_reason: EndReason,
    /// `error`.
    pub error: Option<ErrorInfo>,
    /// `incomplete`: the turn never completed and the session went stale.
    pub incomplete: bool,
}

impl Outcome {
    /// The outcome of an ended turn: `error` when the terminal message carries one, else `idle`.
    pub fn ended(error: Option<ErrorInfo>) -> Outcome {
        Outcome {
            end_reason: if error.is_some() {
                EndReason::Error
            } else {
                EndReason::Idle
            },
            error,
            incomplete: false,
        }
    }
}

/// The activity of a full snapshot (see [`activity::classify`]).
pub fn snapshot_activity(snapshot: &SessionSnapshot) -> Activity {
    let recent: Vec<MessageRow> = snapshot.messages.iter().rev().cloned().collect();
    let newest_assistant = recent
        .iter()
        .find(|m| m.info.is_assistant())
        .map(|m| m.id.as_str());
    let parts: Vec<PartRow> = match newest_assistant {
        Some(id) => snapshot
            .parts
            .iter()
            .filter(|p| p.message_id == id)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    activity::classify(&recent, &parts)
}

/// Builds the record of `snapshot` ended as `outcome`.
///
/// The record is fitted to Convex's limits ([`crate::export::fit`]) before it is returned.
pub fn build(snapshot: &SessionSnapshot, outcome: &Outcome, ctx: &ExportContext) -> SessionExport {
    let s = &snapshot.session;
    let own = Aggregates::of(snapshot);
    let descendants = flatten_children(snapshot);
    let children: Vec<ChildSummary> = descendants
        .iter()
        .map(|c| {
            let a = Aggregates::of(c);
            ChildSummary {
                session_id: c.session.id.clone(),
                title: c.session.title.clone(),
                agent: a.primary_agent.clone(),
                message_count: a.message_count,
                tokens: a.tokens,
                cost: a.cost,
                error: a.last_error.clone(),
            }
        })
        .collect();
    let rollup = (!children.is_empty()).then(|| {
        let mut r = Rollup {
            sessions: 1,
            message_count: own.message_count,
            tokens: own.tokens,
            cost: own.cost,
        };
        for c in &children {
            r.sessions += 1;
            r.message_count += c.message_count;
            r.tokens.add(&c.tokens);
            r.cost += c.cost;
        }
        r
    });
    let updated_at = std::iter::once(snapshot.last_write_ms())
        .chain(descendants.iter().map(|c| c.last_write_ms()))
        .max()
        .unwrap_or(s.time_updated);
    let mut messages_cut = false;
    let messages = ctx
        .include_messages
        .then(|| message_summaries(snapshot, ctx.max_message_chars, &mut messages_cut));
    let mut record = SessionExport {
        schema_version: SCHEMA_VERSION,
        session_id: s.id.clone(),
        device_id: ctx.device_id.clone(),
        hostname: ctx.hostname.clone(),
        opencode_version: s.version.clone(),
        daemon_version: ctx.daemon_version.clone(),
        project_id: s.project_id.clone(),
        project_directory: s.directory.clone(),
        project_worktree: snapshot.project.as_ref().map(|p| p.worktree.clone()),
        parent_session_id: s.parent_id.clone(),
        title: s.title.clone(),
        created_at: s.time_created,
        updated_at,
        exported_at: ctx.exported_at,
        archived_at: s.time_archived,
        deleted_at: None,
        duration_ms: own.last_completed.map(|t| (t - s.time_created).max(0)),
        message_count: own.message_count,
        user_message_count: own.user_messages,
        assistant_message_count: own.assistant_messages,
        agents_used: own.agents_used,
        primary_agent: own.primary_agent,
        todo_stats: own.todo_stats,
        code_changes: own.code_changes,
        tokens: own.tokens,
        cost: own.cost,
        models: own.models,
        tools: own.tools,
        skills: own.skills,
        end_reason: outcome.end_reason,
        error: outcome.error.clone(),
        incomplete: outcome.incomplete,
        children,
        rollup,
        todos: ctx.include_todos.then(|| {
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
    };
    crate::export::fit(&mut record);
    record
}

/// The record of a session whose row disappeared: its last record, marked deleted at `at_ms`.
pub fn mark_deleted(last: &SessionExport, at_ms: i64) -> SessionExport {
    let mut r = last.clone();
    r.end_reason = EndReason::Deleted;
    r.deleted_at = Some(at_ms);
    r.exported_at = at_ms;
    r.updated_at = r.updated_at.max(at_ms);
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

/// Per-session sums over its own rows (children excluded).
struct Aggregates {
    message_count: u64,
    user_messages: u64,
    assistant_messages: u64,
    agents_used: Vec<String>,
    primary_agent: Option<String>,
    todo_stats: TodoStats,
    code_changes: CodeChanges,
    tokens: TokenUsage,
    cost: f64,
    models: Vec<ModelUsage>,
    tools: Vec<ToolUsage>,
    skills: Vec<ToolUsage>,
    last_completed: Option<i64>,
    last_error: Option<ErrorInfo>,
}

impl Aggregates {
    fn of(snapshot: &SessionSnapshot) -> Aggregates {
        let messages = &snapshot.messages;
        let mut agents_used: Vec<String> = Vec::new();
        let mut answered: HashMap<String, u64> = HashMap::new();
        let mut model_of: HashMap<&str, (String, String)> = HashMap::new();
        let mut models: BTreeMap<(String, String), ModelUsage> = BTreeMap::new();
        let mut last_completed = None;
        let mut last_error = None;
        for m in messages {
            let info = &m.info;
            if let Some(agent) = info.agent_name() {
                if !agents_used.iter().any(|a| a == agent) {
                    agents_used.push(agent.to_string());
                }
                if info.is_assistant() && !INTERNAL_AGENTS.contains(&agent) {
                    *answered.entry(agent.to_string()).or_default() += 1;
                }
            }
            if info.is_assistant() {
                let key = (
                    info.provider_id.clone().unwrap_or_default(),
                    info.model_id.clone().unwrap_or_default(),
                );
                model_of.insert(m.id.as_str(), key.clone());
                models
                    .entry(key.clone())
                    .or_insert_with(|| ModelUsage {
                        provider_id: key.0,
                        model_id: key.1,
                        messages: 0,
                        tokens: TokenUsage::default(),
                        cost: 0.0,
                    })
                    .messages += 1;
                if let Some(c) = info.time.completed {
                    last_completed = Some(last_completed.map_or(c, |l: i64| l.max(c)));
                }
                last_error = info.error.as_ref().map(|e| ErrorInfo {
                    name: e.name.clone(),
                    message: e.message(),
                });
            }
        }
        // Primary agent: most assistant messages; ties go to the agent used first.
        let primary_agent = agents_used
            .iter()
            .filter(|a| answered.contains_key(a.as_str()))
            .max_by(|a, b| {
                let (ca, cb) = (answered[a.as_str()], answered[b.as_str()]);
                // `max_by` keeps the last of equal elements; reverse position to keep the first.
                ca.cmp(&cb).then_with(|| {
                    let pa = agents_used.iter().position(|x| x == *a);
                    let pb = agents_used.iter().position(|x| x == *b);
                    pb.cmp(&pa)
                })
            })
            .cloned()
            .or_else(|| {
                messages
                    .iter()
                    .find(|m| m.info.is_user())
                    .and_then(|m| m.info.agent_name().map(str::to_string))
            });

        let mut tokens = TokenUsage::default();
        let mut cost = 0.0;
        let mut tools: BTreeMap<String, ToolUsage> = BTreeMap::new();
        let mut skills: BTreeMap<String, ToolUsage> = BTreeMap::new();
        let mut patch_files: BTreeSet<String> = BTreeSet::new();
        let root = snapshot
            .project
            .as_ref()
            .map(|p| p.worktree.as_str())
            .filter(|w| *w != "/")
            .unwrap_or(snapshot.session.directory.as_str());
        for p in &snapshot.parts {
            let info = &p.info;
            match info.kind.as_str() {
                "step-finish" => {
                    let t = info.tokens.unwrap_or_default();
                    let usage = TokenUsage {
                        input: t.input,
                        output: t.output,
                        reasoning: t.reasoning,
                        cache_read: t.cache.read,
                        cache_write: t.cache.write,
                    };
                    let c = info.cost.unwrap_or(0.0);
                    tokens.add(&usage);
                    cost += c;
                    if let Some(key) = model_of.get(p.message_id.as_str()) {
                        if let Some(m) = models.get_mut(key) {
                            m.tokens.add(&usage);
                            m.cost += c;
                        }
                    }
                }
                "tool" => {
                    let name = info.tool.clone().unwrap_or_default();
                    let state = info.state.clone().unwrap_or_default();
                    let is_error = state.status == "error";
                    let duration = state
                        .time
                        .and_then(|t| Some((t.end? - t.start?).max(0) as u64))
                        .unwrap_or(0);
                    let bump = |map: &mut BTreeMap<String, ToolUsage>, key: String| {
                        let u = map.entry(key.clone()).or_insert_with(|| ToolUsage {
                            name: key,
                            calls: 0,
                            errors: 0,
                            duration_ms: 0,
                        });
                        u.calls += 1;
                        u.errors += u64::from(is_error);
                        u.duration_ms += duration;
                    };
                    if name == "skill" {
                        let skill = state
                            .input
                            .as_ref()
                            .and_then(|i| i.get("name"))
                            .and_then(|n| n.as_str())
                            .unwrap_or("unknown")
                            .to_string();
                        bump(&mut skills, skill);
                    }
                    bump(&mut tools, name);
                }
                "patch" => {
                    for f in info.files.iter().flatten() {
                        patch_files.insert(relative_to(f, root));
                    }
                }
                _ => {}
            }
        }

        let mut code_changes = CodeChanges::default();
        let mut files: BTreeSet<String> = BTreeSet::new();
        let mut any_diffs = false;
        for m in messages.iter().filter(|m| m.info.is_user()) {
            let diffs = m
                .info
                .summary
                .as_ref()
                .and_then(|s| s.get("diffs"))
                .and_then(|d| d.as_array());
            for d in diffs.into_iter().flatten() {
                let Ok(d) = serde_json::from_value::<FileDiff>(d.clone()) else {
                    continue;
                };
                any_diffs = true;
                code_changes.additions += d.additions;
                code_changes.deletions += d.deletions;
                if let Some(f) = d.file {
                    files.insert(relative_to(&f, root));
                }
            }
        }
        files.extend(patch_files);
        code_changes.files_changed = files.len() as u64;
        let s = &snapshot.session;
        let columns = (
            s.summary_additions.unwrap_or(0),
            s.summary_deletions.unwrap_or(0),
            s.summary_files.unwrap_or(0),
        );
        if !any_diffs && columns != (0, 0, 0) {
            code_changes.additions = columns.0.max(0) as u64;
            code_changes.deletions = columns.1.max(0) as u64;
            code_changes.files_changed = code_changes.files_changed.max(columns.2.max(0) as u64);
        }

        let mut todo_stats = TodoStats::default();
        for t in &snapshot.todos {
            todo_stats.total += 1;
            match t.status.as_str() {
                "completed" => todo_stats.completed += 1,
                "cancelled" => todo_stats.cancelled += 1,
                "pending" => todo_stats.pending += 1,
                "in_progress" => todo_stats.in_progress += 1,
                _ => {}
            }
        }

        Aggregates {
            message_count: messages.len() as u64,
            user_messages: messages.iter().filter(|m| m.info.is_user()).count() as u64,
            assistant_messages: messages.iter().filter(|m| m.info.is_assistant()).count() as u64,
            agents_used,
            primary_agent,
            todo_stats,
            code_changes,
            tokens,
            cost,
            models: models.into_values().collect(),
            tools: tools.into_values().collect(),
            skills: skills.into_values().collect(),
            last_completed,
            last_error,
        }
    }
}

/// `path` relative to `root` when it lies inside it; otherwise unchanged.
fn relative_to(path: &str, root: &str) -> String {
    let root = root.trim_end_matches('/');
    match path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if !root.is_empty() => rel.to_string(),
        _ => path.to_string(),
    }
}

/// One summary per message; texts longer than `max_chars` are cut with the marker and `cut` is
/// set.
fn message_summaries(
    snapshot: &SessionSnapshot,
    max_chars: usize,
    cut: &mut bool,
) -> Vec<MessageSummary> {
    let mut texts: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in &snapshot.parts {
        if p.info.kind == "text" && !p.info.synthetic.unwrap_or(false) {
            if let Some(t) = p.info.text.as_deref().filter(|t| !t.is_empty()) {
                texts.entry(p.message_id.as_str()).or_default().push(t);
            }
        }
    }
    snapshot
        .messages
        .iter()
        .map(|m| {
            let info = &m.info;
            let joined = texts
                .get(m.id.as_str())
                .map(|t| t.join("\n\n"))
                .unwrap_or_default();
            let mut text = joined;
            *cut |= crate::export::fit::cut_chars(&mut text, max_chars);
            let user_model = info.model.as_ref();
            MessageSummary {
                id: m.id.clone(),
                role: info.role.clone(),
                agent: info.agent_name().map(str::to_string),
                provider_id: info
                    .provider_id
                    .clone()
                    .or_else(|| user_model.and_then(|u| u.provider_id.clone())),
                model_id: info
                    .model_id
                    .clone()
                    .or_else(|| user_model.and_then(|u| u.model_id.clone())),
                created_at: m.time_created,
                completed_at: info.time.completed,
                finish: info.finish.clone(),
                error: info.error.as_ref().map(|e| e.name.clone()),
                text,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_made_relative_to_the_worktree() {
        assert_eq!(relative_to("/p/a/b.rs", "/p/a"), "b.rs");
        assert_eq!(relative_to("/p/a/b.rs", "/p/a/"), "b.rs");
        assert_eq!(relative_to("/q/b.rs", "/p/a"), "/q/b.rs");
        assert_eq!(relative_to("b.rs", "/p/a"), "b.rs");
        assert_eq!(relative_to("/p/ab/c", "/p/a"), "/p/ab/c");
    }
}
