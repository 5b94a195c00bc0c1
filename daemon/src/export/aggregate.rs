//! One function per aggregate of a session's own rows (its children are summed by the caller).
//! Pure: each takes the source-neutral snapshot (or a part of it) and returns one record field.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::export::record::{CodeChanges, ErrorInfo, ModelUsage, TodoStats, TokenUsage, ToolUsage};
use crate::source::{CodeChangeFacts, Message, Role, SessionSnapshot, TodoItem, Tokens, ToolCall};

/// OpenCode's internal agents, which never count as a session's primary agent.
pub const INTERNAL_AGENTS: [&str; 3] = ["compaction", "title", "summary"];

/// `(messageCount, userMessageCount, assistantMessageCount)`.
pub fn message_counts(messages: &[Message]) -> (u64, u64, u64) {
    let of = |role: Role| messages.iter().filter(|m| m.role == role).count() as u64;
    (messages.len() as u64, of(Role::User), of(Role::Assistant))
}

/// Distinct agents of the messages, in order of first use (`agentsUsed`).
pub fn agents_used(messages: &[Message]) -> Vec<String> {
    let mut agents: Vec<String> = Vec::new();
    for agent in messages.iter().filter_map(|m| m.agent.as_deref()) {
        if !agents.iter().any(|a| a == agent) {
            agents.push(agent.to_string());
        }
    }
    agents
}

/// The agent that answered most assistant messages, ignoring [`INTERNAL_AGENTS`]; ties go to
/// the agent used first. Without any, the first user message's agent (`primaryAgent`).
pub fn primary_agent(messages: &[Message]) -> Option<String> {
    let used = agents_used(messages);
    let mut answered: HashMap<&str, u64> = HashMap::new();
    for m in messages.iter().filter(|m| m.role == Role::Assistant) {
        if let Some(agent) = m.agent.as_deref().filter(|a| !INTERNAL_AGENTS.contains(a)) {
            *answered.entry(agent).or_default() += 1;
        }
    }
    let mut best: Option<(&str, u64)> = None;
    for agent in &used {
        if let Some(&n) = answered.get(agent.as_str()) {
            // Strictly more: an equal count keeps the agent used first.
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((agent, n));
            }
        }
    }
    best.map(|(a, _)| a.to_string()).or_else(|| {
        messages
            .iter()
            .find(|m| m.role == Role::User)
            .and_then(|m| m.agent.clone())
    })
}

/// The record's token counts of `t`.
pub fn token_usage(t: &Tokens) -> TokenUsage {
    TokenUsage {
        input: t.input,
        output: t.output,
        reasoning: t.reasoning,
        cache_read: t.cache_read,
        cache_write: t.cache_write,
    }
}

/// Tokens and cost over every message's steps (`tokens`, `cost`).
pub fn spend(messages: &[Message]) -> (TokenUsage, f64) {
    let mut tokens = TokenUsage::default();
    let mut cost = 0.0;
    for m in messages {
        tokens.add(&token_usage(&m.tokens));
        cost += m.cost;
    }
    (tokens, cost)
}

/// Usage per `(provider, model)` of the assistant messages, sorted by that key (`models`).
pub fn models<'a>(messages: impl IntoIterator<Item = &'a Message>) -> Vec<ModelUsage> {
    let mut by_model: BTreeMap<(String, String), ModelUsage> = BTreeMap::new();
    for m in messages.into_iter().filter(|m| m.role == Role::Assistant) {
        let key = (
            m.provider_id.clone().unwrap_or_default(),
            m.model_id.clone().unwrap_or_default(),
        );
        let u = by_model.entry(key.clone()).or_insert_with(|| ModelUsage {
            provider_id: key.0,
            model_id: key.1,
            messages: 0,
            tokens: TokenUsage::default(),
            cost: 0.0,
        });
        u.messages += 1;
        u.tokens.add(&token_usage(&m.tokens));
        u.cost += m.cost;
    }
    by_model.into_values().collect()
}

fn usage_by<'a>(calls: impl Iterator<Item = (&'a str, &'a ToolCall)>) -> Vec<ToolUsage> {
    let mut by_name: BTreeMap<&str, ToolUsage> = BTreeMap::new();
    for (name, call) in calls {
        let u = by_name.entry(name).or_insert_with(|| ToolUsage {
            name: name.to_string(),
            calls: 0,
            errors: 0,
            duration_ms: 0,
        });
        u.calls += 1;
        u.errors += u64::from(call.failed);
        u.duration_ms += call.duration_ms;
    }
    by_name.into_values().collect()
}

/// Calls, errors and duration per tool name, sorted by name (`tools`).
pub fn tools<'a>(calls: impl IntoIterator<Item = &'a ToolCall>) -> Vec<ToolUsage> {
    usage_by(calls.into_iter().map(|c| (c.tool.as_str(), c)))
}

/// Calls, errors and duration per skill name, sorted by name (`skills`).
pub fn skills<'a>(calls: impl IntoIterator<Item = &'a ToolCall>) -> Vec<ToolUsage> {
    usage_by(
        calls
            .into_iter()
            .filter_map(|c| c.skill.as_deref().map(|s| (s, c))),
    )
}

/// The session's own edits (`codeChanges`): lines added and deleted summed over its
/// file-editing tool calls; `filesChanged` counts distinct files (paths made relative to `root`,
/// so an absolute and a relative path name one file).
pub fn code_changes(facts: &CodeChangeFacts, root: &str) -> CodeChanges {
    let mut changes = CodeChanges::default();
    let mut files: BTreeSet<String> = BTreeSet::new();
    for e in &facts.edits {
        changes.additions += e.additions;
        changes.deletions += e.deletions;
        files.insert(relative_to(&e.file, root));
    }
    changes.files_changed = files.len() as u64;
    changes
}

/// Lines and files changed in the working tree during the session's turns
/// (`worktreeChanges`): the turns' snapshot diffs, plus files of individual steps; paths are
/// made relative to `root` so both name a file the same way. Without any diff the session's
/// own totals are used.
pub fn worktree_changes(facts: &CodeChangeFacts, root: &str) -> CodeChanges {
    let mut changes = CodeChanges::default();
    let mut files: BTreeSet<String> = BTreeSet::new();
    for d in &facts.diffs {
        changes.additions += d.additions;
        changes.deletions += d.deletions;
        if let Some(f) = &d.file {
            files.insert(relative_to(f, root));
        }
    }
    files.extend(facts.patched_files.iter().map(|f| relative_to(f, root)));
    changes.files_changed = files.len() as u64;
    if let (true, Some((additions, deletions, files))) = (facts.diffs.is_empty(), facts.totals) {
        changes.additions = additions;
        changes.deletions = deletions;
        changes.files_changed = changes.files_changed.max(files);
    }
    changes
}

/// Where paths are made relative to: the worktree, unless it is `/` (OpenCode's `global`
/// project) or unknown, then the session's directory.
pub fn path_root(snapshot: &SessionSnapshot) -> &str {
    snapshot
        .worktree
        .as_deref()
        .filter(|w| *w != "/")
        .unwrap_or(snapshot.directory.as_str())
}

/// Todo counts by status (`todoStats`).
pub fn todo_stats(todos: &[TodoItem]) -> TodoStats {
    let mut stats = TodoStats::default();
    for t in todos {
        stats.total += 1;
        match t.status.as_str() {
            "completed" => stats.completed += 1,
            "cancelled" => stats.cancelled += 1,
            "pending" => stats.pending += 1,
            "in_progress" => stats.in_progress += 1,
            _ => {}
        }
    }
    stats
}

/// The newest completion of an assistant message (ms).
pub fn last_completed(messages: &[Message]) -> Option<i64> {
    messages
        .iter()
        .filter(|m| m.role == Role::Assistant)
        .filter_map(|m| m.completed_at)
        .max()
}

/// The error of the last assistant message, if it carries one.
pub fn last_error(messages: &[Message]) -> Option<ErrorInfo> {
    messages
        .iter()
        .rev()
        .find(|m| m.role == Role::Assistant)
        .and_then(|m| m.error.as_ref())
        .map(|e| ErrorInfo {
            name: e.name.clone(),
            message: e.message.clone(),
        })
}

/// `path` relative to `root` when it lies inside it; otherwise unchanged.
pub fn relative_to(path: &str, root: &str) -> String {
    let root = root.trim_end_matches('/');
    match path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) {
        Some(rel) if !root.is_empty() => rel.to_string(),
        _ => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{FileDiff, FileEdit, TurnError};

    fn msg(role: Role, agent: Option<&str>) -> Message {
        Message {
            id: String::new(),
            role,
            agent: agent.map(str::to_string),
            provider_id: None,
            model_id: None,
            created_at: 0,
            completed_at: None,
            finish: None,
            error: None,
            tokens: Tokens::default(),
            cost: 0.0,
            text: crate::source::MessageText::default(),
        }
    }

    #[test]
    fn paths_are_made_relative_to_the_worktree() {
        assert_eq!(relative_to("/p/a/b.rs", "/p/a"), "b.rs");
        assert_eq!(relative_to("/p/a/b.rs", "/p/a/"), "b.rs");
        assert_eq!(relative_to("/q/b.rs", "/p/a"), "/q/b.rs");
        assert_eq!(relative_to("b.rs", "/p/a"), "b.rs");
        assert_eq!(relative_to("/p/ab/c", "/p/a"), "/p/ab/c");
    }

    #[test]
    fn the_primary_agent_answered_most_ignoring_internal_agents_and_ties_go_to_the_first() {
        use Role::*;
        // (messages as (role, agent), expected)
        type Row<'a> = (&'a [(Role, Option<&'a str>)], Option<&'a str>);
        let table: &[Row<'_>] = &[
            (&[], None),
            (&[(User, Some("build"))], Some("build")),
            (
                &[
                    (User, Some("plan")),
                    (Assistant, Some("plan")),
                    (Assistant, Some("build")),
                    (Assistant, Some("build")),
                ],
                Some("build"),
            ),
            (
                &[(Assistant, Some("plan")), (Assistant, Some("build"))],
                Some("plan"),
            ),
            (
                &[
                    (User, Some("build")),
                    (Assistant, Some("compaction")),
                    (Assistant, Some("compaction")),
                ],
                Some("build"),
            ),
            (&[(Assistant, Some("title"))], None),
        ];
        for (messages, expected) in table {
            let messages: Vec<Message> = messages.iter().map(|(r, a)| msg(r.clone(), *a)).collect();
            assert_eq!(
                primary_agent(&messages).as_deref(),
                *expected,
                "{messages:?}"
            );
        }
    }

    #[test]
    fn code_changes_sum_the_sessions_own_edits_per_distinct_file() {
        let edit = |f: &str, a, d| FileEdit {
            file: f.into(),
            additions: a,
            deletions: d,
        };
        let facts = CodeChangeFacts {
            edits: vec![
                edit("/r/src/a.rs", 3, 1),
                edit("src/a.rs", 1, 1),
                edit("/elsewhere/b.rs", 0, 0),
            ],
            // Snapshot figures never count here.
            diffs: vec![FileDiff {
                file: Some("src/z.rs".into()),
                additions: 50,
                deletions: 50,
            }],
            patched_files: vec!["/r/src/y.rs".into()],
            totals: Some((9, 9, 9)),
        };
        assert_eq!(
            code_changes(&facts, "/r"),
            CodeChanges {
                additions: 4,
                deletions: 2,
                files_changed: 2
            }
        );
        assert_eq!(
            code_changes(&CodeChangeFacts::default(), "/r"),
            CodeChanges::default()
        );
    }

    #[test]
    fn worktree_changes_add_diffs_and_patched_files_and_fall_back_to_the_session_totals() {
        let diff = |f: &str, a, d| FileDiff {
            file: Some(f.into()),
            additions: a,
            deletions: d,
        };
        let facts = CodeChangeFacts {
            edits: vec![],
            diffs: vec![diff("src/a.rs", 3, 1), diff("src/b.rs", 2, 0)],
            patched_files: vec!["/r/src/a.rs".into(), "/r/c.rs".into()],
            totals: Some((100, 100, 100)),
        };
        assert_eq!(
            worktree_changes(&facts, "/r"),
            CodeChanges {
                additions: 5,
                deletions: 1,
                files_changed: 3
            }
        );
        let only_totals = CodeChangeFacts {
            edits: vec![],
            diffs: vec![],
            patched_files: vec!["/r/x".into()],
            totals: Some((7, 2, 0)),
        };
        assert_eq!(
            worktree_changes(&only_totals, "/r"),
            CodeChanges {
                additions: 7,
                deletions: 2,
                files_changed: 1
            }
        );
    }

    #[test]
    fn the_last_error_is_the_last_assistant_messages() {
        let mut failed = msg(Role::Assistant, None);
        failed.error = Some(TurnError {
            name: "APIError".into(),
            message: "m".into(),
        });
        let ok = msg(Role::Assistant, None);
        assert_eq!(
            last_error(&[failed.clone(), msg(Role::User, None)]).map(|e| e.name),
            Some("APIError".to_string())
        );
        assert_eq!(last_error(&[failed, ok]), None);
    }
}
